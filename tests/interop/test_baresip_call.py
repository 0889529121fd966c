"""A real call with audio both ways: baresip 1001 dials baresip 1002 through pbx.

baresip 1.0 refuses loopback for media (../shared/peers/README.md), so the whole call runs
in private network and PID namespaces (`unshare -n -p -f --kill-child`, as root) driven by
netns_call.py: pbx and both phones on 10.77.0.1, a veth address only that namespace has.
Each phone plays its own tone (1001: 440 Hz, 1002: 1000 Hz) and records what it receives;
the recordings must carry the other side's tone, and pbx must have written an ANSWERED CDR.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.support.baresip import baresip_binary

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[2]


def dominant_hz(path: Path) -> float:
    """The strongest frequency of a mono 16-bit WAV, its first half second left out."""
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2), path
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    samples = samples[rate // 2 :].astype(np.float64)
    assert len(samples) >= 2 * rate, f"{path}: only {len(samples) / rate:.1f} s of audio"
    assert np.abs(samples).max() > 1000, f"{path}: silence"
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def test_baresip_call_carries_audio_both_ways(tmp_path: Path) -> None:
    baresip_binary()
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: `make test-deps` installs it")
    run = subprocess.run(
        ["unshare", "-n", "-p", "-f", "--kill-child",
         sys.executable, "-m", "tests.interop.netns_call", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    result_file = tmp_path / "result.json"
    assert result_file.exists(), f"driver exited {run.returncode}: {run.stderr[-3000:]}"
    result = json.loads(result_file.read_text())
    assert "error" not in result, json.dumps(result, indent=2)
    assert run.returncode == 0, run.stderr[-3000:]

    received = result["received"]
    assert [len(received["1001"]), len(received["1002"])] == [1, 1], received
    assert abs(dominant_hz(Path(received["1001"][0])) - 1000) <= 20
    assert abs(dominant_hz(Path(received["1002"][0])) - 440) <= 20

    [cdr] = result["cdr"]
    assert (cdr["caller"], cdr["callee"], cdr["disposition"]) == ("1001", "1002", "ANSWERED")
    assert cdr["hangup_by"] == "caller"
    assert cdr["billsec"] >= 2.5, cdr
