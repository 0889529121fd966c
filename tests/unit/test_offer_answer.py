"""RFC 3264 offer/answer for an anchoring B2BUA."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from pbx.errors import LocalProtocolError, RemoteProtocolError, SipStatus
from pbx.sip.offer_answer import (
    DEFAULT_CODECS,
    G722,
    PCMA,
    PCMU,
    SUPPORTED_CODECS,
    TELEPHONE_EVENT_8000,
    CodecPreference,
    LocalSession,
    MediaParameters,
    NegotiationError,
    answer,
    codec_named,
    common_codecs,
    make_offer,
    parameters_from_answer,
)
from pbx.sip.sdp import Connection, Direction, RtpMap, SessionDescription, parse_sdp
from tests.unit.test_sdp import LINPHONE_OFFER, T38_OFFER, YEALINK_OFFER, sdp

ME = "203.0.113.1"

YEALINK_G722_OFFER = sdp("""
v=0
o=- 20015 20015 IN IP4 192.168.1.50
s=SDP data
c=IN IP4 192.168.1.50
t=0 0
m=audio 11800 RTP/AVP 9 0 8 101
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
""")

BARESIP_OFFER = sdp("""
v=0
o=- 1178461418 2391244787 IN IP4 192.0.2.30
s=baresip 3.10.1
c=IN IP4 192.0.2.30
t=0 0
m=audio 10270 RTP/AVP 96 8 0 97
b=TIAS:64000
a=rtpmap:96 opus/48000/2
a=fmtp:96 stereo=1;sprop-stereo=1
a=rtpmap:97 telephone-event/8000
a=fmtp:97 0-15
a=rtcp-mux
a=ptime:30
a=sendrecv
m=video 10272 RTP/AVP 100
c=IN IP4 192.0.2.31
a=rtpmap:100 H264/90000
""")


def answer_to(
    offer: bytes | SessionDescription, codecs: Sequence[CodecPreference] = DEFAULT_CODECS
) -> tuple[SessionDescription, MediaParameters]:
    sd = offer if isinstance(offer, SessionDescription) else parse_sdp(offer)
    result = answer(sd, ME, 40000, codecs, session_id="77", version=3)
    # What goes on the wire must read back the same.
    assert parse_sdp(result.sdp.encode()) == result.sdp
    return result.sdp, result.parameters


# --- answering typical offers -------------------------------------------------------------


def test_yealink_offer() -> None:
    sd, params = answer_to(YEALINK_OFFER)
    assert params == MediaParameters(
        codec="PCMU",
        payload_type=0,
        clock_rate=8000,
        telephone_event=101,
        ptime=20,
        remote_address="192.168.1.50",
        remote_port=11800,
        remote_rtcp_port=11801,
        direction=Direction.SENDRECV,
    )
    assert sd.origin.sess_id == "77" and sd.origin.sess_version == 3
    assert sd.connection == Connection("IN", "IP4", ME)
    (audio,) = sd.media
    assert (audio.media, audio.port, audio.proto, audio.formats) == (
        "audio",
        40000,
        "RTP/AVP",
        ("0", "101"),
    )
    assert audio.rtpmaps == {0: RtpMap(0, "PCMU", 8000), 101: RtpMap(101, "telephone-event", 8000)}
    assert audio.fmtp == {101: "0-16"}
    assert audio.ptime == 20
    assert sd.direction_for(audio) is Direction.SENDRECV
    assert sd.encode().endswith(
        b"m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    )


def test_offerer_order_wins_over_ours() -> None:
    _, params = answer_to(YEALINK_G722_OFFER, SUPPORTED_CODECS)
    assert (params.codec, params.payload_type) == ("G722", 9)
    # With G722 not supported, the offerer's next choice (PCMU) is taken, not our PCMA.
    _, params = answer_to(YEALINK_G722_OFFER, [PCMA, PCMU, TELEPHONE_EVENT_8000])
    assert (params.codec, params.payload_type) == ("PCMU", 0)


def test_our_preference_order_is_the_offer_order() -> None:
    offer = make_offer(ME, 30000, [PCMA, G722, PCMU, TELEPHONE_EVENT_8000], session_id="1")
    assert offer.media[0].formats == ("8", "9", "0", "101")


def test_linphone_offer_static_types_and_rtcp_attribute() -> None:
    sd, params = answer_to(LINPHONE_OFFER)
    assert (params.codec, params.telephone_event) == ("PCMU", 101)
    assert (params.remote_address, params.remote_port, params.remote_rtcp_port) == (
        "10.0.0.7",
        7078,
        7079,
    )
    assert params.direction is Direction.SENDRECV  # no attribute means sendrecv
    assert sd.direction_for(sd.media[0]) is Direction.SENDRECV


def test_baresip_offer_keeps_dynamic_event_number_and_rejects_video() -> None:
    sd, params = answer_to(BARESIP_OFFER)
    # opus is not ours: PCMA is the offerer's first choice we support.
    assert (params.codec, params.payload_type) == ("PCMA", 8)
    assert params.telephone_event == 97  # the offerer's number, not our 101
    assert params.ptime == 30  # the offerer's ptime
    audio, video = sd.media
    assert audio.formats == ("8", "97")
    assert audio.rtpmaps[97] == RtpMap(97, "telephone-event", 8000)
    assert audio.ptime == 30
    assert (video.media, video.port, video.proto, video.formats) == (
        "video",
        0,
        "RTP/AVP",
        ("100",),
    )
    assert video.attributes == ()


def test_telephone_event_numbers_follow_the_offer() -> None:
    for pt in (101, 96, 127):
        offer = parse_sdp(YEALINK_OFFER.replace(b"101", str(pt).encode()))
        sd, params = answer_to(offer)
        assert params.telephone_event == pt
        assert sd.media[0].formats == ("0", str(pt))


def test_no_telephone_event_offered_or_supported() -> None:
    _, params = answer_to(YEALINK_OFFER, [PCMU, PCMA])
    assert params.telephone_event is None
    no_events = YEALINK_OFFER.replace(b" 101\r\n", b"\r\n")
    sd, params = answer_to(no_events)
    assert params.telephone_event is None
    assert sd.media[0].formats == ("0",)


def test_telephone_event_must_match_the_codec_clock_rate() -> None:
    offer = BARESIP_OFFER.replace(b"97 telephone-event/8000", b"97 telephone-event/48000")
    _, params = answer_to(offer)
    assert params.telephone_event is None


# --- hold and resume ----------------------------------------------------------------------


def hold_offer(direction_line: str, address: str = "192.0.2.5") -> bytes:
    return sdp(f"""
v=0
o=- 1 3 IN IP4 192.0.2.5
s=-
c=IN IP4 {address}
t=0 0
m=audio 8000 RTP/AVP 0 101
a=rtpmap:101 telephone-event/8000
{direction_line}
""")


@pytest.mark.parametrize(
    ("line", "address", "ours"),
    [
        ("a=sendonly", "192.0.2.5", Direction.RECVONLY),
        ("a=inactive", "192.0.2.5", Direction.INACTIVE),
        ("a=recvonly", "192.0.2.5", Direction.SENDONLY),
        ("a=sendrecv", "192.0.2.5", Direction.SENDRECV),  # resume
        ("a=sendrecv", "0.0.0.0", Direction.RECVONLY),  # RFC 2543 hold
        ("a=ptime:20", "0.0.0.0", Direction.RECVONLY),
        ("a=recvonly", "0.0.0.0", Direction.INACTIVE),
        ("a=inactive", "0.0.0.0", Direction.INACTIVE),
    ],
)
def test_hold_offers_are_mirrored(line: str, address: str, ours: Direction) -> None:
    sd, params = answer_to(hold_offer(line, address))
    assert params.direction is ours
    assert sd.media[0].direction is ours
    assert params.remote_address == address
    assert (params.codec, params.telephone_event) == ("PCMU", 101)


def test_session_level_direction_and_media_level_connection() -> None:
    offer = sdp("""
v=0
o=- 1 2 IN IP4 192.0.2.5
s=-
c=IN IP4 192.0.2.5
t=0 0
a=sendonly
m=audio 8000 RTP/AVP 8
c=IN IP4 198.51.100.20
a=rtcp:9000 IN IP4 198.51.100.20
""")
    _, params = answer_to(offer)
    assert params.direction is Direction.RECVONLY
    assert (params.remote_address, params.remote_port, params.remote_rtcp_port) == (
        "198.51.100.20",
        8000,
        9000,
    )


# --- rejection ----------------------------------------------------------------------------


def test_t38_image_is_rejected() -> None:
    with pytest.raises(NegotiationError):
        answer_to(T38_OFFER)
    body = YEALINK_OFFER + T38_OFFER.split(b"t=0 0\r\n", 1)[1]
    sd, params = answer_to(body)
    audio, image = sd.media
    assert audio.port == 40000 and params.codec == "PCMU"
    assert (image.media, image.port, image.proto, image.formats) == ("image", 0, "udptl", ("t38",))


def test_video_first_keeps_order() -> None:
    body = sdp("""
v=0
o=- 1 2 IN IP4 192.0.2.5
s=-
c=IN IP4 192.0.2.5
t=0 0
m=video 9000 RTP/AVP 96
a=rtpmap:96 VP8/90000
m=audio 8000 RTP/SAVP 0
m=audio 8002 RTP/AVP 0
m=audio 8004 RTP/AVP 8
""")
    sd, params = answer_to(body)
    assert [(m.media, m.port) for m in sd.media] == [
        ("video", 0),
        ("audio", 0),  # SRTP is not ours
        ("audio", 40000),
        ("audio", 0),  # one audio stream per call is anchored
    ]
    assert params.remote_port == 8002


def test_no_common_codec_is_488() -> None:
    offer = BARESIP_OFFER.replace(b"96 8 0 97", b"96 97")
    with pytest.raises(NegotiationError) as info:
        answer_to(offer)
    assert info.value.status is SipStatus.NOT_ACCEPTABLE_HERE
    assert isinstance(info.value, RemoteProtocolError)


def test_telephone_event_alone_is_not_a_codec() -> None:
    with pytest.raises(NegotiationError):
        answer_to(YEALINK_OFFER, [G722, TELEPHONE_EVENT_8000])


def test_rejected_audio_in_offer_is_not_accepted() -> None:
    with pytest.raises(NegotiationError):
        answer_to(YEALINK_OFFER.replace(b"11800", b"0"))


def test_codecs_without_audio_are_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        make_offer(ME, 30000, [TELEPHONE_EVENT_8000], session_id="1")


# --- the offerer's side -------------------------------------------------------------------


def test_make_offer() -> None:
    offer = make_offer(ME, 30000, session_id="5", version=2)
    assert parse_sdp(offer.encode()) == offer
    assert offer.origin.sess_id == "5" and offer.origin.sess_version == 2
    assert offer.encode().endswith(
        b"c=IN IP4 203.0.113.1\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0 8 101\r\n"
        b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    )
    held = make_offer("2001:db8::1", 30000, direction=Direction.SENDONLY, session_id="5")
    assert held.connection == Connection("IN", "IP6", "2001:db8::1")
    assert held.media[0].direction is Direction.SENDONLY


def test_our_offer_answered_by_ourselves() -> None:
    offer = make_offer(ME, 30000, [PCMA, PCMU, TELEPHONE_EVENT_8000], session_id="5")
    result = answer(offer, "192.0.2.9", 50000, DEFAULT_CODECS, session_id="9")
    params = parameters_from_answer(offer, result.sdp)
    assert params == MediaParameters(
        codec="PCMA",
        payload_type=8,
        clock_rate=8000,
        telephone_event=101,
        ptime=20,
        remote_address="192.0.2.9",
        remote_port=50000,
        remote_rtcp_port=50001,
        direction=Direction.SENDRECV,
    )


def test_answer_received_from_a_phone() -> None:
    offer = make_offer(ME, 30000, session_id="5")
    reply = parse_sdp(
        sdp("""
v=0
o=- 20014 20015 IN IP4 192.168.1.50
s=SDP data
c=IN IP4 192.168.1.50
t=0 0
m=audio 11800 RTP/AVP 8 96
a=rtpmap:8 PCMA/8000
a=rtpmap:96 telephone-event/8000
a=fmtp:96 0-15
a=ptime:40
a=recvonly
""")
    )
    params = parameters_from_answer(offer, reply)
    assert (params.codec, params.payload_type, params.telephone_event) == ("PCMA", 8, 96)
    assert params.ptime == 40
    assert params.direction is Direction.SENDONLY
    assert (params.remote_address, params.remote_port) == ("192.168.1.50", 11800)


def test_answer_outside_the_offer_is_488() -> None:
    offer = make_offer(ME, 30000, [PCMU, TELEPHONE_EVENT_8000], session_id="5")
    result = answer(offer, "192.0.2.9", 50000, session_id="9")
    audio = result.sdp.media[0]
    foreign = replace(result.sdp, media=(replace(audio, formats=("8",), attributes=()),))
    with pytest.raises(NegotiationError) as info:
        parameters_from_answer(offer, foreign)
    assert info.value.status == 488
    rejected = replace(result.sdp, media=(replace(audio, port=0),))
    with pytest.raises(NegotiationError, match="rejected"):
        parameters_from_answer(offer, rejected)
    extra = replace(result.sdp, media=(audio, audio))
    with pytest.raises(NegotiationError, match="m-lines"):
        parameters_from_answer(offer, extra)


# --- versions -----------------------------------------------------------------------------


def test_local_session_bumps_the_version() -> None:
    session = LocalSession(ME, 30000, session_id="4242", version=1)
    first = session.offer()
    held = session.offer(Direction.SENDONLY)
    assert (first.origin.sess_version, held.origin.sess_version) == (1, 2)
    assert held == replace(
        first.with_next_version(),
        media=(first.media[0].with_direction(Direction.SENDONLY),),
    )
    with pytest.raises(NegotiationError):
        session.answer(parse_sdp(T38_OFFER))  # a failed answer uses no version
    reinvite = session.answer(parse_sdp(hold_offer("a=sendonly")))
    assert reinvite.sdp.origin == replace(held.origin, sess_version=3)
    assert reinvite.parameters.direction is Direction.RECVONLY


def test_codec_preference_matching() -> None:
    assert PCMU.matches(RtpMap(0, "pcmu", 8000))
    assert not PCMU.matches(RtpMap(0, "PCMU", 16000))
    assert G722.passthrough and not PCMU.passthrough
    opus = CodecPreference("opus", 48000, 111, channels=2)
    assert opus.rtpmap == RtpMap(111, "opus", 48000, 2)
    assert TELEPHONE_EVENT_8000.is_telephone_event and not opus.is_telephone_event


# --- codec choice across two legs: G.722 passthrough, prefer, common codecs ---------------

G722_ONLY_OFFER = YEALINK_G722_OFFER.replace(b"9 0 8 101", b"9 101")


def test_g722_is_neither_offered_nor_accepted_by_default() -> None:
    session = LocalSession(ME, 30000, session_id="1")
    assert session.offer().media[0].formats == ("0", "8", "101")
    # A G722-first offer gets G.711, which the bridge can transcode to any other leg.
    assert session.answer(parse_sdp(YEALINK_G722_OFFER)).parameters.codec == "PCMU"
    # G722 alone: nothing we could bridge to a G.711 phone.
    with pytest.raises(NegotiationError):
        session.answer(parse_sdp(G722_ONLY_OFFER))


def test_common_codecs_in_the_offerers_order() -> None:
    assert common_codecs(parse_sdp(YEALINK_G722_OFFER)) == (
        "G722",
        "PCMU",
        "PCMA",
        "telephone-event",
    )
    assert common_codecs(parse_sdp(G722_ONLY_OFFER)) == ("G722", "telephone-event")
    # opus is not ours; the 8 kHz telephone-event follows the G.711 codecs.
    assert common_codecs(parse_sdp(BARESIP_OFFER)) == ("PCMA", "PCMU", "telephone-event")
    assert common_codecs(parse_sdp(BARESIP_OFFER), DEFAULT_CODECS[:1]) == ("PCMU",)
    assert common_codecs(parse_sdp(T38_OFFER)) == ()
    # The same codec under two payload types is listed once.
    twice = YEALINK_OFFER.replace(b"0 8 101", b"0 96 101").replace(
        b"a=rtpmap:101", b"a=rtpmap:96 pcmu/8000\r\na=rtpmap:101"
    )
    assert common_codecs(parse_sdp(twice))[:1] == ("PCMU",)
    assert common_codecs(parse_sdp(twice)).count("PCMU") == 1


def test_offer_a_chosen_codec_list_and_it_sticks() -> None:
    session = LocalSession(ME, 30000, session_id="1")
    offer = session.offer(codecs=("G722", "pcma", "telephone-event"))
    audio = offer.media[0]
    assert audio.formats == ("9", "8", "101")
    assert audio.rtpmaps[9] == RtpMap(9, "G722", 8000)  # RFC 3551: 8000, not 16000
    assert audio.fmtp == {101: "0-16"}
    # Hold and resume re-offers keep the list the other leg was built around.
    held = session.offer(Direction.SENDONLY)
    assert held.media[0].formats == ("9", "8", "101")
    assert session.offer(codecs=[PCMU]).media[0].formats == ("0",)
    with pytest.raises(LocalProtocolError, match="unknown codec"):
        session.offer(codecs=("opus",))
    with pytest.raises(LocalProtocolError):
        session.offer(codecs=("telephone-event",))
    assert codec_named("g722") is G722


def test_prefer_puts_both_legs_on_one_codec() -> None:
    """The B2BUA flow: offer B what A can take, then answer A with B's choice."""
    a_offer = parse_sdp(YEALINK_G722_OFFER)
    a_side = LocalSession(ME, 30000, session_id="a")
    b_side = LocalSession(ME, 30002, session_id="b")
    to_b = b_side.offer(codecs=common_codecs(a_offer))
    assert to_b.media[0].formats == ("9", "0", "8", "101")
    # B (a G.711-only phone) picks PCMA although A listed PCMU before it.
    b_answer = answer(to_b, "192.0.2.7", 5000, [PCMA, TELEPHONE_EVENT_8000], session_id="x")
    b_params = b_side.answered(to_b, b_answer.sdp)
    assert b_params.codec == "PCMA"
    a_params = a_side.answer(a_offer, prefer=b_params.codec).parameters
    assert (a_params.codec, a_params.payload_type, a_params.telephone_event) == ("PCMA", 8, 101)
    # Without prefer, A's own order would have given PCMU (a transcoding bridge).
    assert LocalSession(ME, 1, session_id="c").answer(a_offer).parameters.codec == "PCMU"


def test_g722_passthrough_on_both_legs_and_pinned_in_re_offers() -> None:
    a_offer = parse_sdp(YEALINK_G722_OFFER)
    a_side = LocalSession(ME, 30000, session_id="a")
    b_side = LocalSession(ME, 30002, session_id="b")
    to_b = b_side.offer(codecs=common_codecs(a_offer))
    b_answer = answer(to_b, "192.0.2.7", 5000, SUPPORTED_CODECS, session_id="x")
    assert b_side.answered(to_b, b_answer.sdp).codec == "G722"
    a_answer = a_side.answer(a_offer, prefer="G722")
    assert (a_answer.parameters.codec, a_answer.parameters.payload_type) == ("G722", 9)
    assert a_answer.sdp.media[0].formats == ("9", "101")
    assert a_side.passthrough is G722 and b_side.passthrough is G722
    # A re-offer (hold) must not let either phone move off G722: the bridge relays it as is.
    assert a_side.offer(Direction.SENDONLY).media[0].formats == ("9", "101")
    assert b_side.offer(Direction.SENDONLY).media[0].formats == ("9", "101")
    # A re-INVITE from A listing PCMU first is still answered with G722.
    pcmu_first = YEALINK_G722_OFFER.replace(b"9 0 8 101", b"0 9 8 101")
    assert a_side.answer(parse_sdp(pcmu_first)).parameters.codec == "G722"
    # An explicit list ends the pin (the B2BUA chose to renegotiate).
    assert a_side.offer(codecs=("PCMU",)).media[0].formats == ("0",)
    assert a_side.passthrough is None


def test_prefer_is_only_a_preference() -> None:
    # Not offered: the offerer's first codec we support.
    _, params = answer_to(YEALINK_OFFER)
    result = answer(parse_sdp(YEALINK_OFFER), ME, 1, session_id="1", prefer="G722")
    assert result.parameters.codec == params.codec == "PCMU"
    with pytest.raises(LocalProtocolError):
        answer(parse_sdp(YEALINK_OFFER), ME, 1, session_id="1", prefer="telephone-event")
    with pytest.raises(LocalProtocolError):
        answer(parse_sdp(YEALINK_OFFER), ME, 1, session_id="1", prefer="GSM")


@pytest.mark.parametrize(
    ("lines", "ours", "agreed"),
    [
        ("a=ptime:30", 20, 30),  # mirrored
        ("a=ptime:10", 20, 10),
        ("a=ptime:60", 20, 60),
        ("", 20, 20),  # none offered: ours
        ("", 40, 40),
        ("a=ptime:5", 20, 20),  # outside 10-60 ms: ours
        ("a=ptime:120", 30, 30),
        ("a=ptime:abc", 20, 20),
        ("a=maxptime:30", 40, 30),  # ours, capped by the offerer's maxptime
        ("a=ptime:40\na=maxptime:20", 20, 20),
    ],
)
def test_ptime_mirrors_the_offer(lines: str, ours: int, agreed: int) -> None:
    offer = parse_sdp(hold_offer(lines))
    result = answer(offer, ME, 40000, session_id="1", ptime=ours)
    assert result.parameters.ptime == agreed
    assert result.sdp.media[0].ptime == agreed
    # The offerer reads back the same ptime from our answer.
    assert parameters_from_answer(offer, result.sdp).ptime == agreed


def test_offer_ptime_override() -> None:
    session = LocalSession(ME, 30000, session_id="1", ptime=20)
    assert session.offer(ptime=30).media[0].ptime == 30
    assert session.offer().media[0].ptime == 20
