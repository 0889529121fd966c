"""The RFC 3261 §12 dialog core: creation, in-dialog requests, CSeq checks, transitions."""

from __future__ import annotations

import pytest

from pbx.errors import LocalProtocolError, RemoteProtocolError, SipStatus
from pbx.sip.dialog import (
    Dialog,
    DialogError,
    DialogId,
    DialogState,
    DialogVerdict,
    dialog_id_for_request,
    dialog_id_for_response,
)
from pbx.sip.message import Request, Response, build_response, parse_message
from pbx.sip.uri import SipUri, parse_name_addr, parse_uri

ME = ("203.0.113.1", 5060)
PBX_CONTACT = "<sip:pbx@203.0.113.1:5060>"
ALICE_CONTACT = "<sip:alice@192.0.2.10:5060>"
BOB_CONTACT = "<sip:bob@198.51.100.7:5070;transport=udp>"
# As the request reaches the UAS: p2 (next to the UAS) on top, p1 (next to the UAC) below.
RECORD_ROUTE = (("Record-Route", "<sip:p2.example;lr>"), ("Record-Route", "<sip:p1.example;lr>"))


def invite(
    *,
    cseq: int = 10,
    record_route: tuple[tuple[str, str], ...] = RECORD_ROUTE,
    contact: str | None = ALICE_CONTACT,
    from_tag: str | None = "a1",
    uri: str = "sip:bob@pbx.example",
) -> Request:
    """An INVITE from Alice as it arrives at the UAS, after two record-routing proxies."""
    headers = [
        ("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKa1"),
        ("Max-Forwards", "68"),
        *record_route,
        ("From", '"Alice" <sip:alice@example.com>' + (f";tag={from_tag}" if from_tag else "")),
        ("To", "<sip:bob@pbx.example>"),
        ("Call-ID", "call-1@192.0.2.10"),
        ("CSeq", f"{cseq} INVITE"),
    ]
    if contact is not None:
        headers.append(("Contact", contact))
    return Request.build("INVITE", parse_uri(uri), headers, b"v=0\r\n")


def answer(
    request: Request, status: int, *, tag: str | None = "b1", contact: str | None = BOB_CONTACT
) -> Response:
    """Our (or the callee's) response to `request`, with a Contact and Record-Route copied."""
    extra: list[tuple[str, str]] = [
        ("Record-Route", v) for v in request.list_values("Record-Route")
    ]
    if contact is not None:
        extra.append(("Contact", contact))
    return build_response(request, status, headers=extra, to_tag=tag)


def uas_dialog(status: int = 200) -> Dialog:
    req = invite()
    return Dialog.from_uas(req, answer(req, status, contact=PBX_CONTACT))


def uac_dialog(status: int = 200) -> Dialog:
    req = invite(record_route=())
    return Dialog.from_uac(req, answer(invite(), status))


def roundtrip(request: Request) -> Request:
    parsed = parse_message(request.encode())
    assert isinstance(parsed, Request)
    for field in ("method", "uri", "vias", "from_", "to", "call_id", "cseq", "max_forwards"):
        assert getattr(parsed, field) == getattr(request, field), field
    assert parsed.list_values("Route") == request.list_values("Route")
    assert parsed.header("Contact") == request.header("Contact")
    assert parsed.body == request.body
    return parsed


def routes(request: Request) -> list[str]:
    return [str(parse_name_addr(v).uri) for v in request.list_values("Route")]


# -- creation ---------------------------------------------------------------------------


def test_uas_dialog_from_invite_and_180() -> None:
    req = invite()
    ringing = answer(req, 180, contact=PBX_CONTACT)
    dlg = Dialog.from_uas(req, ringing)
    assert dlg.state is DialogState.EARLY
    assert dlg.id == DialogId("call-1@192.0.2.10", "b1", "a1")
    assert (dlg.local_tag, dlg.remote_tag, dlg.call_id) == ("b1", "a1", "call-1@192.0.2.10")
    assert dlg.local_uri == parse_uri("sip:bob@pbx.example")
    assert dlg.remote_uri == parse_uri("sip:alice@example.com")
    assert dlg.remote_target == parse_uri("sip:alice@192.0.2.10:5060")
    assert dlg.local_target == parse_uri("sip:pbx@203.0.113.1:5060")
    # §12.1.1: the UAS keeps the Record-Route order.
    assert [str(r.uri) for r in dlg.route_set] == ["sip:p2.example;lr", "sip:p1.example;lr"]
    assert (dlg.local_cseq, dlg.remote_cseq, dlg.secure, dlg.is_uas) == (None, 10, False, True)


def test_uas_dialog_from_200_is_confirmed() -> None:
    assert uas_dialog(200).state is DialogState.CONFIRMED


def test_uac_dialog_reverses_record_route() -> None:
    sent = invite(record_route=())
    ringing = answer(invite(), 183)
    dlg = Dialog.from_uac(sent, ringing)
    assert dlg.state is DialogState.EARLY
    assert dlg.id == DialogId("call-1@192.0.2.10", "a1", "b1")
    # §12.1.2: the UAC reverses Record-Route, so p1 (its neighbour) comes first.
    assert [str(r.uri) for r in dlg.route_set] == ["sip:p1.example;lr", "sip:p2.example;lr"]
    assert dlg.remote_target == parse_uri("sip:bob@198.51.100.7:5070;transport=udp")
    assert dlg.local_target == parse_uri("sip:alice@192.0.2.10:5060")
    assert (dlg.local_cseq, dlg.remote_cseq, dlg.invite_cseq, dlg.is_uas) == (10, None, 10, False)


def test_secure_flag_needs_tls_and_sips() -> None:
    req = invite(uri="sips:bob@pbx.example")
    ok = answer(req, 200, contact="<sips:pbx@203.0.113.1>")
    assert Dialog.from_uas(req, ok, tls=True).secure
    assert not Dialog.from_uas(req, ok).secure
    plain = invite()
    assert not Dialog.from_uas(plain, answer(plain, 200), tls=True).secure


def test_uac_1xx_without_contact_targets_request_uri() -> None:
    sent = invite(record_route=())
    dlg = Dialog.from_uac(sent, answer(sent, 180, contact=None))
    assert dlg.remote_target == sent.uri
    with pytest.raises(RemoteProtocolError):
        Dialog.from_uac(sent, answer(sent, 200, contact=None))


def test_remote_tagless_peer_gives_none_remote_tag() -> None:
    req = invite(from_tag=None)
    dlg = Dialog.from_uas(req, answer(req, 200, contact=PBX_CONTACT))
    assert dlg.remote_tag is None
    bye = dlg.create_request("BYE", local_address=ME)
    assert bye.to.tag is None
    roundtrip(bye)


@pytest.mark.parametrize("status", [100, 300, 486])
def test_only_1xx_and_2xx_create_dialogs(status: int) -> None:
    req = invite()
    with pytest.raises(DialogError):
        Dialog.from_uas(req, answer(req, status))


def test_creation_misuse_raises_dialog_error() -> None:
    req = invite()
    with pytest.raises(DialogError):  # our response lacks the To tag
        Dialog.from_uas(req, answer(req, 180, tag=None))
    with pytest.raises(DialogError):  # a 1xx without tag makes no dialog
        Dialog.from_uac(req, answer(req, 180, tag=None))
    with pytest.raises(DialogError):  # our response lacks a Contact
        Dialog.from_uas(req, answer(req, 200, contact=None))
    with pytest.raises(DialogError):  # response to another request
        Dialog.from_uas(invite(cseq=11), answer(req, 200))
    assert issubclass(DialogError, LocalProtocolError)
    no_contact = invite(contact=None)
    with pytest.raises(RemoteProtocolError):  # the peer's INVITE lacks a Contact
        Dialog.from_uas(no_contact, answer(no_contact, 200))


# -- in-dialog requests -------------------------------------------------------------------


def test_uas_request_uses_remote_target_and_route_set() -> None:
    dlg = uas_dialog()
    bye = dlg.create_request("BYE", [("Reason", "Q.850;cause=16")], local_address=ME)
    assert bye.uri == parse_uri("sip:alice@192.0.2.10:5060")
    assert routes(bye) == ["sip:p2.example;lr", "sip:p1.example;lr"]
    assert str(bye.from_) == "<sip:bob@pbx.example>;tag=b1"
    assert str(bye.to) == '"Alice" <sip:alice@example.com>;tag=a1'
    assert bye.call_id == "call-1@192.0.2.10"
    assert (bye.cseq.number, bye.cseq.method) == (1, "BYE")
    assert bye.max_forwards == 70
    via = bye.vias[0]
    assert (via.transport, via.host, via.port) == ("UDP", "203.0.113.1", 5060)
    assert via.branch is not None and via.branch.startswith("z9hG4bK")
    assert bye.header("Contact") is None  # BYE is no target refresh
    assert bye.header("Reason") == "Q.850;cause=16"
    assert dlg.state is DialogState.TERMINATED
    roundtrip(bye)


def test_uac_request_routes_through_its_neighbour_first() -> None:
    dlg = uac_dialog()
    info = dlg.create_request(
        "INFO", [("Content-Type", "application/dtmf")], b"5", local_address=ME
    )
    assert info.uri == parse_uri("sip:bob@198.51.100.7:5070;transport=udp")
    assert routes(info) == ["sip:p1.example;lr", "sip:p2.example;lr"]
    assert str(info.from_) == '"Alice" <sip:alice@example.com>;tag=a1'
    assert info.to.tag == "b1"
    assert roundtrip(info).body == b"5"


def test_no_route_set_means_no_route_header() -> None:
    req = invite(record_route=())
    dlg = Dialog.from_uas(req, answer(req, 200))
    opts = dlg.create_request("OPTIONS", local_address=ME)
    assert opts.list_values("Route") == []
    assert opts.uri == parse_uri("sip:alice@192.0.2.10:5060")
    roundtrip(opts)


def test_local_cseq_increments_and_ack_cancel_reuse_invite() -> None:
    dlg = uac_dialog()
    branches = set()
    numbers = []
    for method in ("INFO", "INVITE", "ACK", "UPDATE", "OPTIONS"):
        req = dlg.create_request(method, local_address=ME)
        numbers.append((req.cseq.number, req.cseq.method))
        branches.add(req.vias[0].branch)
        roundtrip(req)
    assert numbers == [(11, "INFO"), (12, "INVITE"), (12, "ACK"), (13, "UPDATE"), (14, "OPTIONS")]
    assert len(branches) == 5
    assert dlg.local_cseq == 14
    ack = dlg.create_ack(12, local_address=ME)
    assert (ack.cseq.number, ack.cseq.method) == (12, "ACK")
    cancel = dlg.create_request("CANCEL", local_address=ME, branch="z9hG4bKinvite")
    assert (cancel.cseq.number, cancel.vias[0].branch) == (12, "z9hG4bKinvite")
    assert dlg.local_cseq == 14
    roundtrip(ack)
    roundtrip(cancel)


def test_ack_for_the_initial_invite() -> None:
    dlg = uac_dialog()
    ack = dlg.create_ack(local_address=ME)
    assert (ack.cseq.number, ack.cseq.method) == (10, "ACK")
    assert ack.uri == dlg.remote_target
    assert ack.header("Contact") is None
    assert routes(ack) == ["sip:p1.example;lr", "sip:p2.example;lr"]
    roundtrip(ack)


def test_uas_local_cseq_starts_at_one() -> None:
    dlg = uas_dialog()
    assert [dlg.create_request("INFO", local_address=ME).cseq.number for _ in range(3)] == [1, 2, 3]


@pytest.mark.parametrize("method", ["INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"])
def test_target_refresh_methods_carry_contact(method: str) -> None:
    dlg = uas_dialog()
    req = dlg.create_request(method, local_address=ME)
    assert req.header("Contact") == PBX_CONTACT
    roundtrip(req)


def test_caller_contact_is_not_doubled() -> None:
    dlg = uas_dialog()
    req = dlg.create_request("INVITE", [("Contact", "<sip:moved@203.0.113.9>")], local_address=ME)
    assert req.headers_named("Contact") == ["<sip:moved@203.0.113.9>"]


def test_strict_route_becomes_request_uri() -> None:
    rr = (
        ("Record-Route", "<sip:strict.example;method=INVITE;maddr=192.0.2.99>"),
        ("Record-Route", "<sip:p1.example;lr>"),
    )
    req = invite(record_route=rr)
    dlg = Dialog.from_uas(req, answer(req, 200, contact=PBX_CONTACT))
    bye = dlg.create_request("BYE", local_address=ME)
    # §12.2.1.1: first route as Request-URI (minus `method`), remote target as last Route.
    assert bye.uri == parse_uri("sip:strict.example;maddr=192.0.2.99")
    assert routes(bye) == ["sip:p1.example;lr", "sip:alice@192.0.2.10:5060"]
    roundtrip(bye)


def test_request_uri_drops_uri_headers_of_the_target() -> None:
    req = invite(contact="<sip:alice@192.0.2.10?Subject=hi>")
    dlg = Dialog.from_uas(req, answer(req, 200, contact=PBX_CONTACT))
    bye = dlg.create_request("BYE", local_address=ME)
    assert bye.uri == SipUri(user="alice", host="192.0.2.10")
    roundtrip(bye)


def test_ipv6_sent_by_is_bracketed() -> None:
    dlg = uas_dialog()
    req = dlg.create_request("OPTIONS", local_address=("2001:db8::1", 5062), transport="tcp")
    assert (req.vias[0].transport, req.vias[0].host, req.vias[0].port) == (
        "TCP",
        "[2001:db8::1]",
        5062,
    )
    roundtrip(req)


def test_request_misuse_raises() -> None:
    dlg = uas_dialog(180)
    with pytest.raises(DialogError):  # the callee may not BYE an early dialog (§15)
        dlg.create_request("BYE", local_address=ME)
    with pytest.raises(DialogError):  # no INVITE sent yet
        dlg.create_ack(local_address=ME)
    with pytest.raises(DialogError):
        dlg.create_request("INFO", [("CSeq", "99 INFO")], local_address=ME)
    early_uac = uac_dialog(180)
    with pytest.raises(DialogError):  # an ACK needs a 2xx, hence a confirmed dialog
        early_uac.create_ack(local_address=ME)
    early_uac.create_request("BYE", local_address=ME)  # the caller may
    with pytest.raises(DialogError):
        early_uac.create_request("INFO", local_address=ME)
    assert dlg.local_cseq is None  # failed attempts used no number


# -- receiving requests (§12.2.2) -----------------------------------------------------------


def peer_request(dlg: Dialog, method: str, cseq: int, contact: str | None = None) -> Request:
    """A request from the peer of a UAS dialog built by `uas_dialog`."""
    headers = [
        ("Via", f"SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{method}{cseq}"),
        ("Max-Forwards", "70"),
        ("From", '"Alice" <sip:alice@example.com>;tag=a1'),
        ("To", f"<sip:bob@pbx.example>;tag={dlg.local_tag}"),
        ("Call-ID", dlg.call_id),
        ("CSeq", f"{cseq} {method}"),
    ]
    if contact is not None:
        headers.append(("Contact", contact))
    return Request.build(method, dlg.local_target, headers)


def test_remote_cseq_lower_equal_and_higher() -> None:
    dlg = uas_dialog()
    assert dlg.receive_request(peer_request(dlg, "ACK", 10)) == DialogVerdict()
    assert dlg.receive_request(peer_request(dlg, "INFO", 15)).accepted  # gaps are fine
    assert dlg.remote_cseq == 15
    lower = dlg.receive_request(peer_request(dlg, "INFO", 12))
    assert (lower.accepted, lower.status) == (False, SipStatus.SERVER_INTERNAL_ERROR)
    replay = dlg.receive_request(peer_request(dlg, "INFO", 15))
    assert replay.status == SipStatus.SERVER_INTERNAL_ERROR
    assert dlg.remote_cseq == 15
    assert dlg.receive_request(peer_request(dlg, "INFO", 16)).accepted
    assert dlg.remote_cseq == 16


def test_uac_dialog_takes_first_remote_cseq() -> None:
    dlg = uac_dialog()
    headers = [
        ("Via", "SIP/2.0/UDP 198.51.100.7:5070;branch=z9hG4bKb"),
        ("From", "<sip:bob@pbx.example>;tag=b1"),
        ("To", '"Alice" <sip:alice@example.com>;tag=a1'),
        ("Call-ID", dlg.call_id),
        ("CSeq", "4711 INFO"),
    ]
    req = Request.build("INFO", dlg.local_target, headers)
    assert dlg.receive_request(req).accepted
    assert dlg.remote_cseq == 4711


def test_target_refresh_updates_remote_target() -> None:
    dlg = uas_dialog()
    verdict = dlg.receive_request(peer_request(dlg, "INVITE", 11, "<sip:alice@192.0.2.44:5080>"))
    assert verdict == DialogVerdict(target_refreshed=True)
    assert dlg.remote_target == parse_uri("sip:alice@192.0.2.44:5080")
    assert dlg.receive_request(peer_request(dlg, "UPDATE", 12, "<sip:alice@192.0.2.45>")).accepted
    assert dlg.remote_target == parse_uri("sip:alice@192.0.2.45")
    assert dlg.create_request("BYE", local_address=ME).uri == parse_uri("sip:alice@192.0.2.45")


def test_non_refresh_request_keeps_remote_target() -> None:
    dlg = uas_dialog()
    verdict = dlg.receive_request(peer_request(dlg, "INFO", 11, "<sip:elsewhere@192.0.2.99>"))
    assert verdict == DialogVerdict()
    assert dlg.remote_target == parse_uri("sip:alice@192.0.2.10:5060")


def test_bad_refresh_contact_is_a_400_verdict() -> None:
    dlg = uas_dialog()
    verdict = dlg.receive_request(peer_request(dlg, "UPDATE", 11, "*"))
    assert verdict.status == SipStatus.BAD_REQUEST
    assert dlg.remote_cseq == 10


def test_bye_terminates_and_later_requests_get_481() -> None:
    dlg = uas_dialog()
    assert dlg.receive_request(peer_request(dlg, "BYE", 11)) == DialogVerdict(is_bye=True)
    assert dlg.state is DialogState.TERMINATED
    assert (
        dlg.receive_request(peer_request(dlg, "INFO", 12)).status == SipStatus.CALL_DOES_NOT_EXIST
    )
    with pytest.raises(DialogError):
        dlg.create_request("INFO", local_address=ME)


def test_request_of_another_dialog_gets_481() -> None:
    dlg = uas_dialog()
    other = uas_dialog()
    other.id = DialogId(dlg.call_id, "zz", "a1")
    verdict = dlg.receive_request(peer_request(other, "INFO", 11))
    assert verdict.status == SipStatus.CALL_DOES_NOT_EXIST
    assert dlg.remote_cseq == 10


# -- state transitions ----------------------------------------------------------------------


def test_uas_early_confirmed_terminated() -> None:
    req = invite()
    dlg = Dialog.from_uas(req, answer(req, 180, contact=PBX_CONTACT))
    assert dlg.state is DialogState.EARLY
    dlg.sent_response(answer(req, 183, contact=PBX_CONTACT))
    assert dlg.state is DialogState.EARLY
    dlg.sent_response(answer(req, 200, contact=PBX_CONTACT))
    assert dlg.state is DialogState.CONFIRMED
    dlg.create_request("BYE", local_address=ME)
    assert dlg.state is DialogState.TERMINATED


def test_uas_non_2xx_final_terminates_early_dialog() -> None:
    req = invite()
    dlg = Dialog.from_uas(req, answer(req, 180, contact=PBX_CONTACT))
    dlg.sent_response(answer(req, 487, contact=None))
    assert dlg.state is DialogState.TERMINATED


def test_uac_2xx_confirms_and_recomputes_route_set_and_target() -> None:
    sent = invite(record_route=())
    dlg = Dialog.from_uac(sent, answer(invite(record_route=(RECORD_ROUTE[1],)), 180))
    assert [str(r.uri) for r in dlg.route_set] == ["sip:p1.example;lr"]
    ok = answer(invite(), 200, contact="<sip:bob@198.51.100.8>")
    dlg.receive_response(ok)
    assert dlg.state is DialogState.CONFIRMED
    assert [str(r.uri) for r in dlg.route_set] == ["sip:p1.example;lr", "sip:p2.example;lr"]
    assert dlg.remote_target == parse_uri("sip:bob@198.51.100.8")


def test_uac_non_2xx_final_terminates_early_dialog() -> None:
    sent = invite(record_route=())
    dlg = Dialog.from_uac(sent, answer(sent, 180))
    dlg.receive_response(answer(sent, 487, contact=None))
    assert dlg.state is DialogState.TERMINATED
    dlg.receive_response(answer(sent, 200))  # late: absorbed
    assert dlg.state is DialogState.TERMINATED


def test_failed_reinvite_keeps_dialog_but_481_ends_it() -> None:
    dlg = uac_dialog()
    reinvite = dlg.create_request("INVITE", local_address=ME)
    dlg.receive_response(build_response(reinvite, 488))
    assert dlg.state is DialogState.CONFIRMED
    info = dlg.create_request("INFO", local_address=ME)
    dlg.receive_response(build_response(info, 481))
    assert dlg.state is DialogState.TERMINATED


def test_2xx_to_refresh_updates_remote_target() -> None:
    dlg = uac_dialog()
    update = dlg.create_request("UPDATE", local_address=ME)
    dlg.receive_response(build_response(update, 200, headers=[("Contact", "<sip:bob@192.0.2.77>")]))
    assert dlg.remote_target == parse_uri("sip:bob@192.0.2.77")
    assert dlg.state is DialogState.CONFIRMED


def test_response_of_another_dialog_is_misuse() -> None:
    dlg = uac_dialog()
    with pytest.raises(DialogError):
        dlg.receive_response(answer(invite(), 200, tag="other"))


# -- matching and both sides together --------------------------------------------------------


def test_both_sides_of_one_exchange() -> None:
    sent = invite(record_route=())  # as the UAC sent it
    arrived = invite()  # as the UAS got it, after the proxies
    ok = answer(arrived, 200)
    uac = Dialog.from_uac(sent, ok)
    uas = Dialog.from_uas(arrived, ok)
    assert dialog_id_for_response(ok) == uac.id == DialogId("call-1@192.0.2.10", "a1", "b1")
    assert dialog_id_for_response(ok, is_uas=True) == uas.id
    assert uas.id == DialogId("call-1@192.0.2.10", "b1", "a1")
    assert dialog_id_for_request(arrived) is None  # initial INVITE: no To tag yet
    assert dialog_id_for_request(sent, is_uas=False) == DialogId("call-1@192.0.2.10", "a1", None)

    ack = uac.create_ack(local_address=("192.0.2.10", 5060))
    assert dialog_id_for_request(ack, is_uas=False) == uac.id
    assert dialog_id_for_request(roundtrip(ack)) == uas.id
    assert uas.receive_request(ack).accepted

    moved = [("Contact", "<sip:bob@198.51.100.9>")]
    reinvite = uas.create_request("INVITE", moved, local_address=ME)
    assert dialog_id_for_request(reinvite, is_uas=False) == uas.id
    assert uac.receive_request(roundtrip(reinvite)) == DialogVerdict(target_refreshed=True)
    assert uac.remote_target == parse_uri("sip:bob@198.51.100.9")
    reply = build_response(reinvite, 200, headers=[("Contact", PBX_CONTACT)])
    assert dialog_id_for_response(reply) == uas.id
    assert dialog_id_for_response(reply, is_uas=True) == uac.id
    uas.receive_response(reply)

    bye = uac.create_request("BYE", local_address=("192.0.2.10", 5060))
    assert bye.cseq.number == 11
    verdict = uas.receive_request(roundtrip(bye))
    assert verdict.is_bye and verdict.accepted
    assert uac.state is uas.state is DialogState.TERMINATED
