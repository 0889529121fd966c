"""INVITE client transactions through the endpoint (RFC 3261 §17.1.1, RFC 6026)."""

from __future__ import annotations

import asyncio

import pytest

from pbx.config import ListenAddress
from pbx.errors import TransactionTimeout
from pbx.server import Exchange
from pbx.sip.aio import Peer
from pbx.sip.message import Request, Response, build_response, new_branch, parse_message
from pbx.sip.transaction import Timers
from pbx.sip.uri import parse_uri
from tests.aio.test_register_flow import server_of
from tests.support.sipclient import SipTestClient


def outgoing_invite(local: ListenAddress, phone: tuple[str, int]) -> Request:
    host, port = phone
    return Request.build(
        "INVITE",
        parse_uri(f"sip:1002@{host}:{port}"),
        [
            ("Via", f"SIP/2.0/UDP {local.host}:{local.port};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:1001@{local.host}>;tag=pbxside"),
            ("To", "<sip:1002@phone>"),
            ("Call-ID", "outgoing-1"),
            ("CSeq", "7 INVITE"),
            ("Route", "<sip:proxy.example;lr>"),
            ("Contact", f"<sip:pbx@{local.host}:{local.port}>"),
        ],
    )


async def phone_receives(ua: SipTestClient) -> Request:
    message = parse_message(await ua.recv_raw())
    assert isinstance(message, Request)
    return message


@pytest.mark.parametrize("final", [486, 200])
async def test_invite_provisional_then_final(exchange: Exchange, final: int) -> None:
    local = exchange.endpoint.listener("udp")
    assert local is not None
    async with SipTestClient(server_of(exchange)) as phone:
        peer = Peer("udp", phone.local[0], phone.local[1], local)
        seen: list[Response] = []
        result = exchange.endpoint.invite(outgoing_invite(local, phone.local), peer, seen.append)
        invite = await phone_receives(phone)
        assert invite.method == "INVITE"
        phone.send(build_response(invite, 180, to_tag="callee").encode())
        phone.send(build_response(invite, final, to_tag="callee").encode())
        response = await asyncio.wait_for(result, 5)
        assert response.status == final
        assert [r.status for r in seen] == [180, final]
        if final >= 300:
            # The transaction ACKs the error itself, with the INVITE's branch (§17.1.1.3).
            ack = await phone_receives(phone)
            assert ack.method == "ACK"
            assert ack.cseq.number == 7
            assert ack.vias[0].branch == invite.vias[0].branch
            assert ack.to.tag == "callee"
            assert ack.headers_named("Route") == ["<sip:proxy.example;lr>"]
            assert str(ack.uri) == str(invite.uri)
        else:
            # A 2xx retransmission reaches the TU again (RFC 6026), which must re-ACK.
            phone.send(build_response(invite, 200, to_tag="callee").encode())
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while len(seen) < 3 and loop.time() < deadline:  # noqa: ASYNC110 - callback only
                await asyncio.sleep(0.01)
            assert [r.status for r in seen] == [180, 200, 200]


async def test_unanswered_invite_times_out(exchange: Exchange) -> None:
    exchange.endpoint.timers = Timers(t1=0.01, t2=0.04, t4=0.05)
    local = exchange.endpoint.listener("udp")
    assert local is not None
    async with SipTestClient(server_of(exchange)) as phone:
        peer = Peer("udp", phone.local[0], phone.local[1], local)
        seen: list[Response] = []
        result = exchange.endpoint.invite(outgoing_invite(local, phone.local), peer, seen.append)
        with pytest.raises(TransactionTimeout):
            await asyncio.wait_for(result, 5)
        sent = 0
        while not phone.queue.empty():
            sent += 1
            phone.queue.get_nowait()
        assert sent == 7  # Timer A: the INVITE and its 6 retransmissions before Timer B
        assert seen == []
