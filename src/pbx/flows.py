"""IVR flows on live calls: the `ivr.session.Channel` of a call, and the service that
loads the configured flow modules and runs a flow when the dialplan routes a call to one
("ivr:NAME", a number of `[ivr] numbers`, "voicemail:BOX", the voicemail access codes).

The caller's keys reach the flow through `LiveChannel.key` (the call manager hands it every
digit of the caller's leg, however it came); prompts play through the leg's player; a
message is recorded from the leg's decoded audio, frame by frame on the media clock, with
webrtcvad telling speech from silence. The caller hanging up cancels the flow's task,
except while a message is being recorded: the recording ends there and is kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from ivr.flows import Flow, FlowRegistry, run_flow
from ivr.session import (
    DialStatus,
    HungUp,
    Outcome,
    Prompts,
    Recording,
    RecordingEnd,
    Session,
    Sound,
)
from ivr.voicemail import check_messages
from media.clock import Listener, decodable
from media.prompts import Clip
from media.tones import Tone
from media.vad import FRAME, RATE, VoiceDetector
from pbx.config import Config
from pbx.dialplan import CallRequest, Route, RouteKind
from pbx.events import CallTransferred, IvrStep

if TYPE_CHECKING:
    from pbx.calls import Call, CallManager
    from pbx.voicemail import Voicemail

log = logging.getLogger("pbx.ivr")

_RINGING_ROUTES = (RouteKind.EXTENSION, RouteKind.RING_GROUP, RouteKind.TRUNK)
# How the final status of a transfer that was rung and not answered reads in its step, and
# the flow's dial_status for it. We CANCEL at the ring timeout, hence 487; 480 is what a
# ring group whose members' time ran out gives (pbx.calls._outcome). Any other: rejected.
_TRANSFER_REFUSALS = {
    486: ("busy", DialStatus.BUSY), 600: ("busy", DialStatus.BUSY),
    603: ("declined", DialStatus.REJECTED), 404: ("not found", DialStatus.UNAVAILABLE),
    408: ("no answer", DialStatus.NO_ANSWER), 480: ("unavailable", DialStatus.NO_ANSWER),
    487: ("no answer", DialStatus.NO_ANSWER),
}  # fmt: skip
_REJECTED = ("rejected", DialStatus.REJECTED)
_NO_FLOW = {RouteKind.IVR: "no such flow", RouteKind.VOICEMAIL: "no such mailbox",
            RouteKind.VOICEMAIL_ACCESS: "no voicemail"}  # fmt: skip


class MessageTaker:
    """A media clock job: the caller's audio until silence after speech, the maximum
    length, or `finish()`."""

    def __init__(self, listener: Listener, max_seconds: float, silence_seconds: float) -> None:
        self.listener = listener
        self.frames: list[np.ndarray] = []
        self.max_frames = max(1, round(max_seconds * RATE / FRAME))
        self.silence_frames = round(silence_seconds * RATE / FRAME)
        self.vad = VoiceDetector()
        self.done: asyncio.Future[RecordingEnd] = asyncio.get_running_loop().create_future()

    def tick(self, _now: float) -> None:
        if self.done.done():
            return
        frame = self.listener.frame.copy()
        self.frames.append(frame)
        self.vad.is_speech(frame)
        if len(self.frames) >= self.max_frames:
            self.finish(RecordingEnd.MAX_LENGTH)
        elif self.silence_frames and self.vad.silent_frames >= self.silence_frames:
            self.finish(RecordingEnd.SILENCE)

    def finish(self, why: RecordingEnd) -> None:
        if not self.done.done():
            self.done.set_result(why)

    def samples(self) -> np.ndarray:
        if not self.frames:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self.frames)


class LiveChannel:
    """A flow's view of one call: its caller leg."""

    def __init__(self, service: FlowService, call: Call, flow: str) -> None:
        self._service, self._manager, self._call = service, service.manager, call
        self.call_id, self.caller, self.caller_name = call.id, call.caller, call.caller_name
        self.dialled, self.flow = call.dialled, flow
        self.mailboxes = service.voicemail
        self.tones = service.manager.tones
        self._keys: deque[str] = deque()
        self._arrived = asyncio.Event()
        self._gone = False
        self._taker: MessageTaker | None = None
        self._taker_keys = ""  # the keys that end the message being recorded
        self.task: asyncio.Task[object] | None = None
        self.session: Session | None = None
        self._started = self._ended = False  # the flow's "started" and "ended" steps

    # from the call manager

    def key(self, digit: str) -> None:
        self._keys.append(digit)
        self._arrived.set()
        if self._taker is not None and digit in self._taker_keys:
            self._taker.finish(RecordingEnd.KEY)

    def gone(self) -> asyncio.Task[object] | None:
        """The call is over (the caller hung up, or it left the flow). Returns the flow's
        task when it goes on to keep the message it was recording: its last steps come
        after this, and the call's end is to be announced after them."""
        self._gone = True
        self._arrived.set()
        if self._taker is not None:
            self._taker.finish(RecordingEnd.HANG_UP)  # the message is kept
            return self.task
        self._report_ended()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        return None

    # the Channel

    def _check(self) -> None:
        if self._gone or self._call.ended:
            raise HungUp("the caller hung up")

    async def answer(self) -> None:
        self._check()
        call = self._call
        if not call.answered:
            await self._manager._complete_a(call)
        self._check()
        if not call.answered:
            raise HungUp("the call could not be answered")

    def _player_codec(self) -> str | None:
        params = self._call.a.params
        return params.codec if params is not None and decodable(params.codec) else None

    async def play(self, sound: Sound, interruptible: bool) -> None:
        self._check()
        if interruptible and self._keys:
            return
        codec = self._player_codec()
        if codec is None or not len(sound.samples):
            return  # G.722: nothing we can play (the flow goes on by keys alone)
        leg = self._call.a
        self._manager._stop_music(leg)
        player = self._manager.media_clock.player(leg.media, codec)
        playing = player.play(Clip(sound.samples))
        try:
            while not playing.done():
                self._arrived.clear()
                if self._gone or (interruptible and self._keys):
                    break
                waiter = asyncio.ensure_future(self._arrived.wait())
                try:
                    await asyncio.wait((playing, waiter), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
        finally:
            if not playing.done():
                player.stop()
        self._check()

    async def digit(self, seconds: float) -> str | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self._keys:
            self._check()
            self._arrived.clear()
            left = deadline - loop.time()
            if left <= 0:
                return None
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return None
        return self._keys.popleft()

    def flush(self) -> None:
        self._keys.clear()

    async def record(self, max_seconds: float, silence_seconds: float, keys: str) -> Recording:
        self._check()
        codec = self._player_codec()
        if codec is None:
            return Recording(np.zeros(0, dtype=np.int16), RecordingEnd.HANG_UP)
        clock = self._manager.media_clock
        listener = clock.listen(self._call.a.media, codec)
        taker = MessageTaker(listener, max_seconds, silence_seconds)
        self._taker, self._taker_keys = taker, keys
        clock.add_job(taker)
        try:
            why = await asyncio.shield(taker.done)
        finally:
            clock.remove_job(taker)
            clock.unlisten(listener)
            self._taker = None
        key = ""
        if why is RecordingEnd.KEY:
            key = next((k for k in self._keys if k in keys), "")
            self._keys.clear()
        return Recording(taker.samples(), why, key)

    async def transfer(self, target: str) -> DialStatus:
        self._check()
        manager, call = self._manager, self._call
        route = manager.dialplan.route(CallRequest(call.caller, target, None))
        kind = route.kind
        if kind is RouteKind.QUEUE:
            if await self.enqueue(route.number, route.priority):
                return DialStatus.ANSWER
            self._transfer_failed(target, "no such queue")
            return DialStatus.UNAVAILABLE
        if kind in (RouteKind.IVR, RouteKind.VOICEMAIL, RouteKind.VOICEMAIL_ACCESS):
            if self._service.hand_over(call, route, by=self.flow):
                return DialStatus.ANSWER
            self._transfer_failed(target, _NO_FLOW[kind])
            return DialStatus.UNAVAILABLE
        if kind not in _RINGING_ROUTES:
            log.info("call %s: flow %s cannot transfer to %s: %s", call.id, self.flow, target,
                     route.reason)  # fmt: skip
            why = "no route" if kind is RouteKind.UNKNOWN else f"not callable ({kind.value})"
            self._transfer_failed(target, why)
            return DialStatus.UNAVAILABLE
        if kind is not RouteKind.TRUNK and not any(
            manager.registrar.contacts(m) for m in route.members
        ):
            self._transfer_failed(target, "not registered")
            return DialStatus.UNAVAILABLE
        await self.answer()
        leg = call.a
        codec = self._player_codec()
        if codec is not None:  # ringback until the new party answers (as music: it stops)
            manager._stop_music(leg)
            player = manager.media_clock.player(leg.media, codec)
            leg.music = player.play(Tone(manager.tones["ringback"]))
        ring = self._service.ring_seconds(route)
        result = await manager._bring_in(call, call.b, route, by=f"ivr:{self.flow}",
                                         ring_timeout=ring)  # fmt: skip
        if result is True:
            call.answered_by = call.b.party  # the CDR names who took the call, not the flow
            self._leave()
            return DialStatus.ANSWER
        if not call.ended:
            manager._stop_music(leg)
        self._check()
        why, status = _TRANSFER_REFUSALS.get(result, _REJECTED)
        self._transfer_failed(target, f"{why} ({result})" if result else "failed")
        return status

    async def enqueue(self, queue: str, priority: int) -> bool:
        self._check()
        manager, call = self._manager, self._call
        acd = manager.acd
        if acd is None or not acd.has_queue(queue):
            return False
        await self.answer()
        self._leave()
        route = Route(RouteKind.QUEUE, queue, priority=priority, reason=f"ivr {self.flow}")
        manager._into_queue(call, route)
        manager.events.publish(
            CallTransferred(manager.clock(), call.id, call.caller, call.callee,
                            to=f"queue:{queue}", by=f"ivr:{self.flow}")
        )  # fmt: skip
        manager._wait_in_queue(call)
        return True

    def _transfer_failed(self, target: str, why: str) -> None:
        # Without it the steps go from "transfer" straight to whatever the flow does next.
        if not self._gone and not self._call.ended:
            self.report("transfer_failed", f"{target} {why}")

    def _leave(self) -> None:
        """The call leaves the flow: the caller's keys go where they went before."""
        if self._call.ivr is self:
            self._call.ivr = None
        self._gone = True

    async def hang_up(self) -> None:
        if not self._call.ended:
            self._leave()
            self._report_ended()
            await self._manager._hang_up(self._call, f"ivr {self.flow} hung up")

    def is_extension(self, number: str) -> bool:
        return number in self._manager.registrar.users

    def is_extension_prefix(self, digits: str) -> bool:
        return any(e.startswith(digits) for e in self._manager.registrar.users)

    def is_open(self, hours: str) -> bool:
        schedule = self._manager.dialplan.schedule(hours)
        if schedule is None:
            raise KeyError(f"no [[hours]] named {hours!r}")
        return schedule.is_open(datetime.now(UTC))

    def report(self, step: str, detail: str = "") -> None:
        call, manager = self._call, self._manager
        if step == "started":
            self._started = True
        elif step == "ended":
            if self._ended:
                return  # reported as the call ended: see _report_ended
            self._ended = True
        manager.events.publish(
            IvrStep(manager.clock(), call.id, call.caller, call.callee, flow=self.flow,
                    step=step, detail=detail)
        )  # fmt: skip

    def taking_message(self, box: str) -> None:
        self._call.answered_by = f"voicemail:{box}"  # the CDR names the box, not the flow

    def _report_ended(self) -> None:
        """The flow's "ended" step, now that the call is ending. The flow's task would
        report it only once it next runs, after the call's CallEnded, and followers of the
        bus take call_ended as a call's last event."""
        if not self._started or self._ended:
            return
        session = self.session
        outcome = Outcome.CALLER_HUNG_UP  # what run_flow makes of a cancel or HungUp
        if session is not None and session.outcome is not Outcome.RUNNING:
            outcome = session.outcome
        self.report("ended", outcome.value)


class FlowService:
    """Loads the configured flows and runs them on calls."""

    def __init__(self, config: Config, manager: CallManager, voicemail: Voicemail | None) -> None:
        self.config = config
        self.manager = manager
        self.voicemail = voicemail
        base = config.path.parent
        self.registry = FlowRegistry(config.ivr.modules, base)
        self.prompts = Prompts(
            [base / d for d in config.ivr.prompts], base=base, cache=manager.prompts
        )

    def load(self) -> list[str]:
        """(Re)import the flow modules; the errors (the flows loaded before are kept)."""
        errors = self.registry.load()
        for error in errors:
            log.error("ivr: %s", error)
        log.info("ivr: flows %s", ", ".join(sorted(self.registry.flows)) or "none")
        return errors

    def can_run(self, route: Route) -> bool:
        if route.kind is RouteKind.IVR:
            return self.registry.get(route.number) is not None
        if route.kind is RouteKind.VOICEMAIL:
            return self.voicemail is not None and self.voicemail.has(route.number)
        return route.kind is RouteKind.VOICEMAIL_ACCESS and self.voicemail is not None

    def flow_for(self, route: Route, caller: str) -> Flow | None:
        if route.kind is RouteKind.IVR:
            return self.registry.get(route.number)
        if route.kind is RouteKind.VOICEMAIL:
            box, greeting = route.number, route.greeting

            async def leave(call: Session) -> None:
                if not await call.voicemail(box, greeting):
                    await call.play(["invalid", "goodbye"], interruptible=False)

            return Flow(f"voicemail:{box}", leave)
        if route.kind is RouteKind.VOICEMAIL_ACCESS:
            mailboxes = self.voicemail
            assert mailboxes is not None
            own = route.number != "*"

            async def listen(call: Session) -> None:
                box = caller if own and await mailboxes.exists(caller) else None
                await check_messages(call, mailboxes, box)

            return Flow("voicemail", listen)
        return None

    def start(self, call: Call, route: Route) -> bool:
        """Run the flow `route` names on `call`; False if there is none."""
        item = self.flow_for(route, call.caller)
        if item is None:
            return False
        channel = LiveChannel(self, call, item.name)
        call.ivr = channel
        if not call.answered_by or call.answered_by.startswith("ivr:"):
            call.answered_by = f"ivr:{item.name}"
        channel.task = self.manager._spawn(self._run(item, channel))
        return True

    def hand_over(self, call: Call, route: Route, by: str) -> bool:
        """The flow sends the call to another flow (or voicemail): that one takes over."""
        old = call.ivr
        if not self.can_run(route):
            return False
        if old is not None:
            old._gone = True  # no cancel: the old flow returns on its own
        self.manager.events.publish(
            CallTransferred(self.manager.clock(), call.id, call.caller, call.callee,
                            to=_target_of(route), by=f"ivr:{by}")
        )  # fmt: skip
        return self.start(call, route)

    async def _run(self, item: Flow, channel: LiveChannel) -> None:
        session = Session(channel, self.prompts)
        channel.session = session
        outcome = await run_flow(item, session, self.config.ivr.fallback)
        log.info("call %s: flow %s done: %s %s", channel.call_id, item.name, outcome.value,
                 session.destination)  # fmt: skip

    def ring_seconds(self, route: Route) -> float | None:
        """An extension with a mailbox rings for [voicemail] ring_seconds, then the flow
        may take a message."""
        if self.manager._mailbox_of(route) is not None:
            return self.config.voicemail.ring_seconds
        return None


def _target_of(route: Route) -> str:
    if route.kind is RouteKind.IVR:
        return f"ivr:{route.number}"
    if route.kind is RouteKind.VOICEMAIL:
        return f"voicemail:{route.number}"
    return "voicemail"
