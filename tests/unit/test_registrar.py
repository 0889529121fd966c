"""The pure registrar decision, RFC 3261 §10.3 (no sockets, no database)."""

from __future__ import annotations

import pytest

from pbx.config import ListenAddress, RegistrarConfig
from pbx.errors import RemoteProtocolError
from pbx.registrar import aor_of, apply_register
from pbx.sip.aio import Peer
from pbx.sip.message import Request, parse_message
from pbx.store import Binding

PEER = Peer("udp", "192.0.2.7", 5062, ListenAddress("udp", "127.0.0.1", 5060))
CONFIG = RegistrarConfig(min_expires=60, max_expires=3600, default_expires=600, max_contacts=3)


def register(
    contacts: list[str], expires: str | None = None, cseq: int = 1, call_id: str = "c1"
) -> Request:
    lines = [
        "REGISTER sip:pbx SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKx",
        "From: <sip:1001@pbx>;tag=f",
        "To: <sip:1001@pbx>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        "User-Agent: Yealink SIP-T46U",
    ]
    lines += [f"Contact: {c}" for c in contacts]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    msg = parse_message(("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode())
    assert isinstance(msg, Request)
    return msg


def run(request: Request, current: dict[str, Binding] | None = None, now: float = 1000.0):  # type: ignore[no-untyped-def]
    return apply_register(request, "1001", current or {}, now, PEER, CONFIG, "tt")


def test_new_binding_with_default_expiry() -> None:
    out = run(register(["<sip:1001@192.0.2.7:5062>"]))
    assert out.response.status == 200
    [b] = out.upserts
    assert (b.contact, b.expires_at, b.source, b.user_agent) == (
        "sip:1001@192.0.2.7:5062", 1600.0, "192.0.2.7:5062", "Yealink SIP-T46U"
    )  # fmt: skip
    assert out.response.headers_named("Contact") == ["<sip:1001@192.0.2.7:5062>;expires=600"]
    assert out.response.to.tag == "tt"


def test_contact_param_overrides_header_and_is_capped() -> None:
    out = run(register(["<sip:a@h>;expires=120", "<sip:b@h>;expires=99999"], expires="300"))
    assert {b.contact: b.expires_at - 1000 for b in out.upserts} == {
        "sip:a@h": 120, "sip:b@h": 3600
    }  # fmt: skip


def test_too_brief_gets_423_with_min_expires() -> None:
    out = run(register(["<sip:a@h>"], expires="30"))
    assert out.response.status == 423
    assert out.response.header("Min-Expires") == "60"
    assert out.upserts == ()


def binding(contact: str, call_id: str = "c1", cseq: int = 1, at: float = 900.0) -> Binding:
    return Binding("1001", contact, at + 600, call_id, cseq, "udp", "192.0.2.7:5062", at)


def test_refresh_keeps_registered_at_and_lists_all_contacts() -> None:
    current = {"sip:a@h": binding("sip:a@h"), "sip:b@h": binding("sip:b@h", "other")}
    out = run(register(["<sip:a@h>"], cseq=2), current)
    assert out.response.status == 200
    assert out.upserts[0].registered_at == 900.0
    assert len(out.response.headers_named("Contact")) == 2


def test_expires_zero_removes_one_binding() -> None:
    current = {"sip:a@h": binding("sip:a@h"), "sip:b@h": binding("sip:b@h")}
    out = run(register(["<sip:a@h>;expires=0"], cseq=2), current)
    assert out.removed == ("sip:a@h",)
    assert out.response.headers_named("Contact") == ["<sip:b@h>;expires=500"]


def test_star_removes_everything() -> None:
    current = {"sip:a@h": binding("sip:a@h", "x"), "sip:b@h": binding("sip:b@h", "y")}
    out = run(register(["*"], expires="0", cseq=5), current)
    assert sorted(out.removed) == ["sip:a@h", "sip:b@h"]
    assert out.response.headers_named("Contact") == []


@pytest.mark.parametrize(
    ("contacts", "expires"), [(["*"], None), (["*"], "60"), (["*", "<sip:a@h>"], "0")]
)
def test_star_misuse_is_400(contacts: list[str], expires: str | None) -> None:
    with pytest.raises(RemoteProtocolError):
        run(register(contacts, expires=expires))


def test_out_of_order_cseq_on_same_call_id_aborts() -> None:
    current = {"sip:a@h": binding("sip:a@h", cseq=7)}
    out = run(register(["<sip:a@h>"], cseq=7), current)
    assert out.response.status == 400 and out.upserts == ()
    other_call = run(register(["<sip:a@h>"], cseq=1, call_id="new"), current)
    assert other_call.response.status == 200


def test_query_without_contact_lists_bindings() -> None:
    out = run(register([]), {"sip:a@h": binding("sip:a@h")})
    assert out.upserts == () and out.removed == ()
    assert out.response.headers_named("Contact") == ["<sip:a@h>;expires=500"]


def test_max_contacts_evicts_the_oldest() -> None:
    current = {f"sip:{n}@h": binding(f"sip:{n}@h", at=900.0 + i) for i, n in enumerate("abc")}
    out = run(register(["<sip:d@h>"]), current)
    assert out.removed == ("sip:a@h",)
    assert len(out.response.headers_named("Contact")) == 3


def test_expired_bindings_are_not_listed() -> None:
    old = Binding("1001", "sip:old@h", 999.0, "c0", 1, "udp", "s", 0.0)
    out = run(register(["<sip:a@h>"]), {"sip:old@h": old})
    assert out.response.headers_named("Contact") == ["<sip:a@h>;expires=600"]


def test_bad_expires_and_non_sip_to() -> None:
    with pytest.raises(RemoteProtocolError):
        run(register(["<sip:a@h>"], expires="soon"))
    msg = parse_message(
        b"REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKy\r\n"
        b"From: <tel:+1555>;tag=1\r\nTo: <tel:+1555>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert isinstance(msg, Request)
    with pytest.raises(RemoteProtocolError):
        aor_of(msg)


def test_overlarge_expires_means_default() -> None:
    out = run(register(["<sip:a@h>"], expires="99999999999999999999"))
    assert out.upserts[0].expires_at == 1600.0


def test_more_contacts_than_allowed_in_one_request_is_400() -> None:
    with pytest.raises(RemoteProtocolError, match="4 contacts"):
        run(register([f"<sip:{n}@h>" for n in "abcd"]))
