"""SDP parsing and serialization (RFC 4566), with RFC 5118 IPv6 bodies and fuzzing."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbx.errors import LocalProtocolError, RemoteProtocolError, SipStatus
from pbx.sip.sdp import (
    Attribute,
    Bandwidth,
    Connection,
    Direction,
    MediaDescription,
    Origin,
    RtpMap,
    SessionDescription,
    Timing,
    parse_sdp,
)
from tests.support.shared import TORTURE

RFC5118 = TORTURE / "rfc5118"


def sdp(text: str) -> bytes:
    """Test bodies are written with LF; the wire uses CRLF."""
    return text.strip().replace("\n", "\r\n").encode() + b"\r\n"


YEALINK_OFFER = sdp("""
v=0
o=- 20014 20014 IN IP4 192.168.1.50
s=SDP data
c=IN IP4 192.168.1.50
t=0 0
m=audio 11800 RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
""")

# Linphone: static types without rtpmap, session-level b=, rtcp attribute.
LINPHONE_OFFER = sdp("""
v=0
o=1001 3064 1234 IN IP4 10.0.0.7
s=Talk
c=IN IP4 10.0.0.7
b=AS:380
t=0 0
a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics
m=audio 7078 RTP/AVP 0 8 101
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=rtcp:7079
a=ptime:20
""")

T38_OFFER = sdp("""
v=0
o=- 1 2 IN IP4 198.51.100.9
s=-
c=IN IP4 198.51.100.9
t=0 0
m=image 4000 udptl t38
a=T38FaxVersion:0
a=T38MaxBitRate:14400
a=T38FaxFillBitRemoval
a=T38FaxRateManagement:transferredTCF
a=T38FaxMaxBuffer:262
a=T38FaxMaxDatagram:176
a=T38FaxUdpEC:t38UDPRedundancy
""")


def load_rfc5118_body(name: str) -> bytes:
    # These files use bare LF and their Content-Length is wrong: take all after the blank line.
    return (RFC5118 / name).read_bytes().split(b"\n\n", 1)[1]


# --- typical offers ---------------------------------------------------------------------


def test_yealink_offer() -> None:
    sd = parse_sdp(YEALINK_OFFER)
    assert sd.origin == Origin("-", "20014", 20014, "IN", "IP4", "192.168.1.50")
    assert sd.session_name == "SDP data"
    assert sd.times == (Timing(0, 0),)
    (audio,) = sd.media
    assert (audio.media, audio.port, audio.proto) == ("audio", 11800, "RTP/AVP")
    assert audio.formats == ("0", "8", "101")
    assert audio.payload_types == (0, 8, 101)
    assert audio.rtpmaps == {
        0: RtpMap(0, "PCMU", 8000),
        8: RtpMap(8, "PCMA", 8000),
        101: RtpMap(101, "telephone-event", 8000),
    }
    assert list(audio.rtpmaps) == [0, 8, 101]  # preference order kept
    assert audio.fmtp == {101: "0-16"}
    assert audio.ptime == 20
    assert audio.direction is Direction.SENDRECV
    assert sd.direction_for(audio) is Direction.SENDRECV
    assert not sd.on_hold(audio)
    assert sd.connection_for(audio) == Connection("IN", "IP4", "192.168.1.50")


def test_linphone_offer_static_payload_types_and_rtcp() -> None:
    sd = parse_sdp(LINPHONE_OFFER)
    (audio,) = sd.media
    assert audio.rtpmaps[0] == RtpMap(0, "PCMU", 8000, 1)
    assert audio.rtpmaps[8].encoding == "PCMA"
    assert audio.rtcp == 7079
    assert audio.direction is None
    assert sd.direction_for(audio) is Direction.SENDRECV
    assert sd.bandwidths == (Bandwidth("AS", 380),)
    assert (
        sd.attribute("rtcp-xr") == "rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics"
    )


def test_baresip_offer_bare_lf_and_ipv6() -> None:
    body = (
        b"v=0\no=- 1178461418 2391244787 IN IP6 2001:db8::5\ns=baresip 3.10.1\n"
        b"c=IN IP6 2001:db8::5\nt=0 0\nm=audio 10270 RTP/AVP 9 0 8 101\n"
        b"b=TIAS:64000\na=rtpmap:9 G722/8000\na=rtpmap:101 telephone-event/8000\n"
        b"a=fmtp:101 0-15\na=rtcp-mux\na=ptime:20\na=sendrecv\nm=video 0 RTP/AVP 96\n"
    )
    sd = parse_sdp(body)
    audio, video = sd.media
    assert sd.origin.address == "2001:db8::5"
    assert audio.rtpmaps[9] == RtpMap(9, "G722", 8000)
    assert audio.bandwidths == (Bandwidth("TIAS", 64000),)
    assert audio.has_attribute("rtcp-mux") and audio.attribute("rtcp-mux") is None
    assert video.port == 0 and video.rtpmaps == {}


def test_static_payload_types_resolve_without_rtpmap() -> None:
    sd = parse_sdp(
        sdp("""
v=0
o=- 1 1 IN IP4 192.0.2.1
s=-
t=0 0
m=audio 5004 RTP/AVP 0 8 9 18 3 4 97
""")
    )
    names = {pt: (m.encoding, m.clock_rate) for pt, m in sd.media[0].rtpmaps.items()}
    assert names == {
        0: ("PCMU", 8000),
        8: ("PCMA", 8000),
        9: ("G722", 8000),
        18: ("G729", 8000),
        3: ("GSM", 8000),
        4: ("G723", 8000),
    }  # 97 is dynamic and has no rtpmap: left out


def test_explicit_rtpmap_overrides_static_and_channels() -> None:
    media = MediaDescription(
        "audio",
        5004,
        "RTP/AVP",
        ("0", "111"),
        attributes=(
            Attribute("rtpmap", "0 pcmu/8000"),
            Attribute("rtpmap", "111 opus/48000/2"),
            Attribute("rtpmap", "112 broken"),
            Attribute("fmtp", "111 minptime=10;useinbandfec=1"),
        ),
    )
    assert media.rtpmaps == {0: RtpMap(0, "pcmu", 8000), 111: RtpMap(111, "opus", 48000, 2)}
    assert media.fmtp == {111: "minptime=10;useinbandfec=1"}


def test_t38_image_offer() -> None:
    sd = parse_sdp(T38_OFFER)
    (image,) = sd.media
    assert (image.media, image.port, image.proto, image.formats) == (
        "image",
        4000,
        "udptl",
        ("t38",),
    )
    assert image.rtpmaps == {} and image.payload_types == ()
    assert image.attribute("T38FaxVersion") == "0"
    assert image.attribute("t38faxversion") == "0"  # spellings vary between vendors
    assert image.attribute("T38MaxBitRate") == "14400"
    assert image.has_attribute("T38FaxFillBitRemoval")
    assert image.attribute("T38FaxFillBitRemoval") is None
    assert image.attribute("T38FaxUdpEC") == "t38UDPRedundancy"
    assert image.attributes_named("T38FaxMaxDatagram") == ("176",)
    assert not image.has_attribute("T38FaxTranscodingMMR")
    assert parse_sdp(sd.encode()) == sd


# --- hold ---------------------------------------------------------------------------------


def hold_offer(direction_line: str, address: str = "192.0.2.5") -> SessionDescription:
    return parse_sdp(
        sdp(f"""
v=0
o=- 1 2 IN IP4 192.0.2.5
s=-
c=IN IP4 {address}
t=0 0
m=audio 8000 RTP/AVP 0
{direction_line}
""")
    )


@pytest.mark.parametrize(
    ("line", "direction"),
    [("a=sendonly", Direction.SENDONLY), ("a=inactive", Direction.INACTIVE)],
)
def test_hold_offer_by_direction(line: str, direction: Direction) -> None:
    sd = hold_offer(line)
    media = sd.media[0]
    assert media.direction is direction
    assert sd.direction_for(media) is direction
    assert sd.on_hold(media)


def test_old_style_hold_c_zero() -> None:
    sd = hold_offer("a=rtpmap:0 PCMU/8000", address="0.0.0.0")
    media = sd.media[0]
    assert sd.connection_for(media) == Connection("IN", "IP4", "0.0.0.0")
    assert sd.direction_for(media) is Direction.SENDRECV
    assert sd.on_hold(media)


def test_recvonly_is_not_hold() -> None:
    sd = hold_offer("a=recvonly")
    assert sd.direction_for(sd.media[0]) is Direction.RECVONLY
    assert not sd.on_hold(sd.media[0])


def test_session_level_direction_is_the_default() -> None:
    sd = parse_sdp(
        sdp("""
v=0
o=- 1 2 IN IP4 192.0.2.5
s=-
c=IN IP4 192.0.2.5
t=0 0
a=sendonly
m=audio 8000 RTP/AVP 0
m=audio 8002 RTP/AVP 0
a=inactive
""")
    )
    first, second = sd.media
    assert sd.direction is Direction.SENDONLY
    assert first.direction is None
    assert sd.direction_for(first) is Direction.SENDONLY
    assert sd.direction_for(second) is Direction.INACTIVE


def test_with_direction_replaces_direction_attributes() -> None:
    media = parse_sdp(YEALINK_OFFER).media[0]
    held = media.with_direction(Direction.SENDONLY)
    assert held.direction is Direction.SENDONLY
    assert held.attributes_named("sendrecv") == ()
    assert held.attributes[:-1] == media.attributes[:-1]  # the rest is untouched
    assert held.with_direction(None).direction is None
    assert media.direction is Direction.SENDRECV  # frozen: the original is unchanged


# --- connections ------------------------------------------------------------------------


def test_media_level_connection_overrides_session_level() -> None:
    sd = parse_sdp(
        sdp("""
v=0
o=- 1 2 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 4000 RTP/AVP 0
m=audio 4002 RTP/AVP 0
c=IN IP4 203.0.113.7
""")
    )
    first, second = sd.media
    assert sd.connection_for(first) == Connection("IN", "IP4", "192.0.2.1")
    assert sd.connection_for(second) == Connection("IN", "IP4", "203.0.113.7")


def test_multicast_connections() -> None:
    sd = parse_sdp(
        sdp("""
v=0
o=- 1 2 IN IP4 192.0.2.1
s=-
c=IN IP4 224.2.36.42/127/3
t=0 0
m=audio 4000/2 RTP/AVP 0
c=IN IP4 224.2.1.1/127
m=video 5000 RTP/AVP 31
c=IN IP6 FF15::101/3
""")
    )
    assert sd.connection == Connection("IN", "IP4", "224.2.36.42", ttl=127, count=3)
    audio, video = sd.media
    assert audio.port_count == 2
    assert audio.connection == Connection("IN", "IP4", "224.2.1.1", ttl=127)
    assert video.connection == Connection("IN", "IP6", "FF15::101", count=3)
    assert parse_sdp(sd.encode()) == sd
    assert b"c=IN IP6 FF15::101/3\r\n" in sd.encode()


def test_ipv4_mapped_ipv6_in_origin_and_connection() -> None:
    sd = parse_sdp(b"v=0\no=- 1 1 IN IP6 ::ffff:192.0.2.1\ns=-\nc=IN IP6 ::ffff:192.0.2.1\nt=0 0\n")
    assert sd.origin.address == "::ffff:192.0.2.1"
    assert sd.connection == Connection("IN", "IP6", "::ffff:192.0.2.1")


# --- RFC 5118 -----------------------------------------------------------------------------


def test_rfc5118_ipv6_in_sdp() -> None:
    sd = parse_sdp(load_rfc5118_body("ipv6-in-sdp.dat"))
    assert sd.origin == Origin("assistant", "971731711378798081", 0, "IN", "IP6", "2001:db8::20")
    assert sd.session_name == "Live video feed for today's meeting"
    assert sd.connection == Connection("IN", "IP6", "2001:db8::20")
    assert sd.times == (Timing(3338481189, 3370017201),)
    audio, video = sd.media
    assert audio.rtpmaps == {2: RtpMap(2, "G726-32", 8000)}
    assert video.rtpmaps == {107: RtpMap(107, "H263-1998", 90000)}
    assert all(sd.connection_for(m) == sd.connection for m in sd.media)


def test_rfc5118_mult_ip_in_sdp() -> None:
    sd = parse_sdp(load_rfc5118_body("mult-ip-in-sdp.dat"))
    assert sd.origin.address == "host.example.com"
    assert sd.session_name == ""  # empty s= is tolerated
    assert sd.connection is None
    audio, video = sd.media
    assert sd.connection_for(audio) == Connection("IN", "IP4", "192.0.2.1")
    assert sd.connection_for(video) == Connection("IN", "IP6", "2001:db8::1")
    assert (audio.port, video.port) == (22334, 6024)


def test_rfc5118_ipv4_mapped_ipv6() -> None:
    sd = parse_sdp(load_rfc5118_body("ipv4-mapped-ipv6.dat"))
    assert sd.origin.addrtype == "IP6"
    assert sd.origin.address == "::ffff:192.0.2.2"
    assert sd.connection == Connection("IN", "IP6", "::ffff:192.0.2.2")
    assert sd.session_name == "Call me soon, please!"
    assert [m.media for m in sd.media] == ["audio", "video"]


@pytest.mark.parametrize("name", ["ipv6-in-sdp.dat", "mult-ip-in-sdp.dat", "ipv4-mapped-ipv6.dat"])
def test_rfc5118_round_trip(name: str) -> None:
    sd = parse_sdp(load_rfc5118_body(name))
    assert parse_sdp(sd.encode()) == sd


# --- serialization ------------------------------------------------------------------------


@pytest.mark.parametrize("body", [YEALINK_OFFER, LINPHONE_OFFER, T38_OFFER])
def test_round_trip(body: bytes) -> None:
    sd = parse_sdp(body)
    assert parse_sdp(sd.encode()) == sd


def test_encode_is_byte_exact_for_canonical_input() -> None:
    assert parse_sdp(YEALINK_OFFER).encode() == YEALINK_OFFER
    assert parse_sdp(T38_OFFER).encode() == T38_OFFER


def test_encode_uses_rfc4566_order() -> None:
    # Out-of-order lines are tolerated on input and put in §5 order on output.
    sd = parse_sdp(
        b"v=0\ns=x\nt=0 0\na=tool:x\nc=IN IP4 192.0.2.1\no=- 1 1 IN IP4 192.0.2.1\n"
        b"e=a@example.com\nb=AS:64\ni=info\nm=audio 1 RTP/AVP 0\na=sendrecv\nc=IN IP4 192.0.2.2\n"
    )
    assert sd.encode() == sdp("""
v=0
o=- 1 1 IN IP4 192.0.2.1
s=x
i=info
e=a@example.com
c=IN IP4 192.0.2.1
b=AS:64
t=0 0
a=tool:x
m=audio 1 RTP/AVP 0
c=IN IP4 192.0.2.2
a=sendrecv
""")


def test_all_fields_round_trip() -> None:
    body = sdp("""
v=0
o=jdoe 2890844526 2890842807 IN IP4 10.47.16.5
s=SDP Seminar
i=A Seminar on the session description protocol
u=http://www.example.com/seminars/sdp.pdf
e=j.doe@example.com (Jane Doe)
p=+1 617 555-6011
c=IN IP4 224.2.17.12/127
b=CT:128
t=2873397496 2873404696
r=7d 1h 0 25h
r=604800 3600 0 90000
t=0 0
z=2882844526 -1h 2898848070 0
k=clear:secret
a=recvonly
m=audio 49170 RTP/AVP 0
i=voice
b=AS:64
k=prompt
m=video 51372 RTP/AVP 99
a=rtpmap:99 h263-1998/90000
""")
    sd = parse_sdp(body)
    assert sd.encode() == body
    assert sd.times[0].repeats == ("7d 1h 0 25h", "604800 3600 0 90000")
    assert sd.timezones == "2882844526 -1h 2898848070 0"
    assert sd.key == "clear:secret"
    assert sd.phones == ("+1 617 555-6011",)
    assert sd.media[0].key == "prompt"
    assert sd.media[0].information == "voice"


def test_builders() -> None:
    audio = MediaDescription.rtp(
        "audio",
        40000,
        [RtpMap(0, "PCMU", 8000), RtpMap(101, "telephone-event", 8000)],
        fmtp={101: "0-16"},
        ptime=20,
        direction=Direction.SENDRECV,
    )
    sd = SessionDescription.create("2001:db8::7", [audio], sess_id="42", sess_version=1)
    assert sd.origin == Origin("-", "42", 1, "IN", "IP6", "2001:db8::7")
    assert parse_sdp(sd.encode()) == sd
    assert sd.encode().endswith(
        b"m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    )
    bumped = sd.with_next_version()
    assert bumped.origin.sess_version == 2 and bumped.origin.sess_id == "42"
    moved = replace(sd, media=(replace(audio, port=40002),))
    assert parse_sdp(moved.encode()).media[0].port == 40002
    assert sd.with_direction(Direction.INACTIVE).direction is Direction.INACTIVE


def test_encode_refuses_line_breaks_in_fields() -> None:
    sd = SessionDescription.create("192.0.2.1", [], sess_id="1")
    with pytest.raises(LocalProtocolError, match="CR, LF or NUL"):
        replace(sd, session_name="a\r\nm=audio 1 RTP/AVP 0").encode()


# --- errors -------------------------------------------------------------------------------

MINIMAL = "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nt=0 0\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty SDP body"),
        (b"\r\n\r\n", "empty SDP body"),
        (b"o=- 1 1 IN IP4 192.0.2.1\ns=-\n", "missing v= line"),
        (b"m=audio 1 RTP/AVP 0\n", "missing v= line"),
        (b"v=0\ns=-\nt=0 0\n", "missing o= line"),
        (b"v=0\no=- 1 1 IN IP4 192.0.2.1\nt=0 0\n", "missing s= line"),
        (b"v=1\no=- 1 1 IN IP4 192.0.2.1\ns=-\n", "SDP line 1: unsupported SDP version '1'"),
        (MINIMAL.encode() + b"x=foo\n", "SDP line 5: unknown line type 'x'"),
        (MINIMAL.encode() + b"a sendrecv\n", "SDP line 5: expected <type>=<value>"),
        (MINIMAL.encode() + b"ab=cd\n", "SDP line 5: expected <type>=<value>"),
        (MINIMAL.encode() + b"a\n", "SDP line 5: expected <type>=<value>"),
        (
            MINIMAL.encode() + b"m=audio abc RTP/AVP 0\n",
            "SDP line 5: m= port 'abc' is not a number",
        ),
        (MINIMAL.encode() + b"m=audio -1 RTP/AVP 0\n", "m= port '-1' is not a number"),
        (MINIMAL.encode() + b"m=audio 70000 RTP/AVP 0\n", "m= port 70000 is out of range"),
        (MINIMAL.encode() + b"m=audio 4000/x RTP/AVP 0\n", "m= port count 'x' is not a number"),
        (MINIMAL.encode() + b"m=audio 4000\n", "m= needs <media> <port> <proto>"),
        (b"v=0\no=- 1 IN IP4 192.0.2.1\ns=-\n", "SDP line 2: o= needs <username>"),
        (b"v=0\no=- 1 x IN IP4 192.0.2.1\ns=-\n", "o= sess-version 'x' is not a number"),
        (MINIMAL.encode() + b"c=IN IP4\n", "c= needs <nettype> <addrtype>"),
        (MINIMAL.encode() + b"c=IN IP4 224.0.0.1/x\n", "c= TTL 'x' is not a number"),
        (MINIMAL.encode() + b"c=IN IP4 224.0.0.1/1/2/3\n", "too many '/'"),
        (MINIMAL.encode() + b"c=IN IP6 ff15::1/1/2\n", "too many '/'"),
        (MINIMAL.encode() + b"b=AS\n", "b= needs <bwtype>:<bandwidth>"),
        (MINIMAL.encode() + b"b=AS:fast\n", "b= bandwidth 'fast' is not a number"),
        (b"v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nt=now 0\n", "t= time 'now' is not a number"),
        (b"v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nt=0\n", "t= needs <start-time> <stop-time>"),
        (b"v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nr=7d 1h 0\n", "r= line before any t= line"),
        (MINIMAL.encode() + b"s=again\n", "SDP line 5: duplicate s= line"),
        (MINIMAL.encode() + b"a=:x\n", "a= attribute has no name"),
        (MINIMAL.encode() + b"m=audio 1 RTP/AVP 0\nt=0 0\n", "t= line is not allowed in a media"),
        (MINIMAL.encode() + b"s=\x00\n", "contains a bare CR or NUL"),
        (b"v=0\r\no=\xff\r\n", "not valid UTF-8"),
    ],
)
def test_malformed(body: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_sdp(body)
    assert message in str(info.value)
    assert info.value.status is SipStatus.BAD_REQUEST


def test_liberal_parsing() -> None:
    # Missing t=, blank lines, an o= username with spaces, several media c= (first kept).
    sd = parse_sdp(
        b"v=0\r\n\r\no=Yealink SIP-T46S 1 2 IN IP4 192.0.2.1\r\ns= \r\nm=audio 1 RTP/AVP 0\r\n"
        b"c=IN IP4 224.2.1.1/127\r\nc=IN IP4 224.2.1.2/127\r\na=sendrecv \r\n\r\n"
    )
    assert sd.times == ()
    assert sd.origin.username == "Yealink SIP-T46S"
    assert sd.session_name == " "
    assert sd.media[0].connection == Connection("IN", "IP4", "224.2.1.1", ttl=127)
    assert sd.media[0].direction is Direction.SENDRECV
    assert parse_sdp(sd.encode()) == sd


def test_malformed_attribute_values_are_skipped() -> None:
    sd = parse_sdp(
        MINIMAL.encode() + b"m=audio 1 RTP/AVP 0 101\na=rtpmap:101 telephone-event\n"
        b"a=ptime:twenty\na=rtcp:99999\na=fmtp:x y\n"
    )
    media = sd.media[0]
    assert media.rtpmaps == {0: RtpMap(0, "PCMU", 8000)}
    assert (media.ptime, media.rtcp, media.fmtp) == (None, None, {})


# --- fuzzing ------------------------------------------------------------------------------


def check(data: bytes) -> None:
    """Parse must give a description or RemoteProtocolError; a description must round-trip."""
    try:
        sd = parse_sdp(data)
    except RemoteProtocolError:
        return
    assert parse_sdp(sd.encode()) == sd
    for media in sd.media:
        # The lazy helpers must not raise either, whatever the attribute values hold.
        assert set(media.rtpmaps) <= set(media.payload_types)
        assert all(pt >= 0 for pt in media.fmtp)
        assert media.ptime is None or media.ptime >= 0
        assert media.rtcp is None or 0 <= media.rtcp <= 65535
        assert isinstance(sd.direction_for(media), Direction)
        assert isinstance(sd.on_hold(media), bool)


@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    check(data)


_LINE_VALUES = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "0",
            "- 1 1 IN IP4 192.0.2.1",
            "IN IP4 224.2.1.1/127/3",
            "IN IP6 ::ffff:192.0.2.1",
            "audio 4000/2 RTP/AVP 0 8 101",
            "image 4000 udptl t38",
            "rtpmap:101 telephone-event/8000",
            "fmtp:101 0-16",
            "sendonly",
            "AS:64",
            "0 0",
        ]
    ),
)


@given(
    st.lists(
        st.tuples(
            st.sampled_from("vosiuepcbtrzkmaxV"), _LINE_VALUES, st.sampled_from(["\r\n", "\n"])
        ),
        max_size=20,
    )
)
def test_fuzz_sdp_shaped_lines(lines: list[tuple[str, str, str]]) -> None:
    body = "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\n" + "".join(f"{t}={v}{e}" for t, v, e in lines)
    check(body.encode("utf-8", "surrogatepass"))
