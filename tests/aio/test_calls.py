"""A basic call between two registered phones through the B2BUA, with relayed RTP."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct

from pbx.events import CallEnded, CallHeld, CallTransferred, Event
from pbx.server import Exchange
from pbx.sip.message import Message, Request, Response, build_response, parse_message
from pbx.sip.sdp import parse_sdp
from tests.aio.test_register_flow import server_of
from tests.conftest import add_users
from tests.support.sipclient import SipTestClient


def sdp(port: int, formats: str = "0 101") -> bytes:
    return (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP {formats}\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n"
    ).encode()


def invite(
    ua: SipTestClient, cseq: int, branch: str, body: bytes, auth: str = "", extra: str = "",
    hops: int = 70,
) -> bytes:  # fmt: skip
    """The caller's INVITE; `extra` is more header lines, each ending in CRLF."""
    host, port = ua.server
    lhost, lport = ua.local
    if auth:
        extra += f"Proxy-Authorization: {auth}\r\n"
    if body:
        extra += "Content-Type: application/sdp\r\n"
    return (
        f"INVITE sip:1002@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {lhost}:{lport};branch={branch};rport\r\n"
        f"From: <sip:1001@{host}>;tag=alice\r\nTo: <sip:1002@{host}>\r\n"
        f"Call-ID: call-1\r\nCSeq: {cseq} INVITE\r\nMax-Forwards: {hops}\r\n"
        f"Contact: <sip:1001@{lhost}:{lport}>\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def in_dialog(
    ua: SipTestClient, method: str, cseq: int, branch: str, to_tag: str,
    body: bytes = b"", extra: str = "",
) -> bytes:  # fmt: skip
    """A request of the caller's in the call's dialog (an SDP `body` gets its Content-Type)."""
    host, port = ua.server
    lhost, lport = ua.local
    if body:
        extra += "Content-Type: application/sdp\r\n"
    return (
        f"{method} sip:pbx@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {lhost}:{lport};branch={branch};rport\r\n"
        f"From: <sip:1001@{host}>;tag=alice\r\nTo: <sip:1002@{host}>;tag={to_tag}\r\n"
        f"Call-ID: call-1\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def receive(ua: SipTestClient) -> Message:
    return parse_message(await ua.recv_raw())


def rtp(seq: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x1234) + payload


async def udp_recv(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)


def media_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def answer_with(phone: SipTestClient, user: str, request: Request, body: bytes,
                tag: str | None = None) -> None:  # fmt: skip
    """The phone's 200 with SDP and its Contact (`tag` for the first answer of a dialog)."""
    headers = [("Contact", f"<sip:{user}@127.0.0.1:{phone.local[1]}>"),
               ("Content-Type", "application/sdp")]  # fmt: skip
    phone.send(build_response(request, 200, to_tag=tag, body=body, headers=headers).encode())


async def the_cdr(exchange: Exchange) -> dict[str, object]:
    """The one CDR of the test's call, once written (it is committed just after the end)."""
    assert exchange.store is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not (rows := await exchange.store.cdrs()) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    [row] = rows
    return row


async def authenticated_invite(
    alice: SipTestClient, offer: bytes, prefix: str, extra: str = "", hops: int = 70
) -> None:
    """INVITE, take the 407 (and ACK it), INVITE again with credentials; wait for 100."""
    alice.send(invite(alice, 1, f"z9hG4bK{prefix}1", offer, extra=extra, hops=hops))
    challenge = await receive(alice)
    assert isinstance(challenge, Response)
    assert challenge.status == 407
    alice.send(in_dialog(alice, "ACK", 1, f"z9hG4bK{prefix}1", challenge.to.tag or ""))
    offered = next(v for v in challenge.headers_named("Proxy-Authenticate") if "algorithm=MD5" in v)
    auth = alice.authorization(offered, "1001", "pw1001", method="INVITE")
    alice.send(invite(alice, 2, f"z9hG4bK{prefix}2", offer, auth, extra, hops))
    trying = await receive(alice)
    assert isinstance(trying, Response)
    assert trying.status == 100


async def test_call_between_two_phones(exchange: Exchange) -> None:
    assert exchange.calls is not None
    assert exchange.store is not None
    pool_before = exchange.calls.pool.free
    seen: list[Event] = []
    exchange.events.subscribe(seen.append)
    a_rtp, b_rtp = media_socket(), media_socket()
    async with (
        SipTestClient(server_of(exchange)) as alice,
        SipTestClient(server_of(exchange)) as bob,
    ):
        assert (await bob.register("1002", "pw1002")).status == 200
        await authenticated_invite(alice, sdp(a_rtp.getsockname()[1]), "call")

        # Bob's phone rings, then answers.
        incoming = await receive(bob)
        assert isinstance(incoming, Request)
        assert incoming.method == "INVITE"
        pbx_offer = parse_sdp(incoming.body)
        bob.send(build_response(incoming, 180, to_tag="bob").encode())
        answer_with(bob, "1002", incoming, sdp(b_rtp.getsockname()[1], "0"), tag="bob")
        ringing = await receive(alice)
        assert isinstance(ringing, Response)
        assert ringing.status == 180
        ok = await receive(alice)
        assert isinstance(ok, Response)
        assert ok.status == 200
        bob_ack = await receive(bob)
        assert isinstance(bob_ack, Request)
        assert bob_ack.method == "ACK"
        to_tag = ok.to.tag or ""
        alice.send(in_dialog(alice, "ACK", 2, "z9hG4bKack2", to_tag))

        # Media flows both ways through the exchange's two endpoints.
        pbx_a = parse_sdp(ok.body).media[0].port
        pbx_b = pbx_offer.media[0].port
        a_rtp.sendto(rtp(1, b"\xff" * 160), ("127.0.0.1", pbx_a))
        at_bob = await udp_recv(b_rtp)
        assert at_bob[12:] == b"\xff" * 160
        b_rtp.sendto(rtp(1, b"\x7f" * 160), ("127.0.0.1", pbx_b))
        at_alice = await udp_recv(a_rtp)
        assert at_alice[12:] == b"\x7f" * 160

        # Alice hangs up: she gets 200, Bob gets the BYE.
        alice.send(in_dialog(alice, "BYE", 3, "z9hG4bKbye3", to_tag))
        bye_ok = await receive(alice)
        assert isinstance(bye_ok, Response)
        assert bye_ok.status == 200
        bye = await receive(bob)
        assert isinstance(bye, Request)
        assert bye.method == "BYE"
        bob.send(build_response(bye, 200).encode())
    a_rtp.close()
    b_rtp.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while exchange.calls.calls and loop.time() < deadline:  # noqa: ASYNC110 - no event
        await asyncio.sleep(0.02)
    assert exchange.calls.calls == {}
    assert exchange.calls.pool.free == pool_before
    kinds = [e.type for e in seen if e.type.startswith("call")]
    assert kinds == ["call_started", "call_ringing", "call_answered", "call_ended"]
    ended = seen[-1]
    assert isinstance(ended, CallEnded)
    assert (ended.caller, ended.callee, ended.disposition, ended.hangup_by) == (
        "1001", "1002", "ANSWERED", "caller"
    )  # fmt: skip
    row = await the_cdr(exchange)
    assert row["disposition"] == "ANSWERED"
    assert row["caller"] == "1001"
    assert float(row["billsec"]) <= float(row["duration"])  # type: ignore[arg-type]


async def test_busy_callee(exchange: Exchange) -> None:
    assert exchange.store is not None
    async with (
        SipTestClient(server_of(exchange)) as alice,
        SipTestClient(server_of(exchange)) as bob,
    ):
        assert (await bob.register("1002", "pw1002")).status == 200
        await authenticated_invite(alice, sdp(40000), "busy")
        incoming = await receive(bob)
        assert isinstance(incoming, Request)
        bob.send(build_response(incoming, 486, to_tag="bob").encode())
        ack = await receive(bob)  # the exchange ACKs the 486 itself
        assert isinstance(ack, Request)
        assert ack.method == "ACK"
        busy = await receive(alice)
        assert isinstance(busy, Response)
        assert busy.status == 486
    row = await the_cdr(exchange)
    assert (row["disposition"], row["status"], row["billsec"]) == ("BUSY", 486, 0.0)


async def test_ring_timeout_cancels_the_callee_and_answers_480(exchange: Exchange) -> None:
    assert exchange.store is not None
    exchange.config = dataclasses.replace(
        exchange.config, calls=dataclasses.replace(exchange.config.calls, ring_timeout=0.3)
    )
    assert exchange.calls is not None
    exchange.calls.config = exchange.config
    async with (
        SipTestClient(server_of(exchange)) as alice,
        SipTestClient(server_of(exchange)) as bob,
    ):
        assert (await bob.register("1002", "pw1002")).status == 200
        await authenticated_invite(alice, sdp(40002), "ring")
        incoming = await receive(bob)
        assert isinstance(incoming, Request)
        bob.send(build_response(incoming, 180, to_tag="bob").encode())
        assert isinstance(ringing := await receive(alice), Response)
        assert ringing.status == 180
        cancel = await receive(bob)  # nobody answers: the exchange gives up on the phone
        assert isinstance(cancel, Request)
        assert cancel.method == "CANCEL"
        bob.send(build_response(cancel, 200).encode())
        bob.send(build_response(incoming, 487, to_tag="bob").encode())
        gave_up = await receive(alice)
        assert isinstance(gave_up, Response)
        assert gave_up.status == 480
    row = await the_cdr(exchange)
    assert (row["disposition"], row["cause"]) == ("NO ANSWER", "ring timeout")


async def test_silent_call_is_hung_up_after_the_rtp_timeout(exchange: Exchange) -> None:
    assert exchange.store is not None
    assert exchange.calls is not None
    exchange.config = dataclasses.replace(
        exchange.config, rtp=dataclasses.replace(exchange.config.rtp, inactivity_timeout=0.3)
    )
    exchange.calls.config = exchange.config
    async with (
        SipTestClient(server_of(exchange)) as alice,
        SipTestClient(server_of(exchange)) as bob,
    ):
        assert (await bob.register("1002", "pw1002")).status == 200
        await authenticated_invite(alice, sdp(40004), "quiet")
        incoming = await receive(bob)
        assert isinstance(incoming, Request)
        answer_with(bob, "1002", incoming, sdp(40006, "0"), tag="bob")
        ok = await receive(alice)
        assert isinstance(ok, Response)
        assert ok.status == 200
        assert isinstance(await receive(bob), Request)  # the ACK
        alice.send(in_dialog(alice, "ACK", 2, "z9hG4bKquietack", ok.to.tag or ""))
        # Nobody sends RTP: both phones get a BYE from the exchange.
        for phone in (alice, bob):
            bye = await receive(phone)
            assert isinstance(bye, Request)
            assert bye.method == "BYE"
            phone.send(build_response(bye, 200).encode())
    row = await the_cdr(exchange)
    assert (row["disposition"], row["hangup_by"]) == ("ANSWERED", "system")
    assert row["cause"] == "no RTP (inactivity timeout)"


def reinvite(ua: SipTestClient, cseq: int, branch: str, to_tag: str, body: bytes) -> bytes:
    return in_dialog(ua, "INVITE", cseq, branch, to_tag, body)


async def test_hold_and_resume_pass_through(exchange: Exchange) -> None:
    seen: list[Event] = []
    exchange.events.subscribe(seen.append)
    async with (
        SipTestClient(server_of(exchange)) as alice,
        SipTestClient(server_of(exchange)) as bob,
    ):
        assert (await bob.register("1002", "pw1002")).status == 200
        await authenticated_invite(alice, sdp(40010), "hold")
        incoming = await receive(bob)
        assert isinstance(incoming, Request)
        answer_with(bob, "1002", incoming, sdp(40012, "0"), tag="bob")
        ok = await receive(alice)
        assert isinstance(ok, Response)
        assert isinstance(await receive(bob), Request)  # ACK
        to_tag = ok.to.tag or ""
        alice.send(in_dialog(alice, "ACK", 2, "z9hG4bKholdack", to_tag))
        for cseq, direction, mirrored in ((3, "sendonly", "recvonly"), (4, "sendrecv", "sendrecv")):
            body = sdp(40010).replace(b"a=sendrecv", f"a={direction}".encode())
            alice.send(reinvite(alice, cseq, f"z9hG4bKre{cseq}", to_tag, body))
            answered = await receive(alice)
            assert isinstance(answered, Response)
            assert answered.status == 200
            assert parse_sdp(answered.body).direction_for(parse_sdp(answered.body).media[0]) \
                .value == mirrored  # fmt: skip
            alice.send(in_dialog(alice, "ACK", cseq, f"z9hG4bKreack{cseq}", to_tag))
            # Bob's phone is told the same direction the caller asked for.
            passed_on = await receive(bob)
            assert isinstance(passed_on, Request)
            assert passed_on.method == "INVITE"
            offer = parse_sdp(passed_on.body)
            assert offer.direction_for(offer.media[0]).value == direction
            answer_body = sdp(40012, "0").replace(b"a=sendrecv", f"a={mirrored}".encode())
            answer_with(bob, "1002", passed_on, answer_body)
            ack = await receive(bob)
            assert isinstance(ack, Request)
            assert ack.method == "ACK"
            assert ack.cseq.number == passed_on.cseq.number
        alice.send(in_dialog(alice, "BYE", 5, "z9hG4bKholdbye", to_tag))
        assert isinstance(bye_ok := await receive(alice), Response)
        assert bye_ok.status == 200
        bye = await receive(bob)
        assert isinstance(bye, Request)
        bob.send(build_response(bye, 200).encode())
    held = [e for e in seen if isinstance(e, CallHeld)]
    assert [(e.held, e.by) for e in held] == [(True, "caller"), (False, "caller")]


def cancel_of(ua: SipTestClient, branch: str) -> bytes:
    host, port = ua.server
    lhost, lport = ua.local
    return (
        f"CANCEL sip:1002@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {lhost}:{lport};branch={branch};rport\r\n"
        f"From: <sip:1001@{host}>;tag=alice\r\nTo: <sip:1002@{host}>\r\n"
        f"Call-ID: call-1\r\nCSeq: 2 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def test_caller_cancels_while_ringing(exchange: Exchange) -> None:
    assert exchange.store is not None
    async with (
        SipTestClient(server_of(exchange)) as alice,
        SipTestClient(server_of(exchange)) as bob,
    ):
        assert (await bob.register("1002", "pw1002")).status == 200
        await authenticated_invite(alice, sdp(40020), "cancel")
        incoming = await receive(bob)
        assert isinstance(incoming, Request)
        bob.send(build_response(incoming, 180, to_tag="bob").encode())
        assert isinstance(ringing := await receive(alice), Response)
        assert ringing.status == 180
        alice.send(cancel_of(alice, "z9hG4bKcancel2"))  # the authenticated INVITE's branch
        statuses = set()
        for _ in range(2):
            reply = await receive(alice)
            assert isinstance(reply, Response)
            statuses.add((reply.status, reply.cseq.method))
        assert statuses == {(200, "CANCEL"), (487, "INVITE")}
        cancel = await receive(bob)
        assert isinstance(cancel, Request)
        assert cancel.method == "CANCEL"
        bob.send(build_response(cancel, 200).encode())
        bob.send(build_response(incoming, 487, to_tag="bob").encode())
        # A CANCEL that matches nothing any more gets 481 (RFC 3261 §9.2).
        alice.send(cancel_of(alice, "z9hG4bKnothing"))
        late = await receive(alice)
        assert isinstance(late, Response)
        assert late.status == 481
    row = await the_cdr(exchange)
    assert (row["disposition"], row["hangup_by"]) == ("CANCELLED", "caller")


async def test_blind_transfer_by_the_callee(exchange: Exchange) -> None:
    """Bob answers, then REFERs Alice to Carol (1003): Carol's phone rings and answers,
    Bob hears 100 then 200 by NOTIFY and is let go, Alice's RTP now reaches Carol."""
    assert exchange.store is not None
    await add_users(exchange, {"1003": "pw1003"})
    seen: list[Event] = []
    exchange.events.subscribe(seen.append)
    a_rtp, c_rtp = media_socket(), media_socket()
    async with (
        SipTestClient(server_of(exchange)) as alice,
        SipTestClient(server_of(exchange)) as bob,
        SipTestClient(server_of(exchange)) as carol,
    ):
        assert (await bob.register("1002", "pw1002")).status == 200
        assert (await carol.register("1003", "pw1003")).status == 200
        await authenticated_invite(alice, sdp(a_rtp.getsockname()[1]), "xfer")
        incoming = await receive(bob)
        assert isinstance(incoming, Request)
        answer_with(bob, "1002", incoming, sdp(40030, "0"), tag="bob")
        ok = await receive(alice)
        assert isinstance(ok, Response)
        alice.send(in_dialog(alice, "ACK", 2, "z9hG4bKxferack", ok.to.tag or ""))
        assert isinstance(await receive(bob), Request)  # ACK
        host, port = bob.server
        bob.send(
            (
                f"REFER sip:pbx@{host}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{bob.local[1]};branch=z9hG4bKrefer1;rport\r\n"
                f"From: {incoming.header('To')};tag=bob\r\nTo: {incoming.header('From')}\r\n"
                f"Call-ID: {incoming.call_id}\r\nCSeq: 1 REFER\r\nMax-Forwards: 70\r\n"
                f"Refer-To: <sip:1003@{host}>\r\nContact: <sip:1002@127.0.0.1:{bob.local[1]}>\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
        )
        accepted = await receive(bob)
        assert isinstance(accepted, Response)
        assert accepted.status == 202
        trying = await receive(bob)
        assert isinstance(trying, Request)
        assert trying.method == "NOTIFY"
        assert trying.body.startswith(b"SIP/2.0 100")
        bob.send(build_response(trying, 200).encode())
        ring = await receive(carol)
        assert isinstance(ring, Request)
        assert ring.method == "INVITE"
        carol_port = c_rtp.getsockname()[1]
        answer_with(carol, "1003", ring, sdp(carol_port, "0"), tag="carol")
        assert isinstance(carol_ack := await receive(carol), Request)
        assert carol_ack.method == "ACK"
        done = await receive(bob)
        assert isinstance(done, Request)
        assert done.method == "NOTIFY"
        assert done.body.startswith(b"SIP/2.0 200")
        bob.send(build_response(done, 200).encode())
        bye = await receive(bob)
        assert isinstance(bye, Request)
        assert bye.method == "BYE"
        bob.send(build_response(bye, 200).encode())
        # Alice's audio now reaches Carol.
        pbx_a = parse_sdp(ok.body).media[0].port
        a_rtp.sendto(rtp(1, b"\x55" * 160), ("127.0.0.1", pbx_a))
        assert (await udp_recv(c_rtp))[12:] == b"\x55" * 160
        alice.send(in_dialog(alice, "BYE", 3, "z9hG4bKxferbye", ok.to.tag or ""))
        assert isinstance(bye_ok := await receive(alice), Response)
        assert bye_ok.status == 200
        carol_bye = await receive(carol)
        assert isinstance(carol_bye, Request)
        assert carol_bye.method == "BYE"
        carol.send(build_response(carol_bye, 200).encode())
    a_rtp.close()
    c_rtp.close()
    assert [e.to for e in seen if isinstance(e, CallTransferred)] == ["1003"]
