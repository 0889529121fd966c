"""A phone talking to a recorder in tests: its audio as the RTP packets a `RecordedStream`
takes, 20 ms a tick on a clock the test moves (no sockets: the stream is sans-I/O)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from media.clock import FRAME, TICK
from media.g711 import ALAW_DECODE, alaw_encode
from media.recording import RecordedStream, Recorder
from media.rtp import RtpPacket

Samples = npt.NDArray[np.int16]


def heard(samples: Samples) -> Samples:
    """What a recording of `samples` sent in PCMA holds: G.711 is lossy."""
    return ALAW_DECODE[np.frombuffer(alaw_encode(samples), dtype=np.uint8)]


class Party:
    """One phone: `samples` sent a frame a tick, in PCMA, with timestamps from `timestamp`."""

    def __init__(self, samples: Samples, ssrc: int = 0x5EED, timestamp: int = 0) -> None:
        self.samples, self.n = samples, 0
        self.stream = RecordedStream("PCMA")
        self.ssrc, self.timestamp = ssrc, timestamp

    def packet(self, frame: int) -> bytes:
        payload = alaw_encode(self.samples[frame * FRAME : (frame + 1) * FRAME])
        timestamp = (self.timestamp + frame * FRAME) % (1 << 32)
        return RtpPacket(8, frame % (1 << 16), timestamp, self.ssrc, payload).encode()

    def send(self, now: float) -> None:
        """This tick's frame, arriving now."""
        self.stream.packet(self.packet(self.n), now)
        self.n += 1


class Ticks:
    """The media clock's time for a recorder: `run` sends each party's frame, then ticks."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def run(self, recorder: Recorder, parties: list[Party], ticks: int) -> None:
        for _ in range(ticks):
            self.now += TICK
            for party in parties:
                party.send(self.now)
            recorder.tick(self.now)
