"""In-dialog features of the B2BUA between loopback "phones": late offer, UPDATE, glare,
session timers, Max-Forwards and loops, early media."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from pbx.events import CallHeld, Event
from pbx.server import Exchange
from pbx.sip.message import Request, Response, build_response
from pbx.sip.sdp import SessionDescription, parse_sdp
from tests.aio.test_calls import (
    authenticated_invite,
    in_dialog,
    invite,
    media_socket,
    receive,
    rtp,
    sdp,
    the_cdr,
    udp_recv,
)
from tests.aio.test_register_flow import server_of
from tests.support.sipclient import SipTestClient


def direction(body: bytes) -> str:
    sd = parse_sdp(body)
    return sd.direction_for(sd.media[0]).value


def with_direction(body: bytes, value: str) -> bytes:
    return body.replace(b"a=sendrecv", f"a={value}".encode())


def respond(
    phone: SipTestClient, request: Request, status: int = 200, body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (), tag: str | None = None,
) -> None:  # fmt: skip
    """A phone's response: a 2xx/183 carries its Contact, a body its Content-Type."""
    extra = list(headers)
    if status < 300 and status != 100:
        extra.append(("Contact", f"<sip:phone@127.0.0.1:{phone.local[1]}>"))
    if body:
        extra.append(("Content-Type", "application/sdp"))
    phone.send(build_response(request, status, to_tag=tag, body=body, headers=extra).encode())


def from_bob(
    bob: SipTestClient, incoming: Request, method: str, cseq: int, body: bytes = b"",
    extra: str = "",
) -> bytes:  # fmt: skip
    """A request of Bob's in the dialog of the exchange's INVITE `incoming`."""
    host, port = bob.server
    if body:
        extra += "Content-Type: application/sdp\r\n"
    return (
        f"{method} sip:pbx@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{bob.local[1]};branch=z9hG4bKbob{method}{cseq};rport\r\n"
        f"From: {incoming.header('To')};tag=bob\r\nTo: {incoming.header('From')}\r\n"
        f"Call-ID: {incoming.call_id}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:1002@127.0.0.1:{bob.local[1]}>\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def request_at(phone: SipTestClient, method: str) -> Request:
    message = await receive(phone)
    assert isinstance(message, Request), message
    assert message.method == method, message.method
    return message


async def response_at(phone: SipTestClient, status: int) -> Response:
    message = await receive(phone)
    assert isinstance(message, Response), message
    assert message.status == status, (message.status, message.reason)
    return message


@dataclass
class Answered:
    ok: Response  # the exchange's 200 to Alice
    incoming: Request  # the exchange's INVITE to Bob

    @property
    def to_tag(self) -> str:
        return self.ok.to.tag or ""


async def answered_call(
    alice: SipTestClient, bob: SipTestClient, offer: bytes, bob_body: bytes, prefix: str,
    extra: str = "", bob_headers: Sequence[tuple[str, str]] = (), ack: bool = True,
) -> Answered:  # fmt: skip
    """Bob registers, Alice calls, Bob answers; Alice ACKs (if `ack`) unless it must answer."""
    assert (await bob.register("1002", "pw1002")).status == 200
    await authenticated_invite(alice, offer, prefix, extra)
    incoming = await request_at(bob, "INVITE")
    respond(bob, incoming, 200, bob_body, bob_headers, tag="bob")
    ok = await response_at(alice, 200)
    assert (await request_at(bob, "ACK")).cseq.number == incoming.cseq.number
    if ack:
        alice.send(in_dialog(alice, "ACK", 2, f"z9hG4bK{prefix}ack", ok.to.tag or ""))
    return Answered(ok, incoming)


async def hang_up(alice: SipTestClient, bob: SipTestClient, call: Answered, cseq: int) -> None:
    alice.send(in_dialog(alice, "BYE", cseq, f"z9hG4bKbye{cseq}", call.to_tag))
    await response_at(alice, 200)
    respond(bob, await request_at(bob, "BYE"))


async def relayed(sender: socket.socket, to: int, receiver: socket.socket, fill: bytes) -> None:
    """RTP from `sender` to the exchange's port `to` arrives at `receiver`. Sent again every
    50 ms: the exchange may still be reading the SIP message that set the media up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    seq = 0
    while loop.time() < deadline:
        seq += 1
        sender.sendto(rtp(seq, fill * 160), ("127.0.0.1", to))
        with contextlib.suppress(TimeoutError):
            data = await asyncio.wait_for(loop.sock_recv(receiver, 2048), 0.05)
            assert data[12:] == fill * 160
            return
    raise AssertionError("no RTP relayed")


def pbx_port(sd: SessionDescription) -> int:
    return sd.media[0].port


# 1. late offer


async def test_late_offer_from_the_caller(exchange: Exchange) -> None:
    """An INVITE without SDP: Bob still gets our offer; Alice's 200 carries our offer and
    her ACK the answer, after which RTP flows both ways."""
    a_rtp, b_rtp = media_socket(), media_socket()
    async with (
        SipTestClient(server_of(exchange)) as alice,
        SipTestClient(server_of(exchange)) as bob,
    ):
        b_body = sdp(b_rtp.getsockname()[1], "0")
        call = await answered_call(alice, bob, b"", b_body, "late", ack=False)
        assert call.incoming.header("Content-Type") == "application/sdp"
        our_offer = parse_sdp(call.ok.body)  # an offer: every codec we have, sendrecv
        assert {m.encoding for m in our_offer.media[0].rtpmaps.values()} >= {"PCMU", "PCMA"}
        assert direction(call.ok.body) == "sendrecv"
        answer = sdp(a_rtp.getsockname()[1], "0")
        alice.send(in_dialog(alice, "ACK", 2, "z9hG4bKlateack", call.to_tag, answer))
        await relayed(b_rtp, pbx_port(parse_sdp(call.incoming.body)), a_rtp, b"\x7f")
        await relayed(a_rtp, pbx_port(our_offer), b_rtp, b"\x55")
        await hang_up(alice, bob, call, 3)
    a_rtp.close()
    b_rtp.close()


async def test_late_offer_without_an_answer_in_the_ack_ends_the_call(exchange: Exchange) -> None:
    async with (
        SipTestClient(server_of(exchange)) as alice,
        SipTestClient(server_of(exchange)) as bob,
    ):
        call = await answered_call(alice, bob, b"", sdp(40100, "0"), "noanswer", ack=False)
        alice.send(in_dialog(alice, "ACK", 2, "z9hG4bKnoanswerack", call.to_tag))
        for phone in (alice, bob):
            respond(phone, await request_at(phone, "BYE"))
    row = await the_cdr(exchange)
    assert (row["disposition"], row["cause"]) == ("ANSWERED", "no usable answer in the ACK")


async def test_reinvite_without_sdp_gets_an_offer_and_takes_the_answer_from_the_ack(
    exchange: Exchange,
) -> None:
    moved, b_rtp = media_socket(), media_socket()
    async with (
        SipTestClient(server_of(exchange)) as alice,
        SipTestClient(server_of(exchange)) as bob,
    ):
        call = await answered_call(alice, bob, sdp(40110), sdp(b_rtp.getsockname()[1], "0"), "ro")
        alice.send(in_dialog(alice, "INVITE", 3, "z9hG4bKro3", call.to_tag))
        ok = await response_at(alice, 200)
        offer, first = parse_sdp(ok.body), parse_sdp(call.ok.body)
        assert offer.origin.sess_version > first.origin.sess_version
        assert direction(ok.body) == "sendrecv"
        # The answer moves Alice's media to another port: Bob's RTP follows it there.
        answer = sdp(moved.getsockname()[1], "0")
        alice.send(in_dialog(alice, "ACK", 3, "z9hG4bKroack3", call.to_tag, answer))
        await relayed(b_rtp, pbx_port(parse_sdp(call.incoming.body)), moved, b"\x11")
        await hang_up(alice, bob, call, 4)
    moved.close()
    b_rtp.close()


# 2. UPDATE


async def test_update_holds_resumes_and_refreshes(exchange: Exchange) -> None:
    seen: list[Event] = []
    exchange.events.subscribe(seen.append)
    async with (
        SipTestClient(server_of(exchange)) as alice,
        SipTestClient(server_of(exchange)) as bob,
    ):
        call = await answered_call(alice, bob, sdp(40120), sdp(40122, "0"), "upd")
        allow = {m.strip() for m in (call.ok.header("Allow") or "").split(",")}
        assert {"INVITE", "ACK", "CANCEL", "BYE", "REFER", "NOTIFY", "OPTIONS", "UPDATE"} <= allow
        assert "timer" in (call.ok.header("Supported") or "")
        for cseq, asked, mirrored in ((3, "sendonly", "recvonly"), (4, "sendrecv", "sendrecv")):
            body = with_direction(sdp(40120), asked)
            alice.send(in_dialog(alice, "UPDATE", cseq, f"z9hG4bKupd{cseq}", call.to_tag, body))
            answered = await response_at(alice, 200)
            assert direction(answered.body) == mirrored
            passed_on = await request_at(bob, "INVITE")
            assert direction(passed_on.body) == asked
            respond(bob, passed_on, 200, with_direction(sdp(40122, "0"), mirrored))
            await request_at(bob, "ACK")
        # Without SDP an UPDATE is a session refresh: 200 without a body, Bob is not told.
        alice.send(in_dialog(alice, "UPDATE", 5, "z9hG4bKupd5", call.to_tag))
        refreshed = await response_at(alice, 200)
        assert refreshed.body == b""
        await hang_up(alice, bob, call, 6)
    held = [(e.held, e.by) for e in seen if isinstance(e, CallHeld)]
    assert held == [(True, "caller"), (False, "caller")]


# 3. glare


async def test_crossing_reinvites_get_491_and_ours_is_retried(exchange: Exchange) -> None:
    """Alice holds; while our re-INVITE to Bob is out, Bob sends his own: it gets 491, he
    answers ours with 491 too, and ours goes again after the (injected) random delay."""
    assert exchange.calls is not None
    delays: list[bool] = []

    def short_delay(owns_call_id: bool) -> float:
        delays.append(owns_call_id)
        return 0.05

    exchange.calls.glare_delay = short_delay
    async with (
        SipTestClient(server_of(exchange)) as alice,
        SipTestClient(server_of(exchange)) as bob,
    ):
        call = await answered_call(alice, bob, sdp(40130), sdp(40132, "0"), "glare")
        hold = with_direction(sdp(40130), "sendonly")
        alice.send(in_dialog(alice, "INVITE", 3, "z9hG4bKglare3", call.to_tag, hold))
        await response_at(alice, 200)
        alice.send(in_dialog(alice, "ACK", 3, "z9hG4bKglareack3", call.to_tag))
        ours = await request_at(bob, "INVITE")
        bob.send(from_bob(bob, call.incoming, "INVITE", 1, sdp(40132, "0")))
        assert (await response_at(bob, 491)).cseq.method == "INVITE"
        respond(bob, ours, 491)
        assert (await request_at(bob, "ACK")).cseq.number == ours.cseq.number  # our 491 ACK
        bob.send(from_bob(bob, call.incoming, "ACK", 1))  # for the 491 Bob got
        again = await request_at(bob, "INVITE")
        assert again.cseq.number == ours.cseq.number + 1
        assert direction(again.body) == "sendonly"
        respond(bob, again, 200, with_direction(sdp(40132, "0"), "recvonly"))
        await request_at(bob, "ACK")
        await hang_up(alice, bob, call, 4)
    assert delays == [True]  # we chose the Call-ID of Bob's dialog: 2.1-4 s in real life


async def test_second_reinvite_while_the_first_is_answered_gets_500(exchange: Exchange) -> None:
    async with (
        SipTestClient(server_of(exchange)) as alice,
        SipTestClient(server_of(exchange)) as bob,
    ):
        call = await answered_call(alice, bob, sdp(40140), sdp(40142, "0"), "twice")
        alice.send(in_dialog(alice, "INVITE", 3, "z9hG4bKtwice3", call.to_tag, sdp(40140)))
        await response_at(alice, 200)
        alice.send(in_dialog(alice, "INVITE", 4, "z9hG4bKtwice4", call.to_tag, sdp(40140)))
        refused = await response_at(alice, 500)
        assert 0 <= int(refused.header("Retry-After") or "-1") <= 10
        alice.send(in_dialog(alice, "ACK", 3, "z9hG4bKtwiceack3", call.to_tag))
        await hang_up(alice, bob, call, 5)


# 4. session timers


async def test_too_brief_session_interval_gets_422(exchange: Exchange) -> None:
    async with (
        SipTestClient(server_of(exchange)) as alice,
        SipTestClient(server_of(exchange)) as bob,
    ):
        assert (await bob.register("1002", "pw1002")).status == 200
        extra = "Session-Expires: 60\r\n"
        alice.send(invite(alice, 1, "z9hG4bKbrief1", sdp(40150), extra=extra))
        challenge = await response_at(alice, 407)
        alice.send(in_dialog(alice, "ACK", 1, "z9hG4bKbrief1", challenge.to.tag or ""))
        offered = challenge.headers_named("Proxy-Authenticate")[0]
        auth = alice.authorization(offered, "1001", "pw1001", method="INVITE")
        alice.send(invite(alice, 2, "z9hG4bKbrief2", sdp(40150), auth, extra))
        refused = await response_at(alice, 422)
        assert refused.header("Min-SE") == "90"


async def test_caller_refreshes_until_it_stops_then_the_session_expires(
    exchange: Exchange,
) -> None:
    """Alice asks to be the refresher for 90 s (scaled to 0.9 s): her UPDATEs keep the call
    up past the deadline (0.6 s), then silence ends it on both sides."""
    assert exchange.calls is not None
    exchange.calls.timer_unit = 0.01
    extra = "Session-Expires: 90;refresher=uac\r\nSupported: timer\r\n"
    async with (
        SipTestClient(server_of(exchange)) as alice,
        SipTestClient(server_of(exchange)) as bob,
    ):
        call = await answered_call(alice, bob, sdp(40160), sdp(40162, "0"), "st", extra)
        assert call.ok.header("Session-Expires") == "90;refresher=uac"
        assert call.ok.header("Require") == "timer"
        for cseq in (3, 4, 5):
            await asyncio.sleep(0.25)  # pacing, not synchronisation: 0.75 s > 0.6 s in all
            refresh = in_dialog(alice, "UPDATE", cseq, f"z9hG4bKst{cseq}", call.to_tag, extra=extra)
            alice.send(refresh)
            refreshed = await response_at(alice, 200)
            assert refreshed.header("Session-Expires") == "90;refresher=uac"
        for phone in (alice, bob):
            respond(phone, await request_at(phone, "BYE"))
    row = await the_cdr(exchange)
    assert row["cause"] == "session timer expired"


async def test_we_refresh_the_callee_with_update_and_the_caller_with_reinvite(
    exchange: Exchange,
) -> None:
    """Bob's 200 makes us the refresher (with UPDATE, which he allows); Alice wants us to
    refresh and allows no UPDATE, so her refresh is a re-INVITE with our SDP."""
    assert exchange.calls is not None
    exchange.calls.timer_unit = 0.01
    async with (
        SipTestClient(server_of(exchange)) as alice,
        SipTestClient(server_of(exchange)) as bob,
    ):
        call = await answered_call(
            alice, bob, sdp(40170), sdp(40172, "0"), "we",
            extra="Session-Expires: 120;refresher=uas\r\nAllow: INVITE, ACK, BYE\r\n",
            bob_headers=[("Session-Expires", "100;refresher=uac"), ("Allow", "INVITE, UPDATE")],
        )  # fmt: skip
        # Our INVITE to Bob offered timers (RFC 4028 §7.1).
        assert call.incoming.header("Session-Expires") == "1800"
        assert call.incoming.header("Min-SE") == "90"
        assert "timer" in (call.incoming.header("Supported") or "")
        assert call.ok.header("Session-Expires") == "120;refresher=uas"
        assert call.ok.header("Require") is None
        update = await request_at(bob, "UPDATE")  # after 50 "seconds"
        assert update.header("Session-Expires") == "100;refresher=uac"
        assert update.body == b""
        respond(bob, update, 200, headers=[("Session-Expires", "100;refresher=uac")])
        refresh = await request_at(alice, "INVITE")  # after 60 "seconds"
        assert refresh.header("Session-Expires") == "120;refresher=uac"
        assert direction(refresh.body) == "sendrecv"
        respond(alice, refresh, 200, sdp(40170), [("Session-Expires", "120;refresher=uac")])
        await request_at(alice, "ACK")
        await hang_up(alice, bob, call, 3)


async def test_callee_422_makes_us_retry_with_its_min_se(exchange: Exchange) -> None:
    assert exchange.calls is not None
    calls = dataclasses.replace(exchange.config.calls, session_expires=1200, min_se=120)
    exchange.calls.config = dataclasses.replace(exchange.config, calls=calls)
    async with (
        SipTestClient(server_of(exchange)) as alice,
        SipTestClient(server_of(exchange)) as bob,
    ):
        assert (await bob.register("1002", "pw1002")).status == 200
        await authenticated_invite(alice, sdp(40180), "retry")
        first = await request_at(bob, "INVITE")
        assert (first.header("Session-Expires"), first.header("Min-SE")) == ("1200", "120")
        respond(bob, first, 422, headers=[("Min-SE", "3600")], tag="bob422")
        await request_at(bob, "ACK")
        second = await request_at(bob, "INVITE")
        assert (second.call_id, second.from_.tag) == (first.call_id, first.from_.tag)
        assert second.cseq.number == first.cseq.number + 1
        assert second.header("Session-Expires") == "3600"
        assert second.header("Min-SE") == "3600"
        respond(bob, second, 200, sdp(40182, "0"), [("Session-Expires", "3600;refresher=uas")],
                tag="bob")  # fmt: skip
        ok = await response_at(alice, 200)
        await request_at(bob, "ACK")
        alice.send(in_dialog(alice, "ACK", 2, "z9hG4bKretryack", ok.to.tag or ""))
        await hang_up(alice, bob, Answered(ok, second), 3)


# 5. Max-Forwards and loops


async def test_max_forwards(exchange: Exchange) -> None:
    """Max-Forwards 0 gets 483; otherwise our INVITE to Bob carries one less, at most
    [calls] max_forwards."""
    assert exchange.calls is not None
    calls = dataclasses.replace(exchange.config.calls, max_forwards=10)
    exchange.calls.config = dataclasses.replace(exchange.config, calls=calls)
    async with (
        SipTestClient(server_of(exchange)) as alice,
        SipTestClient(server_of(exchange)) as bob,
    ):
        assert (await bob.register("1002", "pw1002")).status == 200
        alice.send(invite(alice, 1, "z9hG4bKhops", sdp(40190), hops=0))
        await response_at(alice, 483)
        await authenticated_invite(alice, sdp(40190), "hops", hops=5)
        incoming = await request_at(bob, "INVITE")
        assert incoming.header("Max-Forwards") == "4"
        respond(bob, incoming, 486, tag="bob")
        await request_at(bob, "ACK")
        await response_at(alice, 486)
        await authenticated_invite(alice, sdp(40190), "hops70", hops=70)
        incoming = await request_at(bob, "INVITE")
        assert incoming.header("Max-Forwards") == "10"
        respond(bob, incoming, 486, tag="bob")
        await request_at(bob, "ACK")
        await response_at(alice, 486)


async def test_a_call_looping_back_into_the_exchange_gets_482(exchange: Exchange) -> None:
    """Bob's "phone" is a proxy that sends our INVITE straight back to the exchange: it is
    recognised by its Call-ID, and by our Via branch when the Call-ID was changed."""
    async with (
        SipTestClient(server_of(exchange)) as alice,
        SipTestClient(server_of(exchange)) as bob,
    ):
        assert (await bob.register("1002", "pw1002")).status == 200
        await authenticated_invite(alice, sdp(40200), "loop")
        incoming = await request_at(bob, "INVITE")
        start, rest = incoming.encode().split(b"\r\n", 1)
        for n, call_id in enumerate((incoming.call_id, "changed-by-a-b2bua")):
            via = f"Via: SIP/2.0/UDP 127.0.0.1:{bob.local[1]};branch=z9hG4bKproxy{n};rport"
            looped = rest.replace(f"Call-ID: {incoming.call_id}".encode(),
                                  f"Call-ID: {call_id}".encode())  # fmt: skip
            bob.send(b"\r\n".join([start, via.encode(), looped]))
            refused = await response_at(bob, 482)
            assert refused.call_id == call_id
        respond(bob, incoming, 482, tag="bob")
        await request_at(bob, "ACK")
        await response_at(alice, 482)


# 6. early media


async def test_early_media_reaches_the_caller_and_the_200_repeats_the_183_answer(
    exchange: Exchange,
) -> None:
    a_rtp, b_rtp = media_socket(), media_socket()
    async with (
        SipTestClient(server_of(exchange)) as alice,
        SipTestClient(server_of(exchange)) as bob,
    ):
        assert (await bob.register("1002", "pw1002")).status == 200
        await authenticated_invite(alice, sdp(a_rtp.getsockname()[1]), "early")
        incoming = await request_at(bob, "INVITE")
        b_body = sdp(b_rtp.getsockname()[1], "0")
        respond(bob, incoming, 183, b_body, tag="bob")
        progress = await response_at(alice, 183)
        assert progress.header("Content-Type") == "application/sdp"
        # Bob's ringback tone, before any answer, reaches Alice.
        pbx_b = pbx_port(parse_sdp(incoming.body))
        b_rtp.sendto(rtp(1, b"\x33" * 160), ("127.0.0.1", pbx_b))
        assert (await udp_recv(a_rtp))[12:] == b"\x33" * 160
        respond(bob, incoming, 200, b_body, tag="bob")
        ok = await response_at(alice, 200)
        assert ok.body == progress.body  # one answer per offer, same o= version
        await request_at(bob, "ACK")
        alice.send(in_dialog(alice, "ACK", 2, "z9hG4bKearlyack", ok.to.tag or ""))
        await hang_up(alice, bob, Answered(ok, incoming), 3)
    a_rtp.close()
    b_rtp.close()
