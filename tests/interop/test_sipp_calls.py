"""SIPp UAC -> pbx (B2BUA) -> SIPp UAS registered as an extension: calls complete."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.interop.helpers import add_users
from tests.support.pbxproc import PbxProcess
from tests.support.ports import free_port
from tests.support.sipp import run_sipp, write_users_csv

pytestmark = pytest.mark.interop

CALLS = 3


def test_sipp_calls_through_the_exchange(pbx_proc: PbxProcess, tmp_path: Path) -> None:
    add_users(pbx_proc, [("1001", "pw1001"), ("1002", "pw1002")])
    pbx_proc.start()
    target = ("127.0.0.1", pbx_proc.port)
    callee_port = free_port(both=False)
    registered = run_sipp(
        "register.xml", target, tmp_path, local_port=callee_port, calls=1,
        inf=write_users_csv(tmp_path / "callee.csv", [("1002", "pw1002")]),
    )  # fmt: skip
    assert registered.returncode == 0, registered.explain()
    media = ["-mi", "127.0.0.1", "-mp", str(free_port(both=False))]
    with ThreadPoolExecutor(1) as background:
        # The UAS may bind a moment after the first INVITE leaves: Timer A resends it.
        callee = background.submit(
            run_sipp, "uas.xml", target, tmp_path, local_port=callee_port, calls=CALLS,
            extra=media,
        )  # fmt: skip
        caller = run_sipp(
            "uac_call.xml", target, tmp_path, local_port=free_port(both=False), calls=CALLS,
            rate=10, inf=write_users_csv(tmp_path / "caller.csv", [("1001", "pw1001")]),
            extra=["-s", "1002", "-d", "200", "-mi", "127.0.0.1"],
        )  # fmt: skip
        answered = callee.result(timeout=60)
    assert caller.returncode == 0, caller.explain()
    assert caller.counter("SuccessfulCall(C)") == CALLS, caller.explain()
    assert answered.returncode == 0, answered.explain()
    assert answered.counter("SuccessfulCall(C)") == CALLS, answered.explain()
    # Each call left a CDR, and nothing is live any more (operator contract: cdr, calls).
    # The last CDR is written once the callee has answered the last BYE: allow for that.
    deadline = time.monotonic() + 10
    while len(records := pbx_proc.cli_json("cdr")) < CALLS and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(records) == CALLS
    assert {(r["caller"], r["callee"], r["disposition"]) for r in records} == {
        ("1001", "1002", "ANSWERED")
    }
    assert all(0 < r["billsec"] <= r["duration"] for r in records)
    assert pbx_proc.cli_json("calls") == []
