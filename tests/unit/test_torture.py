"""RFC 4475 / RFC 5118 torture messages: each one is a test case (../shared/sip-torture)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pbx.errors import RemoteProtocolError, SipStatus
from pbx.sip.message import Request, Response, parse_contacts, parse_message
from pbx.sip.uri import SipUri
from tests.support.shared import TORTURE

CORPUS = TORTURE
INDEX: list[dict[str, Any]] = json.loads((CORPUS / "index.json").read_text())
BY_NAME = {e["name"]: e for e in INDEX}

# Messages whose Content-Length is an RFC artifact (README): fixed before parsing.
RECOUNT = {"ipv6-in-sdp", "mult-ip-in-sdp"}

# For reject cases, the exact status we answer with.
REJECT_STATUS = {
    "badinv01": 400, "clerr": 400, "ncl": 400, "scalar02": 400, "scalarlg": 400,
    "quotbal": 400, "ltgtruri": 400, "lwsruri": 400, "lwsstart": 400, "trws": 400,
    "escruri": 400, "badaspec": 400, "baddn": 400, "badvers": 505, "mismatch01": 400,
    "mismatch02": 501, "bigcode": 400, "insuf": 400, "multi01": 400, "mcl01": 400,
    "ipv6-bad": 400,
}  # fmt: skip
# "reject (liberal accept allowed)" cases we accept, and why.
LIBERAL_ACCEPT = {
    "baddate": "Date is never used, so a non-GMT zone does not matter",
    "regbadct": "the message parses; the registrar refuses its Contact (see below)",
}


def load(name: str) -> bytes:
    entry = BY_NAME[name]
    data = (CORPUS / entry["file"]).read_bytes()
    if name in RECOUNT:
        head, _, body = data.partition(b"\n\n")
        lines = [
            f"Content-Length: {len(body)}".encode() if ln.startswith(b"Content-Length") else ln
            for ln in head.split(b"\n")
        ]
        data = b"\n".join(lines) + b"\n\n" + body
    return data


def test_corpus_is_complete() -> None:
    assert len(INDEX) == 61
    names = {e["name"] for e in INDEX}
    assert set(REJECT_STATUS) | set(LIBERAL_ACCEPT) <= names


@pytest.mark.parametrize("name", [e["name"] for e in INDEX])
def test_torture_message(name: str) -> None:
    entry = BY_NAME[name]
    data = load(name)
    if name in REJECT_STATUS:
        with pytest.raises(RemoteProtocolError) as info:
            parse_message(data)
        assert info.value.status == REJECT_STATUS[name]
        return
    message = parse_message(data)
    if entry["type"] == "request":
        assert isinstance(message, Request)
        assert message.method == entry["method"]
    else:
        assert isinstance(message, Response)
        assert message.status == int(entry["status"])
    if entry["content_length"] and name not in RECOUNT:
        expected = min(int(entry["content_length"][0]), entry["body_len"])
        assert len(message.body) == expected


def test_wsinv_fields() -> None:
    msg = parse_message(load("wsinv"))
    assert isinstance(msg, Request)
    assert msg.to.tag == "1918181833n"
    assert msg.from_.tag == "98asjd8"
    assert msg.from_.display_name == 'J Rosenberg \\"'
    assert msg.max_forwards == 68
    assert (msg.cseq.number, msg.cseq.method) == (9, "INVITE")
    assert [v.transport for v in msg.vias] == ["UDP", "TCP", "UDP"]
    assert msg.vias[1].branch == "z9hG4bK9ikj8"
    assert msg.vias[2].branch == "z9hG4bK30239"
    assert msg.header("Subject") == ""
    assert msg.header("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.header("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    contacts = parse_contacts(msg)
    assert contacts != "*"
    assert contacts[0].display_name == 'Quoted string ""'
    assert contacts[0].param("q") == "0.33"
    assert contacts[0].param("newparam") == "newvalue"
    # unknown headers are kept verbatim and in order
    names = [n for n, _ in msg.headers]
    assert names.index("NewFangledHeader") < names.index("UnknownHeaderWithUnusualValue")


def test_intmeth_keeps_odd_method_and_nul() -> None:
    msg = parse_message(load("intmeth"))
    assert isinstance(msg, Request)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.to.display_name is not None and "\x00" in msg.to.display_name


def test_esc02_escaped_method_and_header_are_unknown() -> None:
    msg = parse_message(load("esc02"))
    assert isinstance(msg, Request)
    assert msg.method == "RE%47IST%45R"
    contacts = parse_contacts(msg)
    assert contacts != "*" and len(contacts) == 2
    assert msg.header("C%6Fntact") is not None


def test_escnull_keeps_distinct_contacts() -> None:
    msg = parse_message(load("escnull"))
    contacts = parse_contacts(msg)
    assert contacts != "*"
    assert [str(c.uri) for c in contacts] == [
        "sip:%00@host5.example.com",
        "sip:%00%00@host5.example.com",
    ]
    assert isinstance(msg.to.uri, SipUri)
    assert msg.to.uri.aor() == "sip:null-%00-null@example.com"


def test_semiuri_user_contains_semicolon() -> None:
    msg = parse_message(load("semiuri"))
    assert isinstance(msg, Request) and isinstance(msg.uri, SipUri)
    assert msg.uri.user == "user;par=u%40example.net"


def test_dblreq_ignores_trailing_octets() -> None:
    msg = parse_message(load("dblreq"))
    assert isinstance(msg, Request) and msg.method == "REGISTER" and msg.body == b""


def test_inv2543_body_runs_to_end() -> None:
    msg = parse_message(load("inv2543"))
    assert len(msg.body) == BY_NAME["inv2543"]["body_len"]
    assert msg.vias[0].branch is None


def test_mpart01_binary_body_framed_by_length() -> None:
    msg = parse_message(load("mpart01"))
    assert b"\x00" in msg.body or b"\r" in msg.body
    assert len(msg.body) == BY_NAME["mpart01"]["body_len"]


def test_cparam_contact_params_vs_uri_params() -> None:
    c1 = parse_contacts(parse_message(load("cparam01")))
    c2 = parse_contacts(parse_message(load("cparam02")))
    assert c1 != "*" and c2 != "*"
    assert str(c1[0].uri) == "sip:+19725552222@gw1.example.net"
    assert c1[0].param("unknownparam") is None and ("unknownparam", None) in c1[0].params
    assert str(c2[0].uri) == "sip:+19725552222@gw1.example.net;unknownparam"


def test_regescrt_contact_keeps_escaped_route() -> None:
    contacts = parse_contacts(parse_message(load("regescrt")))
    assert contacts != "*"
    assert str(contacts[0].uri) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


def test_regbadct_contact_is_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        parse_contacts(parse_message(load("regbadct")))


@pytest.mark.parametrize(
    ("name", "host", "port"),
    [
        ("ipv6-good", "[2001:db8::10]", None),
        ("port-ambiguous", "[2001:db8::10:5070]", None),
        ("port-unambiguous", "[2001:db8::10]", 5070),
    ],
)
def test_ipv6_request_uri(name: str, host: str, port: int | None) -> None:
    msg = parse_message(load(name))
    assert isinstance(msg, Request) and isinstance(msg.uri, SipUri)
    assert (msg.uri.host, msg.uri.port) == (host, port)


def test_received_with_and_without_brackets() -> None:
    a = parse_message(load("via-received-param-with-delim"))
    b = parse_message(load("via-received-param-no-delim"))
    assert a.vias[0].received == "2001:db8::9:255"
    assert b.vias[0].received == "2001:db8::9:255"


def test_ipv4_mapped_via() -> None:
    msg = parse_message(load("ipv4-mapped-ipv6"))
    assert msg.vias[0].host.startswith("[") and "ffff" in msg.vias[0].host.lower()


def test_version_error_carries_505() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_message(load("badvers"))
    assert info.value.status is SipStatus.VERSION_NOT_SUPPORTED
