"""Calls: a B2BUA between registered extensions with anchored media.

A call is an A leg (the caller's INVITE, answered by us) and a B leg (our INVITEs to every
registered contact of the callee, forked in parallel; the first 2xx wins and the others
are cancelled). Media is anchored: each side talks RTP to a MediaEndpoint of ours, and a
Bridge relays payloads between them. Each side is a `Leg`: the phone's dialog and address,
our media and SDP toward it, and its offer/answer and session-timer state.

Offer/answer (RFC 3264) runs per leg: the caller may offer late (an INVITE without SDP: our
200 offers, its ACK answers); re-INVITE and UPDATE (RFC 3311) renegotiate and pass hold and
resume on to the other phone; crossing offers get 491 and our re-INVITE is retried after the
random delay of RFC 3261 §14.1. Session timers (RFC 4028) are kept per leg; a callee's 183
with SDP is relayed as early media. Every call publishes its events and, when it ends, the
CallEnded event its CDR is written from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from media.aio import Bridge, MediaEndpoint
from media.ports import PortPool
from pbx.config import Config
from pbx.errors import MediaError, PbxError, RemoteProtocolError, SipStatus
from pbx.events import (
    CallAnswered,
    CallEnded,
    CallHeld,
    CallRinging,
    CallStarted,
    CallTransferred,
    EventBus,
)
from pbx.registrar import Registrar, peer_for_binding
from pbx.sip.aio import Peer, SipEndpoint
from pbx.sip.dialog import Dialog, DialogId, DialogState, dialog_id_for_request
from pbx.sip.digest import Verdict, parse_credentials
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
    mirror,
    parameters_from_answer,
)
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
from pbx.sip.uri import SipUri, parse_name_addr, parse_uri
from pbx.store import Binding

log = logging.getLogger("pbx.calls")

SDP = "application/sdp"
SHUTDOWN_GRACE = 2.0  # seconds the phones get to answer our BYEs when the exchange stops
ALLOW = "INVITE, ACK, CANCEL, BYE, REFER, NOTIFY, OPTIONS, UPDATE"
# "replaces" (RFC 3891) is advertised once an INVITE with Replaces is honoured.
SUPPORTED = "timer"
GLARE_ATTEMPTS = 3  # our re-INVITE is sent at most this often when each one meets 491
_HOLD_ADDRESSES = ("0.0.0.0", "::")  # RFC 2543 hold: keep sending where we did


def glare_delay(owns_call_id: bool) -> float:
    """RFC 3261 §14.1: after a 491 the Call-ID's owner waits 2.1-4 s, the other 0-2 s."""
    return random.uniform(2.1, 4.0) if owns_call_id else random.uniform(0.0, 2.0)


@dataclass(eq=False)
class Leg:
    """One phone's side of a call: where it is, our media and SDP toward it, and the
    state of the offers and refreshes exchanged with it."""

    role: str  # "caller" or "callee": who this phone is in the call
    media: MediaEndpoint
    session: LocalSession  # our SDP toward this phone
    owns_call_id: bool  # we chose the dialog's Call-ID (our INVITE): the longer glare wait
    peer: Peer | None = None
    dialog: Dialog | None = None
    allow: frozenset[str] = frozenset()  # methods the phone accepts (its Allow)
    asked: Direction = Direction.SENDRECV  # what the phone's own last offer asked (hold)
    params: MediaParameters | None = None  # what the last offer/answer with it agreed
    timer: SessionTimer | None = None
    timer_handle: asyncio.TimerHandle | None = None
    offering: bool = False  # our re-INVITE to the phone is in progress (§14.1: 491 its own)
    answering: bool = False  # its re-INVITE is being answered, until its ACK (§14.2: 500)
    offers: asyncio.Lock = field(default_factory=asyncio.Lock)  # one re-INVITE of ours at once
    acks: dict[int, asyncio.Future[Request]] = field(default_factory=dict)  # CSeq -> ACK


@dataclass(eq=False)
class Fork:
    """One INVITE of ours to one contact of the callee (or to a transfer target)."""

    request: Request
    peer: Peer
    dialog: Dialog | None = None
    final: int | None = None


@dataclass(eq=False)
class Call:
    id: str
    a_request: Request  # the caller's INVITE
    a_tag: str
    a: Leg
    b: Leg
    offer_to_b: SessionDescription
    a_offer: SessionDescription | None  # None: a late offer (RFC 3261 §13.2.1)
    max_forwards: int  # for our INVITEs of this call
    a_answer: Answer | None = None  # our one answer to a_offer (183 and 200 carry the same)
    forks: list[Fork] = field(default_factory=list)
    winner: Fork | None = None
    ringing_over: bool = False  # cancelled or timed out: no new forks or retries
    bridge: Bridge | None = None
    transcode: tuple[str, str] | None = None
    answered: bool = False
    ended: bool = False
    caller: str = ""
    callee: str = ""
    started: float = 0.0
    answered_at: float | None = None
    status: int = 0  # the final status the caller got
    cause: str = ""
    hangup_by: str = "system"
    held: bool = False

    def other(self, leg: Leg) -> Leg:
        return self.b if leg is self.a else self.a


class CallManager:
    def __init__(
        self,
        config: Config,
        endpoint: SipEndpoint,
        registrar: Registrar,
        pool: PortPool,
        events: EventBus | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.events = events or EventBus()
        self.clock = clock
        self.config = config
        self.endpoint = endpoint
        self.registrar = registrar
        self.pool = pool
        self.glare_delay: Callable[[bool], float] = glare_delay
        self.timer_unit = 1.0  # real seconds per session-timer second (tests shrink it)
        self.calls: dict[str, Call] = {}
        self._by_dialog: dict[DialogId, tuple[Call, Leg | None]] = {}  # None: transferred away
        self._by_branch: dict[str, Call] = {}  # the caller's INVITE branch, for CANCEL
        self._tasks: set[asyncio.Task[object]] = set()

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
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call task failed", exc_info=task.exception())

    # a new call

    def _new_call(self, request: Request, peer: Peer) -> None:
        """Decide at once what can be decided at once (hops, loops, auth, target, offer,
        session timer): the caller gets its 483/482/407/404/480/488/422 or 100 Trying
        before anything else it sent is answered."""
        if request.max_forwards == 0:
            self._reply(request, SipStatus.TOO_MANY_HOPS)
            return
        if self._is_loop(request):
            self._reply(request, SipStatus.LOOP_DETECTED)
            return
        caller = self._authenticate(request, peer)
        if caller is None:
            return
        target = request.uri.user if isinstance(request.uri, SipUri) else None
        if not target or target not in self.registrar.users:
            self._reply(request, SipStatus.NOT_FOUND)
            return
        contacts = self.registrar.contacts(target)
        if not contacts:
            self._reply(request, SipStatus.TEMPORARILY_UNAVAILABLE)
            return
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
        self._reply(request, SipStatus.TRYING)
        self._spawn(self._place_call(request, peer, caller, target, contacts, offer, timer))

    def _is_loop(self, request: Request) -> bool:
        """Our own INVITE come back (RFC 3261 §8.2.2.2 in spirit): its Call-ID or a Via
        branch carries the id of a call in progress here."""
        if request.call_id.partition("-")[0] in self.calls:
            return True
        return any(
            via.branch is not None and via.branch.rpartition("-")[2] in self.calls
            for via in request.vias
        )

    async def _place_call(
        self,
        request: Request,
        peer: Peer,
        caller: str,
        target: str,
        contacts: list[Binding],
        offer: SessionDescription | None,
        timer: SessionTimer | None,
    ) -> None:
        address = self.config.rtp.address
        try:
            a_media = await MediaEndpoint.open(self.pool, address)
            b_media = await MediaEndpoint.open(self.pool, address)
        except MediaError as exc:
            log.error("no media ports for a call from %s: %s", caller, exc)
            self._reply(request, SipStatus.SERVICE_UNAVAILABLE)
            return
        a = Leg("caller", a_media, _session(address, a_media), owns_call_id=False, peer=peer,
                allow=_allow_of(request), timer=timer)  # fmt: skip
        b = Leg("callee", b_media, _session(address, b_media), owns_call_id=True)
        hops = request.max_forwards
        call = Call(
            id=os.urandom(6).hex(),
            a_request=request,
            a_tag=new_tag(),
            a=a,
            b=b,
            offer_to_b=b.session.offer(),
            a_offer=offer,
            max_forwards=self.max_forwards if hops is None else min(hops - 1, self.max_forwards),
            caller=caller,
            callee=target,
            started=self.clock(),
        )
        self.calls[call.id] = call
        self.events.publish(CallStarted(call.started, call.id, caller, target))
        self._by_branch[request.vias[0].branch or ""] = call
        log.info("call %s: %s -> %s (%d contacts)", call.id, caller, target, len(contacts))
        forks = [self._fork(call, caller, target, b) for b in contacts]
        timeout = asyncio.get_running_loop().call_later(
            self.config.calls.ring_timeout, self._ring_timeout, call
        )
        try:
            results = await asyncio.gather(*forks, return_exceptions=True)
        finally:
            timeout.cancel()
        if call.winner is None and not call.ended:
            statuses = [r for r in results if isinstance(r, int)]
            status = min(statuses, key=_failure_rank) if statuses else 408
            if call.cause == "ring timeout":
                status = SipStatus.TEMPORARILY_UNAVAILABLE
            self._reply(call.a_request, status, tag=call.a_tag)
            call.status, call.cause = status, call.cause or f"callee answered {status}"
            await self._release(call)

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

    async def _fork(self, call: Call, caller: str, target: str, binding: Binding) -> int:
        peer = peer_for_binding(binding)
        fork = Fork(self._invite_for(call, binding, peer, caller, target, call.offer_to_b), peer)
        call.forks.append(fork)
        final = await self._invite(
            fork,
            lambda response: self._b_response(call, fork, response),
            lambda: not call.ended and not call.ringing_over,
        )
        return final.status

    async def _invite(
        self, fork: Fork, on_response: Callable[[Response], None], go_on: Callable[[], bool]
    ) -> Response:
        """Send the fork's INVITE; after a 422 (RFC 4028 §7.4), again with the interval the
        phone asked for while `go_on()` says the call still wants it."""
        while True:
            final = await self.endpoint.invite(fork.request, fork.peer, on_response)
            interval = None
            if final.status == SESSION_INTERVAL_TOO_SMALL and go_on():
                interval = retry_interval(fork.request, final)
            if interval is None:
                fork.final = final.status
                return final
            fork.request = _retried(fork.request, interval)

    def _b_response(self, call: Call, fork: Fork, response: Response) -> None:
        status = response.status
        if status < 200:
            if status in (180, 183) and not call.answered and not call.ended:
                self._provisional(call, response)
            return
        if status >= 300:
            return
        # A 2xx: the first one wins; later ones (other forks) are answered with BYE.
        dialog = Dialog.from_uac(fork.request, response)
        local = (fork.peer.local.host, fork.peer.local.port)
        ack = dialog.create_ack(local_address=local, transport=fork.peer.transport.upper())
        self.endpoint.send(ack.encode(), fork.peer)
        if fork.dialog is not None:
            return  # a retransmission: ACKed again above
        fork.dialog = dialog
        if call.winner is not None or call.ended:
            self._spawn(self._bye(dialog, fork.peer))  # another fork won, or it is all over
            return
        call.winner = fork
        call.b.dialog, call.b.peer, call.b.allow = dialog, fork.peer, _allow_of(response)
        self._by_dialog[dialog.id] = (call, call.b)
        for other in call.forks:
            if other is not fork and other.final is None:
                self._spawn(self._cancel(other))
        self._spawn(self._answer_a(call, response))

    def _provisional(self, call: Call, response: Response) -> None:
        """Relay 180/183 to the caller. A 183 with SDP is early media (RFC 3960): the caller
        gets our answer at once and the bridge runs, so it hears the callee's tones."""
        if response.status == 183 and response.body and call.a_offer is not None:
            try:
                b_params = parameters_from_answer(call.offer_to_b, parse_sdp(response.body))
                a_answer = self._answer_caller(call)
            except RemoteProtocolError as exc:
                log.info("call %s: unusable SDP in the callee's 183: %s", call.id, exc)
            else:
                self._set_params(call.b, b_params)
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
        an offer gets one answer (RFC 3264 §4)."""
        assert call.a_offer is not None
        if call.a_answer is None:
            call.a_answer = call.a.session.answer(call.a_offer)
            self._set_params(call.a, call.a_answer.parameters)
        return call.a_answer

    async def _answer_a(self, call: Call, b_answer: Response) -> None:
        try:
            b_params = parameters_from_answer(call.offer_to_b, parse_sdp(b_answer.body))
            a_sdp = self._answer_caller(call).sdp if call.a_offer is not None else None
        except RemoteProtocolError as exc:
            log.warning("call %s: media negotiation failed: %s", call.id, exc)
            call.status = SipStatus.NOT_ACCEPTABLE_HERE
            self._reply(call.a_request, call.status, tag=call.a_tag)
            await self._hang_up(call, "negotiation")
            return
        self._set_params(call.b, b_params)
        with contextlib.suppress(RemoteProtocolError):
            call.b.timer = timer_from_response(b_answer)
        our_offer = None
        if a_sdp is None:
            # Late offer: our 200 offers, the caller's ACK answers (RFC 3261 §13.2.1).
            our_offer = a_sdp = call.a.session.offer()
        if not self._connect(call):
            return
        timeout = self.config.rtp.inactivity_timeout
        if timeout > 0:
            # Counted from the answer: a phone that vanished (power cut, lost network)
            # sends no BYE; silence on its RTP is how the call learns it is over.
            for leg in (call.a, call.b):
                leg.media.on_inactive = lambda _m, c=call: self._spawn(
                    self._hang_up(c, "no RTP (inactivity timeout)")
                )
                leg.media.set_inactivity(timeout)
        ok = self._ok(call.a_request, call.a, a_sdp, to_tag=call.a_tag)
        call.answered = True
        call.answered_at = self.clock()
        call.status = 200
        self.events.publish(CallAnswered(call.answered_at, call.id, call.caller, call.callee))
        call.a.dialog = Dialog.from_uas(call.a_request, ok)
        self._by_dialog[call.a.dialog.id] = (call, call.a)
        self._by_branch.pop(call.a_request.vias[0].branch or "", None)
        log.info("call %s answered", call.id)
        ack = await self._send_2xx_until_acked(call, call.a, call.a_request, ok)
        if ack is None:
            log.warning("call %s: no ACK for the 200; hanging up", call.id)
            await self._hang_up(call, "no ACK")
            return
        if our_offer is not None and not self._take_answer(call, call.a, our_offer, ack):
            return
        self._arm(call, call.a)
        self._arm(call, call.b)

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

    def _take_answer(self, call: Call, leg: Leg, offer: SessionDescription, ack: Request) -> bool:
        """The answer to our offer in a 2xx arrives in the ACK; without a usable one the
        session cannot go on (RFC 3261 §13.3.1.4): the call ends with BYE."""
        try:
            params = parameters_from_answer(offer, parse_sdp(ack.body))
        except RemoteProtocolError as exc:
            log.warning("call %s: the %s's ACK has no usable answer: %s", call.id, leg.role, exc)
            self._spawn(self._hang_up(call, "no usable answer in the ACK"))
            return False
        self._set_params(leg, params)
        return self._connect(call)

    def _set_params(self, leg: Leg, params: MediaParameters, new_party: bool = False) -> None:
        leg.params = params
        if params.remote_address not in _HOLD_ADDRESSES:
            leg.media.set_remote((params.remote_address, params.remote_port), new_party=new_party)

    def _connect(self, call: Call) -> bool:
        """(Re)build the bridge once both legs agreed a codec; False if the call had to end."""
        a, b = call.a.params, call.b.params
        if a is None or b is None:
            return True
        transcode = None if a.codec.upper() == b.codec.upper() else (a.codec, b.codec)
        if call.bridge is not None and transcode == call.transcode:
            return True
        if call.bridge is not None:
            call.bridge.close()
        try:
            call.bridge = Bridge(call.a.media, call.b.media, transcode)
        except MediaError as exc:
            log.warning("call %s: %s", call.id, exc)
            call.bridge = None
            self._spawn(self._hang_up(call, "no common codec"))
            return False
        call.transcode = transcode
        return True

    def _ring_timeout(self, call: Call) -> None:
        if call.winner is not None or call.ended:
            return
        call.cause = "ring timeout"
        call.ringing_over = True
        for fork in call.forks:
            if fork.final is None:
                self._spawn(self._cancel(fork))

    # in-dialog requests

    def _in_dialog(self, request: Request, peer: Peer, call: Call, leg: Leg | None) -> None:
        if request.method == Method.ACK:
            acked = leg.acks.get(request.cseq.number) if leg is not None else None
            if acked is not None and not acked.done():
                acked.set_result(request)
            return
        if leg is None:
            # The phone that transferred the call: its BYE ends only its own leg.
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
            call.hangup_by = leg.role
            self._spawn(self._hang_up(call, f"BYE from the {leg.role}", exclude=leg))
        elif request.method == Method.INVITE:
            self._phone_reinvite(call, leg, request)
        elif request.method == Method.UPDATE:
            self._phone_update(call, leg, request)
        elif request.method == Method.REFER:
            self._refer(call, leg, dialog, request)
        else:  # INFO...: not handled yet
            self._reply(request, SipStatus.NOT_IMPLEMENTED, headers=[("Allow", ALLOW)])

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
        if changed:
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
        if changed:
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
            call.held = held
            # On hold a phone may send nothing at all: that is not a dead call.
            timeout = self.config.rtp.inactivity_timeout
            for media in (call.a.media, call.b.media):
                media.set_inactivity(None if held or timeout <= 0 else timeout)
            self.events.publish(
                CallHeld(self.clock(), call.id, call.caller, call.callee, held=held, by=leg.role)
            )
        return changed

    async def _offer(self, call: Call, leg: Leg) -> None:
        """Re-INVITE one phone with our media and what the other phone asked for (hold and
        resume passed on); after a 491 (glare, RFC 3261 §14.1) again after a random wait."""
        async with leg.offers:
            for _ in range(GLARE_ATTEMPTS):
                if await self._reinvite(call, leg) != SipStatus.REQUEST_PENDING or call.ended:
                    return
                await asyncio.sleep(self.glare_delay(leg.owns_call_id))

    async def _reinvite(self, call: Call, leg: Leg) -> int:
        """One re-INVITE of ours; its final status (0 if none was sent)."""
        dialog, peer = leg.dialog, leg.peer
        if dialog is None or peer is None or call.ended:
            return 0
        offer = leg.session.offer(call.other(leg).asked)
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
                self._set_params(leg, parameters_from_answer(offer, parse_sdp(final.body)))
                self._connect(call)
            except RemoteProtocolError as exc:
                log.info("call %s: bad answer to our re-INVITE: %s", call.id, exc)
            self._refreshed(call, leg, final)
        else:
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
        if timer is None or call.ended:
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
        """Blind transfer (RFC 3515): the phone of `leg` hands its party to the Refer-To
        target. The new phone takes the leg's place and media endpoint; the referrer is
        told the outcome by NOTIFY (message/sipfrag) and then released with BYE."""
        try:
            refer_to = parse_name_addr(request.header("Refer-To") or "")
        except RemoteProtocolError:
            self._reply(request, SipStatus.BAD_REQUEST)
            return
        target = refer_to.uri.user if isinstance(refer_to.uri, SipUri) else None
        contacts = self.registrar.contacts(target) if target in self.registrar.users else []
        if not target or not contacts:
            self._reply(request, SipStatus.NOT_FOUND if not contacts else SipStatus.FORBIDDEN)
            return
        self._reply(request, SipStatus.ACCEPTED)
        peer = leg.peer or call.a.peer
        assert peer is not None
        self._spawn(self._transfer(call, leg, dialog, peer, target, contacts[0]))

    async def _transfer(
        self, call: Call, leg: Leg, referrer: Dialog, referrer_peer: Peer, target: str,
        binding: Binding,
    ) -> None:  # fmt: skip
        await self._notify(referrer, referrer_peer, "SIP/2.0 100 Trying", final=False)
        offer = leg.session.offer()
        peer = peer_for_binding(binding)
        party = call.callee if leg is call.a else call.caller  # who the target will talk to
        fork = Fork(self._invite_for(call, binding, peer, party, target, offer), peer)
        answered: list[Dialog] = []

        def on_response(response: Response) -> None:
            if 200 <= response.status < 300:
                dialog = answered[0] if answered else Dialog.from_uac(fork.request, response)
                if not answered:
                    answered.append(dialog)
                local = (peer.local.host, peer.local.port)
                ack = dialog.create_ack(local_address=local, transport=peer.transport.upper())
                self.endpoint.send(ack.encode(), peer)

        try:
            final: Response | None = await self._invite(fork, on_response, lambda: not call.ended)
        except PbxError as exc:
            final = None
            log.info("call %s: transfer to %s failed: %s", call.id, target, exc)
        if final is None or not 200 <= final.status < 300 or not answered or call.ended:
            status = f"SIP/2.0 {final.status if final else 408} Transfer Failed"
            await self._notify(referrer, referrer_peer, status, final=True)
            if answered and call.ended:
                await self._bye(answered[0], peer)
            return
        try:
            params = parameters_from_answer(offer, parse_sdp(final.body))
            self._set_params(leg, params, new_party=True)
            self._connect(call)
        except RemoteProtocolError as exc:
            log.info("call %s: bad answer from the transfer target: %s", call.id, exc)
        # The new phone takes the referrer's place; the referrer is told and let go.
        new_dialog = answered[0]
        self._by_dialog[referrer.id] = (call, None)
        self._by_dialog[new_dialog.id] = (call, leg)
        leg.dialog, leg.peer, leg.allow = new_dialog, peer, _allow_of(final)
        leg.owns_call_id, leg.asked = True, Direction.SENDRECV
        try:
            leg.timer = timer_from_response(final)
        except RemoteProtocolError:
            leg.timer = None
        self._arm(call, leg)
        self.events.publish(
            CallTransferred(self.clock(), call.id, call.caller, call.callee, to=target)
        )
        log.info("call %s: transferred to %s", call.id, target)
        await self._notify(referrer, referrer_peer, "SIP/2.0 200 OK", final=True)
        if referrer.state is not DialogState.TERMINATED:
            await self._bye(referrer, referrer_peer)
        if call.held:  # the referrer usually held its party before transferring
            call.held = False
            await self._offer(call, call.other(leg))

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
        self,
        call: Call,
        binding: Binding,
        peer: Peer,
        from_user: str,
        target: str,
        offer: SessionDescription,
    ) -> Request:
        """An INVITE of ours to one registered contact, a new dialog for `call`. Its Call-ID
        and branch carry the call's id, so that it is recognised if it loops back to us."""
        local = peer.local
        host = f"[{local.host}]" if ":" in local.host else local.host
        return Request.build(
            Method.INVITE,
            parse_uri(binding.contact),
            [
                ("Via", f"SIP/2.0/{peer.transport.upper()} {host}:{local.port};"
                        f"branch={new_branch()}-{call.id};rport"),
                ("Max-Forwards", str(call.max_forwards)),
                ("From", f"<sip:{from_user}@{host}>;tag={new_tag()}"),
                ("To", f"<sip:{target}@{host}>"),
                ("Call-ID", f"{call.id}-{new_tag()}@{host}"),
                ("CSeq", "1 INVITE"),
                ("Contact", self._contact_at(peer)),
                ("User-Agent", self.config.sip.user_agent),
                ("Allow", ALLOW),
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
        return self._contact_at(leg.peer)

    def _contact_at(self, peer: Peer) -> str:
        local = peer.local
        host = f"[{local.host}]" if ":" in local.host else local.host
        return f"<sip:pbx@{host}:{local.port};transport={peer.transport}>"

    # ending

    async def _cancelled(self, call: Call) -> None:
        if call.answered or call.ended:
            return
        self._reply(call.a_request, SipStatus.REQUEST_TERMINATED, tag=call.a_tag)
        call.ended = call.ringing_over = True
        call.status, call.cause, call.hangup_by = 487, "caller cancelled", "caller"
        for fork in call.forks:
            if fork.final is None:
                await self._cancel(fork)
        await self._release(call)

    async def _cancel(self, fork: Fork) -> None:
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
            for leg in (call.a, call.b)
            if leg is not exclude and leg.dialog is not None and leg.peer is not None
        ))  # fmt: skip
        await self._release(call)

    async def _release(self, call: Call) -> None:
        if call.id not in self.calls:
            return
        call.ended = True
        self.events.publish(self._ended(call))
        if call.bridge is not None:
            call.bridge.close()
        for leg in (call.a, call.b):
            if leg.timer_handle is not None:
                leg.timer_handle.cancel()
            leg.media.close()
        self.calls.pop(call.id, None)
        self._by_branch.pop(call.a_request.vias[0].branch or "", None)
        for key in [k for k, (c, _) in self._by_dialog.items() if c is call]:
            del self._by_dialog[key]

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
        )  # fmt: skip

    def live(self) -> list[dict[str, object]]:
        """The calls in progress, for `pbx calls`."""
        now = self.clock()
        return [
            {
                "call_id": c.id, "caller": c.caller, "callee": c.callee,
                "state": "answered" if c.answered_at is not None else "ringing",
                "started": c.started, "duration": round(now - c.started, 1),
                "legs": 1 + len(c.forks),
            }
            for c in self.calls.values()
        ]  # fmt: skip

    # helpers

    def _reply(
        self,
        request: Request,
        status: int,
        headers: list[tuple[str, str]] | None = None,
        tag: str | None = None,
    ) -> None:
        self.endpoint.respond(
            request,
            build_response(request, status, headers=headers or [], to_tag=tag or new_tag()),
        )


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
