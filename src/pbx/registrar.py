"""The registrar (RFC 3261 §10.3): digest-authenticated bindings kept in memory and SQLite.

`apply_register()` is the pure decision: given a REGISTER, the bindings we hold for its
address-of-record and the time, it returns the response and the binding changes. The
`Registrar` class around it authenticates, persists (answering only after the commit) and
keeps the in-memory location service the rest of the exchange routes with.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from email.utils import formatdate

from pbx.config import AuthConfig, ListenAddress, RegistrarConfig
from pbx.errors import RemoteProtocolError, SipStatus
from pbx.events import EventBus, RegistrationChanged
from pbx.sip.aio import Peer
from pbx.sip.digest import DigestAuthenticator, FailureThrottle, Verdict, parse_credentials
from pbx.sip.message import Request, Response, build_response, new_tag, parse_contacts
from pbx.sip.uri import NameAddr, SipUri, ip_literal, is_digits, split_hostport, unescape
from pbx.store import Binding, Store, User

log = logging.getLogger("pbx.registrar")
security = logging.getLogger("pbx.security")


@dataclass(frozen=True, slots=True)
class RegisterOutcome:
    response: Response
    upserts: tuple[Binding, ...] = ()
    removed: tuple[str, ...] = ()  # contacts whose bindings go away


def throttle_key(host: str) -> str:
    """Failures are counted per IPv4 address, and per /64 for IPv6: one host owns a /64."""
    address = ip_literal(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return host


def aor_of(request: Request) -> str:
    """The address-of-record key of a REGISTER: the user part of To (RFC 3261 §10.3 step 5)."""
    uri = request.to.uri
    if not isinstance(uri, SipUri) or uri.user is None:
        raise RemoteProtocolError("To must be a sip: or sips: URI with a user part")
    return unescape(uri.user)


def expires_header(request: Request, default: int) -> int:
    """The Expires header of a REGISTER or SUBSCRIBE, `default` without one."""
    value = request.header("Expires")
    if value is None:
        return default
    value = value.strip()
    if not is_digits(value):
        raise RemoteProtocolError(f"bad Expires {value!r}")
    # RFC 4475 scalar02: an overlarge expiry is treated as the default.
    return int(value) if len(value) <= 10 and int(value) <= 2**32 - 1 else default


def _contact_expires(contact: NameAddr, header: int, default: int) -> int:
    value = contact.param("expires")
    if value is None:
        return header
    if not is_digits(value):
        raise RemoteProtocolError(f"bad expires parameter {value!r}")
    return int(value) if len(value) <= 10 else default


def apply_register(
    request: Request,
    aor: str,
    current: dict[str, Binding],
    now: float,
    peer: Peer,
    config: RegistrarConfig,
    to_tag: str,
    user_agent: str = "pbx",
) -> RegisterOutcome:
    """RFC 3261 §10.3 steps 6-8 for one REGISTER. Raises RemoteProtocolError on bad input."""
    contacts = parse_contacts(request)
    if contacts != "*" and len(contacts) > config.max_contacts:
        raise RemoteProtocolError(
            f"{len(contacts)} contacts in one REGISTER; at most {config.max_contacts}"
        )
    header_expires = expires_header(request, config.default_expires)
    call_id, cseq = request.call_id, request.cseq.number
    upserts: list[Binding] = []
    removed: list[str] = []
    if contacts == "*":
        if request.header("Expires") is None or header_expires != 0:
            raise RemoteProtocolError("Contact: * requires Expires: 0")
        for key, binding in current.items():
            if binding.call_id == call_id and cseq <= binding.cseq:
                return _out_of_order(request, to_tag)
            removed.append(key)
    else:
        agent = request.header("User-Agent") or ""
        for contact in contacts:
            if not isinstance(contact.uri, SipUri):
                raise RemoteProtocolError(f"unsupported contact URI {contact.uri}")
            expires = _contact_expires(contact, header_expires, config.default_expires)
            key = str(contact.uri)
            existing = current.get(key)
            if existing and existing.call_id == call_id and cseq <= existing.cseq:
                return _out_of_order(request, to_tag)
            if expires == 0:
                if existing or key in (b.contact for b in upserts):
                    removed.append(key)
                upserts = [b for b in upserts if b.contact != key]
                continue
            if expires < config.min_expires:
                return RegisterOutcome(
                    build_response(
                        request,
                        SipStatus.INTERVAL_TOO_BRIEF,
                        headers=[("Min-Expires", str(config.min_expires))],
                        to_tag=to_tag,
                    )
                )
            expires = min(expires, config.max_expires)
            q_text = contact.param("q")
            try:
                q = float(q_text) if q_text else None
            except ValueError:
                raise RemoteProtocolError(f"bad q value {q_text!r}") from None
            instance = contact.param("+sip.instance")
            upserts = [b for b in upserts if b.contact != key]
            upserts.append(
                Binding(
                    aor=aor,
                    contact=key,
                    expires_at=now + expires,
                    call_id=call_id,
                    cseq=cseq,
                    transport=peer.transport,
                    source=str(peer),
                    registered_at=existing.registered_at if existing else now,
                    q=q,
                    local=str(peer.local),
                    user_agent=agent,
                    instance=instance,
                    reachable=existing.reachable if existing else None,
                    rtt_ms=existing.rtt_ms if existing else None,
                )
            )
    final = {k: b for k, b in current.items() if k not in removed and b.expires_at > now}
    final.update({b.contact: b for b in upserts})
    if len(final) > config.max_contacts:
        # Keep the newest registrations: a phone that moved leaves its old contact behind.
        ordered = sorted(final.values(), key=lambda b: b.registered_at)
        for old in ordered[: len(final) - config.max_contacts]:
            del final[old.contact]
            upserts = [b for b in upserts if b.contact != old.contact]
            if old.contact in current:
                removed.append(old.contact)
    headers = [
        ("Contact", f"<{b.contact}>;expires={max(0, int(b.expires_at - now + 0.5))}")
        for b in final.values()
    ]
    headers.append(("Date", formatdate(now, usegmt=True)))
    headers.append(("Server", user_agent))
    response = build_response(request, SipStatus.OK, headers=headers, to_tag=to_tag)
    return RegisterOutcome(response, tuple(upserts), tuple(removed))


def _out_of_order(request: Request, to_tag: str) -> RegisterOutcome:
    # RFC 3261 §10.3 step 7: an older CSeq on the same Call-ID aborts the whole request.
    return RegisterOutcome(
        build_response(request, SipStatus.BAD_REQUEST, "CSeq Out Of Order", to_tag=to_tag)
    )


class Registrar:
    """Authenticates REGISTERs, keeps the location service, persists every change."""

    def __init__(
        self,
        store: Store,
        config: RegistrarConfig,
        auth: AuthConfig,
        realm: str,
        secret: bytes,
        respond: Callable[[Request, Response], None],
        user_agent: str = "pbx",
        clock: Callable[[], float] = time.time,
        events: EventBus | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.respond = respond
        self.user_agent = user_agent
        self.clock = clock
        self.authenticator = DigestAuthenticator(realm, secret, auth.algorithms, auth.nonce_ttl)
        # Per address and user: one phone with a wrong password (which answers every new
        # challenge at once) locks out only itself, not the whole office behind one NAT.
        self.throttle = FailureThrottle(auth.max_failures, auth.failure_window, auth.block_seconds)
        # Per address, all users: a scan over many extensions is stopped too.
        self.source_throttle = FailureThrottle(
            auth.max_source_failures, auth.failure_window, auth.block_seconds
        )
        self.location: dict[str, dict[str, Binding]] = {}
        self.users: dict[str, User] = {}
        self._users_version = -1
        self.events = events or EventBus()

    async def load(self) -> None:
        """Read users and the bindings that survived a restart; drop the expired ones."""
        now = self.clock()
        await self.store.purge_expired(now)
        for binding in await self.store.bindings():
            self.location.setdefault(binding.aor, {})[binding.contact] = binding
        await self.refresh_users()
        log.info(
            "%d users, %d bindings restored",
            len(self.users),
            sum(len(b) for b in self.location.values()),
        )

    async def refresh_users(self, force: bool = False) -> None:
        """Re-read users when another process (the CLI) changed the database."""
        version = await self.store.data_version()
        if version == self._users_version and not force:
            return
        self._users_version = version
        users = {u.extension: u for u in await self.store.users()}
        gone = set(self.users) - set(users)
        self.users = users
        for aor in gone:
            for contact in list(self.location.get(aor, {})):
                self._forget(aor, contact, "removed")

    def contacts(self, aor: str) -> list[Binding]:
        now = self.clock()
        return [b for b in self.location.get(aor, {}).values() if b.expires_at > now]

    def all_bindings(self) -> Iterable[Binding]:
        for bindings in self.location.values():
            yield from bindings.values()

    async def purge(self) -> None:
        now = self.clock()
        for aor, bindings in list(self.location.items()):
            for contact, binding in list(bindings.items()):
                if binding.expires_at <= now:
                    self._forget(aor, contact, "expired")
        await self.store.purge_expired(now)

    def _forget(self, aor: str, contact: str, action: str) -> None:
        bindings = self.location.get(aor)
        binding = bindings.pop(contact, None) if bindings else None
        if binding is not None:
            if not bindings:
                del self.location[aor]
            self._announce(binding, action)

    def _announce(self, binding: Binding, action: str) -> None:
        self.events.publish(
            RegistrationChanged(
                self.clock(), binding.aor, binding.contact, action,
                binding.transport, binding.source, binding.user_agent,
            )
        )  # fmt: skip

    async def set_reachability(
        self, binding: Binding, reachable: bool, rtt_ms: float | None
    ) -> None:
        """Record a qualify result; the database is written only when reachability changes."""
        current = self.location.get(binding.aor, {}).get(binding.contact)
        if current is None:
            return
        updated = replace(current, reachable=reachable, rtt_ms=rtt_ms)
        self.location[binding.aor][binding.contact] = updated
        if current.reachable is not reachable:
            await self.store.save_binding(updated)

    # the REGISTER handler

    def handle(self, request: Request, peer: Peer) -> None:
        now = self.clock()
        source = throttle_key(peer.host)
        if self.source_throttle.blocked(source, now):
            return  # a blocked source learns nothing, not even that we are here
        header = request.header("Authorization")
        if header is None:
            self._challenge(request, peer, now, stale=False)
            return
        try:
            creds = parse_credentials(header)
        except RemoteProtocolError:
            self._challenge(request, peer, now, stale=False)
            return
        key = f"{source} {creds.username}"
        if self.throttle.blocked(key, now):
            return
        user = self.users.get(creds.username)
        verdict = self.authenticator.verify(
            creds, request.method, user.ha1 if user else lambda _a: None, now, peer.host
        )
        if verdict is Verdict.FOREIGN:
            # Not a nonce we gave this address: a fresh challenge, but no failure counted,
            # or a spoofed sender could get a real phone's address blocked.
            self._challenge(request, peer, now, stale=False)
            return
        if verdict is Verdict.STALE:
            self._challenge(request, peer, now, stale=True)
            return
        if verdict is Verdict.FAILED:
            self._failed(key, source, creds.username, peer, now)
            self._challenge(request, peer, now, stale=False)
            return
        self.throttle.success(key)
        assert user is not None
        try:
            aor = aor_of(request)
            if aor != user.extension:
                self.respond(
                    request,
                    build_response(request, SipStatus.FORBIDDEN, "Not Your Address",
                                   to_tag=new_tag()),
                )  # fmt: skip
                return
            current = self.location.get(aor, {})
            outcome = apply_register(
                request, aor, current, now, peer, self.config, new_tag(), self.user_agent
            )
        except RemoteProtocolError as exc:
            self.respond(request, build_response(request, exc.status, headers=[
                ("Warning", f'399 pbx "{exc}"')], to_tag=new_tag()))  # fmt: skip
            return
        if outcome.response.status != 200:
            self.respond(request, outcome.response)
            return
        self._commit(request, aor, outcome)

    def _failed(self, key: str, source: str, username: str, peer: Peer, now: float) -> None:
        if self.throttle.failure(key, now):
            security.warning(
                "blocking %s for user %r for %.0f s after repeated failed authentication",
                source, username, self.throttle.block,
            )  # fmt: skip
        elif self.source_throttle.failure(source, now):
            security.warning(
                "blocking %s for %.0f s after failed authentication for many users (last %r)",
                source, self.source_throttle.block, username,
            )  # fmt: skip
        else:
            security.info("failed authentication for %r from %s", username, peer)

    def _commit(self, request: Request, aor: str, outcome: RegisterOutcome) -> None:
        """Store the changes, then (and only then) route with them, announce and answer."""
        waits = [self.store.delete_binding(aor, contact) for contact in outcome.removed]
        waits += [self.store.save_binding(binding) for binding in outcome.upserts]
        if not waits:
            self.respond(request, outcome.response)
            return

        def committed(future: asyncio.Future[None]) -> None:
            if future.cancelled():
                return
            error = next((w.exception() for w in waits if w.exception() is not None), None)
            if error is not None:
                # Nothing changes in memory either: the phone retries, the store stays true.
                log.error("cannot store binding for %s: %s", aor, error)
                self.respond(
                    request,
                    build_response(request, SipStatus.SERVER_INTERNAL_ERROR, to_tag=new_tag()),
                )
                return
            self._apply(aor, outcome)
            self.respond(request, outcome.response)

        # The last write of a batch commits with all earlier ones, so one callback suffices.
        waits[-1].add_done_callback(committed)

    def _apply(self, aor: str, outcome: RegisterOutcome) -> None:
        bindings = self.location.setdefault(aor, {})
        for contact in outcome.removed:
            old = bindings.pop(contact, None)
            if old is not None:
                self._announce(old, "unregistered")
        for binding in outcome.upserts:
            known = binding.contact in bindings
            bindings[binding.contact] = binding
            self._announce(binding, "refreshed" if known else "registered")
        if not bindings:
            self.location.pop(aor, None)

    def _challenge(self, request: Request, peer: Peer, now: float, stale: bool) -> None:
        challenges = self.authenticator.challenges(now, stale, peer.host)
        headers = [("WWW-Authenticate", v) for v in challenges]
        headers.append(("Server", self.user_agent))
        self.respond(
            request,
            build_response(request, SipStatus.UNAUTHORIZED, headers=headers, to_tag=new_tag()),
        )


def peer_for_binding(binding: Binding) -> Peer:
    """Where a registered contact is reached: where its REGISTER came from (RFC 3581)."""
    host, port = split_hostport(binding.source)
    transport, _, rest = binding.local.partition(":")
    local_host, local_port = split_hostport(rest)
    local = ListenAddress(transport, local_host.strip("[]"), local_port or 5060)
    return Peer(binding.transport, host.strip("[]"), port or 5060, local)
