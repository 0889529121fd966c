"""A real call with audio both ways: baresip 1001 dials baresip 1002 through pbx.

baresip 1.0 refuses loopback for media (../shared/peers/README.md), so the whole call runs
in private network and PID namespaces (`unshare -n -p -f --kill-child`, as root) driven by
netns_call.py: pbx and both phones on 10.77.0.1, a veth address only that namespace has.
Each phone plays its own tone (1001: 440 Hz, 1002: 1000 Hz) and records what it receives;
the recordings must carry the other side's tone, and pbx must have written an ANSWERED CDR.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop.helpers import dominant_hz, run_in_namespace, samples_of

pytestmark = pytest.mark.interop


def test_baresip_call_carries_audio_both_ways(tmp_path: Path) -> None:
    result = run_in_namespace("tests.interop.netns_call", tmp_path)

    received = result["received"]
    assert [len(received["1001"]), len(received["1002"])] == [1, 1], received
    for user, tone in (("1001", 1000), ("1002", 440)):
        samples, rate = samples_of(Path(received[user][0]))
        # The first half second (the call setting up) is left out; 2 s of tone must remain.
        heard = dominant_hz(samples[rate // 2 :], rate, f"{user} received", min_seconds=2)
        assert abs(heard - tone) <= 20, (user, heard)

    [cdr] = result["cdr"]
    assert (cdr["caller"], cdr["callee"], cdr["disposition"]) == ("1001", "1002", "ANSWERED")
    assert cdr["hangup_by"] == "caller"
    assert cdr["billsec"] >= 2.5, cdr
