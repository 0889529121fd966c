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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.int16]

FRAME = 160  # 20 ms at 8 kHz
_RING = 1 << 14  # 2 s of samples
_RESYNC = 8000  # samples: a jump of a second or more starts afresh
_CONCEALED_FRAMES = 3  # repeats before silence


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
    def __init__(
        self,
        clock_rate: int = 8000,
        frame: int = FRAME,
        min_delay: float = 0.04,
        max_delay: float = 0.3,
    ) -> None:
        self._rate, self._frame = clock_rate, frame
        self._min = round(min_delay * clock_rate)
        self._max = round(max_delay * clock_rate)
        self._ring = np.zeros(_RING, dtype=np.int16)
        self._valid = np.zeros(_RING, dtype=bool)
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
        count = len(samples)
        if count == 0 or count > _RING // 2:
            return
        extended = self._unwrap(timestamp)
        if self._play is not None and abs(extended - self._newest) > _RESYNC:
            self._restart()
            extended = self._unwrap(timestamp)
        transit = arrival * self._rate - extended
        if self._transit is not None:
            self.jitter += (abs(transit - self._transit) - self.jitter) / 16
        self._transit = transit
        if self._play is None:
            self._play = extended - self.target
            self._newest = extended
        if extended + count <= self._play:
            self.stats.late += 1
            return
        start = max(extended, self._play)
        data = samples[start - extended :]
        index = (start + np.arange(len(data))) % _RING
        self._ring[index] = data
        self._valid[index] = True
        self._newest = max(self._newest, start + len(data))

    def pop(self) -> tuple[Samples, bool]:
        """The next frame, and whether it is real audio (False: concealed or silence)."""
        frame = self._frame
        play = self._play
        if play is None:
            return np.zeros(frame, dtype=np.int16), False
        if self._newest - play < frame and not self._valid[play % _RING]:
            # Nothing to play yet (underrun): conceal and let the audio catch up.
            return self._conceal(), False
        excess = self._newest - play - self.target - 2 * frame
        if excess > 0:
            skip = min(excess, frame // 2)
            self._clear(play, skip)
            play += skip
            self.stats.dropped_samples += skip
        index = (play + np.arange(frame)) % _RING
        valid = self._valid[index]
        out = self._ring[index].copy()
        self._valid[index] = False
        self._play = play + frame
        if not valid.any():
            return self._conceal(), False
        if not valid.all():
            out[~valid] = 0
        self._last_frame, self._repeats = out, 0
        self.stats.played += 1
        return out, True

    def _conceal(self) -> Samples:
        self.stats.concealed += 1
        last = self._last_frame
        if last is None or self._repeats >= _CONCEALED_FRAMES:
            return np.zeros(self._frame, dtype=np.int16)
        self._repeats += 1
        faded = (last.astype(np.int32) >> self._repeats).astype(np.int16)
        return faded

    def _clear(self, start: int, count: int) -> None:
        self._valid[(start + np.arange(count)) % _RING] = False

    def _unwrap(self, timestamp: int) -> int:
        if self._last_ts is None:
            self._extended = timestamp
        else:
            delta = (timestamp - self._last_ts + (1 << 31)) % (1 << 32) - (1 << 31)
            self._extended += delta
        self._last_ts = timestamp
        return self._extended

    def _restart(self) -> None:
        self.stats.resyncs += 1
        self._valid[:] = False
        self._play = None
        self._last_ts = None
        self._transit = None
