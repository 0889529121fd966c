"""Replaces header parsing and matching (RFC 3891), and park slot bookkeeping."""

from __future__ import annotations

import pytest

from pbx.errors import RemoteProtocolError
from pbx.parking import ParkingLot
from pbx.sip.dialog import DialogId
from pbx.sip.replaces import Replaces, parse_replaces, replaces_in_uri
from pbx.sip.uri import SipUri, parse_uri


def test_parse_rfc3891_example() -> None:
    # RFC 3891 §6.1
    value = "98732@sip.example.com;from-tag=r33th4x0r;to-tag=ff87ff"
    assert parse_replaces(value) == Replaces("98732@sip.example.com", "ff87ff", "r33th4x0r")
    early = parse_replaces("12adf2f34456gs5;to-tag=12345;from-tag=54321;early-only")
    assert early.early_only
    assert parse_replaces(early.header_value()) == early


@pytest.mark.parametrize(
    "value",
    ["", ";to-tag=a;from-tag=b", "abc;to-tag=a", "abc;from-tag=b", "a b;to-tag=1;from-tag=2"],
)
def test_parse_rejects(value: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_replaces(value)


def test_matches_either_tag_order() -> None:
    ours = DialogId("call@x", local_tag="ours", remote_tag="theirs")
    assert Replaces("call@x", "ours", "theirs").matches(ours)
    assert Replaces("call@x", "theirs", "ours").matches(ours)
    assert not Replaces("call@x", "ours", "other").matches(ours)
    assert not Replaces("other@x", "ours", "theirs").matches(ours)


def test_replaces_from_a_refer_to_uri() -> None:
    uri = parse_uri("sip:1003@pbx.example?Replaces=abc%40host%3Bto-tag%3D1%3Bfrom-tag%3D2")
    assert isinstance(uri, SipUri)
    assert replaces_in_uri(uri) == Replaces("abc@host", "1", "2")
    plain = parse_uri("sip:1003@pbx.example")
    assert isinstance(plain, SipUri)
    assert replaces_in_uri(plain) is None


def test_parking_lot_takes_the_lowest_free_slot() -> None:
    lot = ParkingLot(["701", "702"])
    assert lot.park("a") == "701"
    assert lot.park("a") == "701"  # parked already: keeps its slot
    assert lot.park("b") == "702"
    assert lot.park("c") is None  # full
    assert lot.call_in("702") == "b"
    assert lot.release("a") == "701"
    assert lot.release("a") is None
    assert lot.park("c") == "701"
    assert lot.parked() == {"701": "c", "702": "b"}
    assert lot.slot_of("b") == "702"
