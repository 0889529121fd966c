"""acd.stats: queue and agent figures folded from hand-built output sequences, exactly."""

from __future__ import annotations

import dataclasses
import json
import typing
from enum import Enum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acd.model import (
    EVENT_OF,
    OUTPUT_OF,
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
    LoggedEvent,
    NoAnswer,
    Offer,
    Output,
    OverflowAction,
    Overflowed,
    Transferred,
)
from acd.stats import AgentStats, QueueStats, Statistics

S = AgentState
Q = "sales"


def enter(t: float, call: str, queue: str = Q, position: int = 1) -> Entered:
    return Entered(t, queue, call, caller="5550100", priority=0, position=position)


def offer(t: float, call: str, agent: str, queue: str = Q) -> Offer:
    return Offer(t, queue, call, agent=agent, extension="2" + agent[-3:])


def agent_state(
    t: float, agent: str, state: AgentState, previous: AgentState, reason: str = "", call: str = ""
) -> AgentStateChanged:
    return AgentStateChanged(t, "", call, agent, state, previous, reason, (Q,))


def figures(stats: Statistics, queue: str, now: float) -> dict[str, Any]:
    return stats.queue_stats(queue, now).to_json()


def test_one_call_answered_one_abandoned_one_rona() -> None:
    stats = Statistics()
    stats.feed_all(
        [
            enter(0, "c1"),
            offer(1, "c1", "a1"),
            enter(5, "c2", position=2),
            Answered(4, Q, "c1", "a1", wait=4.0),
            enter(10, "c3", position=2),
            offer(11, "c3", "a2"),
            NoAnswer(26, Q, "c3", "a2", ringing=15.0),
            Abandoned(40, Q, "c2", wait=35.0, position=1),
            Completed(64, Q, "c1", "a1", talk=60.0, by="caller"),
            offer(64, "c3", "a1"),
            Answered(66, Q, "c3", "a1", wait=56.0),
            Transferred(96, Q, "c3", "a1", target="1005", talk=30.0),
        ]
    )
    assert stats.queue_stats(Q, 100) == QueueStats(
        queue=Q,
        service_level_seconds=20.0,
        offered=3,
        answered=2,
        abandoned=1,
        exited=0,
        waiting=0,
        ringing=0,
        callbacks_waiting=0,
        longest_wait=0.0,
        service_level=100.0 * 1 / 3,  # c1 within 20 s; c3 answered and c2 abandoned after
        answered_within_sl=1,
        abandoned_after_sl=1,
        average_speed_of_answer=30.0,
        max_wait_answered=56.0,
        average_abandon_wait=35.0,
        handled=2,
        talk_time=90.0,
        wrap_up_time=0.0,
        average_handle_time=45.0,
        rona=1,
        callbacks_requested=0,
        callback_attempts=0,
        overflowed=0,
        overflowed_in=0,
        exit_reasons={},
    )
    a1, a2 = stats.agent_stats("a1", 100), stats.agent_stats("a2", 100)
    assert (a1.calls, a1.handled, a1.talk_time, a1.offers, a1.rona) == (2, 2, 90.0, 2, 0)
    assert (a2.calls, a2.handled, a2.talk_time, a2.offers, a2.rona) == (0, 0, 0.0, 1, 1)
    assert stats.queues() == [Q]
    assert stats.agents() == ["a1", "a2"]


def test_waiting_ringing_and_longest_wait_at_now() -> None:
    stats = Statistics()
    stats.feed_all([enter(0, "c1"), enter(3, "c2", position=2), enter(7, "c3", position=3)])
    stats.feed_all([offer(8, "c1", "a1"), offer(8, "c1", "a2"), offer(8, "c2", "a3")])  # ring-all
    stats.feed(CancelOffer(9, Q, "c1", "a2", "ring timeout"))
    now = figures(stats, Q, 10)
    assert (now["waiting"], now["ringing"], now["longest_wait"]) == (3, 2, 10.0)
    stats.feed(Answered(12, Q, "c1", "a1", wait=12.0))
    stats.feed(CancelOffer(12, Q, "c1", "a2", "answered elsewhere"))  # already gone: ignored
    later = figures(stats, Q, 20)
    assert (later["waiting"], later["ringing"], later["longest_wait"]) == (2, 1, 17.0)
    stats.feed(NoAnswer(23, Q, "c2", "a3", ringing=15.0))
    assert (figures(stats, Q, 23)["ringing"], figures(stats, Q, 23)["rona"]) == (0, 1)
    assert figures(stats, Q, 2)["longest_wait"] == 0.0  # a `now` before every entry: not < 0


def test_service_level_answered_within_t_over_answered_and_late_abandons() -> None:
    stats = Statistics({"billing": 30.0}, default=20.0)
    for queue in (Q, "billing"):
        stats.feed_all(
            [
                Answered(100, queue, "c1", "a1", wait=20.0),  # within T: wait <= T
                Answered(100, queue, "c2", "a1", wait=25.0),
                Abandoned(100, queue, "c3", wait=10.0, position=1),  # short: left out
                Abandoned(100, queue, "c4", wait=40.0, position=1),
            ]
        )
    sales, billing = stats.queue_stats(Q, 100), stats.queue_stats("billing", 100)
    assert (sales.answered_within_sl, sales.abandoned_after_sl) == (1, 1)
    assert sales.service_level == pytest.approx(100.0 / 3)
    assert (billing.service_level_seconds, billing.answered_within_sl) == (30.0, 2)
    assert billing.service_level == pytest.approx(200.0 / 3)
    assert sales.average_abandon_wait == 25.0
    # Nothing judged yet: undefined, not 0 % or 100 %.
    assert Statistics().queue_stats(Q, 0).service_level is None


def test_service_level_change_applies_to_later_calls() -> None:
    stats = Statistics()
    stats.feed(Answered(0, Q, "c1", "a1", wait=25.0))
    stats.set_service_level(Q, 30.0)
    stats.feed(Answered(1, Q, "c2", "a1", wait=25.0))
    result = stats.queue_stats(Q, 1)
    assert (result.service_level_seconds, result.answered_within_sl, result.service_level) == (
        30.0,
        1,
        50.0,
    )


def test_exits_and_refusals() -> None:
    stats = Statistics()
    stats.feed_all(
        [
            enter(0, "c1"),
            Exit(300, Q, "c1", ExitReason.TIMEOUT, wait=300.0),
            Exit(301, Q, "c2", ExitReason.FULL, wait=0.0),  # refused: never entered
            enter(302, "c3"),
            Exit(310, Q, "c3", ExitReason.EMPTY, wait=8.0),  # leave_empty: it had entered
        ]
    )
    result = stats.queue_stats(Q, 400)
    assert (result.offered, result.exited, result.waiting) == (3, 3, 0)
    assert result.exit_reasons == {"empty": 1, "full": 1, "timeout": 1}


@pytest.mark.parametrize(
    "departure",
    [("overflowed", "exit"), ("exit", "overflowed"), ("overflowed",), ("exit",)],
)
def test_overflow_to_another_queue_counts_once_and_keeps_the_wait(
    departure: tuple[str, ...],
) -> None:
    stats = Statistics()
    stats.feed_all([enter(0, "c1"), enter(10, "c0", "billing"), offer(50, "c1", "a1")])
    stats.feed(CancelOffer(60, Q, "c1", "a1", "moved"))
    outputs = {
        "overflowed": Overflowed(60, Q, "c1", OverflowAction.QUEUE, "billing", wait=60.0),
        "exit": Exit(60, Q, "c1", ExitReason.OVERFLOW, wait=60.0, target="billing"),
    }
    stats.feed_all(outputs[name] for name in departure)
    stats.feed(enter(60, "c1", "billing", position=2))
    old, new = stats.queue_stats(Q, 70), stats.queue_stats("billing", 70)
    assert (old.offered, old.exited, old.waiting, old.exit_reasons) == (1, 1, 0, {"overflow": 1})
    assert old.overflowed == departure.count("overflowed")
    assert (new.offered, new.overflowed_in, new.waiting, new.longest_wait) == (2, 1, 2, 70.0)
    stats.feed(Answered(75, "billing", "c1", "a2", wait=75.0))
    assert stats.queue_stats("billing", 75).longest_wait == 65.0  # c0 is left


def test_overflow_that_keeps_the_call_and_one_to_voicemail() -> None:
    stats = Statistics()
    stats.feed_all(
        [
            enter(0, "c1"),
            enter(0, "c2"),
            Overflowed(30, Q, "c1", OverflowAction.RELAX_SKILLS, "", wait=30.0),
            Overflowed(30, Q, "c1", OverflowAction.ADD_AGENTS, "billing", wait=30.0),
            Overflowed(40, Q, "c2", OverflowAction.VOICEMAIL, "1000", wait=40.0),
            Exit(40, Q, "c2", ExitReason.OVERFLOW, wait=40.0, target="1000"),
        ]
    )
    result = stats.queue_stats(Q, 50)
    assert (result.offered, result.waiting, result.exited, result.overflowed) == (2, 1, 1, 3)
    assert result.longest_wait == 50.0


def test_a_call_back_in_the_queue_it_overflowed_from_counts_again() -> None:
    stats = Statistics()
    for t in (0, 100):  # out of voicemail (pressing 0) into the queue again, twice over
        stats.feed_all(
            [
                enter(t, "c1"),
                Overflowed(t + 50, Q, "c1", OverflowAction.VOICEMAIL, "1000", wait=50.0),
                Exit(t + 50, Q, "c1", ExitReason.OVERFLOW, wait=50.0, target="1000"),
            ]
        )
    result = stats.queue_stats(Q, 200)
    assert (result.offered, result.exited, result.overflowed_in, result.waiting) == (2, 2, 0, 0)


def test_moved_without_a_departure_output_is_closed_in_the_old_queue() -> None:
    stats = Statistics()
    stats.feed_all([enter(0, "c1"), enter(5, "c1", "billing")])
    old, new = stats.queue_stats(Q, 10), stats.queue_stats("billing", 10)
    assert (old.exited, old.waiting, new.offered, new.overflowed_in, new.longest_wait) == (
        1,
        0,
        1,
        1,
        10.0,
    )
    stats.feed(enter(6, "c1", "billing"))  # a repeated Entered changes nothing
    assert stats.queue_stats("billing", 10) == new


def test_callbacks() -> None:
    stats = Statistics()
    stats.feed_all(
        [
            enter(0, "c1"),
            CallbackRequested(30, Q, "c1", number="5550100", position=1),
            offer(90, "c1", "a1"),
        ]
    )
    waiting = stats.queue_stats(Q, 95)
    assert (waiting.waiting, waiting.ringing, waiting.callbacks_waiting) == (1, 1, 1)
    assert waiting.longest_wait == 95.0  # the caller keeps its place while called back
    stats.feed_all(
        [
            CallbackAttempt(95, Q, "c1", "a1", "5550100", attempt=1),
            Answered(110, Q, "c1", "a1", wait=110.0),
        ]
    )
    done = stats.queue_stats(Q, 120)
    assert (done.callbacks_requested, done.callback_attempts, done.answered) == (1, 1, 1)
    assert (done.waiting, done.ringing, done.callbacks_waiting) == (0, 0, 0)
    stats.feed_all(
        [
            enter(200, "c2"),
            CallbackRequested(210, Q, "c2", number="5550101", position=1),
            Exit(900, Q, "c2", ExitReason.CALLBACK_FAILED, wait=700.0),
        ]
    )
    failed = stats.queue_stats(Q, 900)
    assert (failed.exited, failed.callbacks_waiting, failed.exit_reasons) == (
        1,
        0,
        {"callback_failed": 1},
    )


AGENT_DAY = [
    agent_state(0, "a1", S.READY, S.LOGGED_OUT),
    enter(8, "c1"),
    offer(10, "c1", "a1"),
    agent_state(10, "a1", S.RESERVED, S.READY, call="c1"),
    Answered(15, Q, "c1", "a1", wait=7.0),
    agent_state(15, "a1", S.ON_CALL, S.RESERVED, call="c1"),
    Completed(75, Q, "c1", "a1", talk=60.0),
    agent_state(75, "a1", S.WRAP_UP, S.ON_CALL, call="c1"),
    agent_state(90, "a1", S.READY, S.WRAP_UP),
    agent_state(100, "a1", S.NOT_READY, S.READY, reason="break"),
]


def test_agent_state_times_occupancy_and_wrap_up_in_handle_time() -> None:
    stats = Statistics()
    stats.feed_all(AGENT_DAY)
    assert stats.agent_stats("a1", 130) == AgentStats(
        agent="a1",
        state=S.NOT_READY,
        state_since=100.0,
        reason="break",
        queues=(Q,),
        calls=1,
        handled=1,
        talk_time=60.0,
        offers=1,
        rona=0,
        occupancy=75.0,  # (60 on call + 15 wrap-up) / (75 + 20 ready + 5 ringing)
        state_times={
            "logged_out": 0.0,
            "ready": 20.0,
            "reserved": 5.0,
            "on_call": 60.0,
            "wrap_up": 15.0,
            "not_ready": 30.0,  # the current state, up to `now`
        },
        not_ready_reasons={"break": 30.0},
        logged_in_time=130.0,
    )
    queue = stats.queue_stats(Q, 130)
    assert (queue.talk_time, queue.wrap_up_time, queue.average_handle_time) == (60.0, 15.0, 75.0)
    stats.feed_all(
        [
            agent_state(160, "a1", S.NOT_READY, S.NOT_READY, reason="lunch"),
            agent_state(200, "a1", S.LOGGED_OUT, S.NOT_READY),
        ]
    )
    evening = stats.agent_stats("a1", 1000)
    assert evening.not_ready_reasons == {"break": 60.0, "lunch": 40.0}
    assert (evening.logged_in_time, evening.state_times["logged_out"]) == (200.0, 800.0)
    assert (evening.state, evening.reason, evening.occupancy) == (S.LOGGED_OUT, "", 75.0)


def test_wrap_up_counts_for_handle_time_once_it_ends() -> None:
    stats = Statistics()
    stats.feed_all(AGENT_DAY[:8])  # a1 is in wrap-up since 75
    assert stats.queue_stats(Q, 80).average_handle_time == 60.0
    assert stats.agent_stats("a1", 80).state_times["wrap_up"] == 5.0


def test_unknown_names_give_empty_figures() -> None:
    stats = Statistics()
    stats.feed(Announce(0, Q, "c1", position=1, estimated_wait=None))
    assert stats.queues() == [Q] and stats.agents() == []
    empty = stats.queue_stats("nobody", 10)
    assert (empty.offered, empty.average_speed_of_answer, empty.average_handle_time) == (
        0,
        None,
        None,
    )
    agent = stats.agent_stats("ghost", 10)
    assert (agent.state, agent.state_since, agent.occupancy, agent.logged_in_time) == (
        S.LOGGED_OUT,
        None,
        None,
        0.0,
    )


def test_agents_first_state_change_starts_its_clock() -> None:
    stats = Statistics()
    stats.feed(agent_state(50, "a1", S.NOT_READY, S.READY, reason="break"))  # ready since?
    result = stats.agent_stats("a1", 60)
    assert (result.state_times["ready"], result.logged_in_time, result.occupancy) == (
        0.0,
        10.0,
        None,
    )
    assert stats.queues() == [Q]  # the queues it is logged into are named


def test_to_json_is_plain_json() -> None:
    stats = Statistics()
    stats.feed_all(AGENT_DAY)
    queue = json.loads(json.dumps(stats.queue_stats(Q, 130).to_json()))
    agent = json.loads(json.dumps(stats.agent_stats("a1", 130).to_json()))
    assert (queue["queue"], queue["answered"], queue["service_level"]) == (Q, 1, 100.0)
    assert (agent["state"], agent["queues"], agent["state_times"]["on_call"]) == (
        "not_ready",
        [Q],
        60.0,
    )
    assert type(agent["state"]) is str


# ---- rebuilding from the log


def to_row(output: Output) -> str:
    """A queue_log row as JSON: the event name and the output's fields."""
    return json.dumps({"event": EVENT_OF[type(output)].value, **dataclasses.asdict(output)})


def from_row(row: str) -> Output:
    data = json.loads(row)
    kind = OUTPUT_OF[LoggedEvent(data.pop("event"))]
    hints = typing.get_type_hints(kind)
    values: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if isinstance(hint, type) and issubclass(hint, Enum):
            value = hint(value)
        elif typing.get_origin(hint) is tuple:
            value = tuple(value)
        values[name] = value
    return kind(**values)


def rebuilt(outputs: list[Output], service_levels: dict[str, float]) -> Statistics:
    stats = Statistics(service_levels)
    stats.feed_all(from_row(to_row(output)) for output in outputs)
    return stats


def assert_same_figures(a: Statistics, b: Statistics, now: float) -> None:
    assert a.queues() == b.queues() and a.agents() == b.agents()
    for queue in a.queues():
        assert a.queue_stats(queue, now) == b.queue_stats(queue, now)
    for agent in a.agents():
        assert a.agent_stats(agent, now) == b.agent_stats(agent, now)


def test_statistics_rebuild_from_the_log() -> None:
    day: list[Output] = [
        *AGENT_DAY,
        enter(101, "c2"),
        CallbackRequested(105, Q, "c2", number="5550101", position=1),
        enter(106, "c3", "billing"),
        Overflowed(130, "billing", "c3", OverflowAction.QUEUE, Q, wait=24.0),
        Exit(130, "billing", "c3", ExitReason.OVERFLOW, wait=24.0, target=Q),
        enter(130, "c3", position=2),
        offer(131, "c3", "a2"),
        NoAnswer(146, Q, "c3", "a2", ringing=15.0),
        agent_state(146, "a2", S.NOT_READY, S.RESERVED, reason="no answer", call="c3"),
        Abandoned(150, Q, "c3", wait=44.0, position=2),
        Exit(151, Q, "c4", ExitReason.FULL, wait=0.0),
    ]
    rows = [to_row(output) for output in day]
    assert [from_row(row) for row in rows] == day
    live = Statistics({"billing": 30.0})
    live.feed_all(day)
    replayed = rebuilt(day, {"billing": 30.0})
    for now in (151.0, 200.0, 3600.0):
        assert_same_figures(live, replayed, now)
    assert live.queue_stats("billing", 200).exit_reasons == {"overflow": 1}


# ---- a random engine-like run against a simple model of it

QUEUES = ("sales", "billing")
AGENTS = ("a1", "a2", "a3")
ACTIONS = (
    "enter",
    "full",
    "offer",
    "cancel",
    "rona",
    "answer",
    "abandon",
    "timeout",
    "overflow",
    "voicemail",
    "relax",
    "callback",
    "agent",
)


@dataclasses.dataclass
class Waiting:
    queue: str
    origin: float
    ringing: set[str] = dataclasses.field(default_factory=set)
    callback: bool = False


@dataclasses.dataclass
class Expected:
    offered: int = 0
    answered: int = 0
    abandoned: int = 0
    exited: int = 0
    overflowed_in: int = 0
    within: int = 0
    late_abandons: int = 0


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_random_runs_add_up_and_rebuild(data: st.DataObject) -> None:
    now, serial = 0.0, 0
    waiting: dict[str, Waiting] = {}
    expected = {queue: Expected() for queue in QUEUES}
    states = dict.fromkeys(AGENTS, S.LOGGED_OUT)
    outputs: list[Output] = []
    levels = {"sales": 20.0, "billing": 10.0}

    for _ in range(data.draw(st.integers(0, 60), label="steps")):
        now += data.draw(st.integers(0, 30), label="dt")
        action = data.draw(st.sampled_from(ACTIONS), label="action")
        calls = sorted(waiting)
        call_id = data.draw(st.sampled_from(calls)) if calls else ""
        call = waiting.get(call_id)
        if action in ("enter", "full") or call is None:
            serial += 1
            queue = data.draw(st.sampled_from(QUEUES))
            expected[queue].offered += 1
            if action == "full":
                expected[queue].exited += 1
                outputs.append(Exit(now, queue, f"c{serial}", ExitReason.FULL, 0.0))
            else:
                waiting[f"c{serial}"] = Waiting(queue, now)
                outputs.append(enter(now, f"c{serial}", queue))
            continue
        queue, wait = call.queue, now - call.origin
        if action == "offer":
            agent = data.draw(st.sampled_from(AGENTS))
            if agent not in call.ringing:
                call.ringing.add(agent)
                outputs.append(offer(now, call_id, agent, queue))
        elif action in ("cancel", "rona") and call.ringing:
            agent = data.draw(st.sampled_from(sorted(call.ringing)))
            call.ringing.discard(agent)
            outputs.append(
                CancelOffer(now, queue, call_id, agent, "caller left")
                if action == "cancel"
                else NoAnswer(now, queue, call_id, agent, 15.0)
            )
        elif action == "answer":
            agent = data.draw(st.sampled_from(sorted(call.ringing) or AGENTS))
            del waiting[call_id]
            expected[queue].answered += 1
            expected[queue].within += wait <= levels[queue]
            outputs.append(Answered(now, queue, call_id, agent, wait))
            outputs += [
                CancelOffer(now, queue, call_id, other, "answered elsewhere")
                for other in sorted(call.ringing - {agent})
            ]
            outputs.append(Completed(now + 60, queue, call_id, agent, 60.0))
        elif action in ("abandon", "timeout", "voicemail"):
            del waiting[call_id]
            outputs += [
                CancelOffer(now, queue, call_id, other, "caller left")
                for other in sorted(call.ringing)
            ]
            if action == "abandon":
                expected[queue].abandoned += 1
                expected[queue].late_abandons += wait > levels[queue]
                outputs.append(Abandoned(now, queue, call_id, wait, 1))
            elif action == "timeout":
                expected[queue].exited += 1
                outputs.append(Exit(now, queue, call_id, ExitReason.TIMEOUT, wait))
            else:
                expected[queue].exited += 1
                outputs.append(Overflowed(now, queue, call_id, OverflowAction.VOICEMAIL, "1", wait))
                outputs.append(Exit(now, queue, call_id, ExitReason.OVERFLOW, wait, "1"))
        elif action == "overflow":
            target = "billing" if queue == "sales" else "sales"
            outputs += [
                CancelOffer(now, queue, call_id, other, "moved") for other in sorted(call.ringing)
            ]
            departure = [
                Overflowed(now, queue, call_id, OverflowAction.QUEUE, target, wait),
                Exit(now, queue, call_id, ExitReason.OVERFLOW, wait, target),
            ]
            order = data.draw(st.sampled_from([(0, 1), (1, 0), (0,), (1,)]))
            outputs += [departure[i] for i in order]
            outputs.append(enter(now, call_id, target))
            expected[queue].exited += 1
            expected[target].offered += 1
            expected[target].overflowed_in += 1
            waiting[call_id] = Waiting(target, call.origin)
        elif action == "relax":
            outputs.append(Overflowed(now, queue, call_id, OverflowAction.RELAX_SKILLS, "", wait))
        elif action == "callback":
            call.callback = True
            outputs.append(CallbackRequested(now, queue, call_id, "5550100", 1))
        elif action == "agent":
            agent = data.draw(st.sampled_from(AGENTS))
            state = data.draw(st.sampled_from(list(S)))
            outputs.append(agent_state(now, agent, state, states[agent], reason="break"))
            states[agent] = state

    stats = Statistics(levels)
    stats.feed_all(outputs)
    now += data.draw(st.integers(0, 100), label="query later")
    for queue in QUEUES:
        got, want = stats.queue_stats(queue, now), expected[queue]
        mine = [call for call in waiting.values() if call.queue == queue]
        assert got.offered == got.answered + got.abandoned + got.exited + got.waiting
        assert (got.offered, got.answered, got.abandoned, got.exited, got.overflowed_in) == (
            want.offered,
            want.answered,
            want.abandoned,
            want.exited,
            want.overflowed_in,
        )
        assert (got.answered_within_sl, got.abandoned_after_sl) == (want.within, want.late_abandons)
        assert got.waiting == len(mine)
        assert got.ringing == sum(1 for call in mine if call.ringing)
        assert got.callbacks_waiting == sum(1 for call in mine if call.callback)
        assert got.longest_wait == max((now - call.origin for call in mine), default=0.0)
        assert sum(got.exit_reasons.values()) == got.exited
        assert got.service_level is None or 0.0 <= got.service_level <= 100.0
    for agent in stats.agents():
        figures = stats.agent_stats(agent, now)
        assert figures.occupancy is None or 0.0 <= figures.occupancy <= 100.0
        total = sum(figures.state_times.values())
        assert figures.logged_in_time == pytest.approx(total - figures.state_times["logged_out"])
    assert_same_figures(stats, rebuilt(outputs, levels), now)
