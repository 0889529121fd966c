"""MWI against an in-process exchange on loopback: SUBSCRIBE with digest, NOTIFYs, unsolicited."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pbx import config as pbx_config
from pbx.mwi import MailboxCounts, MessageSummary
from pbx.server import Exchange
from pbx.sip.message import Request, Response, build_response, parse_message
from pbx.store import VoicemailCounts
from tests.aio.test_register_flow import server_of
from tests.conftest import add_users
from tests.support.pbxproc import write_config
from tests.support.ports import free_port
from tests.support.sipclient import SipTestClient


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    """Users 1001 (pw1001) and 1002 (pw1002); 1002 gets unsolicited NOTIFYs."""
    extra = (
        "[registrar]\nqualify_interval = 0\n"
        '[mwi]\nunsolicited = ["1002"]\nmin_expires = 60\nmax_expires = 3600\n'
    )
    ex = Exchange(pbx_config.load(write_config(tmp_path, free_port(), extra)))
    await ex.start()
    await add_users(ex, {"1001": "pw1001", "1002": "pw1002"})
    yield ex
    await ex.stop()


def counts(new: int, old: int, urgent_new: int = 0, urgent_old: int = 0) -> MailboxCounts:
    async def provider(_box: str) -> VoicemailCounts:
        return VoicemailCounts(new, old, urgent_new, urgent_old)

    return provider


@dataclass
class Subscriber:
    """The subscribing side of one phone: one dialog, its own Call-ID and CSeq."""

    ua: SipTestClient
    user: str = "1001"
    password: str = "pw1001"
    call_id: str = field(default_factory=lambda: os.urandom(8).hex())
    cseq: int = 0
    to_tag: str | None = None
    challenge: str | None = None

    def request(self, box: str, expires: int | None, event: str = "message-summary") -> bytes:
        self.cseq += 1
        host, port = self.ua.server
        lhost, lport = self.ua.local
        lines = [
            f"SUBSCRIBE sip:{box}@{host}:{port} SIP/2.0",
            f"Via: SIP/2.0/{self.ua.transport.upper()} {lhost}:{lport};"
            f"branch=z9hG4bK{os.urandom(6).hex()};rport",
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@{host}>;tag={self.ua.from_tag}",
            f"To: <sip:{box}@{host}>" + (f";tag={self.to_tag}" if self.to_tag else ""),
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} SUBSCRIBE",
            f"Contact: <sip:{self.user}@{lhost}:{lport}>",
            f"Event: {event}",
            "Accept: application/simple-message-summary",
        ]
        if expires is not None:
            lines.append(f"Expires: {expires}")
        if self.challenge is not None:
            auth = self.ua.authorization(self.challenge, self.user, self.password, "SUBSCRIBE")
            lines.append(f"Authorization: {auth}")
        return "\r\n".join([*lines, "Content-Length: 0", "", ""]).encode()

    async def subscribe(
        self, box: str = "", expires: int | None = 600, event: str = "message-summary"
    ) -> tuple[Response, Request | None]:
        """SUBSCRIBE (answering a 401 if one comes); the final response, and the NOTIFY
        that a 2xx brings (answered 200)."""
        box = box or self.user
        self.ua.send(self.request(box, expires, event))
        response, notify = await self.response_and_notify()
        if response.status == 401:
            offers = response.headers_named("WWW-Authenticate")
            self.challenge = next(v for v in offers if "algorithm=MD5" in v)
            self.cseq -= 1  # the same request again, now with credentials
            self.ua.send(self.request(box, expires, event))
            response, notify = await self.response_and_notify()
        if response.status == 200 and self.to_tag is None:
            self.to_tag = response.to.tag
        return response, notify

    async def response_and_notify(self) -> tuple[Response, Request | None]:
        """The response to our SUBSCRIBE and, after a 2xx, the NOTIFY (either order)."""
        response: Response | None = None
        notify: Request | None = None
        while response is None or (response.status < 300 and notify is None):
            message = parse_message(await self.ua.recv_raw(), datagram=self.ua.transport == "udp")
            if isinstance(message, Response):
                response = message
            else:
                notify = answer(self.ua, message)
        return response, notify


def answer(ua: SipTestClient, request: Request, status: int = 200) -> Request:
    assert request.method == "NOTIFY", request
    ua.send(build_response(request, status).encode())
    return request


async def notified(ua: SipTestClient, status: int = 200) -> Request:
    """The next message, which must be a NOTIFY; answered with `status`."""
    message = parse_message(await ua.recv_raw(), datagram=ua.transport == "udp")
    assert isinstance(message, Request), message
    return answer(ua, message, status)


def summary_of(notify: Request) -> MessageSummary:
    assert notify.header("Event") == "message-summary"
    assert notify.header("Content-Type") == "application/simple-message-summary"
    return MessageSummary.parse(notify.body)


def expires_left(notify: Request) -> int:
    state = notify.header("Subscription-State") or ""
    assert state.startswith("active;expires="), state
    return int(state.rpartition("=")[2])


async def test_subscribe_change_and_unsubscribe(exchange: Exchange) -> None:
    host, _ = server_of(exchange)
    async with SipTestClient(server_of(exchange)) as ua:
        assert (await ua.register("1001", "pw1001")).status == 200
        phone = Subscriber(ua)
        ok, first = await phone.subscribe(expires=600)
        assert ok.status == 200 and ok.header("Expires") == "600"
        assert ok.header("Contact") is not None
        assert first is not None
        assert 599 <= expires_left(first) <= 600
        assert first.body.startswith(b"Messages-Waiting: no\r\n")
        assert summary_of(first) == MessageSummary(f"sip:1001@{host}", 0, 0)
        # The NOTIFY is in the subscription's dialog, seen from the other side.
        assert first.call_id == phone.call_id
        assert (first.from_.tag, first.to.tag) == (phone.to_tag, ua.from_tag)
        assert str(first.uri) == f"sip:1001@{ua.local[0]}:{ua.local[1]}"

        exchange.mwi.counts = counts(2, 1, 1, 0)
        await exchange.mwi.changed("1001")
        second = await notified(ua)
        assert b"Voice-Message: 2/1 (1/0)\r\n" in second.body
        assert summary_of(second).waiting
        assert second.cseq.number == first.cseq.number + 1

        bye, last = await phone.subscribe(expires=0)
        assert bye.status == 200 and bye.header("Expires") == "0"
        assert last is not None
        assert last.header("Subscription-State") == "terminated;reason=timeout"
        assert summary_of(last).new == 2
    assert len(exchange.mwi.table) == 0


async def test_subscribe_over_tcp_and_deactivate_on_stop(exchange: Exchange) -> None:
    async with SipTestClient(server_of(exchange, "tcp"), transport="tcp") as ua:
        phone = Subscriber(ua)
        ok, first = await phone.subscribe()
        assert ok.status == 200 and first is not None
        assert first.vias[0].transport == "TCP"
        assert summary_of(first).new == 0
        exchange.mwi.counts = counts(3, 0)
        await exchange.mwi.changed("1001")
        assert summary_of(await notified(ua)).new == 3
        # A stopping exchange asks its subscribers to subscribe again (to its successor).
        await exchange.mwi.stop()
        final = await notified(ua)
        assert final.header("Subscription-State") == "terminated;reason=deactivated"
        assert final.body == b""
    assert len(exchange.mwi.table) == 0


async def test_refresh_and_re_register_notify_again(exchange: Exchange) -> None:
    async with SipTestClient(server_of(exchange)) as ua:
        phone = Subscriber(ua)
        ok, _ = await phone.subscribe(expires=600)
        assert ok.status == 200
        refreshed, again = await phone.subscribe(expires=7200)
        assert refreshed.status == 200 and refreshed.header("Expires") == "3600"  # max_expires
        assert again is not None and 3599 <= expires_left(again) <= 3600
        [sub] = exchange.mwi.table
        assert sub.expires_at > time.time() + 3500

        exchange.mwi.counts = counts(1, 0)
        assert (await ua.register("1001", "pw1001")).status == 200
        assert summary_of(await notified(ua)).new == 1


async def test_expiry_ends_the_subscription(exchange: Exchange) -> None:
    async with SipTestClient(server_of(exchange)) as ua:
        phone = Subscriber(ua)
        assert (await phone.subscribe(expires=60))[0].status == 200
        exchange.mwi.clock = lambda: time.time() + 61  # the injected clock, past the end
        exchange.mwi.expire()
        final = await notified(ua)
        assert final.header("Subscription-State") == "terminated;reason=timeout"
        assert len(exchange.mwi.table) == 0
        gone, _ = await phone.subscribe(expires=600)  # a refresh of what is no more
        assert gone.status == 481


async def test_a_481_to_notify_removes_the_subscription(exchange: Exchange) -> None:
    async with SipTestClient(server_of(exchange)) as ua:
        phone = Subscriber(ua)
        assert (await phone.subscribe())[0].status == 200
        await exchange.mwi.changed("1001")
        await notified(ua, status=481)  # the phone forgot the subscription
        await exchange.mwi.idle()
        assert len(exchange.mwi.table) == 0


async def test_each_notify_is_logged_and_a_failed_final_one_too(
    exchange: Exchange, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pbx.mwi")
    async with SipTestClient(server_of(exchange)) as ua:
        phone = Subscriber(ua)
        assert (await phone.subscribe(expires=600))[0].status == 200
        exchange.mwi.counts = counts(2, 1)
        await exchange.mwi.changed("1001")
        await notified(ua)
        await exchange.mwi.idle()
        sent = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
        assert any(
            m.startswith("MWI NOTIFY to 1001 at ")
            and " for 1001: Voice-Message 2/1 (0/0), Subscription-State active;expires=" in m
            for m in sent
        ), sent
        # The final NOTIFY of an expired subscription fails: nothing left to remove, but
        # it is said.
        exchange.mwi.clock = lambda: time.time() + 601
        exchange.mwi.expire()
        await notified(ua, status=500)
        await exchange.mwi.idle()
    sent = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("Subscription-State terminated;reason=timeout" in m for m in sent), sent
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert (
        "MWI NOTIFY to 1001 for 1001 got 500 Server Internal Error (subscription already over)"
        in said
    ), said


async def test_unsolicited_notifies_are_logged(
    exchange: Exchange, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pbx.mwi")
    async with SipTestClient(server_of(exchange)) as ua:
        assert (await ua.register("1002", "pw1002")).status == 200
        await notified(ua)
        await exchange.mwi.idle()
    sent = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(
        m.startswith("unsolicited MWI NOTIFY to 1002 at ") and m.endswith("Voice-Message 0/0 (0/0)")
        for m in sent
    ), sent


async def test_fetch_too_brief_and_bad_event(exchange: Exchange) -> None:
    async with SipTestClient(server_of(exchange)) as ua:
        bad, _ = await Subscriber(ua).subscribe(event="presence")
        assert bad.status == 489 and bad.reason == "Bad Event"
        assert bad.header("Allow-Events") == "message-summary"
        brief, _ = await Subscriber(ua).subscribe(expires=10)
        assert brief.status == 423 and brief.header("Min-Expires") == "60"
        fetched, state = await Subscriber(ua).subscribe(expires=0)  # a fetch: state, once
        assert fetched.status == 200 and state is not None
        assert state.header("Subscription-State") == "terminated;reason=timeout"
        assert summary_of(state).new == 0
    assert len(exchange.mwi.table) == 0


async def test_only_ones_own_mailbox(exchange: Exchange) -> None:
    async with SipTestClient(server_of(exchange)) as ua:
        other, notify = await Subscriber(ua).subscribe(box="1002")
        assert other.status == 403 and notify is None
        wrong, _ = await Subscriber(ua, password="guess").subscribe()
        assert wrong.status == 401
    assert len(exchange.mwi.table) == 0


async def test_options_advertise_subscribe_and_message_summary(exchange: Exchange) -> None:
    async with SipTestClient(server_of(exchange)) as ua:
        host, port = ua.server
        lhost, lport = ua.local
        ua.send(
            (
                f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {lhost}:{lport};branch=z9hG4bKopt1\r\n"
                f"From: <sip:1001@{host}>;tag=x\r\nTo: <sip:{host}>\r\nCall-ID: opt-1\r\n"
                "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )
        ok = await ua.recv()
    assert "SUBSCRIBE" in ok.list_values("Allow")
    assert ok.header("Allow-Events") == "message-summary"


async def test_unsolicited_notify_on_change_and_on_register(exchange: Exchange) -> None:
    host, _ = server_of(exchange)
    async with SipTestClient(server_of(exchange)) as ua:
        assert (await ua.register("1002", "pw1002")).status == 200
        on_register = await notified(ua)
        # Out of any dialog: no To tag, no subscription, to the registered contact.
        assert on_register.to.tag is None
        assert on_register.header("Subscription-State") == "active"
        assert str(on_register.uri) == f"sip:1002@{ua.local[0]}:{ua.local[1]};transport=udp"
        assert summary_of(on_register) == MessageSummary(f"sip:1002@{host}", 0, 0)

        exchange.mwi.counts = counts(2, 1)
        await exchange.mwi.changed("1002")
        assert b"Voice-Message: 2/1" in (await notified(ua)).body

        assert (await ua.register("1002", "pw1002")).status == 200  # a re-registration
        assert summary_of(await notified(ua)) == MessageSummary(f"sip:1002@{host}", 2, 1)
    assert len(exchange.mwi.table) == 0
