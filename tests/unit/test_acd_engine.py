"""The ACD engine on its own clock: strategies, priorities, skills, overflow, RONA,
wrap-up, callbacks, announcements and the rules of empty or full queues."""

from __future__ import annotations

import random
from typing import TypeVar

import pytest

from acd.engine import CallState, Engine
from acd.model import (
    Abandoned,
    AcdError,
    AgentSpec,
    AgentState,
    AgentStateChanged,
    Announce,
    Answered,
    CallbackAttempt,
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
    Strategy,
)

Out = TypeVar("Out", bound=Output)


def offers(outputs: list[Output]) -> list[tuple[str, str]]:
    return [(o.call_id, o.agent) for o in outputs if isinstance(o, Offer)]


def of(kind: type[Out], outputs: list[Output]) -> list[Out]:
    return [o for o in outputs if isinstance(o, kind)]


def engine_with(spec: QueueSpec, *agents: AgentSpec, ready_at: list[float] | None = None,
                rng: random.Random | None = None) -> Engine:  # fmt: skip
    engine = Engine(rng)
    engine.set_queue(spec, 0.0)
    for i, agent in enumerate(agents):
        engine.set_agent(agent, 0.0)
        engine.login(agent.id, [spec.name], ready_at[i] if ready_at else float(i))
    return engine


def agent(agent_id: str, **skills: int) -> AgentSpec:
    return AgentSpec(agent_id, "2" + agent_id[-3:].rjust(3, "0"), skills=dict(skills))


def state(engine: Engine, agent_id: str) -> AgentState:
    return engine.agent_status(agent_id).state


def drive(engine: Engine, until: float) -> list[Output]:
    """Fire every timer due up to `until`, in order."""
    out: list[Output] = []
    while (at := engine.next_timer()) is not None and at <= until:
        out += engine.on_timer(at)
    return out


def test_a_call_reaches_a_ready_agent_and_the_agent_wraps_up() -> None:
    engine = engine_with(QueueSpec("q", wrap_up=10.0), agent("a1"))
    out = engine.enter("c1", "q", 5.0, caller="1001")
    assert isinstance(out[0], Entered) and out[0].position == 1
    assert offers(out) == [("c1", "a1")] and state(engine, "a1") is AgentState.RESERVED
    engine.answered("c1", "a1", 7.0)
    assert state(engine, "a1") is AgentState.ON_CALL
    done = engine.completed("c1", 67.0, by="caller")
    assert of(Completed, done) == [Completed(67.0, "q", "c1", "a1", 60.0, "caller")]
    assert state(engine, "a1") is AgentState.WRAP_UP
    assert engine.next_timer() == 77.0
    drive(engine, 77.0)
    assert state(engine, "a1") is AgentState.READY
    assert engine.call_status("c1") is None  # nothing left behind


def test_the_agent_freed_by_wrap_up_takes_the_next_waiting_call() -> None:
    engine = engine_with(QueueSpec("q", wrap_up=5.0), agent("a1"))
    engine.enter("c1", "q", 0.0)
    assert offers(engine.enter("c2", "q", 1.0)) == []
    engine.answered("c1", "a1", 2.0)
    engine.completed("c1", 10.0)
    assert offers(drive(engine, 15.0)) == [("c2", "a1")]


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (Strategy.LONGEST_IDLE, "a1"),  # free since 13, a2 since 101, a3 since 200
        (Strategy.FEWEST_CALLS, "a3"),  # a1 and a2 took a call each
        (Strategy.LEAST_TALK_TIME, "a3"),  # no talk yet; a1 10 s, a2 100 s
        (Strategy.BEST_SKILL_MATCH, "a3"),  # billing 9 against 3 and 5
    ],
)
def test_strategies_choose_the_agent_they_promise(strategy: Strategy, expected: str) -> None:
    engine = Engine()
    engine.set_queue(QueueSpec("q", skills={"billing": 1}, strategy=strategy), 0.0)
    for agent_id, level in (("a1", 3), ("a2", 5), ("a3", 9)):
        engine.set_agent(agent(agent_id, billing=level), 0.0)
    engine.login("a2", ["q"], 0.0)
    assert offers(engine.enter("x1", "q", 1.0)) == [("x1", "a2")]
    engine.answered("x1", "a2", 1.0)
    engine.login("a1", ["q"], 2.0)
    assert offers(engine.enter("x2", "q", 3.0)) == [("x2", "a1")]
    engine.answered("x2", "a1", 3.0)
    engine.completed("x2", 13.0)
    engine.completed("x1", 101.0)
    engine.login("a3", ["q"], 200.0)
    assert offers(engine.enter("c1", "q", 300.0)) == [("c1", expected)]


def test_round_robin_takes_turns_in_login_order() -> None:
    engine = engine_with(
        QueueSpec("q", strategy=Strategy.ROUND_ROBIN), *map(agent, ("a1", "a2", "a3"))
    )
    chosen = []
    for i in range(6):
        [(call_id, agent_id)] = offers(engine.enter(f"c{i}", "q", 10.0 + i))
        chosen.append(agent_id)
        engine.answered(call_id, agent_id, 10.0 + i)
        engine.completed(call_id, 10.5 + i)
    assert chosen == ["a1", "a2", "a3", "a1", "a2", "a3"]


def test_random_strategy_is_deterministic_for_a_seed_and_spreads_calls() -> None:
    def run(seed: int) -> list[str]:
        engine = engine_with(QueueSpec("q", strategy=Strategy.RANDOM),
                             *map(agent, ("a1", "a2", "a3")), rng=random.Random(seed))  # fmt: skip
        picks = []
        for i in range(60):
            [(call_id, agent_id)] = offers(engine.enter(f"c{i}", "q", 10.0 + i))
            picks.append(agent_id)
            engine.answered(call_id, agent_id, 10.0 + i)
            engine.completed(call_id, 10.5 + i)
        return picks

    assert run(7) == run(7)
    assert all(run(7).count(a) >= 10 for a in ("a1", "a2", "a3"))


def test_ring_all_rings_everyone_and_the_first_to_answer_wins() -> None:
    engine = engine_with(
        QueueSpec("q", strategy=Strategy.RING_ALL), *map(agent, ("a1", "a2", "a3"))
    )
    out = engine.enter("c1", "q", 5.0)
    assert sorted(a for _, a in offers(out)) == ["a1", "a2", "a3"]
    answered = engine.answered("c1", "a2", 6.0)
    cancelled = sorted((o.agent, o.reason) for o in of(CancelOffer, answered))
    assert cancelled == [("a1", "answered elsewhere"), ("a3", "answered elsewhere")]
    assert [state(engine, a) for a in ("a1", "a2", "a3")] == [
        AgentState.READY, AgentState.ON_CALL, AgentState.READY]  # fmt: skip


def test_an_agent_who_becomes_ready_joins_a_ring_all_call_already_ringing() -> None:
    engine = engine_with(QueueSpec("q", strategy=Strategy.RING_ALL), agent("a1"))
    engine.set_agent(agent("a2"), 0.0)
    engine.enter("c1", "q", 5.0)
    out = engine.login("a2", ["q"], 6.0)
    assert offers(out) == [("c1", "a2")]
    status = engine.call_status("c1")
    assert status is not None and sorted(status.agents) == ["a1", "a2"]


def test_ring_all_timeout_rings_again_without_pausing_anyone() -> None:
    engine = engine_with(QueueSpec("q", strategy=Strategy.RING_ALL, ring_timeout=10.0),
                         agent("a1"), agent("a2"))  # fmt: skip
    engine.enter("c1", "q", 5.0)
    out = drive(engine, 15.0)
    assert not of(NoAnswer, out)
    assert sorted(a for _, a in offers(out)) == ["a1", "a2"]


def test_priority_goes_first_and_ageing_keeps_low_priority_from_starving() -> None:
    engine = engine_with(QueueSpec("q", ageing=60.0), agent("a1"))
    engine.enter("busy", "q", 0.0)
    engine.answered("busy", "a1", 0.0)
    engine.enter("low", "q", 10.0, priority=0)
    engine.enter("high", "q", 20.0, priority=1)  # worth 60 s: ahead of "low"
    engine.enter("old", "q", 30.0, priority=0)
    assert engine.call_status("high").position == 1  # type: ignore[union-attr]
    engine.enter("urgent-late", "q", 100.0, priority=1)  # 100-60=40 > 10: behind "low"
    order = [c.call_id for c in engine.calls("q") if c.state is CallState.WAITING]
    assert order == ["high", "low", "old", "urgent-late"]


def test_an_agent_in_two_queues_takes_the_longest_waiting_call_across_them() -> None:
    engine = Engine()
    engine.set_queue(QueueSpec("billing"), 0.0)
    engine.set_queue(QueueSpec("pharmacy"), 0.0)
    engine.set_agent(agent("a1"), 0.0)
    engine.enter("b1", "billing", 10.0)
    engine.enter("p1", "pharmacy", 5.0)
    engine.enter("b2", "billing", 1.0)
    out = engine.login("a1", ["billing", "pharmacy"], 20.0)
    assert offers(out) == [("b2", "a1")]
    engine.answered("b2", "a1", 20.0)
    assert offers(engine.completed("b2", 30.0)) == [("p1", "a1")]


def test_no_answer_pauses_the_agent_and_the_call_keeps_its_place() -> None:
    engine = engine_with(QueueSpec("q", ring_timeout=15.0), agent("a1"), agent("a2"))
    engine.pause("a2", "lunch", 1.0)
    engine.enter("c1", "q", 2.0)
    engine.enter("c2", "q", 3.0)
    out = drive(engine, 17.0)
    assert [o.agent for o in of(NoAnswer, out)] == ["a1"]
    assert [(o.agent, o.reason) for o in of(CancelOffer, out)] == [("a1", "ring timeout")]
    assert engine.agent_status("a1").reason == "no answer"
    assert state(engine, "a1") is AgentState.NOT_READY
    assert engine.call_status("c1").position == 1  # type: ignore[union-attr]
    assert offers(engine.ready("a2", 20.0)) == [("c1", "a2")]


def test_an_offer_the_phone_refuses_is_a_no_answer_too() -> None:
    engine = engine_with(QueueSpec("q"), agent("a1"), agent("a2"))
    engine.enter("c1", "q", 5.0)
    out = engine.offer_failed("c1", "a1", 6.0, reason="busy")
    assert engine.agent_status("a1").reason == "busy"
    assert offers(out) == [("c1", "a2")]
    with pytest.raises(AcdError):
        engine.answered("c1", "a1", 7.0)


def test_skills_a_call_never_reaches_an_agent_without_all_of_them() -> None:
    spec = QueueSpec("spanish-pharmacy", skills={"spanish": 5, "pharmacy": 1})
    engine = engine_with(spec, agent("a1", spanish=9), agent("a2", pharmacy=9, spanish=4),
                         agent("a3", spanish=5))  # fmt: skip
    assert offers(engine.enter("c1", "spanish-pharmacy", 10.0)) == []
    assert offers(drive(engine, 10_000.0)) == []
    assert "a2 lacks spanish 4<5" in engine.explain("c1")[-1]
    engine.set_agent(agent("a4", spanish=5, pharmacy=1), 20.0)
    assert offers(engine.login("a4", ["spanish-pharmacy"], 20.0)) == [("c1", "a4")]


def test_relaxed_skills_after_the_configured_delay() -> None:
    rule = OverflowRule(30.0, OverflowAction.RELAX_SKILLS, skills={"spanish": 3})
    spec = QueueSpec("es", skills={"spanish": 5, "pharmacy": 1}, overflow=(rule,))
    engine = engine_with(spec, agent("a1", spanish=4))
    assert offers(engine.enter("c1", "es", 100.0)) == []
    assert offers(drive(engine, 129.9)) == []
    out = drive(engine, 130.0)
    assert of(Overflowed, out) and offers(out) == [("c1", "a1")]
    assert any("relax" in line for line in engine.explain("c1"))


def test_overflow_adds_another_queues_agents_after_a_delay() -> None:
    rule = OverflowRule(60.0, OverflowAction.ADD_AGENTS, target="backup")
    engine = Engine()
    engine.set_queue(QueueSpec("front", overflow=(rule,)), 0.0)
    engine.set_queue(QueueSpec("backup"), 0.0)
    engine.set_agent(agent("b1"), 0.0)
    engine.login("b1", ["backup"], 0.0)
    assert offers(engine.enter("c1", "front", 10.0)) == []
    assert offers(drive(engine, 70.0)) == [("c1", "b1")]
    # a backup agent who becomes ready finds such calls too, and only those
    engine.answered("c1", "b1", 70.0)
    engine.enter("c2", "front", 71.0)  # not widened yet
    assert offers(engine.completed("c1", 80.0)) == []
    assert offers(drive(engine, 131.0)) == [("c2", "b1")]


def test_overflow_to_voicemail_and_to_another_queue_keep_the_wait() -> None:
    rules = (OverflowRule(30.0, OverflowAction.QUEUE, target="nurse"),)
    engine = Engine()
    engine.set_queue(QueueSpec("front", overflow=rules), 0.0)
    engine.set_queue(QueueSpec("nurse", overflow=(
        OverflowRule(20.0, OverflowAction.VOICEMAIL, target="refills"),)), 0.0)  # fmt: skip
    engine.enter("c1", "front", 0.0, priority=2)
    moved = drive(engine, 30.0)
    assert [type(o) for o in moved] == [Overflowed, Entered]
    assert engine.call_status("c1").queue == "nurse"  # type: ignore[union-attr]
    gone = drive(engine, 50.0)
    assert gone == [Exit(50.0, "nurse", "c1", ExitReason.OVERFLOW, 50.0, "refills")]


def test_max_wait_max_length_and_empty_queues() -> None:
    engine = Engine()
    engine.set_queue(QueueSpec("q", max_wait=90.0, max_length=2, join_empty=False), 0.0)
    engine.set_agent(agent("a1"), 0.0)
    refused = engine.enter("c0", "q", 0.0)
    assert refused[-1] == Exit(0.0, "q", "c0", ExitReason.EMPTY, 0.0)
    engine.login("a1", ["q"], 0.0)
    engine.pause("a1", "break", 0.0)
    assert of(Exit, engine.enter("p1", "q", 0.5))  # a paused agent answers nobody
    engine.ready("a1", 1.0)
    assert offers(engine.enter("c1", "q", 1.0)) == [("c1", "a1")]
    engine.enter("c2", "q", 2.0)
    engine.enter("c3", "q", 3.0)
    full = engine.enter("c4", "q", 4.0)
    assert [o.reason for o in of(Exit, full)] == [ExitReason.FULL]
    timeouts = drive(engine, 100.0)
    # c1 rang a1 out (no answer at 16 s), went back to its place and waited 90 s too
    assert [(o.call_id, o.time) for o in of(Exit, timeouts)] == [
        ("c1", 91.0), ("c2", 92.0), ("c3", 93.0)]  # fmt: skip
    assert {o.reason for o in of(Exit, timeouts)} == {ExitReason.TIMEOUT}


def test_leave_empty_sends_callers_on_when_the_last_agent_goes() -> None:
    engine = engine_with(QueueSpec("q", leave_empty=True), agent("a1"))
    engine.enter("c1", "q", 1.0)
    engine.answered("c1", "a1", 2.0)
    engine.enter("c2", "q", 3.0)
    engine.pause("a1", "end of shift", 4.0)  # applies after the call
    out = engine.completed("c1", 10.0)
    assert [(o.call_id, o.reason) for o in of(Exit, out)] == [("c2", ExitReason.EMPTY)]


def test_announcements_give_position_and_estimated_wait() -> None:
    engine = engine_with(QueueSpec("q", announce_every=30.0), agent("a1"))
    engine.enter("c0", "q", 0.0)
    engine.answered("c0", "a1", 0.0)
    engine.enter("c1", "q", 1.0)
    engine.enter("c2", "q", 2.0)
    first = of(Announce, drive(engine, 32.0))
    assert [(o.call_id, o.position, o.estimated_wait) for o in first] == [
        ("c1", 1, None), ("c2", 2, None)]  # fmt: skip
    engine.completed("c0", 40.0)  # 40 s handled: the estimate is position * 40 s / 1 agent
    engine.answered("c1", "a1", 41.0)
    later = of(Announce, drive(engine, 62.0))
    assert [(o.call_id, o.position, o.estimated_wait) for o in later] == [("c2", 1, 40.0)]


def test_callback_keeps_the_place_and_retries_until_it_gives_up() -> None:
    spec = QueueSpec("q", callback_retries=2, callback_retry_delay=60.0, max_wait=100.0)
    engine = engine_with(spec, agent("a1"))
    engine.enter("busy", "q", 0.0)
    engine.answered("busy", "a1", 0.0)
    engine.enter("c1", "q", 1.0)
    engine.enter("c2", "q", 2.0)
    engine.request_callback("c1", "+15551234567", 5.0)
    assert engine.call_status("c1").position == 1  # type: ignore[union-attr]
    out = drive(engine, 150.0)  # max_wait ends c2, never the callback
    assert [o.call_id for o in of(Exit, out)] == ["c2"]
    [offer] = of(Offer, engine.completed("busy", 200.0))
    assert (offer.call_id, offer.callback) == ("c1", "+15551234567")
    attempt = engine.answered("c1", "a1", 201.0)
    assert of(CallbackAttempt, attempt) == [
        CallbackAttempt(201.0, "q", "c1", "a1", "+15551234567", 1)]  # fmt: skip
    assert not of(Answered, attempt)  # answered when the customer picks up
    engine.callback_failed("c1", 230.0)
    assert state(engine, "a1") is AgentState.READY
    assert offers(drive(engine, 289.0)) == []
    assert offers(drive(engine, 290.0)) == [("c1", "a1")]
    engine.answered("c1", "a1", 291.0)
    out = engine.callback_failed("c1", 300.0)
    assert not of(Answered, out)  # nobody was reached: never answered
    assert [o.reason for o in of(Exit, out)] == [ExitReason.CALLBACK_FAILED]
    assert engine.call_status("c1") is None


def test_abandon_while_waiting_and_while_ringing() -> None:
    engine = engine_with(QueueSpec("q"), agent("a1"))
    engine.enter("c1", "q", 0.0)
    engine.enter("c2", "q", 1.0)
    out = engine.abandon("c2", 31.0)
    assert out == [Abandoned(31.0, "q", "c2", 30.0, 1)]  # c1 rings: c2 is first in line
    out = engine.abandon("c1", 40.0)
    assert [type(o) for o in out] == [CancelOffer, AgentStateChanged, Abandoned]
    assert state(engine, "a1") is AgentState.READY


def test_pause_and_logout_asked_during_a_call_apply_when_it_ends() -> None:
    engine = engine_with(QueueSpec("q", wrap_up=30.0), agent("a1"), agent("a2"))
    engine.enter("c1", "q", 0.0)
    engine.enter("c2", "q", 0.0)
    engine.answered("c1", "a1", 1.0)
    engine.answered("c2", "a2", 1.0)
    assert engine.pause("a1", "lunch", 2.0) == []
    engine.logout("a2", 2.0)
    assert state(engine, "a2") is AgentState.ON_CALL
    engine.completed("c1", 10.0)
    engine.completed("c2", 10.0)
    assert (state(engine, "a1"), engine.agent_status("a1").reason) == (
        AgentState.NOT_READY,
        "lunch",
    )
    assert state(engine, "a2") is AgentState.LOGGED_OUT


def test_an_agent_paused_while_ringing_hands_the_call_on() -> None:
    engine = engine_with(QueueSpec("q"), agent("a1"), agent("a2"))
    engine.enter("c1", "q", 5.0)
    out = engine.pause("a1", "break", 6.0)
    assert offers(out) == [("c1", "a2")]
    assert state(engine, "a1") is AgentState.NOT_READY


def test_explain_says_why_this_agent() -> None:
    engine = engine_with(QueueSpec("q"), agent("a1"), agent("a2"))
    engine.enter("c1", "q", 5.0)
    lines = engine.explain("c1")
    assert "longest-idle: a1" in lines[0] and lines[-1] == "ringing a1"


def test_wrong_calls_get_clear_errors_and_change_nothing() -> None:
    engine = engine_with(QueueSpec("q"), agent("a1"))
    with pytest.raises(AcdError, match="no queue named 'nope'"):
        engine.enter("c1", "nope", 0.0)
    with pytest.raises(AcdError, match="no agent"):
        engine.ready("ghost", 0.0)
    with pytest.raises(AcdError, match="no queue"):
        engine.login("a1", ["q", "nope"], 0.0)
    engine.enter("c1", "q", 0.0)
    with pytest.raises(AcdError, match="already"):
        engine.enter("c1", "q", 0.0)
    with pytest.raises(AcdError, match="not connected"):
        engine.completed("c1", 1.0)
    assert engine.call_status("c1").state is CallState.RINGING  # type: ignore[union-attr]


def test_a_callback_is_answered_when_the_customer_picks_up() -> None:
    engine = engine_with(QueueSpec("q"), agent("a1"))
    engine.pause("a1", "busy", 0.0)
    engine.enter("c1", "q", 1.0)
    engine.request_callback("c1", "1001", 2.0)
    engine.ready("a1", 10.0)
    engine.answered("c1", "a1", 11.0)
    assert engine.callback_answered("c1", 15.0) == [Answered(15.0, "q", "c1", "a1", 14.0)]
    assert of(Completed, engine.completed("c1", 75.0))[0].talk == 64.0


def test_an_agent_who_hangs_up_on_an_unanswered_callback_ends_it() -> None:
    engine = engine_with(QueueSpec("q"), agent("a1"))
    engine.enter("c1", "q", 1.0)
    engine.request_callback("c1", "1001", 2.0)  # a1 is ringing with it at once
    engine.answered("c1", "a1", 3.0)
    out = engine.completed("c1", 9.0, by="agent")
    assert [o.reason for o in of(Exit, out)] == [ExitReason.CALLBACK_FAILED]
    assert state(engine, "a1") is AgentState.READY
