"""SIPp plays RFC 4733 digits (1, 2, # in a PCMA stream, from ../shared/peers/sipp/) on a
call through pbx to a SIPp UAS: `pbx events --json` reports exactly those digits, once each,
as the caller's."""

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
from tests.support.sipp import run_sipp, write_users_csv

pytestmark = pytest.mark.interop


def test_sipp_rfc4733_digits_are_reported(pbx_proc: PbxProcess, tmp_path: Path) -> None:
    add_users(pbx_proc, [("1001", "pw1001"), ("1002", "pw1002")])
    pbx_proc.start()
    events = EventLog(pbx_proc.config)
    try:
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
                break
        else:
            raise AssertionError("pbx events never reported the registration")
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
