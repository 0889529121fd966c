"""Message waiting indication: RFC 3842 message-summary over RFC 6665 SUBSCRIBE/NOTIFY.

The pure part is the `application/simple-message-summary` body (`MessageSummary`), the
decisions about a SUBSCRIBE (`event_package`, `granted_expires`, `accepts_summary`) and
the `SubscriptionTable`, keyed by dialog, whose expiries are driven by the `now` its
caller passes in. `MwiService` is the asyncio shell the Exchange runs: it answers
SUBSCRIBE (digest-authenticated with the registrar's authenticator, users and failure
throttles), sends the NOTIFYs of each subscription in its dialog, and sends unsolicited
NOTIFYs (no subscription, out of dialog) to the registered phones of the extensions listed
in `[mwi] unsolicited`. The counts come from an injected `MailboxCounts` provider;
`await changed(box)` tells the service that a mailbox changed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

from pbx.config import Config, ListenAddress, MwiConfig
from pbx.errors import LocalProtocolError, PbxError, RemoteProtocolError, SipStatus
from pbx.events import Event, EventBus, RegistrationChanged
from pbx.registrar import Registrar, expires_header, peer_for_binding, throttle_key
from pbx.sip.aio import Peer, SipEndpoint
from pbx.sip.dialog import Dialog, DialogId, DialogState, dialog_id_for_request
from pbx.sip.digest import Credentials, Verdict, parse_credentials
from pbx.sip.message import (
    Method,
    Request,
    Response,
    build_response,
    new_branch,
    new_tag,
)
from pbx.sip.uri import SipUri, parse_name_addr, parse_uri, split_params, unescape
from pbx.store import Binding, Store, VoicemailCounts

log = logging.getLogger("pbx.mwi")
security = logging.getLogger("pbx.security")

EVENT = "message-summary"
"""The RFC 3842 event package, the only one this exchange serves."""
ALLOW_EVENTS = EVENT
CONTENT_TYPE = "application/simple-message-summary"
BAD_EVENT = 489  # RFC 6665 "Bad Event": not a package we serve
MAX_PER_SUBSCRIBER = 16
"""Subscriptions one extension may hold at once; the oldest makes room. A phone that
reboots subscribes again with a new Call-ID, and its old subscription would linger (and be
notified) until it expired."""

MailboxCounts = Callable[[str], Awaitable[VoicemailCounts]]
"""The provider of a mailbox's counts: `await counts(box)`."""


# the message-summary body (RFC 3842 §5)


@dataclass(frozen=True, slots=True)
class MessageSummary:
    """An `application/simple-message-summary` body with one Voice-Message line."""

    account: str
    """The Message-Account URI of the mailbox, e.g. "sip:1001@clinic.example"."""
    new: int
    old: int
    urgent_new: int = 0
    """Of `new`, how many are urgent."""
    urgent_old: int = 0

    def __post_init__(self) -> None:
        counts = (self.new, self.old, self.urgent_new, self.urgent_old)
        if any(n < 0 for n in counts):
            raise LocalProtocolError(f"negative message count in {counts}")

    @property
    def waiting(self) -> bool:
        """RFC 3842 §5.2: "yes" while there are new messages."""
        return self.new > 0

    @property
    def voice_message(self) -> str:
        """The Voice-Message value: "new/old (urgent new/urgent old)"."""
        return f"{self.new}/{self.old} ({self.urgent_new}/{self.urgent_old})"

    def body(self) -> bytes:
        """The body as RFC 3842 §5.2 writes it, each line ending in CRLF."""
        lines = [f"Messages-Waiting: {'yes' if self.waiting else 'no'}"]
        if self.account:
            lines.append(f"Message-Account: {self.account}")
        lines.append(f"Voice-Message: {self.voice_message}")
        return "".join(f"{line}\r\n" for line in lines).encode()

    @classmethod
    def parse(cls, body: bytes) -> MessageSummary:
        """Read a body (RFC 3842 §5.2); other message classes and the optional message
        headers after the blank line are ignored. Raises RemoteProtocolError."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError("message-summary body is not UTF-8") from None
        waiting: bool | None = None
        account = ""
        counts = (0, 0, 0, 0)
        for line in re.split(r"\r?\n", text):
            if not line.strip():
                break  # what follows are opt-msg-headers
            name, colon, value = line.partition(":")
            if not colon:
                raise RemoteProtocolError(f"bad message-summary line {line[:60]!r}")
            name, value = name.strip().lower(), value.strip()
            if name == "messages-waiting":
                if value.lower() not in ("yes", "no"):
                    raise RemoteProtocolError(f"Messages-Waiting must be yes or no: {value!r}")
                waiting = value.lower() == "yes"
            elif name == "message-account":
                account = value
            elif name == "voice-message":
                match = _SUMMARY_LINE.fullmatch(value)
                if match is None:
                    raise RemoteProtocolError(f"bad Voice-Message {value!r}")
                new, old, urgent_new, urgent_old = (int(g) if g else 0 for g in match.groups())
                counts = (new, old, urgent_new, urgent_old)
        if waiting is None:
            raise RemoteProtocolError("message-summary without Messages-Waiting")
        return cls(account, *counts)


_SUMMARY_LINE = re.compile(r"(\d{1,9})\s*/\s*(\d{1,9})(?:\s*\(\s*(\d{1,9})\s*/\s*(\d{1,9})\s*\))?")


def account_uri(box: str, domain: str) -> str:
    """The Message-Account of a mailbox: sip:BOX@DOMAIN."""
    return f"sip:{box}@{domain}"


# deciding about a SUBSCRIBE (RFC 6665 §4.2.1)


def event_package(request: Request) -> tuple[str, str | None] | None:
    """The Event header's package and its `id` parameter; None without an Event header."""
    value = request.header("Event")
    if value is None:
        return None
    package, semi, params = value.partition(";")
    ident = None
    if semi:
        ident = next((v for k, v in split_params(params) if k.lower() == "id"), None)
    return package.strip(), ident


def accepts_summary(request: Request) -> bool:
    """Whether the subscriber takes our body: no Accept means the package's default."""
    if not request.headers_named("Accept"):
        return True
    types = [v.partition(";")[0].strip().lower() for v in request.list_values("Accept")]
    return any(t in (CONTENT_TYPE, "application/*", "*/*") for t in types)


def granted_expires(requested: int, config: MwiConfig) -> int | None:
    """The duration we grant: at most max_expires (RFC 6665 §4.2.1.1 lets us shorten, never
    lengthen); None when a non-zero request is below min_expires (423 with Min-Expires)."""
    if requested == 0:
        return 0
    if requested < config.min_expires:
        return None
    return min(requested, config.max_expires)


def subscription_state(expires_at: float | None, now: float, reason: str = "timeout") -> str:
    """The Subscription-State value (RFC 6665 §8.2.3): active with the seconds left, or
    terminated (`expires_at` None) with `reason`."""
    if expires_at is None:
        return f"terminated;reason={reason}"
    return f"active;expires={max(0, int(expires_at - now + 0.5))}"


# the subscriptions


@dataclass(slots=True, eq=False)
class Subscription:
    """One message-summary subscription: the dialog its NOTIFYs go in and what it watches."""

    dialog: Dialog
    box: str
    subscriber: str
    """The authenticated extension that subscribed."""
    account: str
    """The Message-Account URI of the box."""
    expires_at: float
    created_at: float
    peer: Peer
    """Where the subscriber's requests come from, so where our NOTIFYs go (NAT)."""
    event: str = EVENT
    """The Event value of our NOTIFYs: the package and the SUBSCRIBE's id parameter."""

    @property
    def key(self) -> DialogId:
        return self.dialog.id


class SubscriptionTable:
    """The live subscriptions by dialog ID (Call-ID and both tags). No clock of its own:
    every method that depends on time takes `now`."""

    def __init__(self, per_subscriber: int = MAX_PER_SUBSCRIBER) -> None:
        self.per_subscriber = per_subscriber
        self._subs: dict[DialogId, Subscription] = {}

    def __len__(self) -> int:
        return len(self._subs)

    def __iter__(self) -> Iterator[Subscription]:
        return iter(list(self._subs.values()))

    def get(self, key: DialogId | None) -> Subscription | None:
        return self._subs.get(key) if key is not None else None

    def add(self, sub: Subscription) -> list[Subscription]:
        """Keep `sub`; returns the subscriptions it displaced: the same phone's earlier one
        for the same box (same remote target: it rebooted), and the subscriber's oldest
        beyond `per_subscriber`."""
        displaced = [
            old
            for old in self._subs.values()
            if old.subscriber == sub.subscriber
            and old.box == sub.box
            and old.dialog.remote_target == sub.dialog.remote_target
        ]
        for old in displaced:
            del self._subs[old.key]
        mine = sorted(self.of_subscriber(sub.subscriber), key=lambda s: s.created_at)
        for old in mine[: max(0, len(mine) + 1 - self.per_subscriber)]:
            del self._subs[old.key]
            displaced.append(old)
        self._subs[sub.key] = sub
        return displaced

    def remove(self, key: DialogId) -> Subscription | None:
        return self._subs.pop(key, None)

    def for_box(self, box: str) -> list[Subscription]:
        return [s for s in self._subs.values() if s.box == box]

    def of_subscriber(self, subscriber: str) -> list[Subscription]:
        return [s for s in self._subs.values() if s.subscriber == subscriber]

    def next_timer(self) -> float | None:
        """When the next subscription expires."""
        return min((s.expires_at for s in self._subs.values()), default=None)

    def expire(self, now: float) -> list[Subscription]:
        """Remove and return the subscriptions that were not refreshed in time."""
        gone = [s for s in self._subs.values() if s.expires_at <= now]
        for sub in gone:
            del self._subs[sub.key]
        return gone


# the stored form of a subscription (the exchange keeps them across a crash)

CSEQ_MARGIN = 10
"""Added to a restored subscription's CSeq: the NOTIFYs sent just before a crash may not
have had theirs stored, and the phone refuses a CSeq it has seen (RFC 3261 §12.2.2)."""

StoredKey = tuple[str, str, str]
"""A dialog ID as stored: Call-ID, local tag, remote tag ("" for none)."""


def stored_key(key: DialogId) -> StoredKey:
    return key.call_id, key.local_tag, key.remote_tag or ""


def subscription_record(sub: Subscription) -> str:
    """What restores `sub`: its dialog, what it watches and where its phone is, as JSON."""
    dialog, peer = sub.dialog, sub.peer
    return json.dumps({
        "box": sub.box, "subscriber": sub.subscriber, "account": sub.account,
        "event": sub.event, "expires_at": sub.expires_at, "created_at": sub.created_at,
        "local_party": str(dialog.local_party), "remote_party": str(dialog.remote_party),
        "local_target": str(dialog.local_target), "remote_target": str(dialog.remote_target),
        "route_set": [str(route) for route in dialog.route_set],
        "local_cseq": dialog.local_cseq, "remote_cseq": dialog.remote_cseq,
        "secure": dialog.secure,
        "peer": [peer.transport, peer.host, peer.port],
        "local": [peer.local.transport, peer.local.host, peer.local.port],
    })  # fmt: skip


def subscription_from_record(key: StoredKey, record: str) -> Subscription:
    """The subscription `subscription_record` wrote, its CSeq moved on by CSEQ_MARGIN.
    Raises ValueError for a record it cannot read."""
    try:
        r = json.loads(record)
        call_id, local_tag, remote_tag = key
        local_cseq = r["local_cseq"]
        dialog = Dialog(
            id=DialogId(call_id, local_tag, remote_tag or None),
            state=DialogState.CONFIRMED,
            is_uas=True,
            local_party=parse_name_addr(r["local_party"]),
            remote_party=parse_name_addr(r["remote_party"]),
            local_target=parse_uri(r["local_target"]),
            remote_target=parse_uri(r["remote_target"]),
            route_set=tuple(parse_name_addr(route) for route in r["route_set"]),
            local_cseq=(local_cseq or 0) + CSEQ_MARGIN,
            remote_cseq=r["remote_cseq"],
            secure=bool(r["secure"]),
        )
        transport, host, port = r["peer"]
        local = ListenAddress(*r["local"])
        return Subscription(
            dialog, str(r["box"]), str(r["subscriber"]), str(r["account"]),
            float(r["expires_at"]), float(r["created_at"]),
            Peer(str(transport), str(host), int(port), local), str(r["event"]),
        )  # fmt: skip
    # A field missing or of the wrong type (5 where a URI was), a JSON error (ValueError)
    except (PbxError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"unreadable MWI subscription record: {exc}") from None


# the asyncio shell


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class MwiService:
    """SUBSCRIBE/NOTIFY for message-summary, and unsolicited NOTIFYs; see the module."""

    def __init__(
        self,
        config: Config,
        endpoint: SipEndpoint,
        counts: MailboxCounts,
        events: EventBus,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config.mwi
        self.domain = config.sip.domain
        self.user_agent = config.sip.user_agent
        self.endpoint = endpoint
        self.counts = counts
        """Replaceable: the voicemail store, or a test's own provider."""
        self.events = events
        self.clock = clock
        self.table = SubscriptionTable()
        self._registrar: Registrar | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # NOTIFYs of one subscription go one at a time (the next after the previous one's
        # answer), and a NOTIFY overtaken by a newer request for the same dialog is skipped.
        self._locks: dict[DialogId, asyncio.Lock] = {}
        self._generation: dict[DialogId, int] = {}
        # Subscriptions to store (None: to delete), written in order by one task.
        self._store: Store | None = None
        self._dirty: dict[DialogId, Subscription | None] = {}
        self._writer: asyncio.Task[None] | None = None
        self._next_write: asyncio.Future[None] | None = None  # done once _dirty is written

    def start(self, registrar: Registrar, store: Store | None = None) -> None:
        """Serve SUBSCRIBEs; with a `store`, keep the subscriptions there (`restore`)."""
        self._registrar = registrar
        self._store = store
        self._unsubscribe = self.events.subscribe(self._on_event)

    async def restore(self) -> list[Subscription]:
        """Take back the subscriptions a crash left in the store, before SUBSCRIBEs are
        served (a phone that subscribes anew then displaces its restored one, not the
        other way round). The ones taken back are returned: `notify` each once the
        mailboxes can be read (its box may have changed meanwhile)."""
        if self._store is None:
            return []
        now = self.clock()
        restored: list[Subscription] = []
        for key, _expires_at, record in await self._store.mwi_subscriptions():
            try:
                sub = subscription_from_record(key, record)
            except ValueError as exc:
                log.warning("MWI subscription %s not restored: %s", key[0], exc)
                self._dirty[DialogId(key[0], key[1], key[2] or None)] = None
                continue
            if sub.expires_at <= now:
                self._dirty[sub.key] = None
            else:
                self._keep(sub, notify=False)
                restored.append(sub)
        log.info("%d MWI subscriptions restored", len(restored))
        if self._dirty:
            self._write_soon()
        self._arm()
        return restored

    def notify(self, subs: list[Subscription]) -> None:
        """Send each of `subs` that is still live its current state."""
        for sub in subs:
            if self.table.get(sub.key) is sub:
                self._notify(sub)

    async def stop(self) -> None:
        """Tell every subscriber to subscribe again (reason=deactivated, RFC 6665 §4.1.3:
        a restarted exchange takes the new subscription), once each, without waiting."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self.clock()
        for sub in self.table:
            self.table.remove(sub.key)
            try:
                request = self._in_dialog(sub, subscription_state(None, now, "deactivated"))
                self.endpoint.send(request.encode(), sub.peer)
            except PbxError as exc:
                log.debug("no final NOTIFY to %s: %s", sub.peer, exc)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._dirty.clear()
        if self._store is not None:  # told to subscribe again: none is kept
            try:
                await self._store.clear_mwi_subscriptions()
            except Exception:
                log.exception("cannot clear the stored MWI subscriptions")

    async def changed(self, box: str) -> None:
        """The counts of mailbox `box` changed: NOTIFY its subscriptions and, when `box` is
        listed in [mwi] unsolicited, each of its registered contacts. Returns once the
        NOTIFYs are on their way (their answers are not awaited)."""
        for sub in self.table.for_box(box):
            self._notify(sub)
        if box in self.config.unsolicited and self._registrar is not None:
            for binding in self._registrar.contacts(box):
                self._spawn(self._unsolicited(binding))

    async def idle(self) -> None:
        """Wait until every NOTIFY started so far has been answered or has failed."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def expire(self) -> None:
        """End the subscriptions whose time is up (a final NOTIFY each); re-arm the timer."""
        self._timer = None
        for sub in self.table.expire(self.clock()):
            log.info("MWI subscription of %s to %s expired", sub.subscriber, sub.box)
            self._forget(sub)
            self._notify(sub, final="timeout")
        self._arm()

    # SUBSCRIBE (RFC 6665 §4.2.1)

    def handle(self, request: Request, peer: Peer) -> None:
        registrar = self._registrar
        if registrar is None:
            self._reply(request, SipStatus.SERVICE_UNAVAILABLE)
            return
        now = registrar.clock()
        if registrar.source_throttle.blocked(throttle_key(peer.host), now):
            return  # as the registrar: a blocked source learns nothing
        event = event_package(request)
        if event is None:
            self._reply(request, SipStatus.BAD_REQUEST, "Missing Event Header")
            return
        package, ident = event
        if package.lower() != EVENT:
            self._reply(request, BAD_EVENT, "Bad Event", [("Allow-Events", ALLOW_EVENTS)])
            return
        user = self._authenticate(registrar, request, peer, now)
        if user is None:
            return
        try:
            key = dialog_id_for_request(request)
            if key is None:
                self._subscribe(request, peer, user, ident)
            else:
                self._resubscribe(request, peer, user, key)
        except RemoteProtocolError as exc:
            self._reply(request, exc.status, headers=[("Warning", f'399 pbx "{exc}"')])

    def _subscribe(self, request: Request, peer: Peer, user: str, ident: str | None) -> None:
        """A new subscription (a SUBSCRIBE without To tag)."""
        box = _box_of(request)
        if box != user:
            self._reply(request, SipStatus.FORBIDDEN, "Not Your Mailbox")
            return
        if not accepts_summary(request):
            self._reply(request, SipStatus.NOT_ACCEPTABLE, headers=[("Accept", CONTENT_TYPE)])
            return
        expires = self._granted(request)
        if expires is None:
            return
        response = self._ok(request, peer, expires)
        dialog = Dialog.from_uas(request, response)  # raises without a Contact: 400
        domain = self.domain or (request.uri.host if isinstance(request.uri, SipUri) else "")
        now = self.clock()
        sub = Subscription(
            dialog, box, user, account_uri(box, domain or peer.local.host),
            now + expires, now, peer,
            EVENT if ident is None else f"{EVENT};id={ident}",
        )  # fmt: skip
        if expires == 0:
            # A fetch (RFC 6665 §4.4.3): the state once, in a NOTIFY that ends it.
            self.endpoint.respond(request, response)
            self._notify(sub, final="timeout")
            return
        log.info("%s subscribed to MWI of %s for %d s", user, box, expires)
        stored = self._keep(sub, notify=False)
        self._arm()
        if stored is None:
            self.endpoint.respond(request, response)
            self._notify(sub)
        else:
            self._spawn(self._confirm(request, response, sub, stored))

    async def _confirm(
        self, request: Request, response: Response, sub: Subscription, stored: asyncio.Future[None]
    ) -> None:
        """The 200 once the subscription is stored (as the registrar answers a REGISTER):
        what a phone was told it has, a crash does not take away. Then the first NOTIFY."""
        await stored
        self.endpoint.respond(request, response)
        if self.table.get(sub.key) is sub:
            self._notify(sub)

    def _resubscribe(self, request: Request, peer: Peer, user: str, key: DialogId) -> None:
        """A refresh or, with Expires: 0, the end of a subscription (RFC 6665 §4.1.2.2/3)."""
        sub = self.table.get(key)
        if sub is None:
            self._reply(request, SipStatus.CALL_DOES_NOT_EXIST, "Subscription Does Not Exist")
            return
        if sub.subscriber != user:
            self._reply(request, SipStatus.FORBIDDEN, "Not Your Subscription")
            return
        expires = self._granted(request)
        if expires is None:
            return
        verdict = sub.dialog.receive_request(request)
        if not verdict.accepted:
            assert verdict.status is not None
            self._reply(request, verdict.status, verdict.reason or None)
            return
        sub.peer = peer
        self.endpoint.respond(request, self._ok(request, peer, expires))
        if expires == 0:
            self.table.remove(key)
            self._forget(sub)
            log.info("%s unsubscribed from MWI of %s", user, sub.box)
            self._notify(sub, final="timeout")
        else:
            sub.expires_at = self.clock() + expires
            self._remember(sub)
            self._notify(sub)
        self._arm()

    def _granted(self, request: Request) -> int | None:
        """The Expires to grant, or None when a 423 has been sent."""
        requested = expires_header(request, self.config.default_expires)
        expires = granted_expires(requested, self.config)
        if expires is None:
            self._reply(request, SipStatus.INTERVAL_TOO_BRIEF,
                        headers=[("Min-Expires", str(self.config.min_expires))])  # fmt: skip
        return expires

    def _ok(self, request: Request, peer: Peer, expires: int) -> Response:
        headers = [
            ("Expires", str(expires)),
            ("Contact", _contact(peer)),
            ("Allow-Events", ALLOW_EVENTS),
            ("Server", self.user_agent),
        ]
        return build_response(request, SipStatus.OK, headers=headers, to_tag=new_tag())

    # digest, as the registrar asks for it (its nonces, users and failure throttles)

    def _authenticate(
        self, registrar: Registrar, request: Request, peer: Peer, now: float
    ) -> str | None:
        """The subscriber's extension, or None when the request was answered (401) or is
        ignored (a blocked user)."""
        creds: Credentials | None = None
        header = request.header("Authorization")
        if header is not None:
            try:
                creds = parse_credentials(header)
            except RemoteProtocolError:
                creds = None
        if creds is None:
            self._challenge(registrar, request, peer, now, stale=False)
            return None
        source = throttle_key(peer.host)
        key = f"{source} {creds.username}"
        if registrar.throttle.blocked(key, now):
            return None
        user = registrar.users.get(creds.username)
        verdict = registrar.authenticator.verify(
            creds, request.method, user.ha1 if user else lambda _a: None, now, peer.host
        )
        if verdict is Verdict.OK:
            registrar.throttle.success(key)
            return creds.username
        if verdict is Verdict.FAILED:
            if registrar.throttle.failure(key, now) or registrar.source_throttle.failure(
                source, now
            ):
                security.warning("blocking %s after repeated failed authentication (MWI, %r)",
                                 source, creds.username)  # fmt: skip
            else:
                security.info("failed authentication for %r from %s (SUBSCRIBE)",
                              creds.username, peer)  # fmt: skip
        self._challenge(registrar, request, peer, now, stale=verdict is Verdict.STALE)
        return None

    def _challenge(
        self, registrar: Registrar, request: Request, peer: Peer, now: float, stale: bool
    ) -> None:
        challenges = registrar.authenticator.challenges(now, stale, peer.host)
        self._reply(request, SipStatus.UNAUTHORIZED,
                    headers=[("WWW-Authenticate", v) for v in challenges])  # fmt: skip

    def _reply(
        self,
        request: Request,
        status: int,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        headers = [*(headers or []), ("Server", self.user_agent)]
        self.endpoint.respond(request, build_response(request, status, reason, headers,
                                                      to_tag=new_tag()))  # fmt: skip

    # NOTIFY in a subscription (RFC 6665 §4.2.2)

    def _notify(self, sub: Subscription, final: str | None = None) -> None:
        """Send `sub` its current state; `final`: the reason of a terminating NOTIFY."""
        generation = self._generation.get(sub.key, 0) + 1
        self._generation[sub.key] = generation
        self._spawn(self._notify_in_order(sub, generation, final))

    async def _notify_in_order(self, sub: Subscription, generation: int, final: str | None) -> None:
        key = sub.key
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            overtaken = self._generation.get(key) != generation
            if final is None and (overtaken or self.table.get(key) is not sub):
                return  # a newer NOTIFY follows, or the subscription ended meanwhile
            try:
                await self._send_notify(sub, final)
            finally:
                if final is not None or self.table.get(key) is not sub:
                    self._locks.pop(key, None)
                    self._generation.pop(key, None)

    async def _send_notify(self, sub: Subscription, final: str | None) -> None:
        summary = await self._summary(sub.box, sub.account)
        if summary is None:
            return
        state = subscription_state(None if final else sub.expires_at, self.clock(), final or "")
        request = self._in_dialog(sub, state, summary)
        if final is None:
            self._remember(sub)  # its CSeq moved on
        log.debug("MWI NOTIFY to %s at %s for %s: Voice-Message %s, Subscription-State %s",
                  sub.subscriber, sub.peer, sub.box, summary.voice_message, state)  # fmt: skip
        try:
            response = await self.endpoint.request(request, sub.peer)
        except PbxError as exc:  # TransactionTimeout, TransportError
            self._failed(sub, str(exc))
            return
        if response.status >= 300:
            # 481: the subscriber has forgotten the subscription (RFC 6665 §4.2.2). Any
            # other failure ends it as well: it is soft state, and a phone that still
            # wants it subscribes again.
            self._failed(sub, f"{response.status} {response.reason}")

    def _in_dialog(
        self, sub: Subscription, state: str, summary: MessageSummary | None = None
    ) -> Request:
        headers = [
            ("Event", sub.event),
            ("Subscription-State", state),
            ("User-Agent", self.user_agent),
        ]
        if summary is not None:
            headers.append(("Content-Type", CONTENT_TYPE))
        local = sub.peer.local
        return sub.dialog.create_request(
            Method.NOTIFY, headers, summary.body() if summary is not None else b"",
            local_address=(local.host, local.port), transport=sub.peer.transport,
        )  # fmt: skip

    def _failed(self, sub: Subscription, why: str) -> None:
        if self.table.get(sub.key) is not sub:  # a final NOTIFY, or the subscription ended
            log.info("MWI NOTIFY to %s for %s got %s (subscription already over)",
                     sub.subscriber, sub.box, why)  # fmt: skip
        else:
            self.table.remove(sub.key)
            self._forget(sub)
            log.info("MWI subscription of %s to %s removed: NOTIFY got %s",
                     sub.subscriber, sub.box, why)  # fmt: skip
            self._arm()

    # the table, and the store behind it

    def _keep(self, sub: Subscription, notify: bool = True) -> asyncio.Future[None] | None:
        """A subscription new to the table: stored (the future: done once it is), and,
        with `notify`, sent the current state."""
        for old in self.table.add(sub):
            log.info("MWI subscription %s of %s replaced", old.key.call_id, old.subscriber)
            self._locks.pop(old.key, None)
            self._generation.pop(old.key, None)
            self._forget(old)
        stored = self._remember(sub)
        if notify:
            self._notify(sub)
        return stored

    def _remember(self, sub: Subscription) -> asyncio.Future[None] | None:
        if self._store is None or self.table.get(sub.key) is not sub:
            return None
        self._dirty[sub.key] = sub
        return self._write_soon()

    def _forget(self, sub: Subscription) -> None:
        if self._store is not None:
            self._dirty[sub.key] = None
            self._write_soon()

    def _write_soon(self) -> asyncio.Future[None]:
        """The future of the write that will hold the changes made so far."""
        if self._next_write is None:
            self._next_write = asyncio.get_running_loop().create_future()
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write())
            self._tasks.add(self._writer)
            self._writer.add_done_callback(self._finished)
        return self._next_write

    async def _write(self) -> None:
        """Store every change made since the last write, the latest state of each."""
        store = self._store
        assert store is not None
        try:
            while self._dirty:
                changes, self._dirty = self._dirty, {}
                written, self._next_write = self._next_write, None
                try:
                    saved = [(stored_key(key), sub.expires_at, subscription_record(sub))
                             for key, sub in changes.items() if sub is not None]  # fmt: skip
                    deleted = [stored_key(key) for key, sub in changes.items() if sub is None]
                    await store.write_mwi_subscriptions(saved, deleted)
                except Exception:  # the subscriptions still work, only not across a crash
                    log.exception("cannot store %d MWI subscription changes", len(changes))
                finally:  # answered either way: a SUBSCRIBE is not left waiting
                    if written is not None and not written.done():
                        written.set_result(None)
        finally:
            self._writer = None

    # unsolicited NOTIFY: no subscription, out of any dialog

    async def _unsolicited(self, binding: Binding) -> None:
        try:
            peer = peer_for_binding(binding)
        except PbxError:
            return
        box = binding.aor
        host = _bracket(peer.local.host)
        domain = self.domain or host
        summary = await self._summary(box, account_uri(box, domain))
        if summary is None:
            return
        request = Request.build(
            Method.NOTIFY,
            parse_uri(binding.contact),
            [
                ("Via", f"SIP/2.0/{peer.transport.upper()} {host}:{peer.local.port};branch="
                        f"{new_branch()};rport"),
                ("Max-Forwards", "70"),
                ("From", f"<{account_uri(box, domain)}>;tag={new_tag()}"),
                ("To", f"<{account_uri(box, domain)}>"),
                ("Call-ID", f"{new_tag()}{new_tag()}@{host}"),
                ("CSeq", "1 NOTIFY"),
                ("Contact", _contact(peer)),
                ("Event", EVENT),
                ("Subscription-State", "active"),
                ("User-Agent", self.user_agent),
                ("Content-Type", CONTENT_TYPE),
            ],
            summary.body(),
        )  # fmt: skip
        log.debug("unsolicited MWI NOTIFY to %s at %s: Voice-Message %s", box, peer,
                  summary.voice_message)  # fmt: skip
        try:
            response = await self.endpoint.request(request, peer)
        except PbxError as exc:
            log.info("unsolicited MWI NOTIFY to %s at %s failed: %s", box, peer, exc)
            return
        if response.status >= 300:
            log.info("unsolicited MWI NOTIFY to %s at %s: %d %s", box, peer,
                     response.status, response.reason)  # fmt: skip

    # the rest

    async def _summary(self, box: str, account: str) -> MessageSummary | None:
        try:
            counts = await self.counts(box)
            return MessageSummary(
                account, counts.new, counts.saved, counts.urgent_new, counts.urgent_saved
            )
        except Exception:
            log.exception("cannot read the message counts of mailbox %s", box)
            return None

    def _on_event(self, event: Event) -> None:
        """A phone that (re-)registers gets the current state again: it may have restarted."""
        if not isinstance(event, RegistrationChanged):
            return
        if event.action not in ("registered", "refreshed"):
            return
        for sub in self.table.of_subscriber(event.aor):
            self._notify(sub)
        if event.aor in self.config.unsolicited and self._registrar is not None:
            binding = self._registrar.location.get(event.aor, {}).get(event.contact)
            if binding is not None:
                # A task: it runs after the registrar has sent its 200.
                self._spawn(self._unsolicited(binding))

    def _arm(self) -> None:
        """One timer, for the subscription that expires first (STYLE.md §1)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        at = self.table.next_timer()
        if at is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, at - self.clock()), self.expire)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("MWI task failed", exc_info=task.exception())


def _box_of(request: Request) -> str:
    """The mailbox a SUBSCRIBE is for: the Request-URI's user, else the To user."""
    for uri in (request.uri, request.to.uri):
        if isinstance(uri, SipUri) and uri.user:
            return unescape(uri.user)
    raise RemoteProtocolError("SUBSCRIBE names no mailbox (no user in Request-URI or To)")


def _contact(peer: Peer) -> str:
    host = _bracket(peer.local.host)
    return f"<sip:pbx@{host}:{peer.local.port};transport={peer.transport}>"
