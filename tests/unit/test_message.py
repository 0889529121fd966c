"""Message and URI parsing/serialisation beyond the torture corpus."""

from __future__ import annotations

import pytest

from pbx.errors import LocalProtocolError, RemoteProtocolError
from pbx.sip.message import (
    Request,
    Response,
    Via,
    build_response,
    canonical_name,
    parse_message,
)
from pbx.sip.uri import AbsoluteUri, SipUri, TelUri, parse_name_addr, parse_uri

REGISTER = (
    b"REGISTER sip:pbx.example SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKabc;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'f: "Front Desk" <sip:1001@pbx.example>;tag=ff\r\n'
    b"t: <sip:1001@pbx.example>\r\n"
    b"i: abc@192.0.2.7\r\n"
    b"CSeq: 3 REGISTER\r\n"
    b"m: <sip:1001@192.0.2.7:5062;transport=udp>;expires=60,\r\n <sip:1001@[2001:db8::1]>\r\n"
    b"X-Custom: keep me\r\n"
    b"l: 0\r\n\r\n"
)


def parsed() -> Request:
    msg = parse_message(REGISTER)
    assert isinstance(msg, Request)
    return msg


def test_compact_forms_are_canonical() -> None:
    msg = parsed()
    names = [n for n, _ in msg.headers]
    assert names[:4] == ["Via", "Max-Forwards", "From", "To"]
    assert msg.header("contact") == msg.header("m") == msg.header("Contact")
    assert msg.from_.display_name == "Front Desk"
    assert msg.call_id == "abc@192.0.2.7"
    assert canonical_name("WWW-authenticate") == "WWW-Authenticate"
    assert canonical_name("X-Odd") == "X-Odd"


def test_list_values_across_folding_and_commas() -> None:
    assert parsed().list_values("Contact") == [
        "<sip:1001@192.0.2.7:5062;transport=udp>;expires=60",
        "<sip:1001@[2001:db8::1]>",
    ]


def test_encode_round_trip_keeps_unknown_headers_in_order() -> None:
    msg = parsed()
    again = parse_message(msg.encode())
    assert isinstance(again, Request)
    assert again.headers == msg.headers
    assert again.uri == msg.uri


def test_build_response_copies_what_rfc3261_says() -> None:
    msg = parsed().with_top_via(parsed().vias[0].with_received("198.51.100.1", 4000))
    resp = build_response(msg, 200, headers=[("Contact", "<sip:x@y>")], to_tag="tt")
    again = parse_message(resp.encode())
    assert isinstance(again, Response)
    assert (again.status, again.reason, again.call_id) == (200, "OK", "abc@192.0.2.7")
    assert again.to.tag == "tt" and again.from_.tag == "ff"
    assert again.vias[0].received == "198.51.100.1" and again.vias[0].rport == 4000
    assert again.header("Content-Length") == "0"


def test_to_tag_not_added_to_100_or_twice() -> None:
    assert build_response(parsed(), 100, to_tag="tt").to.tag is None
    tagged = parse_message(REGISTER.replace(b"t: <sip:1001@pbx.example>", b"t: <sip:a@b>;tag=x"))
    assert isinstance(tagged, Request)
    assert build_response(tagged, 200, to_tag="tt").to.tag == "x"


def test_received_only_when_needed() -> None:
    via = Via("UDP", "192.0.2.7", 5062, (("branch", "z9hG4bK1"),))
    assert via.with_received("192.0.2.7", 5062) == via
    assert via.with_received("10.0.0.1", 5062).received == "10.0.0.1"
    rport = Via("UDP", "192.0.2.7", 5062, (("branch", "z9hG4bK1"), ("rport", None)))
    assert str(rport.with_received("192.0.2.7", 7000)).endswith(";rport=7000;received=192.0.2.7")


def test_build_rejects_incomplete_headers() -> None:
    with pytest.raises(LocalProtocolError):
        Request.build("OPTIONS", parse_uri("sip:a@b"), [("Via", "SIP/2.0/UDP h")])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\r\n\r\n",
        b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n",
        b"REGISTER sip:a@b SIP/2.0\r\n\xff\xfe: x\r\n\r\n",
        b"REGISTER sip:a@b SIP/2.0\r\n bad continuation\r\n\r\n",
        b"SIP/2.0 20 OK\r\n\r\n",
    ],
)
def test_broken_messages_raise_remote_protocol_error(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_message(data)


def test_stream_requires_content_length() -> None:
    without = REGISTER.replace(b"l: 0\r\n", b"")
    assert parse_message(without).body == b""
    with pytest.raises(RemoteProtocolError):
        parse_message(without, datagram=False)


def test_uri_forms() -> None:
    sip = parse_uri("sips:alice:pw@[2001:db8::1]:5061;transport=tcp;lr?Subject=hi")
    assert isinstance(sip, SipUri)
    assert (sip.user, sip.password, sip.host, sip.port, sip.transport) == (
        "alice", "pw", "[2001:db8::1]", 5061, "tcp"
    )  # fmt: skip
    assert sip.headers == (("Subject", "hi"),)
    assert str(sip) == "sips:alice:pw@[2001:db8::1]:5061;transport=tcp;lr?Subject=hi"
    tel = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert isinstance(tel, TelUri) and tel.number == "+1-201-555-0123"
    assert isinstance(parse_uri("urn:service:sos"), AbsoluteUri)
    assert SipUri("sips", "Al%69ce", None, "Example.COM").aor() == "sip:Alice@example.com"


@pytest.mark.parametrize(
    "text", ["sip:", "sip:a@", "sip:a@b:99999", "sip:a@b;;x", "sip:@b", "1sip:a@b", "sip:a b@c"]
)
def test_bad_uris(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_uri(text)


def test_name_addr_forms() -> None:
    a = parse_name_addr('"A \\"quoted\\" name" <sip:a@b>;tag=1')
    assert (a.display_name, a.tag) == ('A "quoted" name', "1")
    assert parse_name_addr('"A \\"quoted\\" name" <sip:a@b>;tag=1') == parse_name_addr(str(a))
    b = parse_name_addr("Reception Desk <sip:100@b>")
    assert b.display_name == "Reception Desk"
    c = parse_name_addr("sip:a@b;tag=2")
    assert c.tag == "2" and not c.bracketed and str(c.uri) == "sip:a@b"


# Inputs that made regexes backtrack quadratically (a 60 KB datagram held the loop for
# 12-16 s). The timeout is a liveness bound, not a speed measurement: each parses in ms.
@pytest.mark.timeout(10)
def test_long_space_run_with_folding_parses_in_linear_time() -> None:
    data = (
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
        b"X-F: a\r\n b\r\nX-Spaces: a" + b" " * 60_000 + b"b\r\nContent-Length: 0\r\n\r\n"
    )
    msg = parse_message(data)
    assert msg.header("X-F") == "a b"


@pytest.mark.timeout(10)
def test_long_authorization_token_parses_in_linear_time() -> None:
    from pbx.sip.digest import parse_credentials

    with pytest.raises(RemoteProtocolError):
        parse_credentials("Digest " + "a" * 60_000)


def test_huge_cseq_number_is_a_protocol_error() -> None:
    data = REGISTER.replace(b"CSeq: 3 REGISTER", b"CSeq: " + b"9" * 5000 + b" REGISTER")
    with pytest.raises(RemoteProtocolError):
        parse_message(data)
