"""Unit-test IVR flows without a network: scripted keys, pauses, speech and hang-ups on a
virtual clock, and a record of everything the caller heard and where the call went.

    from ivr.testing import HangUp, Speak, Wait, run

    def test_option_1_goes_to_appointments():
        result = run(main, ["1"], extensions={"1001"})
        assert result.prompts[:1] == ["clinic-menu"]
        assert result.queued == ("appointments", 0)

A script is what the caller does, in order: a string is keys pressed ("1", "1001#"),
`Wait(s)` is s seconds of doing nothing (so a flow's time-outs run out), `Speak(s)` is s
seconds of talking (for `record`), `HangUp()` hangs up. Keys pressed while a prompt plays
cut it short when it is interruptible, as on a phone. Prompts take their real length in
virtual time; nothing sleeps. When the script runs out the caller waits in silence, and
hangs up after `patience` virtual seconds of it (a flow that loops for ever still ends).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from pathlib import Path

import numpy as np
import soundfile

from ivr.flows import Flow, FlowFunction, flow_of, run_flow
from ivr.session import (
    DialStatus,
    HungUp,
    Outcome,
    Prompts,
    Recording,
    RecordingEnd,
    Session,
    Sound,
)
from ivr.voicemail import Folder, Greeting, Mailboxes, Message, Operator
from media.prompts import RATE, Samples
from media.tones import tone_plan


@dataclass(frozen=True, slots=True)
class Wait:
    seconds: float


@dataclass(frozen=True, slots=True)
class Speak:
    seconds: float


@dataclass(frozen=True, slots=True)
class HangUp:
    pass


Step = str | Wait | Speak | HangUp


@dataclass(frozen=True, slots=True)
class Played:
    names: tuple[str, ...]
    at: float  # virtual seconds since the call came in
    seconds: float  # how long it played (less than its length when cut short)
    interrupted: bool


@dataclass
class FlowRun:
    """What happened to the scripted call."""

    outcome: Outcome
    destination: str
    played: list[Played]
    steps: list[tuple[str, str]]
    transfers: list[str]
    queued: tuple[str, int] | None
    vars: dict[str, str]
    elapsed: float
    answered: bool
    recordings: list[Recording] = field(default_factory=list)

    @property
    def prompts(self) -> list[str]:
        """Every prompt name (or file) heard, in order."""
        return [name for played in self.played for name in played.names]


class ScriptedChannel:
    def __init__(
        self,
        script: Iterable[Step],
        caller: str = "1002",
        caller_name: str = "",
        dialled: str = "100",
        flow: str = "test",
        extensions: Collection[str] = (),
        hours: Mapping[str, bool] | None = None,
        unreachable: Collection[str] = (),
        queues: Collection[str] | None = None,
        mailboxes: Mailboxes | None = None,
        patience: float = 300.0,
        busy: Collection[str] = (),
        tones: Mapping[str, str] | None = None,
    ) -> None:
        self.call_id = "test-call"
        self.caller, self.caller_name, self.dialled, self.flow = caller, caller_name, dialled, flow
        self.mailboxes = mailboxes
        self.tones = tone_plan() if tones is None else tones
        self._script: deque[Step] = deque(_steps(script))
        self._keys: deque[str] = deque()
        self._extensions = frozenset(extensions)
        self._hours = dict(hours or {})
        self._unreachable = frozenset(unreachable)
        self._busy = frozenset(busy)
        self._queues = None if queues is None else frozenset(queues)
        self._patience = patience
        self._idle = 0.0
        self.now = 0.0
        self.answered = False
        self.gone = False  # the caller hung up, or the call left the flow
        self.played: list[Played] = []
        self.steps: list[tuple[str, str]] = []
        self.transfers: list[str] = []
        self.queued: tuple[str, int] | None = None
        self.recordings: list[Recording] = []

    def _check(self) -> None:
        if self.gone:
            raise HungUp("the caller hung up")

    def _hang_up(self) -> None:
        self.gone = True
        self.steps.append(("caller", "hung up"))
        raise HungUp("the caller hung up")

    def _pass(self, seconds: float, keys_stop: bool, speech: bool = False) -> tuple[float, str]:
        """Let up to `seconds` pass along the script: how long passed and why it stopped
        ("" time up, "key", "hangup", "speech" if `speech` and the caller starts talking)."""
        passed = 0.0
        while passed < seconds:
            if not self._script:
                left = seconds - passed
                self._idle += left
                self.now += left
                return seconds, "hangup" if self._idle >= self._patience else ""
            step = self._script[0]
            if isinstance(step, str):
                self._script.popleft()
                self._keys.append(step)
                self._idle = 0.0
                if keys_stop:
                    return passed, "key"
                continue
            if isinstance(step, HangUp):
                self._script.popleft()
                return passed, "hangup"
            if isinstance(step, Speak):
                if speech:
                    return passed, "speech"
                # Talk is for a recording: until one starts, the caller just presses nothing.
                self.now += seconds - passed
                return seconds, ""
            left = seconds - passed
            if step.seconds > left:
                self._script[0] = Wait(step.seconds - left)
                self.now += left
                return seconds, ""
            self._script.popleft()
            self.now += step.seconds
            passed += step.seconds
        return passed, ""

    async def answer(self) -> None:
        self._check()
        if not self.answered:
            self.answered = True
            self.steps.append(("answer", ""))

    async def play(self, sound: Sound, interruptible: bool) -> None:
        self._check()
        await asyncio.sleep(0)
        start = self.now
        if interruptible and self._keys:
            self.played.append(Played(sound.names, start, 0.0, True))
            return
        passed, why = self._pass(sound.seconds, keys_stop=interruptible)
        self.played.append(Played(sound.names, start, passed, why in ("key", "hangup")))
        if why == "hangup":
            self._hang_up()

    async def digit(self, seconds: float) -> str | None:
        self._check()
        await asyncio.sleep(0)
        if self._keys:
            return self._keys.popleft()
        _, why = self._pass(seconds, keys_stop=True)
        if why == "hangup":
            self._hang_up()
        return self._keys.popleft() if self._keys else None

    def flush(self) -> None:
        self._keys.clear()

    async def record(self, max_seconds: float, silence_seconds: float, keys: str) -> Recording:
        self._check()
        await asyncio.sleep(0)
        pieces: list[Samples] = []
        elapsed, quiet, end, key = 0.0, 0.0, RecordingEnd.MAX_LENGTH, ""
        while elapsed < max_seconds:
            step = self._script[0] if self._script else None
            if isinstance(step, Speak):
                seconds = min(step.seconds, max_seconds - elapsed)
                self._script.popleft()
                if step.seconds > seconds:
                    self._script.appendleft(Speak(step.seconds - seconds))
                pieces.append(speech_like(seconds))
                self.now += seconds
                elapsed, quiet, self._idle = elapsed + seconds, 0.0, 0.0
                continue
            if isinstance(step, str) and step in keys:
                self._script.popleft()
                end, key = RecordingEnd.KEY, step
                break
            limit = max_seconds - elapsed
            if silence_seconds:
                limit = min(limit, silence_seconds - quiet)
            passed, why = self._pass(limit, keys_stop=True, speech=True)
            pieces.append(np.zeros(round(passed * RATE), dtype=np.int16))
            elapsed, quiet = elapsed + passed, quiet + passed
            if why == "hangup":
                self.gone = True
                self.steps.append(("caller", "hung up"))
                end = RecordingEnd.HANG_UP
                break
            if why == "key":
                pressed = self._keys.popleft()
                if pressed in keys:
                    end, key = RecordingEnd.KEY, pressed
                    break
            if silence_seconds and quiet >= silence_seconds - 1e-9:
                end = RecordingEnd.SILENCE
                break
        samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)
        recording = Recording(samples, end, key)
        self.recordings.append(recording)
        return recording

    async def transfer(self, target: str) -> DialStatus:
        self._check()
        queue = target.removeprefix("queue:")
        if queue != target and self._queues is not None and queue not in self._queues:
            return DialStatus.UNAVAILABLE  # as live: no such queue
        if target in self._busy:
            return DialStatus.BUSY
        if target in self._unreachable:
            return DialStatus.NO_ANSWER
        self.transfers.append(target)
        self.gone = True
        return DialStatus.ANSWER

    async def enqueue(self, queue: str, priority: int) -> bool:
        self._check()
        if self._queues is not None and queue not in self._queues:
            return False
        self.queued = (queue, priority)
        self.gone = True
        return True

    async def hang_up(self) -> None:
        self.gone = True

    def is_extension_prefix(self, digits: str) -> bool:
        return any(e.startswith(digits) for e in self._extensions)

    def is_extension(self, number: str) -> bool:
        return number in self._extensions

    def is_open(self, hours: str) -> bool:
        return self._hours[hours]

    def taking_message(self, box: str) -> None:
        pass  # `steps` has the voicemail step already

    def report(self, step: str, detail: str = "") -> None:
        self.steps.append((step, detail))


def _steps(script: Iterable[Step]) -> list[Step]:
    out: list[Step] = []
    for step in script:
        if isinstance(step, str):
            out.extend(step)  # "1001#" is four keys and a #
        else:
            out.append(step)
    return out


def speech_like(seconds: float) -> Samples:
    """Something webrtcvad calls speech: a voiced buzz of harmonics."""
    t = np.arange(round(seconds * RATE)) / RATE
    wave = np.zeros(len(t))
    for k, f in enumerate((140, 280, 420, 700), 1):
        wave += np.sin(2 * np.pi * f * t) / k
    return (wave * 6000).astype(np.int16)


async def run_async(
    function: FlowFunction | Flow,
    script: Iterable[Step] = (),
    prompts: Prompts | None = None,
    fallback: str = "",
    **channel: object,
) -> FlowRun:
    item = function if isinstance(function, Flow) else _as_flow(function)
    scripted = ScriptedChannel(script, flow=item.name, **channel)  # type: ignore[arg-type]
    session = Session(scripted, prompts or Prompts())
    outcome = await run_flow(item, session, fallback)
    return FlowRun(
        outcome=outcome, destination=session.destination, played=scripted.played,
        steps=scripted.steps, transfers=scripted.transfers, queued=scripted.queued,
        vars=dict(session.vars), elapsed=scripted.now, answered=scripted.answered,
        recordings=scripted.recordings,
    )  # fmt: skip


def run(
    function: FlowFunction | Flow,
    script: Iterable[Step] = (),
    prompts: Prompts | None = None,
    fallback: str = "",
    **channel: object,
) -> FlowRun:
    """Run the flow against the script (in a fresh event loop) and say what happened.
    `channel` takes: caller, caller_name, dialled, extensions (the numbers that exist),
    hours ({"clinic": True}), unreachable (targets that do not answer), busy (targets that
    say busy), tones (the site's tone plan; default the US one), queues (the
    queues that exist; default any), mailboxes, patience."""
    return asyncio.run(run_async(function, script, prompts, fallback, **channel))


def _as_flow(function: FlowFunction) -> Flow:
    return flow_of(function) or Flow(getattr(function, "__name__", "flow"), function)


TEST_EPOCH = datetime(2026, 1, 5, 9, 0, tzinfo=UTC).timestamp()
"""When `MemoryMailboxes` receives its first message: a Monday, 9 a.m. UTC."""


class MemoryMailboxes:
    """Mailboxes for tests: messages as WAV files in `directory`, rows in memory. A
    message is received at `clock()` (by default 2026-01-05 09:00 UTC, a Monday, and a
    minute later for each message after it), and its envelope said in `timezone`."""

    def __init__(
        self, directory: Path, boxes: Mapping[str, str] | Sequence[str] = (),
        personal: Collection[str] = (), max_seconds: float = 120.0,
        silence_seconds: float = 3.0, min_seconds: float = 1.0, operator: str = "",
        operator_hours: str = "", envelope: bool = True, timezone: tzinfo | None = UTC,
        clock: Callable[[], float] | None = None,
    ) -> None:  # fmt: skip
        self.directory = directory
        self.pins: dict[str, str] = (
            dict(boxes) if isinstance(boxes, Mapping) else dict.fromkeys(boxes, "")
        )
        self.personal = frozenset(personal)
        self.greetings: dict[tuple[str, Greeting], Path] = {}
        self.stored: dict[str, Message] = {}
        self.max_seconds, self.silence_seconds = max_seconds, silence_seconds
        self.min_seconds = min_seconds
        self._operator = Operator(operator, operator_hours) if operator else None
        self.envelope, self.timezone = envelope, timezone
        self._received = 0
        self.clock = clock or (lambda: TEST_EPOCH + 60.0 * self._received)
        self.changes: list[str] = []  # boxes whose counts changed, for MWI
        self._ids = itertools.count(1)

    async def exists(self, box: str) -> bool:
        return box in self.pins

    async def pin(self, box: str) -> str:
        return self.pins.get(box, "")

    async def greeting(self, box: str, kind: Greeting) -> Path | None:
        return self.greetings.get((box, kind))

    async def is_personal(self, box: str) -> bool:
        return box in self.personal

    async def operator(self, box: str) -> Operator | None:
        if self._operator is None or self._operator.target == box:
            return None
        return self._operator

    async def save(
        self, box: str, caller: str, caller_name: str, recording: Recording, call_id: str,
        urgent: bool = False,
    ) -> Message | None:  # fmt: skip
        if recording.seconds < self.min_seconds:
            return None
        message_id = f"m{next(self._ids)}"
        path = _written(self.directory / box / f"{message_id}.wav", recording.samples)
        message = Message(message_id, box, caller, caller_name, float(self.clock()),
                          recording.seconds, path, urgent=urgent)  # fmt: skip
        self._received += 1
        self.stored[message_id] = message
        self.changes.append(box)
        return message

    async def messages(self, box: str) -> list[Message]:
        mine = [m for m in self.stored.values() if m.box == box]
        return sorted(mine, key=lambda m: (m.folder is not Folder.NEW, not m.urgent, m.received))

    async def mark(self, message: Message, folder: Folder) -> None:
        self.stored[message.id] = replace(message, folder=folder)
        self.changes.append(message.box)

    async def delete(self, message: Message) -> None:
        self.stored.pop(message.id, None)
        message.path.unlink(missing_ok=True)
        self.changes.append(message.box)

    async def set_pin(self, box: str, pin: str) -> None:
        self.pins[box] = pin

    async def set_greeting(self, box: str, kind: Greeting, recording: Recording) -> Path | None:
        if recording.seconds < self.min_seconds:
            return None
        path = _written(self.directory / box / f"greeting-{kind.value}.wav", recording.samples)
        self.greetings[(box, kind)] = path
        return path


def _written(path: Path, samples: Samples) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), samples, RATE, subtype="PCM_16")
    return path
