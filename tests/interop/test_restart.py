"""Bindings outlive the process: a clean stop (SIGTERM) and a crash (SIGKILL) lose nothing.

Phones register once an hour or so; a pbx that forgot them on restart would leave every
phone unreachable until its next refresh. pbx answers a REGISTER only after the binding is
committed, so even a binding made just before SIGKILL must come back.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import time
from typing import Any

import pytest

from pbx import config as pbx_config
from pbx.mwi import CSEQ_MARGIN
from pbx.sip.message import Request, parse_message
from tests.aio.test_mwi import Subscriber, expires_left, notified, summary_of
from tests.interop.helpers import add_users, configure, log_line, registrations
from tests.support.pbxproc import PbxProcess
from tests.support.sipclient import SipTestClient

pytestmark = pytest.mark.interop

# No OPTIONS pings: they would land in the test clients' sockets between their responses.
EXTRA = "[registrar]\nqualify_interval = 0\n"
USERS = [("1001", "pw1001"), ("1002", "pw1002"), ("1003", "pw1003")]


def snapshot(proc: PbxProcess) -> tuple[float, dict[str, dict[str, Any]]]:
    rows = registrations(proc)
    assert all(len(b) == 1 for b in rows.values()), rows
    return time.monotonic(), {aor: bindings[0] for aor, bindings in rows.items()}


def assert_kept(
    before: tuple[float, dict[str, dict[str, Any]]], after: tuple[float, dict[str, dict[str, Any]]]
) -> None:
    """The same bindings, with expires_in counting down by the time that passed.

    The slack covers rounding to whole seconds and the CLI's own run time.
    """
    (t0, rows0), (t1, rows1) = before, after
    assert sorted(rows1) == sorted(rows0)
    elapsed = t1 - t0
    for aor, row0 in rows0.items():
        row1 = rows1[aor]
        for key in ("contact", "source", "transport", "user_agent", "registered_at"):
            assert row1[key] == row0[key], (aor, key)
        assert row0["expires_in"] - elapsed - 2 <= row1["expires_in"] <= row0["expires_in"]
        assert row1["expires_in"] > 0


def restored_count(proc: PbxProcess, since: int) -> str | None:
    line = log_line(proc, "bindings restored", since)
    return None if line is None else line.split(" users, ")[1].split()[0]


async def fetch_contacts(ua: SipTestClient, user: str, password: str) -> list[str]:
    """RFC 3261 §10.2.3: a REGISTER without Contact asks the running registrar what it holds."""

    def without_contact(data: bytes) -> bytes:
        return b"".join(line for line in data.splitlines(keepends=True)
                        if not line.startswith(b"Contact:"))  # fmt: skip

    ua.send(without_contact(ua.register_bytes(user, expires=None)))
    challenge = await ua.recv()
    assert challenge.status == 401
    offer = next(v for v in challenge.headers_named("WWW-Authenticate") if "algorithm=MD5" in v)
    auth = ua.authorization(offer, user, password)
    ua.send(without_contact(ua.register_bytes(user, expires=None, authorization=auth)))
    answer = await ua.recv()
    assert answer.status == 200
    return answer.headers_named("Contact")


async def test_bindings_survive_sigterm_and_sigkill(pbx_proc: PbxProcess) -> None:
    configure(pbx_proc, EXTRA)
    add_users(pbx_proc, USERS)
    pbx_proc.start()
    server = ("127.0.0.1", pbx_proc.port)
    phones = {ext: await SipTestClient(server, user_agent=f"phone-{ext}").open()
              for ext, _ in USERS}  # fmt: skip
    passwords = dict(USERS)
    try:
        for ext in ("1001", "1002"):
            assert (await phones[ext].register(ext, passwords[ext], expires=300)).status == 200
        before = snapshot(pbx_proc)
        assert sorted(before[1]) == ["1001", "1002"]
        assert all(0 < row["expires_in"] <= 300 for row in before[1].values())
        assert before[1]["1001"]["user_agent"] == "phone-1001"

        # A clean stop, then a start: the bindings come back from the database...
        since = len(pbx_proc.log)
        assert pbx_proc.stop() == 0
        pbx_proc.start()
        assert restored_count(pbx_proc, since) == "2"
        assert_kept(before, snapshot(pbx_proc))
        # ...into the running registrar, not just into the listing the CLI reads.
        [contact] = await fetch_contacts(phones["1001"], "1001", "pw1001")
        assert contact.startswith(f"<{before[1]['1001']['contact']}>;expires=")
        assert 0 < int(contact.rpartition("=")[2]) <= before[1]["1001"]["expires_in"]

        # A crash right after a 200 OK: that binding is as durable as the older ones.
        before = snapshot(pbx_proc)
        since = len(pbx_proc.log)
        assert (await phones["1003"].register("1003", "pw1003", expires=300)).status == 200
        assert pbx_proc.stop(signal.SIGKILL) == -signal.SIGKILL
        pbx_proc.start()
        assert restored_count(pbx_proc, since) == "3"
        after = snapshot(pbx_proc)
        newest = after[1].pop("1003")
        assert_kept(before, after)
        assert newest["source"] == f"127.0.0.1:{phones['1003'].local[1]}"
        assert newest["user_agent"] == "phone-1003"
        assert 300 - (after[0] - before[0]) - 2 <= newest["expires_in"] <= 300

        # The restored binding keeps its Call-ID and CSeq (RFC 3261 §10.3 step 7): the
        # phone's old CSeq again is out of order; its next refresh renews the interval.
        phone = phones["1002"]
        phone.cseq = 0  # the authenticated retry goes out with CSeq 2, as the first did
        answer = await phone.register("1002", "pw1002", expires=300)
        assert (answer.status, answer.reason) == (400, "CSeq Out Of Order")
        phone.cseq = 10
        assert (await phone.register("1002", "pw1002", expires=300)).status == 200
        _, rows = snapshot(pbx_proc)
        assert rows["1002"]["expires_in"] >= 299
        assert rows["1002"]["registered_at"] == before[1]["1002"]["registered_at"]
        assert sorted(rows) == ["1001", "1002", "1003"]
    finally:
        for phone in phones.values():
            await phone.close()


async def test_mwi_subscriptions_outlive_a_crash_and_end_on_a_clean_stop(
    pbx_proc: PbxProcess,
) -> None:
    # A crashed exchange that forgot its subscriptions would leave every lamp stale until
    # the phones' next refresh (an hour, often) got a 481.
    configure(pbx_proc, EXTRA + "[voicemail]\nextensions = true\n")
    add_users(pbx_proc, USERS[:1])
    pbx_proc.start()
    async with SipTestClient(("127.0.0.1", pbx_proc.port)) as ua:
        phone = Subscriber(ua)
        ok, first = await phone.subscribe(expires=600)
        assert ok.status == 200 and first is not None
        since = len(pbx_proc.log)
        assert pbx_proc.stop(signal.SIGKILL) == -signal.SIGKILL
        pbx_proc.start()
        # The restarted exchange tells the phone the state at once, in the same dialog.
        again = await notified(ua)
        assert log_line(pbx_proc, "1 MWI subscriptions restored", since), pbx_proc.log[since:]
        assert again.call_id == phone.call_id
        assert (again.from_.tag, again.to.tag) == (phone.to_tag, ua.from_tag)
        # Past the CSeq of the NOTIFY sent just before the crash, which may not have been
        # stored: what was stored, moved on by the margin.
        assert again.cseq.number > first.cseq.number and again.cseq.number > CSEQ_MARGIN
        assert 590 <= expires_left(again) <= 600
        assert summary_of(again).new == 0
        # The phone's refresh is in a dialog the exchange knows: 200, not 481.
        ok, refreshed = await phone.subscribe(expires=600)
        assert ok.status == 200 and refreshed is not None
        assert refreshed.cseq.number > again.cseq.number

        # A clean stop ends the subscription (the phone is to subscribe again), for good.
        since = len(pbx_proc.log)
        assert pbx_proc.stop() == 0
        # Not answered: the exchange is gone, and the ICMP error our answer would bring
        # back would cost the socket its next datagram (connected UDP on Linux).
        final = parse_message(await ua.recv_raw(), datagram=True)
        assert isinstance(final, Request) and final.method == "NOTIFY"
        assert final.header("Subscription-State") == "terminated;reason=deactivated"
        database = pbx_config.load(pbx_proc.config).database
        with contextlib.closing(sqlite3.connect(database)) as db:
            assert db.execute("SELECT COUNT(*) FROM mwi_subscriptions").fetchone() == (0,)
        pbx_proc.start()
        gone, _ = await phone.subscribe(expires=600)
        assert gone.status == 481
