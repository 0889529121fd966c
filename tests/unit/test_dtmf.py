"""RFC 4733 telephone-event reception and SIP INFO DTMF bodies."""

from __future__ import annotations

import struct

import pytest

from media.dtmf import Digit, EventPacket, TelephoneEventReceiver, digit_from_info


def event(code: int, duration: int, timestamp: int, end: bool = False, seq: int = 0) -> bytes:
    header = struct.pack("!BBHII", 0x80, 101, seq, timestamp, 0x5555)
    return header + struct.pack("!BBH", code, (0x80 if end else 0) | 10, duration)


def feed(receiver: TelephoneEventReceiver, packets: list[bytes], step: float = 0.05) -> list[Digit]:
    out: list[Digit] = []
    for n, packet in enumerate(packets):
        out += receiver.on_packet(packet, n * step)
    return out


def test_one_key_press_with_redundant_end_packets() -> None:
    # §2.5.1: updates every 50 ms, then the final duration three times with E set.
    packets = [event(5, d, 1000) for d in (400, 800, 1200)]
    packets += [event(5, 1600, 1000, end=True)] * 3
    assert feed(TelephoneEventReceiver(), packets) == [Digit("5", 0.2, 1000)]


def test_retransmitted_and_reordered_packets_report_once() -> None:
    packets = [event(1, 400, 0), event(1, 400, 0), event(1, 800, 0, end=True),
               event(1, 400, 0), event(1, 800, 0, end=True)]  # fmt: skip
    assert feed(TelephoneEventReceiver(), packets) == [Digit("1", 0.1, 0)]


def test_digits_in_a_row_and_symbols() -> None:
    packets = []
    for n, code in enumerate((10, 11, 0, 12, 15)):
        packets += [event(code, 400, n * 8000), event(code, 800, n * 8000, end=True)]
    assert "".join(d.digit for d in feed(TelephoneEventReceiver(), packets)) == "*#0AD"


def test_lost_end_packets_end_the_digit_at_the_next_event() -> None:
    packets = [event(2, 400, 0), event(2, 800, 0), event(3, 400, 4000), event(3, 800, 4000, True)]
    assert feed(TelephoneEventReceiver(), packets) == [Digit("2", 0.1, 0), Digit("3", 0.1, 4000)]


def test_lost_end_packets_end_the_digit_after_a_timeout() -> None:
    receiver = TelephoneEventReceiver(end_timeout=0.3)
    assert receiver.on_packet(event(7, 400, 0), 1.0) == []
    assert receiver.next_timer() == pytest.approx(1.3)
    assert receiver.on_timer(1.2) == []
    assert receiver.on_timer(1.3) == [Digit("7", 0.05, 0)]
    assert receiver.next_timer() is None
    # A late end packet of that event is not a new digit.
    assert receiver.on_packet(event(7, 800, 0, end=True), 1.4) == []


def test_long_press_in_segments_is_one_digit() -> None:
    # §2.5.1.3: at 0xFFFF ticks the sender starts a new segment at timestamp + duration.
    first = [event(9, 32000, 0), event(9, 0xFFFF, 0)]
    second = [event(9, 8000, 0xFFFF), event(9, 16000, 0xFFFF, end=True)]
    [digit] = feed(TelephoneEventReceiver(), first + second)
    assert digit.digit == "9" and digit.timestamp == 0
    assert digit.duration == pytest.approx((0xFFFF + 16000) / 8000)


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x80" * 15,
        event(17, 400, 0),
        b"\x00" * 16,
        struct.pack("!BBHII", 0x90, 101, 0, 0, 1) + b"\x00\x00\x00\x09",
    ],
)
def test_garbage_and_non_dtmf_events_are_ignored(packet: bytes) -> None:
    assert TelephoneEventReceiver().on_packet(packet, 0.0) == []


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", ("5", 0.16)),
        ("application/dtmf-relay", b"Signal= #\r\nDuration= 250", ("#", 0.25)),
        ("application/dtmf-relay", b"Signal=10\r\n", ("*", 0.0)),
        ("Application/DTMF", b"9", ("9", 0.0)),
        ("application/dtmf-relay", b"Signal=55\r\n", None),
        ("application/sdp", b"5", None),
        ("application/dtmf", b"", None),
        # Unicode digits (superscripts) pass str.isdigit() but not int(): no duration.
        ("application/dtmf-relay", "Signal=1\r\nDuration=\u00b2\r\n".encode(), ("1", 0.0)),
    ],
)
def test_sip_info_bodies(
    content_type: str, body: bytes, expected: tuple[str, float] | None
) -> None:
    assert digit_from_info(content_type, body) == expected


def test_sent_events_are_what_a_receiver_reads() -> None:
    from media.dtmf import event_packets

    packets = event_packets("5", duration=0.1)
    assert [p.marker for p in packets] == [True] + [False] * 6
    assert [p.end for p in packets] == [False] * 4 + [True] * 3
    durations = [int.from_bytes(p.payload[2:4], "big") for p in packets]
    assert durations == [160, 320, 480, 640, 800, 800, 800]
    receiver = TelephoneEventReceiver()
    digits = []
    for n, packet in enumerate(packets):
        header = struct.pack("!BBHII", 0x80 | 0, (0x80 if packet.marker else 0) | 101, n, 4000, 7)
        digits += receiver.on_packet(header + packet.payload, n * 0.02)
    assert digits == [Digit("5", 0.1, 4000)]
    short = event_packets("#", duration=0.01)
    assert [p.end for p in short] == [True] * 3 and short[0].marker
    with pytest.raises(ValueError, match="not a DTMF digit"):
        event_packets("x")


def read_back(packets: list[EventPacket]) -> list[Digit]:
    """What a receiver reads of sent events (an event starting at timestamp 4000)."""
    receiver = TelephoneEventReceiver()
    digits = []
    for n, packet in enumerate(packets):
        header = struct.pack("!BBHII", 0x80, (0x80 if packet.marker else 0) | 101, n & 0xFFFF,
                             (4000 + packet.offset) & 0xFFFFFFFF, 7)  # fmt: skip
        digits += receiver.on_packet(header + packet.payload, n * 0.02)
    return digits


def test_a_long_press_is_sent_in_segments_a_receiver_joins() -> None:
    from media.dtmf import MAX_PRESS, event_packets

    # 10 s is 80000 ticks: more than a 16-bit duration holds (§2.5.1.3).
    packets = event_packets("9", duration=10.0)
    assert sum(p.marker for p in packets) == 1 and packets[0].marker
    assert {p.offset for p in packets} == {0, 0xFFFF}
    durations = [int.from_bytes(p.payload[2:4], "big") for p in packets]
    first_segment = [d for p, d in zip(packets, durations, strict=True) if p.offset == 0]
    assert max(first_segment) == 0xFFFF
    assert durations[-3:] == [80000 - 0xFFFF] * 3 and all(p.end for p in packets[-3:])
    assert read_back(packets) == [Digit("9", 10.0, 4000)]
    # The report closing the first segment (duration 0xFFFF) lost: still one press.
    closing = next(n for n, p in enumerate(packets) if p.offset)  # the first of segment 2
    kept = [p for n, p in enumerate(packets) if n != closing - 1]
    assert read_back(kept) == [Digit("9", 10.0, 4000)]
    # However long an INFO says the press was, it is sent as at most MAX_PRESS.
    huge = event_packets("1", duration=1e9)
    assert len(huge) == round(MAX_PRESS / 0.02) + 2
