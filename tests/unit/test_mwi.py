"""The pure part of MWI: message-summary bodies, SUBSCRIBE decisions, the subscription table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pbx.config import ListenAddress, MwiConfig, load
from pbx.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from pbx.mwi import (
    CSEQ_MARGIN,
    MessageSummary,
    Subscription,
    SubscriptionTable,
    accepts_summary,
    event_package,
    granted_expires,
    stored_key,
    subscription_from_record,
    subscription_record,
    subscription_state,
)
from pbx.registrar import expires_header
from pbx.sip.aio import Peer
from pbx.sip.dialog import Dialog
from pbx.sip.message import Method, Request, build_response, parse_message

PEER = Peer("udp", "127.0.0.1", 5062, ListenAddress("udp", "127.0.0.1", 5060))


def subscribe(
    extra: str = "", call_id: str = "sub-1", contact: str = "1001@127.0.0.1:5062"
) -> Request:
    message = parse_message(
        (
            "SUBSCRIBE sip:1001@pbx.test SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK1\r\n"
            "From: <sip:1001@pbx.test>;tag=phone\r\nTo: <sip:1001@pbx.test>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:{contact}>\r\n"
            f"{extra}Content-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(message, Request)
    return message


def subscription(
    expires_at: float, call_id: str = "sub-1", subscriber: str = "1001", created: float = 0.0,
    contact: str = "1001@127.0.0.1:5062",
) -> Subscription:  # fmt: skip
    request = subscribe(call_id=call_id, contact=contact)
    ok = build_response(
        request, 200, headers=[("Contact", "<sip:pbx@127.0.0.1:5060>")], to_tag=f"t-{call_id}"
    )
    dialog = Dialog.from_uas(request, ok)
    return Subscription(
        dialog, subscriber, subscriber, "sip:1001@pbx.test", expires_at, created, PEER
    )


# the body (RFC 3842 §5.2)


def test_body_without_messages() -> None:
    assert MessageSummary("sip:1001@pbx.test", 0, 0).body() == (
        b"Messages-Waiting: no\r\n"
        b"Message-Account: sip:1001@pbx.test\r\n"
        b"Voice-Message: 0/0 (0/0)\r\n"
    )


def test_body_with_new_old_and_urgent_messages() -> None:
    summary = MessageSummary("sip:1001@pbx.test", 2, 1, urgent_new=1)
    assert summary.waiting
    assert summary.body() == (
        b"Messages-Waiting: yes\r\n"
        b"Message-Account: sip:1001@pbx.test\r\n"
        b"Voice-Message: 2/1 (1/0)\r\n"
    )


def test_only_old_messages_are_not_waiting() -> None:
    assert MessageSummary("sip:1001@pbx.test", 0, 5).body().startswith(b"Messages-Waiting: no\r\n")


@pytest.mark.parametrize(
    "summary",
    [
        MessageSummary("sip:1001@pbx.test", 0, 0),
        MessageSummary("sip:1001@pbx.test", 2, 1),
        MessageSummary("sip:refills@clinic.example", 4, 8, 1, 2),
    ],
)
def test_parse_reads_what_body_writes(summary: MessageSummary) -> None:
    assert MessageSummary.parse(summary.body()) == summary


def test_parse_the_rfc_3842_example_and_other_spellings() -> None:
    # RFC 3842 §6: other message classes and the optional headers after the blank line.
    body = (
        b"Messages-Waiting: yes\r\nMessage-Account: sip:alice@vmail.example.com\r\n"
        b"Voice-Message: 4/8 (1/2)\r\nFax-Message: 1/0\r\n\r\n"
        b"Message-ID: 1234\r\nSubject: hello\r\n"
    )
    assert MessageSummary.parse(body) == MessageSummary("sip:alice@vmail.example.com", 4, 8, 1, 2)
    loose = b"messages-waiting:YES\nvoice-message:  3 / 0\n"
    assert MessageSummary.parse(loose) == MessageSummary("", 3, 0)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"Voice-Message: 1/0\r\n",
        b"Messages-Waiting: maybe\r\n",
        b"Messages-Waiting: yes\r\nVoice-Message: one/none\r\n",
        b"Messages-Waiting yes\r\n",
        b"\xff\xfe",
    ],
)
def test_parse_refuses_malformed_bodies(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        MessageSummary.parse(body)


def test_negative_counts_are_our_bug() -> None:
    with pytest.raises(LocalProtocolError):
        MessageSummary("sip:1001@pbx.test", -1, 0)


# deciding about a SUBSCRIBE


def test_event_package_and_id() -> None:
    assert event_package(subscribe()) is None
    assert event_package(subscribe("Event: message-summary\r\n")) == ("message-summary", None)
    assert event_package(subscribe("o: message-summary;id=7\r\n")) == ("message-summary", "7")
    assert event_package(subscribe("Event: presence\r\n")) == ("presence", None)


def test_accept() -> None:
    assert accepts_summary(subscribe())
    assert accepts_summary(subscribe("Accept: application/simple-message-summary\r\n"))
    assert accepts_summary(subscribe("Accept: application/pidf+xml, */*\r\n"))
    assert not accepts_summary(subscribe("Accept: application/pidf+xml\r\n"))


def test_expires_granted_within_bounds() -> None:
    config = MwiConfig(min_expires=60, max_expires=3600, default_expires=1800)
    assert expires_header(subscribe(), config.default_expires) == 1800
    assert expires_header(subscribe("Expires: 120\r\n"), 1800) == 120
    with pytest.raises(RemoteProtocolError):
        expires_header(subscribe("Expires: soon\r\n"), 1800)
    assert granted_expires(0, config) == 0  # unsubscribe, or a fetch
    assert granted_expires(30, config) is None  # 423 with Min-Expires
    assert granted_expires(60, config) == 60
    assert granted_expires(86400, config) == 3600  # shortened, never lengthened


def test_subscription_state() -> None:
    assert subscription_state(1000.0, 100.0) == "active;expires=900"
    assert subscription_state(100.2, 100.0) == "active;expires=0"
    assert subscription_state(None, 100.0) == "terminated;reason=timeout"
    assert subscription_state(None, 100.0, "deactivated") == "terminated;reason=deactivated"


# the subscription table, its clock passed in


def test_table_keyed_by_dialog() -> None:
    table = SubscriptionTable()
    sub = subscription(expires_at=3600.0)
    assert table.add(sub) == []
    assert (sub.key.call_id, sub.key.local_tag, sub.key.remote_tag) == ("sub-1", "t-sub-1", "phone")
    assert table.get(sub.key) is sub
    assert table.for_box("1001") == [sub]
    assert table.for_box("1002") == []
    assert table.of_subscriber("1001") == [sub]
    assert table.remove(sub.key) is sub
    assert len(table) == 0
    assert table.next_timer() is None


def test_expiry_runs_on_the_callers_clock() -> None:
    table = SubscriptionTable()
    early, late = subscription(600.0, "a", contact="a@h"), subscription(3600.0, "b", contact="b@h")
    table.add(early)
    table.add(late)
    assert table.next_timer() == 600.0
    assert table.expire(599.9) == []
    late.expires_at = 7200.0  # refreshed
    now, gone = 0.0, []
    while (at := table.next_timer()) is not None:
        now = at
        gone.append((now, [s.key.call_id for s in table.expire(now)]))
    assert gone == [(600.0, ["a"]), (7200.0, ["b"])]
    assert len(table) == 0


def test_a_rebooted_phone_replaces_its_old_subscription() -> None:
    table = SubscriptionTable()
    old = subscription(3600.0, "before-reboot")
    table.add(old)
    new = subscription(3600.0, "after-reboot")
    assert table.add(new) == [old]
    assert list(table) == [new]


def test_the_oldest_subscription_of_an_extension_makes_room() -> None:
    table = SubscriptionTable(per_subscriber=2)
    subs = [subscription(3600.0, f"s{i}", created=float(i), contact=f"p{i}@h") for i in range(3)]
    assert table.add(subs[0]) == table.add(subs[1]) == []
    assert table.add(subs[2]) == [subs[0]]
    assert {s.key.call_id for s in table} == {"s1", "s2"}
    other = subscription(3600.0, "x", subscriber="1002", contact="x@h")
    assert table.add(other) == []
    assert len(table) == 3


# [mwi] in the configuration


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pbx.toml"
    path.write_text(text)
    return path


def test_mwi_section_loads(tmp_path: Path) -> None:
    assert load(write(tmp_path, 'data_dir = "d"\n')).mwi == MwiConfig()
    text = (
        'data_dir = "d"\n[mwi]\nunsolicited = ["1001", "1002"]\nmin_expires = 30\n'
        "max_expires = 600\ndefault_expires = 300\n"
    )
    assert load(write(tmp_path, text)).mwi == MwiConfig(("1001", "1002"), 30, 600, 300)


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ('data_dir = "d"\n[mwi]\nunsolicited = "1001"\n', "mwi.unsolicited", 3),
        ('data_dir = "d"\n[mwi]\nunsolicited = ["1001", "1001"]\n', "mwi.unsolicited", 3),
        ('data_dir = "d"\n[mwi]\nmax_expires = "1h"\n', "mwi.max_expires", 3),
        ('data_dir = "d"\n[mwi]\nexpires = 60\n', "mwi.expires", 3),
        ('data_dir = "d"\n[mwi]\nmin_expires = 600\ndefault_expires = 60\n',
         "mwi.default_expires", 4),
    ],
)  # fmt: skip
def test_mwi_errors_name_key_and_line(tmp_path: Path, text: str, key: str, line: int) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    assert (info.value.key, info.value.line) == (key, line)


# the stored form (kept across a crash)


def test_a_subscription_survives_its_record() -> None:
    request = parse_message(
        b"SUBSCRIBE sip:1001@pbx.test SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP [::1]:5062;branch=z9hG4bK1\r\n"
        b'From: "Dr \\"Who\\"" <sip:1001@pbx.test>;tag=phone\r\nTo: <sip:1001@pbx.test>\r\n'
        b"Call-ID: kept@phone\r\nCSeq: 7 SUBSCRIBE\r\nContact: <sip:1001@[::1]:5062;ob>\r\n"
        b"Record-Route: <sip:proxy.test;lr>, <sip:edge.test;lr>\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert isinstance(request, Request)
    ok = build_response(request, 200, headers=[("Contact", "<sip:pbx@[::1]:5060>")], to_tag="us")
    dialog = Dialog.from_uas(request, ok)
    dialog.local_cseq = 3
    peer = Peer("udp", "::1", 5062, ListenAddress("udp", "::1", 5060))
    sub = Subscription(dialog, "1001", "1001", "sip:1001@pbx.test", 1600.0, 1000.0, peer,
                       "message-summary;id=7")  # fmt: skip
    back = subscription_from_record(stored_key(sub.key), subscription_record(sub))
    assert back.key == sub.key
    assert (back.box, back.subscriber, back.account, back.event) == (
        "1001",
        "1001",
        "sip:1001@pbx.test",
        "message-summary;id=7",
    )
    assert (back.expires_at, back.created_at, back.peer) == (1600.0, 1000.0, peer)
    restored = back.dialog
    assert str(restored.remote_party) == str(dialog.remote_party)
    assert restored.remote_party.display_name == 'Dr "Who"'
    assert str(restored.remote_target) == "sip:1001@[::1]:5062;ob"
    assert [str(r) for r in restored.route_set] == ["<sip:proxy.test;lr>", "<sip:edge.test;lr>"]
    assert restored.remote_cseq == 7
    # NOTIFYs sent just before a crash may not have had their CSeq stored.
    assert restored.local_cseq == 3 + CSEQ_MARGIN
    # The NOTIFY it sends goes where the one before would have.
    notify = restored.create_request(Method.NOTIFY, [], local_address=("::1", 5060))
    assert str(notify.uri) == "sip:1001@[::1]:5062;ob"  # loose routing: Route headers
    assert notify.headers_named("Route") == ["<sip:proxy.test;lr>", "<sip:edge.test;lr>"]
    assert notify.call_id == "kept@phone" and notify.cseq.number == 4 + CSEQ_MARGIN
    assert (notify.from_.tag, notify.to.tag) == ("us", "phone")


GOOD = json.loads(subscription_record(subscription(10.0)))


@pytest.mark.parametrize(
    "record",
    [
        "", "{}", "[1]", "not json", '{"box": "1001"}',
        # a whole record, but one field of the wrong type or unparsable
        *(json.dumps({**GOOD, field: value}) for field, value in [
            ("local_party", 5), ("local_target", None), ("remote_target", "not a uri"),
            ("route_set", "sip:proxy"), ("peer", ["udp", "127.0.0.1"]), ("local", 5060),
            ("expires_at", "soon"),
        ]),
    ],
)  # fmt: skip
def test_an_unreadable_record_is_a_value_error(record: str) -> None:
    with pytest.raises(ValueError, match="unreadable MWI subscription record"):
        subscription_from_record(("c", "l", "r"), record)
    good = subscription_from_record(("c", "l", ""), json.dumps(GOOD))
    assert good.key.remote_tag is None
