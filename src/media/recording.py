"""Call recording: two decoded parties as the left and right channels of a WAV or FLAC
file, written as the call goes.

A `Recorder` is a job of the media clock: each tick it takes the frame each party's
`Listener` got (the caller left, the callee right) and every second writes what it has
gathered. The WAV writer rewrites its header sizes at each of those writes, so a process
killed mid-call leaves a file that plays up to the last second; `repair_wav` fixes the
header of one cut off before that (a crash between two writes). FLAC frames stand on their
own: libsndfile leaves "length unknown" in the header until it closes, which players accept.
While paused (a card number being read out) the recorder writes silence, so the two
channels stay in step with the call and the pause shows where it was.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import numpy.typing as npt
import soundfile

from media.clock import FRAME, Listener
from pbx.errors import MediaError

RATE = 8000
FORMATS = ("wav", "flac")
_WRITE_TICKS = 50  # a write (and a header update) every second
_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")  # RIFF, fmt (PCM), data: 44 bytes


class Writer(Protocol):
    def write(self, frames: npt.NDArray[np.int16]) -> None: ...

    def close(self) -> None: ...


class WavWriter:
    """A 16-bit PCM WAV file at 8 kHz whose header is kept true at every write."""

    def __init__(self, path: Path, channels: int = 2) -> None:
        self._channels = channels
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 - kept open for the call
        self._bytes = 0
        self._file.write(self._header())

    def _header(self) -> bytes:
        block = 2 * self._channels
        return _HEADER.pack(
            b"RIFF", 36 + self._bytes, b"WAVE", b"fmt ", 16, 1, self._channels, RATE,
            RATE * block, block, 16, b"data", self._bytes,
        )  # fmt: skip

    def write(self, frames: npt.NDArray[np.int16]) -> None:
        data = np.ascontiguousarray(frames, dtype="<i2").tobytes()
        self._file.seek(0, os.SEEK_END)
        self._file.write(data)
        self._bytes += len(data)
        self._file.seek(0)
        self._file.write(self._header())
        self._file.flush()  # to the OS: a killed process loses nothing written

    def close(self) -> None:
        self._file.close()


class FlacWriter:
    def __init__(self, path: Path, channels: int = 2) -> None:
        self._file = soundfile.SoundFile(
            str(path), "w", samplerate=RATE, channels=channels, format="FLAC", subtype="PCM_16"
        )

    def write(self, frames: npt.NDArray[np.int16]) -> None:
        # libsndfile writes each FLAC frame to the OS as the encoder makes it; its flush
        # (sf_write_sync) is an fsync, a disk sync a second per recording, which the WAV
        # writer does not do either.
        self._file.write(frames)

    def close(self) -> None:
        self._file.close()


def open_writer(path: Path, fmt: str, channels: int = 2) -> Writer:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if fmt == "wav":
            return WavWriter(path, channels)
        if fmt == "flac":
            return FlacWriter(path, channels)
    except (OSError, RuntimeError) as exc:
        raise MediaError(f"cannot write recording {path}: {exc}") from None
    raise MediaError(f"unknown recording format {fmt!r}; use one of {', '.join(FORMATS)}")


class Recorder:
    """Stereo recording of two listeners (None for a side with nobody on it: silence)."""

    __slots__ = (
        "_buffer", "_filled", "_lefts", "_rights", "_writer", "closed", "format", "frames",
        "left", "path", "paused", "paused_frames", "right",
    )  # fmt: skip

    def __init__(self, path: Path, fmt: str, left: Listener | None, right: Listener | None) -> None:
        self.path, self.format = path, fmt
        self.left, self.right = left, right
        self._writer = open_writer(path, fmt)
        self._buffer = np.zeros((_WRITE_TICKS * FRAME, 2), dtype=np.int16)
        # Each party's frames of the second so far, a row a tick (one contiguous copy while
        # the frame is fresh in the cache), interleaved into `_buffer` once, at the write.
        self._lefts = np.zeros((_WRITE_TICKS, FRAME), dtype=np.int16)
        self._rights = np.zeros((_WRITE_TICKS, FRAME), dtype=np.int16)
        self._filled = 0  # ticks
        self.frames = 0
        self.paused_frames = 0
        self.paused = False
        self.closed = False

    @property
    def duration(self) -> float:
        return self.frames * FRAME / RATE

    @property
    def paused_seconds(self) -> float:
        return self.paused_frames * FRAME / RATE

    def tick(self, now: float) -> None:
        if self.closed:
            return
        filled = self._filled
        if self.paused:
            self._lefts[filled] = self._rights[filled] = 0
            self.paused_frames += 1
        else:
            self._lefts[filled] = self.left.frame if self.left is not None else 0
            self._rights[filled] = self.right.frame if self.right is not None else 0
        self._filled = filled + 1
        self.frames += 1
        if self._filled == _WRITE_TICKS:
            self._flush()

    def _flush(self) -> None:
        filled = self._filled
        if filled:
            rows = self._buffer[: filled * FRAME]
            rows[:, 0] = self._lefts[:filled].ravel()
            rows[:, 1] = self._rights[:filled].ravel()
            self._writer.write(rows)
            self._filled = 0

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._flush()
        finally:
            self._writer.close()


def repair_wav(path: Path) -> float | None:
    """Make a cut-off WAV file of ours whole again (header sizes from the file's length,
    a half-written last sample dropped); its duration in seconds, None if it is not one."""
    try:
        with open(path, "r+b") as file:
            head = file.read(_HEADER.size)
            if len(head) < _HEADER.size or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            fields = _HEADER.unpack(head)
            channels, rate = fields[6], fields[7]
            if fields[11] != b"data" or not channels or not rate:
                return None
            size = file.seek(0, os.SEEK_END) - _HEADER.size
            block = 2 * channels
            size -= size % block
            file.truncate(_HEADER.size + size)
            file.seek(4)
            file.write(struct.pack("<I", 36 + size))
            file.seek(40)
            file.write(struct.pack("<I", size))
            return float(size / block / rate)
    except OSError:
        return None


def audio_duration(path: Path) -> float | None:
    """Seconds of audio in a recording (WAV or FLAC), None if it cannot be read."""
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, OSError, soundfile.LibsndfileError):
        return None
    return float(info.frames) / info.samplerate if info.samplerate else None
