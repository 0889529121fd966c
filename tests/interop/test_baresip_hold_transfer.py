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

from pathlib import Path

import pytest

from tests.interop.helpers import dominant_hz, run_in_namespace, samples_of

pytestmark = pytest.mark.interop


def test_baresip_hold_resume_and_blind_transfer(tmp_path: Path) -> None:
    result = run_in_namespace("tests.interop.netns_hold_transfer", tmp_path)

    # pbx reported the hold by 1002, the resume and then the transfer to 1003, in that order.
    calls = [e for e in result["events"] if e["type"] in ("call_held", "call_transferred")]
    seen = [(e["type"], e.get("held"), e.get("by"), e.get("to")) for e in calls]
    assert seen == [
        ("call_held", True, "callee", None),
        ("call_held", False, "callee", None),
        ("call_transferred", None, "1002", "1003"),
    ], seen

    # The keys 1001 pressed, reported once each as the caller's.
    dtmf = [(e["digit"], e["leg"], e["source"]) for e in result["events"] if e["type"] == "dtmf"]
    assert dtmf == [("4", "caller", "rfc4733"), ("2", "caller", "rfc4733")], dtmf

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
