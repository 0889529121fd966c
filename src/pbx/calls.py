"""Basic calls: a B2BUA between registered extensions with anchored media (first slice).

A call is an A leg (the caller's INVITE, answered by us) and B legs (our INVITEs to every
registered contact of the callee, forked in parallel; the first 2xx wins and the others
are cancelled). Media is anchored: each side talks RTP to a MediaEndpoint of ours, and a
Bridge relays payloads between them. Every call publishes its events and, when it ends, the
CallEnded event its CDR is written from. What is not here yet (see issue 3): re-INVITE/
hold, transfer, pickup/park, trunks, late offer, session timers, ring groups, dialplan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
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
from pbx.sip.offer_answer import LocalSession, mirror, parameters_from_answer
from pbx.sip.sdp import Direction, SessionDescription, parse_sdp
from pbx.sip.uri import SipUri, parse_name_addr, parse_uri
from pbx.store import Binding

log = logging.getLogger("pbx.calls")

SDP = "application/sdp"
SHUTDOWN_GRACE = 2.0  # seconds the phones get to answer our BYEs when the exchange stops


@dataclass(eq=False)
class BLeg:
    request: Request
    peer: Peer
    dialog: Dialog | None = None
    final: int | None = None


@dataclass(eq=False)
class Call:
    id: str
    a_request: Request
    a_peer: Peer
    a_tag: str
    a_media: MediaEndpoint
    b_media: MediaEndpoint
    offer_to_b: SessionDescription
    a_offer: SessionDescription
    a_dialog: Dialog | None = None
    b_legs: list[BLeg] = field(default_factory=list)
    winner: BLeg | None = None
    bridge: Bridge | None = None
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
    sessions: dict[str, LocalSession] = field(default_factory=dict)  # our SDP, per side
    acks: dict[tuple[str, int], asyncio.Event] = field(default_factory=dict)


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
        self.calls: dict[str, Call] = {}
        self._by_dialog: dict[DialogId, tuple[Call, str]] = {}  # -> (call, "a" | "b")
        self._by_branch: dict[str, Call] = {}  # the caller's INVITE branch, for CANCEL
        self._tasks: set[asyncio.Task[object]] = set()

    # entry points from the dispatcher

    def handle(self, request: Request, peer: Peer) -> bool:
        """Take INVITE, ACK, BYE and CANCEL that belong to calls; False if not ours."""
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
        """Decide at once what can be decided at once (auth, target, offer): the caller
        gets its 407/404/480/488 or 100 Trying before anything else it sent is answered."""
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
        try:
            offer = parse_sdp(request.body)
        except RemoteProtocolError:
            # Late offer (INVITE without SDP) is not handled yet.
            self._reply(request, SipStatus.NOT_ACCEPTABLE_HERE)
            return
        self._reply(request, SipStatus.TRYING)
        self._spawn(self._place_call(request, peer, caller, target, contacts, offer))

    async def _place_call(
        self,
        request: Request,
        peer: Peer,
        caller: str,
        target: str,
        contacts: list[Binding],
        offer: SessionDescription,
    ) -> None:
        address = self.config.rtp.address
        try:
            a_media = await MediaEndpoint.open(self.pool, address)
            b_media = await MediaEndpoint.open(self.pool, address)
        except MediaError as exc:
            log.error("no media ports for a call from %s: %s", caller, exc)
            self._reply(request, SipStatus.SERVICE_UNAVAILABLE)
            return
        sessions = {
            side: LocalSession(address, media.port, session_id=os.urandom(4).hex())
            for side, media in (("a", a_media), ("b", b_media))
        }
        call = Call(
            id=os.urandom(6).hex(),
            a_request=request,
            a_peer=peer,
            a_tag=new_tag(),
            a_media=a_media,
            b_media=b_media,
            offer_to_b=sessions["b"].offer(),
            a_offer=offer,
            caller=caller,
            callee=target,
            started=self.clock(),
            sessions=sessions,
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
        request = self._invite_for(call, binding, peer, caller, target, call.offer_to_b)
        leg = BLeg(request, peer)
        call.b_legs.append(leg)
        final = await self.endpoint.invite(
            request, peer, lambda response: self._b_response(call, leg, response)
        )
        leg.final = final.status
        return final.status

    def _b_response(self, call: Call, leg: BLeg, response: Response) -> None:
        status = response.status
        if status < 200:
            if status in (180, 183) and not call.answered and not call.ended:
                self._reply(call.a_request, status, tag=call.a_tag)
                if status == 180:
                    self.events.publish(
                        CallRinging(self.clock(), call.id, call.caller, call.callee)
                    )
            return
        if status >= 300:
            return
        # A 2xx: the first one wins; later ones (other forks) are answered with BYE.
        dialog = Dialog.from_uac(leg.request, response)
        local = (leg.peer.local.host, leg.peer.local.port)
        ack = dialog.create_ack(local_address=local, transport=leg.peer.transport.upper())
        self.endpoint.send(ack.encode(), leg.peer)
        if call.winner is not None and call.winner is not leg:
            return  # a retransmission of the winner's 2xx got its ACK above
        if call.winner is leg:
            return
        if call.ended:
            self._spawn(self._bye(dialog, leg.peer))
            return
        leg.dialog = dialog
        call.winner = leg
        self._by_dialog[dialog.id] = (call, "b")
        for other in call.b_legs:
            if other is not leg and other.final is None:
                self._spawn(self._cancel(other))
        self._spawn(self._answer_a(call, response))

    async def _answer_a(self, call: Call, b_answer: Response) -> None:
        try:
            b_params = parameters_from_answer(call.offer_to_b, parse_sdp(b_answer.body))
            a_answer = call.sessions["a"].answer(call.a_offer)
        except RemoteProtocolError as exc:
            log.warning("call %s: media negotiation failed: %s", call.id, exc)
            await self._hang_up(call, "negotiation")
            return
        call.b_media.set_remote((b_params.remote_address, b_params.remote_port))
        a_params = a_answer.parameters
        call.a_media.set_remote((a_params.remote_address, a_params.remote_port))
        transcode = None
        if a_params.codec.upper() != b_params.codec.upper():
            transcode = (a_params.codec, b_params.codec)
        call.bridge = Bridge(call.a_media, call.b_media, transcode)
        timeout = self.config.rtp.inactivity_timeout
        if timeout > 0:
            # Counted from the answer: a phone that vanished (power cut, lost network)
            # sends no BYE; silence on its RTP is how the call learns it is over.
            for media in (call.a_media, call.b_media):
                media.on_inactive = lambda _m, c=call: self._spawn(
                    self._hang_up(c, "no RTP (inactivity timeout)")
                )
                media.set_inactivity(timeout)
        ok = build_response(
            call.a_request,
            SipStatus.OK,
            headers=[
                ("Contact", self._contact(call.a_peer)),
                ("Content-Type", SDP),
                ("Server", self.config.sip.user_agent),
            ],
            body=a_answer.sdp.encode(),
            to_tag=call.a_tag,
        )
        call.answered = True
        call.answered_at = self.clock()
        call.status = 200
        self.events.publish(CallAnswered(call.answered_at, call.id, call.caller, call.callee))
        call.a_dialog = Dialog.from_uas(call.a_request, ok)
        self._by_dialog[call.a_dialog.id] = (call, "a")
        self._by_branch.pop(call.a_request.vias[0].branch or "", None)
        log.info("call %s answered", call.id)
        acked = call.acks.setdefault(("a", call.a_request.cseq.number), asyncio.Event())
        if not await self._send_2xx_until_acked(call, call.a_request, ok, acked):
            log.warning("call %s: no ACK for the 200; hanging up", call.id)
            await self._hang_up(call, "no ACK")

    async def _send_2xx_until_acked(
        self, call: Call, request: Request, ok: Response, acked: asyncio.Event
    ) -> bool:
        """§13.3.1.4: the UAS core retransmits its 2xx until the ACK comes (or 64*T1)."""
        timers = self.endpoint.timers
        interval, waited = timers.t1, 0.0
        while not acked.is_set() and not call.ended:
            self.endpoint.respond(request, ok)
            try:
                await asyncio.wait_for(acked.wait(), interval)
            except TimeoutError:
                waited += interval
                interval = min(2 * interval, timers.t2)
                if waited >= timers.timer_h:
                    return False
        return True

    def _ring_timeout(self, call: Call) -> None:
        if call.winner is not None or call.ended:
            return
        call.cause = "ring timeout"
        for leg in call.b_legs:
            if leg.final is None:
                self._spawn(self._cancel(leg))

    # in-dialog requests

    def _in_dialog(self, request: Request, peer: Peer, call: Call, side: str) -> None:
        if request.method == Method.ACK:
            call.acks.setdefault((side, request.cseq.number), asyncio.Event()).set()
            return
        if side == "gone":
            # The phone that transferred the call: its BYE ends only its own leg.
            self._reply(request, SipStatus.OK if request.method == Method.BYE else 481)
            if request.method == Method.BYE:
                self._forget_dialog(request)
            return
        dialog = call.a_dialog if side == "a" else (call.winner.dialog if call.winner else None)
        if dialog is None:
            self._reply(request, SipStatus.CALL_DOES_NOT_EXIST)
            return
        verdict = dialog.receive_request(request)
        if not verdict.accepted:
            self._reply(request, verdict.status or 500)
            return
        if request.method == Method.BYE:
            self._reply(request, SipStatus.OK)
            call.hangup_by = "caller" if side == "a" else "callee"
            self._spawn(self._hang_up(call, f"BYE from the {call.hangup_by}", exclude=side))
            return
        if request.method == Method.INVITE:
            self._spawn(self._reinvite(call, side, request))
            return
        if request.method == Method.REFER:
            self._refer(call, side, dialog, request)
            return
        # UPDATE, INFO...: not in this slice yet.
        self._reply(request, SipStatus.NOT_IMPLEMENTED)

    def _forget_dialog(self, request: Request) -> None:
        self._by_dialog.pop(dialog_id_for_request(request) or DialogId("", "", None), None)

    def _refer(self, call: Call, side: str, dialog: Dialog, request: Request) -> None:
        """Blind transfer (RFC 3515): the phone on `side` hands its party to the Refer-To
        target. The new leg takes that side's place and media endpoint; the referrer is
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
        peer = call.a_peer if side == "a" else (call.winner.peer if call.winner else call.a_peer)
        self._spawn(self._transfer(call, side, dialog, peer, target, contacts[0]))

    async def _transfer(
        self, call: Call, side: str, referrer: Dialog, referrer_peer: Peer, target: str,
        binding: Binding,
    ) -> None:  # fmt: skip
        await self._notify(referrer, referrer_peer, "SIP/2.0 100 Trying", final=False)
        media = call.a_media if side == "a" else call.b_media
        offer = call.sessions[side].offer()
        peer = peer_for_binding(binding)
        party = call.callee if side == "a" else call.caller  # who the target will talk to
        request = self._invite_for(call, binding, peer, party, target, offer)
        answered: list[Dialog] = []

        def on_response(response: Response) -> None:
            if 200 <= response.status < 300:
                dialog = answered[0] if answered else Dialog.from_uac(request, response)
                if not answered:
                    answered.append(dialog)
                local = (peer.local.host, peer.local.port)
                ack = dialog.create_ack(local_address=local, transport=peer.transport.upper())
                self.endpoint.send(ack.encode(), peer)

        try:
            final = await self.endpoint.invite(request, peer, on_response)
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
            media.set_remote((params.remote_address, params.remote_port), new_party=True)
        except RemoteProtocolError as exc:
            log.info("call %s: bad answer from the transfer target: %s", call.id, exc)
        # The new leg takes the referrer's place; the referrer is told and let go.
        new_dialog = answered[0]
        self._by_dialog[referrer.id] = (call, "gone")
        self._by_dialog[new_dialog.id] = (call, side)
        if side == "a":
            call.a_dialog, call.a_peer = new_dialog, peer
        else:
            call.winner = BLeg(request, peer, new_dialog, 200)
        self.events.publish(
            CallTransferred(self.clock(), call.id, call.caller, call.callee, to=target)
        )
        log.info("call %s: transferred to %s", call.id, target)
        await self._notify(referrer, referrer_peer, "SIP/2.0 200 OK", final=True)
        if referrer.state is not DialogState.TERMINATED:
            await self._bye(referrer, referrer_peer)
        if call.held:  # the referrer usually held its party before transferring
            await self._offer_direction(call, "b" if side == "a" else "a", Direction.SENDRECV)

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

    async def _reinvite(self, call: Call, side: str, request: Request) -> None:
        """A re-INVITE (RFC 3261 §14): answered on our media, the direction passed on to
        the other phone so hold and resume work end to end (RFC 3264 §8.4)."""
        media = call.a_media if side == "a" else call.b_media
        peer = call.a_peer if side == "a" else (call.winner.peer if call.winner else None)
        try:
            reply = call.sessions[side].answer(parse_sdp(request.body))
        except RemoteProtocolError:
            self._reply(request, SipStatus.NOT_ACCEPTABLE_HERE)
            return
        params = reply.parameters
        if params.remote_address not in ("0.0.0.0", "::"):  # RFC 2543 hold keeps the old one
            media.set_remote((params.remote_address, params.remote_port))
        ok = build_response(
            request, SipStatus.OK, body=reply.sdp.encode(),
            headers=[("Contact", self._contact(peer or call.a_peer)), ("Content-Type", SDP)],
        )  # fmt: skip
        acked = call.acks.setdefault((side, request.cseq.number), asyncio.Event())
        self._spawn(self._send_2xx_until_acked(call, request, ok, acked))
        held = params.direction is not Direction.SENDRECV
        if held != call.held:
            call.held = held
            # On hold a phone may send nothing at all: that is not a dead call.
            timeout = self.config.rtp.inactivity_timeout
            for endpoint in (call.a_media, call.b_media):
                endpoint.set_inactivity(None if held or timeout <= 0 else timeout)
            by = "caller" if side == "a" else "callee"
            self.events.publish(
                CallHeld(self.clock(), call.id, call.caller, call.callee, held=held, by=by)
            )
        await self._offer_direction(call, "b" if side == "a" else "a", mirror(params.direction))

    async def _offer_direction(self, call: Call, side: str, direction: Direction) -> None:
        """Re-INVITE one phone with our media and `direction` (hold/resume passed on)."""
        dialog = call.a_dialog if side == "a" else (call.winner.dialog if call.winner else None)
        peer = call.a_peer if side == "a" else (call.winner.peer if call.winner else None)
        if dialog is None or peer is None or call.ended:
            return
        media = call.a_media if side == "a" else call.b_media
        offer = call.sessions[side].offer(direction)
        local = (peer.local.host, peer.local.port)
        request = dialog.create_request(
            Method.INVITE, [("Content-Type", SDP)], offer.encode(),
            local_address=local, transport=peer.transport.upper(),
        )  # fmt: skip

        def on_response(response: Response) -> None:
            if 200 <= response.status < 300:
                dialog.receive_response(response)
                ack = dialog.create_ack(local_address=local, transport=peer.transport.upper())
                self.endpoint.send(ack.encode(), peer)

        try:
            final = await self.endpoint.invite(request, peer, on_response)
        except PbxError as exc:
            log.info("call %s: re-INVITE to the %s failed: %s", call.id, side, exc)
            return
        if 200 <= final.status < 300:
            try:
                params = parameters_from_answer(offer, parse_sdp(final.body))
            except RemoteProtocolError as exc:
                log.info("call %s: bad answer to our re-INVITE: %s", call.id, exc)
                return
            if params.remote_address not in ("0.0.0.0", "::"):
                media.set_remote((params.remote_address, params.remote_port))

    def _invite_for(
        self,
        call: Call,
        binding: Binding,
        peer: Peer,
        from_user: str,
        target: str,
        offer: SessionDescription,
    ) -> Request:
        """An INVITE of ours to one registered contact, a new dialog for `call`."""
        local = peer.local
        host = f"[{local.host}]" if ":" in local.host else local.host
        return Request.build(
            Method.INVITE,
            parse_uri(binding.contact),
            [
                ("Via", f"SIP/2.0/{peer.transport.upper()} {host}:{local.port};"
                        f"branch={new_branch()};rport"),
                ("Max-Forwards", "70"),
                ("From", f"<sip:{from_user}@{host}>;tag={new_tag()}"),
                ("To", f"<sip:{target}@{host}>"),
                ("Call-ID", f"{call.id}-{new_tag()}@{host}"),
                ("CSeq", "1 INVITE"),
                ("Contact", self._contact(peer)),
                ("User-Agent", self.config.sip.user_agent),
                ("Content-Type", SDP),
            ],
            offer.encode(),
        )  # fmt: skip

    def _contact(self, peer: Peer) -> str:
        local = peer.local
        host = f"[{local.host}]" if ":" in local.host else local.host
        return f"<sip:pbx@{host}:{local.port};transport={peer.transport}>"

    # ending

    async def _cancelled(self, call: Call) -> None:
        if call.answered or call.ended:
            return
        self._reply(call.a_request, SipStatus.REQUEST_TERMINATED, tag=call.a_tag)
        call.ended = True
        call.status, call.cause, call.hangup_by = 487, "caller cancelled", "caller"
        for leg in call.b_legs:
            if leg.final is None:
                await self._cancel(leg)
        await self._release(call)

    async def _cancel(self, leg: BLeg) -> None:
        try:
            await self.endpoint.request(build_cancel(leg.request), leg.peer)
        except PbxError as exc:
            log.info("CANCEL to %s failed: %s", leg.peer, exc)

    async def _bye(self, dialog: Dialog, peer: Peer) -> None:
        local = (peer.local.host, peer.local.port)
        bye = dialog.create_request(Method.BYE, local_address=local,
                                    transport=peer.transport.upper())  # fmt: skip
        try:
            await self.endpoint.request(bye, peer)
        except PbxError as exc:
            log.info("BYE to %s failed: %s", peer, exc)

    async def _hang_up(self, call: Call, why: str, exclude: str = "") -> None:
        if call.ended:
            return
        call.ended = True
        call.cause = call.cause or why
        log.info("call %s ends: %s", call.id, why)
        waits = []
        if exclude != "a" and call.a_dialog is not None:
            waits.append(self._bye(call.a_dialog, call.a_peer))
        winner = call.winner
        if exclude != "b" and winner is not None and winner.dialog is not None:
            waits.append(self._bye(winner.dialog, winner.peer))
        await asyncio.gather(*waits)
        await self._release(call)

    async def _release(self, call: Call) -> None:
        if call.id not in self.calls:
            return
        call.ended = True
        self.events.publish(self._ended(call))
        if call.bridge is not None:
            call.bridge.close()
        for media in (call.a_media, call.b_media):
            media.close()
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
        a, b = call.a_media.stats, call.b_media.stats
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
                "legs": 1 + len(c.b_legs),
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


def _failure_rank(status: int) -> int:
    # RFC 3261 §16.7 step 6 in spirit: prefer a definite answer (busy, decline) to silence.
    order: dict[int, int] = {486: 0, 600: 1, 603: 2, 404: 3, 480: 4, 487: 5, 408: 6}
    return order.get(status, 3 if 400 <= status < 500 else 7)
