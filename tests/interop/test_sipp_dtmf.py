"""SIPp plays DTMF digits 1, 2, # (from ../shared/peers/sipp/) on a call through pbx to a
SIPp UAS: `pbx events --json` reports exactly those digits, once each, as the caller's.

As RFC 4733 events (the caller's SDP offers telephone-event), and as in-band tones in its
G.711 audio (an SDP with no telephone-event: pbx listens for the tones themselves)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.interop.helpers import add_users
from tests.interop.netns_hold_transfer import EventLog
from tests.interop.test_sipp_calls import assert_succeeded, call_1002
from tests.support.pbxproc import PbxProcess
from tests.support.ports import free_port
from tests.support.shared import PEERS
from tests.support.sipp import pcap_head, run_sipp, write_users_csv

pytestmark = pytest.mark.interop

INBAND_PACKETS = 120
"""2.4 s of the in-band pcaps: their three digits end by 1.6 s, silence follows."""


def registered_callee(pbx_proc: PbxProcess, tmp_path: Path, events: EventLog) -> int:
    """Register 1002 from a SIPp port, returned, once `pbx events` has reported it."""
    callee_port = free_port(both=False)
    # Register (again) until the follower, which takes a moment to start, has seen it.
    for _ in range(5):
        registered = run_sipp(
            "register.xml", ("127.0.0.1", pbx_proc.port), tmp_path, local_port=callee_port,
            calls=1, inf=write_users_csv(tmp_path / "callee.csv", [("1002", "pw1002")]),
        )  # fmt: skip
        assert registered.returncode == 0, registered.explain()
        with contextlib.suppress(TimeoutError):
            events.wait(type="registration", timeout=2)
            return callee_port
    raise AssertionError("pbx events never reported the registration")


def test_sipp_rfc4733_digits_are_reported(pbx_proc: PbxProcess, tmp_path: Path) -> None:
    add_users(pbx_proc, [("1001", "pw1001"), ("1002", "pw1002")])
    pbx_proc.start()
    events = EventLog(pbx_proc.config)
    try:
        callee_port = registered_callee(pbx_proc, tmp_path, events)
        caller, callee = call_1002(
            pbx_proc, tmp_path, callee_port, "uac_rfc4733.xml", "uas.xml",
            uas_extra=["-mp", str(free_port(both=False))],
            files=[PEERS / "sipp" / "rfc4733_12hash_pcma.pcap"],
        )  # fmt: skip
        assert_succeeded(caller)
        assert_succeeded(callee)
        events.wait(type="call_ended")
    finally:
        events.stop()
    dtmf = [e for e in events.events if e["type"] == "dtmf"]
    assert [e["digit"] for e in dtmf] == ["1", "2", "#"], dtmf
    assert {(e["leg"], e["party"], e["source"]) for e in dtmf} == {("caller", "1001", "rfc4733")}
    assert all(e["duration_ms"] >= 40 for e in dtmf), dtmf


@pytest.mark.parametrize(("codec", "payload_type"), [("PCMA", 8), ("PCMU", 0)])
def test_sipp_inband_digits_are_reported(
    pbx_proc: PbxProcess, tmp_path: Path, codec: str, payload_type: int
) -> None:
    """uac_inband_plain.xml offers only `codec`: no telephone-event, so pbx detects the
    tones in the caller's audio. The UAS's answer has telephone-event: that is the callee's
    leg, and detection is per leg."""
    clip = pcap_head(
        PEERS / "sipp" / f"inband_dtmf_{codec.lower()}.pcap",
        tmp_path / "inband_dtmf.pcap",
        INBAND_PACKETS,
    )
    add_users(pbx_proc, [("1001", "pw1001"), ("1002", "pw1002")])
    pbx_proc.start()
    events = EventLog(pbx_proc.config)
    try:
        callee_port = registered_callee(pbx_proc, tmp_path, events)
        caller, callee = call_1002(
            pbx_proc, tmp_path, callee_port, "uac_inband_plain.xml", "uas.xml",
            uac_extra=["-key", "codec_pt", str(payload_type), "-key", "codec_name", codec,
                       "-d", str(INBAND_PACKETS * 20 + 400)],
            uas_extra=["-mp", str(free_port(both=False))], files=[clip],
        )  # fmt: skip
        assert_succeeded(caller)
        assert_succeeded(callee)
        events.wait(type="call_ended")
    finally:
        events.stop()
    dtmf = [e for e in events.events if e["type"] == "dtmf"]
    wanted = {"type": "dtmf", "source": "inband", "leg": "caller", "party": "1001"}
    assert [e["digit"] for e in dtmf] == ["1", "2", "#"], dtmf
    assert all(e.items() >= wanted.items() for e in dtmf), dtmf
    # The pcaps hold each key 130 ms; detection measures it to within a few 10 ms hops.
    assert all(80 <= e["duration_ms"] <= 200 for e in dtmf), dtmf
