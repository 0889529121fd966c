"""Call recording for the exchange: which calls are recorded (the [recording] policy and
its [[recording_rule]]s), one `Recorder` per recorded call on the media clock, and the
events that index each file in the database (the server writes them, as for CDRs).

A recorded call's caller is the left channel and the callee the right, whoever is on each
side after transfers: the recorder follows the call's two media endpoints (a
`RecordedStream` taps each; nothing is decoded until the recorder writes a second). Files go to
`<data_dir>/<directory>/YYYY/MM/DD/<time>-<call id>.<format>`.

The files are written off the event loop, by one `FileWriter` thread for every recording
(a second of audio each second, in order per file). A stopped recording is finished by a
second thread, so that no trim holds up the others' writes: it waits for the file's last
write and close, trims the silence off its ends with `[recording] trim_silence`, and only
then does the loop publish `RecordingStopped` with the file's true duration.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from media.aio import FileWriter, MediaEndpoint
from media.clock import MediaClock, decodable
from media.recording import (
    FIRST_WRITE_TICKS,
    RATE,
    RecordedStream,
    Recorder,
    repair_flac,
    repair_wav,
    trim_silence,
)
from pbx.config import Config, RecordPolicy
from pbx.errors import MediaError
from pbx.events import EventBus, RecordingPaused, RecordingStarted, RecordingStopped

log = logging.getLogger("pbx.recordings")

Side = tuple[MediaEndpoint, str | None]  # a party's endpoint and its codec (None: unknown)
SHUTDOWN_WAIT = 30.0  # seconds `stop_all` waits for the recordings to be finished


@dataclass(frozen=True, slots=True)
class Decision:
    record: bool
    retention_days: float = 0.0


@dataclass(frozen=True, slots=True)
class Finished:
    """A stopped recording's file as it was left: what `RecordingStopped` says of it."""

    duration: float
    paused_seconds: float
    trimmed: tuple[int, int] | None = None  # the samples kept of the untrimmed file


@dataclass(eq=False)
class Recording:
    id: str
    call_id: str
    caller: str
    callee: str
    path: Path
    recorder: Recorder
    sides: list[Side | None] = field(default_factory=lambda: [None, None])
    finished: Future[Finished] | None = None
    """Once stopped: done when the file is complete (written, closed, trimmed)."""

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
        self.files = FileWriter("pbx-recording-writes")
        """Every recorder's writes, in order, off the loop."""
        self.finisher = FileWriter("pbx-recording-finish")
        """Stopped recordings: waits for each file's close, then trims it."""
        self._finishing: dict[str, Recording] = {}  # by recording id: not yet published

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
            recorder = Recorder(path, settings.format, None, None, self.files, self.clock.time)
        except MediaError as exc:
            log.error("call %s: not recorded: %s", call_id, exc)
            return None
        recording = Recording(os.urandom(6).hex(), call_id, caller, callee, path, recorder)
        self.active[call_id] = recording
        self.sync(call_id, a, b)
        self.clock.add_second_job(recorder, FIRST_WRITE_TICKS)
        days = self.decide(()).retention_days if retention_days is None else retention_days
        log.info("call %s: recording to %s (%s)", call_id, path, by)
        self.events.publish(
            RecordingStarted(started, call_id, caller, callee, recording_id=recording.id,
                             path=str(path), format=settings.format, retention_days=days,
                             by=by)
        )  # fmt: skip
        return recording

    def sync(self, call_id: str, a: Side, b: Side) -> None:
        """The call's endpoints or codecs changed (a transfer, a re-INVITE): record the
        ones it has now. A side in a codec we cannot decode (G.722) is recorded silent."""
        recording = self.active.get(call_id)
        if recording is None:
            return
        for index, side in enumerate((a, b)):
            if side == recording.sides[index]:
                continue
            endpoint, codec = side
            stream = None
            if codec is not None and decodable(codec):
                stream = RecordedStream(codec, endpoint)
            elif codec is not None:
                log.warning("call %s: the %s side (%s) is recorded silent", call_id,
                            "caller" if index == 0 else "callee", codec)  # fmt: skip
            recording.sides[index] = side
            recording.recorder.follow(index, stream)

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
        not start it again for this call. The file is finished off the loop (the last
        writes, a trim); `RecordingStopped` follows when it is (`recording.finished`)."""
        if by_hand:
            self.declined.add(call_id)
        recording = self.active.pop(call_id, None)
        if recording is None:
            return None
        recorder = recording.recorder
        self.clock.remove_second_job(recorder)
        try:
            closing = recorder.close()  # and its streams; with `files`, queued: raises nothing
        except Exception as exc:  # whatever spoilt the file, the event follows
            closing = Future()
            closing.set_exception(exc)
        trim = self.config.recording.trim_silence
        recording.finished = self.finisher.call(_finish, recording, closing, trim)
        self._finishing[recording.id] = recording
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:  # no loop to come back to (a script): wait here
            concurrent.futures.wait([recording.finished])
            self._stopped(recording.id)
        else:
            recording.finished.add_done_callback(lambda _: _call_soon(loop, self._stopped,
                                                                      recording.id))  # fmt: skip
        return recording

    def _stopped(self, recording_id: str) -> None:
        """On the loop: a stopped recording is finished; say so."""
        recording = self._finishing.pop(recording_id, None)
        if recording is None or recording.finished is None:
            return  # published already (`stop_all` came first)
        finished = recording.finished.result()
        self.events.publish(
            RecordingStopped(self.now(), recording.call_id, recording.caller, recording.callee,
                             recording_id=recording.id, path=str(recording.path),
                             duration=finished.duration,
                             paused_seconds=finished.paused_seconds)
        )  # fmt: skip

    def ended(self, call_id: str) -> None:
        """The call is over: its recording is finished and nothing more is kept of it."""
        self.stop(call_id)
        self.declined.discard(call_id)

    async def stop_all(self, grace: float = SHUTDOWN_WAIT) -> bool:
        """Shutdown: stop every recording, wait (the loop going on meanwhile) until each
        file is finished and its `RecordingStopped` published, then end the threads. False
        if some were not finished within `grace` seconds: those stay unfinished in the
        index, for the next start to repair."""
        for call_id in list(self.active):
            self.stop(call_id)
        pending = list(self._finishing.values())
        futures = [asyncio.wrap_future(r.finished) for r in pending if r.finished is not None]
        if futures:
            await asyncio.wait(futures, timeout=grace)
        for recording in pending:
            if recording.finished is not None and recording.finished.done():
                self._stopped(recording.id)  # unless its own callback came first
            else:
                log.error("call %s: %s is not finished after %s s; the next start repairs it",
                          recording.call_id, recording.path, grace)  # fmt: skip
        await asyncio.to_thread(self.files.close, grace)
        await asyncio.to_thread(self.finisher.close, grace)
        return not self._finishing


def _finish(recording: Recording, closing: Future[float], trim: bool) -> Finished:
    """On the finisher's thread: wait for the file's close, then trim it. Whatever fails
    is logged and the file left as it is, so the recording is always finished."""
    recorder = recording.recorder
    try:
        seconds = closing.result()
    except Exception as exc:  # a disk error, a full disk: logged, not raised
        log.error("call %s: finishing %s failed: %s", recording.call_id, recording.path, exc)
        return Finished(recorder.duration, recorder.paused_seconds)
    if recorder.lost_samples:
        log.warning("call %s: %.1f s of audio came too late for %s (network delay)",
                    recording.call_id, recorder.lost_samples / RATE, recording.path)  # fmt: skip
    if recorder.dropped_frames:
        log.error("call %s: %.1f s of %s were not written: the disk was too slow",
                  recording.call_id, recorder.dropped_frames / RATE, recording.path)  # fmt: skip
    if not trim:
        return Finished(seconds, recorder.paused_seconds)
    try:
        start, end = trim_silence(recording.path, recorder.format)
    except Exception as exc:  # the untrimmed file stays, whole
        log.error("call %s: trimming %s failed, kept whole: %s", recording.call_id,
                  recording.path, exc)  # fmt: skip
        return Finished(seconds, recorder.paused_seconds)
    if (end - start) / RATE < seconds:
        log.info("call %s: %s trimmed to %.1f s of %.1f s", recording.call_id, recording.path,
                 (end - start) / RATE, seconds)  # fmt: skip
    return Finished((end - start) / RATE, recorder.paused_between(start, end), (start, end))


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[str], None], arg: str) -> None:
    # A closed loop: `stop_all` published the event, or nobody is left to hear it.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, arg)


def finished_duration(path: Path, fmt: str) -> float | None:
    """The duration of a recording a stopped process left unfinished, after repairing
    the file where its format needs it (WAV's header); None if nothing playable is left."""
    if fmt == "wav":
        return repair_wav(path)
    return repair_flac(path)
