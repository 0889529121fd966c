"""Flows by name: the `@flow` decorator, loading the modules that hold them, and running one.

    from ivr import flow

    @flow("main", fallback="1001")
    async def main(call):
        ...

A module named in `[ivr] modules` is imported (a file path, relative to the configuration
file, or a module name); every function decorated with `@flow` in it is a flow. Loading
again (`pbx reload`) imports the modules afresh: calls already in a flow finish it as it
was, new calls get the new code. A module that fails to import keeps the flows it had.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ivr.session import HungUp, Outcome, Session
from pbx.errors import ConfigError, MediaError

log = logging.getLogger("ivr")

FlowFunction = Callable[[Session], Awaitable[object]]
_MARK = "__ivr_flow__"
APOLOGY = "sorry-error"


@dataclass(frozen=True, slots=True)
class Flow:
    name: str
    function: FlowFunction
    fallback: str = ""
    """Where the caller goes when the flow fails: a dialplan target ("" hangs up)."""
    module: str = ""


def flow(name: str, fallback: str = "") -> Callable[[FlowFunction], FlowFunction]:
    """Make `async def f(call)` the flow `name` (the dialplan reaches it as "ivr:NAME")."""
    if not name or ":" in name or name.strip() != name:
        raise ValueError(f"not a flow name: {name!r}")

    def mark(function: FlowFunction) -> FlowFunction:
        if not inspect.iscoroutinefunction(function):
            raise TypeError(f"flow {name!r}: {function.__qualname__} is not an async function")
        setattr(function, _MARK, (name, fallback))
        return function

    return mark


def flow_of(value: object, source: str = "") -> Flow | None:
    """The flow that `@flow` made of `value`; None if it is not one."""
    mark = getattr(value, _MARK, None)
    if mark is None or not callable(value):
        return None
    name, fallback = mark
    return Flow(name, value, fallback, source)


def flows_in(module: object, source: str = "") -> dict[str, Flow]:
    found: dict[str, Flow] = {}
    for value in vars(module).values():
        item = flow_of(value, source)
        if item is None:
            continue
        if item.name in found:
            raise ConfigError(f"{source}: two flows are named {item.name!r}", key="ivr.modules")
        found[item.name] = item
    return found


class FlowRegistry:
    """The flows of the configured modules."""

    def __init__(self, modules: Sequence[str] = (), base: Path | None = None) -> None:
        self.modules = tuple(modules)
        self.base = base or Path.cwd()
        self.flows: dict[str, Flow] = {}

    def add(self, *flows: Flow) -> None:
        for item in flows:
            self.flows[item.name] = item

    def get(self, name: str) -> Flow | None:
        return self.flows.get(name)

    def load(self) -> list[str]:
        """Import every module (again); the errors, one line each. A module that fails
        keeps its old flows; ConfigError at start (no flows yet) is the caller's choice."""
        errors: list[str] = []
        loaded: dict[str, Flow] = {}
        for spec in self.modules:
            try:
                module = import_flows(spec, self.base)
                found = flows_in(module, spec)
            except ConfigError as exc:
                errors.append(str(exc))
                found = {n: f for n, f in self.flows.items() if f.module == spec}
            clash = set(found) & set(loaded)
            if clash:
                errors.append(f"{spec}: flow {sorted(clash)[0]!r} is defined twice")
            loaded.update(found)
        self.flows = loaded
        return errors


def import_flows(spec: str, base: Path) -> object:
    """Import a flow module afresh: "path/to/file.py" (relative to `base`) or "pkg.module".
    Either way a new module object, compiled from the source: the calls still in the old
    flows keep the old module, and an edit of the same size saved within the second of the
    last import (which Python's bytecode cache would miss) is seen."""
    from pbx.dialplan import import_file, import_module

    try:
        if spec.endswith(".py") or "/" in spec:
            return import_file((base / spec).resolve(), key="ivr.modules", prefix="pbx_flows_")
        module = sys.modules.get(spec)
        if module is None:
            return import_module(spec, base, key="ivr.modules")
        source = getattr(module, "__file__", None) or ""
        if source.endswith(".py"):  # afresh as a file is: a new module, not from the cache
            return import_file(Path(source), key="ivr.modules", name=spec)
        return importlib.reload(module)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"importing {spec} failed: {type(exc).__name__}: {exc}", key="ivr.modules"
        ) from exc


async def run_flow(item: Flow, call: Session, default_fallback: str = "") -> Outcome:
    """Run the flow to its end. The caller hanging up (HungUp, or the task cancelled)
    ends it quietly; an exception gets the caller an apology and the fallback, and its
    traceback is logged. A flow that returns with the call still in it hangs up."""
    channel = call.channel
    channel.report("started", item.name)
    try:
        await item.function(call)
    except HungUp:
        if call.outcome is Outcome.RUNNING:
            call.outcome = Outcome.CALLER_HUNG_UP
    except asyncio.CancelledError:
        if call.outcome is Outcome.RUNNING:
            call.outcome = Outcome.CALLER_HUNG_UP
        channel.report("ended", call.outcome.value)
        raise
    except Exception as exc:
        log.exception("call %s: flow %s failed", call.call_id, item.name)
        channel.report("error", f"{type(exc).__name__}: {exc}")
        if call.outcome is Outcome.RUNNING:
            await _fall_back(call, item.fallback or default_fallback)
    else:
        if call.outcome is Outcome.RUNNING:
            try:
                await call.hangup()
            except HungUp:
                call.outcome = Outcome.CALLER_HUNG_UP
    channel.report("ended", call.outcome.value)
    return call.outcome


async def _fall_back(call: Session, target: str) -> None:
    try:
        try:
            await call.play(APOLOGY, interruptible=False)
        except MediaError:
            log.exception("call %s: no apology prompt to play", call.call_id)
        if target and await call.transfer(target):
            call.outcome = Outcome.FALLBACK
            return
        await call.hangup()
    except HungUp:
        call.outcome = Outcome.CALLER_HUNG_UP
