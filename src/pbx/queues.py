"""The ACD in the exchange: the pure engine (acd.engine) on the event loop's timers.

The engine decides; this layer carries its outputs out. Offers ring agents' phones and
announcements play through the call manager (`QueueCalls`), every output is committed to
the `queue_log` table and published on the event bus, and live statistics are folded from
the same outputs (acd.stats), starting from today's log so a restart keeps the day's figures.

Agents and queues live in the database: `pbx agent ...` and `pbx queue ...` write it, and
the exchange picks changes up within a second (`refresh`), as it does for users. An agent's
presence (logged in where, paused why) is remembered there too, so a restart keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from functools import partial
from typing import Any, ClassVar, Protocol

from acd.engine import CallState, Engine
from acd.model import (
    AcdError,
    AgentState,
    AgentStateChanged,
    Announce,
    CallbackAttempt,
    CancelOffer,
    Exit,
    ExitReason,
    Offer,
    Output,
)
from acd.stats import Statistics
from pbx.events import CallEnded, CallTransferred, Event, EventBus, RegistrationChanged
from pbx.store import Store

log = logging.getLogger("pbx.queues")

UNREACHABLE = "unreachable"  # the pause reason of an agent whose phone is not registered
IN_A_CALL = "in a call"  # ... of an agent offered a call while on a call of their own


class QueueCalls(Protocol):
    """What the ACD asks of the call manager."""

    def ring_agent(self, offer: Offer) -> None: ...
    def stop_ringing_agent(self, cancel: CancelOffer) -> None: ...
    def announce(self, announce: Announce) -> None: ...
    def leave_queue(self, exit: Exit) -> None: ...
    def call_back(self, attempt: CallbackAttempt) -> None: ...
    def reachable(self, extension: str) -> bool: ...
    def in_call(self, extension: str) -> bool: ...


@dataclasses.dataclass(frozen=True, slots=True)
class AcdEvent(Event):
    """An engine output on the event bus: `{"type": "queue_offer", ...its fields}`, or
    `agent_state` for an agent's state changes."""

    output: Output

    @property
    def type(self) -> str:  # type: ignore[override]
        """The kind of output: one event type each, as `pbx events` shows them."""
        if isinstance(self.output, AgentStateChanged):
            return "agent_state"
        return _EVENT[self.output.__class__.__name__]

    def to_json(self) -> dict[str, Any]:
        fields = {k: _plain(v) for k, v in dataclasses.asdict(self.output).items()}
        return {"type": self.type, **fields}


@dataclasses.dataclass(frozen=True, slots=True)
class QueueStatsChanged(Event):
    """A queue's live statistics after a step that changed them (for wallboards, CTI)."""

    type: ClassVar[str] = "queue_stats"
    queue: str
    stats: dict[str, Any]


_EVENT = {
    "Entered": "queue_entered",
    "Offer": "queue_offered",
    "CancelOffer": "queue_offer_cancelled",
    "Answered": "queue_answered",
    "NoAnswer": "queue_no_answer",
    "Abandoned": "queue_abandoned",
    "Completed": "queue_completed",
    "Transferred": "queue_transferred",
    "Announce": "queue_announce",
    "Overflowed": "queue_overflow",
    "Exit": "queue_exit",
    "CallbackRequested": "queue_callback_requested",
    "CallbackAttempt": "queue_callback_attempt",
}


def _plain(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    return value


def _midnight(now: float) -> float:
    day = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp()


class QueueManager:
    def __init__(
        self,
        store: Store,
        events: EventBus,
        clock: Callable[[], float] = time.time,
        engine: Engine | None = None,
    ) -> None:
        self.store = store
        self.events = events
        self.clock = clock
        self.engine = engine or Engine()
        self.stats = Statistics()
        self.calls: QueueCalls | None = None
        self._version = -1
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._extensions: dict[str, str] = {}  # extension -> agent id
        self._numbers: dict[str, str] = {}  # what callers dial -> queue: every INVITE asks
        self._last_queues: dict[str, tuple[str, ...]] = {}  # agent -> queues last logged in
        self._unsubscribe: list[Callable[[], None]] = []

    # ---- lifecycle

    async def start(self, calls: QueueCalls) -> None:
        self.calls = calls
        now = self.clock()
        specs = await self.store.queues()
        self.stats = Statistics({spec.name: spec.service_level for spec in specs})
        self.stats.feed_all(await self.store.queue_log(since=_midnight(now)))
        # Calls a killed process left in its queues are gone: the log says so once.
        lost: list[Output] = [Exit(now, queue, call_id, ExitReason.LOST, now - since)
                              for queue, call_id, since in self.stats.waiting_calls()]  # fmt: skip
        if lost:
            log.warning("acd: %d calls were in queues when pbx last stopped", len(lost))
            self.stats.feed_all(lost)
            await self.store.log_outputs(lost)
        await self.refresh(force=True)
        self._unsubscribe = [self.events.subscribe(self._registration),
                             self.events.subscribe(self._transferred),
                             self.events.subscribe(self._call_ended)]  # fmt: skip

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def refresh(self, force: bool = False) -> None:
        """Bring queues and agents in line with the database (after `pbx queue add`...)."""
        version = await self.store.data_version()
        if version == self._version and not force:
            return
        self._version = version
        first = force and not self.engine.queue_names()
        now = self.clock()
        engine = self.engine
        specs = {spec.name: spec for spec in await self.store.queues()}
        records = {record.spec.id: record for record in await self.store.agents()}
        out: list[Output] = []
        for name, spec in specs.items():
            if name not in engine.queue_names() or engine.queue_spec(name) != spec:
                out += engine.set_queue(spec, now)
                self.stats.set_service_level(name, spec.service_level)
        for agent in engine.agents():
            if agent.id not in records:
                out += self._safely(engine.remove_agent, agent.id, now)
        for name in engine.queue_names():
            if name not in specs:
                out += engine.remove_queue(name, now)
        known = {a.id: a for a in engine.agents()}
        for agent_id, record in records.items():
            agent_spec = record.spec
            if record.queues:
                self._last_queues.setdefault(agent_id, tuple(record.queues))
            status = known.get(agent_id)
            if status is None or (status.extension, status.name, status.skills) != (
                agent_spec.extension, agent_spec.name, agent_spec.skills,
            ):  # fmt: skip
                out += engine.set_agent(agent_spec, now)
            if first and record.state != AgentState.LOGGED_OUT.value:
                # A restart: the agent is where they were, as far as the queues still exist.
                queues = [q for q in record.queues if q in specs]
                if queues:
                    out += self._safely(engine.login, agent_id, queues, now)
                    if record.state == AgentState.NOT_READY.value:
                        reason = record.reason or "paused"
                        out += self._safely(engine.pause, agent_id, reason, now)
        self._extensions = {a.extension: a.id for a in engine.agents()}
        self._numbers = {spec.number: name for name, spec in specs.items() if spec.number}
        self._carry_out(out)

    @staticmethod
    def _safely(work: Callable[..., list[Output]], *args: object) -> list[Output]:
        try:
            return work(*args)
        except AcdError as exc:
            log.warning("acd: %s", exc)
            return []

    # ---- what the call manager tells us

    def queue_of_number(self, number: str) -> str | None:
        return self._numbers.get(number)

    def has_queue(self, name: str) -> bool:
        return name in self.engine.queue_names()

    def music(self, queue: str) -> str:
        """The queue's music-on-hold folder ("" for the default, or no such queue)."""
        return self.engine.queue_spec(queue).music if self.has_queue(queue) else ""

    def agent_of(self, extension: str) -> str | None:
        return self._extensions.get(extension)

    def enter(self, call_id: str, queue: str, caller: str, priority: int = 0) -> None:
        self._do(lambda now: self.engine.enter(call_id, queue, now, caller, priority))

    def answered(self, call_id: str, agent: str) -> None:
        self._do(lambda now: self.engine.answered(call_id, agent, now))

    def offer_failed(self, call_id: str, agent: str, reason: str) -> None:
        self._do(lambda now: self.engine.offer_failed(call_id, agent, now, reason))

    def ended(self, call_id: str, by: str) -> None:
        """The call is over: abandoned if no agent had it, else completed."""
        status = self.engine.call_status(call_id)
        if status is None:
            return
        if status.callback and status.state is not CallState.CONNECTED:
            return  # the caller left on purpose: the callback keeps its place
        if status.state is CallState.CONNECTED:
            self._do(lambda now: self.engine.completed(call_id, now, by=by))
        else:
            self._do(lambda now: self.engine.abandon(call_id, now))

    def forget(self, call_id: str) -> None:
        """The exchange has no call for it any more: it leaves the ACD as abandoned."""
        if self.engine.call_status(call_id) is not None:
            self._soon(lambda: self._do(lambda now: self.engine.abandon(call_id, now)))

    def transferred(self, call_id: str, target: str) -> None:
        status = self.engine.call_status(call_id)
        if status is None or status.state is not CallState.CONNECTED:
            return
        self._do(lambda now: self.engine.transferred(call_id, target, now))

    def request_callback(self, call_id: str, number: str) -> None:
        self._do(lambda now: self.engine.request_callback(call_id, number, now))

    def callback_answered(self, call_id: str) -> None:
        self._do(lambda now: self.engine.callback_answered(call_id, now))

    def callback_failed(self, call_id: str) -> None:
        self._do(lambda now: self.engine.callback_failed(call_id, now))

    def records(self, queue: str) -> bool:
        """Whether the queue's own policy records the calls its agents answer."""
        return self.has_queue(queue) and self.engine.queue_spec(queue).record

    def phone_feature(self, extension: str, login: bool, code: str = "") -> str:
        """An agent's feature code: log in/out (`login`) or pause/ready; the new state."""
        agent = self._extensions.get(extension)
        if agent is None:
            raise AcdError(f"{extension} is no agent's extension")
        engine = self.engine
        status = engine.agent_status(agent)
        if login and status.state is AgentState.LOGGED_OUT:
            queues = [q for q in self._last_queues.get(agent, ()) if self.has_queue(q)]
            if not queues:
                queues = [q for q in engine.queue_names() if engine.qualifies(agent, q)]
            self.agent_action(agent, "login", queues)
        elif login:
            self.agent_action(agent, "logout")
        elif status.state is AgentState.NOT_READY:
            self.agent_action(agent, "ready")
        else:
            self.agent_action(agent, "pause", reason=code or "paused")
        state = engine.agent_status(agent).state
        if state is AgentState.READY:
            return "ready"
        if state is AgentState.LOGGED_OUT:
            return "logged_out"
        if state is AgentState.NOT_READY:
            return "paused"
        return "logged_in" if login else "ready"

    def in_queue(self, call_id: str) -> bool:
        """Waiting (not ringing an agent, not answered)."""
        status = self.engine.call_status(call_id)
        return status is not None and status.state is CallState.WAITING

    # ---- operators (CLI over the control socket, phones' feature codes)

    def agent_action(self, agent: str, action: str, queues: Iterable[str] = (),
                     reason: str = "") -> dict[str, Any]:  # fmt: skip
        engine = self.engine
        names = list(queues)
        if action == "login":
            if not names:
                raise AcdError("agent login needs at least one --queue")
            self._do(lambda now: engine.login(agent, names, now), strict=True)
        elif action == "logout":
            self._do(lambda now: engine.logout(agent, now, names or None), strict=True)
        elif action == "ready":
            self._do(lambda now: engine.ready(agent, now), strict=True)
        elif action == "pause":
            self._do(lambda now: engine.pause(agent, reason or "paused", now), strict=True)
        else:
            raise AcdError(f"unknown agent action {action!r}")
        return self.agent_row(agent)

    def agent_row(self, agent: str) -> dict[str, Any]:
        status = self.engine.agent_status(agent)
        row = {k: _plain(v) for k, v in dataclasses.asdict(status).items()}
        row["state"] = status.state.value
        stats = self.stats.agent_stats(agent, self.clock())
        row["stats"] = stats.to_json()
        return row

    def agent_rows(self) -> list[dict[str, Any]]:
        return [self.agent_row(a.id) for a in self.engine.agents()]

    def queue_row(self, name: str) -> dict[str, Any]:
        engine = self.engine
        spec = engine.queue_spec(name)
        now = self.clock()
        row: dict[str, Any] = {k: _plain(v) for k, v in dataclasses.asdict(spec).items()}
        row["overflow"] = [
            {**dataclasses.asdict(rule), "action": rule.action.value} for rule in spec.overflow
        ]
        row["strategy"] = spec.strategy.value
        row["stats"] = self.stats.queue_stats(name, now).to_json()
        row["waiting"] = [
            {"call_id": c.call_id, "caller": c.caller, "priority": c.priority,
             "position": c.position, "wait": round(now - c.entered, 1), "state": c.state.value,
             "agents": list(c.agents), "callback": c.callback}
            for c in engine.calls(name)
        ]  # fmt: skip
        row["agents"] = [a.id for a in engine.agents() if name in a.queues]
        row["staffed"] = engine.staffed(name)
        return row

    def queue_rows(self) -> list[dict[str, Any]]:
        return [self.queue_row(name) for name in self.engine.queue_names()]

    def explain(self, call_id: str) -> list[str]:
        return self.engine.explain(call_id)

    # ---- carrying out

    def _do(self, work: Callable[[float], list[Output]], strict: bool = False) -> None:
        """Run one engine step now; a wrong request is logged (or raised, for operators)."""
        try:
            out = work(self.clock())
        except AcdError as exc:
            if strict:
                raise
            log.warning("acd: %s", exc)
            return
        self._carry_out(out)

    def _carry_out(self, out: list[Output]) -> None:
        if out:
            stats = self.stats
            publish = self.events.publish
            touched: dict[str, None] = {}
            for output in out:
                stats.feed(output)
                publish(AcdEvent(output.time, output))
                if output.queue:
                    touched[output.queue] = None
                if isinstance(output, AgentStateChanged) and output.queues:
                    self._last_queues[output.agent] = output.queues
            now = out[-1].time
            for name in touched:
                figures = stats.queue_stats(name, now).to_json()
                publish(QueueStatsChanged(now, name, figures))
            self._log(out)
            for output in out:
                self._act(output)
        self._arm()

    def _act(self, output: Output) -> None:
        calls = self.calls
        if calls is None:
            return
        try:
            if isinstance(output, Offer):
                # Not registered, or talking on a call of their own (not one of the ACD's):
                # no point ringing; the agent pauses until the phone registers or is free.
                why = (UNREACHABLE if not calls.reachable(output.extension)
                       else IN_A_CALL if calls.in_call(output.extension) else "")  # fmt: skip
                if why:
                    self._soon(lambda: self.offer_failed(output.call_id, output.agent, why))
                    return
                calls.ring_agent(output)
            elif isinstance(output, CancelOffer):
                calls.stop_ringing_agent(output)
            elif isinstance(output, Announce):
                calls.announce(output)
            elif isinstance(output, Exit):
                calls.leave_queue(output)
            elif isinstance(output, CallbackAttempt):
                calls.call_back(output)
        except Exception:
            log.exception("acd: carrying out %s failed", output)

    def _soon(self, work: Callable[[], None]) -> None:
        # Not re-entrant: the engine's outputs of one step are all carried out first.
        asyncio.get_running_loop().call_soon(work)

    def _log(self, out: list[Output]) -> None:
        presence = [o for o in out if isinstance(o, AgentStateChanged)]
        task = asyncio.ensure_future(self._write(list(out), presence))
        self._writes.add(task)
        task.add_done_callback(self._written)

    async def _write(self, out: list[Output], presence: list[AgentStateChanged]) -> None:
        await self.store.log_outputs(out)
        remembered: dict[str, AgentStateChanged] = {o.agent: o for o in presence}
        for agent, change in remembered.items():
            state = change.state
            if state not in (AgentState.LOGGED_OUT, AgentState.NOT_READY):
                state = AgentState.READY  # on a call, wrapping up: available after a restart
            reason = change.reason if state is AgentState.NOT_READY else ""
            with contextlib.suppress(Exception):
                await self.store.set_agent_presence(agent, state.value, reason,
                                                    list(change.queues))  # fmt: skip

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cannot write the queue log: %s", task.exception())

    async def written(self) -> None:
        """Wait until every output so far is committed (tests, shutdown)."""
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    def _arm(self) -> None:
        at = self.engine.next_timer()
        if at == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is None:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, at - self.clock()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self.clock()
        try:
            out = self.engine.on_timer(now)
        except Exception:
            log.exception("acd: a timer failed")
            out = []
        self._carry_out(out)

    def _transferred(self, event: Event) -> None:
        """An agent passed their caller on (blind or attended): the ACD's part is done."""
        if not isinstance(event, CallTransferred):
            return
        status = self.engine.call_status(event.call_id)
        if status is None or status.state is not CallState.CONNECTED:
            return
        if self._extensions.get(event.by) == status.agents[0]:
            self.transferred(event.call_id, event.to)

    def _call_ended(self, event: Event) -> None:
        """An agent paused for being in a call of their own is Ready once it is over."""
        if not isinstance(event, CallEnded) or self.calls is None:
            return
        for party in {event.caller, event.callee, *event.legs}:
            agent = self._extensions.get(party)
            if agent is None:
                continue
            status = self.engine.agent_status(agent)
            if (status.state is AgentState.NOT_READY and status.reason == IN_A_CALL
                    and not self.calls.in_call(party)):  # fmt: skip
                self._do(partial(self._ready, agent))

    def _ready(self, agent: str, now: float) -> list[Output]:
        return self.engine.ready(agent, now)

    def _registration(self, event: Event) -> None:
        """A phone came back: its agent, paused as unreachable, is Ready again."""
        if not isinstance(event, RegistrationChanged) or event.action not in (
            "registered",
            "refreshed",
        ):
            return
        agent = self._extensions.get(event.aor)
        if agent is None:
            return
        status = self.engine.agent_status(agent)
        if status.state is AgentState.NOT_READY and status.reason == UNREACHABLE:
            self._do(lambda now: self.engine.ready(agent, now))
