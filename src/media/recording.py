"""Call recording: two phones' audio as the left and right channels of a WAV or FLAC
file, written as the call goes.

Each side is a `RecordedStream`: a tap on the phone's media endpoint that only keeps the
packets as they come. A `Recorder` is a job of the media clock, ticked once a second; it
has the streams place their packets on its timeline, all at once in numpy (a packet
decoded and jitter-buffered on its own costs several times as much), and hands each second
whose packets have had 0.2 s to come to be written: to a `FileJobs` thread (the exchange's
`media.aio.FileWriter`, off the event loop), or, without one, at once. The file trails the
call by 0.2 to 1.4 s. The WAV writer rewrites its header sizes at each of those writes, so
a process killed mid-call leaves a file that plays up to the last write; `repair_wav`
fixes the header of one cut off before that (a crash between two writes). FLAC frames
stand on their own, but libsndfile leaves "length unknown" in the header until it closes
(and its encoder holds back up to 0.51 s, a FLAC frame of 4096 samples, until it is
full): `repair_flac` copies the whole frames of a file left so into one with its length.

While paused (a card number being read out) the recorder writes silence, so the two
channels stay in step with the call and the pause shows where it was.

`trim_silence` cuts a finished recording's leading and trailing silence (voice activity by
webrtcvad on both channels), rewriting the file beside it and renaming it over the old one.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import soundfile

from media.aio import PAYLOAD_TYPES, MediaEndpoint
from media.clock import DECODE, FRAME, TICK, Samples, decodable
from media.rtp import payload_span
from media.vad import speech_extent
from pbx.errors import MediaError

RATE = 8000
FORMATS = ("wav", "flac")
TRIM_MARGIN = 0.5  # seconds of silence left before the first speech and after the last
TRIM_KEEP = 1.0  # seconds kept of a recording with no speech at all (its first)
_MARGIN = RATE // 5  # samples a second waits after its end for late packets to come
FIRST_WRITE_TICKS = (RATE + _MARGIN) // FRAME  # after its start: a recorder's first write
_SPAN = 3 * RATE  # the recorder's timeline not yet written (packets beyond wait)
_HOLD_AHEAD = 2 * RATE  # packets further past the timeline's end: misplaced, lost
_JUMP = RATE // 4  # a step in packets' lateness bigger than this: a timestamp jump
_DRIFT = FRAME  # a stream's earliest packets this far from its anchor: re-anchored
_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")  # RIFF, fmt (PCM), data: 44 bytes
_COPY = 30 * RATE  # samples a trim copies at a time
T = TypeVar("T")
_Placed = tuple[npt.NDArray[np.int64], Samples]  # packets' timeline positions, their samples


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


class RecordedStream:
    """One phone's audio for a recorder. Its packets are kept as they come (the bytes and
    the arrival: two appends, no decoding and no jitter buffer per packet) and placed on
    the recording's timeline all together, in numpy, when the recorder writes a second.

    A packet's samples are placed to end at the moment it arrived, less its lateness: the
    stream is anchored on its earliest packets (jitter only ever delays), so a late,
    reordered or repeated packet lands where its RTP timestamp says. A new SSRC, or a
    timestamp jump (a sender that restarts its clock after a hold), anchors it afresh; a
    sender whose clock drifts from ours is re-anchored once it is 20 ms off, a gap or an
    overlap of 20 ms, as a jitter buffer's catching up makes.

    `endpoint`: take that endpoint's packets (a second tap beside the media clock's, so a
    phone can be recorded and heard by the in-band DTMF detector too) until `close`."""

    __slots__ = (
        "_arrivals", "_data", "_decode", "_extended", "_held", "_offset", "_payload_type",
        "_reference", "_ssrc", "endpoint", "lost_samples",
    )  # fmt: skip

    def __init__(self, codec: str, endpoint: MediaEndpoint | None = None) -> None:
        name = codec.upper()
        if not decodable(name):
            raise MediaError(f"cannot record {codec}: only PCMU and PCMA")
        self._payload_type = PAYLOAD_TYPES[name]
        self._decode = DECODE[name]
        self._data: list[bytes] = []
        self._arrivals: list[float] = []
        self._held: list[_Placed] = []  # placed, but reaching past the timeline given
        self._ssrc = -1
        self._reference = 0  # the last timestamp seen, and its unwrapped value
        self._extended = 0
        self._offset: int | None = None  # timeline position - unwrapped timestamp
        self.lost_samples = 0
        """Samples of packets that came after their place on the timeline was written (or
        far ahead of it): lost."""
        self.endpoint = endpoint
        if endpoint is not None:
            endpoint.record_taps += (self.packet,)

    def packet(self, data: bytes, now: float) -> None:
        if data[1] & 0x7F == self._payload_type:  # not telephone-events, comfort noise...
            self._data.append(data)
            self._arrivals.append(now)

    def close(self) -> None:
        """No more packets (those kept are still placed)."""
        endpoint, self.endpoint = self.endpoint, None
        if endpoint is not None:
            endpoint.record_taps = tuple(t for t in endpoint.record_taps if t != self.packet)

    def place(self, out: Samples, start: int, origin: float) -> None:
        """Put the packets kept so far in `out`: timeline samples from `start` on, the
        timeline's sample 0 being time `origin`. Those reaching past its end are kept for
        the next time (up to `_HOLD_AHEAD` past it); those before its start are lost."""
        groups, self._held = self._held, []
        if self._data:
            data, arrivals = self._data, self._arrivals
            self._data, self._arrivals = [], []
            groups += self._parse(data, arrivals, origin)
        size = len(out)
        for positions, samples in groups:
            count, width = samples.shape
            relative = positions - start
            first, last = int(relative[0]), int(relative[-1])
            if last - first == (count - 1) * width and (
                count == 1 or bool((np.diff(relative) == width).all())
            ):  # in order, none missing or twice (the usual second): one run, clipped
                self.lost_samples += min(max(-first // width, 0), count) * width
                low, high = max(first, 0), min(last + width, size)
                if high > low:
                    out[low:high] = samples.ravel()[low - first : high - first]
            else:
                self.lost_samples += int((relative + width <= 0).sum()) * width
                index = relative[:, None] + np.arange(width)
                inside = (index >= 0) & (index < size)
                out[index[inside]] = samples[inside]
            if max(first, last) + width > size:  # the rest next time
                ahead = relative + width > size
                keep = ahead & (relative < size + _HOLD_AHEAD)
                self.lost_samples += int((ahead & ~keep).sum()) * width  # misplaced
                self._held.append((positions[keep], samples[keep]))

    def _parse(self, data: list[bytes], arrivals: list[float], origin: float) -> list[_Placed]:
        length = len(data[0])
        if length > 12 and len(set(map(len, data))) == 1:
            raw = np.frombuffer(b"".join(data), dtype=np.uint8).reshape(len(data), length)
            if (raw[:, 0] == 0x80).all():  # version 2; no padding, extension or CSRCs
                fields = raw[:, 4:12].copy().view(">u4").astype(np.uint32)
                ends = (np.array(arrivals) - origin) * RATE
                payloads = self._decode.take(raw[:, 12:])
                return [self._placed(fields[:, 0], fields[:, 1], ends, payloads)]
        return self._parse_each(data, arrivals, origin)

    def _parse_each(self, data: list[bytes], arrivals: list[float], origin: float) -> list[_Placed]:
        """The packets with RFC 3550's optional parts (or payloads of several lengths)."""
        timestamps, ssrcs, ends, payloads = [], [], [], []
        for packet, arrival in zip(data, arrivals, strict=True):
            if len(packet) < 12 or packet[0] >> 6 != 2:
                continue
            start, end = payload_span(packet)
            if end <= start:
                continue
            timestamps.append(int.from_bytes(packet[4:8], "big"))
            ssrcs.append(int.from_bytes(packet[8:12], "big"))
            ends.append((arrival - origin) * RATE)
            payloads.append(packet[start:end])
        placed: list[_Placed] = []
        first = 0
        for i in range(1, len(payloads) + 1):  # runs of one payload length
            if i == len(payloads) or len(payloads[i]) != len(payloads[first]):
                samples = np.frombuffer(b"".join(payloads[first:i]), dtype=np.uint8)
                group = self._placed(
                    np.array(timestamps[first:i], dtype=np.uint32),
                    np.array(ssrcs[first:i], dtype=np.uint32),
                    np.array(ends[first:i]),
                    self._decode.take(samples.reshape(i - first, -1)),
                )
                placed.append(group)
                first = i
        return placed

    def _placed(
        self,
        timestamps: npt.NDArray[np.uint32],
        ssrcs: npt.NDArray[np.uint32],
        ends: npt.NDArray[np.float64],
        samples: Samples,
    ) -> _Placed:
        """Timeline positions of packets in arrival order (`ends`: where each would end
        had it come without delay), by their timestamps and the stream's anchor."""
        count, width = samples.shape
        # Unwrapped against the last timestamp seen: within 2**31 of it (three days).
        step = (timestamps - np.uint32(self._reference)).view(np.int32)
        extended = step.astype(np.int64) + self._extended
        lateness = ends - width - extended  # the anchor each packet alone would give
        # A new SSRC is a new stream, anchored afresh.
        if ssrcs[0] == self._ssrc and (ssrcs == ssrcs[0]).all():
            resets = set()
        else:
            resets = set(np.flatnonzero(ssrcs != np.append(self._ssrc, ssrcs[:-1])).tolist())
        cuts = {0, count} | resets
        if count > 1:  # a jump: the packets after it are anchored on their own
            cuts.update((np.flatnonzero(np.abs(np.diff(lateness)) > _JUMP) + 1).tolist())
        positions = np.empty(count, dtype=np.int64)
        for first, last in itertools.pairwise(sorted(cuts)):
            if first in resets:
                self._offset, self._ssrc = None, int(ssrcs[first])
            earliest = round(float(lateness[first:last].min()))
            offset = self._offset
            # One packet alone is not followed: a very late one goes where it belongs.
            if offset is None or (last - first > 1 and abs(earliest - offset) > _DRIFT):
                offset = self._offset = earliest
            positions[first:last] = extended[first:last] + offset
        self._reference, self._extended = int(timestamps[-1]), int(extended[-1])
        return positions, samples


class Recorder:
    """Stereo recording of two phones' streams (None for a side with nobody on it:
    silence), the caller left and the callee right.

    A job of the media clock, ticked once a second (`MediaClock.add_second_job`) or more
    often: each tick, the seconds whose packets have had `_MARGIN` to come are placed and
    handed over to be written. With `files` the writes run there (`media.aio.FileWriter`'s
    thread); without, at once (tests, tools).

    `time`: the clock the endpoints stamp packets with (`MediaClock.time`); the timeline
    starts when the recorder is made, and a pause or the end falls when it is asked for.
    Without, the timeline starts a tick before the first tick and everything falls on the
    last tick."""

    __slots__ = (
        "_closing", "_error", "_files", "_lost", "_now", "_origin", "_pauses", "_placed",
        "_streams", "_time", "_timeline", "_writer", "_written", "closed", "dropped_frames",
        "format", "path",
    )  # fmt: skip

    def __init__(
        self,
        path: Path,
        fmt: str,
        left: RecordedStream | None,
        right: RecordedStream | None,
        files: FileJobs | None = None,
        time: Callable[[], float] | None = None,
    ) -> None:
        self.path, self.format = path, fmt
        self._streams = [left, right]
        # Samples from `_placed` on, both sides: the packets placed so far of the second
        # being gathered and of the ones after it.
        self._timeline = np.zeros((_SPAN, 2), dtype=np.int16)
        self._lost = 0  # by streams no longer followed
        self._writer = open_writer(path, fmt)  # at once: a file that cannot be made fails here
        self._files = files
        self._time = time
        self._now = time() if time is not None else 0.0  # the last tick's, or asked for
        self._origin: float | None = self._now if time is not None else None  # sample 0's
        self._placed = 0  # samples placed and handed to be written
        self._pauses: list[list[int]] = []  # [first, last + 1] sample of each pause
        self._written = 0  # samples in the file (the writes' side)
        self._error: BaseException | None = None  # the write that failed; no more then
        self._closing: Future[float] | None = None
        self.dropped_frames = 0
        """Samples never written: `files` refused them (the disk was behind)."""
        self.closed = False

    @property
    def left(self) -> RecordedStream | None:
        return self._streams[0]

    @property
    def right(self) -> RecordedStream | None:
        return self._streams[1]

    def follow(self, side: int, stream: RecordedStream | None) -> None:
        """A party's stream changed (a transfer, a new codec): record `stream` from now on
        on that side (0 left, 1 right). The old one is closed, what it got placed."""
        old, self._streams[side] = self._streams[side], stream
        if old is not None and old is not stream:
            old.close()
            self._place(side, old)
            self._lost += old.lost_samples

    @property
    def paused(self) -> bool:
        return bool(self._pauses) and self._pauses[-1][1] < 0

    @paused.setter
    def paused(self, paused: bool) -> None:
        if paused == self.paused or self.closed:
            return
        if paused:
            self._pauses.append([self._end, -1])
        else:
            self._pauses[-1][1] = self._end

    @property
    def _end(self) -> int:
        """The timeline's samples up to now (`time`) or the last tick; frozen once closed."""
        if self._time is not None and not self.closed:
            self._now = self._time()
        return self._sample_at(self._now)

    def _sample_at(self, when: float) -> int:
        """The timeline's sample at time `when` (0 before it has a start)."""
        if self._origin is None:
            return 0
        return int((when - self._origin) * RATE + 0.5)

    @property
    def duration(self) -> float:
        return self._end / RATE

    @property
    def lost_samples(self) -> int:
        followed = sum(s.lost_samples for s in self._streams if s is not None)
        return self._lost + followed

    @property
    def paused_seconds(self) -> float:
        return self.paused_between(0, self._end)

    def paused_between(self, start: int, end: int) -> float:
        """Seconds paused within samples [start, end) of the recording (after a trim)."""
        paused = 0
        for first, last in self._pauses:
            last = last if last >= 0 else self._end
            paused += max(0, min(end, last) - max(start, first))
        return paused / RATE

    def tick(self, now: float) -> None:
        if self.closed:
            return
        if self._origin is None:
            self._origin = now - TICK
        self._now = now
        end = self._sample_at(now)
        while end - _MARGIN >= self._placed + RATE:
            self._flush()

    def _place(self, side: int, stream: RecordedStream) -> None:
        origin = self._origin if self._origin is not None else 0.0
        stream.place(self._timeline[:, side], self._placed, origin)

    def _take(self, count: int) -> Samples:
        """The timeline's next `count` samples (the streams' packets placed, the pauses
        silent), taken off it."""
        for side, stream in enumerate(self._streams):
            if stream is not None:
                self._place(side, stream)
        timeline, start = self._timeline, self._placed
        block = timeline[:count].copy()
        timeline[: _SPAN - count] = timeline[count:]
        timeline[_SPAN - count :] = 0
        self._placed = end = start + count
        for first, last in self._pauses:
            last = last if last >= 0 else end
            if last > start and first < end:
                block[max(first, start) - start : min(last, end) - start] = 0
        return block

    def _flush(self) -> None:
        block = self._take(RATE)
        files = self._files
        if files is None:
            self._write(block)
        elif not files.submit(self._write, block):
            self.dropped_frames += len(block)

    def _write(self, block: Samples) -> None:
        """Samples to the file: on `files`' thread if any."""
        if self._error is not None or not len(block):
            return
        try:
            self._writer.write(block)
        except BaseException as exc:
            self._error = exc  # logged once (by the thread, or our caller); no more writes
            raise
        self._written += len(block)

    def _finish(self, block: Samples) -> float:
        try:
            self._write(block)
        finally:
            self._writer.close()
        if self._error is not None:
            raise MediaError(f"writing {self.path} failed: {self._error}")
        return self._written / RATE

    def close(self) -> Future[float]:
        """Finish the file: the rest up to now (or the last tick) written, then closed; the
        streams are closed. The future gives the seconds of audio in the file, or the error that
        spoilt it; it is done at return without `files` (which raises the error itself),
        else when their thread is."""
        if self._closing is not None:
            return self._closing
        end = self._end
        self.closed = True  # `_end` stays
        while end - self._placed > RATE:  # the seconds not yet written
            self._flush()
        block = self._take(max(end - self._placed, 0))
        for stream in self._streams:
            if stream is not None:
                stream.close()
        if self._files is not None:
            self._closing = self._files.call(self._finish, block)
            return self._closing
        self._closing = Future()
        try:
            self._closing.set_result(self._finish(block))
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


_UNKNOWN_LENGTH = 2**62
"""libsndfile's frame count of a FLAC file that was never closed is 2**63 - 1: unknown."""


def audio_duration(path: Path) -> float | None:
    """Seconds of audio in a recording (WAV or FLAC), None if it cannot be read. A FLAC
    file still being written (or cut off) has no length in its header: what it holds so
    far is found by seeking."""
    info = _info(path)
    if info is None:
        return None
    frames = info.frames if info.frames < _UNKNOWN_LENGTH else _reachable_frames(path)
    return float(frames / info.samplerate)


def _info(path: Path) -> Any:
    """soundfile's info of a sound file; None if it cannot be read or has no rate."""
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, OSError, soundfile.LibsndfileError):
        return None
    return info if info.samplerate else None


def _reachable_frames(path: Path) -> int:
    """How far into a FLAC file of unknown length its decoder can seek, to a frame (20 ms):
    its whole FLAC frames (a cut-off last one, or one still being encoded, is not)."""

    def reaches(frame: int) -> bool:
        # libFLAC fails the odd seek to the very first sample of a FLAC frame (seen at
        # 20480 of one file, not at 16384): the sample after it decides then.
        for sample in (frame, frame + 1):
            try:
                with soundfile.SoundFile(str(path)) as file:
                    file.seek(sample)
            except (RuntimeError, OSError, soundfile.LibsndfileError):
                continue
            return True
        return False

    low, high = 0, 1  # in frames of FRAME samples: `low` is reached, `high` is not
    while reaches(high * FRAME):
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if reaches(middle * FRAME) else (low, middle)
    return low * FRAME


def repair_flac(path: Path) -> float | None:
    """Make a FLAC recording a killed process left (no length in its header, perhaps half
    a frame at its end) whole again: its whole frames are copied into a new file that
    replaces it. Its duration in seconds; None if it is not a readable FLAC file."""
    info = _info(path)
    if info is None or info.format != "FLAC":
        return None
    if info.frames < _UNKNOWN_LENGTH:  # closed as it should have been
        return float(info.frames / info.samplerate)
    frames = _reachable_frames(path)
    tmp = path.with_name(f".{path.name}.repair")
    written = 0
    try:
        with soundfile.SoundFile(str(path)) as source, soundfile.SoundFile(
            str(tmp), "w", samplerate=info.samplerate, channels=info.channels,
            format="FLAC", subtype="PCM_16",
        ) as target:  # fmt: skip
            while written < frames:
                block = source.read(min(_COPY, frames - written), dtype="int16")
                if not len(block):
                    break
                target.write(block)
                written += len(block)
        _replace_synced(tmp, path)
    except (RuntimeError, OSError, soundfile.LibsndfileError):
        tmp.unlink(missing_ok=True)
        return None
    return float(written / info.samplerate)


def _replace_synced(tmp: Path, path: Path) -> None:
    """`tmp`'s data on disk, then its name replaces `path`'s: a crash leaves one or the
    other whole."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


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
            _replace_synced(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return start, end
