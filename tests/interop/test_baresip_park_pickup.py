"""Three baresip phones in a private network namespace: 1002 picks up (*8) a call ringing at
1003, parks it (blind transfer to 700), and 1003 retrieves it from its slot. Each step is
checked on `pbx events`, and by ear: the tones each phone received (FFT)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop.helpers import dominant_hz, run_in_namespace, samples_of

pytestmark = pytest.mark.interop


def test_baresip_pickup_then_park_and_retrieve(tmp_path: Path) -> None:
    result = run_in_namespace("tests.interop.netns_park_pickup", tmp_path)
    events = {e["type"]: e for e in result["events"]}
    assert events["call_picked_up"]["by"] == "1002"
    assert (events["call_parked"]["slot"], events["call_parked"]["by"]) == ("701", "1002")
    assert (events["call_retrieved"]["slot"], events["call_retrieved"]["by"]) == ("701", "1003")
    [parked] = result["live_while_parked"]
    assert (parked["state"], parked["slot"]) == ("parked", "701")

    # 1002 heard 1001 after the pickup; 1003 heard 1001 after taking it from the slot.
    received = result["received"]
    for user in ("1002", "1003"):
        recordings = received[user]
        assert recordings, received
        samples, rate = samples_of(Path(recordings[-1]))
        assert abs(dominant_hz(samples[rate // 2 :], rate, f"{user} received") - 440) <= 20

    # 1001 heard 1002 first, and 1003 at the end.
    samples, rate = samples_of(Path(result["tapped"]["1001"]))
    first = dominant_hz(samples[rate // 2 : 2 * rate], rate, "1001 after the pickup")
    last = dominant_hz(samples[-3 * rate // 2 :], rate, "1001 after the retrieve")
    assert abs(first - 1000) <= 30, first
    assert abs(last - 1700) <= 30, last

    [cdr] = result["cdr"]
    assert (cdr["caller"], cdr["callee"], cdr["answered_by"]) == ("1001", "1003", "1002")
    assert cdr["legs"] == ["1001", "1002", "1003"]
