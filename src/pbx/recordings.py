"""Call recording for the exchange: which calls are recorded (the [recording] policy and
its [[recording_rule]]s), one `Recorder` per recorded call on the media clock, and the
events that index each file in the database (the server writes them, as for CDRs).

A recorded call's caller is the left channel and the callee the right, whoever is on each
side after transfers: the recorder follows the call's two media endpoints. Files go to
`<data_dir>/<directory>/YYYY/MM/DD/<time>-<call id>.<format>`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from media.aio import MediaEndpoint
from media.clock import Listener, MediaClock, decodable
from media.recording import Recorder, audio_duration, repair_wav
from pbx.config import Config, RecordPolicy
from pbx.errors import MediaError
from pbx.events import EventBus, RecordingPaused, RecordingStarted, RecordingStopped

log = logging.getLogger("pbx.recordings")

Side = tuple[MediaEndpoint, str | None]  # a party's endpoint and its codec (None: unknown)


@dataclass(frozen=True, slots=True)
class Decision:
    record: bool
    retention_days: float = 0.0


@dataclass(eq=False)
class Recording:
    id: str
    call_id: str
    caller: str
    callee: str
    path: Path
    recorder: Recorder
    sides: list[Side | None] = field(default_factory=lambda: [None, None])
    listeners: list[Listener | None] = field(default_factory=lambda: [None, None])

    @property
    def paused(self) -> bool:
        return self.recorder.paused


class RecordingManager:
    def __init__(
        self,
        config: Config,
        clock: MediaClock,
        events: EventBus,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.config, self.clock, self.events, self.now = config, clock, events, now
        self.active: dict[str, Recording] = {}  # by call id
        self.declined: set[str] = set()  # calls whose recording was stopped by hand

    def decide(self, parties: Iterable[str], trunk: str = "", queue: str = "") -> Decision:
        """Whether a call with these parties (extensions or numbers), over `trunk` and
        through `queue`, is recorded, and for how many days the file is kept. A matching
        rule with record = false wins over everything; the first matching rule's
        retention wins over the [recording] default."""
        settings = self.config.recording
        names = set(parties)
        matching = [
            rule for rule in self.config.recording_rules
            if (rule.extension and rule.extension in names)
            or (rule.trunk and rule.trunk == trunk)
            or (rule.queue and rule.queue == queue)
        ]  # fmt: skip
        if any(not rule.record for rule in matching):
            return Decision(False)
        days = next((r.retention_days for r in matching if r.retention_days > 0), 0.0)
        days = days or settings.retention_days
        if settings.record is RecordPolicy.ALL or (
            settings.record is RecordPolicy.RULES and matching
        ):
            return Decision(True, days)
        return Decision(False, days)

    def start(
        self, call_id: str, caller: str, callee: str, a: Side, b: Side, by: str = "policy",
        retention_days: float | None = None,
    ) -> Recording | None:  # fmt: skip
        """Begin recording a call (None if it already is, or the file cannot be made)."""
        if call_id in self.active:
            return None
        self.declined.discard(call_id)
        settings = self.config.recording
        started = self.now()
        stamp = time.strftime("%Y/%m/%d/%H%M%S", time.localtime(started))
        path = self.config.recordings_dir / f"{stamp}-{call_id}.{settings.format}"
        suffix = 1
        while path.exists():  # the same call recorded again within a second
            path = path.with_name(f"{path.stem.split('~')[0]}~{suffix}{path.suffix}")
            suffix += 1
        try:
            recorder = Recorder(path, settings.format, None, None)
        except MediaError as exc:
            log.error("call %s: not recorded: %s", call_id, exc)
            return None
        recording = Recording(os.urandom(6).hex(), call_id, caller, callee, path, recorder)
        self.active[call_id] = recording
        self.sync(call_id, a, b)
        self.clock.add_job(recorder)
        days = self.decide(()).retention_days if retention_days is None else retention_days
        log.info("call %s: recording to %s (%s)", call_id, path, by)
        self.events.publish(
            RecordingStarted(started, call_id, caller, callee, recording_id=recording.id,
                             path=str(path), format=settings.format, retention_days=days,
                             by=by)
        )  # fmt: skip
        return recording

    def sync(self, call_id: str, a: Side, b: Side) -> None:
        """The call's endpoints or codecs changed (a transfer, a re-INVITE): listen to the
        ones it has now. A side in a codec we cannot decode (G.722) is recorded silent."""
        recording = self.active.get(call_id)
        if recording is None:
            return
        for index, side in enumerate((a, b)):
            if side == recording.sides[index]:
                continue
            old = recording.listeners[index]
            if old is not None:
                self.clock.unlisten(old)
            endpoint, codec = side
            listener = None
            if codec is not None and decodable(codec):
                listener = self.clock.listen(endpoint, codec)
            elif codec is not None:
                log.warning("call %s: the %s side (%s) is recorded silent", call_id,
                            "caller" if index == 0 else "callee", codec)  # fmt: skip
            recording.sides[index] = side
            recording.listeners[index] = listener
        recording.recorder.left, recording.recorder.right = recording.listeners

    def pause(self, call_id: str, paused: bool, by: str = "api") -> bool:
        """Pause (or resume) a call's recording; False if it is not being recorded."""
        recording = self.active.get(call_id)
        if recording is None:
            return False
        if recording.recorder.paused != paused:
            recording.recorder.paused = paused
            log.info("call %s: recording %s by %s", call_id,
                     "paused" if paused else "resumed", by)  # fmt: skip
            self.events.publish(
                RecordingPaused(self.now(), call_id, recording.caller, recording.callee,
                                recording_id=recording.id, paused=paused, by=by)
            )  # fmt: skip
        return True

    def stop(self, call_id: str, by_hand: bool = False) -> Recording | None:
        """Finish a call's recording. `by_hand` (a feature code, the API): the policy does
        not start it again for this call."""
        if by_hand:
            self.declined.add(call_id)
        recording = self.active.pop(call_id, None)
        if recording is None:
            return None
        recorder = recording.recorder
        self.clock.remove_job(recorder)
        for listener in recording.listeners:
            if listener is not None:
                self.clock.unlisten(listener)
        try:
            recorder.close()
        except (OSError, RuntimeError) as exc:
            log.error("call %s: finishing %s failed: %s", call_id, recording.path, exc)
        self.events.publish(
            RecordingStopped(self.now(), call_id, recording.caller, recording.callee,
                             recording_id=recording.id, path=str(recording.path),
                             duration=recorder.duration, paused_seconds=recorder.paused_seconds)
        )  # fmt: skip
        return recording

    def ended(self, call_id: str) -> None:
        """The call is over: its recording is finished and nothing more is kept of it."""
        self.stop(call_id)
        self.declined.discard(call_id)

    def stop_all(self) -> None:
        for call_id in list(self.active):
            self.stop(call_id)


def finished_duration(path: Path, fmt: str) -> float | None:
    """The duration of a recording a stopped process left unfinished, after repairing
    the file where its format needs it (WAV's header); None if nothing playable is left."""
    if fmt == "wav":
        return repair_wav(path)
    return audio_duration(path)
