"""The ACD engine: skills-based routing of waiting calls to agents. Pure, no clock.

Every method takes `now` and returns the outputs it caused, in order (acd.model); the
exchange carries out the actions among them (ring an agent, stop ringing, announce, route
a caller onwards) and logs all of them. `next_timer()` says when `on_timer(now)` is due.

How routing stays cheap with thousands of callers waiting:
- Each queue keeps its waiting calls in one list sorted by a key that never changes while
  the call waits: `entered - priority * ageing`. Ageing by waiting time is linear, so the
  order of effective priorities (`priority + waited / ageing`) is the order of this key at
  every instant. The head is the next call; a position is a bisection.
- Each queue keeps its Ready members. A call that arrives looks only at Ready agents of the
  queues it may use; an agent that becomes Ready looks only at the heads of the queues it
  serves (cross-queue fairness: the smallest key across them, keys being comparable).
- Invariant after every method: no Ready agent is eligible for a waiting call.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from acd.model import (
    Abandoned,
    AcdError,
    AgentSpec,
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
    QueueSpec,
    Skills,
    Strategy,
    Transferred,
)

NO_ANSWER = "no answer"
HISTORY = 16  # routing explanations kept per call


class CallState(Enum):
    WAITING = "waiting"  # in its queue's sorted list
    RINGING = "ringing"  # offered to one agent (or to several: ring-all)
    CONNECTED = "connected"
    RETRY = "retry"  # a callback whose attempt failed, waiting for its retry time


class _Timer(Enum):
    RING = 1
    WRAP_UP = 2
    RULE = 3
    MAX_WAIT = 4
    ANNOUNCE = 5
    RETRY = 6


@dataclass(slots=True, eq=False)
class _Agent:
    spec: AgentSpec
    state: AgentState = AgentState.LOGGED_OUT
    reason: str = ""
    since: float = 0.0
    queues: tuple[str, ...] = ()
    idle_since: float = 0.0  # when the agent last became free: longest-idle
    calls: int = 0
    talk: float = 0.0
    call: _Call | None = None
    serial: int = 0  # changes with every state: stale wrap-up timers are ignored
    after_call: tuple[AgentState, str] | None = None  # a pause or logout asked mid-call


@dataclass(slots=True, eq=False)
class _Call:
    id: str
    queue: _Queue
    caller: str
    priority: int
    entered: float  # first entry into any queue: waits add up across overflow moves
    joined: float  # entry into the current queue: its overflow rules count from here
    key: tuple[float, int]
    state: CallState = CallState.WAITING
    skills: Skills = field(default_factory=dict)  # minimums now, after relaxations
    pools: frozenset[str] = frozenset()  # queues whose members may take the call
    tier: int = 0  # how many of the queue's overflow rules have fired
    offers: dict[str, float] = field(default_factory=dict)  # agent -> ringing since
    agent: _Agent | None = None
    answered: float = 0.0
    callback: str = ""
    attempts: int = 0
    epoch: int = 0  # changes whenever the call moves or ends: stale timers are ignored
    ring_round: int = 0
    history: list[str] = field(default_factory=list)
    visited: set[str] = field(default_factory=set)  # queues it was in: overflow never cycles
    reached: bool = False  # a callback: the customer answered


@dataclass(slots=True, eq=False)
class _Queue:
    spec: QueueSpec
    waiting: list[tuple[float, int, str]] = field(default_factory=list)
    members: dict[str, _Agent] = field(default_factory=dict)  # logged in, in login order
    ready: dict[str, _Agent] = field(default_factory=dict)
    ringing_all: dict[str, _Call] = field(default_factory=dict)  # ring-all calls ringing
    widened: dict[str, _Call] = field(default_factory=dict)  # calls some rule fired for
    last_offered: str = ""  # round-robin
    handle_time: float | None = None  # moving average of talk + wrap-up: wait estimates


@dataclass(frozen=True, slots=True)
class AgentStatus:
    id: str
    extension: str
    name: str
    skills: Skills
    state: AgentState
    reason: str
    since: float
    queues: tuple[str, ...]
    call_id: str
    calls: int
    talk: float


@dataclass(frozen=True, slots=True)
class CallStatus:
    call_id: str
    queue: str
    caller: str
    priority: int
    entered: float
    state: CallState
    position: int  # 0 unless waiting
    agents: tuple[str, ...]  # ringing or connected
    callback: str
    skills: Skills
    pools: tuple[str, ...]


TimerEntry = tuple[float, int, _Timer, object, int]


class Engine:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._queues: dict[str, _Queue] = {}
        self._agents: dict[str, _Agent] = {}
        self._calls: dict[str, _Call] = {}
        # queue -> queues whose overflow rules add its members (ADD_AGENTS)
        self._borrowers: dict[str, set[str]] = {}
        self._timers: list[TimerEntry] = []
        self._seq = 0
        self._rng = rng or random.Random(0)

    # ---- configuration

    def set_queue(self, spec: QueueSpec, now: float) -> list[Output]:
        """Add a queue or change one; waiting callers keep their places."""
        out: list[Output] = []
        queue = self._queues.get(spec.name)
        if queue is None:
            self._queues[spec.name] = _Queue(spec)
        else:
            queue.spec = spec
            for call in self._calls_of(queue):
                call.skills, call.pools = self._tier_rules(spec, call.tier)
        self._index_borrowers()
        for call in list(self._calls_of(self._queues[spec.name])):
            if call.state is CallState.WAITING:
                self._route_call(call, now, out)
        return out

    def remove_queue(self, name: str, now: float) -> list[Output]:
        queue = self._queue(name)
        out: list[Output] = []
        for call in list(self._calls_of(queue)):
            if call.state is CallState.CONNECTED:
                continue  # the conversation goes on; it completes against the old queue
            self._exit(call, ExitReason.EMPTY, now, out)
        for agent in list(queue.members.values()):
            self._leave_queues(agent, (name,), now, out)
        del self._queues[name]
        self._index_borrowers()
        return out

    def set_agent(self, spec: AgentSpec, now: float) -> list[Output]:
        """Add an agent (logged out) or change one's extension, name or skills."""
        out: list[Output] = []
        agent = self._agents.get(spec.id)
        if agent is None:
            self._agents[spec.id] = _Agent(spec, since=now, idle_since=now)
            return out
        agent.spec = spec
        if agent.state is AgentState.READY:
            self._route_agent(agent, now, out)
        return out

    def remove_agent(self, agent_id: str, now: float) -> list[Output]:
        agent = self._agent(agent_id)
        out: list[Output] = []
        if agent.call is not None and agent.state is AgentState.ON_CALL:
            raise AcdError(f"agent {agent_id} is on a call; log them out first")
        self._leave_queues(agent, agent.queues, now, out)
        del self._agents[agent_id]
        return out

    # ---- agents

    def login(self, agent_id: str, queues: Iterable[str], now: float) -> list[Output]:
        """Join queues; an agent who was logged out becomes Ready."""
        agent = self._agent(agent_id)
        names = list(dict.fromkeys(name for name in queues if name not in agent.queues))
        for name in names:
            self._queue(name)  # unknown queue: an error before anything changes
        if not names and agent.state is not AgentState.LOGGED_OUT:
            return []
        out: list[Output] = []
        if agent.after_call is not None and agent.after_call[0] is AgentState.LOGGED_OUT:
            agent.after_call = None  # logged out during a call, and back in before its end
        agent.queues = (*agent.queues, *names)
        for name in names:
            queue = self._queues[name]
            queue.members[agent_id] = agent
            if agent.state is AgentState.READY:
                queue.ready[agent_id] = agent
        if agent.state is AgentState.LOGGED_OUT:
            if not agent.queues:
                raise AcdError(f"agent {agent_id}: log in to at least one queue")
            self._set_state(agent, AgentState.READY, "", now, out)
        else:
            self._queues_changed(agent, now, out)  # the new queue list
        if agent.state is AgentState.READY:
            self._route_agent(agent, now, out)
        return out

    def logout(
        self, agent_id: str, now: float, queues: Iterable[str] | None = None
    ) -> list[Output]:
        """Leave the given queues (all by default); with none left the agent is logged
        out, once any call in progress ends."""
        agent = self._agent(agent_id)
        names = agent.queues if queues is None else tuple(queues)
        for name in names:
            if name not in agent.queues:
                raise AcdError(f"agent {agent_id} is not logged in to queue {name}")
        out: list[Output] = []
        self._leave_queues(agent, names, now, out)
        return out

    def ready(self, agent_id: str, now: float) -> list[Output]:
        agent = self._agent(agent_id)
        out: list[Output] = []
        state = agent.state
        if state is AgentState.LOGGED_OUT:
            raise AcdError(f"agent {agent_id} is logged out; log in to a queue first")
        if state in (AgentState.ON_CALL, AgentState.RESERVED):
            # Ready after this call: cancels a pause asked for during it (not a logout:
            # the agent left every queue, and is ready for none).
            if agent.after_call is not None and agent.after_call[0] is AgentState.NOT_READY:
                agent.after_call = None
            return out
        if state is AgentState.READY:
            return out
        self._set_state(agent, AgentState.READY, "", now, out)
        self._route_agent(agent, now, out)
        return out

    def pause(self, agent_id: str, reason: str, now: float) -> list[Output]:
        """Not Ready with a reason; asked during a call, it applies when the call ends."""
        agent = self._agent(agent_id)
        reason = reason or "paused"
        out: list[Output] = []
        if agent.state is AgentState.LOGGED_OUT:
            raise AcdError(f"agent {agent_id} is logged out")
        if agent.state is AgentState.ON_CALL:
            if agent.after_call is None or agent.after_call[0] is not AgentState.LOGGED_OUT:
                agent.after_call = (AgentState.NOT_READY, reason)  # not over a logout
            return out
        if agent.state is AgentState.RESERVED and agent.call is not None:
            self._withdraw_offer(agent.call, agent, "agent paused", now, out)
        self._set_state(agent, AgentState.NOT_READY, reason, now, out)
        return out

    # ---- calls

    def enter(
        self, call_id: str, queue: str, now: float, caller: str = "", priority: int = 0
    ) -> list[Output]:
        """A caller joins a queue. Refused callers get Entered then Exit."""
        if call_id in self._calls:
            raise AcdError(f"call {call_id} is already in queue {self._calls[call_id].queue}")
        target = self._queue(queue)
        out: list[Output] = []
        call = _Call(call_id, target, caller, priority, now, now, (0.0, 0))
        self._join(call, target, now, out)
        return out

    def answered(self, call_id: str, agent_id: str, now: float) -> list[Output]:
        """The agent picked up an offer."""
        call = self._call(call_id)
        agent = self._agent(agent_id)
        if call.state is not CallState.RINGING or agent_id not in call.offers:
            raise AcdError(f"call {call_id} is not ringing agent {agent_id}")
        out: list[Output] = []
        del call.offers[agent_id]
        freed = self._stop_ringing(call, "answered elsewhere", now, out)
        call.state, call.agent, call.answered = CallState.CONNECTED, agent, now
        queue = call.queue.spec.name
        if call.callback:
            # Not answered yet: that is when the customer picks up (callback_answered).
            call.attempts += 1
            out.append(CallbackAttempt(now, queue, call.id, agent_id, call.callback, call.attempts))
        else:
            out.append(Answered(now, queue, call.id, agent_id, now - call.entered))
        self._set_state(agent, AgentState.ON_CALL, "", now, out, call)
        self._route_agents(freed, now, out)
        return out

    def callback_answered(self, call_id: str, now: float) -> list[Output]:
        """The customer picked up the call back: the call is answered, by its agent."""
        call = self._call(call_id)
        agent = call.agent
        if call.state is not CallState.CONNECTED or agent is None or not call.callback:
            raise AcdError(f"call {call_id} is not a callback in progress")
        if call.reached:
            return []
        call.reached = True
        return [Answered(now, call.queue.spec.name, call.id, agent.spec.id, now - call.entered)]

    def offer_failed(
        self, call_id: str, agent_id: str, now: float, reason: str = NO_ANSWER
    ) -> list[Output]:
        """The agent's phone did not take the offer (busy, declined, unreachable): the
        agent goes Not Ready and the call goes back to its place (RONA)."""
        call = self._call(call_id)
        agent = self._agent(agent_id)
        if call.state is not CallState.RINGING or agent_id not in call.offers:
            raise AcdError(f"call {call_id} is not ringing agent {agent_id}")
        out: list[Output] = []
        self._rona(call, agent, reason or NO_ANSWER, now, out)
        if not call.offers:
            self._requeue(call, now, out)
        return out

    def abandon(self, call_id: str, now: float) -> list[Output]:
        """The caller hung up. Once connected, that simply completes the call."""
        call = self._call(call_id)
        if call.state is CallState.CONNECTED:
            return self.completed(call_id, now, by="caller")
        out: list[Output] = []
        position = self._position(call)
        freed = self._stop_ringing(call, "caller left", now, out)
        self._remove(call)
        out.append(Abandoned(now, call.queue.spec.name, call.id, now - call.entered, position))
        self._route_agents(freed, now, out)
        return out

    def completed(self, call_id: str, now: float, by: str = "") -> list[Output]:
        return self._handled(call_id, now, by=by)

    def transferred(self, call_id: str, target: str, now: float) -> list[Output]:
        """The agent passed the call on: it leaves the ACD, the agent wraps up."""
        return self._handled(call_id, now, target=target)

    def _handled(self, call_id: str, now: float, by: str = "", target: str | None = None
                 ) -> list[Output]:  # fmt: skip
        """The conversation is over for the ACD: ended (Completed) or passed on to
        `target` (Transferred)."""
        call = self._call(call_id)
        agent = call.agent
        if call.state is not CallState.CONNECTED or agent is None:
            raise AcdError(f"call {call_id} is not connected to an agent")
        if call.callback and not call.reached:
            # The agent gave up on a callback nobody answered yet: it is over, unanswered.
            out: list[Output] = []
            self._release_agent(agent, now - call.answered, call, now, out)
            call.agent = None
            self._exit(call, ExitReason.CALLBACK_FAILED, now, out)
            return out
        talk = now - call.answered
        queue, agent_id = call.queue.spec.name, agent.spec.id
        done: list[Output] = [
            Completed(now, queue, call.id, agent_id, talk, by) if target is None
            else Transferred(now, queue, call.id, agent_id, target, talk)
        ]  # fmt: skip
        self._finish(call, agent, talk, now, done)
        return done

    def request_callback(self, call_id: str, number: str, now: float) -> list[Output]:
        """The caller keeps their place and hangs up; their turn rings an agent, who is
        then connected to a call back to `number`."""
        call = self._call(call_id)
        if call.state is CallState.CONNECTED:
            raise AcdError(f"call {call_id} is already connected to an agent")
        if not number:
            raise AcdError("a callback needs a number")
        if call.state is CallState.RETRY or call.callback:
            raise AcdError(f"call {call_id} is already waiting for a callback")
        out: list[Output] = []
        freed: list[_Agent] = []
        # A callback from here on: past max_wait while it rang, it stays (the caller asked
        # in time); a rule moving it on due meanwhile moves it as a callback.
        call.callback = number
        if call.state is CallState.RINGING:
            freed = self._stop_ringing(call, "callback requested", now, out)
            self._requeue(call, now, out, route=False)
            if call.id not in self._calls:
                self._route_agents(freed, now, out)
                return out
        out.append(CallbackRequested(now, call.queue.spec.name, call.id, number,
                                     self._position(call)))  # fmt: skip
        # The agents it freed take the first calls they may ahead of this one. This one
        # goes to whoever its strategy picks: an agent Ready all the while it rang (or
        # eligible since a rule fell due meanwhile) may have a better claim than the agent
        # it rang. Freed agents it passed over then look behind it.
        for agent in freed:
            if agent.state is AgentState.READY:
                self._route_agent(agent, now, out, leave=call)
        if call.state is CallState.WAITING:
            self._route_call(call, now, out)
        self._route_agents(freed, now, out)
        return out

    def callback_failed(self, call_id: str, now: float) -> list[Output]:
        """Nobody answered the call back: the agent is free, the call waits its retry."""
        call = self._call(call_id)
        if call.state is not CallState.CONNECTED or call.agent is None or not call.callback:
            raise AcdError(f"call {call_id} is not a callback in progress")
        out: list[Output] = []
        agent = call.agent
        self._release_agent(agent, now - call.answered, call, now, out)
        call.agent = None
        spec = call.queue.spec
        if call.attempts >= spec.callback_retries:
            self._exit(call, ExitReason.CALLBACK_FAILED, now, out)
            return out
        call.state = CallState.RETRY
        call.epoch += 1
        self._timer(now + spec.callback_retry_delay, _Timer.RETRY, call, call.epoch)
        return out

    # ---- time

    def next_timer(self) -> float | None:
        timers = self._timers
        while timers and not self._live(timers[0]):
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def on_timer(self, now: float) -> list[Output]:
        out: list[Output] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            entry = heapq.heappop(timers)
            if self._live(entry):
                self._fire(entry, now, out)
        return out

    # ---- views

    def agent_status(self, agent_id: str) -> AgentStatus:
        a = self._agent(agent_id)
        spec = a.spec
        call_id = a.call.id if a.call is not None else ""
        return AgentStatus(spec.id, spec.extension, spec.name, dict(spec.skills), a.state,
                           a.reason, a.since, a.queues, call_id, a.calls, a.talk)  # fmt: skip

    def agents(self) -> list[AgentStatus]:
        return [self.agent_status(agent_id) for agent_id in self._agents]

    def queue_names(self) -> list[str]:
        return list(self._queues)

    def queue_spec(self, name: str) -> QueueSpec:
        return self._queue(name).spec

    def call_status(self, call_id: str) -> CallStatus | None:
        call = self._calls.get(call_id)
        if call is None:
            return None
        agents = tuple(call.offers) if call.agent is None else (call.agent.spec.id,)
        return CallStatus(call.id, call.queue.spec.name, call.caller, call.priority,
                          call.entered, call.state, self._position(call), agents,
                          call.callback, dict(call.skills), tuple(sorted(call.pools)))  # fmt: skip

    def calls(self, queue: str | None = None) -> list[CallStatus]:
        """Calls in the ACD (of one queue), waiting ones in queue order first."""
        queues = [self._queue(queue)] if queue is not None else list(self._queues.values())
        found: list[CallStatus] = []
        for q in queues:
            for call in self._calls_of(q):
                status = self.call_status(call.id)
                if status is not None:
                    found.append(status)
        return found

    def qualifies(self, agent_id: str, queue: str) -> bool:
        """Whether the agent has the skills the queue asks for (before any relaxation)."""
        return self._qualified(self._agent(agent_id), self._queue(queue).spec.skills)

    def staffed(self, queue: str) -> int:
        """Members who can take calls now or soon (not Not Ready, not logged out)."""
        return sum(1 for a in self._queue(queue).members.values() if self._staffing(a))

    def estimated_wait(self, call_id: str) -> float | None:
        call = self._call(call_id)
        return self._estimate(call.queue, self._position(call))

    def explain(self, call_id: str) -> list[str]:
        """Why the call went where it went, and why it waits now if it does."""
        call = self._call(call_id)
        lines = list(call.history)
        if call.state is CallState.WAITING:
            lines.append(f"waiting at position {self._position(call)}: {self._why_waiting(call)}")
        elif call.state is CallState.RINGING:
            lines.append(f"ringing {', '.join(call.offers)}")
        elif call.state is CallState.CONNECTED and call.agent is not None:
            lines.append(f"connected to {call.agent.spec.id}")
        else:
            lines.append("callback attempt failed; waiting for the retry")
        return lines

    # ---- internals: lookups

    def _queue(self, name: str) -> _Queue:
        try:
            return self._queues[name]
        except KeyError:
            raise AcdError(f"no queue named {name!r}") from None

    def _agent(self, agent_id: str) -> _Agent:
        try:
            return self._agents[agent_id]
        except KeyError:
            raise AcdError(f"no agent {agent_id!r}") from None

    def _call(self, call_id: str) -> _Call:
        try:
            return self._calls[call_id]
        except KeyError:
            raise AcdError(f"call {call_id!r} is not in any queue") from None

    def _calls_of(self, queue: _Queue) -> Iterable[_Call]:
        waiting = [self._calls[entry[2]] for entry in queue.waiting]
        others = [c for c in self._calls.values()
                  if c.queue is queue and c.state is not CallState.WAITING]  # fmt: skip
        return waiting + others

    def _index_borrowers(self) -> None:
        self._borrowers = {}
        for queue in self._queues.values():
            for rule in queue.spec.overflow:
                if rule.action is OverflowAction.ADD_AGENTS:
                    self._borrowers.setdefault(rule.target, set()).add(queue.spec.name)

    @staticmethod
    def _tier_rules(spec: QueueSpec, tier: int) -> tuple[Skills, frozenset[str]]:
        """The skill minimums and agent pools of a call after `tier` rules fired."""
        skills, pools = spec.skills, {spec.name}
        for rule in spec.overflow[:tier]:
            if rule.action is OverflowAction.RELAX_SKILLS:
                skills = rule.skills
            elif rule.action is OverflowAction.ADD_AGENTS:
                pools.add(rule.target)
        return skills, frozenset(pools)

    @staticmethod
    def _qualified(agent: _Agent, skills: Skills) -> bool:
        have = agent.spec.skills
        for name, level in skills.items():  # noqa: SIM110 - a loop is 2x all(generator) here
            if have.get(name, 0) < level:
                return False
        return True

    def _eligible(self, agent: _Agent, call: _Call) -> bool:
        if call.pools.isdisjoint(agent.queues):
            return False
        return self._qualified(agent, call.skills)

    # ---- internals: calls in queues

    def _join(self, call: _Call, queue: _Queue, now: float, out: list[Output]) -> None:
        spec = queue.spec
        call.queue, call.joined, call.tier = queue, now, 0
        call.state, call.epoch = CallState.WAITING, call.epoch + 1
        call.skills, call.pools = spec.skills, frozenset((spec.name,))
        self._seq += 1
        call.key = (call.entered - call.priority * spec.ageing, self._seq)
        self._calls[call.id] = call
        full = spec.max_length > 0 and len(queue.waiting) >= spec.max_length
        bisect.insort(queue.waiting, (*call.key, call.id))
        out.append(Entered(now, spec.name, call.id, call.caller, call.priority,
                           self._position(call)))  # fmt: skip
        if full:
            self._exit(call, ExitReason.FULL, now, out)
            return
        if not spec.join_empty and not self._staffed_for(call):
            self._exit(call, ExitReason.EMPTY, now, out)
            return
        epoch = call.epoch
        call.visited.add(spec.name)
        self._arm_rule(call)
        if spec.max_wait > 0:
            self._timer(call.entered + spec.max_wait, _Timer.MAX_WAIT, call, epoch)
        if spec.announce_every > 0:
            self._timer(now + spec.announce_every, _Timer.ANNOUNCE, call, epoch)
        self._route_call(call, now, out)

    def _position(self, call: _Call) -> int:
        if call.state is not CallState.WAITING:
            return 0
        return bisect.bisect_left(call.queue.waiting, call.key) + 1

    def _remove(self, call: _Call) -> None:
        """The call leaves the ACD altogether."""
        if call.state is CallState.WAITING:
            waiting = call.queue.waiting
            del waiting[bisect.bisect_left(waiting, call.key)]
        call.queue.ringing_all.pop(call.id, None)
        call.queue.widened.pop(call.id, None)
        call.epoch += 1
        self._calls.pop(call.id, None)

    def _exit(self, call: _Call, reason: ExitReason, now: float, out: list[Output],
              target: str = "") -> None:  # fmt: skip
        freed = self._stop_ringing(call, "caller left", now, out)
        self._remove(call)
        out.append(Exit(now, call.queue.spec.name, call.id, reason, now - call.entered, target))
        self._route_agents(freed, now, out)

    def _requeue(self, call: _Call, now: float, out: list[Output], route: bool = True) -> None:
        """Back to its place: the key it had, so a no-answer costs the caller nothing."""
        call.queue.ringing_all.pop(call.id, None)
        call.state = CallState.WAITING
        bisect.insort(call.queue.waiting, (*call.key, call.id))
        if self._due(call, now, out) and route:
            self._route_call(call, now, out)

    def _due(self, call: _Call, now: float, out: list[Output]) -> bool:
        """Apply what fell due while the call was ringing; False if it left the queue."""
        spec = call.queue.spec
        if spec.max_wait > 0 and not call.callback and now >= call.entered + spec.max_wait:
            self._exit(call, ExitReason.TIMEOUT, now, out)
            return False
        while (
            call.tier < len(spec.overflow) and now >= call.joined + spec.overflow[call.tier].after
        ):
            if not self._overflow(call, now, out):
                return False
        return True

    def _overflow(self, call: _Call, now: float, out: list[Output]) -> bool:
        """Fire the call's next rule; False if it took the call out of this queue."""
        spec = call.queue.spec
        rule = spec.overflow[call.tier]
        call.tier += 1
        name, wait = spec.name, now - call.entered
        if rule.action is OverflowAction.VOICEMAIL and call.callback:
            # The caller is not on the line: their callback stays queued.
            call.history.append(f"{wait:.0f} s: voicemail skipped for a callback")
        elif rule.action is OverflowAction.VOICEMAIL:
            self._exit(call, ExitReason.OVERFLOW, now, out, rule.target)
            return False
        elif rule.action is OverflowAction.QUEUE:
            target = self._queues.get(rule.target)
            if target is not None and target.spec.name not in call.visited:
                out.append(Overflowed(now, name, call.id, rule.action, rule.target, wait))
                self._remove(call)
                self._join(call, target, now, out)
                return False
            # No such queue, or one the call was in already (rules must not cycle).
            why = "no such queue" if target is None else "the call was there before"
            call.history.append(f"{wait:.0f} s: overflow to {rule.target!r} skipped: {why}")
        else:
            call.skills, call.pools = self._tier_rules(spec, call.tier)
            out.append(Overflowed(now, name, call.id, rule.action, rule.target, wait))
            call.history.append(f"{wait:.0f} s: {rule.action.value} {rule.target}".rstrip())
        call.queue.widened[call.id] = call
        self._arm_rule(call)
        return True

    def _arm_rule(self, call: _Call) -> None:
        rules = call.queue.spec.overflow
        if call.tier < len(rules):
            self._timer(call.joined + rules[call.tier].after, _Timer.RULE, call, call.epoch)

    # ---- internals: routing

    def _route_call(self, call: _Call, now: float, out: list[Output]) -> None:
        """A call became routable: offer it to the best Ready agent it may use."""
        candidates: list[_Agent] = []
        queues = self._queues
        skills = call.skills
        for name in call.pools:
            pool = queues.get(name)
            if pool is None:
                continue
            for agent in pool.ready.values():
                if skills and not self._qualified(agent, skills):
                    continue
                candidates.append(agent)
        if not candidates:
            return
        if len(call.pools) > 1:
            candidates = list({id(a): a for a in candidates}.values())
        spec = call.queue.spec
        if spec.strategy is Strategy.RING_ALL:
            self._offer(call, candidates, f"ring-all: {len(candidates)} ready", now, out)
            return
        agent, why = self._choose(call, candidates)
        self._offer(call, [agent], why, now, out)

    def _choose(self, call: _Call, candidates: list[_Agent]) -> tuple[_Agent, str]:
        strategy = call.queue.spec.strategy
        n = len(candidates)
        if n == 1:
            agent = candidates[0]
            return agent, f"{strategy.value}: {agent.spec.id}, the only ready eligible agent"
        if strategy is Strategy.LONGEST_IDLE:
            agent = min(candidates, key=_idle_key)
            return agent, f"longest-idle: {agent.spec.id} free since {agent.idle_since:.1f}, of {n}"
        if strategy is Strategy.FEWEST_CALLS:
            agent = min(candidates, key=_calls_key)
            return agent, f"fewest-calls: {agent.spec.id} with {agent.calls} calls, of {n}"
        if strategy is Strategy.LEAST_TALK_TIME:
            agent = min(candidates, key=_talk_key)
            return agent, f"least-talk-time: {agent.spec.id} with {agent.talk:.0f} s, of {n}"
        if strategy is Strategy.BEST_SKILL_MATCH:
            wanted = call.queue.spec.skills or call.skills

            def match(a: _Agent) -> tuple[int, float]:
                return (-sum(a.spec.skills.get(s, 0) for s in wanted), a.idle_since)

            agent = min(candidates, key=match)
            score = -match(agent)[0]
            return agent, f"best-skill-match: {agent.spec.id} scores {score}, of {n}"
        if strategy is Strategy.ROUND_ROBIN:
            queue = call.queue
            places = {agent_id: i for i, agent_id in enumerate(queue.members)}
            last = places.get(queue.last_offered, -1)
            size = len(places)

            def turn(a: _Agent) -> int:
                return (places.get(a.spec.id, size) - last - 1) % (size + 1)

            agent = min(candidates, key=turn)
            return agent, f"round-robin: {agent.spec.id}, next after {queue.last_offered or '-'}"
        agent = candidates[self._rng.randrange(n)]
        return agent, f"random: {agent.spec.id}, of {n}"

    def _route_agent(self, agent: _Agent, now: float, out: list[Output],
                     leave: _Call | None = None) -> None:  # fmt: skip
        """An agent became Ready: offer them the best call they may take, across queues.
        If that is `leave`, do nothing: the caller routes that call by its strategy."""
        best: _Call | None = None
        queues = self._queues
        for name in self._served(agent):
            queue = queues[name]
            call = self._best_in(queue, agent)
            if call is not None and (best is None or call.key < best.key):
                best = call
        if best is not None and best is leave:
            return
        if best is not None:
            queue = best.queue
            if queue.spec.strategy is Strategy.RING_ALL:
                ready = [a for n in best.pools if n in queues for a in queues[n].ready.values()
                         if self._qualified(a, best.skills)]  # fmt: skip
                unique = list({id(a): a for a in ready}.values())
                self._offer(best, unique, f"ring-all: {len(unique)} ready", now, out)
            else:
                why = f"{agent.spec.id} became ready; the longest-waiting call it may take"
                self._offer(best, [agent], why, now, out)
            return
        for name in self._served(agent):
            for call in queues[name].ringing_all.values():
                if self._eligible(agent, call):
                    self._ring(call, agent, now, out)
                    call.history.append(f"ring-all: {agent.spec.id} became ready, rings too")
                    return

    def _served(self, agent: _Agent) -> list[str]:
        names = list(agent.queues)
        for name in agent.queues:
            for borrower in self._borrowers.get(name, ()):
                if borrower not in names and borrower in self._queues:
                    names.append(borrower)
        return names

    def _best_in(self, queue: _Queue, agent: _Agent) -> _Call | None:
        # Calls no rule has widened all take the queue's own members and skills: an agent
        # who is one of those takes the head (or a widened call ahead of it); anyone else
        # may take only widened calls, looked at alone (not a scan of everyone waiting).
        if agent.spec.id in queue.members and self._qualified(agent, queue.spec.skills):
            calls = self._calls
            for entry in queue.waiting:
                call = calls[entry[2]]
                if call.tier == 0 or self._eligible(agent, call):
                    return call
            return None
        best: _Call | None = None
        for call in queue.widened.values():
            if (call.state is CallState.WAITING and (best is None or call.key < best.key)
                    and self._eligible(agent, call)):  # fmt: skip
                best = call
        return best

    def _offer(self, call: _Call, agents: list[_Agent], why: str, now: float,
               out: list[Output]) -> None:  # fmt: skip
        waiting = call.queue.waiting
        del waiting[bisect.bisect_left(waiting, call.key)]
        call.state = CallState.RINGING
        call.ring_round += 1
        if len(call.history) >= HISTORY:
            del call.history[0]
        call.history.append(f"{now:.1f}: {why}")
        if call.queue.spec.strategy is Strategy.RING_ALL:
            call.queue.ringing_all[call.id] = call
        for agent in agents:
            self._ring(call, agent, now, out, why)
        self._timer(now + call.queue.spec.ring_timeout, _Timer.RING, call, call.ring_round)

    def _ring(self, call: _Call, agent: _Agent, now: float, out: list[Output],
              why: str = "") -> None:  # fmt: skip
        call.offers[agent.spec.id] = now
        queue = call.queue
        queue.last_offered = agent.spec.id
        out.append(Offer(now, queue.spec.name, call.id, agent.spec.id, agent.spec.extension,
                         call.callback, why))  # fmt: skip
        self._set_state(agent, AgentState.RESERVED, "", now, out, call)

    def _stop_ringing(self, call: _Call, reason: str, now: float,
                      out: list[Output]) -> list[_Agent]:  # fmt: skip
        """Withdraw every offer still ringing. Those agents are Ready again; the caller
        routes them (`_route_agents`) once the call itself is where it is going."""
        call.queue.ringing_all.pop(call.id, None)
        call.ring_round += 1
        name = call.queue.spec.name
        freed: list[_Agent] = []
        for agent_id in list(call.offers):
            del call.offers[agent_id]
            out.append(CancelOffer(now, name, call.id, agent_id, reason))
            agent = self._agents.get(agent_id)
            if agent is not None and agent.call is call:
                self._set_state(agent, AgentState.READY, "", now, out, call)
                freed.append(agent)
        return freed

    def _route_agents(self, agents: list[_Agent], now: float, out: list[Output]) -> None:
        for agent in agents:
            if agent.state is AgentState.READY:
                self._route_agent(agent, now, out)

    def _withdraw_offer(self, call: _Call, agent: _Agent, reason: str, now: float,
                        out: list[Output]) -> None:  # fmt: skip
        """One agent stops ringing (paused, logged out); the call rings on elsewhere."""
        call.offers.pop(agent.spec.id, None)
        out.append(CancelOffer(now, call.queue.spec.name, call.id, agent.spec.id, reason))
        agent.call = None
        if not call.offers:
            self._requeue(call, now, out)

    def _rona(self, call: _Call, agent: _Agent, reason: str, now: float,
              out: list[Output]) -> None:  # fmt: skip
        ringing = now - call.offers.pop(agent.spec.id)
        out.append(NoAnswer(now, call.queue.spec.name, call.id, agent.spec.id, ringing))
        agent.call = None
        self._set_state(agent, AgentState.NOT_READY, reason, now, out, call)

    def _ring_timeout(self, call: _Call, now: float, out: list[Output]) -> None:
        if call.queue.spec.strategy is Strategy.RING_ALL:
            # Nobody in particular failed to answer: the call rings whoever is Ready now,
            # before those freed agents look for other calls.
            freed = self._stop_ringing(call, "ring timeout", now, out)
            self._requeue(call, now, out)
            self._route_agents(freed, now, out)
            return
        else:
            for agent_id in list(call.offers):
                agent = self._agents.get(agent_id)
                out.append(CancelOffer(now, call.queue.spec.name, call.id, agent_id,
                                       "ring timeout"))  # fmt: skip
                if agent is None:
                    call.offers.pop(agent_id)
                    continue
                self._rona(call, agent, NO_ANSWER, now, out)
        call.offers.clear()
        self._requeue(call, now, out)

    # ---- internals: agent states

    def _set_state(self, agent: _Agent, state: AgentState, reason: str, now: float,
                   out: list[Output], call: _Call | None = None) -> None:  # fmt: skip
        previous = agent.state
        was_ready = previous is AgentState.READY
        if state is AgentState.READY and previous is not AgentState.RESERVED:
            agent.idle_since = now  # an offer that came to nothing does not reset it
        agent.state, agent.reason, agent.since = state, reason, now
        agent.serial += 1
        agent.call = call if state in (AgentState.RESERVED, AgentState.ON_CALL) else None
        if state is AgentState.READY and not was_ready:
            for name in agent.queues:
                self._queues[name].ready[agent.spec.id] = agent
        elif was_ready and state is not AgentState.READY:
            for name in agent.queues:
                self._queues[name].ready.pop(agent.spec.id, None)
        out.append(AgentStateChanged(now, "", call.id if call is not None else "",
                                     agent.spec.id, state, previous, reason,
                                     agent.queues))  # fmt: skip
        if not self._staffing(agent) and previous not in (
            AgentState.NOT_READY,
            AgentState.LOGGED_OUT,
        ):
            self._check_leave_empty(agent.queues, now, out)

    def _queues_changed(self, agent: _Agent, now: float, out: list[Output]) -> None:
        """The agent's queues changed, not their state: say so (the queue log keeps both)."""
        state = agent.state
        out.append(AgentStateChanged(now, "", "", agent.spec.id, state, state, agent.reason,
                                     agent.queues))  # fmt: skip

    def _finish(self, call: _Call, agent: _Agent, talk: float, now: float,
                out: list[Output]) -> None:  # fmt: skip
        self._release_agent(agent, talk, call, now, out)
        queue = call.queue
        handled = talk + queue.spec.wrap_up
        previous = queue.handle_time
        queue.handle_time = handled if previous is None else 0.9 * previous + 0.1 * handled
        call.agent = None
        self._remove(call)

    def _release_agent(self, agent: _Agent, talk: float, call: _Call, now: float,
                       out: list[Output]) -> None:  # fmt: skip
        agent.calls += 1
        agent.talk += talk
        after = agent.after_call
        agent.after_call = None
        if after is not None and after[0] is AgentState.LOGGED_OUT:
            self._set_state(agent, AgentState.LOGGED_OUT, after[1], now, out, call)
            return
        wrap_up = call.queue.spec.wrap_up
        if after is not None:
            self._set_state(agent, after[0], after[1], now, out, call)
        elif wrap_up > 0:
            self._set_state(agent, AgentState.WRAP_UP, "", now, out, call)
            self._timer(now + wrap_up, _Timer.WRAP_UP, agent, agent.serial)
        else:
            self._set_state(agent, AgentState.READY, "", now, out, call)
            self._route_agent(agent, now, out)

    def _leave_queues(self, agent: _Agent, names: Iterable[str], now: float,
                      out: list[Output]) -> None:  # fmt: skip
        names = tuple(names)
        if not names and agent.queues:
            return
        call = agent.call
        withdrawn = (
            agent.state is AgentState.RESERVED
            and call is not None
            and (not call.pools.isdisjoint(names) or len(names) == len(agent.queues))
        )
        if withdrawn and call is not None:
            self._withdraw_offer(call, agent, "agent logged out", now, out)
        for name in names:
            queue = self._queues.get(name)
            if queue is not None:
                queue.members.pop(agent.spec.id, None)
                queue.ready.pop(agent.spec.id, None)
        agent.queues = tuple(n for n in agent.queues if n not in names)
        if agent.queues and withdrawn:
            self._set_state(agent, AgentState.READY, "", now, out)
            self._route_agent(agent, now, out)
        elif agent.queues:
            self._queues_changed(agent, now, out)
        elif agent.state is AgentState.ON_CALL:
            agent.after_call = (AgentState.LOGGED_OUT, "")
            self._queues_changed(agent, now, out)  # in no queue now
        else:
            self._set_state(agent, AgentState.LOGGED_OUT, "", now, out)
        self._check_leave_empty(names, now, out)

    def _staffing(self, agent: _Agent) -> bool:
        return agent.state not in (AgentState.NOT_READY, AgentState.LOGGED_OUT)

    def _staffed_for(self, call: _Call) -> bool:
        for name in call.pools:
            queue = self._queues.get(name)
            if queue is None:
                continue
            for agent in queue.members.values():
                if self._staffing(agent) and self._qualified(agent, call.skills):
                    return True
        return False

    def _check_leave_empty(self, names: Iterable[str], now: float, out: list[Output]) -> None:
        for name in names:
            queue = self._queues.get(name)
            if queue is None or not queue.spec.leave_empty or not queue.waiting:
                continue
            for entry in list(queue.waiting):
                call = self._calls[entry[2]]
                if not call.callback and not self._staffed_for(call):
                    self._exit(call, ExitReason.EMPTY, now, out)

    def _why_waiting(self, call: _Call) -> str:
        reasons: list[str] = []
        seen = 0
        for name in sorted(call.pools):
            queue = self._queues.get(name)
            if queue is None:
                continue
            for agent in queue.members.values():
                seen += 1
                missing = [f"{s} {agent.spec.skills.get(s, 0)}<{lvl}"
                           for s, lvl in call.skills.items()
                           if agent.spec.skills.get(s, 0) < lvl]  # fmt: skip
                if missing:
                    reasons.append(f"{agent.spec.id} lacks {', '.join(missing)}")
                else:
                    state = agent.state.value + (f" ({agent.reason})" if agent.reason else "")
                    reasons.append(f"{agent.spec.id} is {state}")
        if not seen:
            return "no agent is logged in to " + ", ".join(sorted(call.pools))
        return "; ".join(reasons)

    def _estimate(self, queue: _Queue, position: int) -> float | None:
        if queue.handle_time is None or position <= 0:
            return None
        staffed = sum(1 for a in queue.members.values() if self._staffing(a))
        return position * queue.handle_time / max(1, staffed)

    # ---- internals: timers

    def _timer(self, at: float, kind: _Timer, subject: object, token: int) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (at, self._seq, kind, subject, token))

    def _live(self, entry: TimerEntry) -> bool:
        _, _, kind, subject, token = entry
        if kind is _Timer.WRAP_UP:
            assert isinstance(subject, _Agent)
            return subject.serial == token and subject.state is AgentState.WRAP_UP
        assert isinstance(subject, _Call)
        if kind is _Timer.RING:
            return subject.state is CallState.RINGING and subject.ring_round == token
        if subject.epoch != token or subject.id not in self._calls:
            return False
        if kind is _Timer.RETRY:
            return subject.state is CallState.RETRY
        return subject.state is not CallState.CONNECTED and subject.state is not CallState.RETRY

    def _fire(self, entry: TimerEntry, now: float, out: list[Output]) -> None:
        kind, subject = entry[2], entry[3]
        if isinstance(subject, _Agent):
            self._set_state(subject, AgentState.READY, "", now, out)
            self._route_agent(subject, now, out)
            return
        assert isinstance(subject, _Call)
        call = subject
        spec = call.queue.spec
        if kind is _Timer.RING:
            self._ring_timeout(call, now, out)
        elif kind is _Timer.RETRY:
            # Its rule timers died with the attempt (epoch): re-arm them before the
            # requeue, which may ring it at once and would leave it with none. A rule due
            # already is applied by the requeue (_due); this timer then finds none due.
            self._arm_rule(call)
            self._requeue(call, now, out)
        elif kind is _Timer.ANNOUNCE:
            if call.state is CallState.WAITING and not call.callback:
                position = self._position(call)
                out.append(Announce(now, spec.name, call.id, position,
                                    self._estimate(call.queue, position)))  # fmt: skip
            self._timer(now + spec.announce_every, _Timer.ANNOUNCE, call, call.epoch)
        elif call.state is CallState.WAITING:
            # MAX_WAIT and RULE: a ringing call is dealt with when it comes back (_due)
            if kind is _Timer.MAX_WAIT and call.callback:
                return
            rules = spec.overflow
            if kind is _Timer.RULE:
                # A rule that fell due while the call rang was applied by _due already;
                # its timer then finds the next rule not yet due.
                due = call.tier < len(rules) and now >= call.joined + rules[call.tier].after
                if due and self._overflow(call, now, out):
                    self._route_call(call, now, out)
            elif kind is _Timer.MAX_WAIT:
                self._exit(call, ExitReason.TIMEOUT, now, out)


def _idle_key(agent: _Agent) -> float:
    return agent.idle_since


def _calls_key(agent: _Agent) -> tuple[int, float]:
    return (agent.calls, agent.idle_since)


def _talk_key(agent: _Agent) -> tuple[float, float]:
    return (agent.talk, agent.idle_since)
