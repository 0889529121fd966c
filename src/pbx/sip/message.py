"""SIP messages (RFC 3261 §7, §20, §25): typed core headers, everything else kept verbatim.

A message keeps *all* its headers as an ordered tuple of `(name, value)` pairs exactly as
received (known names in canonical long form, unknown names as written), so a B2BUA can
pass them through losslessly. The headers every layer needs (Via, From, To, Call-ID, CSeq,
Max-Forwards) are also parsed into typed fields once, when the message is built.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pbx.errors import LocalProtocolError, RemoteProtocolError, SipStatus, reason_phrase
from pbx.sip.uri import (
    NameAddr,
    Params,
    SipUri,
    Uri,
    format_params,
    has_param,
    is_digits,
    is_token,
    param,
    parse_name_addr,
    parse_uri,
    split_hostport,
    split_outside_quotes,
    split_params,
)

Headers = tuple[tuple[str, str], ...]

SIP_VERSION = "SIP/2.0"
MAX_CSEQ = 2**32 - 1


class Method(StrEnum):
    INVITE = "INVITE"
    ACK = "ACK"
    BYE = "BYE"
    CANCEL = "CANCEL"
    OPTIONS = "OPTIONS"
    REGISTER = "REGISTER"
    PRACK = "PRACK"
    SUBSCRIBE = "SUBSCRIBE"
    NOTIFY = "NOTIFY"
    PUBLISH = "PUBLISH"
    INFO = "INFO"
    REFER = "REFER"
    MESSAGE = "MESSAGE"
    UPDATE = "UPDATE"


KNOWN_METHODS = frozenset(m.value for m in Method)

# Canonical long names, keyed by lower-case long and compact forms (RFC 3261 §7.3.3, IANA).
_CANONICAL: dict[str, str] = {}
for _name in (
    "Accept Accept-Contact Accept-Encoding Accept-Language Alert-Info Allow Allow-Events "
    "Authentication-Info Authorization Call-ID Call-Info Contact Content-Disposition "
    "Content-Encoding Content-Language Content-Length Content-Type CSeq Date Error-Info Event "
    "Expires From In-Reply-To Max-Forwards Min-Expires MIME-Version Organization "
    "P-Asserted-Identity Priority Proxy-Authenticate Proxy-Authorization Proxy-Require RAck "
    "Reason Record-Route Refer-To Referred-By Replaces Reply-To Require Retry-After Route RSeq "
    "Server Session-Expires Subject Subscription-State Supported Timestamp To Unsupported "
    "User-Agent Via Warning WWW-Authenticate Path Min-SE"
).split():
    _CANONICAL[_name.lower()] = _name
for _compact, _name in {
    "v": "Via", "f": "From", "t": "To", "i": "Call-ID", "m": "Contact", "l": "Content-Length",
    "c": "Content-Type", "e": "Content-Encoding", "s": "Subject", "k": "Supported",
    "o": "Event", "u": "Allow-Events", "r": "Refer-To", "b": "Referred-By",
    "x": "Session-Expires", "a": "Accept-Contact",
}.items():  # fmt: skip
    _CANONICAL[_compact] = _name

# Headers whose value is a comma-separated list (RFC 3261 §7.3.1).
LIST_HEADERS = frozenset(
    "Via Contact Route Record-Route Allow Supported Require Proxy-Require Unsupported Accept "
    "Accept-Encoding Accept-Language Allow-Events Path Warning".split()
)


def canonical_name(name: str) -> str:
    """The canonical spelling of a header name; unknown names are returned unchanged."""
    return _CANONICAL.get(name.lower(), name)


# Tags and branches must be unique, not secret (RFC 3261 §19.3): a PRNG seeded from the OS
# costs a fraction of an os.urandom() system call per message.
_unique = random.Random(os.urandom(32))


def new_branch() -> str:
    """A fresh RFC 3261 magic-cookie branch (§8.1.1.7)."""
    return f"z9hG4bK{_unique.getrandbits(80):020x}"


def new_tag() -> str:
    """A fresh From/To tag with 48 random bits (§19.3 asks for at least 32)."""
    return f"{_unique.getrandbits(48):012x}"


@dataclass(frozen=True, slots=True)
class Via:
    """One Via value (RFC 3261 §20.42)."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{format_params(self.params)}"

    @property
    def branch(self) -> str | None:
        return param(self.params, "branch")

    @property
    def received(self) -> str | None:
        value = param(self.params, "received")
        # RFC 5118 §4.5: tolerate a bracketed IPv6 'received' although senders must not.
        if value and value.startswith("[") and value.endswith("]"):
            return value[1:-1]
        return value

    @property
    def rport(self) -> int | None:
        value = param(self.params, "rport")
        return int(value) if value and is_digits(value) else None

    @property
    def wants_rport(self) -> bool:
        return has_param(self.params, "rport")

    def with_received(self, host: str, port: int) -> Via:
        """RFC 3261 §18.2.1 + RFC 3581: record where the request really came from."""
        params: list[tuple[str, str | None]] = []
        for k, v in self.params:
            lk = k.lower()
            if lk in ("received",):
                continue
            if lk == "rport":
                params.append((k, str(port)))
                continue
            params.append((k, v))
        sent_by = self.host[1:-1] if self.host.startswith("[") else self.host
        if sent_by != host or has_param(self.params, "rport"):
            params.append(("received", host))
        return Via(self.transport, self.host, self.port, tuple(params))


def parse_via(text: str) -> Via:
    """Parse one via-parm; LWS is allowed around `/` (RFC 4475 wsinv)."""
    proto, sep, rest = text.partition("/")
    version, sep2, rest = rest.partition("/")
    if not sep or not sep2 or proto.strip().upper() != "SIP" or version.strip() != "2.0":
        raise RemoteProtocolError(f"bad Via {text.strip()!r}")
    rest = rest.lstrip()
    space = 0
    while space < len(rest) and rest[space] not in " \t":
        space += 1
    transport = rest[:space]
    if not is_token(transport):
        raise RemoteProtocolError(f"bad Via transport in {text.strip()!r}")
    sent_by, semi, param_text = rest[space:].partition(";")
    sent_by = sent_by.strip()
    if not sent_by:
        raise RemoteProtocolError(f"Via without sent-by: {text.strip()!r}")
    host, port = split_hostport(sent_by.replace(" ", ""))
    params = split_params(param_text) if semi else ()
    return Via(transport.upper(), host, port, params)


@dataclass(frozen=True, slots=True)
class CSeq:
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(text: str) -> CSeq:
    parts = text.split()
    if len(parts) != 2 or not is_digits(parts[0]) or not is_token(parts[1]):
        raise RemoteProtocolError(f"bad CSeq {text[:40]!r}")
    if len(parts[0]) > 10:  # also keeps int() away from Python's digit limit
        raise RemoteProtocolError(f"CSeq {parts[0][:20]}... is larger than 2**32-1")
    number = int(parts[0])
    if number > MAX_CSEQ:
        raise RemoteProtocolError(f"CSeq {parts[0]} is larger than 2**32-1")
    return CSeq(number, parts[1])


def split_list(value: str) -> list[str]:
    """Split a list header on commas outside quotes and angle brackets; empty items fail."""
    items = [v.strip() for v in split_outside_quotes(value, ",", angle=True)]
    if any(not v for v in items):
        raise RemoteProtocolError(f"empty element in list {value!r}")
    return items


@dataclass(frozen=True, slots=True)
class _Core:
    vias: tuple[Via, ...]
    from_: NameAddr
    to: NameAddr
    call_id: str
    cseq: CSeq
    max_forwards: int | None


def _core_fields(headers: Headers) -> _Core:
    vias: list[Via] = []
    singles: dict[str, str] = {}
    for name, value in headers:
        if name == "Via":
            vias.extend(parse_via(v) for v in split_list(value))
        elif name in ("From", "To", "Call-ID", "CSeq", "Max-Forwards"):
            if name in singles:
                raise RemoteProtocolError(f"more than one {name} header")
            singles[name] = value
    missing = [n for n in ("From", "To", "Call-ID", "CSeq") if n not in singles]
    if not vias:
        missing.insert(0, "Via")
    if missing:
        raise RemoteProtocolError("missing " + ", ".join(missing))
    call_id = singles["Call-ID"].strip()
    if not call_id or any(c in " \t" for c in call_id):
        raise RemoteProtocolError(f"bad Call-ID {call_id!r}")
    max_forwards: int | None = None
    if "Max-Forwards" in singles:
        mf = singles["Max-Forwards"].strip()
        if not is_digits(mf):
            raise RemoteProtocolError(f"bad Max-Forwards {mf!r}")
        # RFC 4475 scalar02: an overlarge value may be treated as absent.
        max_forwards = int(mf) if len(mf) < 6 and int(mf) <= 255 else None
    return _Core(
        tuple(vias),
        parse_name_addr(singles["From"]),
        parse_name_addr(singles["To"]),
        call_id,
        parse_cseq(singles["CSeq"]),
        max_forwards,
    )


@dataclass(frozen=True, slots=True)
class _Message:
    headers: Headers
    body: bytes
    vias: tuple[Via, ...]
    from_: NameAddr
    to: NameAddr
    call_id: str
    cseq: CSeq
    max_forwards: int | None

    def header(self, name: str) -> str | None:
        """The first value of a header (by canonical or any-case name), or None."""
        canon = _CANONICAL.get(name.lower())
        if canon is not None:  # known names are stored canonical: no case folding needed
            for n, v in self.headers:
                if n == canon:
                    return v
            return None
        lname = name.lower()
        for n, v in self.headers:
            if n.lower() == lname:
                return v
        return None

    def headers_named(self, name: str) -> list[str]:
        """Every occurrence of a header, each as written (not comma-split)."""
        canon = _CANONICAL.get(name.lower())
        if canon is not None:
            return [v for n, v in self.headers if n == canon]
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]

    def list_values(self, name: str) -> list[str]:
        """All elements of a list header across occurrences (RFC 3261 §7.3.1)."""
        out: list[str] = []
        for value in self.headers_named(name):
            if value.strip():
                out.extend(split_list(value))
        return out

    def _head_lines(self) -> list[str]:
        lines = []
        has_length = False
        for n, v in self.headers:
            if n == "Content-Length":
                if has_length:
                    continue
                has_length = True
                v = str(len(self.body))
            lines.append(f"{n}: {v}")
        if not has_length:
            lines.append(f"Content-Length: {len(self.body)}")
        return lines


@dataclass(frozen=True, slots=True, kw_only=True)
class Request(_Message):
    method: str
    uri: Uri

    @classmethod
    def build(
        cls, method: str, uri: Uri, headers: Iterable[tuple[str, str]], body: bytes = b""
    ) -> Request:
        """Make a request from headers; the typed fields are parsed from them."""
        hdrs = tuple((canonical_name(n), v) for n, v in headers)
        try:
            core = _core_fields(hdrs)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(f"cannot build {method}: {exc}") from exc
        return cls(
            hdrs, body, core.vias, core.from_, core.to, core.call_id, core.cseq,
            core.max_forwards, method=method, uri=uri,
        )  # fmt: skip

    def encode(self) -> bytes:
        lines = [f"{self.method} {self.uri} {SIP_VERSION}", *self._head_lines(), "", ""]
        return "\r\n".join(lines).encode() + self.body

    def with_top_via(self, via: Via) -> Request:
        """A copy whose first Via value is `via` (raw text of the others is kept)."""
        headers = list(self.headers)
        for i, (n, v) in enumerate(headers):
            if n == "Via":
                rest = split_list(v)[1:]
                headers[i] = ("Via", ", ".join([str(via), *rest]))
                break
        return Request(
            tuple(headers), self.body, (via, *self.vias[1:]), self.from_, self.to,
            self.call_id, self.cseq, self.max_forwards, method=self.method, uri=self.uri,
        )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Response(_Message):
    status: int
    reason: str

    def encode(self) -> bytes:
        lines = [f"{SIP_VERSION} {self.status} {self.reason}", *self._head_lines(), "", ""]
        return "\r\n".join(lines).encode() + self.body


Message = Request | Response


def build_response(
    request: Request,
    status: int,
    reason: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    to_tag: str | None = None,
) -> Response:
    """A response to `request` (RFC 3261 §8.2.6): Via, From, To, Call-ID, CSeq copied.

    `to_tag` is added to To unless the request already carries one (or for 100 Trying).
    """
    to_value = request.header("To") or str(request.to)
    to = request.to
    if to_tag and status > 100 and to.tag is None:
        to_value = f"{to_value};tag={to_tag}"
        to = to.with_param("tag", to_tag)
    own: list[tuple[str, str]] = [(n, v) for n, v in request.headers if n == "Via"]
    own.append(("From", request.header("From") or str(request.from_)))
    own.append(("To", to_value))
    own.append(("Call-ID", request.call_id))
    own.append(("CSeq", str(request.cseq)))
    own.extend((canonical_name(n), v) for n, v in headers)
    own.append(("Content-Length", str(len(body))))
    return Response(
        tuple(own), body, request.vias, request.from_, to, request.call_id, request.cseq,
        request.max_forwards, status=status,
        reason=reason if reason is not None else reason_phrase(status),
    )  # fmt: skip


def build_ack(invite: Request, response: Response) -> Request:
    """The ACK of a non-2xx final response, built by the client transaction (§17.1.1.3):
    like the INVITE, but with the To of the response (its tag)."""
    return _same_transaction(invite, Method.ACK, response.header("To") or str(response.to))


def build_cancel(invite: Request) -> Request:
    """The CANCEL of a pending INVITE (RFC 3261 §9.1)."""
    return _same_transaction(invite, Method.CANCEL, invite.header("To") or str(invite.to))


def _same_transaction(invite: Request, method: Method, to: str) -> Request:
    """A request that matches the INVITE's client transaction: same Request-URI, top Via,
    From, Call-ID, CSeq number and Route headers; `to` is the To value to carry."""
    headers: list[tuple[str, str]] = [("Via", str(invite.vias[0]))]
    headers.append(("Max-Forwards", "70"))
    headers.append(("From", invite.header("From") or str(invite.from_)))
    headers.append(("To", to))
    headers.append(("Call-ID", invite.call_id))
    headers.append(("CSeq", f"{invite.cseq.number} {method}"))
    headers.extend(("Route", value) for value in invite.headers_named("Route"))
    return Request.build(method, invite.uri, headers)


def parse_contacts(message: _Message) -> tuple[NameAddr, ...] | Literal["*"]:
    """The Contact values, or "*" for the wildcard of RFC 3261 §10.2.2."""
    values = message.list_values("Contact")
    if len(values) == 1 and values[0] == "*":
        return "*"
    if "*" in values:
        raise RemoteProtocolError("Contact: * must be the only contact")
    return tuple(parse_name_addr(v) for v in values)


def _split_head(data: bytes) -> tuple[bytes, bytes, bool]:
    """(head, rest, terminated) where head ends before the empty line."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf + 1 <= lf):
        return data[:crlf], data[crlf + 4 :], True
    if lf >= 0:
        return data[:lf], data[lf + 2 :], True
    return data, b"", False


# RFC 3261 §7.3.1: a continuation line starts with whitespace and joins the previous line.
# No leading [ \t]* here: with one, a long run of spaces backtracks quadratically (a
# single 60 KB datagram froze the loop for 12 s); trailing spaces are stripped per header.
_FOLD = re.compile(r"\r?\n[ \t]+")


def content_length(headers: Headers) -> int | None:
    """The Content-Length, or None if absent; conflicting or negative values fail (mcl01)."""
    value: int | None = None
    for n, v in headers:
        if n == "Content-Length":
            text = v.strip()
            if not is_digits(text) or len(text) > 9:
                raise RemoteProtocolError(f"bad Content-Length {text!r}")
            if value is not None and value != int(text):
                raise RemoteProtocolError("conflicting Content-Length headers")
            value = int(text)
    return value


def parse_head(head: bytes) -> tuple[str, Headers]:
    """Decode and unfold a header section: (start line, headers)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("message header is not UTF-8") from None
    text = text.lstrip("\r\n")
    if text[:1] in (" ", "\t"):
        raise RemoteProtocolError("message starts with whitespace")
    if "\n " in text or "\n\t" in text:
        text = _FOLD.sub(" ", text)
    lines = text.split("\n")
    start = lines[0].removesuffix("\r")
    headers: list[tuple[str, str]] = []
    is_name = is_token
    canonical = _CANONICAL.get
    for line in lines[1:]:
        # str.partition is several times faster than one regex over a long value.
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not is_name(name):
            if line in ("", "\r"):
                continue
            raise RemoteProtocolError(f"bad header line {line[:60]!r}")
        headers.append((canonical(name.lower(), name), value.strip(" \t\r")))
    return start, tuple(headers)


def parse_message(data: bytes, *, datagram: bool = True) -> Message:
    """Parse one SIP message (RFC 3261 §7).

    For a datagram the body is framed by Content-Length when present (extra octets are
    ignored, too few is an error), otherwise it runs to the end (RFC 3261 §18.3). Raises
    `RemoteProtocolError` carrying the status to answer with, and nothing else.
    """
    head, rest, _ = _split_head(data)
    if not head.strip():
        raise RemoteProtocolError("empty message")
    start, headers = parse_head(head)
    length = content_length(headers)
    if length is None:
        if not datagram:
            raise RemoteProtocolError("Content-Length is required on a stream")
        body = rest
    elif length > len(rest):
        raise RemoteProtocolError(
            f"Content-Length {length} is larger than the body ({len(rest)} octets)"
        )
    else:
        body = rest[:length]
    if start.startswith("SIP/"):
        return _parse_response(start, headers, body)
    return _parse_request(start, headers, body)


def _parse_request(start: str, headers: Headers, body: bytes) -> Request:
    parts = start.split(" ")
    if len(parts) != 3 or not all(parts):
        raise RemoteProtocolError(f"bad request line {start[:80]!r}")
    method, uri_text, version = parts
    if not is_token(method):
        raise RemoteProtocolError(f"bad method {method[:40]!r}")
    if version.upper() != SIP_VERSION:
        if version.upper().startswith("SIP/"):
            raise RemoteProtocolError(
                f"unsupported version {version}", SipStatus.VERSION_NOT_SUPPORTED
            )
        raise RemoteProtocolError(f"bad request line {start[:80]!r}")
    uri = parse_uri(uri_text)
    if isinstance(uri, SipUri) and uri.headers:
        # RFC 4475 escruri: headers in a Request-URI are not allowed.
        raise RemoteProtocolError("Request-URI carries headers")
    core = _core_fields(headers)
    if core.cseq.method != method:
        status = SipStatus.NOT_IMPLEMENTED if method not in KNOWN_METHODS else SipStatus.BAD_REQUEST
        raise RemoteProtocolError(f"CSeq method {core.cseq.method} does not match {method}", status)
    return Request(
        headers, body, core.vias, core.from_, core.to, core.call_id, core.cseq,
        core.max_forwards, method=method, uri=uri,
    )  # fmt: skip


def _parse_response(start: str, headers: Headers, body: bytes) -> Response:
    version, _, rest = start.partition(" ")
    code, _, reason = rest.partition(" ")
    if version.upper() != SIP_VERSION:
        raise RemoteProtocolError(f"unsupported version {version}", SipStatus.VERSION_NOT_SUPPORTED)
    if len(code) != 3 or not is_digits(code) or not 100 <= int(code) <= 699:
        raise RemoteProtocolError(f"bad status code {code[:20]!r}")
    core = _core_fields(headers)
    return Response(
        headers, body, core.vias, core.from_, core.to, core.call_id, core.cseq,
        core.max_forwards, status=int(code), reason=reason,
    )  # fmt: skip
