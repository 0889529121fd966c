"""SIP, SIPS and tel URIs and name-addr values (RFC 3261 §19.1, §20.10, §25; RFC 3966).

Parsing is strict where the RFC 4475 torture tests ask for a 400 (spaces, unbracketed IPv6,
empty parameters) and liberal where they ask us to tolerate (odd case, LWS around `=`,
bracketed `received`). Every failure is a `RemoteProtocolError`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from pbx.errors import RemoteProtocolError

Params = tuple[tuple[str, str | None], ...]

# Character classes as compiled regexes: this runs for every message, and one regex match
# costs a fraction of a per-character generator.
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_HOST = re.compile(r"[A-Za-z0-9\-._]+")
_IPV6_REFERENCE = re.compile(r"\[[0-9A-Fa-f:.]+\]")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# RFC 3261 §25.1: characters a URI may carry unescaped (user, params and headers together);
# non-ASCII is tolerated.
_URI_BAD_CHAR = re.compile(r"[^A-Za-z0-9\-_.!~*'()%&=+$,;?/:@\[\]\x80-\U0010ffff]")


def is_digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²', which int() cannot read."""
    return text.isascii() and text.isdigit()


def is_token(text: str) -> bool:
    """RFC 3261 §25.1 `token`."""
    return _TOKEN.fullmatch(text) is not None


def split_params(text: str) -> Params:
    """Split `;name=value;flag` (leading `;` already removed) into ordered pairs.

    LWS around `=` and `;` is allowed (RFC 4475 wsinv). Quoted values keep their quotes.
    An empty element (`;;`) is an error (RFC 4475 badinv01).
    """
    out: list[tuple[str, str | None]] = []
    for part in split_outside_quotes(text, ";"):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not is_token(name):
            raise RemoteProtocolError(f"bad parameter {part.strip()!r}")
        if eq:
            value = value.strip()
            if not value:
                raise RemoteProtocolError(f"parameter {name!r} has an empty value")
            out.append((name, value))
        else:
            out.append((name, None))
    return tuple(out)


def split_outside_quotes(text: str, sep: str, angle: bool = False) -> list[str]:
    """Split on `sep` outside double quotes (and outside `<...>` when `angle`)."""
    if '"' not in text and (sep not in text or not angle or "<" not in text):
        return text.split(sep)
    parts: list[str] = []
    start = 0
    quoted = False
    depth = 0
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif angle and c == "<":
            depth += 1
        elif angle and c == ">":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if quoted:
        raise RemoteProtocolError("unterminated quoted string")
    parts.append(text[start:])
    return parts


def format_params(params: Params) -> str:
    return "".join(f";{k}={v}" if v is not None else f";{k}" for k, v in params)


def param(params: Params, name: str) -> str | None:
    """The value of the first parameter called `name` (case-insensitive); None if absent."""
    lname = name.lower()
    for k, v in params:
        if k.lower() == lname:
            return v
    return None


def has_param(params: Params, name: str) -> bool:
    lname = name.lower()
    return any(k.lower() == lname for k, _ in params)


def parse_host(text: str) -> str:
    """Validate a host: hostname, IPv4 or a bracketed IPv6 reference (kept with brackets)."""
    if not text:
        raise RemoteProtocolError("empty host")
    if text[0] == "[":
        if _IPV6_REFERENCE.fullmatch(text) is None:
            raise RemoteProtocolError(f"bad IPv6 reference {text!r}")
        return text
    if _HOST.fullmatch(text) is None:
        raise RemoteProtocolError(f"bad host {text!r}")
    return text


def split_hostport(text: str) -> tuple[str, int | None]:
    """`host[:port]` with IPv6 references in brackets (RFC 3261 §25.1 hostport)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise RemoteProtocolError(f"bad IPv6 reference {text!r}")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise RemoteProtocolError(f"bad hostport {text!r}")
        port_text = rest[1:] if rest else ""
        has_port = bool(rest)
    else:
        host, colon, port_text = text.partition(":")
        has_port = bool(colon)
    port: int | None = None
    if has_port:
        if not is_digits(port_text) or len(port_text) > 5 or int(port_text) > 65535:
            raise RemoteProtocolError(f"bad port in {text!r}")
        port = int(port_text)
    return parse_host(host), port


def normalize_escapes(text: str) -> str:
    """Canonical form of an escaped string for comparison (RFC 3261 §19.1.4).

    Unreserved characters are unescaped, everything else stays escaped with upper-case hex,
    so `%00` survives (RFC 4475 escnull: the AOR must not be cut at the NUL).
    """
    if "%" not in text:
        return text
    raw = unquote_to_bytes(text)
    out = []
    for b in raw:
        c = chr(b)
        if c.isascii() and (c.isalnum() or c in "-_.!~*'()&=+$,;?/"):
            out.append(c)
        else:
            out.append(f"%{b:02X}")
    return "".join(out)


def unescape(text: str) -> str:
    """Decode %HH escapes as UTF-8 (lone invalid bytes become U+FFFD)."""
    if "%" not in text:
        return text
    return unquote_to_bytes(text).decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class SipUri:
    """A sip: or sips: URI (RFC 3261 §19.1). `user` and `params` are kept as written."""

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(format_params(self.params))
        if self.headers:
            out.append("?" + "&".join(f"{k}={v}" for k, v in self.headers))
        return "".join(out)

    def param(self, name: str) -> str | None:
        return param(self.params, name)

    @property
    def transport(self) -> str | None:
        value = param(self.params, "transport")
        return value.lower() if value else None

    def aor(self) -> str:
        """The address-of-record key: scheme, user and host, compared as RFC 3261 §10.3 says."""
        user = normalize_escapes(self.user) if self.user is not None else ""
        scheme = "sip" if self.scheme == "sips" else self.scheme
        return f"{scheme}:{user}@{self.host.lower()}" if user else f"{scheme}:{self.host.lower()}"


@dataclass(frozen=True, slots=True)
class TelUri:
    """A tel: URI (RFC 3966): the number and its parameters."""

    number: str
    params: Params = ()
    scheme: str = "tel"

    def __str__(self) -> str:
        return f"tel:{self.number}{format_params(self.params)}"


@dataclass(frozen=True, slots=True)
class AbsoluteUri:
    """Any other scheme (RFC 3261 §25.1 absoluteURI): well-formed, but nothing we route."""

    scheme: str
    rest: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"


Uri = SipUri | TelUri | AbsoluteUri


def parse_uri(text: str) -> Uri:
    """Parse a URI. sip/sips/tel are fully parsed; other schemes are checked and kept."""
    scheme, colon, rest = text.partition(":")
    if not colon or _SCHEME.fullmatch(scheme) is None:
        raise RemoteProtocolError(f"bad URI {text!r}")
    if _URI_BAD_CHAR.search(rest) is not None:
        raise RemoteProtocolError(f"bad character in URI {text!r}")
    lscheme = scheme.lower()
    if lscheme in ("sip", "sips"):
        return _parse_sip_uri(lscheme, rest, text)
    if lscheme == "tel":
        number, _, params = rest.partition(";")
        if not number:
            raise RemoteProtocolError(f"bad tel URI {text!r}")
        return TelUri(number, split_params(params) if params else ())
    if not rest:
        raise RemoteProtocolError(f"bad URI {text!r}")
    return AbsoluteUri(lscheme, rest)


def _parse_sip_uri(scheme: str, rest: str, text: str) -> SipUri:
    user: str | None = None
    password: str | None = None
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, pw = userinfo.partition(":")
        if colon:
            password = pw
        if not user:
            raise RemoteProtocolError(f"empty user in {text!r}")
    rest, qmark, header_text = rest.partition("?")
    hostport, semi, param_text = rest.partition(";")
    host, port = split_hostport(hostport)
    params = split_params(param_text) if semi else ()
    headers: tuple[tuple[str, str], ...] = ()
    if qmark:
        pairs = []
        for item in header_text.split("&"):
            name, eq, value = item.partition("=")
            if not name or not eq:
                raise RemoteProtocolError(f"bad URI header in {text!r}")
            pairs.append((name, value))
        headers = tuple(pairs)
    return SipUri(scheme, user, password, host, port, params, headers)


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A From/To/Contact/Route value: optional display name, URI, header parameters."""

    uri: Uri
    display_name: str | None = None
    params: Params = ()
    bracketed: bool = True

    def __str__(self) -> str:
        if self.display_name is not None:
            head = f"{quote(self.display_name)} <{self.uri}>"
        else:
            head = f"<{self.uri}>"
        return head + format_params(self.params)

    @property
    def tag(self) -> str | None:
        return param(self.params, "tag")

    def param(self, name: str) -> str | None:
        return param(self.params, name)

    def with_param(self, name: str, value: str | None) -> NameAddr:
        kept = tuple(p for p in self.params if p[0].lower() != name.lower())
        return NameAddr(self.uri, self.display_name, (*kept, (name, value)), self.bracketed)


def quote(text: str) -> str:
    """A quoted-string for a display name (RFC 3261 §25.1)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unquote(text: str) -> str:
    out = []
    i = 1
    end = len(text) - 1
    while i < end:
        c = text[i]
        if c == "\\" and i + 1 < end:
            i += 1
            c = text[i]
        out.append(c)
        i += 1
    return "".join(out)


def parse_name_addr(text: str) -> NameAddr:
    """Parse `"Name" <uri>;params`, `Name <uri>;params` or `uri;params` (RFC 3261 §20.10)."""
    text = text.strip()
    if not text:
        raise RemoteProtocolError("empty address")
    display: str | None = None
    if text[0] == '"':
        i = 1
        n = len(text)
        while i < n:
            c = text[i]
            if c == "\\":
                i += 2
                continue
            if c == '"':
                break
            i += 1
        else:
            raise RemoteProtocolError("unterminated quoted display name")
        display = _unquote(text[: i + 1])
        text = text[i + 1 :].lstrip()
        if not text.startswith("<"):
            raise RemoteProtocolError("display name without <URI>")
    lt = text.find("<")
    if lt >= 0:
        if display is None and lt > 0:
            words = text[:lt].split()
            if not all(is_token(w) for w in words):
                raise RemoteProtocolError(f"display name {text[:lt].strip()!r} must be quoted")
            display = " ".join(words)
        gt = text.find(">", lt)
        if gt < 0:
            raise RemoteProtocolError("unterminated <URI>")
        uri = parse_uri(text[lt + 1 : gt])
        rest = text[gt + 1 :].strip()
        bracketed = True
    else:
        # addr-spec form: anything after ';' is a header parameter, never a URI parameter,
        # and '?' or ',' cannot appear (RFC 3261 §20: such URIs must be in <>).
        uri_text, semi, params_part = text.partition(";")
        uri_text = uri_text.strip()
        if "?" in uri_text or "," in uri_text or " " in uri_text:
            raise RemoteProtocolError(f"URI {uri_text!r} must be enclosed in <>")
        uri = parse_uri(uri_text)
        rest = ";" + params_part if semi else ""
        bracketed = False
    params: Params = ()
    if rest:
        if rest[0] != ";":
            raise RemoteProtocolError(f"unexpected text after address: {rest!r}")
        params = split_params(rest[1:])
    return NameAddr(uri, display, params, bracketed)


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address a host names, if it is a literal (brackets allowed)."""
    try:
        return ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return None
