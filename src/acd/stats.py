"""Call-center statistics: a pure fold of the engine's outputs (acd.model) into figures.

`Statistics` is fed every output the engine emits, live in the exchange or from a
`queue_log` replay, and answers `queue_stats(queue, now)` and `agent_stats(agent, now)`.
It never reads a clock (`now` is passed in) and does no I/O, so the same log always gives
the same figures: every statistic can be rebuilt from `queue_log`. `feed` costs O(1); a
query costs O(callers waiting in that queue) (for `longest_wait`).

Totals run from the first output fed; there is no rolling window. Feed a day's log to get
that day's figures (calls already waiting or talking when the log starts count only for
what the log shows of them).

Definitions (the ones wallboards built on Asterisk queue_log or Genesys reports expect):

- **offered**: calls that entered the queue (`Entered`), plus callers refused at the door
  (`Exit` FULL or EMPTY for a call that never entered), so for a complete log
  `offered == answered + abandoned + exited + waiting` at every moment.
- **waiting**: callers in the queue who have not reached an agent, *including* those whose
  call is ringing an agent right now (`ringing` of them) and those waiting for a callback
  (`callbacks_waiting` of them). `longest_wait` is the longest of their waits at `now`.
- **exited**: callers who left without an agent and without hanging up (`Exit`: timeout,
  full, empty, callback failed, overflow); `exit_reasons` splits them by `ExitReason`.
- **overflow to another queue** (`Overflowed` with action QUEUE or VOICEMAIL, usually with
  an `Exit` OVERFLOW beside it): the call counts once as *exited* (reason "overflow") in
  the queue it left, whichever of the two outputs comes first, and, for a move, once more
  as *offered* in the queue it enters (`overflowed_in` of them there). It keeps its wait:
  its `longest_wait` in the new queue runs from when it first entered the old one, as the
  engine's own `Answered.wait` does. Summing `offered` over queues therefore counts a moved
  call in each queue it visited. `overflowed` counts every rule that fired (any action).
- **service level** (percent): calls answered within T / (calls answered + calls abandoned
  after T). Callers who abandon within T ("short abandons") are left out of it, as are
  exits. "Within" means `wait <= T`, as in Asterisk. T is the queue's
  `QueueSpec.service_level`, given to the constructor, and is applied as each call is
  answered or abandoned. None until the denominator is non-zero.
- **average_speed_of_answer**: mean `Answered.wait`; **max_wait_answered** its maximum
  (0.0 before the first answer); **average_abandon_wait**: mean `Abandoned.wait`.
- **average_handle_time**: (talk time + wrap-up time) / calls handled, where handled calls
  are those `Completed` or `Transferred` by the agent, talk time is their `talk`, and
  wrap-up time is the time agents spent in WRAP_UP (from `AgentStateChanged`) after a call
  of this queue, counted once the wrap-up ends.
- Averages and ratios are None while undefined (nothing to divide by).

Agents: time in each state is measured from `AgentStateChanged` outputs, the current state
counting up to `now`; the time before an agent's first state change is unknown and not
counted. `logged_in_time` is the time in every state but LOGGED_OUT. **occupancy**
(percent) = (ON_CALL + WRAP_UP) / (ON_CALL + WRAP_UP + READY + RESERVED): the share of the
time available for calls that went to handling them; NOT_READY (breaks) is left out, and
ringing (RESERVED) counts as available, not as handling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from acd.model import (
    Abandoned,
    AgentState,
    AgentStateChanged,
    Announce,
    Answered,
    CallbackAttempt,
    CallbackRequested,
    CancelOffer,
    Completed,
    Entered,
    Exit,
    ExitReason,
    NoAnswer,
    Offer,
    Output,
    OverflowAction,
    Overflowed,
    Transferred,
)

DEFAULT_SERVICE_LEVEL = 20.0  # seconds, as QueueSpec.service_level
_MOVES = (OverflowAction.QUEUE, OverflowAction.VOICEMAIL)  # the caller leaves the queue
_REFUSED = (ExitReason.FULL, ExitReason.EMPTY)  # may come for a call that never entered
_HANDLING = (AgentState.ON_CALL, AgentState.WRAP_UP)
_AVAILABLE = (AgentState.READY, AgentState.RESERVED)
# Calls that left a queue by overflow, remembered so that the Overflowed / Exit pair counts
# once and the Entered in the target queue keeps the wait. The engine emits them together,
# so only the most recent departures are needed; the bound keeps memory flat.
_MOVED_MEMORY = 1024


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue's figures at `now` (see the module docstring for each definition)."""

    queue: str
    service_level_seconds: float  # T
    offered: int
    answered: int
    abandoned: int
    exited: int
    waiting: int
    ringing: int  # of the waiting, calls ringing at least one agent
    callbacks_waiting: int  # of the waiting, callers who asked to be called back
    longest_wait: float  # 0.0 when nobody waits
    service_level: float | None  # percent
    answered_within_sl: int
    abandoned_after_sl: int
    average_speed_of_answer: float | None
    max_wait_answered: float
    average_abandon_wait: float | None
    handled: int  # Completed + Transferred
    talk_time: float
    wrap_up_time: float
    average_handle_time: float | None
    rona: int  # offers that rang out (NoAnswer)
    callbacks_requested: int
    callback_attempts: int
    overflowed: int  # overflow rules that fired, any action
    overflowed_in: int  # of the offered, calls moved here from another queue
    exit_reasons: dict[str, int]  # ExitReason value -> count; sums to `exited`

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class AgentStats:
    """One agent's figures at `now` (see the module docstring for each definition)."""

    agent: str
    state: AgentState  # LOGGED_OUT until the first state change is seen
    state_since: float | None
    reason: str  # the NOT_READY reason ("break", "no answer", ...), else ""
    queues: tuple[str, ...]  # as of the last state change
    calls: int  # calls answered
    handled: int  # calls completed or transferred
    talk_time: float  # the `talk` of the calls handled
    offers: int  # times the agent's phone was rung with a call
    rona: int  # offers that rang out
    occupancy: float | None  # percent
    state_times: dict[str, float]  # AgentState value -> seconds, every state, up to `now`
    not_ready_reasons: dict[str, float]  # NOT_READY reason -> seconds, up to `now`
    logged_in_time: float

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        data["queues"] = list(self.queues)
        return data


class _Call:
    __slots__ = ("callback", "origin", "queue", "ringing")

    def __init__(self, queue: str, origin: float) -> None:
        self.queue = queue
        self.origin = origin  # when its wait started
        self.ringing: set[str] = set()  # agents its offers ring now
        self.callback = False


class _Queue:
    __slots__ = (
        "abandon_wait",
        "abandoned",
        "abandoned_after_sl",
        "answer_wait",
        "answered",
        "answered_within_sl",
        "callback_attempts",
        "callbacks_requested",
        "callbacks_waiting",
        "exit_reasons",
        "exited",
        "handled",
        "max_wait_answered",
        "offered",
        "overflowed",
        "overflowed_in",
        "ringing",
        "rona",
        "talk",
        "waiting",
        "wrap_up",
    )

    def __init__(self) -> None:
        self.offered = self.answered = self.abandoned = self.exited = 0
        self.answered_within_sl = self.abandoned_after_sl = 0
        self.handled = self.rona = self.overflowed = self.overflowed_in = 0
        self.callbacks_requested = self.callback_attempts = 0
        self.ringing = self.callbacks_waiting = 0
        self.answer_wait = self.abandon_wait = self.max_wait_answered = 0.0
        self.talk = self.wrap_up = 0.0
        self.exit_reasons: dict[str, int] = {}
        self.waiting: dict[str, _Call] = {}


class _Agent:
    __slots__ = (
        "call_queue",
        "calls",
        "handled",
        "not_ready",
        "offers",
        "queues",
        "reason",
        "rona",
        "since",
        "state",
        "talk",
        "times",
        "wrap_queue",
    )

    def __init__(self) -> None:
        self.state = AgentState.LOGGED_OUT
        self.since: float | None = None  # None: no state change seen yet
        self.reason = ""
        self.queues: tuple[str, ...] = ()
        self.calls = self.handled = self.offers = self.rona = 0
        self.talk = 0.0
        self.times = dict.fromkeys(AgentState, 0.0)
        self.not_ready: dict[str, float] = {}
        self.call_queue = ""  # the queue of the call the agent answered last
        self.wrap_queue = ""  # the queue the current wrap-up is for


class Statistics:
    """Queue and agent statistics folded from engine outputs; pure and deterministic.

    `service_levels` maps a queue to its T in seconds (`QueueSpec.service_level`); other
    queues use `default`.
    """

    def __init__(
        self,
        service_levels: Mapping[str, float] | None = None,
        default: float = DEFAULT_SERVICE_LEVEL,
    ) -> None:
        self._service_levels = dict(service_levels or {})
        self._default = default
        self._queues: dict[str, _Queue] = {}
        self._agents: dict[str, _Agent] = {}
        self._calls: dict[str, _Call] = {}  # call_id -> the queue it waits in
        # call_id -> (queue it left by overflow, when its wait began, seen entering another)
        self._moved: dict[str, tuple[str, float, bool]] = {}
        self._handlers: dict[type[Output], Callable[[Any], None]] = {
            Entered: self._entered,
            Offer: self._offer,
            CancelOffer: self._cancel_offer,
            Answered: self._answered,
            NoAnswer: self._no_answer,
            Abandoned: self._abandoned,
            Completed: self._handled,
            Transferred: self._handled,
            Announce: self._announce,
            Overflowed: self._overflowed,
            Exit: self._exit,
            CallbackRequested: self._callback_requested,
            CallbackAttempt: self._callback_attempt,
            AgentStateChanged: self._agent_state,
        }

    def service_level_seconds(self, queue: str) -> float:
        return self._service_levels.get(queue, self._default)

    def set_service_level(self, queue: str, seconds: float) -> None:
        """A queue's T changed (its QueueSpec was replaced): applies to calls from now on."""
        self._service_levels[queue] = seconds

    # ---- folding

    def feed(self, output: Output) -> None:
        """Account for one output. Output types this module does not know are ignored."""
        handler = self._handlers.get(type(output))
        if handler is not None:
            handler(output)

    def feed_all(self, outputs: Iterable[Output]) -> None:
        for output in outputs:
            self.feed(output)

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue()
        return queue

    def _agent(self, name: str) -> _Agent:
        agent = self._agents.get(name)
        if agent is None:
            agent = self._agents[name] = _Agent()
        return agent

    def _leave(self, queue: _Queue, call_id: str) -> _Call | None:
        """Take the call out of `queue`'s waiting callers, if it is one of them."""
        call = queue.waiting.pop(call_id, None)
        if call is None:
            return None
        del self._calls[call_id]
        if call.ringing:
            queue.ringing -= 1
        if call.callback:
            queue.callbacks_waiting -= 1
        return call

    def _count_exit(self, queue: _Queue, reason: ExitReason) -> None:
        queue.exited += 1
        queue.exit_reasons[reason.value] = queue.exit_reasons.get(reason.value, 0) + 1

    def _moved_out(self, queue_name: str, call_id: str, origin: float) -> None:
        """The call left the queue by overflow: count that once for the pair of outputs.

        `origin` is when its wait began, should the call not be known to be waiting there.
        """
        moved = self._moved.get(call_id)
        if moved is not None and moved[0] == queue_name:
            return  # the other output of the pair already counted it
        queue = self._queue(queue_name)
        call = self._leave(queue, call_id)
        self._count_exit(queue, ExitReason.OVERFLOW)
        self._moved.pop(call_id, None)
        self._moved[call_id] = (queue_name, origin if call is None else call.origin, False)
        if len(self._moved) > _MOVED_MEMORY:
            del self._moved[next(iter(self._moved))]

    def _entered(self, out: Entered) -> None:
        queue = self._queue(out.queue)
        if out.call_id in queue.waiting:
            return  # a repeated Entered: it is already waiting here
        previous = self._calls.get(out.call_id)
        if previous is not None:
            # Moved on without an Exit or Overflowed from the queue it waited in: close it
            # there as an overflow, so that queue's counts still add up.
            self._moved_out(previous.queue, out.call_id, previous.origin)
        queue.offered += 1
        origin = out.time
        moved = self._moved.get(out.call_id)
        if moved is not None:
            left, moved_origin, arrived = moved
            if left == out.queue:
                del self._moved[out.call_id]  # back where it left: that move is over
            elif not arrived:
                queue.overflowed_in += 1
                origin = moved_origin
                self._moved[out.call_id] = (left, moved_origin, True)
        call = _Call(out.queue, origin)
        queue.waiting[out.call_id] = call
        self._calls[out.call_id] = call

    def _offer(self, out: Offer) -> None:
        self._agent(out.agent).offers += 1
        queue = self._queue(out.queue)
        call = queue.waiting.get(out.call_id)
        if call is not None:
            if not call.ringing:
                queue.ringing += 1
            call.ringing.add(out.agent)

    def _stop_ringing(self, queue: _Queue, call_id: str, agent: str) -> None:
        call = queue.waiting.get(call_id)
        if call is not None and agent in call.ringing:
            call.ringing.discard(agent)
            if not call.ringing:
                queue.ringing -= 1

    def _cancel_offer(self, out: CancelOffer) -> None:
        self._stop_ringing(self._queue(out.queue), out.call_id, out.agent)

    def _no_answer(self, out: NoAnswer) -> None:
        queue = self._queue(out.queue)
        queue.rona += 1
        self._agent(out.agent).rona += 1
        self._stop_ringing(queue, out.call_id, out.agent)

    def _answered(self, out: Answered) -> None:
        queue = self._queue(out.queue)
        self._leave(queue, out.call_id)
        queue.answered += 1
        queue.answer_wait += out.wait
        queue.max_wait_answered = max(queue.max_wait_answered, out.wait)
        if out.wait <= self.service_level_seconds(out.queue):
            queue.answered_within_sl += 1
        agent = self._agent(out.agent)
        agent.calls += 1
        agent.call_queue = out.queue

    def _abandoned(self, out: Abandoned) -> None:
        queue = self._queue(out.queue)
        self._leave(queue, out.call_id)
        queue.abandoned += 1
        queue.abandon_wait += out.wait
        if out.wait > self.service_level_seconds(out.queue):
            queue.abandoned_after_sl += 1

    def _handled(self, out: Completed | Transferred) -> None:
        queue = self._queue(out.queue)
        queue.handled += 1
        queue.talk += out.talk
        agent = self._agent(out.agent)
        agent.handled += 1
        agent.talk += out.talk

    def _announce(self, out: Announce) -> None:
        self._queue(out.queue)

    def _overflowed(self, out: Overflowed) -> None:
        self._queue(out.queue).overflowed += 1
        if out.action in _MOVES:
            self._moved_out(out.queue, out.call_id, out.time - out.wait)

    def _exit(self, out: Exit) -> None:
        if out.reason is ExitReason.OVERFLOW:
            self._moved_out(out.queue, out.call_id, out.time - out.wait)
            return
        queue = self._queue(out.queue)
        if self._leave(queue, out.call_id) is None and out.reason in _REFUSED:
            queue.offered += 1  # refused at the door: it never entered
        self._count_exit(queue, out.reason)

    def _callback_requested(self, out: CallbackRequested) -> None:
        queue = self._queue(out.queue)
        queue.callbacks_requested += 1
        call = queue.waiting.get(out.call_id)
        if call is not None and not call.callback:
            call.callback = True
            queue.callbacks_waiting += 1

    def _callback_attempt(self, out: CallbackAttempt) -> None:
        queue = self._queue(out.queue)
        queue.callback_attempts += 1
        self._stop_ringing(queue, out.call_id, out.agent)  # the agent took the offer
        self._agent(out.agent).call_queue = out.queue

    def _agent_state(self, out: AgentStateChanged) -> None:
        agent = self._agent(out.agent)
        if agent.since is not None:
            spent = max(0.0, out.time - agent.since)
            agent.times[agent.state] += spent
            if agent.state is AgentState.NOT_READY:
                agent.not_ready[agent.reason] = agent.not_ready.get(agent.reason, 0.0) + spent
            if agent.state is AgentState.WRAP_UP and agent.wrap_queue:
                self._queue(agent.wrap_queue).wrap_up += spent
        if out.state is AgentState.WRAP_UP and agent.state is not AgentState.WRAP_UP:
            agent.wrap_queue = agent.call_queue
        agent.state, agent.since = out.state, out.time
        agent.reason = out.reason if out.state is AgentState.NOT_READY else ""
        agent.queues = out.queues
        for name in out.queues:
            self._queue(name)

    # ---- queries

    def waiting_calls(self) -> list[tuple[str, str, float]]:
        """(queue, call_id, wait start) of every call the outputs left waiting (or ringing):
        after a crash, the calls the log never saw leave."""
        return [(name, call_id, call.origin) for name, queue in self._queues.items()
                for call_id, call in queue.waiting.items()]  # fmt: skip

    def queues(self) -> list[str]:
        """Every queue named by an output so far (including the queues agents logged into)."""
        return sorted(self._queues)

    def agents(self) -> list[str]:
        """Every agent named by an output so far."""
        return sorted(self._agents)

    def queue_stats(self, queue: str, now: float) -> QueueStats:
        q = self._queues.get(queue) or _Queue()
        longest = max((now - call.origin for call in q.waiting.values()), default=0.0)
        judged = q.answered + q.abandoned_after_sl
        return QueueStats(
            queue=queue,
            service_level_seconds=self.service_level_seconds(queue),
            offered=q.offered,
            answered=q.answered,
            abandoned=q.abandoned,
            exited=q.exited,
            waiting=len(q.waiting),
            ringing=q.ringing,
            callbacks_waiting=q.callbacks_waiting,
            longest_wait=max(0.0, longest),
            service_level=100.0 * q.answered_within_sl / judged if judged else None,
            answered_within_sl=q.answered_within_sl,
            abandoned_after_sl=q.abandoned_after_sl,
            average_speed_of_answer=q.answer_wait / q.answered if q.answered else None,
            max_wait_answered=q.max_wait_answered,
            average_abandon_wait=q.abandon_wait / q.abandoned if q.abandoned else None,
            handled=q.handled,
            talk_time=q.talk,
            wrap_up_time=q.wrap_up,
            average_handle_time=(q.talk + q.wrap_up) / q.handled if q.handled else None,
            rona=q.rona,
            callbacks_requested=q.callbacks_requested,
            callback_attempts=q.callback_attempts,
            overflowed=q.overflowed,
            overflowed_in=q.overflowed_in,
            exit_reasons=dict(sorted(q.exit_reasons.items())),
        )

    def agent_stats(self, agent: str, now: float) -> AgentStats:
        a = self._agents.get(agent) or _Agent()
        times = dict(a.times)
        not_ready = dict(a.not_ready)
        if a.since is not None:
            current = max(0.0, now - a.since)
            times[a.state] += current
            if a.state is AgentState.NOT_READY:
                not_ready[a.reason] = not_ready.get(a.reason, 0.0) + current
        handling = sum(times[state] for state in _HANDLING)
        available = handling + sum(times[state] for state in _AVAILABLE)
        return AgentStats(
            agent=agent,
            state=a.state,
            state_since=a.since,
            reason=a.reason,
            queues=a.queues,
            calls=a.calls,
            handled=a.handled,
            talk_time=a.talk,
            offers=a.offers,
            rona=a.rona,
            occupancy=100.0 * handling / available if available else None,
            state_times={state.value: seconds for state, seconds in times.items()},
            not_ready_reasons=dict(sorted(not_ready.items())),
            logged_in_time=sum(
                seconds for state, seconds in times.items() if state is not AgentState.LOGGED_OUT
            ),
        )
