"""RTP/RTCP (RFC 3550): packets, compound RTCP, receive statistics, rewriting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.rtp import (
    SDES_CNAME,
    Bye,
    ReceiverReport,
    ReceiveStats,
    ReportBlock,
    RtcpPacket,
    RtcpReporter,
    RtcpUnknown,
    RtpError,
    RtpExtension,
    RtpPacket,
    SdesChunk,
    SendCounts,
    SenderInfo,
    SenderReport,
    SequenceRewriter,
    SourceDescription,
    build_rtcp,
    compact_ntp,
    is_rtcp,
    ntp_from_unix,
    parse_rtcp,
    parse_rtp,
    rewrite_header,
    round_trip_time,
    rtcp_interval,
)
from pbx.errors import LocalProtocolError, MediaError

# V=2, no P/X/CC; M=1 PT=0; seq 0x1234; ts 0x00000A0B; SSRC 0xDEADBEEF; payload.
SIMPLE = bytes.fromhex("80 80 1234 00000a0b deadbeef") + b"\xd5" * 4


# --- RTP packets ---------------------------------------------------------------


def test_parse_simple_packet() -> None:
    packet = parse_rtp(SIMPLE)
    assert packet == RtpPacket(0, 0x1234, 0xA0B, 0xDEADBEEF, b"\xd5" * 4, marker=True)
    assert packet.encode() == SIMPLE


def test_csrcs_extension_and_padding() -> None:
    # P, X, CC=2; PT 8; two CSRCs; extension profile 0xBEDE with one word;
    # 2 payload bytes; 3 padding bytes ending in the count 3 (§5.1, §5.3.1).
    data = (
        bytes.fromhex("b2 08 0001 00000002 00000003")
        + bytes.fromhex("00000011 00000022")
        + bytes.fromhex("bede 0001 10ff0000")
        + b"ab"
        + b"\x00\x00\x03"
    )
    packet = parse_rtp(data)
    assert packet == RtpPacket(
        8,
        1,
        2,
        3,
        b"ab",
        csrcs=(0x11, 0x22),
        extension=RtpExtension(0xBEDE, bytes.fromhex("10ff0000")),
        padding=3,
    )
    assert packet.encode() == data


def test_padding_contents_are_not_kept() -> None:
    data = bytes.fromhex("a0 00 0001 00000002 00000003") + b"xy" + b"\x07\x02"
    packet = parse_rtp(data)
    assert (packet.payload, packet.padding) == (b"xy", 2)
    assert packet.encode() == data[:-2] + b"\x00\x02"


def test_empty_extension() -> None:
    data = bytes.fromhex("90 00 0001 00000002 00000003 0001 0000") + b"p"
    assert parse_rtp(data).extension == RtpExtension(1, b"")
    assert parse_rtp(data).payload == b"p"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        SIMPLE[:11],
        bytes([0x40]) + SIMPLE[1:],  # version 1
        bytes([0x00]) + SIMPLE[1:],  # version 0
        bytes([0x81]) + SIMPLE[1:12],  # CC=1 but no CSRC
        bytes([0x90]) + SIMPLE[1:12] + b"\x00\x01",  # X but short extension header
        bytes([0x90]) + SIMPLE[1:12] + b"\x00\x01\x00\x02abcd",  # extension too long
        bytes([0xA0]) + SIMPLE[1:12] + b"\x00",  # padding count 0
        bytes([0xA0]) + SIMPLE[1:12] + b"ab\x04",  # padding longer than the payload
    ],
)
def test_rejects_malformed(data: bytes) -> None:
    with pytest.raises(RtpError):
        parse_rtp(data)


def test_rtp_error_is_a_media_error() -> None:
    assert issubclass(RtpError, MediaError)


@pytest.mark.parametrize(
    "packet",
    [
        RtpPacket(128, 0, 0, 0),
        RtpPacket(0, 0, 0, 0, csrcs=tuple(range(16))),
        RtpPacket(0, 0, 0, 0, padding=256),
        RtpPacket(0, 0, 0, 0, extension=RtpExtension(0, b"abc")),
    ],
)
def test_encode_rejects_misuse(packet: RtpPacket) -> None:
    with pytest.raises(LocalProtocolError):
        packet.encode()


@given(st.binary(max_size=80))
def test_arbitrary_bytes_parse_or_raise_rtp_error(data: bytes) -> None:
    try:
        packet = parse_rtp(data)
    except RtpError:
        return
    if not data[0] & 0x20:
        assert packet.encode() == data
    assert parse_rtp(packet.encode()) == packet


packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=40),
    marker=st.booleans(),
    csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    extension=st.none()
    | st.builds(
        RtpExtension,
        st.integers(0, 0xFFFF),
        st.integers(0, 4).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)),
    ),
    padding=st.integers(0, 255),
)


@given(packets)
def test_encode_parse_round_trip(packet: RtpPacket) -> None:
    data = packet.encode()
    assert parse_rtp(data) == packet
    if not packet.padding:
        assert parse_rtp(data).encode() == data


# --- Header rewriting and demultiplexing --------------------------------------


def test_rewrite_header_keeps_the_rest() -> None:
    data = RtpPacket(0, 5, 6, 7, b"voice", marker=True, csrcs=(9,), padding=2).encode()
    out = rewrite_header(data, 0x10000 + 3, (1 << 32) + 4, 0xFEEDFACE)
    assert parse_rtp(out) == RtpPacket(
        0, 3, 4, 0xFEEDFACE, b"voice", marker=True, csrcs=(9,), padding=2
    )
    assert out[12:] == data[12:]


def test_rewrite_header_payload_type_and_marker() -> None:
    out = rewrite_header(SIMPLE, 1, 2, 3, payload_type=101)
    assert (out[1], parse_rtp(out).marker) == (0x80 | 101, True)
    out = rewrite_header(SIMPLE, 1, 2, 3, payload_type=8, marker=False)
    assert out[1] == 8
    with pytest.raises(RtpError):
        rewrite_header(SIMPLE[:11], 1, 2, 3)
    with pytest.raises(LocalProtocolError):
        rewrite_header(SIMPLE, 1, 2, 3, payload_type=128)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (bytes.fromhex("80c8"), True),  # SR
        (bytes.fromhex("81c9"), True),  # RR
        (bytes.fromhex("80c0"), True),  # 192, low edge
        (bytes.fromhex("80df"), True),  # 223, high edge
        (bytes.fromhex("80bf"), False),  # marker + PT 63
        (bytes.fromhex("80e0"), False),  # marker + PT 96, dynamic audio
        (bytes.fromhex("8000"), False),  # PCMU
        (b"\x80", False),
    ],
)
def test_is_rtcp(data: bytes, expected: bool) -> None:
    assert is_rtcp(data) is expected


# --- RTCP ----------------------------------------------------------------------

SR_BYTES = bytes.fromhex(
    "81c8000c"  # V=2 RC=1 PT=200 length 12 words
    "01020304"  # sender SSRC
    "e000000080000000"  # NTP timestamp
    "000000a0"  # RTP timestamp 160
    "0000000a"  # 10 packets
    "00000640"  # 1600 octets
    "aabbccdd"  # report block: source
    "40000003"  # fraction 64/256, 3 lost
    "00010005"  # extended highest sequence: cycle 1, seq 5
    "0000000c"  # jitter 12
    "12345678"  # LSR
    "00010000"  # DLSR 1 s
)
SR = SenderReport(
    0x01020304,
    SenderInfo(0xE0000000_80000000, 160, 10, 1600),
    (ReportBlock(0xAABBCCDD, 64, 3, 0x10005, 12, 0x12345678, 0x10000),),
)
SDES_BYTES = bytes.fromhex("81ca0003 01020304 01026162 00000000")  # CNAME "ab"
SDES = SourceDescription((SdesChunk(0x01020304, ((1, b"ab"),)),))
BYE_BYTES = bytes.fromhex("81cb0003 01020304 05626f72 65640000")  # reason "bored"
BYE = Bye((0x01020304,), b"bored")


def test_sender_report_hand_computed() -> None:
    assert SR.encode() == SR_BYTES
    assert parse_rtcp(SR_BYTES) == [SR]


def test_compound_sr_sdes_bye() -> None:
    data = build_rtcp(SR, SDES, BYE)
    assert data == SR_BYTES + SDES_BYTES + BYE_BYTES
    parsed = parse_rtcp(data)
    assert parsed == [SR, SDES, BYE]
    assert isinstance(parsed[1], SourceDescription)
    assert parsed[1].chunks[0].cname == b"ab"


def test_compound_rr_with_negative_loss_and_sdes_items() -> None:
    rr = ReceiverReport(7, (ReportBlock(8, 0, -1, 100, 0), ReportBlock(9, 255, 0x7FFFFF, 1, 2)))
    sdes = SourceDescription(
        (SdesChunk(7, ((1, b"user@host"), (6, b"pbx"))), SdesChunk(8, ((1, b"xyz"),)))
    )
    data = build_rtcp(rr, sdes)
    assert data[:4] == bytes.fromhex("82c9000d")
    assert data[12:16] == bytes.fromhex("00ffffff")  # -1 in 24 bits
    assert parse_rtcp(data) == [rr, sdes]
    assert len(data) % 4 == 0


def test_empty_rr_bye_without_reason_and_unknown() -> None:
    app = RtcpUnknown(204, 1, b"\x00\x00\x00\x07NAME")
    packets: list[RtcpPacket] = [ReceiverReport(1), Bye((1, 2)), app]
    data = build_rtcp(*packets)
    assert data[:8] == bytes.fromhex("80c90001 00000001")
    assert parse_rtcp(data) == packets


def test_rtcp_padding_is_stripped() -> None:
    padded = bytes.fromhex("a0c90002 00000001 00000004")  # RR + 4 padding octets
    assert parse_rtcp(padded) == [ReceiverReport(1)]


def test_unknown_packet_with_odd_body_is_re_padded() -> None:
    data = bytes.fromhex("a0cc0001 ab000002")  # APP-type body "ab" + 2 padding octets
    assert parse_rtcp(data) == [RtcpUnknown(204, 0, b"\xab\x00")]
    assert build_rtcp(*parse_rtcp(data)) == bytes.fromhex("a0cc0001 ab000002")


@pytest.mark.parametrize(
    "packet",
    [
        SourceDescription((SdesChunk(1, ((1, bytes(256)),)),)),
        Bye((1,), bytes(256)),
        ReceiverReport(1, (ReportBlock(2, 0, 0, 0, 0),) * 32),
    ],
)
def test_rtcp_encode_rejects_misuse(packet: RtcpPacket) -> None:
    with pytest.raises(LocalProtocolError):
        packet.encode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\xc9\x00",
        bytes.fromhex("40c90001 00000001"),  # version 1
        bytes.fromhex("80c90002 00000001"),  # length past the end
        bytes.fromhex("81c90001 00000001"),  # RC=1, no block
        bytes.fromhex("81c80001 00000001"),  # SR without sender info
        bytes.fromhex("81ca0001 00000001"),  # SDES chunk not terminated
        bytes.fromhex("81ca0002 00000001 0105abcd"),  # SDES item runs out
        bytes.fromhex("82cb0001 00000001"),  # BYE SC=2, one SSRC
        bytes.fromhex("81cb0002 00000001 05616200"),  # BYE reason truncated
        bytes.fromhex("a0c90001 00000000"),  # padding count 0
        bytes.fromhex("80c90001 00000001 80"),  # trailing bytes
    ],
)
def test_rtcp_rejects_malformed(data: bytes) -> None:
    with pytest.raises(RtpError):
        parse_rtcp(data)


@given(st.binary(max_size=120))
def test_rtcp_arbitrary_bytes(data: bytes) -> None:
    try:
        parsed = parse_rtcp(data)
    except RtpError:
        return
    assert parse_rtcp(build_rtcp(*parsed)) == parsed


def test_ntp_from_unix() -> None:
    assert ntp_from_unix(0.0) == 2_208_988_800 << 32
    assert ntp_from_unix(0.5) == (2_208_988_800 << 32) | 0x80000000


# --- Receive statistics (RFC 3550 A.1, A.3, A.8) --------------------------------


def feed(stats: ReceiveStats, *sequences: int) -> list[bool]:
    """Packets sent every 20 ms and arriving with no jitter."""
    return [stats.on_packet(seq, seq * 160, seq * 0.02) for seq in sequences]


def test_probation_needs_two_in_order() -> None:
    stats = ReceiveStats(1, 8000)
    assert feed(stats, 10, 11, 12) == [False, True, True]
    # A.1 re-initialises on the packet ending probation, so base_seq is 11.
    assert (stats.received, stats.expected, stats.lost, stats.extended_max) == (2, 2, 0, 12)


def test_probation_restarts_on_a_gap() -> None:
    stats = ReceiveStats(1, 8000)
    assert feed(stats, 10, 20, 21, 22) == [False, False, True, True]
    assert (stats.received, stats.expected) == (2, 2)


def test_no_report_before_a_valid_packet() -> None:
    stats = ReceiveStats(1, 8000)
    assert stats.report_block(0.0) is None
    feed(stats, 10)
    assert stats.report_block(0.0) is None


def test_loss_with_a_gap_and_interval_fraction() -> None:
    stats = ReceiveStats(0x55, 8000)
    feed(stats, 10, 11, 12, 13, 16, 17)  # 14 and 15 lost
    assert (stats.received, stats.expected, stats.lost) == (5, 7, 2)
    # A.3: fraction = (lost_interval << 8) / expected_interval = 512 // 7.
    assert stats.report_block(1.0) == ReportBlock(0x55, 73, 2, 17, 0)
    feed(stats, 18, 19)
    assert stats.report_block(2.0) == ReportBlock(0x55, 0, 2, 19, 0)


def test_reordering_and_duplicates() -> None:
    stats = ReceiveStats(1, 8000)
    assert feed(stats, 10, 11, 12, 14, 13, 15) == [False, True, True, True, True, True]
    assert (stats.received, stats.expected, stats.lost, stats.extended_max) == (5, 5, 0, 15)
    feed(stats, 15)  # duplicate: counted, so loss goes negative
    assert stats.lost == -1
    block = stats.report_block(0.0)
    assert block is not None and (block.cumulative_lost, block.fraction_lost) == (-1, 0)


def test_wrap_around_at_65535() -> None:
    stats = ReceiveStats(1, 8000)
    feed(stats, 65533, 65534, 65535, 0, 1)
    assert (stats.extended_max, stats.received, stats.expected) == (0x10001, 4, 4)
    feed(stats, 65535)  # late packet from the previous cycle: no extra wrap
    assert stats.extended_max == 0x10001
    block = stats.report_block(0.0)
    assert block is not None and block.highest_sequence == 0x10001


def test_probation_across_the_wrap() -> None:
    stats = ReceiveStats(1, 8000)
    assert feed(stats, 65535, 0, 1) == [False, True, True]
    assert (stats.received, stats.expected) == (2, 2)


def test_large_jump_needs_confirmation() -> None:
    stats = ReceiveStats(1, 8000)
    feed(stats, 10, 11, 12)
    assert feed(stats, 5000) == [False]  # could be a stray; remember 5001
    assert feed(stats, 5001, 5002) == [True, True]  # sender restarted: re-sync
    assert (stats.received, stats.expected, stats.extended_max) == (2, 2, 5002)


def test_jitter_for_a_known_arrival_pattern() -> None:
    stats = ReceiveStats(1, 8000, min_sequential=1)
    # 20 ms packets; the third arrives 10 ms late (80 timestamp units).
    for seq, arrival in enumerate((0.00, 0.02, 0.05, 0.06)):
        assert stats.on_packet(seq, seq * 160, arrival)
    # D = 0, 80, 80: J = 0 -> 0 + 80/16 = 5 -> 5 + 75/16 = 9.6875.
    assert stats.jitter == 9


def test_jitter_ignores_timestamp_wrap() -> None:
    stats = ReceiveStats(1, 8000, min_sequential=1)
    base = 0xFFFFFFFF - 159
    stats.on_packet(0, base, 0.0)
    stats.on_packet(1, (base + 160) & 0xFFFFFFFF, 0.02)
    assert stats.jitter == 0


def test_lsr_and_dlsr() -> None:
    stats = ReceiveStats(9, 8000, min_sequential=1)
    stats.on_packet(1, 0, 0.0)
    stats.on_sender_report(0xE000_1234_5678_0000, arrival=10.0)
    block = stats.report_block(10.5)
    assert block is not None and (block.lsr, block.dlsr) == (0x12345678, 32768)
    assert SenderReport(1, SenderInfo(0, 0, 0, 0), (block,)).encode()[-8:] == bytes.fromhex(
        "12345678 00008000"
    )


# --- Rewriter ------------------------------------------------------------------


def rtp(ssrc: int, seq: int, ts: int, marker: bool = False) -> bytes:
    return RtpPacket(0, seq, ts, ssrc, b"\xff" * 160, marker=marker).encode()


def out(data: bytes) -> tuple[int, int, int, bool]:
    packet = parse_rtp(data)
    return packet.sequence, packet.timestamp, packet.ssrc, packet.marker


def test_rewriter_continuity_across_a_source_switch() -> None:
    rewriter = SequenceRewriter(0xCAFE, sequence=1000, timestamp=50_000, clock_rate=8000)
    music = [rewriter.rewrite(rtp(1, 500 + i, 9000 + 160 * i), 0.02 * i) for i in range(3)]
    assert [out(p) for p in music] == [
        (1000, 50_000, 0xCAFE, True),
        (1001, 50_160, 0xCAFE, False),
        (1002, 50_320, 0xCAFE, False),
    ]
    # The party answers 460 ms after the last music packet (at 0.04 s).
    party = [rewriter.rewrite(rtp(2, 7 + i, 123 + 160 * i), 0.5 + 0.02 * i) for i in range(2)]
    assert [out(p) for p in party] == [
        (1003, 50_320 + 3680, 0xCAFE, True),
        (1004, 50_320 + 3680 + 160, 0xCAFE, False),
    ]
    assert party[0][12:] == rtp(2, 7, 123)[12:]


def test_rewriter_preserves_gaps_and_reordering_within_a_source() -> None:
    rewriter = SequenceRewriter(5, sequence=65535, timestamp=0xFFFFFF00, clock_rate=8000)
    got = [out(rewriter.rewrite(rtp(1, seq, 160 * seq), 0.02 * seq))[:2] for seq in (0, 2, 1, 3)]
    assert got == [(65535, 0xFFFFFF00), (1, 0x40), (0, 0xFFFFFFA0), (2, 0xE0)]
    # The late packet did not rewind the stream: a switch continues after seq 2.
    assert out(rewriter.rewrite(rtp(2, 900, 0), 0.08)) == (3, 0xE0 + 160, 5, True)


def test_rewriter_treats_a_sequence_restart_as_a_new_source() -> None:
    rewriter = SequenceRewriter(5, sequence=10, timestamp=0, clock_rate=8000)
    rewriter.rewrite(rtp(1, 100, 0), 0.0)
    assert out(rewriter.rewrite(rtp(1, 40_000, 77), 0.02)) == (11, 160, 5, True)


def test_rewriter_same_time_switch_still_advances_and_maps_payload_type() -> None:
    rewriter = SequenceRewriter(5, sequence=10, timestamp=0, clock_rate=8000)
    rewriter.rewrite(rtp(1, 100, 0), 1.0)
    data = rewriter.rewrite(rtp(2, 1, 0), 1.0, payload_type=8)
    assert out(data) == (11, 1, 5, True) and parse_rtp(data).payload_type == 8
    with pytest.raises(RtpError):
        rewriter.rewrite(b"\x80", 1.0)


# --- RTCP reporter (RFC 3550 §6.2-6.4) ------------------------------------------


def test_rtcp_interval_spread_and_first_report_halved() -> None:
    # §6.3.1/§A.7: 0.5-1.5 times the 5 s minimum, divided by e - 3/2; the first one halved.
    compensation = 2.71828 - 1.5
    assert rtcp_interval(0.0) == pytest.approx(2.5 / compensation)
    assert rtcp_interval(0.999999) == pytest.approx(7.5 / compensation, rel=1e-5)
    assert rtcp_interval(0.5, initial=True) == pytest.approx(2.5 / compensation)
    # Averaged over the randomisation, reports come every 5 s / compensation * 1.0.
    mean = sum(rtcp_interval(i / 1000) for i in range(1000)) / 1000
    assert mean == pytest.approx(5.0 / compensation, rel=1e-3)


def reporter(now: float = 0.0) -> RtcpReporter:
    return RtcpReporter(0x1111, b"cname", 8000, now, lambda: 0.5)


def test_reporter_schedules_and_sends_rr_while_silent() -> None:
    rep = reporter()
    first = rep.next_timer()
    assert first == pytest.approx(rtcp_interval(0.5, initial=True))
    assert rep.on_timer(first - 0.01, 0, None, None) is None  # not due yet
    data = rep.on_timer(first, ntp_from_unix(1000.0), None, None)
    assert data is not None
    rr, sdes = parse_rtcp(data)
    assert rr == ReceiverReport(0x1111, ())
    assert sdes == SourceDescription((SdesChunk(0x1111, ((SDES_CNAME, b"cname"),)),))
    assert rep.next_timer() == pytest.approx(first + rtcp_interval(0.5))


def test_reporter_sends_sr_with_extrapolated_timestamp_and_a_block() -> None:
    rep = reporter()
    stats = ReceiveStats(0xBEEF, 8000, min_sequential=1)
    for n in range(10):
        stats.on_packet(n, 160 * n, 0.02 * n)
    ntp = ntp_from_unix(2000.0)
    # Last packet sent 0.1 s before the report: its timestamp 800 ticks behind "now".
    sent = SendCounts(packets=50, octets=8000, timestamp=40_000, sent_at=0.9)
    sr, _ = parse_rtcp(rep.report(1.0, ntp, sent, stats))
    assert isinstance(sr, SenderReport)
    assert sr.sender_info == SenderInfo(ntp, 40_800, 50, 8000)
    (block,) = sr.reports
    assert (block.ssrc, block.highest_sequence, block.cumulative_lost) == (0xBEEF, 9, 0)
    # Nothing sent since: the next report is an RR again.
    rr, _ = parse_rtcp(rep.report(6.0, ntp, sent, stats))
    assert isinstance(rr, ReceiverReport)


def test_reporter_bye_ends_reporting() -> None:
    rep = reporter()
    packets = parse_rtcp(rep.report(1.0, 0, None, None, bye=b""))
    assert packets[-1] == Bye((0x1111,), None)
    assert rep.next_timer() is None
    assert rep.on_timer(100.0, 0, None, None) is None


def test_reporter_reads_the_peers_report_and_round_trip() -> None:
    rep = reporter()
    stats = ReceiveStats(0xBEEF, 8000, min_sequential=1)
    stats.on_packet(0, 0, 0.0)
    our_sr_ntp = ntp_from_unix(3000.0)
    # The peer got our SR, held it 0.25 s, and its RR arrives 0.75 s after we sent the SR:
    # the network took 0.5 s both ways together.
    block = ReportBlock(
        0x1111, 64, 7, 1234, 80, lsr=compact_ntp(our_sr_ntp), dlsr=int(0.25 * 65536)
    )
    peer_sr = SenderReport(0xBEEF, SenderInfo(ntp_from_unix(77.0), 0, 1, 160), (block,))
    rep.on_rtcp([peer_sr], 5.0, ntp_from_unix(3000.75), stats)
    assert rep.peer is not None
    assert (rep.peer.fraction_lost, rep.peer.cumulative_lost) == (0.25, 7)
    assert rep.peer.jitter == 80 and rep.peer.received_at == 5.0
    assert rep.peer.round_trip == pytest.approx(0.5, abs=1e-4)
    # The peer's SR is remembered for the LSR of our next report block on its stream.
    ours = stats.report_block(5.5)
    assert ours is not None and ours.lsr == compact_ntp(ntp_from_unix(77.0))
    assert ours.dlsr == 32768
    rep.on_rtcp([Bye((0xBEEF,), None)], 6.0, 0, stats)
    assert rep.peer_bye


def test_round_trip_without_an_sr_and_for_a_peer_that_lies() -> None:
    assert round_trip_time(ReportBlock(1, 0, 0, 0, 0), ntp_from_unix(1.0)) is None
    early = ReportBlock(1, 0, 0, 0, 0, lsr=compact_ntp(ntp_from_unix(10.0)), dlsr=65536)
    assert round_trip_time(early, ntp_from_unix(10.5)) == 0.0
