"""Trimming a finished recording's silence ([recording] trim_silence), on real speech made by
espeak-ng: what is cut (VAD on both channels, 0.5 s margins, 1 s of an all-silent one), that
the speech comes through sample for sample, and that a failure or a crash on the way leaves
the original file whole."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile

from media.recording import FORMATS, FRAME, RATE, audio_duration, open_writer, trim_silence
from media.vad import speech_extent
from tests.support.espeak import espeak

Samples = npt.NDArray[np.int16]


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Samples:
    return espeak(tmp_path_factory.mktemp("speech"))


def silence(seconds: float) -> Samples:
    return np.zeros(round(seconds * RATE), dtype=np.int16)


def write(path: Path, fmt: str, left: Samples, right: Samples) -> None:
    writer = open_writer(path, fmt)
    writer.write(np.stack([left, right], axis=1))
    writer.close()


def energy(samples: npt.NDArray[np.int16]) -> int:
    return int((samples.astype(np.int64) ** 2).sum())


def near_half_a_second(samples: int) -> None:
    """The margin kept: 0.5 s, give or take the frames at the edge of the speech (the VAD
    decides per 20 ms frame, and calls the first or last quiet one of a word silence)."""
    assert abs(samples - RATE // 2) <= 3 * FRAME, samples / RATE


@pytest.mark.parametrize("fmt", FORMATS)
def test_silence_is_cut_to_half_a_second_each_side_of_the_speech(
    tmp_path: Path, speech: Samples, fmt: str
) -> None:
    """The caller speaks after 2 s of silence, the callee answers a second later, then 2 s
    of silence: the file keeps from 0.5 s before the caller's first word to 0.5 s after the
    callee's last, and every sample of both is still there."""
    quiet = np.zeros_like(speech)
    left = np.concatenate([silence(2), speech, silence(1), quiet, silence(2)])
    right = np.concatenate([silence(2), quiet, silence(1), speech, silence(2)])
    path = tmp_path / f"call.{fmt}"
    write(path, fmt, left, right)
    before = soundfile.read(path, dtype="int16")[0]

    start, end = trim_silence(path, fmt)

    sound = np.flatnonzero(np.abs(before).max(axis=1))  # the caller's first, the callee's last
    assert sound[0] < 2.1 * RATE and sound[-1] > 3 * RATE + len(speech) + 3 * RATE
    near_half_a_second(sound[0] - start)
    near_half_a_second(end - 1 - sound[-1])
    data, rate = soundfile.read(path, dtype="int16")
    assert rate == RATE and data.shape == (end - start, 2)
    assert audio_duration(path) == pytest.approx((end - start) / RATE)
    assert np.array_equal(data, before[start:end])  # the same samples, in the same format
    assert (energy(data[:, 0]), energy(data[:, 1])) == (energy(speech), energy(speech))
    assert soundfile.info(str(path)).format == fmt.upper()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_speech_on_either_channel_counts(tmp_path: Path, speech: Samples) -> None:
    path = tmp_path / "callee.wav"
    after = silence(3 + len(speech) / RATE + 2.5)
    write(path, "wav", after, np.concatenate([silence(3), speech, silence(2.5)]))
    sound = np.flatnonzero(speech)
    start, end = trim_silence(path, "wav")
    near_half_a_second(3 * RATE + sound[0] - start)
    near_half_a_second(end - 1 - (3 * RATE + sound[-1]))


def test_a_recording_with_no_speech_keeps_its_first_second(tmp_path: Path) -> None:
    path = tmp_path / "silent.flac"
    write(path, "flac", silence(5), silence(5))
    assert trim_silence(path, "flac") == (0, RATE)
    assert audio_duration(path) == pytest.approx(1.0)
    short = tmp_path / "short.wav"
    write(short, "wav", silence(0.6), silence(0.6))
    assert trim_silence(short, "wav") == (0, round(0.6 * RATE))  # shorter than that: as is


def test_nothing_to_cut_leaves_the_file_alone(tmp_path: Path, speech: Samples) -> None:
    path = tmp_path / "busy.wav"
    write(path, "wav", np.concatenate([silence(0.2), speech]), silence(0.2 + len(speech) / RATE))
    before, stat = path.read_bytes(), path.stat()
    assert trim_silence(path, "wav") == (0, round(0.2 * RATE) + len(speech))
    assert path.read_bytes() == before and path.stat().st_mtime_ns == stat.st_mtime_ns


def test_only_the_ends_are_run_through_the_vad(speech: Samples) -> None:
    """An hour-long call with speech near both ends: the scan reads a few seconds of it."""
    length = 3600 * RATE
    spoken = {RATE: speech, length - RATE - len(speech): speech}
    read: list[int] = []

    def block(start: int, count: int) -> Samples:
        read.append(count)
        out = np.zeros((count, 2), dtype=np.int16)
        for at, samples in spoken.items():
            lo, hi = max(start, at), min(start + count, at + len(samples))
            if lo < hi:
                out[lo - start : hi - start, 1] = samples[lo - at : hi - at]
        return out

    bounds = speech_extent(block, length)
    assert bounds is not None
    sound = np.flatnonzero(speech)
    assert abs(bounds[0] - (RATE + sound[0])) <= 3 * FRAME
    assert abs(bounds[1] - (length - RATE - len(speech) + sound[-1])) <= 3 * FRAME
    assert sum(read) <= 8 * RATE  # of the hour's 3600 s


def test_a_failed_trim_leaves_the_original_whole(
    tmp_path: Path, speech: Samples, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "call.wav"
    write(
        path,
        "wav",
        np.concatenate([silence(3), speech, silence(3)]),
        silence(6 + len(speech) / RATE),
    )
    before = path.read_bytes()

    def full_disk(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("media.recording.os.replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        trim_silence(path, "wav")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the temp file is removed
    monkeypatch.undo()
    assert trim_silence(path, "wav")[0] > 2 * RATE  # and a later trim works


CRASH = """
import os, signal, sys
from pathlib import Path
import media.recording as recording

where = sys.argv[2]
if where == "copy":  # killed while the kept part is being written beside the original
    write = recording.WavWriter.write
    def write_and_die(self, frames):
        write(self, frames[: len(frames) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    recording.WavWriter.write = write_and_die
else:  # killed with the copy complete, just before it replaces the original
    recording.os.replace = lambda *_: os.kill(os.getpid(), signal.SIGKILL)
recording.trim_silence(Path(sys.argv[1]), "wav")
"""


@pytest.mark.parametrize("where", ["copy", "rename"])
def test_a_crash_mid_trim_leaves_the_original_playable(
    tmp_path: Path, speech: Samples, where: str
) -> None:
    path = tmp_path / "call.wav"
    left = np.concatenate([silence(3), speech, silence(3)])
    write(path, "wav", left, np.zeros_like(left))
    before = path.read_bytes()
    child = subprocess.run([sys.executable, "-c", CRASH, str(path), where],
                           capture_output=True, timeout=60)  # fmt: skip
    assert child.returncode == -9, child.stderr.decode()
    assert path.read_bytes() == before
    data, _ = soundfile.read(path, dtype="int16")
    assert np.array_equal(data[:, 0], left)
    assert (tmp_path / f".{path.name}.trim").exists()  # what the crash left: not the recording
    start, end = trim_silence(path, "wav")  # the next trim writes over it
    assert end - start < len(left) - 4 * RATE
    assert sorted(os.listdir(tmp_path)) == [path.name]
