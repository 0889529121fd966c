"""SIP dialogs (RFC 3261 §12): a sans-I/O core for the B2BUA.

A `Dialog` holds the state of RFC 3261 §12.1: the dialog ID, the local and remote sequence
numbers, local and remote URIs, the local and remote targets, the route set and the secure
flag. It opens no socket and reads no clock: messages go in, `Request` objects come out,
and the caller hands them to a transaction.

Two error policies, as in `transaction.py`:

* Messages from the peer never make the dialog raise because of its state. A request that
  breaks §12.2.2 gets a `DialogVerdict` carrying the status to answer with (500 for a CSeq
  out of order, 481 for a dead dialog); a late response to a terminated dialog is ignored.
* Our own misuse (building a request in a terminated dialog, an ACK without an INVITE, a
  dialog from a response without a To tag) raises `DialogError`, a `LocalProtocolError`.

A request the dialog sees with the *same* CSeq as the last one is also refused with 500:
the transaction layer absorbs retransmissions before they get here, so a repeated number
can only be a new request that broke the "strictly increasing" rule of §12.2.1.1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, auto

from pbx.errors import LocalProtocolError, RemoteProtocolError, SipStatus
from pbx.sip.message import (
    MAX_CSEQ,
    Method,
    Request,
    Response,
    Via,
    canonical_name,
    new_branch,
    parse_contacts,
)
from pbx.sip.uri import NameAddr, SipUri, Uri, has_param, parse_name_addr

__all__ = [
    "TARGET_REFRESH_METHODS",
    "Dialog",
    "DialogError",
    "DialogId",
    "DialogState",
    "DialogVerdict",
    "dialog_id_for_request",
    "dialog_id_for_response",
]

TARGET_REFRESH_METHODS = frozenset(
    {Method.INVITE, Method.UPDATE, Method.SUBSCRIBE, Method.NOTIFY, Method.REFER}
)
"""Methods that carry a Contact and replace the remote target (§12.2, RFC 3311, RFC 6665)."""

# Headers the dialog writes itself; a caller passing them in `headers` would corrupt the
# request, so that is refused.
_OWN_HEADERS = frozenset({"Via", "Max-Forwards", "Route", "From", "To", "Call-ID", "CSeq"})


class DialogError(LocalProtocolError):
    """The dialog was used against RFC 3261 §12 by our own code."""


class DialogState(Enum):
    """RFC 3261 §12: early after a 1xx with a To tag, confirmed after a 2xx."""

    EARLY = auto()
    CONFIRMED = auto()
    TERMINATED = auto()


@dataclass(frozen=True, slots=True)
class DialogId:
    """The dialog ID of RFC 3261 §12: Call-ID plus local and remote tags, seen from us.

    `remote_tag` is None when the peer is an RFC 2543 UA that sent no tag (§12.1.1).
    """

    call_id: str
    local_tag: str
    remote_tag: str | None


@dataclass(frozen=True, slots=True)
class DialogVerdict:
    """What `Dialog.receive_request` decided (RFC 3261 §12.2.2).

    `status` is None when the request is accepted; otherwise it is the final response the
    UAS must send, and the dialog state did not change.
    """

    status: SipStatus | None = None
    reason: str = ""
    is_bye: bool = False
    """An accepted BYE: the dialog is now terminated; answer 200 (§15.1.2)."""
    target_refreshed: bool = False
    """The request replaced the remote target (§12.2.2)."""

    @property
    def accepted(self) -> bool:
        return self.status is None


def _tag_pair(local: NameAddr, remote: NameAddr, call_id: str) -> DialogId | None:
    local_tag = local.tag
    if not local_tag:
        return None
    return DialogId(call_id, local_tag, remote.tag or None)


def dialog_id_for_request(request: Request, is_uas: bool = True) -> DialogId | None:
    """The ID of the dialog a request belongs to, from our side (RFC 3261 §12.2.2).

    For a request we received (`is_uas`), the local tag is the To tag; for one we sent it
    is the From tag. None when the local tag is missing: the request is outside a dialog.
    """
    if is_uas:
        return _tag_pair(request.to, request.from_, request.call_id)
    return _tag_pair(request.from_, request.to, request.call_id)


def dialog_id_for_response(response: Response, is_uas: bool = False) -> DialogId | None:
    """The ID of the dialog a response belongs to, from our side (RFC 3261 §12.1).

    For a response we received (we were the UAC) the local tag is the From tag; for one we
    sent (`is_uas`) it is the To tag. None when the local tag is missing.
    """
    if is_uas:
        return _tag_pair(response.to, response.from_, response.call_id)
    return _tag_pair(response.from_, response.to, response.call_id)


def _record_route(message: Request | Response) -> tuple[NameAddr, ...]:
    return tuple(parse_name_addr(v) for v in message.list_values("Record-Route"))


def _contact_uri(message: Request | Response) -> Uri | None:
    """The URI of the (first) Contact; None if absent (§12.1: there must be exactly one)."""
    contacts = parse_contacts(message)
    if contacts == "*":
        raise RemoteProtocolError("Contact: * in a dialog-creating message")
    return contacts[0].uri if contacts else None


def _is_secure(request: Request, tls: bool) -> bool:
    """§12.1.1, §12.1.2: sent or received over TLS with a SIPS Request-URI."""
    return tls and isinstance(request.uri, SipUri) and request.uri.scheme == "sips"


def _is_loose(route: NameAddr) -> bool:
    return isinstance(route.uri, SipUri) and has_param(route.uri.params, "lr")


def _as_request_uri(uri: Uri) -> Uri:
    """Drop what a Request-URI may not carry: URI headers and `method` (§19.1.1 Table 1)."""
    if not isinstance(uri, SipUri) or (not uri.headers and uri.param("method") is None):
        return uri
    params = tuple(p for p in uri.params if p[0].lower() != "method")
    return SipUri(uri.scheme, uri.user, uri.password, uri.host, uri.port, params, ())


@dataclass(slots=True, kw_only=True, eq=False)
class Dialog:
    """The state of one dialog (RFC 3261 §12.1), updated by the messages it sees.

    Build one with `from_uas` or `from_uac`. `is_uas` is our role in the request that
    created the dialog: the callee (UAS) may not send BYE while the dialog is early (§15).
    """

    id: DialogId
    state: DialogState
    is_uas: bool
    local_party: NameAddr
    """Our From (as UAC) or To (as UAS) value, with the local tag."""
    remote_party: NameAddr
    """The peer's address, with the remote tag when it sent one."""
    local_target: Uri
    """Our Contact, sent in target-refresh requests."""
    remote_target: Uri
    """The peer's Contact: the Request-URI of requests we send (§12.2.1.1)."""
    route_set: tuple[NameAddr, ...]
    local_cseq: int | None
    """The last CSeq we used; None until we send a request (UAS side, §12.1.1)."""
    remote_cseq: int | None
    """The highest CSeq the peer used; None until it sends one (UAC side, §12.1.2)."""
    secure: bool
    invite_cseq: int | None = None
    """CSeq number of the last INVITE we sent, reused by its ACK and CANCEL (§13.2.2.4, §9.1)."""

    @property
    def call_id(self) -> str:
        return self.id.call_id

    @property
    def local_tag(self) -> str:
        return self.id.local_tag

    @property
    def remote_tag(self) -> str | None:
        return self.id.remote_tag

    @property
    def local_uri(self) -> Uri:
        return self.local_party.uri

    @property
    def remote_uri(self) -> Uri:
        return self.remote_party.uri

    # -- creation (§12.1) -----------------------------------------------------------------

    @classmethod
    def from_uas(cls, request: Request, response: Response, *, tls: bool = False) -> Dialog:
        """The dialog a UAS makes by answering `request` with a 1xx/2xx (RFC 3261 §12.1.1).

        `response` is ours and must carry a To tag and a Contact. The route set is the
        request's Record-Route in order; the remote target is the request's Contact.
        """
        cls._check_pair(request, response)
        local_tag = response.to.tag
        if not local_tag:
            raise DialogError(f"our {response.status} response has no To tag")
        local_target = _contact_uri(response)
        if local_target is None:
            raise DialogError(f"our {response.status} response has no Contact (§12.1.1)")
        remote_target = _contact_uri(request)
        if remote_target is None:
            raise RemoteProtocolError(f"{request.method} without Contact (§8.1.1.8)")
        return cls(
            id=DialogId(request.call_id, local_tag, request.from_.tag or None),
            state=DialogState.CONFIRMED if response.status >= 200 else DialogState.EARLY,
            is_uas=True,
            local_party=response.to,
            remote_party=request.from_,
            local_target=local_target,
            remote_target=remote_target,
            route_set=_record_route(request),
            local_cseq=None,
            remote_cseq=request.cseq.number,
            secure=_is_secure(request, tls),
        )

    @classmethod
    def from_uac(cls, request: Request, response: Response, *, tls: bool = False) -> Dialog:
        """The dialog a UAC gets from a 1xx with a To tag or a 2xx to `request` (§12.1.2).

        `request` is ours and must carry a From tag and a Contact. The route set is the
        response's Record-Route reversed. A 1xx without Contact (common for 180) leaves the
        remote target at the Request-URI until the 2xx brings one; a 2xx without Contact is
        the peer's error.
        """
        cls._check_pair(request, response)
        local_tag = request.from_.tag
        if not local_tag:
            raise DialogError(f"our {request.method} has no From tag (§8.1.1.3)")
        remote_tag = response.to.tag or None
        if remote_tag is None and response.status < 200:
            raise DialogError(f"a {response.status} without To tag makes no dialog (§12.1)")
        local_target = _contact_uri(request)
        if local_target is None:
            raise DialogError(f"our {request.method} has no Contact (§8.1.1.8)")
        remote_target = _contact_uri(response)
        if remote_target is None:
            if response.status >= 200:
                raise RemoteProtocolError(f"{response.status} without Contact (§12.1.1)")
            remote_target = request.uri
        is_invite = request.method == Method.INVITE
        return cls(
            id=DialogId(request.call_id, local_tag, remote_tag),
            state=DialogState.CONFIRMED if response.status >= 200 else DialogState.EARLY,
            is_uas=False,
            local_party=request.from_,
            remote_party=response.to,
            local_target=local_target,
            remote_target=remote_target,
            route_set=tuple(reversed(_record_route(response))),
            local_cseq=request.cseq.number,
            remote_cseq=None,
            secure=_is_secure(request, tls),
            invite_cseq=request.cseq.number if is_invite else None,
        )

    @staticmethod
    def _check_pair(request: Request, response: Response) -> None:
        if not 101 <= response.status <= 299:
            raise DialogError(f"a {response.status} response does not create a dialog (§12.1)")
        if response.call_id != request.call_id or response.cseq != request.cseq:
            raise DialogError("the response does not answer this request")

    # -- sending requests (§12.2.1) -------------------------------------------------------

    def create_request(
        self,
        method: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        local_address: tuple[str, int],
        transport: str = "UDP",
        branch: str | None = None,
    ) -> Request:
        """Build an in-dialog request (RFC 3261 §12.2.1.1).

        The Request-URI and Route headers come from the remote target and route set (loose
        or strict routing), From/To/Call-ID from the dialog ID, and the CSeq is one more than
        the last one, except for ACK and CANCEL which reuse the last INVITE's number.
        `local_address` is the Via sent-by; `branch` defaults to a fresh one (pass the
        INVITE's for a CANCEL, §9.1). Target-refresh methods get our Contact unless
        `headers` has one. Sending BYE terminates the dialog (§15.1.1).
        """
        if method in (Method.ACK, Method.CANCEL):
            if self.invite_cseq is None:
                raise DialogError(f"{method} without an INVITE sent in this dialog")
            number = self.invite_cseq
            return self._build(method, number, headers, body, local_address, transport, branch)
        self._check_usable(method)
        number = 1 if self.local_cseq is None else self.local_cseq + 1
        if number > MAX_CSEQ:
            raise DialogError("local CSeq would pass 2**32-1")
        request = self._build(method, number, headers, body, local_address, transport, branch)
        self.local_cseq = number
        if method == Method.INVITE:
            self.invite_cseq = number
        elif method == Method.BYE:
            self.state = DialogState.TERMINATED
        return request

    def create_ack(
        self,
        invite_cseq: int | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        local_address: tuple[str, int],
        transport: str = "UDP",
    ) -> Request:
        """The ACK for a 2xx to our INVITE (RFC 3261 §13.2.2.4): same CSeq number, new branch.

        `invite_cseq` defaults to the last INVITE this dialog sent.
        """
        number = self.invite_cseq if invite_cseq is None else invite_cseq
        if number is None:
            raise DialogError("ACK without an INVITE sent in this dialog")
        if self.state is not DialogState.CONFIRMED:
            raise DialogError(f"ACK in a {self.state.name.lower()} dialog")
        return self._build(Method.ACK, number, headers, body, local_address, transport, None)

    def _check_usable(self, method: str) -> None:
        if self.state is DialogState.TERMINATED:
            raise DialogError(f"{method} in a terminated dialog")
        if method == Method.BYE and self.is_uas and self.state is DialogState.EARLY:
            raise DialogError("the callee must not send BYE in an early dialog (§15)")

    def _build(
        self,
        method: str,
        number: int,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        local_address: tuple[str, int],
        transport: str,
        branch: str | None,
    ) -> Request:
        if method == Method.ACK and self.state is not DialogState.CONFIRMED:
            raise DialogError(f"ACK in a {self.state.name.lower()} dialog")
        if method == Method.CANCEL and self.state is DialogState.TERMINATED:
            raise DialogError("CANCEL in a terminated dialog")
        extra = [(canonical_name(n), v) for n, v in headers]
        for name, _ in extra:
            if name in _OWN_HEADERS:
                raise DialogError(f"{name} is set by the dialog, not by the caller")
        host, port = local_address
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        via = Via(transport.upper(), host, port, (("branch", branch or new_branch()),))
        routes = list(self.route_set)
        if routes and not _is_loose(routes[0]):
            # Strict routing (§12.2.1.1): the first route becomes the Request-URI and the
            # remote target travels as the last Route.
            uri = _as_request_uri(routes[0].uri)
            routes = [*routes[1:], NameAddr(self.remote_target)]
        else:
            uri = _as_request_uri(self.remote_target)
        own: list[tuple[str, str]] = [("Via", str(via)), ("Max-Forwards", "70")]
        own.extend(("Route", str(route)) for route in routes)
        own += [
            ("From", str(self.local_party)),
            ("To", str(self.remote_party)),
            ("Call-ID", self.call_id),
            ("CSeq", f"{number} {method}"),
        ]
        if method in TARGET_REFRESH_METHODS and not any(n == "Contact" for n, _ in extra):
            own.append(("Contact", str(NameAddr(self.local_target))))
        return Request.build(method, uri, [*own, *extra], body)

    def terminate(self) -> None:
        """Mark the dialog terminated (a session timer, a transaction timeout, a local hangup)."""
        self.state = DialogState.TERMINATED

    # -- receiving (§12.2.1.2, §12.2.2) ---------------------------------------------------

    def receive_request(self, request: Request) -> DialogVerdict:
        """Check and apply an in-dialog request from the peer (RFC 3261 §12.2.2).

        Refuses a request of another dialog or of a terminated one (481) and a CSeq not
        above the last one (500); otherwise records the CSeq, applies a target refresh and
        terminates the dialog on BYE. ACK and CANCEL reuse the INVITE's number and are not
        checked against it.
        """
        if dialog_id_for_request(request, is_uas=True) != self.id:
            return DialogVerdict(SipStatus.CALL_DOES_NOT_EXIST, "not this dialog")
        if self.state is DialogState.TERMINATED:
            return DialogVerdict(SipStatus.CALL_DOES_NOT_EXIST, "dialog terminated")
        method = request.method
        if method in (Method.ACK, Method.CANCEL):
            return DialogVerdict()
        number = request.cseq.number
        if self.remote_cseq is not None and number <= self.remote_cseq:
            return DialogVerdict(
                SipStatus.SERVER_INTERNAL_ERROR,
                f"CSeq {number} is not above {self.remote_cseq}",
            )
        refreshed = False
        if method in TARGET_REFRESH_METHODS:
            try:
                target = _contact_uri(request)
            except RemoteProtocolError as exc:
                return DialogVerdict(SipStatus.BAD_REQUEST, str(exc))
            if target is not None:
                refreshed = target != self.remote_target
                self.remote_target = target
        self.remote_cseq = number
        if method == Method.BYE:
            self.state = DialogState.TERMINATED
            return DialogVerdict(is_bye=True)
        return DialogVerdict(target_refreshed=refreshed)

    def receive_response(self, response: Response) -> None:
        """Apply a response to a request we sent in this dialog (§12.2.1.2, §13.2.2.4).

        A 2xx to the INVITE confirms an early dialog, recomputing the route set and remote
        target from it; a non-2xx final to the INVITE of an early dialog terminates it, as
        does a 481 or 408 to any request. A 2xx to a target refresh takes its Contact. A
        late response to a terminated dialog is ignored.
        """
        if dialog_id_for_response(response) != self.id:
            raise DialogError("the response belongs to another dialog")
        if self.state is DialogState.TERMINATED:
            return
        status, method = response.status, response.cseq.method
        if status in (SipStatus.CALL_DOES_NOT_EXIST, SipStatus.REQUEST_TIMEOUT):
            self.state = DialogState.TERMINATED
            return
        if method == Method.INVITE and status >= 300 and self.state is DialogState.EARLY:
            self.state = DialogState.TERMINATED
            return
        if not 200 <= status <= 299:
            return
        if method == Method.INVITE and self.state is DialogState.EARLY:
            self.state = DialogState.CONFIRMED
            self.route_set = tuple(reversed(_record_route(response)))
        if method in TARGET_REFRESH_METHODS:
            target = _contact_uri(response)
            if target is not None:
                self.remote_target = target

    def sent_response(self, response: Response) -> None:
        """Apply a response we sent to the INVITE that created our UAS dialog (§12.1.1, §13.3.1).

        A 2xx confirms an early dialog; a non-2xx final response terminates it.
        """
        if dialog_id_for_response(response, is_uas=True) != self.id:
            raise DialogError("the response belongs to another dialog")
        if response.cseq.method != Method.INVITE or self.state is not DialogState.EARLY:
            return
        if 200 <= response.status <= 299:
            self.state = DialogState.CONFIRMED
        elif response.status >= 300:
            self.state = DialogState.TERMINATED
