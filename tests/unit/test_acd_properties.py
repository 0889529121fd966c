"""Stateful Hypothesis tests of the ACD engine's invariants (acd.engine.Engine).

A `RuleBasedStateMachine` drives one engine with random queues (every strategy, skills,
wrap-up, max_wait, max_length, announcements, overflow rules of all four kinds), agents with
random skills who log in and out, pause and become ready, and calls that enter, ring, are
answered or not, hang up, complete, transfer, ask for a callback and fail one; time moves
forward only, to the engine's next timer or by a step, and `on_timer` runs at every stop.

A model is kept from the outputs alone (which calls are in the ACD and where, who rings for
which call since when, each agent's state and queues, each call's skills and pools as its
overflow rules fire), and after every step it is held against the engine's views:

- every call the engine knows is one the outputs announced, and vice versa: no call leaves
  without an Abandoned, Exit, Completed or Transferred saying why;
- each agent is in exactly one state, the one its last AgentStateChanged gave; a Reserved
  agent has exactly one offer ringing, for no longer than its queue's ring timeout once the
  timers are processed up to now; a call rings one agent at a time except in ring-all;
- every Offer goes to an agent who was Ready and eligible (logged in to one of the call's
  pools, meeting its skill minimums); no Ready agent is left eligible for a waiting call;
  the agent gets the first call in key order they may take, and longest-idle picks the
  eligible agent free the longest;
- waiting calls are in key order (`entered - priority * ageing`, then arrival); max_wait and
  overflow rules fire by the time they are due;
- wrong calls (unknown ids, answering a call not ringing that agent, ...) raise AcdError and
  change nothing.

The bugs this machine found, fixed since, are pinned by the `test_regression_*` tests at the
end, each the smallest sequence of calls that showed one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from acd.engine import AgentStatus, CallState, CallStatus, Engine
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
    OverflowRule,
    QueueSpec,
    Skills,
    Strategy,
    Transferred,
)

QUEUE_NAMES = ("q0", "q1", "q2", "q3")
AGENT_IDS = ("a0", "a1", "a2", "a3", "a4", "a5")
SKILL_NAMES = ("en", "es", "rx")
VOICEMAIL_BOX = "vm9"
STAFFING = (AgentState.READY, AgentState.RESERVED, AgentState.ON_CALL, AgentState.WRAP_UP)


# What queues ask for (rules relax to the first two); most agents meet most of it.
NEEDS: tuple[Skills, ...] = ({}, {"en": 1}, {}, {"es": 2}, {"en": 3}, {"en": 2, "rx": 1})
AGENT_SKILLS = st.dictionaries(
    st.sampled_from(SKILL_NAMES), st.integers(1, 5), min_size=1, max_size=3
)


def qualified(have: Skills, need: Skills) -> bool:
    return all(have.get(name, 0) >= level for name, level in need.items())


@dataclass
class ModelCall:
    id: str
    queue: str
    priority: int
    entered: float
    joined: float = 0.0
    key: tuple[float, int] = (0.0, 0)
    tier: int = 0  # rules matched to an Overflowed (or an Exit to voicemail) so far
    skills: Skills = field(default_factory=dict)
    pools: frozenset[str] = frozenset()
    offers: dict[str, tuple[float, str]] = field(default_factory=dict)  # agent -> (since, cb)
    agent: str = ""  # connected to
    callback: str = ""
    attempts: int = 0
    retry_at: float | None = None
    reached: bool = False  # a callback: the customer answered the call back
    given_up: bool = False  # a callback the agent hung up before the customer answered
    visited: set[str] = field(default_factory=set)  # queues it joined: moves never go back

    @property
    def state(self) -> CallState:
        if self.agent:
            return CallState.CONNECTED
        if self.offers:
            return CallState.RINGING
        if self.retry_at is not None:
            return CallState.RETRY
        return CallState.WAITING


class AcdMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine(random.Random(5))
        self.now = 0.0
        self.specs: dict[str, QueueSpec] = {}
        self.skills_of: dict[str, Skills] = {}
        self.state_of: dict[str, AgentState] = {}
        self.queues_of: dict[str, tuple[str, ...]] = {}
        self.wrap_until: dict[str, float] = {}
        self.idle_since: dict[str, float] = {}
        self.calls: dict[str, ModelCall] = {}
        self.last_queue: dict[str, str] = {}  # call -> queue it was in when it left
        self.moving: dict[str, str] = {}  # call -> queue an Overflowed(QUEUE) sends it to
        self.serial = 0  # calls entered
        self.order = 0  # joins: the tie-break of equal keys
        self.expect_new = ""  # the call an enter() step may announce

    # ---- the model, from outputs

    def run(self, outputs: list[Output]) -> list[Output]:
        cancelled: set[tuple[str, str]] = set()
        for i, out in enumerate(outputs):
            assert out.time == self.now, out
            self.apply(out, outputs[i - 1] if i else None, cancelled)
        assert not self.moving, f"Overflowed to a queue without Entered there: {self.moving}"
        self.expect_new = ""
        return outputs

    def apply(self, out: Output, before: Output | None, cancelled: set[tuple[str, str]]) -> None:
        if isinstance(out, AgentStateChanged):
            self.agent_changed(out)
            return
        if isinstance(out, Entered):
            self.entered(out)
            return
        call = self.calls.get(out.call_id)
        assert call is not None, f"{out} for a call not in the ACD"
        assert out.queue == call.queue, (out, call.queue)
        if isinstance(out, Offer):
            self.offered(call, out)
        elif isinstance(out, CancelOffer):
            assert out.agent in call.offers, f"{out}: that agent was not ringing"
            del call.offers[out.agent]
            cancelled.add((call.id, out.agent))
        elif isinstance(out, NoAnswer):
            since = call.offers.pop(out.agent, None)
            assert since is not None or (call.id, out.agent) in cancelled, out
            if since is not None:
                assert out.ringing == self.now - since[0], out
        elif isinstance(out, Answered) and call.callback:  # the customer picked up
            assert call.agent == out.agent and not call.reached, out
            assert out.wait == self.now - call.entered, out
            call.reached = True
        elif isinstance(out, Answered | CallbackAttempt):  # the agent picked up
            assert out.agent in call.offers, f"{out}: that agent was not ringing"
            offer_callback = call.offers.pop(out.agent)[1]
            assert offer_callback == call.callback, (
                f"{out}: the offer said callback {offer_callback!r}, the call has {call.callback!r}"
            )
            call.agent = out.agent
            if isinstance(out, Answered):
                assert out.wait == self.now - call.entered, out
            else:
                assert out.number == call.callback, out
                call.attempts += 1
                call.reached = False
                assert out.attempt == call.attempts, out
        elif isinstance(out, CallbackRequested):
            assert out.number == call.callback, out
            assert not call.offers or out.position == 0, out
        elif isinstance(out, Announce):
            assert call.state is CallState.WAITING and not call.callback, out
            assert self.specs[call.queue].announce_every > 0, out
        elif isinstance(out, Overflowed):
            self.overflowed(call, out)
        elif isinstance(out, Abandoned | Exit | Completed | Transferred):
            self.left(call, out, before)
        else:
            raise AssertionError(f"unexpected output {out}")

    def agent_changed(self, out: AgentStateChanged) -> None:
        agent = out.agent
        assert agent in self.state_of, out
        assert out.previous is self.state_of[agent], f"{out}: the agent was {self.state_of[agent]}"
        offered = [c.id for c in self.calls.values() if agent in c.offers]
        connected = [c.id for c in self.calls.values() if c.agent == agent]
        # A new queue list (same state) names no call.
        cause = [out.call_id] if out.call_id or out.state is not out.previous else None
        if out.state is AgentState.RESERVED:
            assert len(offered) == 1 and cause in (offered, None), (out, offered)
        else:
            assert not offered, f"{out}: still ringing with {offered}"
        if out.state is AgentState.ON_CALL:
            assert len(connected) == 1 and cause in (connected, None), (out, connected)
        else:
            assert not connected, f"{out}: still connected to {connected}"
        if out.state is AgentState.WRAP_UP and out.previous is not AgentState.WRAP_UP:
            known = self.calls.get(out.call_id)
            queue = known.queue if known is not None else self.last_queue.get(out.call_id)
            assert queue is not None, out
            self.wrap_until[agent] = self.now + self.specs[queue].wrap_up
        if out.state is AgentState.READY and out.previous not in (AgentState.RESERVED, out.state):
            self.idle_since[agent] = self.now
        self.state_of[agent] = out.state
        self.queues_of[agent] = out.queues

    def entered(self, out: Entered) -> None:
        call = self.calls.get(out.call_id)
        spec = self.specs[out.queue]
        if call is None:
            assert out.call_id == self.expect_new, f"{out}: a call nobody entered"
            call = ModelCall(out.call_id, out.queue, out.priority, self.now)
            self.calls[call.id] = call
        else:
            assert self.moving.pop(call.id, None) == out.queue, f"{out} without Overflowed"
            assert call.state is CallState.WAITING, out
        self.order += 1
        call.queue, call.joined, call.tier = out.queue, self.now, 0
        call.visited.add(out.queue)
        call.key = (call.entered - call.priority * spec.ageing, self.order)
        call.skills, call.pools = dict(spec.skills), frozenset((out.queue,))

    def retried(self, call: ModelCall) -> None:
        """No output says when a callback's retry puts it back in its queue: at the first
        output about it from then on, or at the end of on_timer."""
        if call.retry_at is not None and call.retry_at <= self.now:
            call.retry_at = None

    def offered(self, call: ModelCall, out: Offer) -> None:
        self.retried(call)
        agent = out.agent
        strategy = self.specs[call.queue].strategy
        assert call.state in (CallState.WAITING, CallState.RINGING), out
        if call.offers:
            assert strategy is Strategy.RING_ALL, f"{out}: already ringing {list(call.offers)}"
        assert self.state_of.get(agent) is AgentState.READY, (
            f"{out}: the agent was {self.state_of.get(agent)}"
        )
        assert self.eligible(agent, call), (
            f"{out}: agent in {self.queues_of[agent]} with {self.skills_of[agent]}, the call "
            f"needs {call.skills} in {sorted(call.pools)}"
        )
        assert out.callback == call.callback, out
        if strategy is not Strategy.RING_ALL:
            self.fair(call, agent, strategy)
        call.offers[agent] = (self.now, out.callback)

    def fair(self, call: ModelCall, agent: str, strategy: Strategy) -> None:
        """The agent gets the first call in key order it may take; longest-idle gives the
        call to the Ready eligible agent free the longest."""
        for other in self.calls.values():
            if other is not call and other.state is CallState.WAITING:
                assert not (other.key < call.key and self.eligible(agent, other)), (
                    f"{agent} offered {call.id} (key {call.key}), {other.id} waits with key "
                    f"{other.key}"
                )
        if strategy is Strategy.LONGEST_IDLE:
            idle = self.idle_since[agent]
            for peer, state in self.state_of.items():
                if peer != agent and state is AgentState.READY and self.eligible(peer, call):
                    assert self.idle_since[peer] >= idle, (
                        f"{call.id} offered to {agent} (idle since {idle}), {peer} idle since "
                        f"{self.idle_since[peer]}"
                    )

    def overflowed(self, call: ModelCall, out: Overflowed) -> None:
        self.retried(call)
        assert call.state is CallState.WAITING, f"{out}: the call is {call.state}"
        rule = self.next_rule(call, out.action, out.target)
        assert self.now >= call.joined + rule.after, f"{out}: due at {call.joined + rule.after}"
        assert out.wait == self.now - call.entered, out
        if rule.action is OverflowAction.QUEUE:
            self.moving[call.id] = rule.target
            return
        call.skills, call.pools = self.tier_rules(call)

    def next_rule(self, call: ModelCall, action: OverflowAction, target: str) -> OverflowRule:
        """The rule that fired: the next one from the call's tier after rules that fire
        silently (voicemail for a callback, a move to a queue the call was in)."""
        rules = self.specs[call.queue].overflow
        while call.tier < len(rules):
            rule = rules[call.tier]
            call.tier += 1
            if rule.action is action and rule.target == target:
                return rule
            assert self.silent(call, rule), f"rule {rule} skipped, {action} {target} fired"
        raise AssertionError(f"{action} {target}: no such rule left for {call.id}")

    def silent(self, call: ModelCall, rule: OverflowRule) -> bool:
        if rule.action is OverflowAction.VOICEMAIL:
            return bool(call.callback)
        if rule.action is OverflowAction.QUEUE:
            return rule.target in call.visited or rule.target not in self.specs
        return False

    def tier_rules(self, call: ModelCall) -> tuple[Skills, frozenset[str]]:
        spec = self.specs[call.queue]
        skills, pools = dict(spec.skills), {spec.name}
        for fired in spec.overflow[: call.tier]:
            if fired.action is OverflowAction.RELAX_SKILLS:
                skills = dict(fired.skills)
            elif fired.action is OverflowAction.ADD_AGENTS:
                pools.add(fired.target)
        return skills, frozenset(pools)

    def left(self, call: ModelCall, out: Output, before: Output | None) -> None:
        assert not call.offers, f"{out} while still ringing {list(call.offers)}"
        spec = self.specs[call.queue]
        if isinstance(out, Completed | Transferred):
            assert call.agent == out.agent, f"{out}: connected to {call.agent!r}"
        else:
            assert not call.agent, f"{out} while connected to {call.agent}"
        if isinstance(out, Abandoned | Exit):
            assert out.wait == self.now - call.entered, out
        if isinstance(out, Exit):
            if out.reason is ExitReason.TIMEOUT:
                assert spec.max_wait > 0 and not call.callback, out
                assert self.now >= call.entered + spec.max_wait, out
            elif out.reason is ExitReason.FULL:
                assert isinstance(before, Entered) and before.call_id == call.id, out
                assert spec.max_length > 0, out
            elif out.reason is ExitReason.EMPTY:
                assert not spec.join_empty or spec.leave_empty, out
            elif out.reason is ExitReason.OVERFLOW:
                rule = self.next_rule(call, OverflowAction.VOICEMAIL, out.target)
                assert self.now >= call.joined + rule.after, out
                assert not call.callback, out
            elif out.reason is ExitReason.CALLBACK_FAILED:
                assert call.callback, out
                assert call.given_up or call.attempts >= spec.callback_retries, out
        del self.calls[call.id]
        self.last_queue[call.id] = call.queue

    def eligible(self, agent: str, call: ModelCall) -> bool:
        in_pool = not call.pools.isdisjoint(self.queues_of[agent])
        return in_pool and qualified(self.skills_of[agent], call.skills)

    def ringing(self) -> list[tuple[str, str]]:
        return sorted((c.id, a) for c in self.calls.values() for a in c.offers)

    def connected(self, callback: bool | None = None) -> list[str]:
        return sorted(
            c.id
            for c in self.calls.values()
            if c.agent and (callback is None or bool(c.callback) is callback)
        )

    def snapshot(self) -> tuple[list[AgentStatus], list[CallStatus], float | None]:
        return self.engine.agents(), self.engine.calls(), self.engine.next_timer()

    # ---- configuration

    @initialize(data=st.data())
    def start(self, data: st.DataObject) -> None:
        """A queue and two agents logged in to it: most runs should get to the calls."""
        self.add_queue(data)
        for agent in AGENT_IDS[:2]:
            self.skills_of[agent] = skills = data.draw(AGENT_SKILLS, label="agent skills")
            self.state_of[agent], self.queues_of[agent] = AgentState.LOGGED_OUT, ()
            self.idle_since[agent] = 0.0
            self.run(self.engine.set_agent(AgentSpec(agent, "2" + agent[1:], skills=skills), 0.0))
            self.run(self.engine.login(agent, ["q0"], 0.0))

    @precondition(lambda self: len(self.specs) < len(QUEUE_NAMES))
    @rule(data=st.data())
    def add_queue(self, data: st.DataObject) -> None:
        name = QUEUE_NAMES[len(self.specs)]
        others = sorted(self.specs)
        rule_kinds = list(OverflowAction)
        afters = [0.0, 2.0, 5.0, 10.0, 25.0, 40.0]
        rules = []
        for _ in range(data.draw(st.integers(0, 3), label="rules")):
            action = data.draw(st.sampled_from(rule_kinds), label="action")
            after = data.draw(st.sampled_from(afters), label="after")
            if action is OverflowAction.RELAX_SKILLS:
                relaxed = data.draw(st.sampled_from(NEEDS[:2]), label="relaxed")
                rules.append(OverflowRule(after, action, skills=relaxed))
            elif action is OverflowAction.ADD_AGENTS:
                rules.append(OverflowRule(after, action, data.draw(st.sampled_from(QUEUE_NAMES))))
            elif action is OverflowAction.VOICEMAIL:
                rules.append(OverflowRule(after, action, VOICEMAIL_BOX))
            else:  # to a queue that exists, or to itself (skipped: calls never go back)
                targets = [*others, name]
                rules.append(OverflowRule(after, action, data.draw(st.sampled_from(targets))))
        spec = QueueSpec(
            name,
            skills=data.draw(st.sampled_from(NEEDS), label="skills"),
            strategy=data.draw(st.sampled_from(list(Strategy)), label="strategy"),
            ring_timeout=data.draw(st.sampled_from([5.0, 10.0, 20.0]), label="ring_timeout"),
            wrap_up=data.draw(st.sampled_from([0.0, 0.0, 4.0]), label="wrap_up"),
            max_wait=data.draw(st.sampled_from([0.0, 0.0, 12.0, 30.0, 90.0]), label="max_wait"),
            max_length=data.draw(st.sampled_from([0, 0, 0, 0, 3]), label="max_length"),
            announce_every=data.draw(st.sampled_from([0.0, 0.0, 25.0]), label="announce"),
            join_empty=data.draw(st.sampled_from([True, True, True, False]), label="join_empty"),
            leave_empty=data.draw(st.sampled_from([False, False, False, True]), label="leave"),
            ageing=data.draw(st.sampled_from([0.0, 30.0, 60.0]), label="ageing"),
            overflow=tuple(rules),
            callback_retries=data.draw(st.integers(1, 3), label="retries"),
            callback_retry_delay=data.draw(st.sampled_from([5.0, 30.0]), label="retry_delay"),
        )
        self.specs[name] = spec
        self.run(self.engine.set_queue(spec, self.now))

    @precondition(lambda self: len(self.skills_of) < len(AGENT_IDS))
    @rule(data=st.data(), skills=AGENT_SKILLS)
    def add_agent(self, data: st.DataObject, skills: Skills) -> None:
        """A new agent, logged out; most log in to some queues at once."""
        agent = AGENT_IDS[len(self.skills_of)]
        self.skills_of[agent] = skills
        self.state_of[agent] = AgentState.LOGGED_OUT
        self.queues_of[agent] = ()
        self.idle_since[agent] = self.now
        self.run(self.engine.set_agent(AgentSpec(agent, "2" + agent[1:], skills=skills), self.now))
        queues = data.draw(st.lists(st.sampled_from(sorted(self.specs)), max_size=3, unique=True))
        if queues:
            self.run(self.engine.login(agent, queues, self.now))
            assert self.state_of[agent] in (AgentState.READY, AgentState.RESERVED)

    @precondition(lambda self: self.skills_of)
    @rule(data=st.data(), skills=AGENT_SKILLS)
    def change_skills(self, data: st.DataObject, skills: Skills) -> None:
        agent = data.draw(st.sampled_from(sorted(self.skills_of)))
        self.skills_of[agent] = skills
        spec = AgentSpec(agent, "2" + agent[1:], skills=skills)
        self.run(self.engine.set_agent(spec, self.now))

    # ---- agents

    @precondition(lambda self: self.skills_of)
    @rule(data=st.data())
    def login(self, data: st.DataObject) -> None:
        agent = data.draw(st.sampled_from(sorted(self.skills_of)))
        names = data.draw(st.lists(st.sampled_from(sorted(self.specs)), min_size=1, max_size=3))
        self.run(self.engine.login(agent, names, self.now))

    @precondition(lambda self: any(self.queues_of.values()))
    @rule(data=st.data())
    def logout(self, data: st.DataObject) -> None:
        agent = data.draw(st.sampled_from(sorted(a for a, q in self.queues_of.items() if q)))
        mine = self.queues_of[agent]
        some = data.draw(st.none() | st.lists(st.sampled_from(mine), min_size=1, unique=True))
        self.run(self.engine.logout(agent, self.now, some))
        left = () if some is None else tuple(q for q in mine if q not in some)
        assert self.queues_of[agent] == left, (agent, self.queues_of[agent], left)

    def logged_in(self) -> list[str]:
        return sorted(a for a, s in self.state_of.items() if s is not AgentState.LOGGED_OUT)

    @precondition(lambda self: self.logged_in())
    @rule(data=st.data(), pause=st.sampled_from(["", "", "break", "paused"]))
    def ready_or_pause(self, data: st.DataObject, pause: str) -> None:
        """Ready twice as often as a pause ("paused": the engine's default reason for "")."""
        agent = data.draw(st.sampled_from(self.logged_in()))
        if not pause:
            self.run(self.engine.ready(agent, self.now))
            return
        out = self.run(self.engine.pause(agent, "" if pause == "paused" else pause, self.now))
        if self.state_of[agent] is not AgentState.ON_CALL:
            assert self.state_of[agent] is AgentState.NOT_READY, out
            assert self.engine.agent_status(agent).reason == pause

    # ---- calls

    @rule(
        data=st.data(),
        priority=st.integers(0, 2),
        then=st.sampled_from(["", "", "answer", "callback", "callback, answer"]),
    )
    def enter(self, data: st.DataObject, priority: int, then: str) -> None:
        """A caller joins a queue; then maybe asks for a callback, and maybe an agent it
        rings picks up at once."""
        queue = data.draw(st.sampled_from(sorted(self.specs)))
        spec = self.specs[queue]
        self.serial += 1
        call_id = f"c{self.serial}"
        waiting = [
            c for c in self.calls.values() if c.queue == queue and c.state is CallState.WAITING
        ]
        key = (self.now - priority * spec.ageing, self.order + 1)
        staffed = any(
            queue in self.queues_of[a]
            and s in STAFFING
            and qualified(self.skills_of[a], spec.skills)
            for a, s in self.state_of.items()
        )
        self.expect_new = call_id
        out = self.run(self.engine.enter(call_id, queue, self.now, f"555{self.serial}", priority))
        assert isinstance(out[0], Entered), out
        assert out[0].position == 1 + sum(c.key < key for c in waiting), (out[0], waiting)
        full = spec.max_length > 0 and len(waiting) >= spec.max_length
        empty = not full and not spec.join_empty and not staffed
        refused = [o.reason for o in out if isinstance(o, Exit)]
        assert refused == ([ExitReason.FULL] if full else [ExitReason.EMPTY] if empty else []), out
        call = self.calls.get(call_id)
        if "callback" in then and call is not None:
            self.check()
            self.ask_callback(call)
        call = self.calls.get(call_id)
        if "answer" in then and call is not None and call.offers:
            self.check()
            agent = data.draw(st.sampled_from(sorted(call.offers)))
            self.run(self.engine.answered(call_id, agent, self.now))

    @precondition(lambda self: self.ringing())
    @rule(data=st.data(), failed=st.sampled_from(["", "", "", "no answer", "busy"]))
    def ring_ends(self, data: st.DataObject, failed: str) -> None:
        """The agent answers (three times in five) or their phone fails the offer."""
        call, agent = data.draw(st.sampled_from(self.ringing()))
        if not failed:
            self.run(self.engine.answered(call, agent, self.now))
            assert not self.calls[call].offers and self.calls[call].agent == agent
            return
        out = self.run(self.engine.offer_failed(call, agent, self.now, failed))
        assert any(isinstance(o, NoAnswer) and o.agent == agent for o in out), out
        assert self.state_of[agent] is AgentState.NOT_READY
        assert self.engine.agent_status(agent).reason == failed

    @precondition(lambda self: self.calls)
    @rule(data=st.data())
    def abandon(self, data: st.DataObject) -> None:
        call = data.draw(st.sampled_from(sorted(self.calls)))
        self.ending(self.calls[call])
        out = self.run(self.engine.abandon(call, self.now))
        assert call not in self.calls, out

    @precondition(lambda self: self.connected())
    @rule(data=st.data(), how=st.sampled_from(["", "caller", "agent", "transfer"]))
    def hang_up(self, data: st.DataObject, how: str) -> None:
        """The conversation ends; a callback the customer never answered ends unanswered."""
        call = data.draw(st.sampled_from(self.connected()))
        self.ending(self.calls[call])
        if how == "transfer":
            self.run(self.engine.transferred(call, "3001", self.now))
        else:
            self.run(self.engine.completed(call, self.now, how))
        assert call not in self.calls

    def ending(self, call: ModelCall) -> None:
        """A conversation about to end: a callback nobody answered leaves unanswered, and
        no output says its agent is free before the state change."""
        if call.agent and call.callback and not call.reached:
            call.agent, call.retry_at, call.given_up = "", math.inf, True

    def may_call_back(self) -> list[str]:
        return sorted(
            c.id
            for c in self.calls.values()
            if not c.callback and c.state in (CallState.WAITING, CallState.RINGING)
        )

    @precondition(lambda self: self.may_call_back())
    @rule(data=st.data())
    def request_callback(self, data: st.DataObject) -> None:
        self.ask_callback(self.calls[data.draw(st.sampled_from(self.may_call_back()))])

    def ask_callback(self, call: ModelCall) -> None:
        """A callback from the start of the step: a rule due while the call rang moves it
        as a callback (rung with the number), and past max_wait it stays."""
        call.callback = "0612345678"
        out = self.run(self.engine.request_callback(call.id, call.callback, self.now))
        asked = [o for o in out if isinstance(o, CallbackRequested)]
        assert call.id not in self.calls or len(asked) == 1, out

    def calling_back(self, reached: bool) -> list[str]:
        return [c for c in self.connected(callback=True) if self.calls[c].reached is reached]

    @precondition(lambda self: self.calling_back(reached=False))
    @rule(data=st.data())
    def callback_answered(self, data: st.DataObject) -> None:
        call = data.draw(st.sampled_from(self.calling_back(reached=False)))
        out = self.run(self.engine.callback_answered(call, self.now))
        assert [type(o) for o in out] == [Answered] and self.calls[call].reached, out
        assert self.engine.callback_answered(call, self.now) == []  # once only

    @precondition(lambda self: self.calling_back(reached=False))
    @rule(data=st.data())
    def callback_failed(self, data: st.DataObject) -> None:
        call = self.calls[data.draw(st.sampled_from(self.calling_back(reached=False)))]
        spec = self.specs[call.queue]
        # No output says the agent is free or the call waits for its retry: the step does.
        agent, call.agent, call.retry_at = call.agent, "", math.inf
        out = self.run(self.engine.callback_failed(call.id, self.now))
        assert self.state_of[agent] is not AgentState.ON_CALL, out
        if call.attempts >= spec.callback_retries:
            assert call.id not in self.calls, out
        else:
            assert call.id in self.calls, out
            call.retry_at = self.now + spec.callback_retry_delay

    # ---- time

    @rule(step=st.sampled_from([None, None, 1.0, 3.0, 8.0, 30.0]))
    def advance(self, step: float | None) -> None:
        at = self.engine.next_timer()
        if step is None and at is None:
            return
        self.now = max(self.now, at) if step is None and at is not None else self.now + (step or 0)
        self.run(self.engine.on_timer(self.now))
        for call in self.calls.values():
            self.retried(call)
        after = self.engine.next_timer()
        assert after is None or after > self.now, (after, self.now)

    # ---- wrong calls

    @rule(data=st.data())
    def misuse(self, data: st.DataObject) -> None:
        e, now = self.engine, self.now
        wrongs: list[tuple[str, Callable[..., object], tuple[Any, ...]]] = [
            ("enter into no such queue", e.enter, ("zz", "nope", now)),
            ("log in no such agent", e.login, ("nobody", sorted(self.specs), now)),
            ("ready no such agent", e.ready, ("nobody", now)),
            ("pause no such agent", e.pause, ("nobody", "x", now)),
            ("answer no such call", e.answered, ("zz", AGENT_IDS[0], now)),
            ("fail no such call", e.offer_failed, ("zz", AGENT_IDS[0], now)),
            ("abandon no such call", e.abandon, ("zz", now)),
            ("complete no such call", e.completed, ("zz", now)),
            ("transfer no such call", e.transferred, ("zz", "3001", now)),
            ("callback for no such call", e.request_callback, ("zz", "1", now)),
            ("callback_failed no such call", e.callback_failed, ("zz", now)),
            ("callback_answered no such call", e.callback_answered, ("zz", now)),
        ]
        for agent in sorted(self.skills_of):
            if self.state_of[agent] is AgentState.LOGGED_OUT:
                wrongs.append(("ready logged out", e.ready, (agent, now)))
                wrongs.append(("pause logged out", e.pause, (agent, "x", now)))
                wrongs.append(("log in to no queue", e.login, (agent, [], now)))
            for queue in sorted(set(self.specs) - set(self.queues_of[agent])):
                wrongs.append(("log out of a queue not in", e.logout, (agent, now, [queue])))
            wrongs.append(("log in to no such queue", e.login, (agent, ["nope"], now)))
        for call_id, call in sorted(self.calls.items()):
            wrongs.append(("enter twice", e.enter, (call_id, "q0", now)))
            wrongs.append(("callback without a number", e.request_callback, (call_id, "", now)))
            for agent in sorted(set(self.skills_of) - set(call.offers)):
                wrongs.append(("answer what does not ring", e.answered, (call_id, agent, now)))
                wrongs.append(("fail what does not ring", e.offer_failed, (call_id, agent, now)))
            if not call.agent:
                wrongs.append(("complete unconnected", e.completed, (call_id, now)))
                wrongs.append(("transfer unconnected", e.transferred, (call_id, "1", now)))
            if not call.agent or not call.callback:
                wrongs.append(("callback_failed, no callback", e.callback_failed, (call_id, now)))
                wrongs.append(("callback_answered, none", e.callback_answered, (call_id, now)))
            if call.agent or call.callback:
                wrongs.append(("a second callback", e.request_callback, (call_id, "1", now)))
        what, wrong, args = data.draw(st.sampled_from(wrongs), label="wrong call")
        before = self.snapshot()
        with pytest.raises(AcdError):
            wrong(*args)
        assert self.snapshot() == before, f"{what}: raised but changed the engine"

    # ---- invariants

    def check(self) -> None:
        """Every invariant, in the middle of a step."""
        self.calls_match()
        self.agents_match()
        self.no_ready_agent_left_idle()
        self.rings_one_at_a_time()
        self.timers_on_time()

    @invariant()
    def calls_match(self) -> None:
        engine = self.engine
        listed = engine.calls()
        ids = [c.call_id for c in listed]
        assert len(ids) == len(set(ids)), ids
        assert set(ids) == set(self.calls), (
            f"the engine has {sorted(set(ids) - set(self.calls))} that no output announced, "
            f"lost {sorted(set(self.calls) - set(ids))} without an output saying why"
        )
        for status in listed:
            call = self.calls[status.call_id]
            assert status.queue == call.queue, (status, call)
            assert status.state is call.state, (status, call)
            expected = (call.agent,) if call.agent else tuple(call.offers)
            assert sorted(status.agents) == sorted(expected), (status, call)
            assert status.callback == call.callback, (status, call)
            assert status.skills == call.skills, (status, call)
            assert status.pools == tuple(sorted(call.pools)), (status, call)
            assert status.entered == call.entered and status.priority == call.priority
            engine.explain(status.call_id)
        for queue in self.specs:
            waiting = [c.call_id for c in engine.calls(queue) if c.state is CallState.WAITING]
            mine = sorted((c for c in self.calls.values() if c.queue == queue
                           and c.state is CallState.WAITING), key=lambda c: c.key)  # fmt: skip
            assert waiting == [c.id for c in mine], f"{queue}: order {waiting}"
            for position, call_id in enumerate(waiting, 1):
                found = engine.call_status(call_id)
                assert found is not None and found.position == position, found

    @invariant()
    def agents_match(self) -> None:
        statuses = self.engine.agents()
        assert sorted(s.id for s in statuses) == sorted(self.state_of)
        for status in statuses:
            agent = status.id
            assert status.state is self.state_of[agent], (status, self.state_of[agent])
            assert status.queues == self.queues_of[agent], (status, self.queues_of[agent])
            assert status.skills == self.skills_of[agent], status
            assert len(set(status.queues)) == len(status.queues), f"{agent}: {status.queues}"
            if status.state is AgentState.LOGGED_OUT:
                assert not status.queues, f"{agent} logged out, still in {status.queues}"
            elif status.state is not AgentState.ON_CALL:
                assert status.queues, f"{agent} is {status.state.value} in no queue"
            offers = [(c, c.offers[agent]) for c in self.calls.values() if agent in c.offers]
            connected = [c.id for c in self.calls.values() if c.agent == agent]
            if status.state is AgentState.RESERVED:
                assert len(offers) == 1, f"{agent} reserved, ringing {offers}"
                call, (since, _) = offers[0]
                assert status.call_id == call.id, status
                timeout = self.specs[call.queue].ring_timeout
                assert self.now <= since + timeout, (
                    f"{agent} reserved for {call.id} since {since}, now {self.now}, ring "
                    f"timeout {timeout}"
                )
            else:
                assert not offers, f"{agent} is {status.state.value}, ringing {offers}"
            if status.state is AgentState.ON_CALL:
                assert connected == [status.call_id], (status, connected)
            else:
                assert not connected, (status, connected)
                if status.state is not AgentState.RESERVED:
                    assert status.call_id == "", status

    @invariant()
    def no_ready_agent_left_idle(self) -> None:
        waiting = [c for c in self.calls.values() if c.state is CallState.WAITING]
        for agent, state in self.state_of.items():
            if state is AgentState.READY:
                for call in waiting:
                    assert not self.eligible(agent, call), (
                        f"{agent} is Ready in {self.queues_of[agent]} with "
                        f"{self.skills_of[agent]}, {call.id} waits for {call.skills} in "
                        f"{sorted(call.pools)}"
                    )

    @invariant()
    def rings_one_at_a_time(self) -> None:
        for call in self.calls.values():
            if self.specs[call.queue].strategy is not Strategy.RING_ALL:
                assert len(call.offers) <= 1, (call.id, call.offers)

    @invariant()
    def timers_on_time(self) -> None:
        at = self.engine.next_timer()
        if at is not None and at <= self.now:
            return  # a step left a timer due now: nothing is late until on_timer runs
        for call in self.calls.values():
            spec = self.specs[call.queue]
            if call.state is CallState.RETRY:
                assert call.retry_at is not None and self.now < call.retry_at
            if call.state is not CallState.WAITING:
                continue
            late = spec.max_wait > 0 and self.now >= call.entered + spec.max_wait
            assert call.callback or not late, f"{call.id} waits past max_wait {spec.max_wait}"
            due = 0
            while due < len(spec.overflow) and self.now >= call.joined + spec.overflow[due].after:
                due += 1
            for missed in spec.overflow[call.tier : due]:
                assert self.silent(call, missed), (
                    f"{call.id} joined {call.queue} at {call.joined}; {missed} is due but did "
                    f"not fire (now {self.now})"
                )
        for agent, until in self.wrap_until.items():
            if self.state_of[agent] is AgentState.WRAP_UP:
                assert self.now < until, f"{agent} wraps up past {until}"


AcdMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestAcdMachine = AcdMachine.TestCase


# ---- regressions: the bugs the machine found, smallest reproductions


def engine_with_queue(*specs: QueueSpec, agents: tuple[str, ...] = ("a",)) -> Engine:
    engine = Engine()
    for spec in specs:
        engine.set_queue(spec, 0.0)
    for agent in agents:
        engine.set_agent(AgentSpec(agent, "201"), 0.0)
    return engine


def agent_on_a_call() -> Engine:
    """Agent a in queue q, talking to caller c since 1 s."""
    engine = engine_with_queue(QueueSpec("q"))
    engine.login("a", ["q"], 0.0)
    engine.enter("c", "q", 0.0)
    engine.answered("c", "a", 1.0)
    return engine


def test_regression_logout_then_ready_during_a_call() -> None:
    engine = agent_on_a_call()
    engine.logout("a", 2.0)  # applies when the call ends
    engine.ready("a", 3.0)  # once cancelled the logout: Ready in no queue after the call
    engine.completed("c", 4.0)
    status = engine.agent_status("a")
    assert (status.state, status.queues) == (AgentState.LOGGED_OUT, ())


def test_regression_logout_then_pause_during_a_call() -> None:
    engine = agent_on_a_call()
    engine.logout("a", 2.0)
    engine.pause("a", "break", 3.0)  # once replaced the logout: Not Ready in no queue
    engine.completed("c", 4.0)
    status = engine.agent_status("a")
    assert (status.state, status.queues) == (AgentState.LOGGED_OUT, ())


def test_regression_logout_then_login_during_a_call() -> None:
    engine = agent_on_a_call()
    engine.logout("a", 2.0)
    engine.login("a", ["q"], 3.0)  # back in before the call ends
    engine.completed("c", 4.0)
    status = engine.agent_status("a")
    # Once LOGGED_OUT after the call, yet still a member of q.
    assert (status.state, status.queues) == (AgentState.READY, ("q",)), status


def test_regression_logout_during_a_call_is_said() -> None:
    engine = agent_on_a_call()
    out = engine.logout("a", 2.0)
    # The agent is in no queue from now on; no AgentStateChanged said so until the call
    # ended (leaving some of the queues did emit one).
    assert engine.agent_status("a").queues == ()
    assert any(isinstance(o, AgentStateChanged) and o.queues == () for o in out), out


def test_regression_login_twice_to_one_queue() -> None:
    engine = engine_with_queue(QueueSpec("q"))
    engine.login("a", ["q", "q"], 0.0)
    assert engine.agent_status("a").queues == ("q",)


def test_regression_callback_asked_while_ringing_past_max_wait() -> None:
    engine = engine_with_queue(QueueSpec("q", max_wait=10.0, ring_timeout=15.0))
    engine.enter("c", "q", 0.0)
    engine.login("a", ["q"], 5.0)  # rings a from 5 s
    # Past max_wait while it rang: the caller asked in time, so the callback is taken (once
    # the call left, then was routed again: IndexError, or another caller's place taken).
    out = engine.request_callback("c", "0612345678", 12.0)
    assert [type(o) for o in out if isinstance(o, (CallbackRequested, Exit))] == [CallbackRequested]
    status = engine.call_status("c")
    assert status is not None and status.callback == "0612345678"


def test_regression_callback_asked_while_ringing_as_a_move_falls_due() -> None:
    spec = QueueSpec("q1", overflow=(OverflowRule(5.0, OverflowAction.QUEUE, "q0"),))
    engine = engine_with_queue(QueueSpec("q0"), spec, agents=("a", "b"))
    engine.login("a", ["q1"], 0.0)
    engine.enter("c", "q1", 0.0)  # rings a
    engine.login("b", ["q0"], 1.0)
    out = engine.request_callback("c", "0612345678", 6.0)
    # The move fell due while it rang: c goes to q0 and rings b there, as a callback (once
    # as a live caller, Offer.callback "", the CallbackRequested after it).
    assert [(o.agent, o.callback) for o in out if isinstance(o, Offer)] == [("b", "0612345678")]


def test_regression_callback_request_rings_the_same_agent_before_calls_ahead() -> None:
    engine = engine_with_queue(QueueSpec("q"))
    engine.login("a", ["q"], 0.0)
    engine.enter("c1", "q", 0.0)  # rings a
    engine.enter("c2", "q", 1.0, priority=1)  # ahead of c1 (key 1 - 60 < 0)
    out = engine.request_callback("c1", "0612345678", 2.0)
    # CallbackRequested says c1 is at position 2; a was once offered c1 again, not c2 (the
    # call was routed before the agent it freed looked for the first call it may take).
    assert [(o.call_id, o.agent) for o in out if isinstance(o, Offer)] == [("c2", "a")]


def test_regression_callback_retry_loses_overflow_rules() -> None:
    spec = QueueSpec(
        "q",
        callback_retry_delay=10.0,
        overflow=(OverflowRule(100.0, OverflowAction.ADD_AGENTS, "r"),),
    )
    engine = engine_with_queue(spec, QueueSpec("r"), agents=("a", "b"))
    engine.login("a", ["q"], 0.0)
    engine.enter("c", "q", 0.0)
    engine.request_callback("c", "0612345678", 1.0)
    engine.answered("c", "a", 2.0)
    engine.callback_failed("c", 3.0)  # the call's timers die with the attempt...
    engine.pause("a", "break", 4.0)
    engine.on_timer(13.0)  # ...and the retry once armed no rule timer again
    engine.login("b", ["r"], 14.0)
    engine.on_timer(200.0)
    status = engine.call_status("c")
    assert status is not None and "r" in status.pools, status  # add-agents fired


def test_regression_voicemail_skipped_for_callback_stops_rules() -> None:
    spec = QueueSpec(
        "q",
        overflow=(
            OverflowRule(10.0, OverflowAction.VOICEMAIL, "vm"),
            OverflowRule(20.0, OverflowAction.ADD_AGENTS, "r"),
        ),
    )
    engine = engine_with_queue(QueueSpec("r"), spec, agents=("b",))
    engine.login("b", ["r"], 0.0)
    engine.enter("c", "q", 0.0)
    engine.request_callback("c", "0612345678", 1.0)
    engine.on_timer(10.0)  # voicemail skipped for a callback (once: no timer for rule 2)
    out = engine.on_timer(30.0)
    assert any(isinstance(o, Offer) and o.agent == "b" for o in out), out


def test_regression_move_to_own_queue_stops_rules() -> None:
    spec = QueueSpec(
        "q",
        overflow=(
            OverflowRule(10.0, OverflowAction.QUEUE, "q"),
            OverflowRule(20.0, OverflowAction.ADD_AGENTS, "r"),
        ),
    )
    engine = engine_with_queue(QueueSpec("r"), spec, agents=("b",))
    engine.login("b", ["r"], 0.0)
    engine.enter("c", "q", 0.0)
    engine.on_timer(10.0)  # the move to its own queue is skipped (once: no timer for rule 2)
    out = engine.on_timer(30.0)
    assert any(isinstance(o, Offer) and o.agent == "b" for o in out), out


@pytest.mark.timeout(2)
def test_regression_zero_second_overflow_cycle() -> None:
    engine = Engine()
    engine.set_queue(QueueSpec("a", overflow=(OverflowRule(0.0, OverflowAction.QUEUE, "b"),)), 0)
    engine.set_queue(QueueSpec("b", overflow=(OverflowRule(0.0, OverflowAction.QUEUE, "a"),)), 0)
    engine.enter("c", "a", 0.0)
    out = engine.on_timer(0.0)  # once never returned: a -> b -> a ... at 0 s
    assert [o.queue for o in out if isinstance(o, Entered)] == ["b"], out


def test_regression_callback_request_passes_over_the_longest_idle() -> None:
    spec = QueueSpec(
        "q", skills={"en": 1}, overflow=(OverflowRule(10.0, OverflowAction.RELAX_SKILLS),)
    )
    engine = engine_with_queue(spec, agents=())
    engine.set_agent(AgentSpec("a", "201", skills={"en": 1}), 0.0)
    engine.set_agent(AgentSpec("b", "202"), 0.0)
    engine.login("b", ["q"], 0.0)  # free since 0, but without "en"
    engine.login("a", ["q"], 1.0)
    engine.enter("c", "q", 2.0)  # rings a, the only one with "en"
    out = engine.request_callback("c", "0612345678", 12.0)  # the relaxation fell due
    # Anyone may take c now, and b has been free longest: c once rang a again, the agent
    # it freed taking it before the call was routed by its strategy.
    assert [o.agent for o in out if isinstance(o, Offer)] == ["b"], out


def test_regression_callback_request_passes_over_an_agent_freed_meanwhile() -> None:
    engine = engine_with_queue(QueueSpec("q"), agents=("a", "b"))
    engine.login("b", ["q"], 0.0)
    engine.login("a", ["q"], 1.0)
    engine.enter("c1", "q", 2.0)  # rings b, free longest
    engine.enter("c2", "q", 3.0)  # rings a
    engine.abandon("c1", 4.0)  # b is Ready again, still free since 0; nothing waits
    out = engine.request_callback("c2", "0612345678", 5.0)
    assert [o.agent for o in out if isinstance(o, Offer)] == ["b"], out


def test_regression_callback_retry_rung_at_once_loses_overflow_rules() -> None:
    spec = QueueSpec(
        "q",
        skills={"en": 1},
        ring_timeout=5.0,
        callback_retry_delay=5.0,
        overflow=(OverflowRule(40.0, OverflowAction.RELAX_SKILLS),),
    )
    engine = engine_with_queue(spec, agents=())
    engine.set_agent(AgentSpec("a", "201", skills={"en": 1}), 0.0)
    engine.login("a", ["q"], 0.0)
    engine.enter("c", "q", 0.0)
    engine.request_callback("c", "0612345678", 0.0)
    engine.answered("c", "a", 0.0)
    engine.callback_failed("c", 0.0)  # the call's timers die with the attempt
    engine.on_timer(5.0)  # the retry rings a at once (once: no rule timer from then on)
    engine.on_timer(10.0)  # no answer: c waits again
    assert engine.next_timer() == 40.0
    out = engine.on_timer(40.0)
    assert [o.action for o in out if isinstance(o, Overflowed)] == [OverflowAction.RELAX_SKILLS]
    status = engine.call_status("c")
    assert status is not None and status.skills == {}, status
