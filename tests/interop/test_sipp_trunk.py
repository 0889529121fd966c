"""SIPp plays the SIP provider of a [[trunk]]: it takes an outbound call (checking the number
the route made, the caller ID in From and P-Asserted-Identity, and our answer to its digest
challenge) and delivers an inbound call for a DID, which rings an extension that a SIPp UAS
registered. pbx runs as `pbx serve`; the provider's SIPp always uses the trunk's port."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.interop.helpers import add_users, configure
from tests.interop.test_sipp_calls import MEDIA, assert_succeeded, the_cdrs
from tests.support.pbxproc import PbxProcess
from tests.support.ports import free_port
from tests.support.sipp import run_sipp, write_users_csv

pytestmark = pytest.mark.interop

TRUNK = """
[[trunk]]
name = "provider"
host = "127.0.0.1"
port = {port}
username = "clinic"
password = "secret"
caller_id = "+15551230000"

[[outbound_route]]
name = "outside"
prefix = "9"
strip = 1
prepend = "+1"
trunk = "provider"

[[did]]
number = "+15551230000"
target = "1002"
"""


def with_trunk(pbx_proc: PbxProcess) -> int:
    provider_port = free_port(both=False)
    while provider_port == pbx_proc.port:
        provider_port = free_port(both=False)
    configure(pbx_proc, TRUNK.format(port=provider_port))
    add_users(pbx_proc, [("1001", "pw1001"), ("1002", "pw1002")])
    pbx_proc.start()
    return provider_port


def test_outbound_call_through_a_sipp_provider(pbx_proc: PbxProcess, tmp_path: Path) -> None:
    provider_port = with_trunk(pbx_proc)
    target = ("127.0.0.1", pbx_proc.port)
    with ThreadPoolExecutor(1) as background:
        provider = background.submit(
            run_sipp, "provider_uas.xml", target, tmp_path, local_port=provider_port, calls=1,
            extra=[*MEDIA, "-mp", str(free_port(both=False))],
        )  # fmt: skip
        caller = run_sipp(
            "uac_call.xml", target, tmp_path, local_port=free_port(both=False), calls=1,
            inf=write_users_csv(tmp_path / "caller.csv", [("1001", "pw1001")]),
            extra=["-s", "95551234567", "-d", "500", *MEDIA],
        )  # fmt: skip
        provider_result = provider.result(timeout=60)
    assert_succeeded(caller)
    assert_succeeded(provider_result)
    [record] = the_cdrs(pbx_proc, 1)
    assert (record["route"], record["trunk"], record["callee"], record["disposition"]) == (
        "trunk",
        "provider",
        "+15551234567",
        "ANSWERED",
    )


def test_inbound_did_from_a_sipp_provider(pbx_proc: PbxProcess, tmp_path: Path) -> None:
    provider_port = with_trunk(pbx_proc)
    target = ("127.0.0.1", pbx_proc.port)
    callee_port = free_port(both=False)
    registered = run_sipp(
        "register.xml", target, tmp_path, local_port=callee_port, calls=1,
        inf=write_users_csv(tmp_path / "callee.csv", [("1002", "pw1002")]),
    )  # fmt: skip
    assert registered.returncode == 0, registered.explain()
    with ThreadPoolExecutor(1) as background:
        callee = background.submit(
            run_sipp, "uas.xml", target, tmp_path, local_port=callee_port, calls=1,
            extra=[*MEDIA, "-mp", str(free_port(both=False))],
        )  # fmt: skip
        provider = run_sipp(
            "provider_uac.xml", target, tmp_path, local_port=provider_port, calls=1,
            extra=["-s", "+15551230000", *MEDIA],
        )  # fmt: skip
        callee_result = callee.result(timeout=60)
    assert_succeeded(provider)
    assert_succeeded(callee_result)
    [record] = the_cdrs(pbx_proc, 1)
    assert (record["caller"], record["callee"], record["dialled"], record["trunk"]) == (
        "+15559876543",
        "1002",
        "+15551230000",
        "provider",
    )
    assert (record["hangup_by"], record["disposition"]) == ("caller", "ANSWERED")
