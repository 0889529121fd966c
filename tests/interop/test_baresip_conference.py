"""A three-party conference of real phones: three baresips in pbx's room 800.

Like test_baresip_call.py, the whole scenario runs in private network and PID namespaces
(`unshare -n -p -f --kill-child`, as root), driven by netns_conference.py. Each phone plays
its own tone (1001: 440 Hz, 1002: 650 Hz, 1003: 1500 Hz) and dials 800; all three talk,
then hang up. While all three are in, each must hear the other two, both clearly, and not
itself: pbx sends every member the mix of everyone else. The events must tell who joined
and left, with the room's headcount.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.interop.helpers import run_in_namespace, samples_of
from tests.interop.netns_conference import ROOM, TONES
from tests.support.audio import strongest

pytestmark = pytest.mark.interop

SETTLE_SECONDS = 1.0  # after the third joined: the join tone, jitter buffers filling
MARGIN_SECONDS = 0.3  # before the first hangup: the recording's end is only roughly timed


def level(samples: np.ndarray, rate: int, hz: float) -> float:
    """The spectrum's height at `hz` (the highest bin within 10 Hz of it)."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    return float(spectrum[np.abs(freqs - hz) <= 10].max())


def all_in(result: dict[str, Any], user: str) -> tuple[np.ndarray, int]:
    """What `user`'s phone received while all three were in the room (the part from
    SETTLE_SECONDS after the third joined to MARGIN_SECONDS before the first hung up),
    placed in its recording by the time its own call was established."""
    [recording] = result["received"][user]
    samples, rate = samples_of(Path(recording))
    established = result["established"][user]
    start = result["all_in"] + SETTLE_SECONDS - established
    end = result["first_hangup"] - MARGIN_SECONDS - established
    assert end - start >= 1.2, (user, start, end)
    part = samples[int(start * rate) : int(end * rate)]
    assert len(part) >= 1.2 * rate, (user, len(samples) / rate, start, end)
    assert np.abs(part).max() > 1000, f"{user} heard silence"
    return part, rate


def test_baresip_conference_members_hear_the_others_not_themselves(tmp_path: Path) -> None:
    result = run_in_namespace("tests.interop.netns_conference", tmp_path)

    for user, own in TONES.items():
        part, rate = all_in(result, user)
        others = sorted(hz for u, hz in TONES.items() if u != user)
        peaks = strongest(part, 2, rate)  # in ascending order, as `others`
        near = [abs(peak - hz) <= 20 for peak, hz in zip(peaks, others, strict=True)]
        assert all(near), (user, peaks)
        weakest = min(level(part, rate, hz) for hz in others)
        echo = level(part, rate, own)
        assert echo < 0.05 * weakest, (user, echo / weakest)

    # pbx reported the room filling up and emptying: who, and how many were then in it.
    room = [e for e in result["events"] if e["type"].startswith("conference_")]
    seen = [(e["type"], e["room"], e["party"], e["members"]) for e in room]
    assert seen == [
        ("conference_joined", ROOM, "1001", 1),
        ("conference_joined", ROOM, "1002", 2),
        ("conference_joined", ROOM, "1003", 3),
        ("conference_left", ROOM, "1001", 2),
        ("conference_left", ROOM, "1002", 1),
        ("conference_left", ROOM, "1003", 0),
    ], seen

    # `pbx conferences --json`, run with all three in, listed them in room 800.
    [live] = [r for r in result["live"] if r["number"] == ROOM]
    assert sorted(m["party"] for m in live["members"]) == sorted(TONES), live
