"""Recording files written off the event loop: `media.aio.FileWriter` (one thread, jobs in
order, a bounded queue), a `Recorder` handing it a second at a time (the same file as when
written at once; a killed process still leaves a WAV that plays to the last second), and
`RecordingManager` publishing `RecordingStopped` only once the file is complete (trimmed
with trim_silence) and waiting for every recording at shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile

from media.aio import FileWriter
from media.clock import TICK
from media.recording import FRAME, RATE, Recorder, audio_duration, repair_flac, repair_wav
from pbx.config import Config, RecordingConfig
from pbx.events import Event, EventBus, RecordingStopped
from pbx.recordings import RecordingManager
from tests.support.audio import sine
from tests.support.espeak import espeak
from tests.support.streams import Party, Ticks, heard, killed_mid_recording

Samples = npt.NDArray[np.int16]
ROOT = Path(__file__).resolve().parents[2]


def writer_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("test-files")]


# --- FileWriter ---------------------------------------------------------------------


def test_jobs_run_in_order_on_one_thread_of_their_own() -> None:
    files = FileWriter("test-files")
    ran: list[tuple[int, str]] = []
    for i in range(500):
        assert files.submit(lambda i: ran.append((i, threading.current_thread().name)), i)
    assert files.drain(10)
    assert [i for i, _ in ran] == list(range(500))
    assert {name for _, name in ran} == {"test-files"}
    assert files.call(lambda: 42).result(10) == 42
    with pytest.raises(ZeroDivisionError):
        files.call(lambda: 1 / 0).result(10)
    assert files.close(10) and writer_threads() == []
    assert files.call(lambda: threading.current_thread().name).result(10) == "test-files"
    assert files.close(10)  # ... and it came back for that job


def test_past_its_limit_submit_refuses_but_call_never_does() -> None:
    files = FileWriter("test-files", limit=2)
    release = threading.Event()
    blocked = files.call(release.wait, 10)  # the disk hangs
    ran: list[int] = []
    assert files.submit(ran.append, 1) and files.submit(ran.append, 2)
    assert not files.submit(ran.append, 3)
    assert files.dropped == 1 and files.pending == 2
    closing = files.call(ran.append, 4)  # a file's close is never refused
    release.set()
    assert blocked.result(10) and closing.result(10) is None
    assert ran == [1, 2, 4]
    assert files.close(10)


def test_a_failing_job_is_logged_and_the_next_ones_run(caplog: pytest.LogCaptureFixture) -> None:
    files = FileWriter("test-files")
    ran: list[int] = []

    def broken() -> None:
        raise OSError(28, "No space left on device")

    with caplog.at_level(logging.ERROR, "media.aio"):
        files.submit(broken)
        files.submit(ran.append, 1)
        assert files.drain(10)
    assert ran == [1]
    assert "a file write failed" in caplog.text and "No space" in caplog.text
    assert files.close(10)


def test_an_idle_thread_ends_by_itself() -> None:
    files = FileWriter("test-files", idle=0.05)
    assert files.call(lambda: None).result(10) is None
    for _ in range(200):
        if not writer_threads():
            break
        threading.Event().wait(0.01)
    assert writer_threads() == []
    assert files.call(lambda: 1).result(10) == 1
    assert files.close(10)


# --- Recorder on a writer thread ------------------------------------------------------


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_a_threaded_recorder_writes_the_file_a_direct_one_does(tmp_path: Path, fmt: str) -> None:
    files = FileWriter("test-files")
    made = {}
    for mode in ("direct", "thread"):
        caller, callee = Party(sine(500, 10.0)), Party(sine(1200, 10.0))
        path = tmp_path / f"{mode}.{fmt}"
        writes = files if mode == "thread" else None
        recorder, ticks = Recorder(path, fmt, caller.stream, callee.stream, writes), Ticks()
        ticks.run(recorder, [caller, callee], 120)
        recorder.paused = True
        ticks.run(recorder, [caller, callee], 30)
        recorder.paused = False
        ticks.run(recorder, [caller, callee], 37)
        closing = recorder.close()
        assert closing.result(10) == pytest.approx(187 * FRAME / RATE)
        assert recorder.close() is closing  # once
        made[mode] = soundfile.read(path, dtype="int16")[0]
        assert recorder.paused_seconds == pytest.approx(0.6)
    assert made["thread"].shape == (187 * FRAME, 2)
    assert np.array_equal(made["thread"], made["direct"])
    assert files.close(10)


def test_the_header_is_true_every_second_while_the_thread_writes(tmp_path: Path) -> None:
    files = FileWriter("test-files")
    caller = Party(sine(700, 10.0))
    path = tmp_path / "live.wav"
    recorder, ticks = Recorder(path, "wav", caller.stream, None, files), Ticks()
    ticks.run(recorder, [caller], 10)  # the first second waits 0.2 s for late packets
    for second in range(1, 4):
        ticks.run(recorder, [caller], 50)
        assert files.drain(10)
        assert audio_duration(path) == pytest.approx(second)  # a reader sees whole seconds
    ticks.run(recorder, [caller], 10)
    assert recorder.close().result(10) == pytest.approx(3.4)
    assert audio_duration(path) == pytest.approx(3.4)
    assert files.close(10)


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_a_killed_process_leaves_a_file_that_plays_to_the_last_second(
    tmp_path: Path, fmt: str
) -> None:
    path = tmp_path / f"killed.{fmt}"
    child = killed_mid_recording(path, fmt)
    assert child.returncode == -9, child.stderr.decode()
    if fmt == "wav":
        data, rate = soundfile.read(path, dtype="int16")
        assert rate == RATE and data.shape == (2 * RATE, 2)  # the two seconds written
        assert repair_wav(path) == pytest.approx(2.0)  # nothing past the header to recover
    else:
        # No length in the header yet (libsndfile: 2**63 - 1 frames), and the encoder held
        # back the part of a FLAC frame (4096 samples) not yet full: what the file holds so
        # far is what a listing shows, and a repair makes the file say so.
        assert soundfile.info(str(path)).frames > 2**62
        held = audio_duration(path)
        assert held is not None and 2.0 - 4096 / RATE - 0.02 <= held <= 2.0, held
        assert repair_flac(path) == pytest.approx(held)
        data, rate = soundfile.read(path, dtype="int16")
        assert rate == RATE and data.shape == (round(held * RATE), 2)
        assert soundfile.info(str(path)).frames == len(data)
        assert repair_flac(path) == pytest.approx(held)  # a whole file is left alone
    assert (data[:, 0] == 1008).all() and not data[:, 1].any()


def test_writes_the_disk_cannot_take_are_counted_and_the_rest_kept(tmp_path: Path) -> None:
    files = FileWriter("test-files", limit=0)  # every second refused: a disk far behind
    caller = Party(sine(700, 10.0))
    path = tmp_path / "slow.wav"
    recorder, ticks = Recorder(path, "wav", caller.stream, None, files), Ticks()
    ticks.run(recorder, [caller], 120)
    assert recorder.dropped_frames == 2 * RATE
    assert recorder.close().result(10) == pytest.approx(0.4)  # the last part, at close
    assert audio_duration(path) == pytest.approx(0.4)
    assert files.close(10)


# --- RecordingManager -----------------------------------------------------------------


class Clock:
    """The media clock as the manager uses it, ticked by the test."""

    def __init__(self) -> None:
        self.jobs: list[Any] = []
        self.ticks = Ticks()

    def add_job(self, job: Any) -> None:
        self.jobs.append(job)

    def remove_job(self, job: Any) -> None:
        self.jobs.remove(job)

    def add_second_job(self, job: Any, due_in: int = 0) -> None:
        self.jobs.append(job)  # ticked every tick here

    remove_second_job = remove_job

    def time(self) -> float:
        return self.ticks.now

    def tick(self, ticks: int, *parties: Party) -> None:
        for _ in range(ticks):
            self.ticks.now += TICK
            for party in parties:
                party.send(self.ticks.now)
            for job in self.jobs:
                job.tick(self.ticks.now)


def manager(tmp_path: Path, **recording: Any) -> tuple[RecordingManager, Clock, list[Event]]:
    config = Config(tmp_path / "pbx.toml", tmp_path, recording=RecordingConfig(**recording))
    clock, events = Clock(), EventBus()
    seen: list[Event] = []
    events.subscribe(seen.append)
    return RecordingManager(config, clock, events), clock, seen  # type: ignore[arg-type]


def start(recordings: RecordingManager, call_id: str, caller: Party, callee: Party) -> Path:
    nobody = (SimpleNamespace(), None)  # sides with no codec: nothing listened to
    recording = recordings.start(call_id, "1001", "1002", nobody, nobody)  # type: ignore[arg-type]
    assert recording is not None
    recording.recorder.follow(0, caller.stream)
    recording.recorder.follow(1, callee.stream)
    return recording.path


async def stopped_event(recordings: RecordingManager, seen: list[Event]) -> RecordingStopped:
    """The first `RecordingStopped`, awaited: the loop publishes it once the file is done."""
    published = asyncio.Event()
    unsubscribe = recordings.events.subscribe(
        lambda event: published.set() if isinstance(event, RecordingStopped) else None
    )
    try:
        await asyncio.wait_for(published.wait(), 10)
    finally:
        unsubscribe()
    [event] = [e for e in seen if isinstance(e, RecordingStopped)]
    return event


@pytest.mark.parametrize("trim", [False, True])
async def test_recording_stopped_comes_when_the_file_is_complete(
    tmp_path: Path, trim: bool
) -> None:
    recordings, clock, seen = manager(tmp_path, trim_silence=trim)
    try:
        await stopped_when_complete(recordings, clock, seen, espeak(tmp_path), trim)
    finally:
        await recordings.stop_all()


async def stopped_when_complete(
    recordings: RecordingManager, clock: Clock, seen: list[Event], words: Samples, trim: bool
) -> None:
    caller = Party(
        np.concatenate([np.zeros(3 * RATE, np.int16), words, np.zeros(3 * RATE, np.int16)])
    )
    callee = Party(np.zeros(len(caller.samples), np.int16))
    path = start(recordings, "c1", caller, callee)
    on_disk: list[float | None] = []
    recordings.events.subscribe(
        lambda e: on_disk.append(audio_duration(path)) if isinstance(e, RecordingStopped) else None
    )
    ticks = len(caller.samples) // FRAME
    clock.tick(25, caller, callee)
    recordings.pause("c1", True)  # 0.5 s paused in the silence the trim cuts
    clock.tick(25, caller, callee)
    recordings.pause("c1", False)
    clock.tick(ticks - 50, caller, callee)
    recording = recordings.stop("c1")
    assert recording is not None and recording.finished is not None
    event = await stopped_event(recordings, seen)
    untrimmed = ticks * FRAME / RATE
    if trim:
        sound = np.flatnonzero(words)  # the sentence, and 0.5 s of silence each side
        assert event.duration == pytest.approx((sound[-1] - sound[0]) / RATE + 1.0, abs=0.12)
        assert event.paused_seconds == 0.0  # the pause was in the part cut off
        assert recording.finished.result().trimmed is not None
    else:
        assert event.duration == pytest.approx(untrimmed)
        assert event.paused_seconds == pytest.approx(0.5)
    assert on_disk == [pytest.approx(event.duration)]  # the file was complete at the event
    data, _ = soundfile.read(path, dtype="int16")
    assert loud_energy(data[:, 0]) == loud_energy(heard(words))  # every word is in the file


def loud_energy(samples: Samples) -> int:
    """Energy above A-law's quietest step (silence decodes to +-8): the words' alone."""
    loud = samples[np.abs(samples) > 8].astype(np.int64)
    return int((loud**2).sum())


async def test_shutdown_waits_for_every_recording_to_be_finished(tmp_path: Path) -> None:
    recordings, clock, seen = manager(tmp_path, trim_silence=True)
    parties = [Party(sine(400 + 100 * i, 10.0)) for i in range(6)]
    paths = [start(recordings, f"c{i}", parties[2 * i], parties[2 * i + 1]) for i in range(3)]
    clock.tick(130, *parties)
    recordings.stop("c0")  # finished off the loop; its event may or may not be out yet
    # The finisher is held up until the loop itself lets it go: a stop_all that blocked
    # the loop while it waited would never finish in time.
    gate = threading.Event()
    recordings.finisher.submit(gate.wait, 10.0)
    asyncio.get_running_loop().call_later(0.05, gate.set)
    assert await recordings.stop_all(grace=5.0)  # the others too, and waits for all three
    stopped = [e for e in seen if isinstance(e, RecordingStopped)]
    assert sorted(e.call_id for e in stopped) == ["c0", "c1", "c2"]
    for event, path in zip(sorted(stopped, key=lambda e: e.call_id), paths, strict=True):
        assert event.path == str(path)
        assert audio_duration(path) == pytest.approx(event.duration)
    assert [t.name for t in threading.enumerate() if t.name.startswith("pbx-recording")] == []
    await asyncio.sleep(0.05)  # the loop's own callbacks for them publish nothing twice
    assert len([e for e in seen if isinstance(e, RecordingStopped)]) == 3


def test_a_recording_config_turns_trimming_on(tmp_path: Path) -> None:
    from pbx import config as pbx_config

    path = tmp_path / "pbx.toml"
    path.write_text('data_dir = "data"\n\n[recording]\nrecord = "all"\ntrim_silence = true\n')
    assert pbx_config.load(path).recording.trim_silence
    assert not dataclasses.replace(RecordingConfig()).trim_silence  # off by default
    path.write_text('data_dir = "data"\n\n[recording]\ntrim_silence = "yes"\n')
    with pytest.raises(pbx_config.ConfigError, match="trim_silence"):
        pbx_config.load(path)
