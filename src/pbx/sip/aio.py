"""The asyncio shell around the SIP cores: UDP and TCP transports plus the transaction layer.

Everything protocol-shaped happens in the sans-I/O modules; this file only moves bytes,
keeps the transaction tables (RFC 3261 §17.1.3/§17.2.3 matching) and drives their timers
from one heap re-armed with `loop.call_at`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pbx.config import ListenAddress
from pbx.errors import (
    LocalProtocolError,
    RemoteProtocolError,
    SipStatus,
    TransactionTimeout,
    TransportError,
)
from pbx.sip.framing import FramingError, Ping, StreamFramer
from pbx.sip.message import (
    Method,
    Request,
    Response,
    Via,
    build_ack,
    build_response,
    parse_message,
)
from pbx.sip.transaction import (
    Action,
    Deliver,
    InviteClient,
    InviteServer,
    NonInviteClient,
    NonInviteServer,
    Send,
    State,
    Terminated,
    TimedOut,
    Timers,
)

log = logging.getLogger("pbx.sip")

RECEIVE_BUFFER = 4 * 1024 * 1024  # needed above ~20,000 packets/s (see issue 2)
WRITE_BUFFER_LIMIT = 1024 * 1024  # a TCP peer that stops reading is cut off here


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a message came from (or goes to), and over which of our listeners."""

    transport: str
    host: str
    port: int
    local: ListenAddress

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


@dataclass(slots=True)
class Stats:
    """Counters of the transport layer, shown by `pbx status` and the tests."""

    received: int = 0
    requests: int = 0
    responses: int = 0
    malformed: int = 0
    oversized: int = 0
    answered_errors: int = 0
    retransmissions_absorbed: int = 0
    sent: int = 0
    send_errors: int = 0
    unmatched_responses: int = 0
    tcp_refused: int = 0
    tcp_idle_closed: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


RequestHandler = Callable[[Request, Peer], None]


class _TimerHeap:
    """Many deadlines, one `call_at`: transactions are numerous, timers must be cheap."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[object, float], None]):
        self._loop = loop
        self._fire = fire
        self._heap: list[tuple[float, int, object]] = []
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")

    def add(self, when: float, key: object) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), key))
        if when < self._armed_at:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._run)

    def _run(self) -> None:
        self._handle = None
        self._armed_at = float("inf")
        now = self._loop.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, key = heapq.heappop(heap)
            self._fire(key, when)
        if heap:
            self._arm(heap[0][0])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._heap.clear()


class _ServerTxn:
    __slots__ = ("core", "peer")

    def __init__(self, core: NonInviteServer | InviteServer, peer: Peer) -> None:
        self.core = core
        self.peer = peer


class _ClientTxn:
    __slots__ = ("core", "future", "on_response", "peer", "request")

    def __init__(
        self,
        core: NonInviteClient | InviteClient,
        peer: Peer,
        future: asyncio.Future[Response],
        request: Request,
        on_response: Callable[[Response], None] | None = None,
    ):
        self.core = core
        self.peer = peer
        self.future = future
        self.request = request
        self.on_response = on_response


class SipEndpoint:
    """Listens on the configured addresses and runs the transaction layer."""

    def __init__(
        self,
        listen: Sequence[ListenAddress],
        on_request: RequestHandler,
        timers: Timers = Timers(),
        max_message: int = 65535,
        user_agent: str = "pbx",
        tcp_idle_timeout: float = 3700.0,
        tcp_max_per_address: int = 64,
    ) -> None:
        self.listen = tuple(listen)
        self.on_request = on_request
        self.timers = timers
        self.max_message = max_message
        self.user_agent = user_agent
        self.tcp_idle_timeout = tcp_idle_timeout
        self.tcp_max_per_address = tcp_max_per_address
        self._tcp_per_address: dict[str, int] = {}
        self.stats = Stats()
        self._udp: dict[ListenAddress, asyncio.DatagramTransport] = {}
        self._tcp_servers: list[asyncio.Server] = []
        self._tcp: dict[tuple[str, int], _TcpConnection] = {}
        self._server_txns: dict[tuple[str, str, str], _ServerTxn] = {}
        self._client_txns: dict[tuple[str, str], _ClientTxn] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: _TimerHeap | None = None
        self.bound: dict[ListenAddress, ListenAddress] = {}

    # lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._timers = _TimerHeap(loop, self._on_timer)
        for addr in self.listen:
            family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
            if addr.transport == "udp":
                sock = socket.socket(family, socket.SOCK_DGRAM)
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
                try:
                    sock.bind((addr.host, addr.port))
                except OSError as exc:
                    sock.close()
                    raise TransportError(f"cannot listen on {addr}: {exc.strerror}") from None
                bound = ListenAddress("udp", addr.host, sock.getsockname()[1])
                transport, _ = await loop.create_datagram_endpoint(
                    functools.partial(_UdpProtocol, self, bound), sock=sock
                )
                self._udp[bound] = transport
            else:
                tcp_port = addr.port
                try:
                    server = await loop.create_server(
                        lambda: _TcpConnection(self, None),
                        addr.host,
                        tcp_port,
                        family=family,
                        reuse_address=True,
                    )
                except OSError as exc:
                    raise TransportError(f"cannot listen on {addr}: {exc.strerror}") from None
                bound = ListenAddress("tcp", addr.host, server.sockets[0].getsockname()[1])
                self._tcp_servers.append(server)
            self.bound[addr] = bound
            log.info("listening on %s", bound)

    async def stop(self) -> None:
        for txn in self._client_txns.values():
            if not txn.future.done():
                txn.future.set_exception(TransportError("endpoint stopped"))
        self._client_txns.clear()
        for transport in self._udp.values():
            transport.close()
        for server in self._tcp_servers:
            server.close()
        for conn in list(self._tcp.values()):
            conn.close()
        for server in self._tcp_servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        if self._timers is not None:
            self._timers.close()

    def listener(self, transport: str) -> ListenAddress | None:
        for bound in self.bound.values():
            if bound.transport == transport:
                return bound
        return None

    # receiving

    def _count(self, reason: str) -> None:
        self.stats.by_reason[reason] = self.stats.by_reason.get(reason, 0) + 1

    def datagram(self, data: bytes, peer: Peer) -> None:
        stats = self.stats
        stats.received += 1
        if len(data) > self.max_message:
            stats.oversized += 1
            self._count("oversized")
            return
        if not data.strip(b"\r\n\x00 "):
            return  # keep-alive (CRLF) or empty: nothing to answer
        self.message(data, peer)

    def message(self, data: bytes, peer: Peer) -> None:
        try:
            msg = parse_message(data, datagram=not peer.reliable)
        except RemoteProtocolError as exc:
            self.stats.malformed += 1
            self._count(str(exc.status))
            log.debug("malformed message from %s: %s", peer, exc)
            self._answer_malformed(data, exc, peer)
            return
        except Exception:  # a parser bug must not stop the server; keep the evidence
            self.stats.malformed += 1
            log.exception("parser failure on a message from %s", peer)
            return
        if isinstance(msg, Request):
            self.stats.requests += 1
            self._incoming_request(msg, peer)
        else:
            self.stats.responses += 1
            self._incoming_response(msg)

    def _answer_malformed(self, data: bytes, exc: RemoteProtocolError, peer: Peer) -> None:
        """Answer a broken request with its status where enough of it can be read."""
        reply = error_response_for(data, exc.status, str(exc), self.user_agent)
        if reply is not None:
            self.stats.answered_errors += 1
            self._send_raw(reply, peer)

    def _incoming_request(self, request: Request, peer: Peer) -> None:
        via = request.vias[0]
        received = via.with_received(peer.host, peer.port)
        if received != via:
            request = request.with_top_via(received)
        key = _server_key(request)
        txn = self._server_txns.get(key)
        now = self._now()
        if request.method == Method.ACK:
            # The ACK of a non-2xx final belongs to its INVITE transaction (§17.2.1); the
            # ACK of a 2xx has a branch of its own and goes to the TU (§13.3.1.4).
            if (
                txn is not None
                and isinstance(txn.core, InviteServer)
                and txn.core.state in (State.COMPLETED, State.CONFIRMED)
            ):
                self._run_server(key, txn, txn.core.on_ack(now))  # absorbed when CONFIRMED
                return
            self.on_request(request, peer)
            return
        if txn is not None:
            self.stats.retransmissions_absorbed += 1
            self._run_server(key, txn, txn.core.on_request(now))
            return
        core: NonInviteServer | InviteServer
        if request.method == Method.INVITE:
            core = InviteServer(now, self.timers, reliable=peer.reliable)
        else:
            core = NonInviteServer(now, self.timers, reliable=peer.reliable)
        txn = _ServerTxn(core, response_peer(request.vias[0], peer))
        self._server_txns[key] = txn
        # A request the handler chose not to answer (a blocked source) still absorbs its
        # retransmissions, but only until Timer F would have given up on the client side.
        self._schedule(("x", key, txn), now + self.timers.timer_f)
        try:
            self.on_request(request, peer)
        except Exception:
            log.exception("handler failed on %s from %s", request.method, peer)
            with contextlib.suppress(LocalProtocolError):  # it may have answered already
                self.respond(request, build_response(request, SipStatus.SERVER_INTERNAL_ERROR))

    def _incoming_response(self, response: Response) -> None:
        branch = response.vias[0].branch or ""
        txn = self._client_txns.get((branch, response.cseq.method))
        if txn is None:
            self.stats.unmatched_responses += 1
            return
        now = self._now()
        if isinstance(txn.core, InviteClient):
            # §17.1.1.3: the transaction itself ACKs a 300-699 (the TU ACKs a 2xx).
            ack = build_ack(txn.request, response).encode() if response.status >= 300 else None
            actions = txn.core.on_response(response.status, now, ack)
        else:
            actions = txn.core.on_response(response.status, now)
        self._run_client((branch, response.cseq.method), txn, actions, response)

    # sending

    def respond(self, request: Request, response: Response) -> None:
        """Send a response through the request's server transaction."""
        key = _server_key(request)
        txn = self._server_txns.get(key)
        if txn is None:
            return  # the transaction ended (e.g. the server is stopping)
        self._run_server(
            key, txn, txn.core.send_response(response.encode(), response.status, self._now())
        )

    def request(self, request: Request, peer: Peer) -> asyncio.Future[Response]:
        """Send a non-INVITE request; the future gives the final response or raises."""
        assert self._loop is not None
        future: asyncio.Future[Response] = self._loop.create_future()
        branch = request.vias[0].branch or ""
        key = (branch, request.method)
        core = NonInviteClient(request.encode(), self._now(), self.timers, reliable=peer.reliable)
        txn = _ClientTxn(core, peer, future, request)
        self._client_txns[key] = txn
        self._run_client(key, txn, core.start(), None)
        return future

    def invite(
        self, request: Request, peer: Peer, on_response: Callable[[Response], None]
    ) -> asyncio.Future[Response]:
        """Send an INVITE (RFC 3261 §17.1.1): `on_response` gets every response delivered
        (provisionals, the final, and 2xx retransmissions the TU must ACK again, RFC 6026);
        the future gives the first final response or raises TransactionTimeout."""
        assert self._loop is not None
        future: asyncio.Future[Response] = self._loop.create_future()
        key = (request.vias[0].branch or "", request.method)
        core = InviteClient(request.encode(), self._now(), self.timers, reliable=peer.reliable)
        txn = _ClientTxn(core, peer, future, request, on_response)
        self._client_txns[key] = txn
        self._run_client(key, txn, core.start(), None)
        return future

    def send(self, data: bytes, peer: Peer) -> None:
        """Send outside any transaction (an ACK for a 2xx, RFC 3261 §13.2.2.4)."""
        self._send_raw(data, peer)

    def _run_server(
        self, key: tuple[str, str, str], txn: _ServerTxn, actions: Sequence[Action]
    ) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send_raw(action.data, txn.peer)
            elif isinstance(action, Terminated):
                self._server_txns.pop(key, None)
                return
        self._schedule(("s", key), txn.core.next_timer())

    def _run_client(
        self,
        key: tuple[str, str],
        txn: _ClientTxn,
        actions: Sequence[Action],
        response: Response | None,
    ) -> None:
        for action in actions:
            if isinstance(action, Send):
                try:
                    self._send_raw(action.data, txn.peer, raise_errors=True)
                except TransportError as exc:
                    self._client_txns.pop(key, None)
                    if not txn.future.done():
                        txn.future.set_exception(exc)
                    return
            elif isinstance(action, Deliver) and response is not None:
                if txn.on_response is not None:
                    try:
                        txn.on_response(response)
                    except Exception:
                        # The caller's bug or a response it cannot use: the transaction
                        # still completes, so nobody awaits it forever.
                        log.exception("handling a response from %s failed", txn.peer)
                if action.status >= 200 and not txn.future.done():
                    txn.future.set_result(response)
            elif isinstance(action, TimedOut):
                if not txn.future.done():
                    txn.future.set_exception(TransactionTimeout(f"no answer from {txn.peer}"))
            elif isinstance(action, Terminated):
                self._client_txns.pop(key, None)
                return
        self._schedule(("c", key), txn.core.next_timer())

    def _schedule(self, key: object, when: float | None) -> None:
        if when is not None and self._timers is not None:
            self._timers.add(when, key)

    def _on_timer(self, key: Any, when: float) -> None:
        kind, txn_key = key[0], key[1]
        now = self._now()
        if kind == "x":
            unanswered = self._server_txns.get(txn_key)
            if unanswered is key[2] and unanswered.core.state in (State.TRYING, State.PROCEEDING):
                del self._server_txns[txn_key]
        elif kind == "s":
            stxn = self._server_txns.get(txn_key)
            if stxn is not None and stxn.core.next_timer() == when:
                self._run_server(txn_key, stxn, stxn.core.on_timer(now))
        else:
            ctxn = self._client_txns.get(txn_key)
            if ctxn is not None and ctxn.core.next_timer() == when:
                self._run_client(txn_key, ctxn, ctxn.core.on_timer(now), None)

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _send_raw(self, data: bytes, peer: Peer, raise_errors: bool = False) -> None:
        try:
            if peer.transport == "udp":
                transport = self._udp.get(peer.local)
                if transport is None:
                    raise TransportError(f"no UDP listener {peer.local}")
                transport.sendto(data, (peer.host, peer.port))
            else:
                conn = self._tcp.get((peer.host, peer.port))
                if conn is None:
                    raise TransportError(f"no TCP connection to {peer}")
                conn.write(data)
            self.stats.sent += 1
        except (OSError, TransportError) as exc:
            self.stats.send_errors += 1
            log.debug("cannot send to %s: %s", peer, exc)
            if raise_errors:
                raise TransportError(str(exc)) from None

    def _tcp_opened(self, conn: _TcpConnection) -> bool:
        """Register a new connection; False if its address already holds too many."""
        assert conn.remote is not None
        host = conn.remote[0]
        count = self._tcp_per_address.get(host, 0)
        if count >= self.tcp_max_per_address:
            self.stats.tcp_refused += 1
            return False
        self._tcp_per_address[host] = count + 1
        self._tcp[conn.remote] = conn
        return True

    def _tcp_closed(self, conn: _TcpConnection) -> None:
        if conn.remote is not None and self._tcp.get(conn.remote) is conn:
            del self._tcp[conn.remote]
            host = conn.remote[0]
            left = self._tcp_per_address.get(host, 1) - 1
            if left > 0:
                self._tcp_per_address[host] = left
            else:
                self._tcp_per_address.pop(host, None)


def response_peer(via: Via, peer: Peer) -> Peer:
    """Where responses to a request go (RFC 3261 §18.2.2, RFC 3581 §4).

    Over a stream, back on the same connection. Over UDP, to the source address and port
    when the Via asks for rport; otherwise to the source address and the port in the Via
    (5060 if none), since such a UA listens where its Via says.
    """
    if peer.reliable or via.wants_rport or via.port == peer.port:
        return peer
    return Peer(peer.transport, peer.host, via.port or 5060, peer.local)


def _server_key(request: Request) -> tuple[str, str, str]:
    """RFC 3261 §17.2.3 matching; RFC 2543 requests (no magic cookie) fall back to dialog ids."""
    via = request.vias[0]
    branch = via.branch or ""
    method = "INVITE" if request.method == Method.ACK else request.method
    if branch.startswith("z9hG4bK") and len(branch) > 7:
        return (branch, f"{via.host}:{via.port}", method)
    return (
        f"2543:{request.call_id}:{request.cseq.number}:{request.from_.tag}",
        str(via),
        method,
    )


def error_response_for(data: bytes, status: int, detail: str, agent: str) -> bytes | None:
    """Build an error response from the readable parts of a message that failed to parse.

    Works on the raw text so that even a message our parser refused gets its 400 or 505
    (RFC 3261 §8.2.2); returns None when the message is a response or lacks what a
    response must echo (Via, From, To, Call-ID, CSeq).
    """
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    text = head.decode("latin-1")
    lines: list[str] = []
    for raw in text.split("\n"):
        line = raw.rstrip("\r")
        if line[:1] in (" ", "\t") and lines:
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
    if not lines or lines[0].upper().startswith("SIP/"):
        return None  # responses are never answered
    wanted = {"via": "Via", "v": "Via", "from": "From", "f": "From", "to": "To", "t": "To",
              "call-id": "Call-ID", "i": "Call-ID", "cseq": "CSeq"}  # fmt: skip
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        canon = wanted.get(name.strip().lower())
        if not colon or canon is None:
            continue
        if canon != "Via" and canon in seen:
            continue
        seen.add(canon)
        found.append((canon, value.strip()))
    if {"Via", "From", "To", "Call-ID", "CSeq"} - seen:
        return None
    cseq_method = dict(found)["CSeq"].split()[-1:] or [""]
    if cseq_method[0].upper() == "ACK":
        return None  # never answer an ACK
    safe = detail.replace('"', "'").encode("ascii", "replace").decode()[:120]
    try:
        reason = SipStatus(status).phrase
    except ValueError:
        reason = "Bad Request"
    out = [f"SIP/2.0 {status} {reason}"]
    out += [f"{n}: {v}" for n, v in found]
    out += [f'Warning: 399 pbx "{safe}"', f"Server: {agent}", "Content-Length: 0", "", ""]
    return "\r\n".join(out).encode("latin-1", "replace")


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: SipEndpoint, local: ListenAddress) -> None:
        self.endpoint = endpoint
        self.local = local

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        host, port = str(addr[0]), int(addr[1])
        self.endpoint.datagram(data, Peer("udp", host, port, self.local))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: a phone went away, nothing to do here.
        log.debug("UDP error: %s", exc)


class _TcpConnection(asyncio.Protocol):
    def __init__(self, endpoint: SipEndpoint, remote: tuple[str, int] | None) -> None:
        self.endpoint = endpoint
        self.remote = remote
        self.framer = StreamFramer(endpoint.max_message)
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self._last_activity = 0.0
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peername = transport.get_extra_info("peername")
        sockname = transport.get_extra_info("sockname")
        self.remote = (str(peername[0]), int(peername[1]))
        local = ListenAddress("tcp", str(sockname[0]), int(sockname[1]))
        self.peer = Peer("tcp", self.remote[0], self.remote[1], local)
        if not self.endpoint._tcp_opened(self):
            log.warning("refusing TCP connection from %s: too many from that address", self.peer)
            self.remote = None  # never registered: nothing to release on close
            transport.close()
            return
        loop = asyncio.get_running_loop()
        self._last_activity = loop.time()
        self._idle = loop.call_later(self.endpoint.tcp_idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        # Re-armed lazily: one timer per connection instead of one per received segment.
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self._last_activity
        timeout = self.endpoint.tcp_idle_timeout
        if quiet >= timeout:
            self.endpoint.stats.tcp_idle_closed += 1
            log.info("closing TCP connection from %s: idle for %.0f s", self.peer, quiet)
            self.close()
        else:
            self._idle = loop.call_later(timeout - quiet, self._check_idle)

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        self._last_activity = asyncio.get_running_loop().time()
        self.endpoint.stats.received += 1
        try:
            items = self.framer.feed(data)
        except FramingError as exc:
            # RFC 4475 ncl/mcl01: a framing error on a stream cannot be recovered from;
            # what came before it is still served, then the broken message is answered.
            self._deliver(exc.framed)
            self.endpoint.stats.malformed += 1
            log.info("closing TCP connection from %s: %s", self.peer, exc)
            reply = error_response_for(exc.data, exc.status, str(exc), self.endpoint.user_agent)
            if reply is not None and self.transport is not None:
                self.transport.write(reply)
            self.close()
            return
        self._deliver(items)

    def _deliver(self, items: list[bytes | Ping]) -> None:
        assert self.peer is not None
        for item in items:
            if isinstance(item, Ping):
                self.write(b"\r\n")
            else:
                self.endpoint.message(item, self.peer)

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise TransportError("connection closed")
        if self.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            log.info("closing TCP connection to %s: it stopped reading", self.peer)
            self.close()
            raise TransportError("peer stopped reading")
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self.endpoint._tcp_closed(self)
