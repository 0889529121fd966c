"""Calls: a B2BUA between phones and trunks, with anchored media, routed by the dialplan.

A call is an A leg (the caller's INVITE, answered by us) and a B leg (our INVITEs to where
the dialplan sends it). Each side is a `Leg`: the phone's dialog and address, our media and
SDP toward it, and its offer/answer and session-timer state. Media is anchored: each side
talks RTP to a MediaEndpoint of ours, and a Bridge relays payloads between them.

Where a call goes is `pbx.dialplan`'s decision; here it becomes SIP. A `Ringing` is one
attempt to reach a destination: INVITEs to every registered contact of an extension, to
every member of a ring group (at once, or one member after another), or to a trunk, which
may challenge us (digest answered with the trunk's credentials). The first 2xx wins and
the other INVITEs are cancelled. Calls from a trunk are recognised by their source address
and need no digest; everyone else authenticates (407).

Offer/answer (RFC 3264) runs per leg: the caller may offer late (an INVITE without SDP: our
200 offers, its ACK answers); re-INVITE and UPDATE (RFC 3311) renegotiate and pass hold and
resume on to the other phone; crossing offers get 491 and our re-INVITE is retried after the
random delay of RFC 3261 §14.1. Session timers (RFC 4028) are kept per leg; a callee's 183
with SDP is relayed as early media. The called side is offered the caller's codecs first, so
that both legs agree on one (G.722 is relayed only to G.722; PCMU and PCMA are transcoded).

A leg can change hands: a blind transfer (REFER, RFC 3515) rings the Refer-To target and
puts it in the referrer's place; an attended transfer (REFER with Replaces, RFC 3891) joins
the two parties the referrer was talking to and ends its consultation call; an INVITE with
Replaces takes over the leg it names; pickup (*8, **EXT) answers a ringing call in place of
the phones it rings; park (a blind transfer to the park number) leaves the other party
waiting in a slot until someone dials the slot, or until the park timeout rings the phone
that parked it. Every call publishes its events and, when it ends, the CallEnded event its
CDR is written from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from media.aio import Bridge, MediaEndpoint
from media.clock import Listener, MediaClock, Source, decodable
from media.dtmf import MAX_PRESS, Digit, digit_from_info, dtmf_samples, event_packets
from media.ports import PortPool
from media.prompts import Clip, PromptCache, music_files, playlist
from media.speech import duration_words, number_words, sequence
from media.tones import Tone, tone_plan, tone_samples
from pbx.conferences import ConferenceManager
from pbx.config import ConferenceConfig, Config, TrunkConfig
from pbx.dialplan import CallRequest, Dialplan, Route, RouteKind
from pbx.errors import MediaError, PbxError, RemoteProtocolError, SipStatus
from pbx.events import (
    CallAnswered,
    CallEnded,
    CallHeld,
    CallParked,
    CallPickedUp,
    CallRetrieved,
    CallRinging,
    CallStarted,
    CallTransferred,
    DtmfReceived,
    EventBus,
)
from pbx.parking import ParkingLot
from pbx.recordings import RecordingManager, Side
from pbx.registrar import Registrar, peer_for_binding
from pbx.sip.aio import Peer, SipEndpoint
from pbx.sip.dialog import Dialog, DialogId, DialogState, dialog_id_for_request
from pbx.sip.digest import DigestClient, Verdict, parse_credentials
from pbx.sip.message import (
    Method,
    Request,
    Response,
    build_cancel,
    build_response,
    new_branch,
    new_tag,
)
from pbx.sip.offer_answer import (
    Answer,
    LocalSession,
    MediaParameters,
    answer,
    common_codecs,
    mirror,
)
from pbx.sip.replaces import Replaces, parse_replaces, replaces_in_uri
from pbx.sip.sdp import Direction, SessionDescription, parse_sdp
from pbx.sip.session_timer import (
    SESSION_INTERVAL_TOO_SMALL,
    SessionTimer,
    TooBrief,
    negotiate_as_uas,
    request_headers,
    response_headers,
    retry_interval,
    timer_from_response,
)
from pbx.sip.uri import NameAddr, SipUri, Uri, parse_name_addr, parse_uri, quote
from pbx.trunk import TrunkManager, answer_challenge, request_uri, uri_user

if TYPE_CHECKING:
    from acd.model import Announce, CallbackAttempt, CancelOffer, Exit, Offer
    from pbx.flows import FlowService, LiveChannel
    from pbx.queues import QueueManager

log = logging.getLogger("pbx.calls")

SDP = "application/sdp"
SHUTDOWN_GRACE = 2.0  # seconds the phones get to answer our BYEs when the exchange stops
MESSAGE_KEEPING_PATIENCE = 10.0  # seconds a call's end waits for its flow to keep a message
ALLOW = "INVITE, ACK, CANCEL, BYE, REFER, NOTIFY, OPTIONS, UPDATE, INFO"
SUPPORTED = "timer, replaces"
GLARE_ATTEMPTS = 3  # our re-INVITE is sent at most this often when each one meets 491
_HOLD_ADDRESSES = ("0.0.0.0", "::")  # RFC 2543 hold: keep sending where we did
# What a leg is re-offered when it agreed G.722 and the other side cannot take it.
G711 = ("PCMU", "PCMA", "telephone-event")
_CALL_ROUTES = (RouteKind.EXTENSION, RouteKind.RING_GROUP, RouteKind.TRUNK)
_AGENT_ROUTES = (RouteKind.AGENT_LOGIN, RouteKind.AGENT_PAUSE)  # feature codes of agents
_ACD_ROUTES = (RouteKind.QUEUE, *_AGENT_ROUTES)  # routes the ACD serves: 404 without one
_FLOW_ROUTES = (RouteKind.IVR, RouteKind.VOICEMAIL, RouteKind.VOICEMAIL_ACCESS)
# What an extension's phones answered that sends the caller to its voicemail instead.
_TO_VOICEMAIL = {486: "busy", 600: "busy", 480: "unavailable", 408: "unavailable",
                 603: "unavailable", 404: "unavailable"}  # fmt: skip


FEATURE_GAP = 2.0  # seconds between the digits of one in-call feature code
MOH_CHIME = "523/300,659/300,784/300,0/2100"  # on hold without music files: C, E, G, a pause
MOH_CHIME_LEVEL = -24.0  # dBm0: quieter than the call-progress tones
# An agent's phone rings this much longer than its queue's ring timeout: the ACD cancels
# it at the timeout itself, and this only catches an offer the ACD forgot.
AGENT_RING_GRACE = 5.0
# How an agent's phone turning an offer down reads in the agent's Not Ready reason.
_OFFER_REFUSALS = {486: "busy", 600: "busy", 603: "declined", 480: "unavailable",
                   404: "unavailable", 408: "no answer", 487: "no answer"}  # fmt: skip


def glare_delay(owns_call_id: bool) -> float:
    """RFC 3261 §14.1: after a 491 the Call-ID's owner waits 2.1-4 s, the other 0-2 s."""
    return random.uniform(2.1, 4.0) if owns_call_id else random.uniform(0.0, 2.0)


@dataclass(frozen=True, slots=True)
class Target:
    """Where one INVITE of ours goes: a registered contact of an extension, or a trunk."""

    party: str
    """Who answers there: the extension, or the number dialled out."""
    uri: Uri
    """The Request-URI."""
    to: str
    """The To URI."""
    peer: Peer
    trunk: TrunkConfig | None = None
    caller_id: str | None = None
    """For a trunk: the number we present (From user and P-Asserted-Identity)."""


@dataclass(frozen=True, slots=True)
class Wave:
    """Parties rung together: every member of a simultaneous ring group, or one member of
    an in-order group for `timeout` seconds (None: until the call's ring timeout)."""

    parties: tuple[str, ...]
    timeout: float | None = None
    trunk: Route | None = None
    """A trunk route: one INVITE to the provider instead of registered contacts."""


@dataclass(eq=False)
class Leg:
    """One phone's side of a call: where it is, our media and SDP toward it, and the
    state of the offers and refreshes exchanged with it."""

    role: str  # "caller" or "callee": who this phone is in the call
    media: MediaEndpoint
    session: LocalSession  # our SDP toward this phone
    owns_call_id: bool  # we chose the dialog's Call-ID (our INVITE): the longer glare wait
    owner: str = ""  # id of the call whose media this is (a leg can move to another call)
    party: str = ""  # the extension or outside number on this leg
    trunk: TrunkConfig | None = None  # the trunk this leg runs over, if any
    peer: Peer | None = None
    dialog: Dialog | None = None
    allow: frozenset[str] = frozenset()  # methods the phone accepts (its Allow)
    asked: Direction = Direction.SENDRECV  # what the phone's own last offer asked (hold)
    params: MediaParameters | None = None  # what the last offer/answer with it agreed
    timer: SessionTimer | None = None
    timer_handle: asyncio.TimerHandle | None = None
    offering: bool = False  # our re-INVITE to the phone is in progress (§14.1: 491 its own)
    answering: bool = False  # its re-INVITE is being answered, until its ACK (§14.2: 500)
    dtmf_pt: int | None = None  # the telephone-event payload type watched for digits
    offers: asyncio.Lock = field(default_factory=asyncio.Lock)  # one re-INVITE of ours at once
    keys: asyncio.Lock = field(default_factory=asyncio.Lock)  # one RFC 4733 press sent at once
    acks: dict[int, asyncio.Future[Request]] = field(default_factory=dict)  # CSeq -> ACK
    inband: Listener | None = None  # its decoded audio, while DTMF tones are detected in it
    music: asyncio.Future[None] | None = None  # music on hold playing to its phone
    keyed: str = ""  # the digits its phone pressed lately, for feature codes (*1...)
    keyed_at: float = 0.0


@dataclass(eq=False)
class Fork:
    """One INVITE of ours to one target (a contact of the callee, a transfer target...)."""

    request: Request
    target: Target
    dialog: Dialog | None = None
    final: int | None = None
    timed_out: bool = False  # cancelled because its member's time in a ring group was up
    cancelled: bool = False  # we want it over: CANCEL sent, or held until it is heard
    digest: DigestClient | None = None  # a trunk's credentials, nonce-counts for this dialog
    heard: bool = False  # a provisional response came: the phone is there
    given_up: asyncio.Event = field(default_factory=asyncio.Event)  # cancelled while unheard

    @property
    def peer(self) -> Peer:
        return self.target.peer


@dataclass(eq=False)
class Ringing:
    """One attempt to reach a destination: its forks, and the one that answered."""

    offer: SessionDescription
    forks: list[Fork] = field(default_factory=list)
    winner: Fork | None = None
    answer: Response | None = None  # the winner's 2xx
    over: bool = False  # cancelled, timed out or picked up: no new forks or retries

    def pending(self) -> list[Fork]:
        return [f for f in self.forks if f.final is None]


@dataclass(frozen=True)
class Adoption:
    """What a phone taking over a leg gets in our 200: an answer to its offer, or (its
    INVITE had none) an offer of ours that its ACK answers."""

    sdp: SessionDescription
    answer: Answer | None
    offered: bool


@dataclass(eq=False)
class Call:
    id: str
    a_request: Request  # the caller's INVITE
    a_tag: str
    a: Leg
    b: Leg
    ringing: Ringing
    a_offer: SessionDescription | None  # None: a late offer (RFC 3261 §13.2.1)
    max_forwards: int  # for our INVITEs of this call
    route: Route
    a_answer: Answer | None = None  # our one answer to a_offer (183 and 200 carry the same)
    attempts: list[Ringing] = field(default_factory=list)  # ringings under way (transfers)
    bridge: Bridge | None = None
    bridging: tuple[object, ...] = ()  # what the bridge was built for: codecs, events
    renegotiating: bool = False  # a G.722 leg is being re-offered G.711 for the other side
    transferring: Leg | None = None  # the leg whose phone's REFER is being carried out
    answered: bool = False
    ended: bool = False
    caller: str = ""
    caller_name: str = ""
    callee: str = ""
    dialled: str = ""
    trunk: str = ""  # the trunk the call came in on or went out through
    answered_by: str = ""
    parties: list[str] = field(default_factory=list)
    started: float = 0.0
    answered_at: float | None = None
    status: int = 0  # the final status the caller got
    cause: str = ""
    hangup_by: str = "system"
    held: bool = False
    slot: str | None = None  # parked in this slot
    parked_leg: Leg | None = None  # the side whose phone left when the call was parked
    parked_by: str = ""
    park_handle: asyncio.TimerHandle | None = None
    conference: str | None = None  # the room this call's member is (to be) in
    member: Leg | None = None  # the conference member's leg (the other has no phone)
    digits: asyncio.Queue[str] | None = None  # keys of the member collected by us (PIN)
    queue: str | None = None  # the ACD queue the caller waits in (or was answered from)
    priority: int = 0  # the caller's priority in that queue
    agent: str = ""  # the ACD agent who took the call
    agent_offers: dict[str, Ringing] = field(default_factory=dict)  # agent -> its ringing
    ivr: LiveChannel | None = None  # the IVR flow the caller is in: it takes the caller's keys

    def other(self, leg: Leg) -> Leg:
        return self.b if leg is self.a else self.a

    def legs(self) -> tuple[Leg, Leg]:
        return self.a, self.b


class CallManager:
    def __init__(
        self,
        config: Config,
        endpoint: SipEndpoint,
        registrar: Registrar,
        pool: PortPool,
        events: EventBus | None = None,
        clock: Callable[[], float] = time.time,
        dialplan: Dialplan | None = None,
        trunks: TrunkManager | None = None,
    ) -> None:
        self.events = events or EventBus()
        self.clock = clock
        self.config = config
        self.endpoint = endpoint
        self.registrar = registrar
        self.pool = pool
        self.dialplan = dialplan or Dialplan(config, lambda ext: ext in registrar.users)
        self.trunks = trunks
        self.parking = ParkingLot(config.dialplan.slots)
        self.media_clock = MediaClock()
        self.recordings = RecordingManager(config, self.media_clock, self.events, clock)
        self.tones = tone_plan(config.tones.country, config.tones.overrides())
        self.conferences = ConferenceManager(
            config, self.media_clock, self.events, self.tones, clock
        )
        self.prompts = PromptCache()
        self.glare_delay: Callable[[bool], float] = glare_delay
        self.timer_unit = 1.0  # real seconds per session-timer second (tests shrink it)
        self.calls: dict[str, Call] = {}
        self._by_dialog: dict[DialogId, tuple[Call, Leg | None]] = {}  # None: transferred away
        self._by_branch: dict[str, Call] = {}  # the caller's INVITE branch, for CANCEL
        self._tasks: set[asyncio.Task[object]] = set()
        self._ending: set[asyncio.Task[object]] = set()  # calls' ends waiting for a message
        self.acd: QueueManager | None = None  # set by the exchange: the queues' engine
        self.flows: FlowService | None = None  # set by the exchange: IVR flows, voicemail

    @property
    def session_expires(self) -> int:
        return self.config.calls.session_expires

    @property
    def min_se(self) -> int:
        return self.config.calls.min_se

    @property
    def max_forwards(self) -> int:
        return self.config.calls.max_forwards

    # entry points from the dispatcher

    def handle(self, request: Request, peer: Peer) -> bool:
        """Take the requests that belong to calls; False if not ours."""
        method = request.method
        if method == Method.CANCEL:
            call = self._by_branch.get(request.vias[0].branch or "")
            if call is None:
                # §9.2: no INVITE of ours matches (already answered, or never seen).
                self._reply(request, SipStatus.CALL_DOES_NOT_EXIST)
                return True
            self._reply(request, SipStatus.OK)
            self._spawn(self._cancelled(call))
            return True
        found = self._by_dialog.get(dialog_id_for_request(request) or DialogId("", "", None))
        if found is not None:
            self._in_dialog(request, peer, *found)
            return True
        if method == Method.ACK:
            return True  # a stray ACK: nothing to do
        if request.to.tag is not None:
            # §12.2.2: a request inside a dialog we do not know.
            self._reply(request, SipStatus.CALL_DOES_NOT_EXIST)
            return True
        if method == Method.INVITE:
            self._new_call(request, peer)
            return True
        return False

    async def stop(self) -> None:
        """Hang up every call (BYE to both phones) without waiting long for the answers."""
        hang_ups = [self._hang_up(call, "shutdown") for call in list(self.calls.values())]
        if hang_ups:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*hang_ups), SHUTDOWN_GRACE)
        for call in list(self.calls.values()):
            await self._release(call)
        if self._ending:  # flows keeping the message a caller hung up on: a moment to
            await asyncio.wait(self._ending, timeout=SHUTDOWN_GRACE)  # save it, then end
        await self.recordings.stop_all()
        self.media_clock.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._ending:  # each announces its call's end as it is cancelled: the CDR
            await asyncio.gather(*self._ending, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, object]) -> asyncio.Task[object]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call task failed", exc_info=task.exception())

    # a new call

    def _new_call(self, request: Request, peer: Peer) -> None:
        """Decide at once what can be decided at once (hops, loops, auth, route, offer,
        session timer): the caller gets its 483/482/407/404/480/488/422 or 100 Trying
        before anything else it sent is answered."""
        if request.max_forwards == 0:
            self._reply(request, SipStatus.TOO_MANY_HOPS)
            return
        if self._is_loop(request):
            self._reply(request, SipStatus.LOOP_DETECTED)
            return
        trunk = self.trunks.trunk_for(peer) if self.trunks is not None else None
        if trunk is not None:
            caller, caller_name = _outside_caller(request)
        else:
            authenticated = self._authenticate(request, peer)
            if authenticated is None:
                return
            caller = authenticated
            user = self.registrar.users.get(caller)
            caller_name = user.name if user is not None else ""
        offer = None
        if request.body:
            try:
                offer = parse_sdp(request.body)
                # Negotiable at all? Better a 488 now than after the callee answered.
                answer(offer, "0.0.0.0", 0, session_id="0")
            except RemoteProtocolError:
                self._reply(request, SipStatus.NOT_ACCEPTABLE_HERE)
                return
        timer = self._timer_for(request)
        if isinstance(timer, TooBrief):
            self._too_brief(request, timer)
            return
        if request.header("Replaces") is not None:
            self._replacing_invite(request, peer, caller, offer, timer, trunk is not None)
            return
        dialled = _dialled(request.uri)
        if trunk is not None and dialled in ("", trunk.username):
            # Sent to our registration's Contact: the number called is in To.
            dialled = _dialled(request.to.uri) or dialled
        route = self.dialplan.route(CallRequest(caller, dialled, trunk.name if trunk else None))
        log.info("call from %s to %s: %s", caller, dialled, route.reason)
        kind = route.kind
        if kind is RouteKind.UNKNOWN:
            if route.emergency:
                self._reply(request, SipStatus.SERVICE_UNAVAILABLE, reason="No Emergency Trunk")
            else:
                self._reply(request, SipStatus.NOT_FOUND)
            return
        if kind in (RouteKind.PICKUP, RouteKind.DIRECTED_PICKUP):
            ringing = self._ringing_call(route, caller)
            if ringing is None:
                self._reply(request, SipStatus.NOT_FOUND, reason="Nothing To Pick Up")
                return
            self._reply(request, SipStatus.TRYING)
            self._spawn(self._pick_up(ringing, request, peer, caller, offer, timer))
            return
        if kind is RouteKind.PARK_SLOT:
            call_id = self.parking.call_in(route.number)
            parked = self.calls.get(call_id or "")
            if parked is None:
                self._reply(request, SipStatus.NOT_FOUND, reason="Nothing Parked There")
                return
            self._reply(request, SipStatus.TRYING)
            self._spawn(self._retrieve(parked, request, peer, caller, offer, timer))
            return
        if kind is RouteKind.CONFERENCE and self.conferences.full(route.number):
            self._reply(request, SipStatus.BUSY_HERE, reason="Conference Full")
            return
        if kind in _ACD_ROUTES and self.acd is None:
            self._reply(request, SipStatus.NOT_FOUND)
            return
        if kind in _AGENT_ROUTES and (
            trunk is not None or self.acd is None or self.acd.agent_of(caller) is None
        ):
            self._reply(request, SipStatus.FORBIDDEN, reason="Not An Agent")
            return
        if kind in _FLOW_ROUTES and (self.flows is None or not self.flows.can_run(route)):
            self._reply(request, SipStatus.NOT_FOUND)
            return
        if kind is RouteKind.PARK:
            # Parking takes a call to park: a blind transfer to this number does it.
            self._reply(request, SipStatus.FORBIDDEN, reason="Transfer A Call Here To Park It")
            return
        if kind is RouteKind.TRUNK:
            assert route.trunk is not None
            if self.trunks is None or self.trunks.peer_for(route.trunk) is None:
                log.error("call %s -> %s: trunk %s has no address or listener to use",
                          caller, dialled, route.trunk.name)  # fmt: skip
                self._reply(request, SipStatus.SERVICE_UNAVAILABLE)
                return
        elif kind in _CALL_ROUTES and not any(self.registrar.contacts(m) for m in route.members):
            mailbox = self._mailbox_of(route)
            if mailbox is None:
                self._reply(request, SipStatus.TEMPORARILY_UNAVAILABLE)
                return
            route = mailbox  # nobody to ring: straight to the extension's voicemail
        self._reply(request, SipStatus.TRYING)
        self._spawn(
            self._place_call(request, peer, caller, caller_name, dialled, route, trunk, offer,
                             timer)
        )  # fmt: skip

    def _is_loop(self, request: Request) -> bool:
        """Our own INVITE come back (RFC 3261 §8.2.2.2 in spirit): its Call-ID or a Via
        branch carries the id of a call in progress here."""
        if request.call_id.partition("-")[0] in self.calls:
            return True
        return any(
            via.branch is not None and via.branch.rpartition("-")[2] in self.calls
            for via in request.vias
        )

    async def _open_legs(self, request: Request) -> tuple[MediaEndpoint, MediaEndpoint] | None:
        """Media for both sides of a new call; None (the caller got 503) if there is none."""
        opened: list[MediaEndpoint] = []
        try:
            for _ in range(2):
                opened.append(await MediaEndpoint.open(self.pool, self.config.rtp.address))
        except MediaError as exc:
            for media in opened:
                media.close()
            log.error("no media ports for a call: %s", exc)
            self._reply(request, SipStatus.SERVICE_UNAVAILABLE)
            return None
        return opened[0], opened[1]

    async def _place_call(
        self,
        request: Request,
        peer: Peer,
        caller: str,
        caller_name: str,
        dialled: str,
        route: Route,
        from_trunk: TrunkConfig | None,
        offer: SessionDescription | None,
        timer: SessionTimer | None,
    ) -> None:
        media = await self._open_legs(request)
        if media is None:
            return
        address = self.config.rtp.address
        call_id = os.urandom(6).hex()
        a = Leg("caller", media[0], _session(address, media[0]), owns_call_id=False,
                owner=call_id, party=caller, trunk=from_trunk, peer=peer,
                allow=_allow_of(request), timer=timer)  # fmt: skip
        b = Leg("callee", media[1], _session(address, media[1]), owns_call_id=True,
                owner=call_id, trunk=route.trunk)  # fmt: skip
        hops = request.max_forwards
        trunk_name = from_trunk.name if from_trunk else route.trunk.name if route.trunk else ""
        call = Call(
            id=call_id,
            a_request=request,
            a_tag=new_tag(),
            a=a,
            b=b,
            ringing=Ringing(b.session.offer(codecs=_codecs_like(offer))),
            a_offer=offer,
            max_forwards=self.max_forwards if hops is None else min(hops - 1, self.max_forwards),
            route=route,
            caller=caller,
            caller_name=caller_name,
            callee=route.number or dialled,
            dialled=dialled,
            trunk=trunk_name,
            parties=[caller],
            started=self.clock(),
        )
        self.calls[call.id] = call
        self.events.publish(
            CallStarted(call.started, call.id, caller, call.callee, dialled=dialled,
                        route=route.kind.value, trunk=trunk_name)
        )  # fmt: skip
        self._by_branch[request.vias[0].branch or ""] = call
        log.info("call %s: %s -> %s (%s)", call.id, caller, call.callee, route.reason)
        if route.kind is RouteKind.CONFERENCE:
            await self._dial_conference(call)
            return
        if route.kind is RouteKind.QUEUE:
            await self._dial_queue(call)
            return
        if route.kind in (RouteKind.AGENT_LOGIN, RouteKind.AGENT_PAUSE):
            await self._agent_feature(call)
            return
        if route.kind in _FLOW_ROUTES:
            assert self.flows is not None
            self.flows.start(call, route)
            return
        mailbox = self._mailbox_of(route)
        ring_timeout = self.config.calls.ring_timeout
        if mailbox is not None:
            ring_timeout = self.config.voicemail.ring_seconds
        timeout = asyncio.get_running_loop().call_later(ring_timeout, self._ring_timeout, call)
        try:
            statuses = await self._ring(
                call, call.ringing, _waves(route), caller, caller_name, dialled,
                on_provisional=lambda _fork, response: self._provisional(call, response),
                on_won=lambda fork, response: self._callee_won(call, fork, response),
            )  # fmt: skip
        finally:
            timeout.cancel()
        if call.ringing.winner is None and not call.ended:
            status = _outcome(call.ringing, statuses)
            if call.cause == "ring timeout" or status == SipStatus.TEMPORARILY_UNAVAILABLE:
                status = SipStatus.TEMPORARILY_UNAVAILABLE
                call.cause = call.cause or "no answer"
            greeting = _TO_VOICEMAIL.get(status)
            if mailbox is not None and greeting is not None and self.flows is not None:
                log.info("call %s: %s gave %d; to voicemail", call.id, call.callee, status)
                call.cause = ""
                self.flows.start(call, replace(mailbox, greeting=greeting))
                return
            self._reply(call.a_request, status, tag=call.a_tag)
            call.status, call.cause = status, call.cause or f"callee answered {status}"
            await self._release(call)

    def _mailbox_of(self, route: Route) -> Route | None:
        """The voicemail route of an extension with a mailbox, for when it does not answer."""
        if route.kind is not RouteKind.EXTENSION or self.flows is None:
            return None
        box = route.number
        if self.flows.voicemail is None or not self.flows.voicemail.has(box):
            return None
        return Route(RouteKind.VOICEMAIL, box, reason=f"{box} does not answer: voicemail")

    # ACD queues

    async def _dial_queue(self, call: Call) -> None:
        """The caller dialled a queue: we answer and play music while the ACD offers the
        call to agents (ring_agent); the agent who answers takes the callee's side."""
        if self.acd is None or not self.acd.has_queue(call.route.number):
            return
        self._into_queue(call, call.route)  # before the answer: no recording until an agent
        await self._complete_a(call)
        if call.answered and not call.ended:
            self._wait_in_queue(call)

    def _into_queue(self, call: Call, route: Route) -> None:
        call.queue, call.agent, call.priority = route.number, "", route.priority
        call.answered_by = f"queue:{route.number}"

    def _wait_in_queue(self, call: Call) -> None:
        """The caller waits with the queue's music; the ACD takes it from here."""
        assert self.acd is not None
        assert call.queue is not None
        self._start_music(call.a, self.acd.music(call.queue))
        self.acd.enter(call.id, call.queue, call.caller, call.priority)

    async def _to_queue(
        self, call: Call, leg: Leg, referrer: Dialog, referrer_peer: Peer, route: Route
    ) -> None:
        """Blind transfer of the caller to a queue: the referrer is told and let go, as for
        a room, and the caller waits there with music (from the agent, this ends the
        ACD's part of the call in the queue it came from)."""
        acd = self.acd
        assert acd is not None
        await self._notify(referrer, referrer_peer, "SIP/2.0 100 Trying", final=False)
        if call.ended or not acd.has_queue(route.number):
            return
        if call.bridge is not None:
            call.bridge.close()
            call.bridge = None
        self.recordings.stop(call.id)
        by = leg.party
        self._vacate(call, leg)
        leg.party, leg.timer, leg.params = "", None, None
        self.events.publish(
            CallTransferred(self.clock(), call.id, call.caller, call.callee,
                            to=f"queue:{route.number}", by=by)
        )  # fmt: skip
        await self._notify(referrer, referrer_peer, "SIP/2.0 200 OK", final=True)
        if referrer.state is not DialogState.TERMINATED:
            await self._bye(referrer, referrer_peer)
        if call.ended:
            return
        caller = call.a
        if call.held:
            self._set_held(call, False, caller.role)
            self._watch(call, caller)
            await self._offer(call, caller)
        self._into_queue(call, route)
        self._wait_in_queue(call)

    def ring_agent(self, offer: Offer) -> None:
        """The ACD offers a waiting call to an agent: ring the agent's phone."""
        call = self.calls.get(offer.call_id)
        if call is not None and not call.ended and call.queue is not None:
            self._spawn(self._ring_agent(call, offer))
        elif self.acd is not None:
            self.acd.forget(offer.call_id)  # a callback whose call is gone (shutdown)

    async def _ring_agent(self, call: Call, offer: Offer) -> None:
        acd = self.acd
        assert acd is not None
        leg = call.b
        ringing = self._attempt_for(call, leg)
        call.agent_offers[offer.agent] = ringing
        route = Route(RouteKind.EXTENSION, offer.extension, members=(offer.extension,),
                      reason=f"queue {offer.queue} offers the call to {offer.agent}")  # fmt: skip

        def claim() -> bool:
            # Ring-all: two agents may answer at once; the leg goes to the first.
            if call.agent or call.agent_offers.get(offer.agent) is not ringing:
                return False
            call.agent = offer.agent
            return True

        ring_timeout = acd.engine.queue_spec(offer.queue).ring_timeout + AGENT_RING_GRACE
        result = await self._bring_in(call, leg, route, by="", attempt=ringing,
                                      ring_timeout=ring_timeout, claim=claim)  # fmt: skip
        ours = call.agent_offers.get(offer.agent) is ringing
        if ours:
            del call.agent_offers[offer.agent]
        if result is True:
            call.answered_by = offer.extension
            acd.answered(call.id, offer.agent)
            self._record_if_wanted(call)
            return
        if call.agent == offer.agent:
            call.agent = ""  # claimed, but the answer was unusable
        if ours and not call.ended:
            # The phone turned the offer down (busy, declined, gone): RONA for the ACD.
            acd.offer_failed(call.id, offer.agent, _OFFER_REFUSALS.get(int(result), "no answer"))

    def stop_ringing_agent(self, cancel: CancelOffer) -> None:
        call = self.calls.get(cancel.call_id)
        ringing = call.agent_offers.pop(cancel.agent, None) if call is not None else None
        if ringing is not None:
            self._give_up(ringing)

    def announce(self, announce: Announce) -> None:
        """A caller's position (and wait) in the queue, between the music."""
        call = self.calls.get(announce.call_id)
        if call is not None and not call.ended and not call.agent:
            self._spawn(self._announce(call, announce))

    async def _announce(self, call: Call, announce: Announce) -> None:
        leg = call.a
        params = leg.params
        if params is None or not decodable(params.codec):
            return
        words = announcement(announce.position, announce.estimated_wait)
        if self.config.dialplan.queue_callback == "*":
            words.append("callback-offer")  # "...to be called back, press star"
        clip = self._spoken(words)
        if clip is None:
            return
        self._stop_music(leg)
        player = self.media_clock.player(leg.media, params.codec)
        await _finished(player.play(clip))
        if not call.ended and not call.agent and self.acd is not None:
            self._start_music(leg, self.acd.music(call.queue or ""))

    def _spoken(self, words: list[str]) -> Clip | None:
        try:
            return sequence(words, self.prompts)
        except (MediaError, OSError) as exc:
            log.warning("cannot say %s: %s", words, exc)
            return None

    def leave_queue(self, exit: Exit) -> None:
        """The ACD sends the caller on (overflow to `target`) or away (full, timeout...)."""
        call = self.calls.get(exit.call_id)
        if call is not None and not call.ended:
            self._spawn(self._queue_exit(call, exit))

    async def _queue_exit(self, call: Call, exit: Exit) -> None:
        log.info("call %s leaves queue %s: %s", call.id, exit.queue, exit.reason.value)
        if exit.target:
            route = self.dialplan.route(CallRequest(call.caller, exit.target, None))
            if route.kind in _FLOW_ROUTES and self.flows is not None and self.flows.can_run(route):
                self._stop_music(call.a)
                self.events.publish(
                    CallTransferred(self.clock(), call.id, call.caller, call.callee,
                                    to=exit.target, by=f"queue:{exit.queue}")
                )  # fmt: skip
                self.flows.start(call, route)
                return
            if route.kind in _CALL_ROUTES and route.kind is not RouteKind.TRUNK:
                if await self._bring_in(call, call.b, route, by=f"queue:{exit.queue}") is True:
                    return
            else:
                log.warning("call %s: queue %s sends it to %s, which is %s", call.id,
                            exit.queue, exit.target, route.reason)  # fmt: skip
        if call.ended:
            return
        leg = call.a
        self._stop_music(leg)
        if leg.dialog is not None and leg.params is not None and decodable(leg.params.codec):
            player = self.media_clock.player(leg.media, leg.params.codec)
            await _finished(player.play(Clip(tone_samples(self.tones["busy"], 3.0))))
        call.cause = f"queue {exit.queue}: {exit.reason.value}"
        await self._hang_up(call, call.cause)

    async def _leave_for_callback(self, call: Call) -> None:
        """The waiting caller asked to be called back: the call keeps its place in the
        queue (and this Call its legs), the caller is told so and let go. When the ACD
        offers it, the agent's phone rings on the callee's side as for any call; once
        the agent answers, `call_back` rings the caller's number on the caller's side."""
        acd, leg = self.acd, call.a
        if acd is None or leg.dialog is None or leg.peer is None or not acd.in_queue(call.id):
            return
        acd.request_callback(call.id, call.caller)
        if not acd.in_queue(call.id):
            return  # the ACD did not take it (the call left the queue meanwhile)
        self._stop_music(leg)
        if leg.params is not None and decodable(leg.params.codec):
            clip = self._spoken(["callback-confirmed"])
            if clip is not None:
                await _finished(self.media_clock.player(leg.media, leg.params.codec).play(clip))
        dialog, peer = leg.dialog, leg.peer
        if call.ended or dialog is None or peer is None:
            return
        self._vacate(call, leg)
        log.info("call %s: %s will be called back from queue %s", call.id, call.caller,
                 call.queue)  # fmt: skip
        await self._bye(dialog, peer)

    def _vacate(self, call: Call, leg: Leg) -> None:
        """The leg's phone leaves (we BYE it), the call goes on without it for now."""
        if leg.dialog is not None:
            self._by_dialog[leg.dialog.id] = (call, None)
        leg.dialog = None
        leg.peer = None
        if leg.timer_handle is not None:
            leg.timer_handle.cancel()
            leg.timer_handle = None
        self._stop_inband(leg)
        leg.media.set_inactivity(None)
        leg.media.set_remote(None)

    def call_back(self, attempt: CallbackAttempt) -> None:
        call = self.calls.get(attempt.call_id)
        if call is not None and not call.ended:
            self._spawn(self._call_back(call, attempt))

    async def _call_back(self, call: Call, attempt: CallbackAttempt) -> None:
        """The agent answered a callback: ring the customer for the caller's side."""
        acd = self.acd
        assert acd is not None
        leg, agent_leg = call.a, call.b
        if leg.trunk is not None:
            trunk = leg.trunk
            route = Route(RouteKind.TRUNK, attempt.number, trunk=trunk,
                          caller_id=trunk.caller_id or None,
                          reason=f"callback from queue {attempt.queue}")  # fmt: skip
        else:
            route = Route(RouteKind.EXTENSION, attempt.number, members=(attempt.number,),
                          reason=f"callback from queue {attempt.queue}")  # fmt: skip
        if agent_leg.params is not None and decodable(agent_leg.params.codec):
            # The agent hears ringback, as music: it stops when the customer answers.
            player = self.media_clock.player(agent_leg.media, agent_leg.params.codec)
            agent_leg.music = player.play(Tone(self.tones["ringback"]))
        log.info("call %s: calling %s back (attempt %d)", call.id, attempt.number,
                 attempt.attempt)  # fmt: skip
        status = await self._bring_in(call, leg, route, by="")
        if status is True:
            acd.callback_answered(call.id)
            return
        if call.ended:
            return
        self._stop_music(agent_leg)
        log.info("call %s: %s did not answer the callback (%s)", call.id, attempt.number,
                 status)  # fmt: skip
        dialog, peer = agent_leg.dialog, agent_leg.peer
        call.agent = ""
        self._vacate(call, agent_leg)
        if call.bridge is not None:
            call.bridge.close()
            call.bridge = None
        acd.callback_failed(call.id)
        if dialog is not None and peer is not None:
            await self._bye(dialog, peer)

    def reachable(self, extension: str) -> bool:
        return bool(self.registrar.contacts(extension))

    def in_call(self, extension: str) -> bool:
        """Whether the extension talks or rings in a call now (an agent's private call)."""
        for call in self.calls.values():
            if call.ended:
                continue
            if any(leg.party == extension and leg.peer is not None for leg in call.legs()):
                return True  # (a leg let go for a callback has no phone: not in the call)
            if any(f.target.party == extension for f in call.ringing.pending()):
                return True
        return False

    async def _agent_feature(self, call: Call) -> None:
        """*45 logs the calling agent in or out, *46 pauses or readies them: we answer,
        say what happened (a beep for yes, the congestion tone for a refusal), hang up."""
        acd = self.acd
        assert acd is not None
        call.answered_by = call.route.kind.value
        await self._complete_a(call)
        if not call.answered or call.ended or call.a.params is None:
            return
        try:
            state = acd.phone_feature(call.caller, call.route.kind is RouteKind.AGENT_LOGIN,
                                      call.route.number)  # fmt: skip
        except PbxError as exc:
            log.info("call %s: agent feature refused: %s", call.id, exc)
            clip = Clip(tone_samples(self.tones["congestion"], 1.5))
        else:
            log.info("call %s: agent %s is now %s", call.id, call.caller, state)
            clip = self._spoken([f"agent-{state.replace('_', '-')}"]) or Clip(
                tone_samples(self.tones["beep"], 0.5)
            )
        if decodable(call.a.params.codec):
            player = self.media_clock.player(call.a.media, call.a.params.codec)
            await _finished(player.play(clip))
        await self._hang_up(call, "agent feature done")

    # conferences

    async def _dial_conference(self, call: Call) -> None:
        """The caller dialled a room: we answer (no phone on the other side), collect the
        PIN if the room has one, and put it in."""
        conference = self.conferences.config_of(call.route.number)
        if conference is None:
            return
        call.conference, call.member = conference.number, call.a
        call.answered_by = conference.number
        if conference.pin:
            call.digits = asyncio.Queue()  # keys pressed before the beep count too
        await self._complete_a(call)
        if call.answered and not call.ended:
            await self._enter_room(call, conference)

    async def _enter_room(self, call: Call, conference: ConferenceConfig) -> None:
        leg = call.member
        assert leg is not None
        self._stop_music(leg)
        if leg.params is None or not decodable(leg.params.codec):
            await self._hang_up(call, "no G.711 for the conference")
            return
        if conference.pin and not await self._pin_entered(call, leg, conference.pin):
            if not call.ended:
                log.info("call %s: wrong PIN for conference %s", call.id, conference.number)
                await self._hang_up(call, "wrong conference PIN")
            return
        if call.ended:
            return
        params = leg.params
        try:
            self.conferences.join(call.id, conference.number, leg.party, call.caller,
                                  call.callee, leg.media, params.codec)  # fmt: skip
        except ValueError as exc:
            log.info("call %s: %s", call.id, exc)
            player = self.media_clock.player(leg.media, params.codec)
            await _finished(player.play(Clip(tone_samples(self.tones["busy"], 2.0))))
            await self._hang_up(call, "conference full")

    async def _to_conference(
        self, call: Call, leg: Leg, referrer: Dialog, referrer_peer: Peer, route: Route
    ) -> None:
        """Blind transfer to a room: the referrer's party joins it (after its PIN, if the
        room has one), and the referrer is told and let go, as for park."""
        conference = self.conferences.config_of(route.number)
        await self._notify(referrer, referrer_peer, "SIP/2.0 100 Trying", final=False)
        if call.ended or conference is None:
            return
        member = call.other(leg)
        if call.bridge is not None:
            call.bridge.close()
            call.bridge = None
        self.recordings.stop(call.id)  # the bridged call is over; the room is not recorded
        by = leg.party
        self._by_dialog[referrer.id] = (call, None)
        self._vacate(call, leg)
        leg.party, leg.timer, leg.params = "", None, None
        call.conference, call.member = conference.number, member
        self.events.publish(
            CallTransferred(self.clock(), call.id, call.caller, call.callee,
                            to=conference.number, by=by)
        )  # fmt: skip
        log.info("call %s: %s sent %s to conference %s", call.id, by, member.party,
                 conference.number)  # fmt: skip
        await self._notify(referrer, referrer_peer, "SIP/2.0 200 OK", final=True)
        if referrer.state is not DialogState.TERMINATED:
            await self._bye(referrer, referrer_peer)
        if call.ended:
            return
        if call.held or member.params is None or not decodable(member.params.codec):
            # Off hold (the referrer held its party first), and in G.711 for the mix.
            if call.held:
                self._set_held(call, False, member.role)
                self._watch(call, member)
            await self._offer(call, member, codecs=G711)
        await self._enter_room(call, conference)

    async def kick(self, room: str, who: str) -> list[str]:
        """Hang up the members of `room` that `who` names (a party, a call id or "all")."""
        kicked = [
            a.call_id for a in self.conferences.attendees.values()
            if a.room == room and who in ("all", a.call_id, a.party)
        ]  # fmt: skip
        for call_id in kicked:
            call = self.calls.get(call_id)
            if call is not None:
                await self._hang_up(call, "kicked from the conference")
        return kicked

    async def _pin_entered(self, call: Call, leg: Leg, pin: str, tries: int = 3) -> bool:
        """Up to `tries` times: a beep, then digits until # or a pause; True once they
        are `pin`. A wrong entry gets the congestion tone."""
        assert leg.params is not None
        player = self.media_clock.player(leg.media, leg.params.codec)
        keys = call.digits = call.digits or asyncio.Queue()
        try:
            for _ in range(tries):
                player.play(Tone(self.tones["beep"]))
                entered = await _collect(keys, len(pin) + 8, first=10.0, gap=3.0)
                if entered is None or call.ended:
                    return False  # the call ended
                if entered == pin:
                    player.stop()
                    return True
                player.stop()
                await _finished(player.play(Clip(tone_samples(self.tones["congestion"], 1.0))))
            return False
        finally:
            call.digits = None

    def _authenticate(self, request: Request, peer: Peer) -> str | None:
        """Digest as a proxy would (407, RFC 3261 §22.3); the caller's extension or None."""
        auth = self.registrar.authenticator
        now = self.registrar.clock()
        header = request.header("Proxy-Authorization")
        if header is not None:
            try:
                creds = parse_credentials(header)
            except RemoteProtocolError:
                creds = None
            if creds is not None:
                user = self.registrar.users.get(creds.username)
                verdict = auth.verify(
                    creds, request.method, user.ha1 if user else lambda _a: None, now, peer.host
                )
                if verdict is Verdict.OK:
                    return creds.username
                stale = verdict is Verdict.STALE
                self._challenge(request, peer, now, stale)
                return None
        self._challenge(request, peer, now, False)
        return None

    def _challenge(self, request: Request, peer: Peer, now: float, stale: bool) -> None:
        challenges = self.registrar.authenticator.challenges(now, stale, peer.host)
        headers = [("Proxy-Authenticate", v) for v in challenges]
        self._reply(request, SipStatus.PROXY_AUTHENTICATION_REQUIRED, headers=headers,
                    tag=new_tag())  # fmt: skip

    # ringing a destination

    def _targets(self, wave: Wave, to_user: str) -> list[Target]:
        """Where the wave's INVITEs go, looked up when it starts (a member may have
        registered or gone since the call began). Toward phones, To names `to_user` (what
        was dialled: a ring group member sees the group's number)."""
        if wave.trunk is not None:
            route = wave.trunk
            trunk = route.trunk
            peer = self.trunks.peer_for(trunk) if self.trunks and trunk else None
            if trunk is None or peer is None:
                return []
            base = request_uri(trunk)
            uri = replace(base, user=uri_user(route.number))
            return [Target(route.number, uri, str(uri), peer, trunk, route.caller_id)]
        targets = []
        for party in wave.parties:
            for binding in self.registrar.contacts(party):
                peer = peer_for_binding(binding)
                host = _host(peer)
                targets.append(
                    Target(party, parse_uri(binding.contact), f"sip:{to_user}@{host}", peer)
                )
        return targets

    async def _ring(
        self,
        call: Call,
        ringing: Ringing,
        waves: list[Wave],
        from_user: str,
        from_name: str,
        to_user: str,
        on_provisional: Callable[[Fork, Response], None] | None,
        on_won: Callable[[Fork, Response], None],
    ) -> list[int]:
        """INVITE each wave's targets in turn until one answers; the final statuses."""

        def go_on() -> bool:
            return not call.ended and not ringing.over and ringing.winner is None

        tasks: list[asyncio.Task[int]] = []
        for wave in waves:
            if not go_on():
                break
            forks = [
                Fork(self._invite_for(call, target, from_user, from_name, ringing.offer), target)
                for target in self._targets(wave, to_user)
            ]
            if not forks:
                continue
            ringing.forks.extend(forks)
            started = [
                asyncio.ensure_future(self._fork(ringing, fork, go_on, on_provisional, on_won))
                for fork in forks
            ]
            tasks.extend(started)
            _, pending = await asyncio.wait(started, timeout=wave.timeout)
            if pending and go_on():
                # This member's time is up: stop its phones and ring the next member.
                for fork in forks:
                    if fork.final is None:
                        fork.timed_out = True
                        self._spawn(self._cancel(fork))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return [r for r in results if isinstance(r, int)]

    async def _fork(
        self,
        ringing: Ringing,
        fork: Fork,
        go_on: Callable[[], bool],
        on_provisional: Callable[[Fork, Response], None] | None,
        on_won: Callable[[Fork, Response], None],
    ) -> int:
        def on_response(response: Response) -> None:
            self._fork_response(ringing, fork, response, on_provisional, on_won)

        try:
            if fork.target.trunk is not None and self.trunks is not None:
                await self.trunks.connect(fork.peer)
            final = await self._invite_unless_given_up(fork, on_response, go_on)
        except PbxError as exc:
            log.info("INVITE to %s (%s) failed: %s", fork.target.party, fork.peer, exc)
            status = getattr(exc, "status", SipStatus.REQUEST_TIMEOUT)
            fork.final = int(status)
            return fork.final
        if final is None:
            log.info("INVITE to %s (%s): not a word from it; given up", fork.target.party,
                     fork.peer)  # fmt: skip
            fork.final = SipStatus.REQUEST_TIMEOUT
            return fork.final
        if final.status in (401, 407):
            # A challenge we could not answer is not the caller's to answer.
            fork.final = SipStatus.SERVICE_UNAVAILABLE
        elif final.status < 300 and fork.dialog is None:
            fork.final = SipStatus.BAD_GATEWAY  # a 2xx we could not make a dialog of
        return fork.final or final.status

    async def _invite_unless_given_up(
        self, fork: Fork, on_response: Callable[[Response], None], go_on: Callable[[], bool]
    ) -> Response | None:
        """The fork's final response; None once it is cancelled before the phone said a
        word (not even 100 Trying). An unplugged phone whose binding lingers would hold the
        call until the INVITE times out (Timer B, 32 s), not ring_seconds; its transaction
        runs out on its own. A 2xx it sends after all is handled as any fork's: a BYE when
        the ringing is over or another phone answered, else it answers the call."""
        invite = asyncio.ensure_future(self._invite(fork, on_response, go_on))
        given_up = asyncio.ensure_future(fork.given_up.wait())
        try:
            await asyncio.wait((invite, given_up), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            invite.cancel()
            raise
        finally:
            given_up.cancel()
        if invite.done():
            return invite.result()
        self._spawn(_run_out(invite))
        return None

    async def _invite(
        self, fork: Fork, on_response: Callable[[Response], None], go_on: Callable[[], bool]
    ) -> Response:
        """Send the fork's INVITE; again with the interval the phone asked for after a
        422 (RFC 4028 §7.4), or with the trunk's credentials after a 401/407 (RFC 3261
        §22.2), while `go_on()` says the call still wants it."""
        while True:
            final = await self.endpoint.invite(fork.request, fork.peer, on_response)
            again = None
            if fork.cancelled:
                pass  # given up: no new INVITE that nothing would cancel
            elif final.status == SESSION_INTERVAL_TOO_SMALL and go_on():
                interval = retry_interval(fork.request, final)
                again = _retried(fork.request, interval) if interval is not None else None
            elif final.status in (401, 407) and fork.target.trunk is not None and go_on():
                trunk = fork.target.trunk
                fork.digest = fork.digest or DigestClient(trunk.username, trunk.password)
                again = answer_challenge(fork.request, final, trunk, fork.digest)
                if again is None:
                    log.warning("trunk %s refused our credentials for a call (%d)",
                                trunk.name, final.status)  # fmt: skip
            if again is None:
                fork.final = final.status
                return final
            fork.request = again

    def _fork_response(
        self,
        ringing: Ringing,
        fork: Fork,
        response: Response,
        on_provisional: Callable[[Fork, Response], None] | None,
        on_won: Callable[[Fork, Response], None],
    ) -> None:
        status = response.status
        if status < 200:
            if not fork.heard and fork.cancelled:
                self._spawn(self._send_cancel(fork))  # held until now (§9.1)
            fork.heard = True
            if on_provisional is not None and ringing.winner is None and not ringing.over:
                on_provisional(fork, response)
            return
        if status >= 300:
            return
        # A 2xx: the first one wins; later ones (other forks) are answered with BYE.
        try:
            dialog = Dialog.from_uac(fork.request, response)
        except RemoteProtocolError as exc:
            # No dialog to ACK or BYE in (a 2xx without a usable Contact...): a failure.
            log.warning("unusable 2xx from %s: %s", fork.peer, exc)
            return
        local = (fork.peer.local.host, fork.peer.local.port)
        ack = dialog.create_ack(local_address=local, transport=fork.peer.transport.upper())
        self.endpoint.send(ack.encode(), fork.peer)
        if fork.dialog is not None:
            return  # a retransmission: ACKed again above
        fork.dialog = dialog
        if ringing.winner is not None or ringing.over:
            self._spawn(self._bye(dialog, fork.peer))  # another fork won, or it is all over
            return
        ringing.winner, ringing.answer = fork, response
        for other in ringing.forks:
            if other is not fork and other.final is None:
                self._spawn(self._cancel(other))
        on_won(fork, response)

    def _callee_won(self, call: Call, fork: Fork, response: Response) -> None:
        b = call.b
        assert fork.dialog is not None
        b.dialog, b.peer, b.allow = fork.dialog, fork.peer, _allow_of(response)
        b.party, b.trunk = fork.target.party, fork.target.trunk
        self._by_dialog[fork.dialog.id] = (call, b)
        self._spawn(self._answer_a(call, response))

    def _provisional(self, call: Call, response: Response) -> None:
        """Relay 180/183 to the caller. A 183 with SDP is early media (RFC 3960): the caller
        gets our answer at once and the bridge runs, so it hears the callee's tones."""
        if response.status not in (180, 183) or call.answered or call.ended:
            return
        if response.status == 183 and response.body and call.a_offer is not None:
            try:
                b_params = call.b.session.answered(call.ringing.offer, parse_sdp(response.body))
            except RemoteProtocolError as exc:
                log.info("call %s: unusable SDP in the callee's 183: %s", call.id, exc)
            else:
                self._set_params(call.b, b_params)
                try:
                    a_answer = self._answer_caller(call)
                except RemoteProtocolError as exc:
                    log.info("call %s: no early media: %s", call.id, exc)
                    return
                if self._connect(call):
                    progress = build_response(
                        call.a_request, 183, body=a_answer.sdp.encode(), to_tag=call.a_tag,
                        headers=[("Contact", self._contact(call.a)), ("Content-Type", SDP)],
                    )  # fmt: skip
                    self.endpoint.respond(call.a_request, progress)
                return
        self._reply(call.a_request, response.status, tag=call.a_tag)
        if response.status == 180:
            self.events.publish(CallRinging(self.clock(), call.id, call.caller, call.callee))

    def _answer_caller(self, call: Call) -> Answer:
        """Our one answer to the caller's offer: a 183 and the 200 carry the same SDP, since
        an offer gets one answer (RFC 3264 §4). It prefers the codec the callee chose."""
        assert call.a_offer is not None
        if call.a_answer is None:
            prefer = call.b.params.codec if call.b.params is not None else None
            call.a_answer = call.a.session.answer(call.a_offer, prefer=prefer)
            self._set_params(call.a, call.a_answer.parameters)
        return call.a_answer

    async def _answer_a(self, call: Call, b_answer: Response) -> None:
        try:
            b_params = call.b.session.answered(call.ringing.offer, parse_sdp(b_answer.body))
        except RemoteProtocolError as exc:
            log.warning("call %s: media negotiation with the callee failed: %s", call.id, exc)
            call.status = SipStatus.NOT_ACCEPTABLE_HERE
            self._reply(call.a_request, call.status, tag=call.a_tag)
            await self._hang_up(call, "negotiation")
            return
        self._set_params(call.b, b_params)
        with contextlib.suppress(RemoteProtocolError):
            call.b.timer = timer_from_response(b_answer)
        call.answered_by = call.b.party
        call.parties.append(call.b.party)
        await self._complete_a(call)

    async def _complete_a(self, call: Call) -> None:
        """The called side is up: answer the caller (our 200, then its ACK)."""
        if call.ended:
            return  # cancelled meanwhile: releasing the call sends the callee BYE
        our_offer = None
        try:
            a_sdp = self._answer_caller(call).sdp if call.a_offer is not None else None
        except RemoteProtocolError as exc:
            log.warning("call %s: media negotiation with the caller failed: %s", call.id, exc)
            call.status = SipStatus.NOT_ACCEPTABLE_HERE
            self._reply(call.a_request, call.status, tag=call.a_tag)
            await self._hang_up(call, "negotiation")
            return
        if a_sdp is None:
            # Late offer: our 200 offers, the caller's ACK answers (RFC 3261 §13.2.1).
            b_codec = call.b.params.codec if call.b.params is not None else None
            our_offer = a_sdp = call.a.session.offer(codecs=_codecs_after(b_codec))
        if not self._connect(call):
            return
        for leg in call.legs():
            self._watch(call, leg)
        ok = self._ok(call.a_request, call.a, a_sdp, to_tag=call.a_tag)
        call.answered = True
        call.answered_at = self.clock()
        call.status = 200
        self.events.publish(CallAnswered(call.answered_at, call.id, call.caller, call.callee))
        self._record_if_wanted(call)
        call.a.dialog = Dialog.from_uas(call.a_request, ok)
        self._by_dialog[call.a.dialog.id] = (call, call.a)
        self._by_branch.pop(call.a_request.vias[0].branch or "", None)
        log.info("call %s answered by %s", call.id, call.answered_by)
        ack = await self._send_2xx_until_acked(call, call.a, call.a_request, ok)
        if ack is None:
            log.warning("call %s: no ACK for the 200; hanging up", call.id)
            await self._hang_up(call, "no ACK")
            return
        if our_offer is not None and not self._take_answer(call, call.a, our_offer, ack):
            return
        self._arm(call, call.a)
        self._arm(call, call.b)

    def _watch(self, call: Call, leg: Leg) -> None:
        """RTP inactivity on the leg's media hangs `call` up: a phone that vanished (power
        cut, lost network) sends no BYE, and silence on its RTP is how the call learns."""
        timeout = self.config.rtp.inactivity_timeout
        if timeout <= 0 or leg.peer is None:
            return  # no phone there (a conference call's other side): no RTP to miss

        def inactive(_media: MediaEndpoint) -> None:
            self._spawn(self._hang_up(call, "no RTP (inactivity timeout)"))

        leg.media.on_inactive = inactive
        leg.media.set_inactivity(None if call.held else timeout)

    async def _send_2xx_until_acked(
        self, call: Call, leg: Leg, request: Request, ok: Response
    ) -> Request | None:
        """§13.3.1.4: the UAS core retransmits its 2xx until the ACK comes (or 64*T1).
        Returns the ACK (it may carry the answer to an offer in the 2xx), None if none came."""
        cseq = request.cseq.number
        acked: asyncio.Future[Request] = asyncio.get_running_loop().create_future()
        leg.acks[cseq] = acked
        timers = self.endpoint.timers
        interval, waited = timers.t1, 0.0
        try:
            while not acked.done() and not call.ended:
                self.endpoint.respond(request, ok)
                try:
                    await asyncio.wait_for(asyncio.shield(acked), interval)
                except TimeoutError:
                    waited += interval
                    interval = min(2 * interval, timers.t2)
                    if waited >= timers.timer_h:
                        return None
        finally:
            leg.acks.pop(cseq, None)
        return acked.result() if acked.done() else None

    def _take_answer(
        self, call: Call, leg: Leg, offer: SessionDescription, ack: Request,
        new_party: bool = False,
    ) -> bool:  # fmt: skip
        """The answer to our offer in a 2xx arrives in the ACK; without a usable one the
        session cannot go on (RFC 3261 §13.3.1.4): the call ends with BYE."""
        try:
            params = leg.session.answered(offer, parse_sdp(ack.body))
        except RemoteProtocolError as exc:
            log.warning("call %s: the %s's ACK has no usable answer: %s", call.id, leg.role, exc)
            self._spawn(self._hang_up(call, "no usable answer in the ACK"))
            return False
        self._set_params(leg, params, new_party)
        return self._connect(call)

    def _set_params(self, leg: Leg, params: MediaParameters, new_party: bool = False) -> None:
        leg.params = params
        if params.remote_address not in _HOLD_ADDRESSES:
            address = params.remote_address
            leg.media.set_remote(
                (address, params.remote_port),
                new_party=new_party,
                rtcp=(address, params.remote_rtcp_port),
            )

    def _connect(self, call: Call) -> bool:
        """(Re)build the bridge once both legs agreed a codec; False if the call had to end.

        A leg on G.722 facing one on G.711 cannot be bridged (we relay G.722, never decode
        it): that leg is re-offered G.711 and the bridge is built once it agrees."""
        for leg in call.legs():
            self._watch_dtmf(leg)
            if leg.music is not None:
                self._start_music(leg)  # in the codec it has now (or stopped if none fits)
        if call.conference is not None:
            member = call.member
            if member is not None and member.params is not None:
                self.conferences.set_codec(call.id, member.params.codec)
            return True
        a, b = call.a.params, call.b.params
        if a is None or b is None or call.slot is not None:
            return True
        transcode = None if a.codec.upper() == b.codec.upper() else (a.codec, b.codec)
        events = (a.telephone_event, b.telephone_event)
        if call.bridge is not None and (transcode, events) == call.bridging:
            if call.answered:
                self._record_if_wanted(call)  # the same codecs, perhaps another party
            return True
        if call.bridge is not None:
            call.bridge.close()
            call.bridge = None
        try:
            call.bridge = Bridge(call.a.media, call.b.media, transcode, events)
        except MediaError as exc:
            relayed_only = [
                leg for leg in call.legs()
                if leg.session.passthrough is not None and leg.dialog is not None
            ]  # fmt: skip
            if call.renegotiating:
                return True  # a G.711 offer is under way; the bridge waits for it
            if relayed_only:
                leg = relayed_only[0]
                log.info("call %s: %s; offering the %s G.711", call.id, exc, leg.role)
                call.renegotiating = True
                self._spawn(self._offer(call, leg, codecs=G711))
                return True
            log.warning("call %s: %s", call.id, exc)
            self._spawn(self._hang_up(call, "no common codec"))
            return False
        call.bridging = (transcode, events)
        call.renegotiating = False
        if call.answered:
            self._record_if_wanted(call)
        return True

    def _music(self, folder: str = "") -> Source | None:
        """Music on hold: the files of [media] music_on_hold (or of `folder` under the data
        directory: a queue's own music), looped; the built-in chime without any; None when
        it is "" (silence)."""
        setting = folder or self.config.media.music_on_hold
        if not setting:
            return None
        files = music_files(self.config.data_dir / setting)
        music = playlist(self.prompts, files) if files else None
        if files and music is None:
            log.warning("music on hold: none of the %d files in %s can be read", len(files),
                        self.config.data_dir / setting)  # fmt: skip
        return music or Tone(MOH_CHIME, level=MOH_CHIME_LEVEL)

    def _start_music(self, leg: Leg, folder: str = "") -> None:
        """Play music on hold to the leg's phone (what the bridge relays to it is dropped
        meanwhile); if it plays already, only follow the phone's codec."""
        params = leg.params
        if params is None or leg.peer is None or leg.media.closed:
            return
        if not decodable(params.codec):
            self._stop_music(leg)  # G.722 is relayed, never made here: the phone's silence
            return
        player = self.media_clock.player(leg.media, params.codec)
        if leg.music is not None and not leg.music.done():
            return
        music = self._music(folder)
        if music is not None:
            leg.music = player.play(music)

    def _stop_music(self, leg: Leg) -> None:
        """Silence what we play to the leg's phone: music, and any prompt or tone under way
        (a queue's announcement when the agent answers, a prompt the caller's key cut)."""
        leg.music = None
        player = self.media_clock.player_of(leg.media)
        if player is not None:
            player.stop()

    def _watch_dtmf(self, leg: Leg) -> None:
        """Report the digits of the leg's phone: RFC 4733 telephone-events when its SDP
        agreed them, else (in-band fallback) DTMF tones detected in its G.711 audio."""
        params = leg.params
        payload_type = params.telephone_event if params is not None else None
        if payload_type != leg.dtmf_pt:
            leg.dtmf_pt = payload_type
            leg.media.watch_dtmf(payload_type, lambda d: self._leg_digit(leg, d, "rfc4733"))
        inband = (
            params is not None and payload_type is None and leg.peer is not None
            and self.config.media.inband_dtmf and decodable(params.codec)
        )  # fmt: skip
        if inband and params is not None:
            if leg.inband is None:
                leg.inband = self.media_clock.listen(leg.media, params.codec)
                leg.inband.detect_inband(lambda d: self._leg_digit(leg, d, "inband"))
            else:
                leg.inband.set_codec(params.codec)
        elif leg.inband is not None:
            self._stop_inband(leg)

    def _stop_inband(self, leg: Leg) -> None:
        if leg.inband is not None:
            leg.inband.detect_inband(None)
            self.media_clock.unlisten(leg.inband)
            leg.inband = None

    def _leg_digit(self, leg: Leg, digit: Digit, source: str) -> None:
        # The leg's call of the moment: an attended transfer moves a leg to another.
        current = self.calls.get(leg.owner)
        if current is not None:
            self._dtmf(current, leg, digit.digit, digit.duration, source)

    def _pass_digit(self, other: Leg, digit: str, duration: float, source: str) -> None:
        """A digit toward the other phone in the way it understands: RFC 4733 events it
        agreed are relayed by the bridge (and made here from INFO); without them it gets
        the tone in its audio (in-band audio reaches it through the bridge as it is)."""
        params = other.params
        if params is None or other.peer is None or other.media.closed:
            return
        if params.telephone_event is None:
            if source != "inband" and decodable(params.codec):
                tone_ms = max(60, min(500, round(duration * 1000) or 100))
                player = self.media_clock.player(other.media, params.codec)
                player.play(Clip(dtmf_samples(digit, tone_ms=tone_ms, pause_ms=40)))
        elif source == "info":
            self._spawn(self._send_events(other, params.telephone_event, digit, duration))

    async def _send_events(self, leg: Leg, payload_type: int, digit: str, duration: float) -> None:
        """One key press as RFC 4733 packets (20 ms apart, the end sent three times); INFOs
        in quick succession send their presses one after the other."""
        media = leg.media
        loop = asyncio.get_running_loop()
        packets = event_packets(digit, duration or 0.1)
        samples = round(min(max(duration, 0.1), MAX_PRESS) * media.clock_rate)
        start: int | None = None
        async with leg.keys:
            media.local = True  # the audio relayed meanwhile would cut into the event
            try:
                for packet in packets:
                    data, timestamp = media.outgoing.emit(
                        payload_type, packet.payload, samples - packet.offset, loop.time(),
                        timestamp=None if start is None else start + packet.offset,
                        marker=packet.marker,
                    )  # fmt: skip
                    start = timestamp if start is None else start
                    media.send_local(data)
                    if not packet.end:
                        await asyncio.sleep(0.02)  # the event's own pacing
            finally:
                media.local = False

    def _dtmf(self, call: Call, leg: Leg, digit: str, duration: float, source: str) -> None:
        if call.ended or leg not in call.legs():
            return
        log.info("call %s: %s pressed %s (%s)", call.id, leg.party, digit, source)
        now = self.clock()
        self.events.publish(
            DtmfReceived(now, call.id, call.caller, call.callee, digit=digit,
                         duration_ms=round(duration * 1000), leg=leg.role, party=leg.party,
                         source=source)
        )  # fmt: skip
        if call.ivr is not None and leg is call.a:
            call.ivr.key(digit)
            return
        if call.digits is not None:
            call.digits.put_nowait(digit)
            return
        if call.conference is not None:
            return
        if call.queue is not None and not call.agent:
            # Waiting in a queue: nobody on the other side to pass keys to.
            key = self.config.dialplan.queue_callback
            if key and digit == key and call.a.dialog is not None and self.acd is not None:
                self._spawn(self._leave_for_callback(call))
            return
        if leg.trunk is None and call.answered:
            self._feature_code(call, leg, digit, now)
        self._pass_digit(call.other(leg), digit, duration, source)

    def _feature_code(self, call: Call, leg: Leg, digit: str, now: float) -> None:
        """In-call feature codes of an extension's phone: the recording toggle (start or
        stop) and pause. Digits count together when pressed within FEATURE_GAP seconds."""
        keyed = leg.keyed + digit if now - leg.keyed_at <= FEATURE_GAP else digit
        leg.keyed, leg.keyed_at = keyed[-8:], now
        settings = self.config.recording
        recordings = self.recordings
        if settings.toggle_code and keyed.endswith(settings.toggle_code):
            leg.keyed = ""
            if recordings.stop(call.id, by_hand=True) is None:
                recordings.start(call.id, call.caller, call.callee, *self.sides(call),
                                 by=leg.party)  # fmt: skip
        elif settings.pause_code and keyed.endswith(settings.pause_code):
            leg.keyed = ""
            recording = recordings.active.get(call.id)
            if recording is not None:
                recordings.pause(call.id, not recording.paused, by=leg.party)

    def sides(self, call: Call) -> tuple[Side, Side]:
        a, b = call.a, call.b
        return (
            (a.media, a.params.codec if a.params is not None else None),
            (b.media, b.params.codec if b.params is not None else None),
        )

    def _record_if_wanted(self, call: Call) -> None:
        """Start recording an answered call that the policy says to record (now, or since
        a transfer brought in a party whose calls are recorded); follow the parties of one
        being recorded."""
        recordings = self.recordings
        if call.conference is not None:
            return  # a member alone on its call: nothing bridged to record
        if call.id in recordings.active:
            recordings.sync(call.id, *self.sides(call))
            return
        if call.id in recordings.declined:
            return
        if call.queue is not None and not call.agent:
            return  # a caller waiting in a queue: recorded from the moment an agent answers
        if call.ivr is not None and call.b.dialog is None:
            return  # a caller in an IVR flow: nobody to record with yet
        parties = [*call.parties, call.a.party, call.b.party]
        queue = call.queue or ""
        decision = recordings.decide(parties, call.trunk, queue)
        if decision.record or (queue and self.acd is not None and self.acd.records(queue)):
            recordings.start(call.id, call.caller, call.callee, *self.sides(call),
                             retention_days=decision.retention_days)  # fmt: skip

    def _ring_timeout(self, call: Call) -> None:
        if call.ringing.winner is not None or call.ended:
            return
        call.cause = "ring timeout"
        call.ringing.over = True
        for fork in call.ringing.pending():
            self._spawn(self._cancel(fork))

    # pickup, park and taking over a leg

    def _ringing_call(self, route: Route, picker: str) -> Call | None:
        """The call that `picker` picks up: for directed pickup the one ringing at
        route.number, for group pickup the longest ringing at any other extension."""
        for call in sorted(self.calls.values(), key=lambda c: c.started):
            ringing = call.ringing
            if call.answered or call.ended or ringing.winner is not None or ringing.over:
                continue
            at = {f.target.party for f in ringing.pending() if f.target.trunk is None}
            if route.kind is RouteKind.DIRECTED_PICKUP:
                if route.number in at:
                    return call
            elif at - {picker} and call.caller != picker:
                return call
        return None

    async def _pick_up(
        self, call: Call, request: Request, peer: Peer, picker: str,
        offer: SessionDescription | None, timer: SessionTimer | None,
    ) -> None:  # fmt: skip
        """Answer a ringing call at `picker`'s phone: the phones it rang are cancelled, the
        picker's INVITE is answered on the callee's side and the caller gets its 200."""
        ringing = call.ringing
        if call.answered or call.ended or ringing.winner is not None or ringing.over:
            self._reply(request, SipStatus.NOT_FOUND, reason="Nothing To Pick Up")
            return
        adoption = self._adoption(call, call.b, request, offer)
        if adoption is None:
            return  # the phones go on ringing
        ringing.over = True
        ringing.winner = Fork(request, Target(picker, request.uri, str(request.uri), peer))
        for fork in ringing.pending():
            self._spawn(self._cancel(fork))
        self.events.publish(
            CallPickedUp(self.clock(), call.id, call.caller, call.callee, by=picker)
        )
        log.info("call %s: picked up by %s", call.id, picker)
        if not await self._adopt(call, call.b, request, peer, picker, adoption, timer):
            return
        call.answered_by = picker
        call.parties.append(picker)
        await self._complete_a(call)

    def _adoption(
        self, call: Call, leg: Leg, request: Request, offer: SessionDescription | None
    ) -> Adoption | None:
        """Our SDP for a phone that is to take `leg` over, worked out before anything is
        committed: None (the phone got 488) if its offer cannot meet the other side."""
        prefer = _preferred(call, call.other(leg))
        if offer is None:
            return Adoption(leg.session.offer(codecs=_codecs_after(prefer)), None, True)
        try:
            reply = leg.session.answer(offer, prefer=prefer)
        except RemoteProtocolError:
            self._reply(request, SipStatus.NOT_ACCEPTABLE_HERE)
            return None
        return Adoption(reply.sdp, reply, False)

    async def _adopt(
        self, call: Call, leg: Leg, request: Request, peer: Peer, party: str,
        adoption: Adoption, timer: SessionTimer | None,
    ) -> bool:  # fmt: skip
        """Answer `request`, a phone's INVITE, on `leg`: that phone becomes this side of
        the call (pickup, retrieving a parked call, INVITE with Replaces). The phone the
        leg had before, if any, is sent BYE. False if the call could not go on."""
        body, reply = adoption.sdp, adoption.answer
        our_offer = body if adoption.offered else None
        old_dialog, old_peer = leg.dialog, leg.peer
        # Only an extension's phone adopts a leg (pickup, park and Replaces are refused to
        # trunks), so the leg no longer runs over a trunk.
        leg.peer, leg.allow, leg.party, leg.trunk = peer, _allow_of(request), party, None
        leg.timer, leg.owns_call_id, leg.asked = timer, False, Direction.SENDRECV
        if leg.timer_handle is not None:
            leg.timer_handle.cancel()
            leg.timer_handle = None
        ok = self._ok(request, leg, body, to_tag=new_tag())
        leg.dialog = Dialog.from_uas(request, ok)
        self._by_dialog[leg.dialog.id] = (call, leg)
        if old_dialog is not None:
            self._by_dialog[old_dialog.id] = (call, None)
        if reply is not None:
            self._set_params(leg, reply.parameters, new_party=True)
            self._connect(call)
        ack = await self._send_2xx_until_acked(call, leg, request, ok)
        if ack is None:
            if not call.ended:
                log.warning("call %s: no ACK from %s; hanging up", call.id, party)
                await self._hang_up(call, "no ACK")
            return False
        if our_offer is not None and not self._take_answer(call, leg, our_offer, ack, True):
            return False
        if old_dialog is not None and old_peer is not None:
            await self._bye(old_dialog, old_peer)
        if call.answered:
            self._arm(call, leg)
        return True

    async def _park(
        self, call: Call, leg: Leg, referrer: Dialog, referrer_peer: Peer, slot: str
    ) -> None:
        """The phone on `leg` parks its party in `slot` and is let go; the party waits
        (on our media) until the slot is dialled or the park times out."""
        parked_party = call.other(leg)
        by = leg.party
        await self._notify(referrer, referrer_peer, "SIP/2.0 100 Trying", final=False)
        if call.ended:
            self.parking.release(call.id)
            return
        if call.bridge is not None:
            call.bridge.close()
            call.bridge = None
        call.slot, call.parked_leg, call.parked_by = slot, leg, by
        self._by_dialog[referrer.id] = (call, None)
        leg.dialog = leg.peer = None
        leg.party, leg.timer, leg.params = "", None, None
        if leg.timer_handle is not None:
            leg.timer_handle.cancel()
            leg.timer_handle = None
        leg.media.set_inactivity(None)
        leg.media.set_remote(None)
        leg.asked = Direction.SENDRECV
        loop = asyncio.get_running_loop()
        call.park_handle = loop.call_later(
            self.config.dialplan.park_timeout, lambda: self._spawn(self._park_timed_out(call))
        )
        self.events.publish(
            CallParked(self.clock(), call.id, call.caller, call.callee, slot=slot, by=by)
        )
        log.info("call %s: %s parked %s in slot %s", call.id, by, parked_party.party, slot)
        await self._notify(referrer, referrer_peer, f"SIP/2.0 200 Parked In {slot}", final=True)
        if referrer.state is not DialogState.TERMINATED:
            await self._bye(referrer, referrer_peer)
        if call.held:
            # The parker held its party before transferring: the party waits off hold.
            call.held = False
            self._watch(call, parked_party)
            await self._offer(call, parked_party)
        if call.slot == slot and not call.ended:
            self._start_music(parked_party)

    def _unpark(self, call: Call) -> Leg | None:
        """Take the call out of its slot; the leg to put a phone on again."""
        if call.parked_leg is not None:
            self._stop_music(call.other(call.parked_leg))
        if call.park_handle is not None:
            call.park_handle.cancel()
            call.park_handle = None
        self.parking.release(call.id)
        leg = call.parked_leg
        call.slot = call.parked_leg = None
        return leg

    async def _retrieve(
        self, call: Call, request: Request, peer: Peer, party: str,
        offer: SessionDescription | None, timer: SessionTimer | None,
    ) -> None:  # fmt: skip
        """`party` dialled the slot `call` waits in: its phone takes the parked leg."""
        slot = call.slot or ""
        if call.parked_leg is None or call.ended:
            self._reply(request, SipStatus.NOT_FOUND, reason="Nothing Parked There")
            return
        adoption = self._adoption(call, call.parked_leg, request, offer)
        if adoption is None:
            return  # the call stays parked
        leg = self._unpark(call)
        assert leg is not None
        self.events.publish(
            CallRetrieved(self.clock(), call.id, call.caller, call.callee, slot=slot, by=party)
        )
        log.info("call %s: retrieved from slot %s by %s", call.id, slot, party)
        if await self._adopt(call, leg, request, peer, party, adoption, timer):
            call.parties.append(party)
            self._connect(call)
            self._watch(call, leg)

    async def _park_timed_out(self, call: Call) -> None:
        """Nobody came for the parked call: ring the phone that parked it."""
        if call.ended or call.slot is None:
            return
        slot, by = call.slot, call.parked_by
        leg = self._unpark(call)
        assert leg is not None
        self.events.publish(
            CallRetrieved(self.clock(), call.id, call.caller, call.callee, slot=slot, by=by,
                          timed_out=True)
        )  # fmt: skip
        log.info("call %s: park timeout in slot %s; ringing %s", call.id, slot, by)
        route = self.dialplan.route(CallRequest(call.other(leg).party, by))
        # Only back to the parker's phones: never out through a trunk on a party's behalf.
        callable_back = route.kind in _CALL_ROUTES and route.kind is not RouteKind.TRUNK
        if not callable_back or not await self._bring_in(call, leg, route, by):
            await self._hang_up(call, "park timeout, nobody answered")

    def _replacing_invite(
        self, request: Request, peer: Peer, party: str, offer: SessionDescription | None,
        timer: SessionTimer | None, from_trunk: bool,
    ) -> None:  # fmt: skip
        """An INVITE with Replaces (RFC 3891 §3): the phone takes over the leg of ours it
        names, and the phone that had it is sent BYE."""
        try:
            replaces = parse_replaces(request.header("Replaces") or "")
        except RemoteProtocolError:
            self._reply(request, SipStatus.BAD_REQUEST, reason="Bad Replaces")
            return
        found = self._leg_of(replaces)
        if found is None:
            self._reply(request, SipStatus.CALL_DOES_NOT_EXIST)
            return
        call, leg = found
        if replaces.early_only:
            self._reply(request, SipStatus.BUSY_HERE)  # §3: the dialog is confirmed
            return
        # §6: only someone with a say in the replaced dialog may replace it: the phone on
        # its other side, or a party of the call who referred this phone (Referred-By).
        referred_by = request.header("Referred-By")
        referrer = None
        if referred_by is not None:
            with contextlib.suppress(RemoteProtocolError):
                referrer = _dialled(parse_name_addr(referred_by).uri)
        parties = {p.party for p in call.legs()} | set(call.parties)
        if from_trunk or (party not in parties and referrer not in parties):
            self._reply(request, SipStatus.FORBIDDEN, reason="Not A Party To That Call")
            return
        adoption = self._adoption(call, leg, request, offer)
        if adoption is None:
            return
        self._reply(request, SipStatus.TRYING)

        async def take_over() -> None:
            replaced = leg.party
            if call.ended:
                self._reply(request, SipStatus.CALL_DOES_NOT_EXIST)
                return
            if await self._adopt(call, leg, request, peer, party, adoption, timer):
                call.parties.append(party)
                self._watch(call, leg)
                self.events.publish(
                    CallTransferred(self.clock(), call.id, call.caller, call.callee, to=party,
                                    by=replaced, attended=True)
                )  # fmt: skip

        self._spawn(take_over())

    def _leg_of(self, replaces: Replaces) -> tuple[Call, Leg] | None:
        """The leg of an answered call whose dialog `replaces` names."""
        for dialog_id, (call, leg) in self._by_dialog.items():
            if leg is not None and call.answered and not call.ended and replaces.matches(dialog_id):
                return call, leg
        return None

    # in-dialog requests

    def _in_dialog(self, request: Request, peer: Peer, call: Call, leg: Leg | None) -> None:
        if request.method == Method.ACK:
            acked = leg.acks.get(request.cseq.number) if leg is not None else None
            if acked is not None and not acked.done():
                acked.set_result(request)
            return
        if leg is None:
            # A phone that handed its side over: its BYE ends only its own part.
            self._reply(request, SipStatus.OK if request.method == Method.BYE else 481)
            if request.method == Method.BYE:
                self._forget_dialog(request)
            return
        dialog = leg.dialog
        if dialog is None:
            self._reply(request, SipStatus.CALL_DOES_NOT_EXIST)
            return
        verdict = dialog.receive_request(request)
        if not verdict.accepted:
            self._reply(request, verdict.status or 500)
            return
        if request.method == Method.BYE:
            self._reply(request, SipStatus.OK)
            if call.transferring is leg:
                self._referrer_left(call, leg, dialog)
                return
            call.hangup_by = leg.role
            self._spawn(self._hang_up(call, f"BYE from the {leg.role}", exclude=leg))
        elif request.method == Method.INVITE:
            self._phone_reinvite(call, leg, request)
        elif request.method == Method.UPDATE:
            self._phone_update(call, leg, request)
        elif request.method == Method.REFER:
            self._refer(call, leg, dialog, request)
        elif request.method == Method.INFO:
            self._info(call, leg, request)
        else:
            self._reply(request, SipStatus.NOT_IMPLEMENTED, headers=[("Allow", ALLOW)])

    def _info(self, call: Call, leg: Leg, request: Request) -> None:
        """INFO (RFC 6086, legacy use): DTMF as application/dtmf-relay or application/dtmf;
        an empty INFO (a keep-alive some phones send) is answered too."""
        if not request.body:
            self._reply(request, SipStatus.OK)
            return
        content_type = request.header("Content-Type") or ""
        found = digit_from_info(content_type, request.body)
        if found is None:
            accept = [("Accept", "application/dtmf-relay, application/dtmf")]
            self._reply(request, SipStatus.UNSUPPORTED_MEDIA_TYPE, headers=accept)
            return
        self._reply(request, SipStatus.OK)
        self._dtmf(call, leg, found[0], found[1], "info")

    def _forget_dialog(self, request: Request) -> None:
        self._by_dialog.pop(dialog_id_for_request(request) or DialogId("", "", None), None)

    def _phone_reinvite(self, call: Call, leg: Leg, request: Request) -> None:
        """A re-INVITE (RFC 3261 §14.2): refused while offers cross, else answered."""
        if leg.answering:
            # Its previous re-INVITE is still being answered.
            retry = [("Retry-After", str(random.randint(0, 10)))]
            self._reply(request, SipStatus.SERVER_INTERNAL_ERROR, headers=retry)
            return
        if leg.offering:
            self._reply(request, SipStatus.REQUEST_PENDING)  # glare: ours is in progress
            return
        timer = self._timer_for(request)
        if isinstance(timer, TooBrief):
            self._too_brief(request, timer)
            return
        leg.answering = True
        self._spawn(self._answer_reinvite(call, leg, request, timer))

    async def _answer_reinvite(
        self, call: Call, leg: Leg, request: Request, timer: SessionTimer | None
    ) -> None:
        """Answer on our media, and pass a new direction on to the other phone so that hold
        and resume work end to end (RFC 3264 §8.4). Without SDP our 200 offers and the ACK
        answers."""
        other = call.other(leg)
        our_offer = None
        changed = False
        try:
            if request.body:
                try:
                    offer = parse_sdp(request.body)
                    reply = leg.session.answer(offer)
                except RemoteProtocolError:
                    self._reply(request, SipStatus.NOT_ACCEPTABLE_HERE)
                    return
                changed = self._phone_offered(call, leg, reply.parameters)
                body = reply.sdp
            else:
                body = our_offer = leg.session.offer(other.asked)
            leg.timer = timer
            ack = await self._send_2xx_until_acked(call, leg, request, self._ok(request, leg, body))
        finally:
            leg.answering = False
        if ack is None:
            if not call.ended:
                log.warning("call %s: no ACK for the 200 to a re-INVITE; hanging up", call.id)
                await self._hang_up(call, "no ACK")
            return
        self._arm(call, leg)  # a re-INVITE is a session refresh (RFC 4028 §10)
        if our_offer is not None and not self._take_answer(call, leg, our_offer, ack):
            return
        if changed and other.dialog is not None:
            await self._offer(call, other)

    def _phone_update(self, call: Call, leg: Leg, request: Request) -> None:
        """UPDATE (RFC 3311): an offer is answered in the 200 like a re-INVITE's; without
        SDP it is a session refresh."""
        timer = self._timer_for(request)
        if isinstance(timer, TooBrief):
            self._too_brief(request, timer)
            return
        body = None
        changed = False
        if request.body:
            if leg.offering:
                self._reply(request, SipStatus.REQUEST_PENDING)  # §5.2: our offer is open
                return
            if leg.answering:
                retry = [("Retry-After", str(random.randint(0, 10)))]
                self._reply(request, SipStatus.SERVER_INTERNAL_ERROR, headers=retry)
                return
            try:
                reply = leg.session.answer(parse_sdp(request.body))
            except RemoteProtocolError:
                self._reply(request, SipStatus.NOT_ACCEPTABLE_HERE)
                return
            changed = self._phone_offered(call, leg, reply.parameters)
            body = reply.sdp
        leg.timer = timer
        self.endpoint.respond(request, self._ok(request, leg, body))
        self._arm(call, leg)
        if changed and call.other(leg).dialog is not None:
            self._spawn(self._offer(call, call.other(leg)))

    def _phone_offered(self, call: Call, leg: Leg, params: MediaParameters) -> bool:
        """Apply what we answered to a phone's offer; True if it asked for a new direction."""
        self._set_params(leg, params)
        self._connect(call)
        asked = mirror(params.direction)  # the phone's own direction, RFC 2543 hold included
        changed = asked is not leg.asked
        leg.asked = asked
        held = asked is not Direction.SENDRECV
        if held != call.held:
            self._set_held(call, held, leg.role)
        return changed

    def _set_held(self, call: Call, held: bool, by: str) -> None:
        call.held = held
        if call.conference is not None:
            self.conferences.hold(call.id, held)
        elif held:
            self._start_music(call.b if by == "caller" else call.a)  # the party left waiting
        else:
            for leg in call.legs():
                self._stop_music(leg)
        # On hold a phone may send nothing at all: that is not a dead call.
        timeout = self.config.rtp.inactivity_timeout
        for leg in call.legs():
            if leg.dialog is not None:
                leg.media.set_inactivity(None if held or timeout <= 0 else timeout)
        self.events.publish(
            CallHeld(self.clock(), call.id, call.caller, call.callee, held=held, by=by)
        )

    async def _offer(self, call: Call, leg: Leg, codecs: tuple[str, ...] | None = None) -> None:
        """Re-INVITE one phone with our media and what the other phone asked for (hold and
        resume passed on); after a 491 (glare, RFC 3261 §14.1) again after a random wait."""
        async with leg.offers:
            for _ in range(GLARE_ATTEMPTS):
                status = await self._reinvite(call, leg, codecs)
                if status != SipStatus.REQUEST_PENDING or call.ended:
                    return
                await asyncio.sleep(self.glare_delay(leg.owns_call_id))

    async def _reinvite(self, call: Call, leg: Leg, codecs: tuple[str, ...] | None) -> int:
        """One re-INVITE of ours; its final status (0 if none was sent)."""
        dialog, peer = leg.dialog, leg.peer
        if dialog is None or peer is None or call.ended:
            return 0
        if codecs is None and call.renegotiating and leg.session.passthrough is not None:
            codecs = G711  # no G.722 again while the other side is waiting for G.711
        offer = leg.session.offer(call.other(leg).asked, codecs=codecs)
        local = (peer.local.host, peer.local.port)
        headers = [("Content-Type", SDP), ("Allow", ALLOW), *self._timer_headers(leg)]
        request = dialog.create_request(
            Method.INVITE, headers, offer.encode(),
            local_address=local, transport=peer.transport.upper(),
        )  # fmt: skip

        def on_response(response: Response) -> None:
            if 200 <= response.status < 300:
                dialog.receive_response(response)
                ack = dialog.create_ack(local_address=local, transport=peer.transport.upper())
                self.endpoint.send(ack.encode(), peer)

        leg.offering = True
        try:
            final = await self.endpoint.invite(request, peer, on_response)
        except PbxError as exc:
            log.info("call %s: re-INVITE to the %s failed: %s", call.id, leg.role, exc)
            final = None
        finally:
            leg.offering = False
        if final is None or final.status in (408, 481):
            # §14.1: the dialog is gone.
            await self._hang_up(call, f"re-INVITE to the {leg.role} failed")
            return SipStatus.REQUEST_TIMEOUT
        if 200 <= final.status < 300:
            try:
                self._set_params(leg, leg.session.answered(offer, parse_sdp(final.body)))
            except RemoteProtocolError as exc:
                log.info("call %s: bad answer to our re-INVITE: %s", call.id, exc)
            self._connect(call)
            self._refreshed(call, leg, final)
        else:
            if codecs is not None and call.renegotiating:
                # It would not take G.711 after all: the two sides have nothing in common.
                call.renegotiating = False
                await self._hang_up(call, "no common codec")
                return final.status
            self._arm(call, leg)  # the session goes on; so do its refreshes
        return final.status

    # session timers (RFC 4028)

    def _timer_for(self, request: Request) -> SessionTimer | TooBrief | None:
        try:
            return negotiate_as_uas(request, self.session_expires, self.min_se)
        except RemoteProtocolError as exc:
            log.info("ignoring a broken session timer header: %s", exc)
            return None

    def _too_brief(self, request: Request, timer: TooBrief) -> None:
        self.endpoint.respond(request, build_response(
            request, SESSION_INTERVAL_TOO_SMALL, "Session Interval Too Small",
            headers=[("Min-SE", str(timer.min_se))], to_tag=new_tag(),
        ))  # fmt: skip

    def _timer_headers(self, leg: Leg) -> list[tuple[str, str]]:
        """Session-Expires and friends for a request of ours in the leg's dialog."""
        if leg.timer is None:
            return []
        return request_headers(self.session_expires, self.min_se, leg.timer)

    def _arm(self, call: Call, leg: Leg) -> None:
        """(Re)start the leg's session timer: our next refresh, or the phone's deadline."""
        if leg.timer_handle is not None:
            leg.timer_handle.cancel()
            leg.timer_handle = None
        timer = leg.timer
        if timer is None or call.ended or leg.dialog is None:
            return
        loop = asyncio.get_running_loop()
        if timer.we_refresh:
            leg.timer_handle = loop.call_later(
                timer.refresh_after * self.timer_unit,
                lambda: self._spawn(self._refresh(call, leg)),
            )
        else:
            leg.timer_handle = loop.call_later(
                timer.expire_after * self.timer_unit, self._expired, call, leg
            )

    def _expired(self, call: Call, leg: Leg) -> None:
        log.info("call %s: the %s did not refresh the session", call.id, leg.role)
        self._spawn(self._hang_up(call, "session timer expired"))

    def _refreshed(self, call: Call, leg: Leg, response: Response) -> None:
        """A 2xx to our re-INVITE or UPDATE: follow the interval and refresher it names."""
        if leg.timer is not None:
            with contextlib.suppress(RemoteProtocolError):
                leg.timer = timer_from_response(response)
        self._arm(call, leg)

    async def _refresh(self, call: Call, leg: Leg) -> None:
        """A session refresh (RFC 4028 §7.4): UPDATE without SDP when the phone takes
        UPDATE, else a re-INVITE; no answer at all (408, 481) ends the call."""
        dialog, peer = leg.dialog, leg.peer
        if call.ended or dialog is None or peer is None:
            return
        if Method.UPDATE in leg.allow and dialog.state is DialogState.CONFIRMED:
            local = (peer.local.host, peer.local.port)
            update = dialog.create_request(
                Method.UPDATE, [("Allow", ALLOW), *self._timer_headers(leg)],
                local_address=local, transport=peer.transport.upper(),
            )  # fmt: skip
            try:
                final: Response | None = await self.endpoint.request(update, peer)
            except PbxError as exc:
                log.info("call %s: session refresh of the %s failed: %s", call.id, leg.role, exc)
                final = None
            if final is None or final.status in (408, 481):
                await self._hang_up(call, "session refresh failed")
                return
            if 200 <= final.status < 300:
                self._refreshed(call, leg, final)
                return
            if final.status not in (405, 501):
                self._arm(call, leg)  # try again in half an interval
                return
            leg.allow = leg.allow - {Method.UPDATE}
        await self._offer(call, leg)

    # transfer

    def _refer(self, call: Call, leg: Leg, dialog: Dialog, request: Request) -> None:
        """REFER (RFC 3515) from the phone on `leg`: with Replaces in the Refer-To, an
        attended transfer; to the park number, park; else a blind transfer, routed by the
        dialplan as if the phone had dialled the target."""
        try:
            refer_to = parse_name_addr(request.header("Refer-To") or "")
            uri = refer_to.uri
            replaces = replaces_in_uri(uri) if isinstance(uri, SipUri) else None
        except RemoteProtocolError:
            self._reply(request, SipStatus.BAD_REQUEST, reason="Bad Refer-To")
            return
        peer = leg.peer
        if not call.answered or peer is None or call.slot is not None:
            self._reply(request, SipStatus.FORBIDDEN, reason="Call Not Answered")
            return
        if call.conference is not None:
            self._reply(request, SipStatus.FORBIDDEN, reason="Cannot Transfer A Conference")
            return
        if call.attempts or call.transferring is not None:
            # One transfer at a time: a second one would race the first for the leg.
            self._reply(request, SipStatus.REQUEST_PENDING, reason="Transfer In Progress")
            return
        if replaces is not None:
            found = self._leg_of(replaces)
            if found is None or found[0] is call or found[1].party != leg.party:
                self._reply(request, SipStatus.CALL_DOES_NOT_EXIST, reason="No Such Call")
                return
            self._reply(request, SipStatus.ACCEPTED)
            self._spawn_transfer(call, leg, self._attended(call, leg, dialog, peer, *found))
            return
        target = _dialled(uri)
        # A party on a trunk may send the call only where it could have dialled in: the
        # dialplan routes its target as a DID, never out through a trunk (toll fraud).
        from_trunk = leg.trunk.name if leg.trunk is not None else None
        route = self.dialplan.route(CallRequest(leg.party, target, from_trunk))
        if route.kind is RouteKind.PARK:
            slot = self.parking.park(call.id)
            if slot is None:
                self._reply(request, SipStatus.BUSY_HERE, reason="All Park Slots Taken")
                return
            self._reply(request, SipStatus.ACCEPTED)
            self._spawn_transfer(call, leg, self._park(call, leg, dialog, peer, slot))
            return
        if route.kind is RouteKind.CONFERENCE:
            if self.conferences.full(route.number):
                self._reply(request, SipStatus.BUSY_HERE, reason="Conference Full")
                return
            self._reply(request, SipStatus.ACCEPTED)
            self._spawn_transfer(call, leg, self._to_conference(call, leg, dialog, peer, route))
            return
        if route.kind is RouteKind.QUEUE:
            if leg is not call.b or self.acd is None or call.conference is not None:
                # Agents ring on the callee's side: the caller is the one who waits.
                self._reply(request, SipStatus.FORBIDDEN, reason="Only The Called Side May")
                return
            self._reply(request, SipStatus.ACCEPTED)
            self._spawn_transfer(call, leg, self._to_queue(call, leg, dialog, peer, route))
            return
        if route.kind not in _CALL_ROUTES:
            self._reply(request, SipStatus.NOT_FOUND if route.kind is RouteKind.UNKNOWN
                        else SipStatus.FORBIDDEN)  # fmt: skip
            return
        if route.kind is not RouteKind.TRUNK and not any(
            self.registrar.contacts(m) for m in route.members
        ):
            self._reply(request, SipStatus.TEMPORARILY_UNAVAILABLE)
            return
        self._reply(request, SipStatus.ACCEPTED)
        self._spawn_transfer(call, leg, self._transfer(call, leg, dialog, peer, route))

    def _spawn_transfer(self, call: Call, leg: Leg, work: Coroutine[Any, Any, None]) -> None:
        call.transferring = leg

        async def carried_out() -> None:
            try:
                await work
            finally:
                call.transferring = None

        self._spawn(carried_out())

    def _referrer_left(self, call: Call, leg: Leg, referrer: Dialog) -> None:
        """The phone that asked for a transfer hung up before it was done (many do at
        once after the 202): it leaves alone, and the transfer goes on without it."""
        log.info("call %s: %s hung up during its transfer", call.id, leg.party)
        self._by_dialog[referrer.id] = (call, None)
        leg.dialog = None
        if leg.timer_handle is not None:
            leg.timer_handle.cancel()
            leg.timer_handle = None
        leg.media.set_inactivity(None)  # its RTP stops; that is no reason to end the call

    async def _transfer(
        self, call: Call, leg: Leg, referrer: Dialog, referrer_peer: Peer, route: Route
    ) -> None:
        """Blind transfer: ring the target; when it answers it takes the referrer's place
        and media endpoint, and the referrer is told (NOTIFY sipfrag) and let go (BYE)."""
        await self._notify(referrer, referrer_peer, "SIP/2.0 100 Trying", final=False)
        by = leg.party
        status = await self._bring_in(call, leg, route, by, referrer)
        if status is True:
            await self._notify(referrer, referrer_peer, "SIP/2.0 200 OK", final=True)
            if referrer.state is not DialogState.TERMINATED:
                await self._bye(referrer, referrer_peer)
            return
        code = status if isinstance(status, int) and status >= 300 else 408
        await self._notify(referrer, referrer_peer, f"SIP/2.0 {code} Transfer Failed",
                           final=True)  # fmt: skip
        if leg.dialog is None and not call.ended:
            # The referrer is gone and nobody took its place: the party is left alone.
            await self._hang_up(call, "transfer failed after the referrer left")

    def _attempt_for(self, call: Call, leg: Leg) -> Ringing:
        """A new ringing for `leg`'s side, offering the codec of the party on the other."""
        party = call.other(leg)
        codec = party.params.codec if party.params is not None else None
        return Ringing(leg.session.offer(codecs=_codecs_after(codec)))

    def _give_up(self, ringing: Ringing) -> None:
        ringing.over = True
        for fork in ringing.pending():
            self._spawn(self._cancel(fork))

    async def _bring_in(
        self, call: Call, leg: Leg, route: Route, by: str, referrer: Dialog | None = None,
        attempt: Ringing | None = None, ring_timeout: float | None = None,
        claim: Callable[[], bool] | None = None,
    ) -> bool | int:  # fmt: skip
        """Ring `route` for `leg`'s side of the call; when it answers, the new phone takes
        the leg (its dialog and our media endpoint toward it). True when it did, else the
        final status it gave (0 if the call ended meanwhile). `by` is who transferred
        the call ("" for the ACD's offers: no transfer); `claim`, if given, must say yes
        before the answer may take the leg."""
        party = call.other(leg)
        ringing = attempt or self._attempt_for(call, leg)
        call.attempts.append(ringing)
        loop = asyncio.get_running_loop()
        timeout = loop.call_later(ring_timeout or self.config.calls.ring_timeout,
                                  self._give_up, ringing)  # fmt: skip
        won: asyncio.Future[None] = loop.create_future()

        def on_won(_fork: Fork, _response: Response) -> None:
            if not won.done():
                won.set_result(None)

        async def ring() -> list[int]:
            try:
                return await self._ring(
                    call, ringing, _waves(route), party.party, party.party, route.number,
                    None, on_won=on_won,
                )  # fmt: skip
            finally:
                _forget_attempt(call, ringing)

        # The winner takes the leg at once; the other forks' CANCELs finish on their own.
        # The attempt is over when the leg is taken (or not), not when the last fork ends.
        ringing_task = self._spawn(ring())
        try:
            return await self._take_leg(call, leg, ringing, ringing_task, won, timeout,
                                        referrer, claim, by)  # fmt: skip
        finally:
            _forget_attempt(call, ringing)

    async def _take_leg(
        self, call: Call, leg: Leg, ringing: Ringing, ringing_task: asyncio.Task[object],
        won: asyncio.Future[None], ring_timer: asyncio.TimerHandle, referrer: Dialog | None,
        claim: Callable[[], bool] | None, by: str,
    ) -> bool | int:  # fmt: skip
        """`_bring_in`'s second half: once the attempt is won (or done), the new phone
        takes the leg."""
        party = call.other(leg)
        try:
            await asyncio.wait((ringing_task, won), return_when=asyncio.FIRST_COMPLETED)
        finally:
            ring_timer.cancel()
        fork, final = ringing.winner, ringing.answer
        unclaimed = fork is not None and claim is not None and not claim()
        if fork is None or final is None or fork.dialog is None or call.ended or unclaimed:
            if unclaimed and not ringing_task.done():
                self._give_up(ringing)
            if fork is not None and fork.dialog is not None:
                self._spawn(self._bye(fork.dialog, fork.peer))  # answered too late
            if call.ended or not ringing_task.done():
                return 0
            statuses = ringing_task.result()
            assert isinstance(statuses, list)
            return _outcome(ringing, statuses)
        try:
            params = leg.session.answered(ringing.offer, parse_sdp(final.body))
        except RemoteProtocolError as exc:
            log.info("call %s: bad answer from %s: %s", call.id, fork.target.party, exc)
            self._spawn(self._bye(fork.dialog, fork.peer))
            return SipStatus.NOT_ACCEPTABLE_HERE
        self._set_params(leg, params, new_party=True)
        # The new phone takes the leg; whoever had it is told and let go by the caller.
        if referrer is not None:
            self._by_dialog[referrer.id] = (call, None)
        self._by_dialog[fork.dialog.id] = (call, leg)
        leg.dialog, leg.peer, leg.allow = fork.dialog, fork.peer, _allow_of(final)
        leg.party, leg.trunk = fork.target.party, fork.target.trunk
        leg.owns_call_id, leg.asked = True, Direction.SENDRECV
        try:
            leg.timer = timer_from_response(final)
        except RemoteProtocolError:
            leg.timer = None
        self._arm(call, leg)
        if not call.held:
            self._stop_music(party)  # waiting in a queue or for a transfer: over
        self._connect(call)
        self._watch(call, leg)
        call.parties.append(leg.party)
        if by:
            self.events.publish(
                CallTransferred(self.clock(), call.id, call.caller, call.callee,
                                to=leg.party, by=by)
            )  # fmt: skip
        log.info("call %s: %s now talks to %s", call.id, party.party, leg.party)
        if call.held:  # the referrer usually held its party before transferring
            self._set_held(call, False, leg.role)
            await self._offer(call, party)
        return True

    async def _attended(
        self, call: Call, leg: Leg, referrer: Dialog, referrer_peer: Peer,
        consultation: Call, replaced: Leg,
    ) -> None:  # fmt: skip
        """Attended transfer (RFC 5589 §7): the phone on `leg` talks to its party in `call`
        and, in `consultation`, on `replaced` to another; it asks that the two talk to each
        other. The other party of the consultation takes `leg`'s place in `call`, the
        consultation call ends, and the referrer is told and let go from both."""
        await self._notify(referrer, referrer_peer, "SIP/2.0 100 Trying", final=False)
        if call.ended or consultation.ended or not consultation.answered:
            await self._notify(referrer, referrer_peer, "SIP/2.0 481 Transfer Failed",
                               final=True)  # fmt: skip
            return
        party = call.other(leg)
        joining = consultation.other(replaced)
        by = leg.party
        if joining.dialog is None or replaced.dialog is None:
            await self._notify(referrer, referrer_peer, "SIP/2.0 481 Transfer Failed",
                               final=True)  # fmt: skip
            return
        for bridged in (call, consultation):
            if bridged.bridge is not None:
                bridged.bridge.close()
                bridged.bridge = None
        if joining.timer_handle is not None:
            joining.timer_handle.cancel()
            joining.timer_handle = None
        # `joining` moves from the consultation into `call`, in the referrer's place.
        if consultation.a is joining:
            consultation.a = replaced  # placeholder: both slots name the leg that ends
        else:
            consultation.b = replaced
        if call.a is leg:
            call.a = joining
        else:
            call.b = joining
        joining.role, joining.owner = leg.role, call.id
        self._by_dialog[joining.dialog.id] = (call, joining)
        self._by_dialog[referrer.id] = (call, None)
        self._by_dialog[replaced.dialog.id] = (call, None)
        replaced_dialog, replaced_peer = replaced.dialog, replaced.peer
        if leg.timer_handle is not None:
            leg.timer_handle.cancel()
        self._stop_inband(leg)
        self.media_clock.release(leg.media)
        leg.media.close()  # the referrer's side of `call`; the consultation's goes below
        was_held = call.held or consultation.held
        call.held = False
        for joined in call.legs():
            self._stop_music(joined)  # whoever waited on hold now talks
        self._connect(call)
        for joined in call.legs():
            self._watch(call, joined)
            self._arm(call, joined)
        call.parties.append(joining.party)
        self.events.publish(
            CallTransferred(self.clock(), call.id, call.caller, call.callee, to=joining.party,
                            by=by, attended=True, replaced_call_id=consultation.id)
        )  # fmt: skip
        log.info("call %s: attended transfer by %s: %s now talks to %s (call %s ends)",
                 call.id, by, party.party, joining.party, consultation.id)  # fmt: skip
        consultation.cause = "attended transfer"
        consultation.hangup_by = replaced.role
        consultation.ended = True
        await self._release(consultation)
        await self._notify(referrer, referrer_peer, "SIP/2.0 200 OK", final=True)
        byes = [self._bye(referrer, referrer_peer)]
        if replaced_peer is not None:
            byes.append(self._bye(replaced_dialog, replaced_peer))
        await asyncio.gather(*byes)
        if was_held:
            self.events.publish(
                CallHeld(self.clock(), call.id, call.caller, call.callee, held=False, by=by)
            )
            await asyncio.gather(self._offer(call, party), self._offer(call, joining))

    async def _notify(self, dialog: Dialog, peer: Peer, sipfrag: str, final: bool) -> None:
        """RFC 3515 §2.4.5: the refer subscription's progress as message/sipfrag."""
        if dialog.state is DialogState.TERMINATED:
            return
        state = "terminated;reason=noresource" if final else "active;expires=60"
        local = (peer.local.host, peer.local.port)
        notify = dialog.create_request(
            Method.NOTIFY,
            [("Event", "refer"), ("Subscription-State", state),
             ("Content-Type", "message/sipfrag;version=2.0")],
            sipfrag.encode() + b"\r\n",
            local_address=local, transport=peer.transport.upper(),
        )  # fmt: skip
        try:
            await self.endpoint.request(notify, peer)
        except PbxError as exc:
            log.info("NOTIFY to %s failed: %s", peer, exc)

    # building messages

    def _invite_for(
        self, call: Call, target: Target, from_user: str, from_name: str,
        offer: SessionDescription,
    ) -> Request:  # fmt: skip
        """An INVITE of ours to one target, a new dialog for `call`. Its Call-ID and branch
        carry the call's id, so that it is recognised if it loops back to us. Toward a
        trunk, From and P-Asserted-Identity carry the caller ID the route chose."""
        peer, trunk = target.peer, target.trunk
        if trunk is not None and self.trunks is not None:
            contact = self.trunks.local_contact(trunk, peer)
            via_host = contact.hostport
            domain = request_uri(trunk)
            domain_text = f"{domain.host}:{domain.port}" if domain.port else domain.host
            presented = target.caller_id or trunk.username or from_user
            from_uri = f"sip:{uri_user(presented)}@{domain_text}"
            extra = [("P-Asserted-Identity", f"<{from_uri}>")] if target.caller_id else []
            contact_uri = f"<sip:pbx@{via_host};transport={trunk.transport}>"
            display = ""
        else:
            local = peer.local
            host = f"[{local.host}]" if ":" in local.host else local.host
            via_host = f"{host}:{local.port}"
            from_uri = f"sip:{uri_user(from_user)}@{host}"
            extra = []
            contact_uri = self._contact_at(peer)
            display = f"{quote(from_name)} " if from_name else ""
        return Request.build(
            Method.INVITE,
            target.uri,
            [
                ("Via", f"SIP/2.0/{peer.transport.upper()} {via_host};"
                        f"branch={new_branch()}-{call.id};rport"),
                ("Max-Forwards", str(call.max_forwards)),
                ("From", f"{display}<{from_uri}>;tag={new_tag()}"),
                ("To", f"<{target.to}>"),
                ("Call-ID", f"{call.id}-{new_tag()}@{via_host.rpartition(':')[0]}"),
                ("CSeq", "1 INVITE"),
                ("Contact", contact_uri),
                *extra,
                ("User-Agent", self.config.sip.user_agent),
                ("Allow", ALLOW),
                ("Supported", SUPPORTED),
                *request_headers(self.session_expires, self.min_se),
                ("Content-Type", SDP),
            ],
            offer.encode(),
        )  # fmt: skip

    def _ok(
        self, request: Request, leg: Leg, body: SessionDescription | None,
        to_tag: str | None = None,
    ) -> Response:  # fmt: skip
        """Our 200 to a phone's INVITE or UPDATE: Contact, capabilities, the session timer
        agreed for the leg, and our SDP if any."""
        headers = [
            ("Contact", self._contact(leg)),
            ("Allow", ALLOW),
            ("Supported", SUPPORTED),
            ("Server", self.config.sip.user_agent),
        ]
        if leg.timer is not None:
            headers += response_headers(leg.timer)
        if body is not None:
            headers.append(("Content-Type", SDP))
        encoded = body.encode() if body is not None else b""
        return build_response(request, SipStatus.OK, headers=headers, body=encoded, to_tag=to_tag)

    def _contact(self, leg: Leg) -> str:
        assert leg.peer is not None
        if leg.trunk is not None and self.trunks is not None:
            contact = self.trunks.local_contact(leg.trunk, leg.peer)
            return f"<sip:pbx@{contact.hostport};transport={leg.trunk.transport}>"
        return self._contact_at(leg.peer)

    def _contact_at(self, peer: Peer) -> str:
        return f"<sip:pbx@{_host(peer)}:{peer.local.port};transport={peer.transport}>"

    # ending

    async def _cancelled(self, call: Call) -> None:
        if call.answered or call.ended:
            return
        self._reply(call.a_request, SipStatus.REQUEST_TERMINATED, tag=call.a_tag)
        call.ended = call.ringing.over = True
        call.status, call.cause, call.hangup_by = 487, "caller cancelled", "caller"
        await self._release(call)  # CANCELs the forks, not waiting for phones that are gone

    async def _cancel(self, fork: Fork) -> None:
        if fork.cancelled:
            return
        fork.cancelled = True
        if not fork.heard:
            # RFC 3261 §9.1: no CANCEL before a provisional response; it goes when one
            # comes (_fork_response). Meanwhile the call does not wait for this phone.
            fork.given_up.set()
            return
        await self._send_cancel(fork)

    async def _send_cancel(self, fork: Fork) -> None:
        try:
            await self.endpoint.request(build_cancel(fork.request), fork.peer)
        except PbxError as exc:
            log.info("CANCEL to %s failed: %s", fork.peer, exc)

    async def _bye(self, dialog: Dialog, peer: Peer) -> None:
        if dialog.state is DialogState.TERMINATED:
            return
        local = (peer.local.host, peer.local.port)
        bye = dialog.create_request(Method.BYE, local_address=local,
                                    transport=peer.transport.upper())  # fmt: skip
        try:
            await self.endpoint.request(bye, peer)
        except PbxError as exc:
            log.info("BYE to %s failed: %s", peer, exc)

    async def _hang_up(self, call: Call, why: str, exclude: Leg | None = None) -> None:
        if call.ended:
            return
        call.ended = True
        call.cause = call.cause or why
        log.info("call %s ends: %s", call.id, why)
        await asyncio.gather(*(
            self._bye(leg.dialog, leg.peer)
            for leg in call.legs()
            if leg is not exclude and leg.dialog is not None and leg.peer is not None
        ))  # fmt: skip
        await self._release(call)

    async def _release(self, call: Call) -> None:
        """Let go of everything the call holds. Whatever ended it, no phone is left in it:
        a caller never answered gets its final response, phones still ringing get CANCEL,
        answered ones not yet sent BYE get it."""
        if call.id not in self.calls:
            return
        call.ended = True
        if not call.answered and call.status == 0:
            call.status = SipStatus.SERVICE_UNAVAILABLE
            self._reply(call.a_request, call.status, tag=call.a_tag)
        for attempt in (call.ringing, *call.attempts):  # transfer targets too
            attempt.over = True
            for fork in attempt.pending():
                self._spawn(self._cancel(fork))
        for leg in call.legs():
            dialog, peer = leg.dialog, leg.peer
            if leg.owner != call.id or dialog is None or peer is None:
                continue
            if dialog.state is not DialogState.TERMINATED:
                self._spawn(self._bye(dialog, peer))
        self._unpark(call)
        if call.digits is not None:
            call.digits.put_nowait("")  # whatever waits for a key: the call is over
        keeping = call.ivr.gone() if call.ivr is not None else None
        self.conferences.leave(call.id)
        self.recordings.ended(call.id)
        if call.queue is not None and self.acd is not None:
            self.acd.ended(call.id, by="agent" if call.hangup_by == "callee" else "caller")
        if keeping is None or keeping.done():
            self.events.publish(self._ended(call))
        else:
            ending = self._spawn(self._ended_after(keeping, self._ended(call)))
            self._ending.add(ending)
            ending.add_done_callback(self._ending.discard)
        if call.bridge is not None:
            call.bridge.close()
        for leg in {id(leg): leg for leg in call.legs()}.values():
            if leg.timer_handle is not None:
                leg.timer_handle.cancel()
            if leg.owner == call.id:
                self._stop_inband(leg)
                self.media_clock.release(leg.media)
                leg.media.close()
        self.calls.pop(call.id, None)
        self._by_branch.pop(call.a_request.vias[0].branch or "", None)
        for key in [k for k, (c, _) in self._by_dialog.items() if c is call]:
            del self._by_dialog[key]

    async def _ended_after(self, flow: asyncio.Task[object], ended: CallEnded) -> None:
        """Announce a call's end (and so its CDR) once its flow has kept the message the
        caller hung up on: followers of the bus take call_ended as a call's last event. Not
        later than MESSAGE_KEEPING_PATIENCE seconds, and at once on shutdown."""
        try:
            await asyncio.wait([flow], timeout=MESSAGE_KEEPING_PATIENCE)
        finally:
            self.events.publish(ended)

    def _ended(self, call: Call) -> CallEnded:
        if call.answered_at is not None:
            disposition = "ANSWERED"
        elif call.status == 487:
            disposition = "CANCELLED"
        elif call.status in (486, 600):
            disposition = "BUSY"
        elif call.status in (408, 480):
            disposition = "NO ANSWER"
        else:
            disposition = "FAILED"
        a, b = call.a.media.stats, call.b.media.stats
        return CallEnded(
            self.clock(), call.id, call.caller, call.callee,
            started=call.started, answered=call.answered_at, disposition=disposition,
            cause=call.cause, hangup_by=call.hangup_by, status=call.status,
            caller_loss=a.lost if a else 0,
            caller_jitter_ms=a.jitter * 1000 / 8000 if a else 0.0,
            callee_loss=b.lost if b else 0,
            callee_jitter_ms=b.jitter * 1000 / 8000 if b else 0.0,
            dialled=call.dialled, route=call.route.kind.value, trunk=call.trunk,
            answered_by=call.answered_by, legs=tuple(call.parties),
        )  # fmt: skip

    def live(self) -> list[dict[str, object]]:
        """The calls in progress, for `pbx calls`."""
        now = self.clock()
        out: list[dict[str, object]] = []
        for c in self.calls.values():
            state = "answered" if c.answered_at is not None else "ringing"
            if c.slot is not None:
                state = "parked"
            elif c.conference is not None and c.id in self.conferences.attendees:
                state = "conference"
            out.append({
                "call_id": c.id, "caller": c.caller, "callee": c.callee, "state": state,
                "started": c.started, "duration": round(now - c.started, 1),
                "legs": 1 + len(c.ringing.forks), "parties": list(c.parties),
                "route": c.route.kind.value, "trunk": c.trunk, "slot": c.slot,
            })  # fmt: skip
        return out

    # helpers

    def _reply(
        self,
        request: Request,
        status: int,
        headers: list[tuple[str, str]] | None = None,
        tag: str | None = None,
        reason: str | None = None,
    ) -> None:
        response = build_response(
            request, status, reason, headers=headers or [], to_tag=tag or new_tag()
        )
        self.endpoint.respond(request, response)


def announcement(position: int, wait: float | None) -> list[str]:
    """What a caller waiting in a queue hears: position, then the estimated wait."""
    words = ["you-are-caller-number", *number_words(position)]
    if wait is not None:
        words += ["estimated-wait", *duration_words(wait)]
    return words


def _waves(route: Route) -> list[Wave]:
    if route.kind is RouteKind.TRUNK:
        return [Wave((route.number,), trunk=route)]
    if route.in_order:
        return [Wave((member,), route.member_timeout) for member in route.members]
    return [Wave(route.members)]


def _outcome(ringing: Ringing, statuses: list[int]) -> int:
    """What the caller is told when nobody answered: the most telling of the answers, and
    480 when the only answers were to our own CANCELs of members whose time was up."""
    timed_out = {id(f) for f in ringing.forks if f.timed_out}
    answers = [f.final for f in ringing.forks if f.final is not None and id(f) not in timed_out]
    if not answers and timed_out:
        return SipStatus.TEMPORARILY_UNAVAILABLE
    return min(answers or statuses, key=_failure_rank) if answers or statuses else 408


def _dialled(uri: Uri) -> str:
    """The number in a Request-URI or Refer-To: the user of a sip: URI, the number of a
    tel: URI (RFC 3966), visual separators dropped."""
    if isinstance(uri, SipUri):
        return uri.user or ""
    number = str(uri).partition(":")[2].partition(";")[0]
    return "".join(c for c in number if c not in "-.()")


def _outside_caller(request: Request) -> tuple[str, str]:
    """The number and name of a caller from a trunk: P-Asserted-Identity (the provider
    vouches for it, RFC 3325), else From."""
    identity: NameAddr = request.from_
    asserted = request.header("P-Asserted-Identity")
    if asserted:
        with contextlib.suppress(RemoteProtocolError):
            identity = parse_name_addr(asserted.split(",")[0])
    uri = identity.uri
    number = uri.user or "" if isinstance(uri, SipUri) else _dialled(uri)
    return number or "anonymous", identity.display_name or ""


def _host(peer: Peer) -> str:
    local = peer.local.host
    return f"[{local}]" if ":" in local else local


def _codecs_like(offer: SessionDescription | None) -> tuple[str, ...] | None:
    """What to offer the called side: the caller's codecs in its order, then the ones we
    can transcode to, so that the callee's choice is one the caller has whenever it can be.
    G.722 only when the caller offered it. None (our defaults) for a late offer."""
    if offer is None:
        return None
    names = [n for n in common_codecs(offer) if n != "telephone-event"]
    return _codecs_after(names[0] if names else None, names)


async def _collect(
    keys: asyncio.Queue[str], max_digits: int, first: float, gap: float
) -> str | None:
    """Digits from `keys` until #, `max_digits`, or a pause (`first` seconds for the first
    key, `gap` between keys); None if the call ended (an empty key)."""
    entered = ""
    while len(entered) < max_digits:
        try:
            key = await asyncio.wait_for(keys.get(), first if not entered else gap)
        except TimeoutError:
            break
        if not key:
            return None
        if key == "#":
            break
        entered += key
    return entered


async def _finished(playing: asyncio.Future[None]) -> None:
    """Wait for a sound to end, or be stopped (its future cancelled), without raising."""
    await asyncio.wait([playing])


def _codecs_after(first: str | None, names: list[str] | None = None) -> tuple[str, ...]:
    ordered = list(names or ([first] if first else []))
    for name in G711:
        if name not in ordered:
            ordered.append(name)
    return tuple(ordered)


def _preferred(call: Call, other: Leg) -> str | None:
    """The codec to prefer toward a new phone: the one the other side uses, or before it
    has one (a pickup while the caller waits), the caller's first."""
    if other.params is not None:
        return other.params.codec
    if other is call.a and call.a_offer is not None:
        names = [n for n in common_codecs(call.a_offer) if n != "telephone-event"]
        return names[0] if names else None
    return None


def _session(address: str, media: MediaEndpoint) -> LocalSession:
    return LocalSession(address, media.port, session_id=os.urandom(4).hex())


def _allow_of(message: Request | Response) -> frozenset[str]:
    try:
        return frozenset(m.upper() for m in message.list_values("Allow"))
    except RemoteProtocolError:
        return frozenset()


def _retried(request: Request, interval: int) -> Request:
    """The INVITE again after a 422 (RFC 4028 §7.4): same dialog identifiers, a new branch,
    the next CSeq and the larger interval as both Session-Expires and Min-SE."""
    old_branch = request.vias[0].branch or ""
    _, dash, call_id = old_branch.rpartition("-")
    changed = {
        "CSeq": f"{request.cseq.number + 1} {request.method}",
        "Session-Expires": str(interval),
        "Min-SE": str(interval),
    }
    headers = []
    for name, value in request.headers:
        if name == "Via" and old_branch:
            value = value.replace(old_branch, new_branch() + dash + call_id, 1)
        headers.append((name, changed.get(name, value)))
    return Request.build(request.method, request.uri, headers, request.body)


def _failure_rank(status: int) -> int:
    # RFC 3261 §16.7 step 6 in spirit: prefer a definite answer (busy, decline) to silence.
    order: dict[int, int] = {486: 0, 600: 1, 603: 2, 404: 3, 480: 4, 487: 5, 408: 6}
    return order.get(status, 3 if 400 <= status < 500 else 7)


async def _run_out(invite: asyncio.Future[Response]) -> None:
    """Let a given-up INVITE's transaction end as it will (a late 2xx gets its BYE)."""
    with contextlib.suppress(PbxError):
        await invite


def _forget_attempt(call: Call, ringing: Ringing) -> None:
    if ringing in call.attempts:
        call.attempts.remove(ringing)
