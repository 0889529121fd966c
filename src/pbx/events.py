"""The event bus: typed events published in-process, followed by CTI, CDR and `pbx events`.

Publishing is synchronous and cheap: subscribers are plain callables. Remote followers
(`pbx events` over the control socket) get a bounded queue each, so a slow reader loses
its oldest events (and is told how many) instead of slowing the exchange down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

log = logging.getLogger("pbx.events")


@dataclass(frozen=True, slots=True)
class Event:
    type: ClassVar[str] = "event"
    time: float

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, **dataclasses.asdict(self)}


@dataclass(frozen=True, slots=True)
class RegistrationChanged(Event):
    """A binding was added, refreshed, removed or expired."""

    type: ClassVar[str] = "registration"
    aor: str
    contact: str
    action: str  # "registered", "refreshed", "unregistered", "expired", "removed"
    transport: str = ""
    source: str = ""
    user_agent: str = ""


@dataclass(frozen=True, slots=True)
class CallEvent(Event):
    """Something happened to a call: `call_id` is the exchange's own id for it."""

    type: ClassVar[str] = "call"
    call_id: str
    caller: str
    callee: str


@dataclass(frozen=True, slots=True)
class CallStarted(CallEvent):
    """A call came in and the dialplan decided where it goes."""

    type: ClassVar[str] = "call_started"
    dialled: str = ""
    route: str = ""  # extension, ring group, trunk, pickup, park slot...
    trunk: str = ""  # the trunk it came in on, or goes out through


@dataclass(frozen=True, slots=True)
class CallRinging(CallEvent):
    type: ClassVar[str] = "call_ringing"


@dataclass(frozen=True, slots=True)
class CallAnswered(CallEvent):
    type: ClassVar[str] = "call_answered"


@dataclass(frozen=True, slots=True)
class CallHeld(CallEvent):
    """One side put the call on hold (`held`) or took it off hold again."""

    type: ClassVar[str] = "call_held"
    held: bool = True
    by: str = ""  # caller or callee


@dataclass(frozen=True, slots=True)
class CallTransferred(CallEvent):
    """A transfer (REFER) connected the call to `to`: blind, or attended (Replaces: `to`
    is the party of the call that was replaced, which ends)."""

    type: ClassVar[str] = "call_transferred"
    to: str = ""
    by: str = ""  # the party that transferred
    attended: bool = False
    replaced_call_id: str = ""  # attended: the consultation call that was merged in


@dataclass(frozen=True, slots=True)
class CallPickedUp(CallEvent):
    """`by` answered a call that was ringing elsewhere (*8, **EXT, or INVITE/Replaces)."""

    type: ClassVar[str] = "call_picked_up"
    by: str = ""


@dataclass(frozen=True, slots=True)
class CallParked(CallEvent):
    """`by` parked the call (the other party waits) in `slot`."""

    type: ClassVar[str] = "call_parked"
    slot: str = ""
    by: str = ""


@dataclass(frozen=True, slots=True)
class ConferenceJoined(CallEvent):
    """`party` (the caller of `call_id`) joined conference `room`; `members` now there."""

    type: ClassVar[str] = "conference_joined"
    room: str = ""
    party: str = ""
    members: int = 0


@dataclass(frozen=True, slots=True)
class ConferenceLeft(CallEvent):
    type: ClassVar[str] = "conference_left"
    room: str = ""
    party: str = ""
    members: int = 0
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class CallRetrieved(CallEvent):
    """The parked call left `slot`: `by` dialled it, or the park timed out and `by` is
    the phone that parked it, rung again."""

    type: ClassVar[str] = "call_retrieved"
    slot: str = ""
    by: str = ""
    timed_out: bool = False


@dataclass(frozen=True, slots=True)
class DtmfReceived(CallEvent):
    """A phone on the call pressed a key: `leg` (caller or callee) is its side, `party`
    who it is, `source` how the digit came (rfc4733, info, inband)."""

    type: ClassVar[str] = "dtmf"
    digit: str = ""
    duration_ms: int = 0
    leg: str = ""
    party: str = ""
    source: str = ""


@dataclass(frozen=True, slots=True)
class IvrStep(CallEvent):
    """An IVR flow did something: `step` is "started", "menu" (detail: the choice),
    "collected", "invalid", "timeout", "transfer", "transfer_failed" (detail: the target
    and why: "busy (486)", "no answer (487)", "declined (603)", "rejected (STATUS)", or
    refused before ringing: "not registered", "no route", "no such queue"...), "queue",
    "voicemail", "recorded", "message", "pin", "greeting", "error", "hangup", "ended"
    (detail: the outcome)... A flow's "ended" comes before its call's CallEnded, also for
    a caller who hangs up to end a voicemail message (the CallEnded waits for the save)."""

    type: ClassVar[str] = "ivr"
    flow: str = ""
    step: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CallEnded(CallEvent):
    """The call is over; this carries everything its CDR records."""

    type: ClassVar[str] = "call_ended"
    started: float = 0.0
    answered: float | None = None
    disposition: str = "FAILED"  # ANSWERED, NO ANSWER, BUSY, FAILED, CANCELLED
    cause: str = ""
    hangup_by: str = ""  # caller, callee, system
    status: int = 0  # the final SIP status the caller got
    caller_loss: int = 0
    caller_jitter_ms: float = 0.0
    callee_loss: int = 0
    callee_jitter_ms: float = 0.0
    dialled: str = ""
    route: str = ""
    trunk: str = ""
    answered_by: str = ""  # who answered: the extension, a ring group member, the trunk
    legs: tuple[str, ...] = ()  # every party the call involved, in order of joining


@dataclass(frozen=True, slots=True)
class RecordingStarted(CallEvent):
    """A call's recording began: a file being written as the call goes."""

    type: ClassVar[str] = "recording_started"
    recording_id: str = ""
    path: str = ""
    format: str = ""
    retention_days: float = 0.0  # 0: kept until deleted by hand
    by: str = ""  # "policy", or who started it (an extension's feature code, "api")


@dataclass(frozen=True, slots=True)
class RecordingPaused(CallEvent):
    type: ClassVar[str] = "recording_paused"
    recording_id: str = ""
    paused: bool = True  # False: resumed
    by: str = ""


@dataclass(frozen=True, slots=True)
class RecordingStopped(CallEvent):
    """The file is complete (the call ended, or the recording was stopped)."""

    type: ClassVar[str] = "recording_stopped"
    recording_id: str = ""
    path: str = ""
    duration: float = 0.0
    paused_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class EventsLost(Event):
    """Sent to a follower that fell behind: this many events were dropped for it."""

    type: ClassVar[str] = "events_lost"
    count: int


Subscriber = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call `subscriber` for every event; returns the function that unsubscribes."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def publish(self, event: Event) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:  # one broken subscriber must not stop the others
                log.exception("event subscriber failed on %s", event.type)

    async def follow(self, limit: int = 10_000) -> AsyncIterator[Event]:
        """Every event from now on, through a queue of at most `limit` events."""
        queue: asyncio.Queue[Event] = asyncio.Queue()
        lost = 0

        def enqueue(event: Event) -> None:
            nonlocal lost
            if queue.qsize() >= limit:
                queue.get_nowait()
                lost += 1
            queue.put_nowait(event)

        unsubscribe = self.subscribe(enqueue)
        try:
            while True:
                event = await queue.get()
                if lost:
                    yield EventsLost(event.time, lost)
                    lost = 0
                yield event
        finally:
            unsubscribe()
