"""pyVoIP 1.6.8 registers with digest auth over UDP; a wrong password gets no binding.

pyVoIP reads only the last WWW-Authenticate of a 401 (its headers are a dict), here the
SHA-256 one, yet always answers with MD5 and without qop (RFC 2069 style). That works with
pbx's defaults because every challenge of one 401 carries the same nonce and realm, and pbx
accepts qop-less MD5 responses; so this test keeps the default algorithms on purpose.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import pytest

from tests.interop.helpers import add_users, configure, registrations
from tests.support.pbxproc import PbxProcess
from tests.support.ports import free_port

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # pyVoIP imports audioop (PEP 594)
    from pyVoIP.VoIP import PhoneStatus, VoIPPhone

pytestmark = pytest.mark.interop

# pyVoIP answers OPTIONS with nothing and reads its socket from several threads; keep pbx's
# pings out of the exchange being tested.
EXTRA = "[registrar]\nqualify_interval = 0\n"


class Phone(VoIPPhone):
    """A VoIPPhone that signals when pyVoIP gives up (after 3 failed registrations)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gave_up = threading.Event()

    def fatal(self) -> None:
        super().fatal()
        self.gave_up.set()


@pytest.fixture
def pbx(pbx_proc: PbxProcess) -> PbxProcess:
    configure(pbx_proc, EXTRA)
    add_users(pbx_proc, [("1001", "pw1001"), ("1002", "pw1002")])
    pbx_proc.start()
    return pbx_proc  # pbx_proc stops it


def new_phone(pbx: PbxProcess, user: str, password: str) -> tuple[Phone, int]:
    port = free_port(both=False)
    phone = Phone(
        "127.0.0.1", pbx.port, user, password,
        myIP="127.0.0.1", sipPort=port, rtpPortLow=port, rtpPortHigh=port,
    )  # fmt: skip
    phone.sip.register_timeout = 5  # pyVoIP waits 30 s for each answer by default
    return phone, port


def test_pyvoip_registers_and_unregisters(pbx: PbxProcess) -> None:
    phone, port = new_phone(pbx, "1001", "pw1001")
    try:
        phone.start()  # registers synchronously: REGISTER, 401, REGISTER with digest, 200
        assert phone.get_status() == PhoneStatus.REGISTERED
        [row] = registrations(pbx)["1001"]
        assert row["user_agent"] == "pyVoIP 1.6.8"
        assert row["transport"] == "udp"
        assert row["source"] == f"127.0.0.1:{port}"
        assert row["contact"] == f"sip:1001@127.0.0.1:{port};transport=UDP"
        assert "urn:uuid:" in (row["instance"] or "")  # RFC 5626 +sip.instance
        assert 0 < row["expires_in"] <= 120  # pyVoIP asks for 120 s
    finally:
        phone.stop()  # unregisters: REGISTER with Expires: 0, challenged like the first
    assert phone.get_status() == PhoneStatus.INACTIVE
    assert registrations(pbx) == {}


def test_pyvoip_wrong_password_gets_no_binding(pbx: PbxProcess) -> None:
    phone, _ = new_phone(pbx, "1002", "not-pw1002")
    try:
        phone.start()
        # pyVoIP retries twice more in its own threads, then calls fatal().
        assert phone.gave_up.wait(20), "pyVoIP never gave up registering"
        assert phone.get_status() == PhoneStatus.FAILED
    finally:
        phone.stop()
    assert registrations(pbx) == {}
    assert any("failed authentication for '1002'" in line for line in pbx.log)
