"""baresip 1.0 (libre 1.1) registers with digest auth; a wrong password gets no binding.

Registration needs no media, so baresip and pbx talk SIP over loopback here (the network
namespace of ../shared/peers/README.md is only needed for RTP).

libre 1.1 knows only MD5 and abandons a 401 that also offers SHA-256, which is why pbx
offers MD5 alone by default; the first two tests name `[auth] algorithms = ["MD5"]`
explicitly, and the last one holds pbx's default configuration to baresip.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.helpers import configure, log_line, registrations, wait_for
from tests.support.baresip import Baresip, write_tone
from tests.support.pbxproc import PbxProcess

pytestmark = pytest.mark.interop

MD5_ONLY = '[auth]\nalgorithms = ["MD5"]\n'
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def phones() -> Iterator[list[Baresip]]:
    """Baresip instances a test creates; all stopped at the end."""
    started: list[Baresip] = []
    yield started
    for phone in started:
        phone.stop()


def new_phone(phones: list[Baresip], pbx: PbxProcess, tmp: Path, user: str, pw: str) -> Baresip:
    tone = tmp / "tone.wav"
    if not tone.exists():
        write_tone(tone)
    phone = Baresip(tmp / f"baresip-{len(phones)}", user, pw, f"127.0.0.1:{pbx.port}", tone)
    phones.append(phone)
    return phone


def register(phone: Baresip) -> dict[str, object]:
    """Start baresip, create its account, return the registration outcome event."""
    ctrl = phone.start()
    phone.add_account()
    return ctrl.wait_event("REGISTER_OK", "REGISTER_FAIL", timeout=10)


def test_baresip_registers_and_unregisters(
    pbx_proc: PbxProcess, tmp_path: Path, phones: list[Baresip]
) -> None:
    configure(pbx_proc, MD5_ONLY)
    pbx_proc.add_user("1001", "pw1001")
    pbx_proc.start()
    phone = new_phone(phones, pbx_proc, tmp_path, "1001", "pw1001")

    event = register(phone)
    assert event["type"] == "REGISTER_OK", (event, phone.output[-20:])
    assert event["accountaor"] == f"sip:1001@127.0.0.1:{pbx_proc.port}"
    assert phone.ctrl is not None
    info = ANSI.sub("", phone.ctrl.cmd("reginfo")["data"])
    assert re.search(rf"sip:1001@127\.0\.0\.1:{pbx_proc.port}\s+OK\s+pbx", info), info

    [row] = registrations(pbx_proc)["1001"]
    assert row["user_agent"].startswith("baresip v"), row
    assert row["transport"] == "udp"
    assert row["source"] == f"127.0.0.1:{phone.sip_port}"
    assert re.fullmatch(rf"sip:1001-\w+@127\.0\.0\.1:{phone.sip_port}", row["contact"]), row
    assert 0 < row["expires_in"] <= 300

    # baresip unregisters (Expires: 0) when it shuts down, and waits for the answer.
    assert phone.stop() == 0
    assert registrations(pbx_proc) == {}


def test_baresip_wrong_password_gets_no_binding(
    pbx_proc: PbxProcess, tmp_path: Path, phones: list[Baresip]
) -> None:
    configure(pbx_proc, MD5_ONLY)
    pbx_proc.add_user("1001", "pw1001")
    pbx_proc.start()
    phone = new_phone(phones, pbx_proc, tmp_path, "1001", "not-pw1001")
    ctrl = phone.start()
    phone.add_account()

    # baresip 1.0 answers every fresh challenge again at once, so a wrong password loops
    # until pbx's failure throttle blocks the source; that block is the end state.
    wait_for("pbx to block the looping client", lambda: log_line(pbx_proc, "blocking 127.0.0.1"))
    assert log_line(pbx_proc, "failed authentication for '1001'") is not None
    info = ANSI.sub("", ctrl.cmd("reginfo")["data"])
    assert not re.search(r"\sOK\s", info), info
    assert "REGISTER_OK" not in [e.get("type") for e in ctrl.events]
    assert registrations(pbx_proc) == {}
    # Blocked, it could only wait for its unregistration to time out.
    assert phone.stop(kill=True) == -9


def test_baresip_registers_against_default_algorithms(
    pbx_proc: PbxProcess, tmp_path: Path, phones: list[Baresip]
) -> None:
    """With the default challenges (MD5 and SHA-256), as an operator installs pbx.

    libre 1.1 gives up on the whole 401 (ENOSYS, "Function not implemented") when any
    WWW-Authenticate names an algorithm other than MD5, so it registers only if pbx
    offers nothing it cannot answer. See the interop report.
    """
    pbx_proc.add_user("1001", "pw1001")
    pbx_proc.start()
    phone = new_phone(phones, pbx_proc, tmp_path, "1001", "pw1001")

    event = register(phone)
    assert event["type"] == "REGISTER_OK", f"{event.get('type')}: {event.get('param')}"
    assert [row["source"] for row in registrations(pbx_proc)["1001"]] == [
        f"127.0.0.1:{phone.sip_port}"
    ]
