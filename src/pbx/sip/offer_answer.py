"""The RFC 3264 offer/answer model for a B2BUA that anchors media.

Pure functions over `pbx.sip.sdp` descriptions: build an offer, answer an offer, and read
what was agreed from an answer. The result of a negotiation is a `MediaParameters`, which is
everything the RTP layer needs for one audio stream: the codec, the RFC 4733
telephone-event payload type, the packetization time, where to send, and in which direction.

We anchor one audio stream per call. Any other stream (video, T.38 `image`, a second audio
stream, SRTP profiles) is rejected with port 0, which keeps the m-line count and order the
offerer expects (RFC 3264 §6). T.38 will be accepted here once the fax layer can take it.

Codecs: PCMU and PCMA (which the bridge can transcode into each other) and telephone-event
by default; G.722 only when asked for (`codecs=` naming it, or `prefer="G722"`), because we
never decode it: a G.722 leg can only be relayed to another G.722 leg. A B2BUA offers the
called phone `common_codecs(caller's offer)` and answers the caller with `prefer=` the
called phone's choice, so both legs end on one codec whenever they share one.

No clock is read: the caller supplies `sess-id` and `sess-version` (or lets
`LocalSession` count versions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pbx.errors import LocalProtocolError, RemoteProtocolError, SipStatus
from pbx.sip.sdp import (
    Direction,
    MediaDescription,
    RtpMap,
    SessionDescription,
)

TELEPHONE_EVENT = "telephone-event"
# RTP profiles we can terminate; SRTP (RTP/SAVP) and feedback profiles are rejected.
_PROTOS = frozenset({"RTP/AVP"})
# Formats that are never "the" audio codec: DTMF events and comfort noise (RFC 3389).
_NOT_AUDIO = frozenset({TELEPHONE_EVENT, "cn"})
_HOLD_ADDRESSES = frozenset({"0.0.0.0", "::"})
DEFAULT_PTIME = 20
# Packetization times we accept from an offer and mirror (RFC 4566 §6 a=ptime); outside
# this range we answer our own. 10-60 ms covers every desk phone and fits one MTU for G.711.
MIN_PTIME, MAX_PTIME = 10, 60


class NegotiationError(RemoteProtocolError):
    """The peer's SDP leaves nothing we can use (RFC 3264 §6): answer 488."""

    def __init__(self, message: str) -> None:
        super().__init__(message, SipStatus.NOT_ACCEPTABLE_HERE)


@dataclass(frozen=True, slots=True)
class CodecPreference:
    """A codec we support. A sequence of them is our order of preference.

    `payload_type` is the number we offer; for a dynamic type (96-127) the answerer's and
    offerer's numbers win when we answer (RFC 3264 §6.1). `passthrough` marks a codec we
    can only relay between legs that both negotiated it, never transcode.
    """

    encoding: str
    clock_rate: int
    payload_type: int
    channels: int = 1
    fmtp: str | None = None
    passthrough: bool = False

    @property
    def rtpmap(self) -> RtpMap:
        return RtpMap(self.payload_type, self.encoding, self.clock_rate, self.channels)

    @property
    def is_telephone_event(self) -> bool:
        return self.encoding.lower() == TELEPHONE_EVENT

    def matches(self, rtpmap: RtpMap) -> bool:
        """Same codec as `rtpmap`: encoding names are case-insensitive (RFC 4566 §6)."""
        return (
            rtpmap.encoding.lower() == self.encoding.lower()
            and rtpmap.clock_rate == self.clock_rate
            and rtpmap.channels == self.channels
        )


PCMU = CodecPreference("PCMU", 8000, 0)
PCMA = CodecPreference("PCMA", 8000, 8)
# RFC 3551 §4.5.2: G.722 samples at 16 kHz but its RTP clock is 8000.
G722 = CodecPreference("G722", 8000, 9, passthrough=True)
TELEPHONE_EVENT_8000 = CodecPreference(TELEPHONE_EVENT, 8000, 101, fmtp="0-16")
# What a session offers and accepts unless told otherwise: no G.722, since a G.711-only
# phone on the other leg could not be bridged to it.
DEFAULT_CODECS: tuple[CodecPreference, ...] = (PCMU, PCMA, TELEPHONE_EVENT_8000)
# Every codec we can handle at all, in our order of preference for an explicit choice.
SUPPORTED_CODECS: tuple[CodecPreference, ...] = (PCMU, PCMA, G722, TELEPHONE_EVENT_8000)
_BY_NAME = {c.encoding.lower(): c for c in SUPPORTED_CODECS}


def codec_named(name: str) -> CodecPreference:
    """The supported codec called `name` (case-insensitive, e.g. "G722", "telephone-event")."""
    try:
        return _BY_NAME[name.lower()]
    except KeyError:
        known = ", ".join(c.encoding for c in SUPPORTED_CODECS)
        raise LocalProtocolError(f"unknown codec {name!r}; we support {known}") from None


def _resolve(codecs: Sequence[str | CodecPreference]) -> tuple[CodecPreference, ...]:
    resolved = tuple(codec_named(c) if isinstance(c, str) else c for c in codecs)
    _check_codecs(resolved)
    return resolved


@dataclass(frozen=True, slots=True)
class MediaParameters:
    """What one offer/answer exchange agreed for the audio stream.

    `direction` is always from our side: SENDONLY means we send and do not receive.
    `remote_address` may be `0.0.0.0` for an RFC 2543 style hold; `direction` then says
    that we must not send.
    """

    codec: str
    payload_type: int
    clock_rate: int
    telephone_event: int | None
    ptime: int
    remote_address: str
    remote_port: int
    remote_rtcp_port: int
    direction: Direction


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to send and the parameters it commits us to."""

    sdp: SessionDescription
    parameters: MediaParameters


_MIRROR = {
    Direction.SENDRECV: Direction.SENDRECV,
    Direction.SENDONLY: Direction.RECVONLY,
    Direction.RECVONLY: Direction.SENDONLY,
    Direction.INACTIVE: Direction.INACTIVE,
}


def mirror(direction: Direction) -> Direction:
    """The direction an answerer uses for `direction` in the offer (RFC 3264 §6.1)."""
    return _MIRROR[direction]


def effective_direction(sd: SessionDescription, media: MediaDescription) -> Direction:
    """The sender's direction for `media`, counting `c=0.0.0.0` as "do not send to me".

    RFC 3264 §8.4 asks answerers to accept the RFC 2543 hold, where the address rather than
    an attribute says the peer will not receive.
    """
    direction = sd.direction_for(media)
    conn = sd.connection_for(media)
    if conn is not None and conn.address in _HOLD_ADDRESSES:
        if direction is Direction.SENDRECV:
            return Direction.SENDONLY
        if direction is Direction.RECVONLY:
            return Direction.INACTIVE
    return direction


def _check_codecs(codecs: Sequence[CodecPreference]) -> None:
    if not any(not c.is_telephone_event for c in codecs):
        raise LocalProtocolError("codecs name no audio codec, only telephone-event")


def make_offer(
    address: str,
    port: int,
    codecs: Sequence[CodecPreference] = DEFAULT_CODECS,
    *,
    ptime: int = DEFAULT_PTIME,
    direction: Direction = Direction.SENDRECV,
    session_id: str,
    version: int = 0,
) -> SessionDescription:
    """An offer with one audio stream listing `codecs` in our preference order (§5)."""
    _check_codecs(codecs)
    audio = MediaDescription.rtp(
        "audio",
        port,
        [c.rtpmap for c in codecs],
        fmtp={c.payload_type: c.fmtp for c in codecs if c.fmtp is not None},
        ptime=ptime,
        direction=direction,
    )
    return SessionDescription.create(address, [audio], sess_id=session_id, sess_version=version)


def _rejected(media: MediaDescription) -> MediaDescription:
    """RFC 3264 §6: port 0, same media and proto, and at least one of the offer's formats."""
    return MediaDescription(media.media, 0, media.proto, media.formats or ("0",))


def _acceptable(media: MediaDescription) -> bool:
    return media.media.lower() == "audio" and media.port != 0 and media.proto.upper() in _PROTOS


def _rtcp_port(media: MediaDescription) -> int:
    """`a=rtcp` (RFC 3605), else the next port up (RFC 3550 §11)."""
    rtcp = media.rtcp
    return rtcp if rtcp is not None else media.port + 1


def _offered_audio(
    offered: MediaDescription, codecs: Sequence[CodecPreference]
) -> list[tuple[RtpMap, CodecPreference]]:
    """The offered audio codecs we support, in the offerer's order, with ours for each."""
    found = []
    for theirs in offered.rtpmaps.values():
        if theirs.encoding.lower() in _NOT_AUDIO:
            continue
        ours = next((c for c in codecs if not c.is_telephone_event and c.matches(theirs)), None)
        if ours is not None:
            found.append((theirs, ours))
    return found


def _choose(
    offered: MediaDescription,
    codecs: Sequence[CodecPreference],
    prefer: CodecPreference | None = None,
) -> tuple[RtpMap, CodecPreference, RtpMap | None, CodecPreference | None] | None:
    """The first offered audio codec we support (offerer's order, but `prefer` first when
    offered), and the offer's telephone-event at the same clock rate if we support it."""
    candidates = _offered_audio(offered, codecs)
    if not candidates:
        return None
    theirs, ours = candidates[0]
    if prefer is not None:
        theirs, ours = next((pair for pair in candidates if pair[1] == prefer), candidates[0])
    for their_te in offered.rtpmaps.values():
        if their_te.encoding.lower() != TELEPHONE_EVENT or their_te.clock_rate != theirs.clock_rate:
            continue
        our_te = next((c for c in codecs if c.is_telephone_event and c.matches(their_te)), None)
        if our_te is not None:
            return theirs, ours, their_te, our_te
    return theirs, ours, None, None


def _answer_ptime(media: MediaDescription, ours: int) -> int:
    """Mirror the offerer's a=ptime when we support it, else ours, within its a=maxptime."""
    offered = media.ptime
    agreed = offered if offered is not None and MIN_PTIME <= offered <= MAX_PTIME else ours
    maxptime = _maxptime(media)
    if maxptime is not None and MIN_PTIME <= maxptime < agreed:
        agreed = maxptime
    return agreed


def _maxptime(media: MediaDescription) -> int | None:
    text = (media.attribute("maxptime") or "").strip()
    return int(text) if text.isdigit() and len(text) <= 5 else None


def common_codecs(
    offer: SessionDescription, codecs: Sequence[CodecPreference] = SUPPORTED_CODECS
) -> tuple[str, ...]:
    """Names of the codecs in `offer` that we support, in the offerer's order.

    Looks at the audio stream `answer` would take (the first usable one), and lists
    "telephone-event" too when it is offered at the clock rate of an audio codec. Empty
    when nothing fits. Pass the result to `LocalSession.offer(codecs=...)` to offer the
    other leg only what this offerer can take.
    """
    for media in offer.media:
        if not _acceptable(media) or offer.connection_for(media) is None:
            continue
        audio = _offered_audio(media, codecs)
        if not audio:
            continue
        names = list(dict.fromkeys(ours.encoding for _, ours in audio))
        rates = {theirs.clock_rate for theirs, _ in audio}
        for rtpmap in media.rtpmaps.values():
            if rtpmap.encoding.lower() != TELEPHONE_EVENT or rtpmap.clock_rate not in rates:
                continue
            event = next((c for c in codecs if c.is_telephone_event and c.matches(rtpmap)), None)
            if event is not None:
                names.append(event.encoding)
                break
        return tuple(names)
    return ()


def answer(
    offer: SessionDescription,
    address: str,
    port: int,
    codecs: Sequence[CodecPreference] = DEFAULT_CODECS,
    *,
    session_id: str,
    version: int = 0,
    ptime: int = DEFAULT_PTIME,
    prefer: str | None = None,
) -> Answer:
    """Answer `offer` (RFC 3264 §6): accept its first usable audio stream, reject the rest.

    The codec is `prefer` if the offer has it (this also allows a codec `codecs` leaves
    out, such as G722), else the first in the offerer's order that we support, under the
    offerer's payload type number; telephone-event keeps the offerer's dynamic number too.
    The ptime mirrors the offer's when it is 10-60 ms, else it is `ptime` (RFC 4566 §6).
    Raises NegotiationError (488) when no audio stream has a codec in common.
    """
    _check_codecs(codecs)
    preferred = None
    if prefer is not None:
        preferred = codec_named(prefer)
        if preferred.is_telephone_event:
            raise LocalProtocolError("prefer must name an audio codec, not telephone-event")
        if preferred not in codecs:
            codecs = (*codecs, preferred)
    answered: list[MediaDescription] = []
    parameters: MediaParameters | None = None
    for media in offer.media:
        usable = parameters is None and _acceptable(media)
        choice = _choose(media, codecs, preferred) if usable else None
        conn = offer.connection_for(media)
        if choice is None or conn is None:
            answered.append(_rejected(media))
            continue
        theirs, ours, their_te, our_te = choice
        direction = mirror(effective_direction(offer, media))
        agreed_ptime = _answer_ptime(media, ptime)
        maps = [theirs] if their_te is None else [theirs, their_te]
        fmtp = {theirs.payload_type: ours.fmtp} if ours.fmtp is not None else {}
        if their_te is not None and our_te is not None and our_te.fmtp is not None:
            fmtp[their_te.payload_type] = our_te.fmtp
        answered.append(
            MediaDescription.rtp(
                "audio",
                port,
                maps,
                proto=media.proto,
                fmtp=fmtp,
                ptime=agreed_ptime,
                direction=direction,
            )
        )
        parameters = MediaParameters(
            codec=theirs.encoding,
            payload_type=theirs.payload_type,
            clock_rate=theirs.clock_rate,
            telephone_event=None if their_te is None else their_te.payload_type,
            ptime=agreed_ptime,
            remote_address=conn.address,
            remote_port=media.port,
            remote_rtcp_port=_rtcp_port(media),
            direction=direction,
        )
    if parameters is None:
        raise NegotiationError("no audio stream in the offer has a codec we support")
    sd = SessionDescription.create(address, answered, sess_id=session_id, sess_version=version)
    return Answer(sd, parameters)


def parameters_from_answer(
    offer: SessionDescription, answer_sdp: SessionDescription
) -> MediaParameters:
    """What the peer's answer to our `offer` agreed (RFC 3264 §7).

    The answer must keep our m-lines and choose among the codecs we offered, matched by
    name and clock rate: the answer's numbers are the ones to send with (§6.1). Raises
    NegotiationError (488) otherwise, or when the audio stream was rejected.
    """
    if len(answer_sdp.media) != len(offer.media):
        raise NegotiationError(
            f"answer has {len(answer_sdp.media)} m-lines, the offer had {len(offer.media)}"
        )
    for ours, theirs in zip(offer.media, answer_sdp.media, strict=True):
        if not _acceptable(ours) or theirs.port == 0:
            continue
        if theirs.media.lower() != ours.media.lower():
            raise NegotiationError(f"answer turned {ours.media} into {theirs.media}")
        offered = list(ours.rtpmaps.values())
        codec: RtpMap | None = None
        event: RtpMap | None = None
        for rtpmap in theirs.rtpmaps.values():
            if not any(_same_codec(rtpmap, o) for o in offered):
                raise NegotiationError(f"answer chose {rtpmap.encoding}, which we did not offer")
            if rtpmap.encoding.lower() == TELEPHONE_EVENT:
                event = event or rtpmap
            elif rtpmap.encoding.lower() not in _NOT_AUDIO:
                codec = codec or rtpmap
        conn = answer_sdp.connection_for(theirs)
        if codec is None or conn is None:
            raise NegotiationError("answer accepted the audio stream without a usable codec")
        return MediaParameters(
            codec=codec.encoding,
            payload_type=codec.payload_type,
            clock_rate=codec.clock_rate,
            telephone_event=None if event is None else event.payload_type,
            ptime=theirs.ptime or ours.ptime or DEFAULT_PTIME,
            remote_address=conn.address,
            remote_port=theirs.port,
            remote_rtcp_port=_rtcp_port(theirs),
            direction=mirror(effective_direction(answer_sdp, theirs)),
        )
    raise NegotiationError("answer rejected the audio stream")


def _same_codec(a: RtpMap, b: RtpMap) -> bool:
    return (a.encoding.lower(), a.clock_rate, a.channels) == (
        b.encoding.lower(),
        b.clock_rate,
        b.channels,
    )


class LocalSession:
    """Our side of one SDP session: a fixed `sess-id` whose version grows by one with each
    offer or answer we send (RFC 3264 §8), starting at `version`.

    It also keeps the codec list stable across re-offers (hold, resume, transfer): an
    explicit `offer(codecs=...)` is repeated by later `offer()` calls, and once a
    passthrough codec (G722) is agreed, later offers name only it (and telephone-event)
    and later answers prefer it, since the bridge relaying it cannot switch codecs.
    """

    def __init__(
        self,
        address: str,
        port: int,
        codecs: Sequence[CodecPreference] = DEFAULT_CODECS,
        *,
        session_id: str,
        version: int = 0,
        ptime: int = DEFAULT_PTIME,
    ) -> None:
        _check_codecs(codecs)
        self.address, self.port, self.codecs = address, port, tuple(codecs)
        self.session_id, self.ptime = session_id, ptime
        self._next_version = version
        self._offering = self.codecs
        self.passthrough: CodecPreference | None = None
        """The passthrough codec agreed on this session, None while it is G.711."""

    def _take_version(self) -> int:
        version, self._next_version = self._next_version, self._next_version + 1
        return version

    def offer(
        self,
        direction: Direction = Direction.SENDRECV,
        codecs: Sequence[str | CodecPreference] | None = None,
        *,
        ptime: int | None = None,
    ) -> SessionDescription:
        """Our next offer. `codecs` (names such as "G722" or `CodecPreference`s, in our
        order of preference) replaces the session's list for this and later offers;
        `ptime` (ms) overrides the session's for this offer."""
        if codecs is not None:
            self._offering = _resolve(codecs)
            self.passthrough = None
        offering = self._offering
        if self.passthrough is not None:
            events = tuple(c for c in offering if c.is_telephone_event)
            offering = (self.passthrough, *events)
        return make_offer(
            self.address,
            self.port,
            offering,
            ptime=self.ptime if ptime is None else ptime,
            direction=direction,
            session_id=self.session_id,
            version=self._take_version(),
        )

    def answer(self, offer: SessionDescription, *, prefer: str | None = None) -> Answer:
        """Answer `offer` with the session's codecs; `prefer` as for `answer()` (and it
        allows that codec, e.g. "G722", even if the session's codecs leave it out)."""
        if prefer is None and self.passthrough is not None:
            prefer = self.passthrough.encoding
        # Negotiate before taking a version, so a 488 does not use one up.
        result = answer(
            offer,
            self.address,
            self.port,
            self.codecs,
            session_id=self.session_id,
            version=self._next_version,
            ptime=self.ptime,
            prefer=prefer,
        )
        self._take_version()
        self._agreed(result.parameters)
        return result

    def answered(
        self, offer: SessionDescription, answer_sdp: SessionDescription
    ) -> MediaParameters:
        """`parameters_from_answer` for an offer of this session, remembering the codec."""
        parameters = parameters_from_answer(offer, answer_sdp)
        self._agreed(parameters)
        return parameters

    def _agreed(self, parameters: MediaParameters) -> None:
        codec = _BY_NAME.get(parameters.codec.lower())
        self.passthrough = codec if codec is not None and codec.passthrough else None
