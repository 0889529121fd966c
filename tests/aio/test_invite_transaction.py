"""INVITE server transactions (RFC 3261 §17.2.1): a final error is retransmitted until ACKed."""

from __future__ import annotations

import asyncio

import pytest

from pbx.server import Exchange
from pbx.sip.message import Response, parse_message
from pbx.sip.transaction import Timers
from tests.aio.test_register_flow import server_of
from tests.support.sipclient import SipTestClient


def invite(ua: SipTestClient, branch: str) -> bytes:
    host, port = ua.server
    lhost, lport = ua.local
    return (
        f"INVITE sip:1002@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {lhost}:{lport};branch={branch};rport\r\n"
        f"From: <sip:1001@{host}>;tag=caller\r\nTo: <sip:1002@{host}>\r\n"
        f"Call-ID: inv-{branch}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:1001@{lhost}:{lport}>\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def ack_for(ua: SipTestClient, response: Response, branch: str) -> bytes:
    host, port = ua.server
    lhost, lport = ua.local
    return (
        f"ACK sip:1002@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {lhost}:{lport};branch={branch};rport\r\n"
        f"From: <sip:1001@{host}>;tag=caller\r\nTo: <sip:1002@{host}>;tag={response.to.tag}\r\n"
        f"Call-ID: inv-{branch}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def test_final_error_retransmitted_until_ack(exchange: Exchange) -> None:
    exchange.endpoint.timers = Timers(t1=0.05, t2=0.2, t4=0.25)
    async with SipTestClient(server_of(exchange)) as ua:
        ua.send(invite(ua, "z9hG4bKinv1"))
        first = await ua.recv()
        assert first.status == 407  # the proxy challenge is a final error too
        again = parse_message(await ua.recv_raw(timeout=2))  # Timer G, no ACK yet
        assert isinstance(again, Response)
        assert again.status == 407
        assert again.to.tag == first.to.tag
        ua.send(ack_for(ua, first, "z9hG4bKinv1"))
        with pytest.raises(TimeoutError):  # the ACK matched the transaction: Timer G stops
            await ua.recv(timeout=0.6)


async def test_ack_never_comes_timer_h_ends_the_transaction(exchange: Exchange) -> None:
    exchange.endpoint.timers = Timers(t1=0.01, t2=0.04, t4=0.05)
    async with SipTestClient(server_of(exchange)) as ua:
        ua.send(invite(ua, "z9hG4bKinv2"))
        assert (await ua.recv()).status == 407
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        table = exchange.endpoint._server_txns
        while table and loop.time() < deadline:  # noqa: ASYNC110 - timers have no event
            await asyncio.sleep(0.05)
        assert table == {}
