"""The dialplan: where a dialled number goes. Pure: no sockets, no asyncio; the clock that
[[time_route]]s read is passed in (`now`).

`Dialplan.route(CallRequest)` returns a `Route`; the call layer turns it into SIP. Rules, first
match wins:

1. Emergency numbers dialled from an extension go to the emergency trunk, whatever the hook or
   the outbound routes say; "9911" counts when an outbound route would send "911" on.
2. The Python hook, if configured, may return a target, a Route, or None to fall through.
3. Calls from a trunk are looked up in the [[did]] table and reach internal targets only: a
   call from outside never leaves through a trunk again (toll fraud). The one exception is a
   [[time_route]] (a DID's target) whose open or closed target is "trunk:NAME:NUMBER": the
   after-hours on-call forward, a number the configuration names and no caller can choose.
4. Feature codes (pickup, directed pickup, park, park slots), 5. ring groups, 6. extensions,
7. outbound routes, the longest matching prefix first; 8. nothing: UNKNOWN.

The hook sees trunk calls too (before the DID table), so after-hours routing of a DID can live
in it; what it returns for a trunk call is held to rule 3, even when it names a time_route.

A [[time_route]] number (after conference rooms in rule 4) goes to its open or closed target
by its [[hours]] at `now()`; a target may be another time_route, TIME_ROUTE_DEPTH deep.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Protocol

from pbx.config import (
    Config,
    DidConfig,
    RingGroupConfig,
    RingStrategy,
    TimeRouteConfig,
    TrunkConfig,
)
from pbx.errors import ConfigError
from pbx.hours import Schedule, describe_change

log = logging.getLogger(__name__)

TRUNK_TARGET = "trunk:"
"""Hook targets "trunk:NAME:NUMBER" place an outbound call through trunk NAME."""
QUEUE_TARGET = "queue:"
"""Targets "queue:NAME" (or "queue:NAME:PRIORITY") put the caller in ACD queue NAME."""
TIME_ROUTE_DEPTH = 8
"""How many time_routes one call may pass through (one may name another) before it is
UNKNOWN; load() already refuses time_routes that lead back to themselves."""
IVR_TARGET = "ivr:"
"""Targets "ivr:NAME" run the IVR flow NAME (`ivr.flow`)."""
VOICEMAIL_TARGET = "voicemail:"
"""Targets "voicemail:BOX" (or "voicemail:BOX:busy") take a message for mailbox BOX."""


class QueueDirectory(Protocol):
    """The ACD queues that exist now (they change at run time: `pbx queue add`)."""

    def queue_of_number(self, number: str) -> str | None: ...
    def has_queue(self, name: str) -> bool: ...


class RouteKind(Enum):
    EXTENSION = "extension"
    RING_GROUP = "ring group"
    TRUNK = "trunk"
    PICKUP = "pickup"
    """Group pickup: answer any call ringing at an extension."""
    DIRECTED_PICKUP = "directed pickup"
    """Answer the call ringing at extension `number`."""
    PARK = "park"
    """Park the call (normally reached by a blind transfer)."""
    PARK_SLOT = "park slot"
    """Retrieve the call parked in slot `number`."""
    CONFERENCE = "conference"
    """Join the conference room `number`."""
    QUEUE = "queue"
    """Wait in the ACD queue named `number` (at `priority`) for an agent."""
    AGENT_LOGIN = "agent login"
    """The calling agent logs in or out (a feature code)."""
    AGENT_PAUSE = "agent pause"
    """The calling agent pauses (with reason `number`) or becomes ready (a feature code)."""
    IVR = "ivr"
    """Run the IVR flow named `number`."""
    VOICEMAIL = "voicemail"
    """Leave a message in mailbox `number` (`greeting` says which greeting it plays)."""
    VOICEMAIL_ACCESS = "voicemail access"
    """Listen to voicemail by phone: mailbox `number` ("" asks for one)."""
    UNKNOWN = "unknown"
    """Nowhere to go; `reason` says why (404, or 503 for an emergency call with no trunk)."""


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    number: str = ""
    """What to dial: the extension, the ring group, the slot, the number sent to the trunk
    (after strip and prepend), or the extension to pick up from."""
    members: tuple[str, ...] = ()
    """Extensions to ring: the ring group's members, (number,) for an extension."""
    in_order: bool = False
    """Ring the members one after the other instead of all at once."""
    member_timeout: float = 0.0
    """Seconds each member rings when in_order."""
    trunk: TrunkConfig | None = None
    """The trunk of a TRUNK route."""
    caller_id: str | None = None
    """Outbound caller ID for a TRUNK route; None: the trunk's default, i.e. none."""
    emergency: bool = False
    priority: int = 0
    """For a QUEUE route: the caller's priority there (higher is served first)."""
    greeting: str = "unavailable"
    """For a VOICEMAIL route: "unavailable" or "busy"."""
    reason: str = ""
    """Which rule matched, for logs and `explain`."""


@dataclass(frozen=True, slots=True)
class CallRequest:
    caller: str
    """The calling extension, or the remote number of a call from a trunk."""
    dialled: str
    """The Request-URI user: what the caller dialled, or the DID a trunk delivered."""
    from_trunk: str | None = None
    """Name of the trunk the call came from; None for a call from an extension."""


Hook = Callable[[CallRequest], str | Route | None]


class Dialplan:
    """Routes calls by the configuration. `is_extension` answers whether a user exists."""

    def __init__(
        self,
        config: Config,
        is_extension: Callable[[str], bool],
        hook: Hook | None = None,
        queues: QueueDirectory | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._config = config
        self._now = now
        """The time (timezone-aware) [[time_route]]s are decided by; tests pass their own."""
        self._schedules = {s.name: s for s in config.hours}
        self._time_routes = {r.number: r for r in config.time_routes}
        self._queues = queues
        self._plan = config.dialplan
        self._is_extension = is_extension
        self._hook = hook
        self._groups = {g.number: g for g in config.ring_groups}
        self._rooms = {c.number: c for c in config.conferences}
        self._flows = dict(config.ivr.numbers)
        self._slots = frozenset(self._plan.slots)
        self.warnings: tuple[str, ...] = ()
        """Things that load but will not work, for the server to log at start."""
        if self._plan.emergency_numbers and config.emergency_trunk is None:
            numbers = ", ".join(self._plan.emergency_numbers)
            self.warnings = (f"no [[trunk]] is configured: emergency calls ({numbers}) get 503",)

    @classmethod
    def from_config(
        cls,
        config: Config,
        is_extension: Callable[[str], bool],
        queues: QueueDirectory | None = None,
    ) -> Dialplan:
        """A dialplan with the configured hook loaded (ConfigError if it cannot be)."""
        spec = config.dialplan.hook
        hook = load_hook(spec, config.path.parent) if spec else None
        return cls(config, is_extension, hook, queues)

    def schedule(self, name: str) -> Schedule | None:
        """The [[hours]] table called `name` (IVR flows ask it `is_open`)."""
        return self._schedules.get(name)

    def route(self, request: CallRequest) -> Route:
        if request.from_trunk is None:
            emergency = self._emergency(request.dialled)
            if emergency is not None:
                return emergency
        from_hook = self._ask_hook(request)
        if from_hook is not None:
            return from_hook
        if request.from_trunk is not None:
            return self._inbound(request)
        return self._internal(request.dialled) or self._outbound(request.dialled)

    def _emergency(self, dialled: str) -> Route | None:
        numbers = self._plan.emergency_numbers
        if dialled in numbers:
            number, how = dialled, f"{dialled} is an emergency number"
        else:
            # Whoever dials the outside-line prefix first ("9911") still reaches emergency.
            for route in self._config.outbound_routes:
                stripped = dialled[route.strip :]
                if dialled.startswith(route.prefix) and stripped in numbers:
                    number = stripped
                    how = f"{dialled} is emergency number {stripped} after route {route.name}"
                    break
            else:
                return None
        trunk = self._config.emergency_trunk
        if trunk is None:
            return Route(RouteKind.UNKNOWN, number, emergency=True, reason=f"{how}; no trunk")
        return Route(
            RouteKind.TRUNK,
            number,
            trunk=trunk,
            caller_id=trunk.caller_id or None,
            emergency=True,
            reason=f"{how} -> trunk {trunk.name}",
        )

    def _ask_hook(self, request: CallRequest) -> Route | None:
        if self._hook is None:
            return None
        try:
            answer = self._hook(request)
        except Exception:
            log.exception("dialplan hook failed for %s; the normal rules apply", request)
            return None
        if answer is None:
            return None
        if isinstance(answer, str):
            route = self._target(answer, f"hook -> {answer}")
        elif isinstance(answer, Route):
            route = answer
        else:
            if inspect.iscoroutine(answer):
                answer.close()  # never awaited: say so once, here, not as a RuntimeWarning
            log.error(
                "dialplan hook returned %r for %s (expected str, Route or None); "
                "the normal rules apply",
                answer,
                request,
            )
            return None
        if request.from_trunk is not None and route.kind is RouteKind.TRUNK:
            log.error(
                "dialplan hook routed a call from trunk %s out to a trunk; refused, "
                "the normal rules apply",
                request.from_trunk,
            )
            return None
        return route

    def _target(self, target: str, reason: str) -> Route:
        """A hook's target: internal, or "trunk:NAME:NUMBER"."""
        if target.startswith(TRUNK_TARGET):
            name, _, number = target[len(TRUNK_TARGET) :].partition(":")
            trunk = self._config.trunk(name)
            if trunk is None or not number:
                why = "no such trunk" if trunk is None else "no number"
                return Route(RouteKind.UNKNOWN, target, reason=f"{reason}: {why}")
            return Route(
                RouteKind.TRUNK,
                number,
                trunk=trunk,
                caller_id=trunk.caller_id or None,
                reason=reason,
            )
        found = self._internal(target, reason)
        if found is None:
            return Route(RouteKind.UNKNOWN, target, reason=f"{reason}: no such extension")
        return found

    def _inbound(self, request: CallRequest) -> Route:
        did = self._did(request.dialled, request.from_trunk or "")
        if did is None:
            reason = f"no [[did]] for {request.dialled} from trunk {request.from_trunk}"
            return Route(RouteKind.UNKNOWN, request.dialled, reason=reason)
        reason = f"DID {did.number} -> {did.target}"
        # Internal targets only, but for one: a time_route may forward the call out through a
        # trunk again (its "trunk:NAME:NUMBER" target, the on-call number after hours).
        found = self._internal(did.target, reason)
        if found is None:
            return Route(RouteKind.UNKNOWN, did.target, reason=f"{reason}: no such extension")
        return found

    def _did(self, dialled: str, trunk: str) -> DidConfig | None:
        number = dialled.lstrip("+")
        matches = [d for d in self._config.dids if d.number.lstrip("+") == number]
        # A DID for this trunk beats one for any trunk.
        for did in matches:
            if did.trunk == trunk:
                return did
        return next((d for d in matches if not d.trunk), None)

    def _internal(self, number: str, reason: str = "") -> Route | None:
        """Feature codes, ring groups and extensions; None if `number` is none of them."""
        plan = self._plan
        prefix = f"{reason}: " if reason else ""
        if number.startswith(QUEUE_TARGET):
            return self._queue_target(number, prefix)
        if number.startswith(IVR_TARGET):
            name = number[len(IVR_TARGET) :]
            return Route(RouteKind.IVR, name, reason=f"{prefix}IVR flow {name}")
        if number.startswith(VOICEMAIL_TARGET):
            return self._voicemail_target(number, prefix)
        flow = self._flows.get(number)
        if flow is not None:
            return Route(RouteKind.IVR, flow, reason=f"{prefix}{number} is IVR flow {flow}")
        voicemail = self._config.voicemail
        if voicemail.access and number == voicemail.access:
            return Route(RouteKind.VOICEMAIL_ACCESS, reason=f"{prefix}{number} is voicemail")
        if voicemail.access_any and number == voicemail.access_any:
            return Route(RouteKind.VOICEMAIL_ACCESS, "*", reason=f"{prefix}{number} is any mailbox")
        if plan.agent_login and number == plan.agent_login:
            return Route(RouteKind.AGENT_LOGIN, reason=f"{prefix}{number} is agent login")
        if plan.agent_pause and number.startswith(plan.agent_pause):
            code = number[len(plan.agent_pause) :]
            return Route(RouteKind.AGENT_PAUSE, code, reason=f"{prefix}{number} is agent pause")
        if plan.pickup and number == plan.pickup:
            return Route(RouteKind.PICKUP, reason=f"{prefix}{number} is group pickup")
        if plan.directed_pickup and number.startswith(plan.directed_pickup):
            extension = number[len(plan.directed_pickup) :]
            if extension and self._is_extension(extension):
                return Route(
                    RouteKind.DIRECTED_PICKUP,
                    extension,
                    members=(extension,),
                    reason=f"{prefix}{number} picks up the call ringing at {extension}",
                )
            # load() keeps every other number off this prefix, so nothing else can match.
            why = f"{prefix}{number}: directed pickup of {extension or '?'}, not an extension"
            return Route(RouteKind.UNKNOWN, number, reason=why)
        if plan.park and number == plan.park:
            return Route(RouteKind.PARK, number, reason=f"{prefix}{number} parks the call")
        if number in self._slots:
            return Route(RouteKind.PARK_SLOT, number, reason=f"{prefix}{number} is a park slot")
        room = self._rooms.get(number)
        if room is not None:
            name = f" ({room.name})" if room.name else ""
            why = f"{prefix}{number} is a conference{name}"
            return Route(RouteKind.CONFERENCE, number, reason=why)
        time_route = self._time_routes.get(number)
        if time_route is not None:
            return self._time_route(time_route, prefix)
        queue = self._queues.queue_of_number(number) if self._queues is not None else None
        if queue is not None:
            return Route(RouteKind.QUEUE, queue, reason=f"{prefix}{number} is queue {queue}")
        group = self._groups.get(number)
        if group is not None:
            return _ring_group(group, f"{prefix}{number} is ring group {group.name or number}")
        if self._is_extension(number):
            return Route(
                RouteKind.EXTENSION,
                number,
                members=(number,),
                reason=f"{prefix}{number} is an extension",
            )
        return None

    def _queue_target(self, target: str, prefix: str) -> Route:
        name, _, priority = target[len(QUEUE_TARGET) :].partition(":")
        if self._queues is None or not self._queues.has_queue(name):
            return Route(RouteKind.UNKNOWN, target, reason=f"{prefix}no queue named {name!r}")
        try:
            level = int(priority) if priority else 0
        except ValueError:
            return Route(RouteKind.UNKNOWN, target, reason=f"{prefix}bad priority {priority!r}")
        why = f"{prefix}queue {name}" + (f" at priority {level}" if level else "")
        return Route(RouteKind.QUEUE, name, priority=level, reason=why)

    def _voicemail_target(self, target: str, prefix: str) -> Route:
        box, _, greeting = target[len(VOICEMAIL_TARGET) :].partition(":")
        if greeting not in ("", "unavailable", "busy"):
            why = f"{prefix}bad greeting {greeting!r} (unavailable or busy)"
            return Route(RouteKind.UNKNOWN, target, reason=why)
        return Route(
            RouteKind.VOICEMAIL, box, greeting=greeting or "unavailable",
            reason=f"{prefix}voicemail box {box}",
        )  # fmt: skip

    def _time_route(self, route: TimeRouteConfig, prefix: str) -> Route:
        """Where a time_route sends a call now: its open or closed target, following
        time_routes that name time_routes. A "trunk:NAME:NUMBER" target goes out through the
        trunk even for a call from a trunk (rule 3's exception)."""
        at = self._now()
        steps: list[str] = []
        passed: list[str] = []
        while True:
            if route.number in passed or len(passed) == TIME_ROUTE_DEPTH:
                chain = " -> ".join([*passed, route.number])
                why = f"{prefix}time_route loop (at most {TIME_ROUTE_DEPTH}): {chain}"
                return Route(RouteKind.UNKNOWN, passed[0], reason=why)
            passed.append(route.number)
            schedule = self._schedules.get(route.hours)
            if schedule is None:  # load() refuses this; only a hand-built Config gets here
                why = f"{prefix}{route.number}: no [[hours]] named {route.hours!r}"
                return Route(RouteKind.UNKNOWN, route.number, reason=why)
            is_open = schedule.is_open(at)
            target = route.open if is_open else route.closed
            change = describe_change(schedule, at)
            state = ("open" if is_open else "closed") + (f" ({change})" if change else "")
            steps.append(f"{route.number}: {schedule.name} hours {state} -> {target}")
            following = self._time_routes.get(target)
            if following is None:
                return self._target(target, prefix + "; ".join(steps))
            route = following

    def _outbound(self, dialled: str) -> Route:
        best = None
        for route in self._config.outbound_routes:
            if (
                dialled.startswith(route.prefix)
                and len(dialled) >= route.min_length
                and (not route.max_length or len(dialled) <= route.max_length)
                and len(dialled) > route.strip
                and (best is None or len(route.prefix) > len(best.prefix))
            ):
                best = route
        if best is None:
            reason = f"{dialled}: no extension, ring group, feature code or outbound route"
            return Route(RouteKind.UNKNOWN, dialled, reason=reason)
        trunk = self._config.trunk(best.trunk)
        if trunk is None:  # load() refuses this; only a hand-built Config gets here
            reason = f"{dialled}: outbound route {best.name} names no trunk {best.trunk}"
            return Route(RouteKind.UNKNOWN, dialled, reason=reason)
        number = best.prepend + dialled[best.strip :]
        return Route(
            RouteKind.TRUNK,
            number,
            trunk=trunk,
            caller_id=best.caller_id or trunk.caller_id or None,
            reason=f"{dialled} matches outbound route {best.name} (prefix {best.prefix!r}) "
            f"-> {number} via trunk {trunk.name}",
        )


def _ring_group(group: RingGroupConfig, reason: str) -> Route:
    in_order = group.strategy is RingStrategy.IN_ORDER
    return Route(
        RouteKind.RING_GROUP,
        group.number,
        members=group.members,
        in_order=in_order,
        member_timeout=group.member_timeout,
        reason=f"{reason} ({'in order' if in_order else 'all at once'}: "
        f"{', '.join(group.members)})",
    )


def load_hook(spec: str, base: Path) -> Hook:
    """Import a routing hook: "module:function" (the module on sys.path or in `base`, the
    configuration file's directory) or "path/to/file.py:function" (relative to `base`)."""
    module_name, _, function_name = spec.rpartition(":")
    if not module_name or not function_name:
        raise ConfigError(
            'expected "module:function" or "path/to/file.py:function"', key="dialplan.hook"
        )
    try:
        if module_name.endswith(".py") or "/" in module_name:
            module = import_file((base / module_name).resolve())
        else:
            module = import_module(module_name, base)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"importing {module_name} failed: {type(exc).__name__}: {exc}", key="dialplan.hook"
        ) from exc
    function = getattr(module, function_name, None)
    if function is None:
        raise ConfigError(f"{module_name} has no function {function_name}", key="dialplan.hook")
    if not callable(function):
        raise ConfigError(f"{module_name}.{function_name} is not callable", key="dialplan.hook")
    hook: Hook = function
    return hook


def import_file(
    path: Path, key: str = "dialplan.hook", prefix: str = "pbx_hook_", name: str | None = None
) -> object:
    """Import a Python file afresh (a new module object each time: `pbx reload`), as
    module `name` (by default `prefix` and the file's stem)."""
    if not path.is_file():
        raise ConfigError(f"no such file {path}", key=key)
    # Registered in sys.modules so dataclasses and pickling inside the module work.
    name = name or f"{prefix}{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {path}", key=key)
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        # Compiled from the source, not a cached .pyc: the cache goes by size and mtime in
        # whole seconds, so an edit saved within the second of the last load would be missed.
        code = compile(path.read_bytes(), str(path), "exec")
        exec(code, module.__dict__)  # the site's own code, named in its config
    except BaseException:
        if previous is None:
            del sys.modules[name]
        else:
            sys.modules[name] = previous  # what the old flows run in
        raise
    return module


def import_module(name: str, base: Path, key: str = "dialplan.hook") -> object:
    # The configuration's directory goes last: an installed module of the same name wins.
    added = str(base) not in sys.path
    if added:
        sys.path.append(str(base))
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name or name.startswith(f"{exc.name}."):
            raise ConfigError(f"no module {name} on sys.path or in {base}", key=key) from None
        raise
    finally:
        if added:
            sys.path.remove(str(base))
