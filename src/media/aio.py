"""Asyncio shell for media anchoring: one leg's RTP/RTCP sockets, and a relay.

`MediaEndpoint` owns one leg's RTP and RTCP UDP sockets on a `PortPool` pair.
It latches symmetrically (RFC 4961): before the leg's first RTP packet it
sends to the address from SDP; afterwards to where that packet came from,
which is what gets through NATs. Packets from any other source are dropped
until `set_remote` (a new SDP offer/answer) unlatches. It keeps RFC 3550
receive statistics and calls back when RTP stops for `inactivity` seconds,
so the call can be hung up.

Each endpoint is an RTP session member of its own (RFC 3550 §6): one SSRC and
CNAME for everything it sends, and an `RtcpReporter` that sends the phone a
compound SR (or RR while we send nothing) + SDES every ~5 s (`rtcp_interval`),
with a report block on the phone's stream, and a BYE on close. The phone's
reports give `peer_report` (its loss and jitter of our stream, the round trip).

`Bridge` relays RTP payloads between two endpoints without decoding them;
each direction has its own `SequenceRewriter`, sending under the outgoing
endpoint's SSRC, so each phone sees one continuous stream. PCMU<->PCMA is a
`bytes.translate` of the payload; G.722 is only ever relayed to G.722. RTCP is
consumed per leg and never forwarded: the two legs are separate RTP sessions,
the B2BUA is the endpoint of each.

The receive path runs ~50 times per second per leg per call, so it avoids
logging, parsing into objects, and timer re-arming per packet: the
inactivity timer is armed once per `inactivity` period and compares the
last arrival time.

`FileWriter` takes file writes off the loop: a thread runs the jobs given to
it in order (a recording's second of audio, its close, a trim), fed by a
bounded queue, so a slow disk delays the files and never the calls' media.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import logging
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from struct import Struct
from typing import Any, TypeVar

from media.dtmf import Digit, TelephoneEventReceiver
from media.g711 import ALAW_TO_ULAW, ULAW_TO_ALAW
from media.ports import PortPool, PortsExhausted
from media.rtp import (
    RTCP_MIN_INTERVAL,
    PeerReport,
    ReceiveStats,
    RtcpPacket,
    RtcpReporter,
    RtpError,
    SendCounts,
    SequenceRewriter,
    ntp_from_unix,
    parse_rtcp,
)
from pbx.errors import MediaError

__all__ = ["Bridge", "DtmfTap", "FileWriter", "MediaEndpoint"]

log = logging.getLogger("media.aio")
T = TypeVar("T")

Address = tuple[Any, ...]  # (host, port) or (host, port, flowinfo, scope_id)
RtpHandler = Callable[[bytes, float], None]

_SEQ_TS_SSRC = Struct("!HII")  # RFC 3550 §5.1 fixed header from octet 2
PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8}  # RFC 3551 static payload types: what we transcode
_TABLES = {("PCMU", "PCMA"): ULAW_TO_ALAW, ("PCMA", "PCMU"): ALAW_TO_ULAW}
# Slack for the loop firing a timer up to its clock resolution early.
_TIMER_SLACK = 1e-3


class _RtcpProtocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: MediaEndpoint) -> None:
        self._endpoint = endpoint

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._endpoint._on_rtcp(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP unreachable from a phone that went away; inactivity handles it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._endpoint._open_sockets += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._endpoint._socket_closed()


class MediaEndpoint(asyncio.DatagramProtocol):
    """One leg's RTP (even port) and RTCP (port + 1) sockets. Open with `open`.

    Public counters: `received` (RTP packets accepted), `sent` and `sent_bytes`
    (RTP packets and their size), `foreign` (dropped: from an address other than
    the latched one), `dropped` (not RTP/RTCP version 2, or malformed RTCP),
    `rtcp_sent`. `stats` is the RFC 3550 `ReceiveStats` of the current incoming
    SSRC, None before the first packet; `peer_report` what the phone's last SR/RR
    said of our stream, None before one arrives.

    `outgoing` is the one stream this endpoint sends (its SSRC, sequence numbers
    and timestamps): whatever feeds it (a `Bridge`, later a prompt) rewrites its
    packets through it, so the phone sees one continuous stream across transfers
    and bridge rebuilds, and the SR knows the stream's last timestamp.
    """

    on_rtp: RtpHandler | None
    """Called with each accepted RTP packet and its arrival time (set by `Bridge`)."""
    on_rtcp: Callable[[list[RtcpPacket]], None] | None
    """Called with each parsed incoming RTCP compound packet."""

    def __init__(
        self,
        pool: PortPool,
        port: int,
        remote: Address | None,
        clock_rate: int,
        inactivity: float | None,
        on_inactive: Callable[[MediaEndpoint], None] | None,
        *,
        rtcp_interval: float | None = RTCP_MIN_INTERVAL,
        rtcp_remote: Address | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._time = self._loop.time
        # NTP timestamps (RFC 3550 §4) follow the monotonic loop clock from a wallclock
        # reading at open, so a wallclock step mid-call does not corrupt LSR/DLSR round trips.
        self._wallclock_offset = time.time() - self._time()
        self._pool, self.port, self.clock_rate = pool, port, clock_rate
        rng = rng if rng is not None else random.SystemRandom()
        self.ssrc = rng.getrandbits(32)
        # RFC 7022 §4.2: a random per-session CNAME, 96 bits in base64.
        self.cname = base64.b64encode(rng.getrandbits(96).to_bytes(12, "big"))
        self.on_rtp = None
        self.on_rtcp = None
        self._event_pt = -1  # the phone's telephone-event payload type, watched for DTMF
        self._events: DtmfTap | None = None
        self.audio_tap: RtpHandler | None = None
        """Sees every RTP packet accepted from the phone (the media clock's decoder)."""
        self.record_taps: tuple[RtpHandler, ...] = ()
        """See them too: the recorders' streams (a recorded phone may be decoded as well)."""
        self.local = False
        """Audio of ours plays to the phone (a prompt, music, a conference): relayed packets
        are dropped meanwhile."""
        self.on_inactive = on_inactive
        self.stats: ReceiveStats | None = None
        self.received = self.sent = self.foreign = self.dropped = 0
        self.sent_bytes = self.rtcp_sent = 0
        self.outgoing = SequenceRewriter(
            self.ssrc, rng.getrandbits(16), rng.getrandbits(32), clock_rate
        )
        self._sdp_remote: Address | None = remote
        self._sdp_rtcp: Address | None = rtcp_remote
        self._rtcp_muxed = False  # the phone's RTCP came to our RTP port (RFC 5761)
        self._latched: Address | None = None
        self._rtcp_latched: Address | None = None
        self._departed: Address | None = None  # a source never to latch again (transfer)
        self._send_to = remote
        self._rtp: asyncio.DatagramTransport | None = None
        self._rtcp: asyncio.DatagramTransport | None = None
        self._open_sockets = 0
        self._all_closed = asyncio.Event()
        self._closed = False
        self._inactivity = inactivity
        self._last_rtp = self._time()
        self._timer: asyncio.TimerHandle | None = None
        self.inactive = False
        # Without an interval we send no reports but still read the phone's.
        self._reports = rtcp_interval is not None
        self._reporter = RtcpReporter(
            self.ssrc,
            self.cname,
            clock_rate,
            self._time(),
            rng.random,
            RTCP_MIN_INTERVAL if rtcp_interval is None else rtcp_interval,
        )
        self._rtcp_timer: asyncio.TimerHandle | None = None

    @classmethod
    async def open(
        cls,
        pool: PortPool,
        address: str,
        remote: Address | None = None,
        *,
        clock_rate: int = 8000,
        inactivity: float | None = None,
        on_inactive: Callable[[MediaEndpoint], None] | None = None,
        rtcp_interval: float | None = RTCP_MIN_INTERVAL,
        rtcp_remote: Address | None = None,
        rng: random.Random | None = None,
    ) -> MediaEndpoint:
        """Bind RTP+RTCP on `address` at a pool port pair; send to `remote` (from SDP).

        RTCP reports go to `rtcp_remote` (SDP a=rtcp), else `remote`'s port + 1, every
        `rtcp_interval` seconds on average (randomised, RFC 3550 §6.3.1; None: no
        reports). `rng` draws the SSRC, CNAME and report times (tests pass a seeded one).

        A pair that something else holds is given back (to the end of the
        pool's queue) and the next one tried. Raises `PortsExhausted` when
        none binds, `MediaError` when `address` cannot be bound at all.
        """
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        for _ in range(pool.free):
            port = pool.allocate()
            rtp = socket.socket(family, socket.SOCK_DGRAM)
            rtcp = socket.socket(family, socket.SOCK_DGRAM)
            try:
                rtp.bind((address, port))
                rtcp.bind((address, port + 1))
            except OSError as exc:
                rtp.close()
                rtcp.close()
                pool.release(port)
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise MediaError(f"cannot bind media on {address}:{port}: {exc}") from exc
            endpoint = cls(
                pool,
                port,
                remote,
                clock_rate,
                inactivity,
                on_inactive,
                rtcp_interval=rtcp_interval,
                rtcp_remote=rtcp_remote,
                rng=rng,
            )
            try:
                await endpoint._start(rtp, rtcp)
            except BaseException:
                endpoint.close()
                rtp.close()
                rtcp.close()
                raise
            return endpoint
        raise PortsExhausted(f"no free RTP port pair on {address} in {pool.low}-{pool.high}")

    async def _start(self, rtp: socket.socket, rtcp: socket.socket) -> None:
        loop = self._loop
        self._rtp, _ = await loop.create_datagram_endpoint(lambda: self, sock=rtp)
        self._rtcp, _ = await loop.create_datagram_endpoint(lambda: _RtcpProtocol(self), sock=rtcp)
        self._arm()
        self._arm_rtcp()

    # --- asyncio protocol callbacks --------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._open_sockets += 1

    def _socket_closed(self) -> None:
        self._open_sockets -= 1
        if self._open_sockets == 0:
            self._all_closed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._socket_closed()

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP unreachable from a phone that went away; inactivity handles it

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """The per-packet receive path: validate, latch, count, hand on."""
        if len(data) < 12 or data[0] & 0xC0 != 0x80:
            self.dropped += 1
            return
        if 192 <= data[1] <= 223:  # RFC 5761 §4: RTCP multiplexed on the RTP port
            self._on_rtcp(data, addr, muxed=True)
            return
        latched = self._latched
        if latched is None:
            if addr == self._departed:
                self.foreign += 1  # the party that left (transfer) is not latched again
                return
            self._latched = self._send_to = addr  # RFC 4961 symmetric RTP
        elif addr != latched:
            self.foreign += 1
            return
        now = self._time()
        self._last_rtp = now
        self.received += 1
        sequence, timestamp, ssrc = _SEQ_TS_SSRC.unpack_from(data, 2)
        stats = self.stats
        if stats is None or stats.ssrc != ssrc:
            stats = self.stats = ReceiveStats(ssrc, self.clock_rate)
        stats.on_packet(sequence, timestamp, now)
        if data[1] & 0x7F == self._event_pt and self._events is not None:
            self._events.packet(data, now)
        tap = self.audio_tap
        if tap is not None:
            tap(data, now)
        for tap in self.record_taps:
            tap(data, now)
        handler = self.on_rtp
        if handler is not None:
            handler(data, now)

    def _on_rtcp(self, data: bytes, addr: Address, muxed: bool = False) -> None:
        latched = self._rtcp_latched
        if latched is None:
            departed = self._departed
            if (
                departed is not None
                and addr[0] == departed[0]
                and (addr[1] in (departed[1], departed[1] + 1))
            ):
                self.foreign += 1  # the departed party's RTCP (or muxed on its RTP port)
                return
            if muxed and addr != self._latched:
                self.foreign += 1  # muxed RTCP only from where the RTP comes from
                return
        elif addr != latched:
            self.foreign += 1
            return
        try:
            packets = parse_rtcp(data)
        except RtpError:
            self.dropped += 1
            return
        if latched is None:  # latch only onto something that parsed as RTCP
            self._rtcp_latched, self._rtcp_muxed = addr, muxed
        now = self._time()
        self._reporter.on_rtcp(packets, now, self._ntp(now), self.stats)
        if self.on_rtcp is not None:
            self.on_rtcp(packets)

    # --- sending and addressing --------------------------------------------

    def send(self, data: bytes) -> None:
        """Send one relayed RTP packet to the latched address, else the SDP one; else (or
        while something of ours plays to the phone, `local`) drop it."""
        to = self._send_to
        if to is not None and not self._closed and not self.local:
            self._rtp.sendto(data, to)  # type: ignore[union-attr]
            self.sent += 1
            self.sent_bytes += len(data)

    def send_local(self, data: bytes) -> None:
        """Send a packet of our own (`outgoing.emit`), whatever `local` says."""
        to = self._send_to
        if to is not None and not self._closed:
            self._rtp.sendto(data, to)  # type: ignore[union-attr]
            self.sent += 1
            self.sent_bytes += len(data)

    @property
    def sent_octets(self) -> int:
        """Payload octets sent (the SR's octet count, RFC 3550 §6.4.1). Counted as the
        packets' size less 12 header bytes each: exact for the packets phones send (no
        CSRCs or extensions), and one addition per packet instead of a header parse."""
        return max(0, self.sent_bytes - 12 * self.sent)

    def set_remote(
        self, remote: Address | None, *, new_party: bool = False, rtcp: Address | None = None
    ) -> None:
        """A new SDP address (re-INVITE): send there and latch afresh on the next packet.

        With `new_party` (a transfer put another phone behind this endpoint) the source
        latched so far is refused: the departing phone may still send for a few ms, and
        latching onto it would cut the new party off for the rest of the call. `rtcp` is
        the SDP a=rtcp address; without it RTCP goes to `remote`'s port + 1.
        """
        if new_party:
            self._departed = self._latched
        self._sdp_remote = self._send_to = remote
        self._sdp_rtcp = rtcp
        self._latched = self._rtcp_latched = None
        self._rtcp_muxed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def remote(self) -> Address | None:
        """Where RTP goes now: the latched source, else the SDP address."""
        return self._send_to

    @property
    def latched(self) -> Address | None:
        """The source the leg's RTP comes from, None before its first packet."""
        return self._latched

    @property
    def rtcp_remote(self) -> Address | None:
        """Where RTCP goes: the latched RTCP source, else SDP a=rtcp, else SDP port + 1
        (RFC 3605, RFC 3550 §11)."""
        if self._rtcp_latched is not None:
            return self._rtcp_latched
        if self._sdp_rtcp is not None:
            return self._sdp_rtcp
        sdp = self._sdp_remote
        return None if sdp is None else (sdp[0], sdp[1] + 1, *sdp[2:])

    # --- RTCP reports ---------------------------------------------------------

    @property
    def peer_report(self) -> PeerReport | None:
        """The phone's last report on our stream: its loss, jitter and the round trip."""
        return self._reporter.peer

    @property
    def round_trip(self) -> float | None:
        """Seconds, from the phone's last LSR/DLSR; None before it has one."""
        peer = self.peer_report
        return None if peer is None else peer.round_trip

    def _ntp(self, now: float) -> int:
        return ntp_from_unix(now + self._wallclock_offset)

    def _send_counts(self) -> SendCounts | None:
        if not self.sent:
            return None
        # Packets sent other than through `outgoing` leave no timing: timestamp 0 then.
        timestamp, at = self.outgoing.last_sent() or (0, self._time())
        return SendCounts(self.sent, self.sent_octets, timestamp, at)

    def _arm_rtcp(self) -> None:
        at = self._reporter.next_timer() if self._reports and not self._closed else None
        if at is not None:
            self._rtcp_timer = self._loop.call_at(at, self._rtcp_due)

    def _rtcp_due(self) -> None:
        self._rtcp_timer = None
        now = self._time()
        # max(): the loop may fire up to its clock resolution early.
        now = max(now, self._reporter.next_timer() or now)
        data = self._reporter.on_timer(now, self._ntp(now), self._send_counts(), self.stats)
        if data is not None:
            self._send_rtcp(data)
        self._arm_rtcp()

    def _send_rtcp(self, data: bytes) -> None:
        to = self.rtcp_remote
        transport = self._rtp if self._rtcp_muxed else self._rtcp
        if to is None or transport is None or transport.is_closing():
            return
        transport.sendto(data, to)
        self.rtcp_sent += 1

    # --- DTMF -------------------------------------------------------------

    def watch_dtmf(
        self, payload_type: int | None, on_digit: Callable[[Digit], None] | None
    ) -> None:
        """Report the RFC 4733 digits the phone sends with `payload_type` (its
        telephone-event, from SDP) to `on_digit`; None stops watching. The packets are
        still handed on to `on_rtp` (a bridge relays them)."""
        if self._events is not None:
            self._events.close()
            self._events = None
        self._event_pt = -1
        if payload_type is not None and on_digit is not None:
            self._events = DtmfTap(self._loop, on_digit, self.clock_rate)
            self._event_pt = payload_type

    # --- inactivity -------------------------------------------------------

    def set_inactivity(self, seconds: float | None) -> None:
        """Change the RTP timeout (None: off, e.g. while on hold); restarts the count."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._inactivity = seconds
        self._last_rtp = self._time()
        self.inactive = False
        self._arm()

    def _arm(self) -> None:
        if self._inactivity is not None and not self._closed:
            at = self._last_rtp + self._inactivity
            self._timer = self._loop.call_at(at, self._check_inactive)

    def _check_inactive(self) -> None:
        self._timer = None
        assert self._inactivity is not None
        if self._time() + _TIMER_SLACK < self._last_rtp + self._inactivity:
            self._arm()  # packets came since this timer was armed
            return
        self.inactive = True
        if self.on_inactive is not None:
            self.on_inactive(self)

    # --- teardown -----------------------------------------------------------

    def close(self) -> None:
        """Close both sockets and give the port pair back to the pool. Idempotent.

        The pool's FIFO order keeps the pair from being handed out again while
        the sockets finish closing; `wait_closed` waits for that.
        """
        if self._closed:
            return
        if self._reports and self._reporter.next_timer() is not None:
            now = self._time()  # RFC 3550 §6.6: a last report and BYE, so the phone knows
            bye = self._reporter.report(
                now, self._ntp(now), self._send_counts(), self.stats, bye=b""
            )
            self._send_rtcp(bye)
        self._closed = True
        self.on_rtp = self.on_rtcp = self.audio_tap = None
        self.record_taps = ()
        self.watch_dtmf(None, None)
        self.on_inactive = None
        for timer in (self._timer, self._rtcp_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._rtcp_timer = None
        for transport in (self._rtp, self._rtcp):
            if transport is not None:
                transport.close()
        if self._open_sockets == 0:
            self._all_closed.set()
        self._pool.release(self.port)

    async def wait_closed(self) -> None:
        """Wait until both sockets are closed (their file descriptors freed)."""
        await self._all_closed.wait()


class DtmfTap:
    """The asyncio shell of a `TelephoneEventReceiver`: packets in, digits out, and the
    timer that ends a digit whose end packets were lost."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_digit: Callable[[Digit], None], clock_rate: int
    ) -> None:
        self._loop, self._on_digit = loop, on_digit
        self._receiver = TelephoneEventReceiver(clock_rate)
        self._timer: asyncio.TimerHandle | None = None

    def packet(self, data: bytes, now: float) -> None:
        self._report(self._receiver.on_packet(data, now))

    def _due(self) -> None:
        self._timer = None
        now = self._loop.time()
        at = self._receiver.next_timer()
        self._report(self._receiver.on_timer(max(now, at or now)))

    def _report(self, digits: list[Digit]) -> None:
        for digit in digits:
            self._on_digit(digit)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        at = self._receiver.next_timer()
        if at is not None:
            self._timer = self._loop.call_at(at, self._due)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Bridge:
    """Relay RTP between two legs both ways, each direction re-sequenced.

    `transcode` is (codec of leg_a, codec of leg_b). PCMU <-> PCMA: packets
    with the source codec's payload type are translated and re-labelled. The
    same codec on both legs (G722 and G722, say) is a plain relay. Anything
    else raises `MediaError`: G.722 in particular is passthrough only, since
    we never decode it.

    `events` is (telephone-event payload type of leg_a, of leg_b), None where a
    leg agreed none: RFC 4733 packets are re-labelled to the other leg's number,
    and dropped toward a leg that has none. Other payload types pass unchanged.
    """

    def __init__(
        self,
        leg_a: MediaEndpoint,
        leg_b: MediaEndpoint,
        transcode: tuple[str, str] | None = None,
        events: tuple[int | None, int | None] = (None, None),
    ) -> None:
        codec_a = codec_b = None
        if transcode is not None:
            codec_a, codec_b = (name.upper() for name in transcode)
            if codec_a == codec_b:
                codec_a = codec_b = None
            elif codec_a not in PAYLOAD_TYPES or codec_b not in PAYLOAD_TYPES:
                why = "we transcode only PCMU <-> PCMA"
                if "G722" in (codec_a, codec_b):
                    why = "G722 is passthrough only (we never decode it)"
                raise MediaError(f"cannot transcode {transcode[0]} <-> {transcode[1]}: {why}")
        self.leg_a, self.leg_b = leg_a, leg_b
        # Each direction goes out as the sending endpoint's own stream.
        self.a_to_b, self.b_to_a = leg_b.outgoing, leg_a.outgoing
        event_a, event_b = events
        leg_a.on_rtp = _relay(self.a_to_b, leg_b, _mapping(codec_a, codec_b, event_a, event_b))
        leg_b.on_rtp = _relay(self.b_to_a, leg_a, _mapping(codec_b, codec_a, event_b, event_a))

    def close(self) -> None:
        """Stop relaying; the endpoints stay open (the call closes them)."""
        self.leg_a.on_rtp = self.leg_b.on_rtp = None


_Mapping = dict[int, tuple[int, bytes | None]]  # payload type in -> (out or -1: drop, table)


def _mapping(
    source: str | None, target: str | None, event_in: int | None, event_out: int | None
) -> _Mapping:
    mapping: _Mapping = {}
    if source is not None and target is not None and source != target:
        mapping[PAYLOAD_TYPES[source]] = (PAYLOAD_TYPES[target], _TABLES[source, target])
    if event_in is not None and event_in != event_out:
        mapping[event_in] = (-1 if event_out is None else event_out, None)
    return mapping


def _relay(rewriter: SequenceRewriter, out: MediaEndpoint, mapping: _Mapping) -> RtpHandler:
    """The per-packet function for one direction, with its lookups bound once."""
    rewrite, send = rewriter.rewrite, out.send
    if not mapping:

        def relay(data: bytes, now: float) -> None:
            send(rewrite(data, now))

        return relay

    find = mapping.get

    def mapped(data: bytes, now: float) -> None:
        entry = find(data[1] & 0x7F)
        if entry is None:
            send(rewrite(data, now))
            return
        payload_type, table = entry
        if payload_type < 0:
            return  # telephone-events for a phone that agreed none
        packet = rewrite(data, now, payload_type)
        send(packet if table is None else _translate(packet, table))

    return mapped


def _translate(packet: bytes, table: bytes) -> bytes:
    """`bytes.translate` the payload only: skip CSRCs and extension, keep padding."""
    b0 = packet[0]
    if b0 == 0x80:  # the usual case: no CSRC, extension or padding
        return packet[:12] + packet[12:].translate(table)
    start = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:  # RFC 3550 §5.3.1: 16-bit length in words after the profile
        start += 4 + 4 * int.from_bytes(packet[start + 2 : start + 4], "big")
    end = len(packet) - packet[-1] if b0 & 0x20 else len(packet)
    if start >= end:
        return packet
    return packet[:start] + packet[start:end].translate(table) + packet[end:]


_FileJob = tuple["Future[Any] | None", Callable[..., Any], tuple[Any, ...]]


class FileWriter:
    """File writes off the event loop: one thread runs the jobs it is given, one at a time
    in the order given (so one file's writes stay in order), while the loop goes on.

    The thread starts with the first job and ends after `idle` seconds without one, or at
    `close`; it is a daemon, so a process that is killed or crashes leaves what a crash
    would have left anyway (what had been written). At most `limit` droppable jobs wait:
    past that the disk is behind by that many writes, and `submit` refuses (counted in
    `dropped`) rather than hold the memory or stop the loop. A job that raises is logged.

    The thread is woken once for all the jobs queued until it runs, not once a job: every
    time it takes the GIL back while the loop is busy costs both threads (the loop hands
    it over, the thread wakes to find it taken), so it takes it as seldom as it can.
    """

    def __init__(self, name: str = "pbx-files", limit: int = 2048, idle: float = 60.0) -> None:
        self.name, self.limit, self.idle = name, limit, idle
        self.dropped = 0
        """Jobs `submit` refused because `limit` were waiting."""
        self._jobs: deque[_FileJob | None] = deque()
        self._wake = threading.Event()  # set: there are jobs the thread has not seen
        self._lock = threading.Lock()  # `_thread` is set and cleared under it
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[..., object], *args: Any) -> bool:
        """Run `job(*args)` on the thread, unless `limit` jobs wait already: False then,
        and it never runs. Costs the caller an append, and a wake-up if none is due."""
        jobs = self._jobs
        if len(jobs) >= self.limit:
            self.dropped += 1
            return False
        jobs.append((None, job, args))
        if not self._wake.is_set():
            self._wake.set()
        if self._thread is None:
            self._start()
        return True

    def call(self, job: Callable[..., T], *args: Any) -> Future[T]:
        """Run `job(*args)` on the thread after everything queued so far, whatever the
        limit (a file's close must not be lost); its result or exception in the future."""
        future: Future[T] = Future()
        self._jobs.append((future, job, args))
        self._wake.set()
        if self._thread is None:
            self._start()
        return future

    @property
    def pending(self) -> int:
        """Jobs waiting for the thread (not counting the one it runs)."""
        return len(self._jobs)

    def drain(self, timeout: float | None = None) -> bool:
        """Block the calling thread until every job queued so far has run (the loop's
        thread only at shutdown); False if `timeout` seconds were not enough."""
        if self._thread is None and not self._jobs:
            return True
        done = self.call(_nothing)
        try:
            done.result(timeout)
        except TimeoutError:
            return False
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Run what is queued, then let the thread go (the next job starts another);
        False if it was still busy after `timeout` seconds."""
        thread = self._thread
        if thread is None:
            return True
        self._jobs.append(None)
        self._wake.set()
        thread.join(timeout)
        return not thread.is_alive()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        jobs, wake = self._jobs, self._wake
        while True:
            woken = wake.wait(self.idle)
            wake.clear()  # before taking the jobs: one queued after this wakes it again
            stop = not woken
            while jobs:
                item = jobs.popleft()
                if item is None:  # `close`
                    stop = True
                    continue
                future, job, args = item
                if future is None:
                    try:
                        job(*args)
                    except Exception:
                        log.exception("%s: a file write failed", self.name)
                elif future.set_running_or_notify_cancel():
                    try:
                        result = job(*args)
                    except BaseException as exc:  # the caller of `call` decides what it means
                        future.set_exception(exc)
                    else:
                        future.set_result(result)
            if stop:  # idle, or closed: end, unless a job came meanwhile
                with self._lock:
                    self._thread = None  # before looking: a job queued now starts a thread
                    if not jobs:
                        return
                    self._thread = threading.current_thread()


def _nothing() -> None:
    pass
