"""The media clock on a loop the test moves: its ticks run when the test says time has
passed, with no event loop and no sleeps."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from media.clock import TICK, MediaClock


class FakeLoop:
    """The loop as the media clock uses it, on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> Any:
        return SimpleNamespace(cancel=lambda: None, when=when)


def armed_clock() -> tuple[MediaClock, FakeLoop]:
    """A media clock on a `FakeLoop`, armed: what it is given to do does not arm it again."""
    clock, loop = MediaClock(), FakeLoop()
    clock._loop = loop  # type: ignore[assignment]
    clock._next = TICK
    clock._handle = loop.call_at(TICK, clock._tick)
    return clock, loop


def run_until(clock: MediaClock, loop: FakeLoop, when: float) -> None:
    """The loop's time moves on to `when`, each tick due meanwhile run on time."""
    while clock._handle is not None and clock._next <= when + 1e-9:  # None: nothing to do
        loop.now = max(loop.now, clock._next)
        clock._tick()
    loop.now = when
