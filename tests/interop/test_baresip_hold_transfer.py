"""Hold, resume and blind transfer between real phones: three baresips through pbx.

Like test_baresip_call.py, the whole scenario runs in private network and PID namespaces
(`unshare -n -p -f --kill-child`, as root), driven by netns_hold_transfer.py. Each phone plays
its own tone (1001: 440 Hz, 1002: 1000 Hz, 1003: 1700 Hz). 1001 calls 1002, 1002 holds and
resumes, then transfers the call to 1003 with REFER; 1001 hangs up.

baresip stops recording what it receives once a re-INVITE restarts its player (the hold), so
the audio 1001 hears is checked on the RTP the driver taps at 1001's ports: 1002's tone first,
1003's at the end. 1003's own recording must carry 1001's tone, and `pbx events` must have
reported the hold, the resume and the transfer.
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


def samples_of(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2), path
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return samples.astype(np.float64), rate


def dominant_hz(samples: np.ndarray, rate: int, what: str, min_seconds: float = 1.0) -> float:
    """The strongest frequency of `samples`, which must be `min_seconds` of sound."""
    assert len(samples) >= min_seconds * rate, f"{what}: only {len(samples) / rate:.2f} s"
    assert np.abs(samples).max() > 1000, f"{what}: silence"
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def test_baresip_hold_resume_and_blind_transfer(tmp_path: Path) -> None:
    baresip_binary()
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: `make test-deps` installs it")
    run = subprocess.run(
        ["unshare", "-n", "-p", "-f", "--kill-child",
         sys.executable, "-m", "tests.interop.netns_hold_transfer", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    result_file = tmp_path / "result.json"
    assert result_file.exists(), f"driver exited {run.returncode}: {run.stderr[-3000:]}"
    result = json.loads(result_file.read_text())
    assert "error" not in result, json.dumps(result, indent=2)
    assert run.returncode == 0, run.stderr[-3000:]

    # pbx reported the hold by 1002, the resume and then the transfer to 1003, in that order.
    calls = [e for e in result["events"] if e["type"] in ("call_held", "call_transferred")]
    seen = [(e["type"], e.get("held"), e.get("by"), e.get("to")) for e in calls]
    assert seen == [
        ("call_held", True, "callee", None),
        ("call_held", False, "callee", None),
        ("call_transferred", None, None, "1003"),
    ], seen

    # 1003 talked to 1001 after the transfer.
    received = result["received"]
    assert len(received["1003"]) == 1, received
    samples, rate = samples_of(Path(received["1003"][0]))
    assert abs(dominant_hz(samples[rate // 2 :], rate, "1003 received") - 440) <= 20

    # 1001 heard 1002 before the transfer and 1003 at the end.
    samples, rate = samples_of(Path(result["tapped"]["1001"]))
    first = dominant_hz(samples[rate // 2 : 2 * rate], rate, "1001 before the hold")
    last = dominant_hz(samples[-3 * rate // 2 :], rate, "1001 after the transfer")
    assert abs(first - 1000) <= 30, first
    assert abs(last - 1700) <= 30, last

    [cdr] = result["cdr"]
    assert (cdr["caller"], cdr["disposition"], cdr["hangup_by"]) == ("1001", "ANSWERED", "caller")
