"""MediaEndpoint and Bridge on loopback: two plain UDP sockets play the phones."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from media.aio import Address, Bridge, MediaEndpoint
from media.g711 import ALAW_TO_ULAW, ULAW_TO_ALAW
from media.ports import PortPool
from media.rtp import (
    Bye,
    ReceiverReport,
    ReportBlock,
    RtpPacket,
    SenderInfo,
    SenderReport,
    build_rtcp,
    compact_ntp,
    ntp_from_unix,
    parse_rtcp,
    parse_rtp,
)

HOST = "127.0.0.1"
TIMEOUT = 3.0


@pytest.fixture
def pool() -> PortPool:
    # Ports someone else holds are skipped by MediaEndpoint.open's bind retry.
    return PortPool(41000, 41999)


def udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    return sock


@pytest.fixture
def phones() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = udp(), udp()
    yield a, b
    a.close()
    b.close()


async def recv(sock: socket.socket) -> tuple[bytes, Address]:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), TIMEOUT)


async def recv_rtp(sock: socket.socket) -> RtpPacket:
    return parse_rtp((await recv(sock))[0])


def rtp(seq: int, ts: int, ssrc: int, payload: bytes = b"\xff" * 160, pt: int = 0) -> bytes:
    return RtpPacket(pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, payload).encode()


def to(endpoint: MediaEndpoint, rtcp: bool = False) -> Address:
    return (HOST, endpoint.port + rtcp)


@pytest.fixture
async def legs(
    pool: PortPool, phones: tuple[socket.socket, socket.socket]
) -> AsyncIterator[tuple[MediaEndpoint, MediaEndpoint]]:
    a = await MediaEndpoint.open(pool, HOST, phones[0].getsockname())
    b = await MediaEndpoint.open(pool, HOST, phones[1].getsockname())
    yield a, b
    a.close()
    b.close()
    await a.wait_closed()
    await b.wait_closed()


async def test_relay_both_ways_keeps_each_stream_continuous(
    legs: tuple[MediaEndpoint, MediaEndpoint], phones: tuple[socket.socket, socket.socket]
) -> None:
    leg_a, leg_b = legs
    phone_a, phone_b = phones
    bridge = Bridge(leg_a, leg_b)
    for src, dst, leg, rewriter, ssrc in (
        (phone_a, phone_b, leg_a, bridge.a_to_b, 0xAAAA0001),
        (phone_b, phone_a, leg_b, bridge.b_to_a, 0xBBBB0001),
    ):
        got = []
        # Five packets, then the source restarts (new SSRC, far-off sequence):
        # the far phone must still see one SSRC with +1 sequence numbers.
        for n in range(8):
            restarted = n >= 5
            payload = bytes([n]) * 160
            seq = (40000 if restarted else 65534) + n  # also wraps 65535 -> 0
            src.sendto(rtp(seq, 1000 + 160 * n, ssrc + restarted, payload), to(leg))
            got.append(await recv_rtp(dst))
            assert got[-1].payload == payload and got[-1].payload_type == 0
        assert {p.ssrc for p in got} == {rewriter.ssrc}
        first = got[0]
        assert [p.sequence for p in got] == [(first.sequence + n) & 0xFFFF for n in range(8)]
        stamps = [(p.timestamp - first.timestamp) & 0xFFFFFFFF for p in got]
        assert stamps[:5] == [160 * n for n in range(5)]
        assert stamps[5] > stamps[4] and stamps[6:] == [stamps[5] + 160, stamps[5] + 320]
        assert [p.marker for p in got] == [True, False, False, False, False, True, False, False]
        assert leg.stats is not None and leg.stats.ssrc == ssrc + 1
        assert leg.received == 8
    bridge.close()


async def test_latching_sends_to_where_the_phone_really_is(
    pool: PortPool, phones: tuple[socket.socket, socket.socket]
) -> None:
    phone_a, phone_b = phones
    sdp_a = udp()  # the port phone A's SDP names; it really sends from phone_a
    stranger = udp()
    leg_a = await MediaEndpoint.open(pool, HOST, sdp_a.getsockname())
    leg_b = await MediaEndpoint.open(pool, HOST, phone_b.getsockname())
    try:
        Bridge(leg_a, leg_b)
        phone_b.sendto(rtp(1, 0, 0xB), to(leg_b))  # before A's first packet: the SDP port
        assert (await recv_rtp(sdp_a)).payload == b"\xff" * 160
        phone_a.sendto(rtp(1, 0, 0xA, b"a1"), to(leg_a))
        assert (await recv_rtp(phone_b)).payload == b"a1"
        assert leg_a.latched == phone_a.getsockname() == leg_a.remote
        phone_b.sendto(rtp(2, 160, 0xB, b"b2"), to(leg_b))
        assert (await recv_rtp(phone_a)).payload == b"b2"
        # Once latched, another source is dropped: phone B next gets A's packet.
        stranger.sendto(rtp(2, 160, 0xA, b"evil"), to(leg_a))
        phone_a.sendto(rtp(2, 160, 0xA, b"a2"), to(leg_a))
        assert (await recv_rtp(phone_b)).payload == b"a2"
        assert leg_a.foreign == 1
    finally:
        for sock in (sdp_a, stranger):
            sock.close()
        leg_a.close()
        leg_b.close()
        await leg_a.wait_closed()
        await leg_b.wait_closed()


async def test_new_party_is_latched_not_the_departing_one(
    pool: PortPool, phones: tuple[socket.socket, socket.socket]
) -> None:
    """After a transfer the departing phone may still send for a few ms: the endpoint must
    latch onto the new party, or the new party is cut off for the rest of the call."""
    phone_a, phone_b = phones
    newcomer = udp()
    leg_a = await MediaEndpoint.open(pool, HOST, phone_a.getsockname())
    leg_b = await MediaEndpoint.open(pool, HOST, phone_b.getsockname())
    try:
        Bridge(leg_a, leg_b)
        phone_b.sendto(rtp(1, 0, 0xB, b"b1"), to(leg_b))
        assert (await recv_rtp(phone_a)).payload == b"b1"
        leg_b.set_remote(newcomer.getsockname(), new_party=True)
        phone_b.sendto(rtp(2, 160, 0xB, b"late"), to(leg_b))  # the departing phone, late
        newcomer.sendto(rtp(1, 0, 0xC, b"c1"), to(leg_b))
        assert (await recv_rtp(phone_a)).payload == b"c1"
        assert leg_b.latched == newcomer.getsockname()
        assert leg_b.foreign == 1
        phone_a.sendto(rtp(1, 0, 0xA, b"a1"), to(leg_a))
        assert (await recv_rtp(newcomer)).payload == b"a1"
    finally:
        newcomer.close()
        leg_a.close()
        leg_b.close()
        await leg_a.wait_closed()
        await leg_b.wait_closed()


async def test_pcmu_pcma_transcoding(
    legs: tuple[MediaEndpoint, MediaEndpoint], phones: tuple[socket.socket, socket.socket]
) -> None:
    leg_a, leg_b = legs
    phone_a, phone_b = phones
    Bridge(leg_a, leg_b, transcode=("PCMU", "PCMA"))
    every_code = bytes(range(256))
    phone_a.sendto(rtp(1, 0, 0xA, every_code, pt=0), to(leg_a))
    got = await recv_rtp(phone_b)
    assert (got.payload_type, got.payload) == (8, every_code.translate(ULAW_TO_ALAW))
    phone_b.sendto(rtp(1, 0, 0xB, every_code, pt=8), to(leg_b))
    got = await recv_rtp(phone_a)
    assert (got.payload_type, got.payload) == (0, every_code.translate(ALAW_TO_ULAW))
    # Other payload types (RFC 4733 events) pass through untouched.
    phone_a.sendto(rtp(2, 160, 0xA, b"\x01\x0a\x00\xa0", pt=101), to(leg_a))
    got = await recv_rtp(phone_b)
    assert (got.payload_type, got.payload) == (101, b"\x01\x0a\x00\xa0")
    # Padding and CSRCs are not payload: only the payload is translated.
    packet = RtpPacket(0, 3, 320, 0xA, b"\x00\x7f", csrcs=(5,), padding=4).encode()
    phone_a.sendto(packet, to(leg_a))
    got = await recv_rtp(phone_b)
    assert (got.payload, got.csrcs, got.padding) == (b"\x00\x7f".translate(ULAW_TO_ALAW), (5,), 4)


async def test_inactivity_callback_when_a_side_stops(
    pool: PortPool, phones: tuple[socket.socket, socket.socket]
) -> None:
    loop = asyncio.get_running_loop()
    phone_a, phone_b = phones
    silent = asyncio.Event()
    fired: list[MediaEndpoint] = []

    def on_inactive(endpoint: MediaEndpoint) -> None:
        fired.append(endpoint)
        silent.set()

    leg_a = await MediaEndpoint.open(
        pool, HOST, phone_a.getsockname(), inactivity=0.3, on_inactive=on_inactive
    )
    leg_b = await MediaEndpoint.open(pool, HOST, phone_b.getsockname())
    try:
        Bridge(leg_a, leg_b)
        for n in range(3):
            phone_a.sendto(rtp(n, 160 * n, 0xA), to(leg_a))
            await recv_rtp(phone_b)
        last = loop.time()
        await asyncio.wait_for(silent.wait(), TIMEOUT)
        assert loop.time() - last >= 0.3 - 0.01
        assert fired == [leg_a] and leg_a.inactive and not leg_b.inactive
    finally:
        leg_a.close()
        leg_b.close()
        await leg_a.wait_closed()
        await leg_b.wait_closed()


async def test_rtcp_is_consumed_into_stats(
    legs: tuple[MediaEndpoint, MediaEndpoint], phones: tuple[socket.socket, socket.socket]
) -> None:
    leg_a, leg_b = legs
    phone_a, phone_b = phones
    Bridge(leg_a, leg_b)
    for n in range(3):
        phone_a.sendto(rtp(n, 160 * n, 0xA), to(leg_a))
        await recv_rtp(phone_b)
    arrived = asyncio.Event()
    leg_a.on_rtcp = lambda packets: arrived.set()
    ntp = ntp_from_unix(1_700_000_000.5)
    phone_a.sendto(build_rtcp(SenderReport(0xA, SenderInfo(ntp, 320, 3, 480))), to(leg_a, True))
    await asyncio.wait_for(arrived.wait(), TIMEOUT)
    assert leg_a.stats is not None
    block = leg_a.stats.report_block(asyncio.get_running_loop().time())
    assert block is not None and block.lsr == (ntp >> 16) & 0xFFFFFFFF
    assert block.highest_sequence == 2
    assert leg_b.sent == 3  # only the RTP: the SR was not forwarded to B's phone


def hold_free_range(low: int, high: int, count: int) -> list[socket.socket]:
    """Sockets bound on `count` consecutive ports from an even base in low..high."""
    for base in range(low, high - count, 2):
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                held.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                held[-1].bind((HOST, port))
        except OSError:
            for sock in held:
                sock.close()
            continue
        return held
    raise RuntimeError("no free port range")


async def test_bind_retries_past_a_port_someone_holds(pool: PortPool) -> None:
    held = hold_free_range(pool.low, pool.high, 4)
    base = held[0].getsockname()[1]
    for sock in (held[0], held[2], held[3]):
        sock.close()  # keep only base + 1, the RTCP half of the first pair
    small = PortPool(base, base + 3)  # pairs base and base + 2
    try:
        endpoint = await MediaEndpoint.open(small, HOST)
        assert endpoint.port == base + 2
        assert small.free == 1  # the held pair went back to the pool
        endpoint.close()
        await endpoint.wait_closed()
        assert small.free == small.size == 2
    finally:
        held[1].close()


async def test_open_close_cycles_leak_neither_ports_nor_fds(pool: PortPool) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(200):
        endpoint = await MediaEndpoint.open(pool, HOST, (HOST, 9), inactivity=30.0)
        endpoint.send(rtp(1, 0, 1))
        endpoint.close()
        await endpoint.wait_closed()
    assert pool.free == pool.size
    assert len(os.listdir("/proc/self/fd")) == before


async def test_endpoint_reports_by_rtcp_and_learns_the_round_trip(pool: PortPool) -> None:
    """An SR (we sent RTP) with a block on the phone's stream to its RTCP port, the phone's
    RR on our stream gives the round trip, and close() sends a last report with BYE."""
    phone_rtp, phone_rtcp = udp(), udp()
    leg = await MediaEndpoint.open(
        pool, HOST, phone_rtp.getsockname(), rtcp_interval=0.05,
        rtcp_remote=phone_rtcp.getsockname(), rng=random.Random(7),
    )  # fmt: skip
    try:
        for n in range(3):
            phone_rtp.sendto(rtp(n, 160 * n, 0xA), to(leg))
        for n in range(5):
            leg.send(rtp(n, 160 * n, leg.ssrc))
        while True:  # reports sent before the phone's packets arrived may be RRs
            data, source = await recv(phone_rtcp)
            head = parse_rtcp(data)[0]
            if isinstance(head, SenderReport) and head.reports:
                break
        assert source == to(leg, rtcp=True)
        assert head.ssrc == leg.ssrc and head.sender_info.packet_count == 5
        assert head.sender_info.octet_count == 5 * 160
        assert head.reports[0].ssrc == 0xA and head.reports[0].highest_sequence == 2
        # The phone answers on our stream: LSR from our SR, held 0.01 s.
        lsr = compact_ntp(head.sender_info.ntp_timestamp)
        block = ReportBlock(leg.ssrc, 0, 0, 4, 3, lsr=lsr, dlsr=655)
        phone_rtcp.sendto(build_rtcp(ReceiverReport(0xA, (block,))), to(leg, rtcp=True))
        while leg.peer_report is None:
            await recv(phone_rtcp)  # our next reports; the RR is taken in meanwhile
        assert leg.peer_report.highest_sequence == 4
        assert leg.round_trip is not None and 0.0 <= leg.round_trip < 1.0
        assert leg.rtcp_sent >= 1
    finally:
        leg.close()
        await leg.wait_closed()
    while True:
        last = parse_rtcp((await recv(phone_rtcp))[0])
        if isinstance(last[-1], Bye):
            break
    assert last[-1] == Bye((leg.ssrc,), None)
    phone_rtp.close()
    phone_rtcp.close()


async def test_a_rebuilt_bridge_continues_each_stream(
    legs: tuple[MediaEndpoint, MediaEndpoint], phones: tuple[socket.socket, socket.socket]
) -> None:
    """A call rebuilds its bridge (a codec change, an attended transfer): each phone keeps
    seeing the one stream of its endpoint, with the next sequence number."""
    leg_a, leg_b = legs
    phone_a, phone_b = phones
    got = []
    bridge = Bridge(leg_a, leg_b)
    for n in range(6):
        if n == 3:  # a new bridge, now transcoding
            bridge.close()
            bridge = Bridge(leg_a, leg_b, ("PCMU", "PCMA"))
        phone_a.sendto(rtp(100 + n, 160 * n, 0xA), to(leg_a))
        got.append(await recv_rtp(phone_b))
    assert {p.ssrc for p in got} == {leg_b.ssrc}
    assert [(p.sequence - got[0].sequence) & 0xFFFF for p in got] == list(range(6))
    assert [p.payload_type for p in got] == [0, 0, 0, 8, 8, 8]
    bridge.close()
