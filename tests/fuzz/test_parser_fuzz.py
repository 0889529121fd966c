"""Hypothesis on the SIP parsers: only `RemoteProtocolError` may escape (STYLE.md §4).

Seeds are the RFC 4475 / RFC 5118 torture messages; mutations insert the octets parsers
trip over (NUL, bare CR/LF, quotes, brackets, non-ASCII digits, huge numbers). A valid
message must also survive `encode()` with its core fields intact.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbx.errors import RemoteProtocolError
from pbx.sip.framing import Ping, StreamFramer
from pbx.sip.message import KNOWN_METHODS, Message, Request, Response, parse_message
from pbx.sip.uri import NameAddr, SipUri, parse_name_addr, parse_uri
from tests.support.shared import TORTURE

INDEX: list[dict[str, Any]] = json.loads((TORTURE / "index.json").read_text())


def _crlf(data: bytes) -> bytes:
    """RFC 5118 files use bare LF: the CRLF form, header closed, Content-Length recounted."""
    head, _, body = data.partition(b"\n\n")
    body = body.replace(b"\n", b"\r\n")
    lines = [
        b"Content-Length: %d" % len(body) if line.lower().startswith(b"content-length") else line
        for line in head.rstrip(b"\n").split(b"\n")
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


RAW = {e["name"]: (TORTURE / e["file"]).read_bytes() for e in INDEX}
WIRE = {
    e["name"]: RAW[e["name"]] if e["line_endings"] == "CRLF" else _crlf(RAW[e["name"]])
    for e in INDEX
}
SEEDS = sorted(set(RAW.values()) | set(WIRE.values()))


def _parses(data: bytes) -> bool:
    try:
        parse_message(data)
    except RemoteProtocolError:
        return False
    return True


def _frames_alone(data: bytes) -> bool:
    try:
        return StreamFramer().feed(data) == [data]
    except RemoteProtocolError:
        return False


VALID = sorted(data for data in WIRE.values() if _parses(data))
# Messages a stream frames exactly as they are (Content-Length right, header closed).
FRAMED = sorted(data for data in VALID if _frames_alone(data))

INTERESTING = [
    b"\x00", b"\r\n", b"\r\n ", b"\r\n\r\n", b"\n", b"\r", b" ", b"\t", b":", b";", b",",
    b"=", b"<", b">", b'"', b"\\", b"[", b"]", b"@", b"%", b"%00", b"?", b"&", b"/",
    b"\xff", b"\xc3\xa9", "²".encode(), "①".encode(), "٣".encode(), b"-1", b"0",
    b"99999999999999999999", b"4294967296", b"SIP/2.0", b"SIP/2.0/UDP ", b"sip:", b"tel:",
    b"z9hG4bK", b";branch=", b";tag=", b"Content-Length: ", b"CSeq: ", b"Via: ",
]  # fmt: skip

# Digits by str.isdigit() that are no DIGIT (RFC 3261 §25.1); ٣ (ARABIC-INDIC THREE) even
# passes int().
ODD_DIGITS = "²①٣"
NASTY_VALUE = st.one_of(
    st.sampled_from(INTERESTING),
    st.text(alphabet="0123456789 " + ODD_DIGITS, max_size=8).map(str.encode),
    st.text(max_size=12).map(str.encode),
)

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_or_refuse(data: bytes, datagram: bool = True) -> Message | None:
    """Parse; a refusal must be a RemoteProtocolError carrying an error status."""
    try:
        message = parse_message(data, datagram=datagram)
    except RemoteProtocolError as exc:
        status = exc.status
    else:
        assert isinstance(message, Request | Response)
        return message
    assert 400 <= status <= 599
    return None


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A torture message with a few byte flips, insertions, deletions or a truncation."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "token", "value", "delete", "truncate"]))
        at = draw(st.integers(0, len(data)))
        colons = [m.end() for m in re.finditer(rb"\n[A-Za-z-]+[ \t]*:[ \t]*", data)]
        if kind == "value" and colons:  # replace one header's value (up to the line end)
            start = draw(st.sampled_from(colons))
            end = data.find(b"\r\n", start)
            data[start : len(data) if end < 0 else end] = draw(NASTY_VALUE)
        elif kind == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "token":
            data[at:at] = draw(st.sampled_from(INTERESTING))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            del data[at:]
    return bytes(data)


# (a) arbitrary bytes


@settings(FUZZ, max_examples=1000)
@given(
    data=st.one_of(
        st.binary(max_size=2048),
        st.lists(st.binary(max_size=60), max_size=12).map(b"\r\n".join),
        st.binary(max_size=400).map(lambda b: b"OPTIONS sip:a@b SIP/2.0\r\n" + b),
    ),
    datagram=st.booleans(),
)
def test_arbitrary_bytes(data: bytes, datagram: bool) -> None:
    parse_or_refuse(data, datagram)


# (b) mutated torture messages


@settings(FUZZ, max_examples=2000)
@given(data=mutated(), datagram=st.booleans())
def test_mutated_torture_messages(data: bytes, datagram: bool) -> None:
    parse_or_refuse(data, datagram)


def test_seeds_are_what_the_corpus_says() -> None:
    """The seeds are meaningful: 40 messages parse, and a stream frames all but two."""
    assert len(SEEDS) == 61 + 12  # RFC 5118 files twice: as published and as sent
    assert len(VALID) == 40
    # dblreq carries trailing octets, inv2543 no Content-Length (RFC 2543 over UDP).
    assert sorted(n for n, d in WIRE.items() if d in VALID and d not in FRAMED) == [
        "dblreq",
        "inv2543",
    ]


# The crashes the properties above find, spelled out (non-ASCII digits reach int()).
BASE = (
    b"OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\n"
    b"From: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\nCall-ID: c1\r\n"
    b"Max-Forwards: 70\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)
ODD = "²".encode()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"Content-Length: 0", b"Content-Length: " + ODD),
        (b"CSeq: 1", b"CSeq: " + ODD),
        (b"Max-Forwards: 70", b"Max-Forwards: " + ODD),
        (b"h.example.com;", b"h.example.com:" + ODD + b";"),
        (b"<sip:a@example.com>", b"<sip:a@example.com:" + ODD + b">"),
    ],
    ids=["Content-Length", "CSeq", "Max-Forwards", "Via port", "To port"],
)
@pytest.mark.parametrize("datagram", [True, False], ids=["udp", "stream"])
def test_non_ascii_digit_is_refused_not_crashed(old: bytes, new: bytes, datagram: bool) -> None:
    assert parse_or_refuse(BASE, datagram) is not None
    assert parse_or_refuse(BASE.replace(old, new), datagram) is None


def test_non_ascii_digit_in_a_framed_stream_is_refused_not_crashed() -> None:
    with pytest.raises(RemoteProtocolError):
        StreamFramer().feed(BASE.replace(b"Content-Length: 0", b"Content-Length: " + ODD))


@pytest.mark.parametrize("text", ["sip:a@b:²", "sips:b:①", "<sip:a@b:¹>;tag=1"])
def test_non_ascii_port_is_refused_not_crashed(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_name_addr(text)


# (c) the stream framer


@settings(FUZZ, max_examples=500)
@given(
    items=st.lists(st.one_of(mutated(), st.sampled_from([b"\r\n\r\n", b"\r\n"])), max_size=4),
    cuts=st.lists(st.floats(0, 1), max_size=12),
)
def test_framer_never_crashes(items: list[bytes], cuts: list[float]) -> None:
    stream = b"".join(items)
    framer = StreamFramer()
    bounds = sorted({0, len(stream), *(int(c * len(stream)) for c in cuts)})
    for start, end in itertools.pairwise(bounds):
        try:
            out = framer.feed(stream[start:end])
        except RemoteProtocolError as exc:
            status = exc.status
            break  # the connection is closed: nothing more is fed
        for item in out:
            if not isinstance(item, Ping):
                assert item and stream.find(item) >= 0  # a message is a piece of the stream
                parse_or_refuse(item, datagram=False)
    else:
        return
    assert status in (400, 513)


@settings(FUZZ, max_examples=300)
@given(
    items=st.lists(st.one_of(st.sampled_from(FRAMED), st.just(b"\r\n\r\n")), max_size=5),
    cuts=st.lists(st.floats(0, 1), max_size=16),
)
def test_framing_does_not_depend_on_chunking(items: list[bytes], cuts: list[float]) -> None:
    stream = b"".join(items)
    framer = StreamFramer()
    out: list[bytes | Ping] = []
    bounds = sorted({0, len(stream), *(int(c * len(stream)) for c in cuts)})
    for start, end in itertools.pairwise(bounds):
        out += framer.feed(stream[start:end])
    assert out == [Ping() if item == b"\r\n\r\n" else item for item in items]
    assert framer.pending == 0


# (d) URIs and name-addrs

URI_TEXT = st.one_of(
    st.text(max_size=80),
    st.builds(  # well-formed but for the port, where the odd digits hide
        lambda scheme, host, port, rest: f"{scheme}:user@{host}:{port}{rest}",
        st.sampled_from(["sip", "sips"]),
        st.sampled_from(["example.com", "192.0.2.1", "[2001:db8::1]"]),
        st.text(alphabet="0123456789" + ODD_DIGITS, min_size=1, max_size=6),
        st.sampled_from(["", ";transport=tcp", "?subject=x"]),
    ),
    st.text(alphabet='sipteSIP:@;=<>"\\,?&[]%.-_/+ \t0123456789abcdef²①', max_size=60),
    st.builds(
        lambda scheme, rest: f"{scheme}:{rest}",
        st.sampled_from(["sip", "sips", "tel", "SIP", "urn", "x"]),
        st.text(alphabet="ab1:@;=[]%.?&²-", max_size=30),
    ),
)


@settings(FUZZ, max_examples=1000)
@given(text=URI_TEXT)
def test_parse_uri(text: str) -> None:
    try:
        uri = parse_uri(text)
    except RemoteProtocolError:
        return
    # What we accept we can write out, and read back to the same thing.
    again = parse_uri(str(uri))
    assert str(again) == str(uri)


@settings(FUZZ, max_examples=1000)
@given(
    text=st.one_of(
        URI_TEXT,
        st.builds(
            lambda name, uri, params: f"{name}<{uri}>{params}",
            st.text(alphabet='ab "\\\t,', max_size=10),
            URI_TEXT,
            st.text(alphabet='ab;=tag" ,', max_size=12),
        ),
    )
)
def test_parse_name_addr(text: str) -> None:
    try:
        addr = parse_name_addr(text)
    except RemoteProtocolError:
        return
    assert isinstance(addr, NameAddr)


# (e) round trip through encode()

TOKEN = st.from_regex(r"[A-Za-z0-9\-.!%*_+`'~]{1,12}", fullmatch=True)
HOST = st.one_of(
    st.from_regex(r"[a-z][a-z0-9\-]{0,10}(\.[a-z][a-z0-9\-]{0,10}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
PORT = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))
USER = st.from_regex(r"[A-Za-z0-9\-_.!~*'()&=+$,]{1,10}", fullmatch=True)
# pname: RFC 3261 paramchar that is also a token (the product reads names as tokens);
# pvalue: any paramchar.
PNAME = st.from_regex(r"[A-Za-z0-9\-_.!~*'+]{1,10}", fullmatch=True)
PVALUE = st.from_regex(r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$]{1,10}", fullmatch=True)
URI_PARAMS = st.lists(
    st.tuples(PNAME, st.one_of(st.none(), PVALUE)).map(
        lambda kv: f";{kv[0]}" if kv[1] is None else f";{kv[0]}={kv[1]}"
    ),
    max_size=3,
).map("".join)
SIP_URI = st.builds(
    lambda scheme, user, host, port, params: f"{scheme}:{user}@{host}{port}{params}",
    st.sampled_from(["sip", "sips"]),
    USER,
    HOST,
    PORT,
    URI_PARAMS,
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A valid request in varied but legal spelling: compact names, LWS, odd case."""
    method = draw(st.one_of(st.sampled_from(sorted(KNOWN_METHODS)), TOKEN))
    name = {
        n: draw(st.sampled_from(forms))
        for n, forms in {
            "via": ["Via", "v", "VIA", "via"],
            "from": ["From", "f", "FROM"],
            "to": ["To", "t", "tO"],
            "call-id": ["Call-ID", "i", "call-id"],
            "cseq": ["CSeq", "CSEQ", "cseq"],
        }.items()
    }
    colon = draw(st.sampled_from([": ", ":", " : ", ":\t"]))
    vias = draw(st.lists(st.tuples(HOST, PORT, TOKEN), min_size=1, max_size=3))
    values = [
        f"SIP/2.0/{draw(st.sampled_from(['UDP', 'TCP', 'TLS']))} {host}{port}"
        f"{draw(st.sampled_from(['', ';rport', ';received=192.0.2.1']))};branch=z9hG4bK{branch}"
        for host, port, branch in vias
    ]
    if draw(st.booleans()):
        via_lines = [f"{name['via']}{colon}{v}" for v in values]
    else:  # one header, comma-separated, possibly folded (RFC 3261 §7.3.1)
        via_lines = [
            f"{name['via']}{colon}" + draw(st.sampled_from([",", " ,\r\n  "])).join(values)
        ]
    from_tag = draw(TOKEN)
    to_tag = draw(st.one_of(st.none(), TOKEN))
    to_params = f";tag={to_tag}" if to_tag else ""
    display = draw(st.sampled_from(["", "Bob ", '"A b" ', '"q\\"uote" ']))
    body = draw(st.binary(max_size=64))
    lines = [
        f"{method} {draw(SIP_URI)} SIP/2.0",
        *via_lines,
        f"{name['from']}{colon}<{draw(SIP_URI)}>;tag={from_tag}",
        f"{name['to']}{colon}{display}<{draw(SIP_URI)}>{to_params}",
        f"{name['call-id']}{colon}{draw(TOKEN)}@{draw(HOST)}",
        f"{name['cseq']}{colon}{draw(st.integers(0, 2**32 - 1))} {method}",
        "Max-Forwards: 70",
        f"Content-Length: {len(body)}",
        "",
        "",
    ]
    return "\r\n".join(lines).encode() + body


def core(message: Message) -> tuple[object, ...]:
    kind: tuple[object, ...] = (
        (message.method, str(message.uri))
        if isinstance(message, Request)
        else (message.status, message.reason)
    )
    return (
        *kind,
        message.call_id,
        message.cseq,
        message.from_.tag,
        message.to.tag,
        [v.branch for v in message.vias],
        [(v.host, v.port) for v in message.vias],
        message.body,
    )


@settings(FUZZ, max_examples=500)
@given(data=st.one_of(st.sampled_from(VALID), requests()))
def test_round_trip_through_encode(data: bytes) -> None:
    first = parse_message(data)
    again = parse_message(first.encode())
    assert core(again) == core(first)
    assert again.encode() == first.encode()  # encode() is a fixed point after one pass
    if isinstance(first, Request) and isinstance(first.uri, SipUri):
        assert isinstance(again.uri, SipUri) and again.uri.aor() == first.uri.aor()


@pytest.mark.parametrize("name", sorted(n for n, data in WIRE.items() if data in VALID))
def test_every_valid_torture_message_round_trips(name: str) -> None:
    first = parse_message(WIRE[name])
    assert core(parse_message(first.encode())) == core(first)
