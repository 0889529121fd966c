"""SIPp subscribes to its mailbox (message-summary, digest) and takes the NOTIFYs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop.helpers import add_users, log_line
from tests.support.pbxproc import PbxProcess
from tests.support.ports import free_port
from tests.support.sipp import run_sipp, write_users_csv

pytestmark = pytest.mark.interop


def test_sipp_subscribes_and_gets_the_notify(pbx_proc: PbxProcess, tmp_path: Path) -> None:
    add_users(pbx_proc, [("2000", "pw2000")])
    pbx_proc.start()
    result = run_sipp(
        "uac_subscribe_mwi.xml",
        ("127.0.0.1", pbx_proc.port),
        tmp_path,
        local_port=free_port(both=False),
        calls=1,
        inf=write_users_csv(tmp_path / "users.csv", [("2000", "pw2000")]),
    )

    # Every step checked by the scenario: 401, 200 with Expires: 600, the NOTIFY (Event,
    # Subscription-State active, "Messages-Waiting: no", 0/0), the unsubscribe's 401 and
    # 200, and the final NOTIFY (terminated).
    assert result.returncode == 0, result.explain()
    assert result.counter("SuccessfulCall(C)") == 1, result.explain()
    assert result.counter("FailedCall(C)") == 0, result.explain()
    assert log_line(pbx_proc, "2000 subscribed to MWI of 2000 for 600 s"), pbx_proc.log[-20:]
    assert log_line(pbx_proc, "2000 unsubscribed from MWI of 2000"), pbx_proc.log[-20:]
