"""A recorded call between real phones: baresip 1001 (440 Hz) calls baresip 1002 (1000 Hz)
through pbx with `[recording] record = "all"`.

As test_baresip_call.py, the call runs in private network and PID namespaces, driven by
netns_call.py (--record). Afterwards `pbx recordings --json`, as the operator runs it, lists
the call's recording: a stereo WAV with the caller's tone on the left channel and the
callee's on the right, measured by dominant frequency, as long as the phones talked.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from tests.interop.helpers import dominant_hz, run_in_namespace

pytestmark = pytest.mark.interop


def channels_of(path: Path) -> tuple[np.ndarray, int]:
    """A stereo 16-bit WAV as float samples, one row per channel (left, right), and its rate."""
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (2, 2), path
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return samples.reshape(-1, 2).T.astype(np.float64), rate


def level_at(samples: np.ndarray, rate: int, hz: float) -> float:
    """The spectrum's peak within 10 Hz of `hz` (windowed FFT magnitude)."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    return float(spectrum[np.abs(freqs - hz) <= 10].max())


def test_baresip_call_is_recorded_caller_left_callee_right(tmp_path: Path) -> None:
    result = run_in_namespace("tests.interop.netns_call", tmp_path, "--record")

    [cdr] = result["cdr"]
    assert (cdr["caller"], cdr["callee"], cdr["disposition"]) == ("1001", "1002", "ANSWERED")
    [recording] = result["recordings"]
    assert recording["call_id"] == cdr["call_id"], (recording, cdr)

    (left, right), rate = channels_of(Path(recording["path"]))
    talk = result["talk_seconds"]
    # The file, its listed duration and the talk time the phones saw agree.
    assert abs(left.size / rate - recording["duration"]) <= 0.1, (left.size / rate, recording)
    assert abs(recording["duration"] - talk) <= 1.0, (recording, talk)
    # The first half second (the media starting) is left out; 2 s of tone must remain.
    # Each channel is one side alone: the other side's tone is not mixed into it.
    sides = ((left, "left (caller)", 440, 1000), (right, "right (callee)", 1000, 440))
    for channel, what, tone, other in sides:
        samples = channel[rate // 2 :]
        heard = dominant_hz(samples, rate, what, min_seconds=2)
        assert abs(heard - tone) <= 20, (what, heard)
        crosstalk = level_at(samples, rate, other) / level_at(samples, rate, tone)
        assert crosstalk < 0.05, (what, crosstalk)
