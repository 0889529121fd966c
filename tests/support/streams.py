"""A phone talking to a recorder in tests: its audio as the RTP packets a `RecordedStream`
takes, 20 ms a tick on a clock the test moves (no sockets: the stream is sans-I/O)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


_KILLED = """
import os, signal, sys
from pathlib import Path
import numpy as np
from media.aio import FileWriter
from media.recording import Recorder
from tests.support.streams import Party, Ticks

files = FileWriter()
caller = Party(np.full(8000 * 3, 1008, dtype=np.int16))  # a value PCMA keeps as it is
recorder = Recorder(Path(sys.argv[1]), sys.argv[2], caller.stream, None, files)
Ticks().run(recorder, [caller], 130)  # 2.6 s: two whole seconds handed to the thread
files.drain()
os.kill(os.getpid(), signal.SIGKILL)  # a crash, the file still open
"""


def killed_mid_recording(path: Path, fmt: str) -> subprocess.CompletedProcess[bytes]:
    """A child process records 2.6 s of a caller (left: 1008 throughout, right: nobody)
    to `path` in `fmt` and is killed (SIGKILL) with the file open, two seconds written."""
    root = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-c", _KILLED, str(path), fmt], capture_output=True,
                          timeout=60, cwd=root)  # fmt: skip
