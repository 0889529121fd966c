"""SDP session descriptions (RFC 4566): parse, inspect, build and serialize.

The model keeps every field RFC 4566 defines, typed where a later RFC 3264 offer/answer
layer reads it (ports, connection addresses, formats) and raw where it does not (`r=`,
`z=`, `k=`, attribute values), so `parse_sdp(sd.encode()) == sd` holds for every parsed
description.

Parsing is strict about what would make the description ambiguous (line syntax, numbers,
missing `v=`/`o=`/`s=`, unknown type letters, which RFC 4566 §5 says make the whole
description unusable) and liberal about the rest: lines may come in any order inside the
session or a media section, blank lines and bare-LF endings are accepted, `t=` may be
missing, and attribute values are only interpreted when asked for, where a malformed one is
skipped rather than failing the call. Every failure is a `RemoteProtocolError`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, replace
from enum import StrEnum

from pbx.errors import LocalProtocolError, RemoteProtocolError

# Numbers are matched with a regex rather than str.isdigit(), which accepts non-ASCII digits
# such as "²" that int() then rejects; the length cap keeps int() below its digit limit.
_NUMBER = re.compile(r"[0-9]{1,20}")
_MAX_PORT = 65535


class Direction(StrEnum):
    """Media direction attributes (RFC 4566 §6, RFC 3264 §5.1)."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"


_DIRECTIONS = {d.value: d for d in Direction}


@dataclass(frozen=True, slots=True)
class Origin:
    """`o=` (RFC 4566 §5.2).

    `sess_id` stays a string: it is only ever compared, and some UAs send more digits than
    64 bits hold. `sess_version` is an int because RFC 3264 §8 increments it.
    """

    username: str
    sess_id: str
    sess_version: int
    nettype: str
    addrtype: str
    address: str


@dataclass(frozen=True, slots=True)
class Connection:
    """`c=` (RFC 4566 §5.7). `ttl` is IPv4 multicast only; `count` is the address count."""

    nettype: str
    addrtype: str
    address: str
    ttl: int | None = None
    count: int | None = None

    @classmethod
    def for_address(cls, address: str) -> Connection:
        """`IN IP4 address` or `IN IP6 address` (unbracketed), chosen by the address."""
        return cls("IN", "IP6" if ":" in address else "IP4", address)


@dataclass(frozen=True, slots=True)
class Bandwidth:
    """`b=<bwtype>:<bandwidth>` (RFC 4566 §5.8), e.g. `AS` in kbit/s or `TIAS` in bit/s."""

    type: str
    bandwidth: int


@dataclass(frozen=True, slots=True)
class Timing:
    """`t=` with its `r=` lines (RFC 4566 §5.9, §5.10). `0 0` means unbounded."""

    start: int
    stop: int
    repeats: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Attribute:
    """`a=<name>[:<value>]` (RFC 4566 §5.13). `value` is None for a property attribute."""

    name: str
    value: str | None = None


@dataclass(frozen=True, slots=True)
class RtpMap:
    """An `a=rtpmap` entry or a static payload type (RFC 4566 §6, RFC 3551 §6)."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int = 1

    def to_attribute(self) -> Attribute:
        """The `a=rtpmap` attribute; the channel count is omitted when it is 1 (§6)."""
        params = f"/{self.channels}" if self.channels != 1 else ""
        return Attribute("rtpmap", f"{self.payload_type} {self.encoding}/{self.clock_rate}{params}")


def _static(pt: int, encoding: str, clock_rate: int, channels: int = 1) -> tuple[int, RtpMap]:
    return pt, RtpMap(pt, encoding, clock_rate, channels)


# RFC 3551 §6 tables 4 and 5: these resolve without an rtpmap.
STATIC_PAYLOAD_TYPES: Mapping[int, RtpMap] = dict(
    [
        _static(0, "PCMU", 8000), _static(3, "GSM", 8000), _static(4, "G723", 8000),
        _static(5, "DVI4", 8000), _static(6, "DVI4", 16000), _static(7, "LPC", 8000),
        _static(8, "PCMA", 8000), _static(9, "G722", 8000), _static(10, "L16", 44100, 2),
        _static(11, "L16", 44100), _static(12, "QCELP", 8000), _static(13, "CN", 8000),
        _static(14, "MPA", 90000), _static(15, "G728", 8000), _static(16, "DVI4", 11025),
        _static(17, "DVI4", 22050), _static(18, "G729", 8000), _static(25, "CelB", 90000),
        _static(26, "JPEG", 90000), _static(28, "nv", 90000), _static(31, "H261", 90000),
        _static(32, "MPV", 90000), _static(33, "MP2T", 90000), _static(34, "H263", 90000),
    ]
)  # fmt: skip


class _Attributes:
    """Attribute lookups shared by the session and media levels.

    Names match case-insensitively: T.38 attribute names arrive in several spellings
    (`T38FaxVersion`, `T38faxVersion`), and RFC 4566 §5.13 asks us to be tolerant.
    """

    __slots__ = ()
    attributes: tuple[Attribute, ...]

    def attributes_named(self, name: str) -> tuple[str | None, ...]:
        """The values of every attribute called `name`, in order (None for a property)."""
        key = name.lower()
        return tuple(a.value for a in self.attributes if a.name.lower() == key)

    def attribute(self, name: str) -> str | None:
        """The first value of `name`, or None if absent or a property (see has_attribute)."""
        key = name.lower()
        return next((a.value for a in self.attributes if a.name.lower() == key), None)

    def has_attribute(self, name: str) -> bool:
        key = name.lower()
        return any(a.name.lower() == key for a in self.attributes)

    @property
    def direction(self) -> Direction | None:
        """The direction attribute written at this level, or None (RFC 4566 §6)."""
        for a in self.attributes:
            found = _DIRECTIONS.get(a.name.lower())
            if found is not None:
                return found
        return None

    def _attributes_with_direction(self, direction: Direction | None) -> tuple[Attribute, ...]:
        kept = tuple(a for a in self.attributes if a.name.lower() not in _DIRECTIONS)
        return kept if direction is None else (*kept, Attribute(direction.value))


def _small_int(text: str) -> int | None:
    return int(text) if _NUMBER.fullmatch(text) else None


@dataclass(frozen=True, slots=True)
class MediaDescription(_Attributes):
    """One media section, `m=` and the lines under it (RFC 4566 §5.14).

    `formats` are strings because only RTP profiles use payload type numbers (`udptl`
    carries `t38`). `direction` here is only what this section says; use
    `SessionDescription.direction_for()` for the effective one.
    """

    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    _: KW_ONLY
    port_count: int | None = None
    information: str | None = None
    connection: Connection | None = None
    bandwidths: tuple[Bandwidth, ...] = ()
    key: str | None = None
    attributes: tuple[Attribute, ...] = ()

    @classmethod
    def rtp(
        cls,
        media: str,
        port: int,
        codecs: Sequence[RtpMap],
        *,
        proto: str = "RTP/AVP",
        fmtp: Mapping[int, str] | None = None,
        ptime: int | None = None,
        direction: Direction | None = None,
        connection: Connection | None = None,
    ) -> MediaDescription:
        """An RTP media section offering `codecs` in preference order.

        Static payload types get an rtpmap too: RFC 3264 §5.1 recommends it, and some
        gateways look for one.
        """
        attributes = [c.to_attribute() for c in codecs]
        attributes += [Attribute("fmtp", f"{pt} {p}") for pt, p in (fmtp or {}).items()]
        if ptime is not None:
            attributes.append(Attribute("ptime", str(ptime)))
        if direction is not None:
            attributes.append(Attribute(direction.value))
        formats = tuple(str(c.payload_type) for c in codecs)
        return cls(media, port, proto, formats, connection=connection, attributes=tuple(attributes))

    @property
    def payload_types(self) -> tuple[int, ...]:
        """The numeric formats, in preference order."""
        return tuple(pt for f in self.formats if (pt := _small_int(f)) is not None)

    @property
    def rtpmaps(self) -> dict[int, RtpMap]:
        """Payload type -> RtpMap for each numeric format, in m= (preference) order.

        An `a=rtpmap` wins over the RFC 3551 static table; a format with neither, and a
        malformed rtpmap, are left out rather than failing the call.
        """
        explicit: dict[int, RtpMap] = {}
        for value in self.attributes_named("rtpmap"):
            parsed = _parse_rtpmap(value or "")
            if parsed is not None and parsed.payload_type not in explicit:
                explicit[parsed.payload_type] = parsed
        out: dict[int, RtpMap] = {}
        for pt in self.payload_types:
            found = explicit.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)
            if found is not None:
                out[pt] = found
        return out

    @property
    def fmtp(self) -> dict[int, str]:
        """Payload type -> format parameters from `a=fmtp` (RFC 4566 §6); first one wins."""
        out: dict[int, str] = {}
        for value in self.attributes_named("fmtp"):
            pt_text, _, params = (value or "").partition(" ")
            pt = _small_int(pt_text)
            if pt is not None and pt not in out:
                out[pt] = params.strip()
        return out

    @property
    def ptime(self) -> int | None:
        """`a=ptime` in milliseconds (RFC 4566 §6), or None if absent or not an integer."""
        return _small_int((self.attribute("ptime") or "").strip())

    @property
    def rtcp(self) -> int | None:
        """The RTCP port from `a=rtcp:<port> [...]` (RFC 3605), or None."""
        port = _small_int((self.attribute("rtcp") or "").partition(" ")[0])
        return port if port is not None and port <= _MAX_PORT else None

    def with_direction(self, direction: Direction | None) -> MediaDescription:
        """A copy with its direction attributes replaced by `direction` (None removes them)."""
        return replace(self, attributes=self._attributes_with_direction(direction))

    def _encode(self, lines: list[str]) -> None:
        count = f"/{self.port_count}" if self.port_count is not None else ""
        lines.append(f"m={self.media} {self.port}{count} {' '.join((self.proto, *self.formats))}")
        if self.information is not None:
            lines.append(f"i={self.information}")
        if self.connection is not None:
            lines.append(_format_connection(self.connection))
        lines.extend(f"b={b.type}:{b.bandwidth}" for b in self.bandwidths)
        if self.key is not None:
            lines.append(f"k={self.key}")
        lines.extend(_format_attribute(a) for a in self.attributes)


# RFC 4566 §5.9: `t=0 0`, what every SIP UA sends (RFC 3264 §5).
_UNBOUNDED = (Timing(0, 0),)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionDescription(_Attributes):
    """A whole SDP body (RFC 4566 §5). Build with keywords or `SessionDescription.create`."""

    origin: Origin
    version: int = 0
    session_name: str = "-"
    information: str | None = None
    uri: str | None = None
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    connection: Connection | None = None
    bandwidths: tuple[Bandwidth, ...] = ()
    times: tuple[Timing, ...] = _UNBOUNDED
    timezones: str | None = None
    key: str | None = None
    attributes: tuple[Attribute, ...] = ()
    media: tuple[MediaDescription, ...] = ()

    @classmethod
    def create(
        cls,
        address: str,
        media: Sequence[MediaDescription],
        *,
        sess_id: str,
        sess_version: int = 0,
        username: str = "-",
        session_name: str = "-",
    ) -> SessionDescription:
        """A description with `o=` and session-level `c=` both on `address`.

        The caller picks `sess_id` (RFC 4566 §5.2 suggests an NTP timestamp), because this
        module reads no clock.
        """
        conn = Connection.for_address(address)
        origin = Origin(username, sess_id, sess_version, conn.nettype, conn.addrtype, address)
        return cls(origin=origin, session_name=session_name, connection=conn, media=tuple(media))

    def connection_for(self, media: MediaDescription) -> Connection | None:
        """The connection that applies to `media`: its own `c=`, else the session's (§5.7)."""
        return media.connection if media.connection is not None else self.connection

    def direction_for(self, media: MediaDescription) -> Direction:
        """The media's direction, else the session-level one, else sendrecv (RFC 4566 §6)."""
        return media.direction or self.direction or Direction.SENDRECV

    def on_hold(self, media: MediaDescription) -> bool:
        """Whether `media` is put on hold: sendonly or inactive (RFC 3264 §8.4), or the
        RFC 2543 style `c=0.0.0.0` that RFC 3264 §8.4 says answerers must still accept
        (and `::`, its IPv6 spelling in the wild)."""
        if self.direction_for(media) in (Direction.SENDONLY, Direction.INACTIVE):
            return True
        conn = self.connection_for(media)
        return conn is not None and conn.address in ("0.0.0.0", "::")

    def with_direction(self, direction: Direction | None) -> SessionDescription:
        """A copy with the session-level direction replaced (None removes it)."""
        return replace(self, attributes=self._attributes_with_direction(direction))

    def with_next_version(self) -> SessionDescription:
        """A copy with `sess-version` incremented, as each new offer needs (RFC 3264 §8)."""
        origin = replace(self.origin, sess_version=self.origin.sess_version + 1)
        return replace(self, origin=origin)

    def encode(self) -> bytes:
        """Serialize in RFC 4566 §5 order with CRLF line endings.

        Raises LocalProtocolError if a field holds CR, LF or NUL, which the wire format
        cannot carry (RFC 4566 §9 `text`).
        """
        o = self.origin
        lines = [
            f"v={self.version}",
            f"o={o.username} {o.sess_id} {o.sess_version} {o.nettype} {o.addrtype} {o.address}",
            f"s={self.session_name}",
        ]
        if self.information is not None:
            lines.append(f"i={self.information}")
        if self.uri is not None:
            lines.append(f"u={self.uri}")
        lines.extend(f"e={e}" for e in self.emails)
        lines.extend(f"p={p}" for p in self.phones)
        if self.connection is not None:
            lines.append(_format_connection(self.connection))
        lines.extend(f"b={b.type}:{b.bandwidth}" for b in self.bandwidths)
        for t in self.times:
            lines.append(f"t={t.start} {t.stop}")
            lines.extend(f"r={r}" for r in t.repeats)
        if self.timezones is not None:
            lines.append(f"z={self.timezones}")
        if self.key is not None:
            lines.append(f"k={self.key}")
        lines.extend(_format_attribute(a) for a in self.attributes)
        for m in self.media:
            m._encode(lines)
        for line in lines:
            if "\r" in line or "\n" in line or "\0" in line:
                raise LocalProtocolError(f"SDP line {line[:40]!r} contains CR, LF or NUL")
        try:
            return ("\r\n".join(lines) + "\r\n").encode("utf-8")
        except UnicodeEncodeError as exc:
            raise LocalProtocolError(f"SDP text cannot be encoded as UTF-8: {exc}") from None


def _format_connection(c: Connection) -> str:
    suffix = ""
    if c.ttl is not None:
        if c.addrtype.upper() != "IP4":
            raise LocalProtocolError("only IP4 multicast connections carry a TTL (RFC 4566 §5.7)")
        suffix = f"/{c.ttl}"
    if c.count is not None:
        if c.addrtype.upper() == "IP4" and c.ttl is None:
            raise LocalProtocolError("an IP4 address count needs a TTL (RFC 4566 §5.7)")
        suffix += f"/{c.count}"
    return f"c={c.nettype} {c.addrtype} {c.address}{suffix}"


def _format_attribute(a: Attribute) -> str:
    return f"a={a.name}" if a.value is None else f"a={a.name}:{a.value}"


# ---------------------------------------------------------------------------------------
# Parsing

_TYPES = frozenset("vosiuepcbtrzkma")
_MEDIA_TYPES = frozenset("micbka")
# Lines RFC 4566 §5 allows at most once per section. A media section may repeat c= for
# layered multicast; we keep the first (see _parse_media).
_SINGLE = frozenset("vosiuczk")

_Line = tuple[int, str, str]  # line number, type letter, value


def _error(lineno: int, message: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"SDP line {lineno}: {message}")


def _number(lineno: int, text: str, what: str) -> int:
    if _NUMBER.fullmatch(text) is None:
        raise _error(lineno, f"{what} {text[:40]!r} is not a number")
    return int(text)


def _port(lineno: int, text: str, what: str) -> int:
    port = _number(lineno, text, what)
    if port > _MAX_PORT:
        raise _error(lineno, f"{what} {port} is out of range")
    return port


def parse_sdp(data: bytes) -> SessionDescription:
    """Parse an SDP body (RFC 4566 §5, §9). Raises only RemoteProtocolError."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"SDP is not valid UTF-8 (byte {exc.start})") from None
    sections: list[list[_Line]] = [[]]
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line.strip():
            continue  # trailing CRLFs and blank lines from sloppy generators
        if len(line) < 2 or line[1] != "=":
            raise _error(lineno, f"expected <type>=<value>, got {line[:40]!r}")
        letter = line[0]
        if letter not in _TYPES:
            # RFC 4566 §5: a description with a type letter we do not understand is ignored.
            raise _error(lineno, f"unknown line type {letter!r}")
        if "\r" in line or "\0" in line:
            raise _error(lineno, "contains a bare CR or NUL")
        if letter == "m":
            sections.append([])
        sections[-1].append((lineno, letter, line[2:]))
    session = sections[0]
    if not session and len(sections) == 1:
        raise RemoteProtocolError("empty SDP body")
    if not session or session[0][1] != "v":
        raise RemoteProtocolError("missing v= line: SDP must start with v= (RFC 4566 §5.1)")
    return _parse_session(session, tuple(_parse_media(s) for s in sections[1:]))


def _parse_session(lines: list[_Line], media: tuple[MediaDescription, ...]) -> SessionDescription:
    origin: Origin | None = None
    name: str | None = None
    info: str | None = None
    uri: str | None = None
    zone: str | None = None
    key: str | None = None
    connection: Connection | None = None
    emails: list[str] = []
    phones: list[str] = []
    bandwidths: list[Bandwidth] = []
    times: list[Timing] = []
    attributes: list[Attribute] = []
    seen: set[str] = set()
    for lineno, letter, value in lines:
        if letter in _SINGLE:
            if letter in seen:
                raise _error(lineno, f"duplicate {letter}= line")
            seen.add(letter)
        if letter == "v":
            if value.strip() != "0":
                raise _error(lineno, f"unsupported SDP version {value[:20]!r}")
        elif letter == "o":
            origin = _parse_origin(lineno, value)
        elif letter == "s":
            name = value
        elif letter == "i":
            info = value
        elif letter == "u":
            uri = value
        elif letter == "e":
            emails.append(value)
        elif letter == "p":
            phones.append(value)
        elif letter == "c":
            connection = _parse_connection(lineno, value)
        elif letter == "b":
            bandwidths.append(_parse_bandwidth(lineno, value))
        elif letter == "t":
            fields = value.split()
            if len(fields) != 2:
                raise _error(lineno, "t= needs <start-time> <stop-time>")
            start, stop = (_number(lineno, f, "t= time") for f in fields)
            times.append(Timing(start, stop))
        elif letter == "r":
            if not times:
                raise _error(lineno, "r= line before any t= line")
            times[-1] = replace(times[-1], repeats=(*times[-1].repeats, value))
        elif letter == "z":
            zone = value
        elif letter == "k":
            key = value
        else:  # "a": the only letter left that _TYPES allows before the first m=
            attributes.append(_parse_attribute(lineno, value))
    if origin is None:
        raise RemoteProtocolError("missing o= line (RFC 4566 §5.2)")
    if name is None:
        raise RemoteProtocolError("missing s= line (RFC 4566 §5.3)")
    return SessionDescription(
        origin=origin,
        session_name=name,
        information=info,
        uri=uri,
        emails=tuple(emails),
        phones=tuple(phones),
        connection=connection,
        bandwidths=tuple(bandwidths),
        times=tuple(times),
        timezones=zone,
        key=key,
        attributes=tuple(attributes),
        media=media,
    )


def _parse_media(lines: list[_Line]) -> MediaDescription:
    lineno, _, value = lines[0]
    fields = value.split()
    if len(fields) < 3:
        raise _error(lineno, "m= needs <media> <port> <proto> <fmt> ...")
    port_text, slash, count_text = fields[1].partition("/")
    port = _port(lineno, port_text, "m= port")
    port_count = _number(lineno, count_text, "m= port count") if slash else None
    info: str | None = None
    key: str | None = None
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = []
    attributes: list[Attribute] = []
    seen: set[str] = set()
    for lineno, letter, value in lines[1:]:
        if letter not in _MEDIA_TYPES or letter == "m":
            raise _error(lineno, f"{letter}= line is not allowed in a media description")
        if letter in "ik":
            if letter in seen:
                raise _error(lineno, f"duplicate {letter}= line in a media description")
            seen.add(letter)
        if letter == "i":
            info = value
        elif letter == "c":
            parsed = _parse_connection(lineno, value)
            # Several media-level c= lines are layered multicast (RFC 4566 §5.7), which we
            # do not do; the first address is the one a unicast peer means.
            connection = connection or parsed
        elif letter == "b":
            bandwidths.append(_parse_bandwidth(lineno, value))
        elif letter == "k":
            key = value
        else:
            attributes.append(_parse_attribute(lineno, value))
    return MediaDescription(
        fields[0],
        port,
        fields[2],
        tuple(fields[3:]),
        port_count=port_count,
        information=info,
        connection=connection,
        bandwidths=tuple(bandwidths),
        key=key,
        attributes=tuple(attributes),
    )


def _parse_origin(lineno: int, value: str) -> Origin:
    fields = value.split()
    if len(fields) < 6:
        raise _error(
            lineno, "o= needs <username> <sess-id> <sess-version> <nettype> <addrtype> <address>"
        )
    # A username with spaces breaks RFC 4566 §5.2 but some phones send their model name;
    # the last five fields are unambiguous, so the rest is the username.
    username = " ".join(fields[:-5])
    sess_id, version, nettype, addrtype, address = fields[-5:]
    return Origin(
        username, sess_id, _number(lineno, version, "o= sess-version"), nettype, addrtype, address
    )


def _parse_connection(lineno: int, value: str) -> Connection:
    fields = value.split()
    if len(fields) != 3:
        raise _error(lineno, "c= needs <nettype> <addrtype> <connection-address>")
    nettype, addrtype, address = fields
    ttl: int | None = None
    count: int | None = None
    kind = addrtype.upper()
    if kind in ("IP4", "IP6") and "/" in address:
        address, *extra = address.split("/")
        # RFC 4566 §5.7: IP4 multicast is addr/ttl[/count]; IP6 has no TTL, only addr[/count].
        if kind == "IP4" and len(extra) <= 2:
            ttl = _number(lineno, extra[0], "c= TTL")
            if len(extra) == 2:
                count = _number(lineno, extra[1], "c= address count")
        elif kind == "IP6" and len(extra) == 1:
            count = _number(lineno, extra[0], "c= address count")
        else:
            raise _error(lineno, f"too many '/' in c= address for {addrtype}")
    if not address:
        raise _error(lineno, "c= address is empty")
    return Connection(nettype, addrtype, address, ttl, count)


def _parse_bandwidth(lineno: int, value: str) -> Bandwidth:
    bwtype, colon, amount = value.partition(":")
    if not colon or not bwtype.strip():
        raise _error(lineno, "b= needs <bwtype>:<bandwidth>")
    return Bandwidth(bwtype.strip(), _number(lineno, amount.strip(), "b= bandwidth"))


def _parse_attribute(lineno: int, value: str) -> Attribute:
    name, colon, rest = value.partition(":")
    name = name.strip()
    if not name:
        raise _error(lineno, "a= attribute has no name")
    return Attribute(name, rest if colon else None)


def _parse_rtpmap(value: str) -> RtpMap | None:
    """`<payload type> <encoding name>/<clock rate>[/<encoding parameters>]` (§6)."""
    pt_text, _, mapping = value.strip().partition(" ")
    parts = mapping.strip().split("/")
    pt = _small_int(pt_text)
    if pt is None or pt > 127 or len(parts) not in (2, 3) or not parts[0]:
        return None
    rate = _small_int(parts[1])
    channels = _small_int(parts[2]) if len(parts) == 3 else 1
    if rate is None or channels is None:
        return None
    return RtpMap(pt, parts[0], rate, channels)
