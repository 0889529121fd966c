"""An adaptive jitter buffer for RTP streams that are decoded (recording, in-band DTMF,
conferences). Pure: arrival times are given, nothing reads a clock.

Samples are placed on a timeline by their RTP timestamp, so reordered and duplicated packets
land where they belong and any packetization (10, 20, 30 ms...) is cut into the 20 ms frames
the consumer asks for, one `pop()` per tick of its own clock. The playout point trails the
newest audio by a target delay that follows the measured interarrival jitter (RFC 3550
§A.8, in samples): three times the jitter, within `min_delay`..`max_delay`. When the buffer
runs dry the frame is concealed (the last frame repeated at half the level each time, then
silence) and playout waits for the audio to catch up; when more than the target plus two
frames is queued, 10 ms is dropped at a time, so a sender whose clock runs fast does not
build up delay. A jump of more than a second (a new source behind the same stream) starts
afresh.

The buffer holds int16 samples (`push`), or, given a decode table, the code bytes of a
G.711 payload as they came (`push_bytes`): then a frame is decoded when it is played, and
the media clock decodes every stream's frame of a tick in one numpy operation
(`pop_many`), a fraction of the cost of decoding each packet on its own. The ring and its
flags are bytearrays written and read with plain slices, so a packet or a frame costs no
numpy call besides that decode. A flag byte says which decode table a sample was pushed
with (0: no sample), so after a codec change the audio queued before it is still decoded
with its own table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pbx.errors import LocalProtocolError

Samples = npt.NDArray[np.int16]

FRAME = 160  # 20 ms at 8 kHz
_RING = 1 << 14  # 2 s of samples
_RESYNC = 8000  # samples: a jump of a second or more starts afresh
_CONCEALED_FRAMES = 3  # repeats before silence
_MASK = (1 << 32) - 1
_HALF = 1 << 31


@dataclass(slots=True)
class JitterStats:
    played: int = 0
    """Frames popped with audio."""
    concealed: int = 0
    """Frames popped without audio (loss, late packets, underrun)."""
    late: int = 0
    """Packets that came after their playout time and were dropped."""
    dropped_samples: int = 0
    """Samples skipped to shrink the delay."""
    resyncs: int = 0


class JitterBuffer:
    # Slots, and the constant flag runs shared by all buffers: the media clock visits
    # every buffer once a tick, and the fewer cache lines each one spans, the cheaper.
    __slots__ = (
        "_empty", "_extended", "_flags", "_frame", "_full", "_last_frame", "_last_ts",
        "_mark", "_marks", "_max", "_min", "_newest", "_play", "_rate", "_repeats", "_ring",
        "_silence", "_tables", "_transit", "_width", "decode", "jitter", "stats",
    )  # fmt: skip

    def __init__(
        self,
        clock_rate: int = 8000,
        frame: int = FRAME,
        min_delay: float = 0.04,
        max_delay: float = 0.3,
        decode: Samples | None = None,
    ) -> None:
        """`decode`: a 256-entry table (G.711) to keep code bytes (`push_bytes`) and decode
        them when played; None to keep int16 samples (`push`)."""
        self._rate, self._frame = clock_rate, frame
        self._min = round(min_delay * clock_rate)
        self._max = round(max_delay * clock_rate)
        self._width = 2 if decode is None else 1  # bytes a sample in the ring
        self._ring = bytearray(_RING * self._width)
        self._flags = bytearray(_RING)  # per sample: 0 none, else 1 + its table's index
        self._tables: list[Samples] = []
        self.decode: Samples | None = None
        """The table this stream's new packets are decoded with (None: int16 samples)."""
        self._mark = 1
        self._full, self._marks = _flag_runs(1, frame)  # a frame's, and a ring's worth
        self._empty, self._silence = _nothing(frame)
        if decode is not None:
            self.set_decode(decode)
        self._play: int | None = None  # extended timestamp of the next sample to play
        self._newest = 0  # extended timestamp just past the newest sample received
        self._last_ts: int | None = None  # last 32-bit timestamp seen, for unwrapping
        self._extended = 0
        self._transit: float | None = None
        self.jitter = 0.0
        """Interarrival jitter in samples (RFC 3550 §6.4.1)."""
        self._last_frame: Samples | None = None
        self._repeats = 0
        self.stats = JitterStats()

    def set_decode(self, table: Samples) -> None:
        """Decode what is pushed from now on with `table`; what is queued keeps its own."""
        if self._width != 1:
            raise LocalProtocolError("a jitter buffer of int16 samples has no decode table")
        index = next((i for i, known in enumerate(self._tables) if known is table), None)
        if index is None:
            if len(self._tables) >= 255:
                raise LocalProtocolError("too many decode tables for one jitter buffer")
            index = len(self._tables)
            self._tables.append(table)
        self.decode, self._mark = table, index + 1
        self._full, self._marks = _flag_runs(self._mark, self._frame)

    @property
    def target(self) -> int:
        """Samples of delay aimed for."""
        return int(min(self._max, max(self._min, 3 * self.jitter + self._frame)))

    @property
    def depth(self) -> int:
        """Samples buffered ahead of the playout point."""
        return 0 if self._play is None else max(0, self._newest - self._play)

    def push(self, timestamp: int, samples: Samples, arrival: float) -> None:
        """Audio decoded from one packet: its RTP timestamp and arrival time (seconds)."""
        if self._width != 2:
            raise LocalProtocolError("this jitter buffer keeps code bytes: use push_bytes")
        data = np.asarray(samples).astype(np.int16, copy=False).tobytes()
        self.push_bytes(timestamp, data, 0, len(data), arrival)

    def push_bytes(self, timestamp: int, data: bytes, start: int, end: int, arrival: float) -> None:
        """One packet's audio, `data[start:end]` (code bytes, or native int16 samples when
        there is no decode table), its RTP timestamp and arrival time (seconds)."""
        width = self._width
        count = (end - start) // width
        if count == 0 or count > _RING // 2:
            return
        last = self._last_ts
        if last is None:
            extended = timestamp
        else:
            extended = self._extended + ((timestamp - last + _HALF) & _MASK) - _HALF
        self._extended, self._last_ts = extended, timestamp
        play = self._play
        if play is not None and not -_RESYNC <= extended - self._newest <= _RESYNC:
            self._restart()
            extended = self._unwrap(timestamp)
            play = None
        transit = arrival * self._rate - extended
        if self._transit is not None:
            self.jitter += (abs(transit - self._transit) - self.jitter) / 16
        self._transit = transit
        if play is None:
            play = self._play = extended - self.target
            self._newest = extended
        stop = extended + count
        if stop <= play:
            self.stats.late += 1
            return
        if extended < play:
            start += (play - extended) * width
            extended = play
        count = stop - extended
        at = extended % _RING
        ring, flags = self._ring, self._flags
        if at + count <= _RING:
            ring[at * width : (at + count) * width] = data[start : start + count * width]
            flags[at : at + count] = self._full if count == self._frame else self._marks[:count]
        else:
            first = _RING - at
            middle = start + first * width
            ring[at * width :] = data[start:middle]
            ring[: (count - first) * width] = data[middle : start + count * width]
            flags[at:] = self._marks[:first]
            flags[: count - first] = self._marks[: count - first]
        if stop > self._newest:
            self._newest = stop

    def pop(self) -> tuple[Samples, bool]:
        """The next frame, and whether it is real audio (False: concealed or silence)."""
        frames, real = pop_many((self,))
        return frames[0], real[0]

    def _finish(self, raw: bytearray, got: bytes | bytearray) -> Samples:
        """A frame that is not all samples pushed with `decode` (int16 samples, or some
        missing, or from another table), decoded on its own: each sample with its table,
        a missing one 0."""
        if self.decode is None:
            samples: Samples = np.frombuffer(raw, dtype=np.int16)  # writable: raw is ours
        else:
            codes = np.frombuffer(raw, dtype=np.uint8)
            samples = self.decode.take(codes)
            if got != self._full:
                marks = np.frombuffer(got, dtype=np.uint8)
                for index, table in enumerate(self._tables):
                    if index + 1 != self._mark:
                        other = marks == index + 1
                        if other.any():
                            samples[other] = table.take(codes[other])
        if got != self._full:
            samples[np.frombuffer(got, dtype=np.uint8) == 0] = 0
        self._last_frame, self._repeats = samples, 0
        self.stats.played += 1
        return samples

    def _conceal(self) -> Samples:
        self.stats.concealed += 1
        last = self._last_frame
        if last is None or self._repeats >= _CONCEALED_FRAMES:
            return self._silence
        self._repeats += 1
        faded: Samples = last >> self._repeats
        return faded

    def _clear(self, start: int, count: int) -> None:
        at = start % _RING
        flags = self._flags
        if at + count <= _RING:
            flags[at : at + count] = bytes(count)
        else:
            flags[at:] = bytes(_RING - at)
            flags[: at + count - _RING] = bytes(at + count - _RING)

    def _unwrap(self, timestamp: int) -> int:
        if self._last_ts is None:
            self._extended = timestamp
        else:
            delta = ((timestamp - self._last_ts + _HALF) & _MASK) - _HALF
            self._extended += delta
        self._last_ts = timestamp
        return self._extended

    def _restart(self) -> None:
        self.stats.resyncs += 1
        self._flags[:] = bytes(_RING)
        self._play = None
        self._last_ts = None
        self._transit = None


_FLAG_RUNS: dict[tuple[int, int], tuple[bytes, memoryview]] = {}
_NOTHING: dict[int, tuple[bytes, Samples]] = {}


def _flag_runs(mark: int, frame: int) -> tuple[bytes, memoryview]:
    """The flags of a frame of samples pushed with table `mark`, and a ring's worth."""
    runs = _FLAG_RUNS.get((mark, frame))
    if runs is None:
        full = bytes([mark]) * frame
        runs = _FLAG_RUNS[mark, frame] = full, memoryview(bytes([mark]) * _RING)
    return runs


def _nothing(frame: int) -> tuple[bytes, Samples]:
    """The flags of a frame with no sample, and a frame of silence (read-only)."""
    nothing = _NOTHING.get(frame)
    if nothing is None:
        silence: Samples = np.zeros(frame, dtype=np.int16)
        silence.flags.writeable = False
        nothing = _NOTHING[frame] = bytes(frame), silence
    return nothing


def pop_many(buffers: Sequence[JitterBuffer]) -> tuple[list[Samples], list[bool]]:
    """`pop()` of every buffer: the frames, and whether each is real audio. What the media
    clock does each tick: the whole frames of code bytes are decoded in one table lookup
    per table (numpy's cost is per call, not per sample), and each buffer's step is inline
    here, since it runs for every decoded stream 50 times a second."""
    frames: list[Samples] = []
    real: list[bool] = []
    table: Samples | None = None  # of the frames in `batch`, all of `size` samples
    size = 0
    batch: list[int] = []  # indexes in `frames` of the whole frames decoded together
    codes: list[bytearray] = []
    others: dict[tuple[int, int], tuple[Samples, list[int], list[bytearray]]] = {}
    for index, buffer in enumerate(buffers):
        play = buffer._play
        if play is None:  # nothing came yet
            frames.append(buffer._silence)
            real.append(False)
            continue
        frame = buffer._frame
        flags = buffer._flags
        newest = buffer._newest
        if newest - play < frame and not flags[play % _RING]:
            # Nothing to play yet (underrun): conceal and let the audio catch up.
            frames.append(buffer._conceal())
            real.append(False)
            continue
        target = 3 * buffer.jitter + frame  # `target`, inlined
        target = buffer._min if target < buffer._min else target
        target = buffer._max if target > buffer._max else target
        excess = newest - play - int(target) - 2 * frame
        if excess > 0:
            skip = min(excess, frame // 2)
            buffer._clear(play, skip)
            play += skip
            buffer.stats.dropped_samples += skip
        buffer._play = play + frame
        at = play % _RING
        width = buffer._width
        empty = buffer._empty
        got: bytes | bytearray
        if at + frame <= _RING:
            # The usual frame, whole and of one table, is checked in place: no copy.
            full = flags.startswith(buffer._full, at)
            got = buffer._full if full else flags[at : at + frame]
            if got == empty:
                frames.append(buffer._conceal())
                real.append(False)
                continue
            flags[at : at + frame] = empty
            raw = buffer._ring[at * width : (at + frame) * width]
        else:
            rest = at + frame - _RING
            got = flags[at:] + flags[:rest]
            if got == empty:
                frames.append(buffer._conceal())
                real.append(False)
                continue
            flags[at:] = empty[rest:]
            flags[:rest] = empty[:rest]
            raw = buffer._ring[at * width :] + buffer._ring[: rest * width]
        real.append(True)
        decode = buffer.decode
        if decode is None or got != buffer._full:
            frames.append(buffer._finish(raw, got))
            continue
        frames.append(buffer._silence)  # its place: decoded below
        if table is None:
            table, size = decode, frame
        if decode is table and frame == size:
            batch.append(index)
            codes.append(raw)
        else:  # phones in the other law
            group = others.setdefault((id(decode), frame), (decode, [], []))
            group[1].append(index)
            group[2].append(raw)
    groups = [(table, batch, codes)] if table is not None else []
    for decode, indexes, raws in groups + list(others.values()):
        decoded = decode.take(np.frombuffer(b"".join(raws), dtype=np.uint8))
        for index, samples in zip(indexes, decoded.reshape(len(raws), -1), strict=True):
            buffer = buffers[index]
            buffer._last_frame, buffer._repeats = samples, 0
            buffer.stats.played += 1
            frames[index] = samples
    return frames, real
