"""What the ACD engine is told and what it says: specs in, outputs out.

Everything here is a frozen, slotted dataclass or an enum, so an engine run can be logged,
replayed and compared. Times are seconds on whatever clock the caller uses (the exchange's
`loop.time()`, or simulated time in `benchmarks/acd_sim.py`); the engine never reads one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum

from pbx.errors import PbxError


class AcdError(PbxError):
    """A wrong use of the ACD: an unknown agent or queue, a bad skill list, a bad state."""


class AgentState(StrEnum):
    LOGGED_OUT = "logged_out"
    READY = "ready"
    RESERVED = "reserved"  # a call is ringing on the agent's phone
    ON_CALL = "on_call"
    WRAP_UP = "wrap_up"
    NOT_READY = "not_ready"  # with a reason: "break", "no answer", ...


class Strategy(StrEnum):
    LONGEST_IDLE = "longest-idle"
    FEWEST_CALLS = "fewest-calls"
    LEAST_TALK_TIME = "least-talk-time"
    ROUND_ROBIN = "round-robin"
    RING_ALL = "ring-all"
    BEST_SKILL_MATCH = "best-skill-match"
    RANDOM = "random"


class OverflowAction(StrEnum):
    RELAX_SKILLS = "relax"  # lower the skill minimums to `skills`
    ADD_AGENTS = "add-agents"  # agents logged into queue `target` may take the call too
    VOICEMAIL = "voicemail"  # the caller leaves the queue for voicemail box `target`
    QUEUE = "queue"  # the caller moves to queue `target`, keeping their wait and priority


class ExitReason(StrEnum):
    """Why a caller left a queue without reaching an agent (and not by hanging up)."""

    FULL = "full"  # max_length callers were already waiting
    EMPTY = "empty"  # nobody could ever answer: join_empty / leave_empty
    TIMEOUT = "timeout"  # max_wait passed
    OVERFLOW = "overflow"  # an overflow rule sent it to voicemail or another queue
    CALLBACK_FAILED = "callback_failed"  # every callback attempt went unanswered
    LOST = "lost"  # the exchange stopped (crashed) with the call in the queue


Skills = dict[str, int]  # skill name -> level 1-10 (an agent's) or minimum level (a queue's)
MIN_LEVEL, MAX_LEVEL = 1, 10


def parse_skills(text: str) -> Skills:
    """`"spanish:5,pharmacy"` -> `{"spanish": 5, "pharmacy": 1}` (a bare name is level 1)."""
    skills: Skills = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, level_text = item.partition(":")
        name = name.strip()
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise AcdError(f"bad skill name {name!r} in {text!r}")
        try:
            level = int(level_text) if level_text.strip() else MIN_LEVEL
        except ValueError:
            raise AcdError(f"bad level {level_text!r} for skill {name!r}") from None
        if not MIN_LEVEL <= level <= MAX_LEVEL:
            raise AcdError(f"skill {name!r}: level {level} is outside 1-10")
        skills[name] = level
    return skills


def format_skills(skills: Skills) -> str:
    return ",".join(f"{name}:{level}" for name, level in sorted(skills.items()))


@dataclass(frozen=True, slots=True)
class OverflowRule:
    """After `after` seconds of waiting, do `action` for the call."""

    after: float
    action: OverflowAction
    target: str = ""  # a queue (ADD_AGENTS, QUEUE) or a voicemail box (VOICEMAIL)
    skills: Skills = field(default_factory=dict)  # RELAX_SKILLS: the new minimums


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    number: str = ""  # what callers dial; "" when reached only through the IVR
    skills: Skills = field(default_factory=dict)  # required skills with minimum levels
    strategy: Strategy = Strategy.LONGEST_IDLE
    ring_timeout: float = 15.0  # seconds an offer rings before it counts as no answer
    wrap_up: float = 0.0  # seconds after a call before the agent is offered another
    max_wait: float = 0.0  # 0: no limit; else the caller leaves (ExitReason.TIMEOUT)
    max_length: int = 0  # 0: no limit; else callers beyond it are refused (FULL)
    announce_every: float = 0.0  # 0: never; seconds between position announcements
    join_empty: bool = True  # False: refuse callers while no agent could answer
    leave_empty: bool = False  # True: waiting callers leave when the last agent goes
    # A priority level is worth this many seconds of waiting: a call of priority 2 that
    # arrives now is served before one of priority 0 that has waited up to 2 * ageing s.
    # Because waiting always adds up, every call eventually gets to the head (no starvation).
    ageing: float = 60.0
    service_level: float = 20.0  # seconds: the "answered within T" of the statistics
    music: str = ""  # music-on-hold class (a directory under data_dir/moh); "" default
    overflow: tuple[OverflowRule, ...] = ()
    callback_retries: int = 3
    callback_retry_delay: float = 120.0
    record: bool = False  # record calls answered from this queue


@dataclass(frozen=True, slots=True)
class AgentSpec:
    id: str
    extension: str  # the agent's phone
    name: str = ""
    skills: Skills = field(default_factory=dict)


# ---- outputs: every one is logged (queue_log); Offer, CancelOffer, Announce, Exit and
# Callback are also actions the exchange carries out.


@dataclass(frozen=True, slots=True)
class Output:
    time: float
    queue: str
    call_id: str


@dataclass(frozen=True, slots=True)
class Entered(Output):
    caller: str
    priority: int
    position: int


@dataclass(frozen=True, slots=True)
class Offer(Output):
    """Ring `agent` (at `extension`) with the call; `callback` is a number to call back."""

    agent: str
    extension: str
    callback: str = ""
    why: str = ""


@dataclass(frozen=True, slots=True)
class CancelOffer(Output):
    """Stop ringing `agent`: someone else answered, the caller left, or it timed out."""

    agent: str
    reason: str  # "answered elsewhere", "caller left", "ring timeout", "moved"


@dataclass(frozen=True, slots=True)
class Answered(Output):
    agent: str
    wait: float


@dataclass(frozen=True, slots=True)
class NoAnswer(Output):
    """RONA: the agent let it ring out; the call went back to its place in the queue."""

    agent: str
    ringing: float


@dataclass(frozen=True, slots=True)
class Abandoned(Output):
    wait: float
    position: int


@dataclass(frozen=True, slots=True)
class Completed(Output):
    agent: str
    talk: float
    by: str = ""  # "caller", "agent" or "" when unknown


@dataclass(frozen=True, slots=True)
class Transferred(Output):
    agent: str
    target: str
    talk: float


@dataclass(frozen=True, slots=True)
class Announce(Output):
    position: int
    estimated_wait: float | None  # seconds, None until the queue has answered anything


@dataclass(frozen=True, slots=True)
class Overflowed(Output):
    """A rule fired: the call's eligible agents widened, or it moved to another queue."""

    action: OverflowAction
    target: str
    wait: float


@dataclass(frozen=True, slots=True)
class Exit(Output):
    """The caller leaves the queue without an agent; the exchange routes it onwards."""

    reason: ExitReason
    wait: float
    target: str = ""  # voicemail box for OVERFLOW to voicemail


@dataclass(frozen=True, slots=True)
class CallbackRequested(Output):
    number: str
    position: int


@dataclass(frozen=True, slots=True)
class CallbackAttempt(Output):
    """The reserved agent answered: call the customer back at `number` now."""

    agent: str
    number: str
    attempt: int


@dataclass(frozen=True, slots=True)
class AgentStateChanged(Output):
    """`call_id` is the call that caused it, if any; `queue` is "" for state changes."""

    agent: str
    state: AgentState
    previous: AgentState
    reason: str = ""
    queues: tuple[str, ...] = ()


class LoggedEvent(Enum):
    """queue_log `event` values, one per output type."""

    ENTER = "enter"
    OFFER = "offer"
    CANCEL = "cancel"
    ANSWER = "answer"
    RONA = "rona"
    ABANDON = "abandon"
    COMPLETE = "complete"
    TRANSFER = "transfer"
    ANNOUNCE = "announce"
    OVERFLOW = "overflow"
    EXIT = "exit"
    CALLBACK = "callback"
    CALLBACK_ATTEMPT = "callback_attempt"
    AGENT = "agent"


EVENT_OF: dict[type[Output], LoggedEvent] = {
    Entered: LoggedEvent.ENTER,
    Offer: LoggedEvent.OFFER,
    CancelOffer: LoggedEvent.CANCEL,
    Answered: LoggedEvent.ANSWER,
    NoAnswer: LoggedEvent.RONA,
    Abandoned: LoggedEvent.ABANDON,
    Completed: LoggedEvent.COMPLETE,
    Transferred: LoggedEvent.TRANSFER,
    Announce: LoggedEvent.ANNOUNCE,
    Overflowed: LoggedEvent.OVERFLOW,
    Exit: LoggedEvent.EXIT,
    CallbackRequested: LoggedEvent.CALLBACK,
    CallbackAttempt: LoggedEvent.CALLBACK_ATTEMPT,
    AgentStateChanged: LoggedEvent.AGENT,
}
OUTPUT_OF: dict[LoggedEvent, type[Output]] = {event: kind for kind, event in EVENT_OF.items()}
