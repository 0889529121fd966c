"""Call recording: two decoded parties as the left and right channels of a WAV or FLAC
file, written as the call goes.

A `Recorder` is a job of the media clock: each tick it takes the frame each party's
`Listener` got (the caller left, the callee right), and every second it hands what it has
gathered to be written: to a `FileJobs` thread (the exchange's `media.aio.FileWriter`, off
the event loop), or, without one, at once. The WAV writer rewrites its header sizes at each
of those writes, so a process killed mid-call leaves a file that plays up to the last
second; `repair_wav` fixes the header of one cut off before that (a crash between two
writes). FLAC frames stand on their own: libsndfile leaves "length unknown" in the header
until it closes, which players accept. While paused (a card number being read out) the
recorder writes silence, so the two channels stay in step with the call and the pause
shows where it was.

`trim_silence` cuts a finished recording's leading and trailing silence (voice activity by
webrtcvad on both channels), rewriting the file beside it and renaming it over the old one.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import soundfile

from media.clock import FRAME, Listener
from media.vad import speech_extent
from pbx.errors import MediaError

RATE = 8000
FORMATS = ("wav", "flac")
TRIM_MARGIN = 0.5  # seconds of silence left before the first speech and after the last
TRIM_KEEP = 1.0  # seconds kept of a recording with no speech at all (its first)
_WRITE_TICKS = 50  # a write (and a header update) every second
_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")  # RIFF, fmt (PCM), data: 44 bytes
_COPY = 30 * RATE  # samples a trim copies at a time
T = TypeVar("T")


class Writer(Protocol):
    def write(self, frames: npt.NDArray[np.int16]) -> None: ...

    def close(self) -> None: ...


class FileJobs(Protocol):
    """Where a recorder's writes run: `media.aio.FileWriter`, a thread off the loop."""

    def submit(self, job: Callable[..., object], *args: Any) -> bool:
        """Run `job(*args)` later, in order; False if refused (too many wait)."""

    def call(self, job: Callable[..., T], *args: Any) -> Future[T]:
        """Run `job(*args)` after what is queued, never refused; its outcome."""


def wav_header(channels: int, data_bytes: int) -> bytes:
    """The 44-byte header of a 16-bit PCM WAV file at 8 kHz holding `data_bytes`."""
    block = 2 * channels
    return _HEADER.pack(
        b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, channels, RATE, RATE * block, block,
        16, b"data", data_bytes,
    )  # fmt: skip


class WavWriter:
    """A 16-bit PCM WAV file at 8 kHz whose header is kept true at every write: two
    `pwrite`s a write, the samples at the end and then the header's sizes."""

    def __init__(self, path: Path, channels: int = 2) -> None:
        self._channels = channels
        # Unbuffered: every write goes to the OS at once, so a killed process loses
        # nothing written (no flush to forget); the file object closes the fd if dropped.
        self._file = open(path, "wb", buffering=0)  # noqa: SIM115 - kept open for the call
        self._fd = self._file.fileno()
        self._bytes = 0
        self._pwrite(wav_header(channels, 0), 0)

    def _pwrite(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data).cast("B")
        while view:  # a regular file takes it all at once, but for a full disk's error
            done = os.pwrite(self._fd, view, offset)
            view, offset = view[done:], offset + done

    def write(self, frames: npt.NDArray[np.int16]) -> None:
        data = np.ascontiguousarray(frames, dtype="<i2")
        self._pwrite(data.data, _HEADER.size + self._bytes)
        self._bytes += data.nbytes
        self._pwrite(wav_header(self._channels, self._bytes), 0)

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
    """Stereo recording of two listeners (None for a side with nobody on it: silence).

    With `files` the writes run there (`media.aio.FileWriter`'s thread): each second the
    recorder hands over its two arrays of frames and starts new ones, and the thread
    interleaves and writes them. Without, it writes at once (tests, tools)."""

    __slots__ = (
        "_buffer", "_closing", "_error", "_files", "_filled", "_lefts", "_paused", "_pauses",
        "_rights", "_writer", "_written", "closed", "dropped_frames", "format", "frames",
        "left", "path", "right",
    )  # fmt: skip

    def __init__(
        self,
        path: Path,
        fmt: str,
        left: Listener | None,
        right: Listener | None,
        files: FileJobs | None = None,
    ) -> None:
        self.path, self.format = path, fmt
        self.left, self.right = left, right
        self._writer = open_writer(path, fmt)  # at once: a file that cannot be made fails here
        self._files = files
        self._buffer = np.zeros((_WRITE_TICKS * FRAME, 2), dtype=np.int16)  # for the writes
        # Each party's frames of the second so far, a row a tick (one contiguous copy while
        # the frame is fresh in the cache), interleaved into `_buffer` once, at the write.
        self._lefts = np.zeros((_WRITE_TICKS, FRAME), dtype=np.int16)
        self._rights = np.zeros((_WRITE_TICKS, FRAME), dtype=np.int16)
        self._filled = 0  # ticks
        self.frames = 0
        self._paused = False
        self._pauses: list[list[int]] = []  # [first, last + 1] tick of each pause
        self._written = 0  # samples in the file (the writes' side)
        self._error: BaseException | None = None  # the write that failed; no more then
        self._closing: Future[float] | None = None
        self.dropped_frames = 0
        """Samples never written: `files` refused them (the disk was behind)."""
        self.closed = False

    @property
    def paused(self) -> bool:
        return self._paused

    @paused.setter
    def paused(self, paused: bool) -> None:
        if paused == self._paused or self.closed:
            return
        self._paused = paused
        if paused:
            self._pauses.append([self.frames, -1])
        else:
            self._pauses[-1][1] = self.frames

    @property
    def duration(self) -> float:
        return self.frames * FRAME / RATE

    @property
    def paused_frames(self) -> int:
        return sum((end if end >= 0 else self.frames) - start for start, end in self._pauses)

    @property
    def paused_seconds(self) -> float:
        return self.paused_frames * FRAME / RATE

    def paused_between(self, start: int, end: int) -> float:
        """Seconds paused within samples [start, end) of the recording (after a trim)."""
        paused = 0
        for first, last in self._pauses:
            last = last if last >= 0 else self.frames
            paused += max(0, min(end, last * FRAME) - max(start, first * FRAME))
        return paused / RATE

    def tick(self, now: float) -> None:
        if self.closed:
            return
        filled = self._filled
        if self._paused:
            self._lefts[filled] = self._rights[filled] = 0
        else:
            self._lefts[filled] = self.left.frame if self.left is not None else 0
            self._rights[filled] = self.right.frame if self.right is not None else 0
        self._filled = filled + 1
        self.frames += 1
        if self._filled == _WRITE_TICKS:
            self._flush()

    def _flush(self) -> None:
        filled, self._filled = self._filled, 0
        files = self._files
        if files is None:
            self._write(self._lefts, self._rights, filled)
        elif files.submit(self._write, self._lefts, self._rights, filled):
            # The thread has these two now: the next second goes into new ones.
            self._lefts = np.empty((_WRITE_TICKS, FRAME), dtype=np.int16)
            self._rights = np.empty((_WRITE_TICKS, FRAME), dtype=np.int16)
        else:
            self.dropped_frames += filled * FRAME

    def _write(
        self, lefts: npt.NDArray[np.int16], rights: npt.NDArray[np.int16], filled: int
    ) -> None:
        """One second (or the last part of one) to the file: on `files`' thread if any."""
        if self._error is not None or not filled:
            return
        rows = self._buffer[: filled * FRAME]
        rows[:, 0] = lefts[:filled].ravel()
        rows[:, 1] = rights[:filled].ravel()
        try:
            self._writer.write(rows)
        except BaseException as exc:
            self._error = exc  # logged once (by the thread, or our caller); no more writes
            raise
        self._written += len(rows)

    def _finish(
        self, lefts: npt.NDArray[np.int16], rights: npt.NDArray[np.int16], filled: int
    ) -> float:
        try:
            self._write(lefts, rights, filled)
        finally:
            self._writer.close()
        if self._error is not None:
            raise MediaError(f"writing {self.path} failed: {self._error}")
        return self._written / RATE

    def close(self) -> Future[float]:
        """Finish the file: the last part second written, then closed. The future gives the
        seconds of audio in the file, or the error that spoilt it; it is done at return
        without `files` (which raises the error itself), else when their thread is."""
        if self._closing is not None:
            return self._closing
        self.closed = True
        filled, self._filled = self._filled, 0
        if self._files is not None:
            self._closing = self._files.call(self._finish, self._lefts, self._rights, filled)
            return self._closing
        self._closing = Future()
        try:
            self._closing.set_result(self._finish(self._lefts, self._rights, filled))
        except BaseException as exc:
            self._closing.set_exception(exc)
            raise
        return self._closing


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


def trim_silence(
    path: Path, fmt: str, margin: float = TRIM_MARGIN, keep: float = TRIM_KEEP
) -> tuple[int, int]:
    """Cut a finished recording's leading and trailing silence (no speech on any channel by
    webrtcvad) down to `margin` seconds each side; one with no speech at all keeps its
    first `keep` seconds. The samples kept, (start, end) of the file as it was.

    The file is left alone when there is nothing to cut. Otherwise the kept part is
    written beside it in the same format, synced and renamed over it (`os.replace`): a
    crash or error on the way leaves the original whole. Only the silence at the two ends
    is run through the VAD, so a long call costs little more than the copy."""
    tmp = path.with_name(f".{path.name}.trim")  # beside it: the rename stays on one disk
    with soundfile.SoundFile(str(path)) as source:
        total, channels = source.frames, source.channels
        if source.samplerate != RATE:
            raise MediaError(f"{path}: {source.samplerate} Hz, not a recording of ours")

        def read(start: int, count: int) -> npt.NDArray[np.int16]:
            source.seek(start)
            block: npt.NDArray[np.int16] = source.read(count, dtype="int16", always_2d=True)
            return block

        bounds = speech_extent(read, total)
        if bounds is None:
            start, end = 0, min(total, round(keep * RATE))
        else:
            pad = round(margin * RATE)
            start, end = max(0, bounds[0] - pad), min(total, bounds[1] + pad)
        if (start, end) == (0, total):
            return start, end
        try:
            writer = open_writer(tmp, fmt, channels)
            try:
                for at in range(start, end, _COPY):
                    writer.write(read(at, min(_COPY, end - at)))
            finally:
                writer.close()
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # the new file's data on disk before its name replaces the old
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return start, end
