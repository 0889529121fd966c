"""SIP trunks: registering with a provider and recognising the provider's requests.

`Registration` is the sans-I/O core of one trunk's outbound registration (RFC 3261 §10.2):
it builds each REGISTER, reads each response with the time given to it, and says when it
wants to act next (`next_timer()`). `TrunkManager` is the asyncio shell: it resolves the
providers' hostnames once, runs one registration per `register = true` trunk through the
SIP endpoint's client transactions, and answers `trunk_for(peer)` for the call manager.

`answer_challenge()` is for the B2BUA: the INVITE to resend when a provider challenges one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from pbx.config import ListenAddress, TrunkConfig
from pbx.errors import RemoteProtocolError, SipStatus, TransactionTimeout, TransportError
from pbx.sip.aio import Peer, SipEndpoint, _TcpConnection
from pbx.sip.digest import Challenge, DigestClient, choose_challenge, parse_credentials
from pbx.sip.message import (
    Method,
    Request,
    Response,
    new_branch,
    new_tag,
    parse_contacts,
)
from pbx.sip.uri import SipUri, ip_literal, is_digits, unescape

log = logging.getLogger("pbx.trunk")

UNREGISTER_TIMEOUT = 2.0  # seconds a stopping exchange waits for each provider's answer
MAX_STALE_ANSWERS = 3  # stale=true re-challenges answered in a row before giving up


class TrunkState(Enum):
    UNREGISTERED = "unregistered"
    REGISTERING = "registering"
    REGISTERED = "registered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long a failed registration waits before trying again: `first`, doubling per
    failure in a row up to `maximum` (a provider that refuses us is not hammered)."""

    first: float = 30.0
    maximum: float = 300.0

    def delay(self, failures: int) -> float:
        return float(min(self.first * 2 ** max(0, failures - 1), self.maximum))


@dataclass(frozen=True, slots=True)
class LocalContact:
    """Where the provider reaches us: our listener for the trunk's transport."""

    transport: str
    host: str
    port: int

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TrunkStatus:
    name: str
    host: str
    port: int
    transport: str
    register: bool
    state: TrunkState
    last_status: int | None = None
    last_reason: str = ""
    expires_at: float | None = None
    """When the provider's binding runs out (clock of the registration)."""
    next_attempt_at: float | None = None
    """The next refresh or retry."""

    def to_json(self, now: float) -> dict[str, Any]:
        def seconds(at: float | None) -> int | None:
            return None if at is None else max(0, round(at - now))

        return {
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "transport": self.transport,
            "register": self.register,
            "state": self.state.value,
            "last_status": self.last_status,
            "last_reason": self.last_reason,
            "expires_in": seconds(self.expires_at),
            "next_attempt_in": seconds(self.next_attempt_at),
        }


def request_uri(trunk: TrunkConfig) -> SipUri:
    """The Request-URI of REGISTER (RFC 3261 §10.2: the domain, no user). Without a
    separate domain the provider is addressed by host and port."""
    if trunk.domain:
        return SipUri(host=trunk.domain)
    host = f"[{trunk.host}]" if ":" in trunk.host else trunk.host
    return SipUri(host=host, port=None if trunk.port == 5060 else trunk.port)


def uri_user(username: str) -> str:
    """A username as the user part of a SIP URI (RFC 3261 §25.1: others are %-escaped);
    the digest username stays as configured."""
    return urllib.parse.quote(username, safe="-_.!~*'()&=+$,;?/")


def _same_host(a: str, b: str) -> bool:
    ip_a, ip_b = ip_literal(a), ip_literal(b)
    if ip_a is not None and ip_b is not None:
        return ip_a == ip_b
    return a.strip("[]").lower() == b.strip("[]").lower()


class Registration:
    """One trunk's registration with its provider. No sockets, no clock reads.

    The shell sends each Request returned (`start`, `on_timer`, `on_response`, `stop`) as a
    new client transaction, and reports its outcome with `on_response` or `on_failure`.
    Only one REGISTER is outstanding at a time; an answer to an older one is ignored.
    """

    def __init__(
        self,
        trunk: TrunkConfig,
        local: LocalContact,
        retry: RetryPolicy = RetryPolicy(),
        user_agent: str = "pbx",
        call_id: str | None = None,
    ) -> None:
        self.trunk = trunk
        self.local = local
        self.retry = retry
        self.user_agent = user_agent
        # One Call-ID for every REGISTER of this registration, so the provider's registrar
        # sees refreshes of one binding with rising CSeqs (RFC 3261 §10.2.4).
        self.call_id = call_id or f"{new_tag()}{new_tag()}@{local.host}"
        self.state = TrunkState.UNREGISTERED
        self.last_status: int | None = None
        self.last_reason = ""
        self.expires_at: float | None = None
        self._from_tag = new_tag()
        self._cseq = 0
        self._expires = trunk.expires  # what we ask for; a 423 raises it
        self._client = DigestClient(trunk.username, trunk.password)
        self._challenge: tuple[str, Challenge] | None = None  # (header name, challenge)
        self._pending: Request | None = None
        self._sent_at = 0.0
        self._fresh = False  # the pending request answers the challenge that was just sent
        self._stale_answers = 0
        self._failures = 0
        self._timer: float | None = None
        self._stopping = False

    @property
    def contact(self) -> SipUri:
        params: tuple[tuple[str, str | None], ...] = ()
        if self.local.transport != "udp":
            params = (("transport", self.local.transport),)
        host = f"[{self.local.host}]" if ":" in self.local.host else self.local.host
        user = uri_user(self.trunk.username)
        return SipUri(user=user, host=host, port=self.local.port, params=params)

    def status(self) -> TrunkStatus:
        t = self.trunk
        return TrunkStatus(
            t.name, t.host, t.port, t.transport, t.register, self.state,
            self.last_status, self.last_reason, self.expires_at, self._timer,
        )  # fmt: skip

    # inputs

    def start(self, now: float) -> Request:
        self._stopping = False
        self.state = TrunkState.REGISTERING
        return self._register(now, fresh=False)

    def next_timer(self) -> float | None:
        return None if self._pending is not None else self._timer

    def on_timer(self, now: float) -> Request | None:
        """A refresh or a retry when its time has come."""
        if self._pending is not None or self._timer is None or now < self._timer:
            return None
        self._timer = None
        self._stale_answers = 0
        if self.state is not TrunkState.REGISTERED:
            self.state = TrunkState.REGISTERING  # a refresh keeps showing REGISTERED
        return self._register(now, fresh=False)

    def on_response(self, response: Response, now: float) -> Request | None:
        """The final response to the pending REGISTER; may give the next one to send."""
        pending = self._pending
        if (
            pending is None
            or response.status < 200
            or response.call_id != self.call_id
            or response.cseq.number != pending.cseq.number
        ):
            return None
        self._pending = None
        self.last_status, self.last_reason = response.status, response.reason
        status = response.status
        if status in (SipStatus.UNAUTHORIZED, SipStatus.PROXY_AUTHENTICATION_REQUIRED):
            return self._on_challenge(response, now)
        if status == SipStatus.INTERVAL_TOO_BRIEF:
            return self._on_too_brief(response, now)
        if self._stopping:
            self._unregistered()
            return None
        if 200 <= status < 300:
            self._on_ok(response, now)
            return None
        self._fail(now, response.reason)
        return None

    def on_failure(self, reason: str, now: float) -> None:
        """The pending REGISTER got no answer (timeout) or could not be sent."""
        if self._pending is None:
            return
        self._pending = None
        self.last_status, self.last_reason = None, reason
        if self._stopping:
            self._unregistered()
        else:
            self._fail(now, reason)

    def fail(self, reason: str, now: float) -> None:
        """Give up on the current attempt for a reason of our own; retried later."""
        self._pending = None
        self.last_status = None
        self._fail(now, reason)

    def stop(self, now: float) -> Request | None:
        """Stop refreshing; the REGISTER with Expires: 0 to send if the provider may hold
        a binding of ours (registered, or a REGISTER of ours still in flight)."""
        self._stopping = True
        self._timer = None
        if self.state is TrunkState.REGISTERED or self._pending is not None:
            self._stale_answers = 0
            return self._register(now, fresh=False)
        self._unregistered()
        return None

    @property
    def stopped(self) -> bool:
        return self._stopping and self._pending is None

    # decisions

    def _on_ok(self, response: Response, now: float) -> None:
        granted = self._granted(response)
        if granted <= 0:
            self._fail(now, "the provider did not keep our contact")
            return
        self.state = TrunkState.REGISTERED
        self._failures = 0
        # The binding lasts from when the provider took it, no earlier than our sending.
        self.expires_at = self._sent_at + granted
        # Refresh at half the interval: for anything over 20 s that is also more than
        # 10 s before expiry, time enough for a lost REGISTER's retransmissions.
        self._timer = self._sent_at + max(granted / 2, 1.0)
        log.info("trunk %s registered for %d s", self.trunk.name, granted)

    def _on_challenge(self, response: Response, now: float) -> Request | None:
        if response.status == SipStatus.UNAUTHORIZED:
            offered, answer_header = "WWW-Authenticate", "Authorization"
        else:
            offered, answer_header = "Proxy-Authenticate", "Proxy-Authorization"
        challenge = choose_challenge(response.headers_named(offered), self.trunk.realm)
        if challenge is None:
            realm = f" for realm {self.trunk.realm!r}" if self.trunk.realm else ""
            reason = f"{response.reason}: no digest challenge we can answer{realm}"
            return self._give_up(now, reason)
        if challenge.stale:
            self._stale_answers += 1
            if self._stale_answers > MAX_STALE_ANSWERS:
                return self._give_up(now, f"{response.reason}: stale nonces without end")
        elif self._fresh:
            # We answered this provider's challenge a moment ago and it challenges again
            # without stale=true: it refused our username or password.
            return self._give_up(now, f"{response.reason}: wrong credentials")
        self._challenge = (answer_header, challenge)
        return self._register(now, fresh=True)

    def _on_too_brief(self, response: Response, now: float) -> Request | None:
        text = (response.header("Min-Expires") or "").strip()
        minimum = int(text) if is_digits(text) and len(text) <= 10 else 0
        if minimum <= self._expires:
            return self._give_up(
                now, f"{response.reason} without a usable Min-Expires ({text or 'none'})"
            )
        self._expires = minimum  # RFC 3261 §10.2.8: ask again with at least that
        return self._register(now, fresh=False)

    def _give_up(self, now: float, reason: str) -> Request | None:
        if self._stopping:
            self._unregistered()
        else:
            self._fail(now, reason)
        return None

    def _fail(self, now: float, reason: str) -> None:
        self._failures += 1
        delay = self.retry.delay(self._failures)
        self.state = TrunkState.FAILED
        self.last_reason = reason
        self.expires_at = None
        self._challenge = None  # the next attempt starts from a fresh challenge
        self._timer = now + delay
        status = f"{self.last_status} " if self.last_status is not None else ""
        log.warning("trunk %s: registration failed (%s%s); retrying in %.0f s",
                    self.trunk.name, status, reason, delay)  # fmt: skip

    def _unregistered(self) -> None:
        self.state = TrunkState.UNREGISTERED
        self.expires_at = None
        self._timer = None

    def _granted(self, response: Response) -> int:
        """The interval the provider granted our contact (RFC 3261 §10.2.4): its expires
        parameter in the 200, else the Expires header, else what we asked for."""
        ours = self.contact
        try:
            contacts = parse_contacts(response)
        except RemoteProtocolError:
            contacts = ()
        for contact in () if contacts == "*" else contacts:
            uri = contact.uri
            if (
                isinstance(uri, SipUri)
                and unescape(uri.user or "") == self.trunk.username
                and _same_host(uri.host, ours.host)
                and (uri.port or 5060) == ours.port
            ):
                value = contact.param("expires")
                if value is not None and is_digits(value) and len(value) <= 10:
                    return int(value)
        header = (response.header("Expires") or "").strip()
        if is_digits(header) and len(header) <= 10:
            return int(header)
        return self._expires

    def _register(self, now: float, fresh: bool) -> Request:
        self._cseq += 1
        trunk = self.trunk
        uri = request_uri(trunk)
        domain = trunk.sip_domain
        domain = f"[{domain}]" if ":" in domain else domain
        aor = f"<sip:{uri_user(trunk.username)}@{domain}>"
        expires = 0 if self._stopping else self._expires
        headers = [
            ("Via", f"SIP/2.0/{self.local.transport.upper()} {self.local.hostport};"
                    f"branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"{aor};tag={self._from_tag}"),
            ("To", aor),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self._cseq} REGISTER"),
            ("Contact", f"<{self.contact}>"),
            ("Expires", str(expires)),
            ("User-Agent", self.user_agent),
        ]  # fmt: skip
        if self._challenge is not None:
            # Also on refreshes: a provider that still knows the nonce saves a round trip;
            # one that does not challenges again, and that is answered as a new challenge.
            name, challenge = self._challenge
            headers.append((name, self._client.authorization(challenge, "REGISTER", str(uri))))
        request = Request.build(Method.REGISTER, uri, headers)
        self._pending, self._sent_at, self._fresh = request, now, fresh
        return request


def answer_challenge(
    request: Request,
    response: Response,
    trunk: TrunkConfig,
    client: DigestClient | None = None,
) -> Request | None:
    """The request to send again when a provider answered `request` with 401 or 407
    (RFC 3261 §22.2): same Call-ID, From tag and body, CSeq + 1, a new Via branch, and our
    credentials for the challenge. None when it cannot or must not be answered: no usable
    challenge (or none for trunk.realm), or a second challenge without stale=true to
    credentials `request` already carried for that realm, which means they are wrong.

    Pass one `client` per dialog to keep nonce-counts rising across its requests.
    """
    if response.status == SipStatus.UNAUTHORIZED:
        offered, answer_header = "WWW-Authenticate", "Authorization"
    elif response.status == SipStatus.PROXY_AUTHENTICATION_REQUIRED:
        offered, answer_header = "Proxy-Authenticate", "Proxy-Authorization"
    else:
        return None
    challenge = choose_challenge(response.headers_named(offered), trunk.realm)
    if challenge is None:
        return None
    previous = [(n, v) for n, v in request.headers if n == answer_header]
    if not challenge.stale and any(_realm_of(v) == challenge.realm for _, v in previous):
        return None
    client = client or DigestClient(trunk.username, trunk.password)
    credentials = client.authorization(challenge, request.method, str(request.uri))
    headers: list[tuple[str, str]] = []
    for name, value in request.headers:
        if name == answer_header and _realm_of(value) == challenge.realm:
            continue  # replaced by the new answer below
        if name == "CSeq":
            value = f"{request.cseq.number + 1} {request.method}"
        headers.append((name, value))
    headers.append((answer_header, credentials))
    again = Request.build(request.method, request.uri, headers, request.body)
    via = request.vias[0]
    params = tuple((k, v) for k, v in via.params if k.lower() != "branch")
    # What follows the random part of the branch (a call's id, for loop detection) stays.
    _, dash, suffix = (via.branch or "").partition("-")
    branch = new_branch() + dash + suffix
    return again.with_top_via(replace(via, params=(("branch", branch), *params)))


def _realm_of(credentials: str) -> str | None:
    try:
        return parse_credentials(credentials).realm
    except RemoteProtocolError:
        return None


# Identifying the provider's requests


def _normal_ip(host: str) -> str | None:
    address = ip_literal(host)
    if address is None:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


class TrunkMatcher:
    """Which trunk a request came from, by source address (pure; addresses given).

    Over UDP a provider sends from its SIP port, so address and port must both match;
    over TCP the source port is an ephemeral one, so the address alone decides.
    """

    def __init__(self, trunks: Sequence[TrunkConfig], addresses: Mapping[str, Iterable[str]]):
        self._by_ip: dict[str, list[TrunkConfig]] = {}
        for trunk in trunks:
            for host in addresses.get(trunk.name, ()):
                ip = _normal_ip(host)
                if ip is not None:
                    self._by_ip.setdefault(ip, []).append(trunk)

    def match(self, peer: Peer) -> TrunkConfig | None:
        ip = _normal_ip(peer.host)
        candidates = self._by_ip.get(ip, []) if ip is not None else []
        if peer.transport == "udp":
            return next((t for t in candidates if t.port == peer.port), None)
        return candidates[0] if candidates else None


async def resolve(host: str, port: int, transport: str) -> list[str]:
    """The addresses of `host` (getaddrinfo in the executor: it may block on DNS)."""
    literal = _normal_ip(host)
    if literal is not None:
        return [literal]
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=kind)
    out: list[str] = []
    for info in infos:
        ip = _normal_ip(str(info[4][0]))
        if ip is not None and ip not in out:
            out.append(ip)
    return out


def _route_source(remote: str, port: int) -> str | None:
    """The local address the OS would send from to reach `remote` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in remote else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((remote, port))
            return str(probe.getsockname()[0])
    except OSError:
        return None


@dataclass(slots=True)
class _Runner:
    registration: Registration
    peer: Peer
    task: asyncio.Task[None] | None = None


class TrunkManager:
    """Registrations of the configured trunks, and who is who among incoming requests."""

    def __init__(
        self,
        trunks: Sequence[TrunkConfig],
        endpoint: SipEndpoint,
        user_agent: str = "pbx",
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        self.trunks = tuple(trunks)
        self.endpoint = endpoint
        self.user_agent = user_agent
        self.retry = retry
        self.addresses: dict[str, list[str]] = {}
        self._matcher = TrunkMatcher(self.trunks, {})
        self._runners: dict[str, _Runner] = {}
        self._tcp: dict[tuple[str, int], asyncio.BaseProtocol] = {}

    async def start(self) -> None:
        """Resolve every trunk's host once, then start the registrations (the endpoint
        must listen already: REGISTERs go out from its sockets)."""
        for trunk in self.trunks:
            try:
                self.addresses[trunk.name] = await resolve(trunk.host, trunk.port, trunk.transport)
            except OSError as exc:
                log.error("trunk %s: cannot resolve %s: %s", trunk.name, trunk.host, exc)
                self.addresses[trunk.name] = []
        self._matcher = TrunkMatcher(self.trunks, self.addresses)
        loop = asyncio.get_running_loop()
        for trunk in self.trunks:
            if not trunk.register:
                continue
            peer = self.peer_for(trunk)
            if peer is None:
                log.error("trunk %s: no address or no %s listener to register from",
                          trunk.name, trunk.transport)  # fmt: skip
                continue
            local = self.local_contact(trunk, peer)
            runner = _Runner(Registration(trunk, local, self.retry, self.user_agent), peer)
            runner.task = loop.create_task(self._run(runner), name=f"trunk-{trunk.name}")
            self._runners[trunk.name] = runner

    async def stop(self, grace: float = UNREGISTER_TIMEOUT) -> None:
        """Unregister from every provider (Expires: 0), waiting at most `grace` seconds."""
        runners = list(self._runners.values())
        for runner in runners:
            if runner.task is not None:
                runner.task.cancel()
        for runner in runners:
            if runner.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await runner.task
        await asyncio.gather(*(self._unregister(r, grace) for r in runners), return_exceptions=True)
        self._runners.clear()
        for protocol in self._tcp.values():
            if isinstance(protocol, _TcpConnection):
                protocol.close()
        self._tcp.clear()

    def trunk_for(self, peer: Peer) -> TrunkConfig | None:
        """The trunk a request from `peer` came from, or None (a phone, a stranger)."""
        return self._matcher.match(peer)

    def status(self) -> list[TrunkStatus]:
        out = []
        for trunk in self.trunks:
            runner = self._runners.get(trunk.name)
            if runner is not None:
                out.append(runner.registration.status())
            else:
                reason = "" if trunk.register else "registration off"
                out.append(TrunkStatus(trunk.name, trunk.host, trunk.port, trunk.transport,
                                       trunk.register, TrunkState.UNREGISTERED,
                                       last_reason=reason))  # fmt: skip
        return out

    def status_json(self) -> list[dict[str, Any]]:
        now = asyncio.get_running_loop().time()
        return [s.to_json(now) for s in self.status()]

    def registration(self, name: str) -> Registration | None:
        runner = self._runners.get(name)
        return runner.registration if runner is not None else None

    # addressing, also for the call manager

    def _listener(self, transport: str, remote: str, port: int) -> ListenAddress | None:
        """Our listener that reaches `remote`: the one on the address the OS routes from,
        else any of the right transport and address family."""
        family_v6 = ":" in remote
        fitting = [
            b for b in self.endpoint.bound.values()
            if b.transport == transport and (":" in b.host) == family_v6
        ]  # fmt: skip
        source = _route_source(remote, port)
        for bound in fitting:
            if source is not None and _same_host(bound.host, source):
                return bound
        return fitting[0] if fitting else None

    def peer_for(self, trunk: TrunkConfig) -> Peer | None:
        """Where requests to `trunk` go (its first address), through which listener."""
        addresses = self.addresses.get(trunk.name) or []
        for address in addresses:
            listener = self._listener(trunk.transport, address, trunk.port)
            if listener is not None:
                return Peer(trunk.transport, address, trunk.port, listener)
        return None

    def local_contact(self, trunk: TrunkConfig, peer: Peer) -> LocalContact:
        """The host and port the provider reaches us at (for Contact and Via). A listener
        on a wildcard address is named by the address the OS routes to the provider from."""
        host = peer.local.host
        address = ipaddress.ip_address(host)
        if address.is_unspecified:
            host = _route_source(peer.host, peer.port) or host
        return LocalContact(trunk.transport, host, peer.local.port)

    async def connect(self, peer: Peer) -> None:
        """Make sure a TCP connection to `peer` is open (UDP: nothing to do)."""
        if peer.transport != "tcp":
            return
        key = (peer.host, peer.port)
        existing = self._tcp.get(key)
        if isinstance(existing, _TcpConnection):
            transport = existing.transport
            if transport is not None and not transport.is_closing():
                return
        loop = asyncio.get_running_loop()
        endpoint = self.endpoint
        try:
            # The endpoint's own connection class: it registers the connection, so
            # responses and the provider's requests on it reach the transaction layer.
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _TcpConnection(endpoint, None), *key), 5.0
            )
        except (OSError, TimeoutError) as exc:
            raise TransportError(f"cannot connect to {peer}: {exc}") from None
        self._tcp[key] = protocol

    # the shell

    async def _run(self, runner: _Runner) -> None:
        registration = runner.registration
        loop = asyncio.get_running_loop()
        request: Request | None = registration.start(loop.time())
        while True:
            try:
                while request is not None:
                    request = await self._transact(runner, request)
            except Exception as exc:  # a bug must not end the registration for good
                log.exception("trunk %s: registration step failed", registration.trunk.name)
                registration.fail(f"internal error: {exc}", loop.time())
            at = registration.next_timer()
            if at is None:
                return  # only a stopped registration has nothing more to do
            await asyncio.sleep(max(0.0, at - loop.time()))
            try:
                request = registration.on_timer(loop.time())
            except Exception as exc:
                log.exception("trunk %s: registration step failed", registration.trunk.name)
                registration.fail(f"internal error: {exc}", loop.time())
                request = None

    async def _transact(self, runner: _Runner, request: Request) -> Request | None:
        """Send one REGISTER; the core's next request, if any."""
        registration = runner.registration
        loop = asyncio.get_running_loop()
        try:
            await self.connect(runner.peer)
            response = await self.endpoint.request(request, runner.peer)
        except (TransactionTimeout, TransportError) as exc:
            registration.on_failure(str(exc) or type(exc).__name__, loop.time())
            return None
        return registration.on_response(response, loop.time())

    async def _unregister(self, runner: _Runner, grace: float) -> None:
        registration = runner.registration
        loop = asyncio.get_running_loop()
        request = registration.stop(loop.time())
        deadline = loop.time() + grace
        while request is not None:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                request = await asyncio.wait_for(self._transact(runner, request), left)
            except TimeoutError:
                registration.on_failure("no answer to the unregistration", loop.time())
                break
        if registration.stopped:
            log.info("trunk %s unregistered", registration.trunk.name)
