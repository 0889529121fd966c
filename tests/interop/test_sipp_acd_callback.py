"""Queue callbacks with real SIP peers. 1001's phone is SIPp on one port P: registered
from P (register.xml), it calls the queue from P, waits while the only agent is paused,
presses `*` as a SIP INFO (application/dtmf-relay) and is hung up on by pbx ("we will call
you back"). Then SIPp listens on P as the same phone (uas_callback.xml), the agent is made
Ready, the agent's phone (SIPp, uas_agent.xml) answers, and pbx calls 1001 back at its
registered contact: the customer answers (and later hangs up), or is busy (486) and the ACD
tries again after the queue's callback_retry_delay, up to callback_retries attempts.

What happened is read as in test_sipp_acd.py: `pbx events --json`, the queue log
(`Store.queue_log()`) and `pbx queue show --json`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from acd.model import (
    Abandoned,
    Answered,
    CallbackAttempt,
    CallbackRequested,
    Completed,
    Exit,
    ExitReason,
    Offer,
    Output,
)
from tests.interop.test_sipp_acd import (
    CALLER,
    MEDIA,
    NUMBER,
    QUEUE,
    Agent,
    EventLog,
    agent_rows,
    agents,
    assert_succeeded,
    following,
    logged,
    of,
    pbx,
    queue_stats,
    start_acd,
)
from tests.support.pbxproc import PbxProcess
from tests.support.ports import free_port, wait_bound
from tests.support.sipp import SippResult, run_sipp, write_users_csv

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

CUSTOMER = CALLER[0]
TALK_MS = 1000
"""How long the customer talks to the agent once called back, before hanging up."""
RETRY_DELAY = 1.0


def start(pbx_proc: PbxProcess, tmp_path: Path, *queue_args: str) -> tuple[Agent, int]:
    """One agent (alice) in the queue, her phone registered; 1001's phone registered from
    a port of its own, returned."""
    [alice] = team = agents("alice")
    start_acd(pbx_proc, tmp_path, team, "--ring-timeout", "5", *queue_args)
    port = free_port(both=False)
    registered = run_sipp(
        "register.xml", ("127.0.0.1", pbx_proc.port), tmp_path, local_port=port, calls=1,
        inf=write_users_csv(tmp_path / "customer.csv", [CALLER]),
    )  # fmt: skip
    assert registered.returncode == 0, registered.explain()
    return alice, port


def ask_for_callback(pbx_proc: PbxProcess, tmp_path: Path, port: int, events: EventLog) -> None:
    """1001 calls the queue from `port` and presses `*` 500 ms after pbx answers; pbx hangs
    up on it, and the call waits in the queue as a callback to 1001."""
    caller = run_sipp(
        "uac_queue_callback.xml", ("127.0.0.1", pbx_proc.port), tmp_path, local_port=port,
        calls=1, timeout=20, inf=write_users_csv(tmp_path / "caller.csv", [CALLER]),
        extra=["-s", NUMBER, *MEDIA, "-d", "500"],
    )  # fmt: skip
    assert_succeeded(caller, 1)
    dtmf = events.wait(type="dtmf")
    assert (dtmf["digit"], dtmf["source"], dtmf["party"]) == ("*", "info", CUSTOMER), dtmf
    requested = events.wait(type="queue_callback_requested")
    assert (requested["queue"], requested["number"], requested["position"]) == (
        QUEUE, CUSTOMER, 1,
    ), requested  # fmt: skip
    entered = events.wait(type="queue_entered")
    assert entered["call_id"] == requested["call_id"]
    # Nobody rang: the agent is paused. The callback waits.
    stats = queue_stats(pbx_proc)
    assert (stats["waiting"], stats["callbacks_waiting"], stats["abandoned"]) == (1, 1, 0), stats


@contextmanager
def phones(
    pbx_proc: PbxProcess, tmp_path: Path, agent: Agent, customer_port: int,
    answers: Sequence[int],
) -> Iterator[tuple[Future[SippResult], Future[SippResult]]]:  # fmt: skip
    """The agent's phone (uas_agent.xml) and 1001's phone (uas_callback.xml) from their
    ports, in the background, for one call per entry of `answers`: the status 1001's phone
    answers each callback with (200: talk TALK_MS, then hang up; 486: busy)."""
    target = ("127.0.0.1", pbx_proc.port)
    csv = tmp_path / "answers.csv"
    csv.write_text("SEQUENTIAL\n" + "".join(f"{status};\n" for status in answers))
    calls = len(answers)
    with ThreadPoolExecutor(2) as pool:
        agent_run = pool.submit(
            run_sipp, "uas_agent.xml", target, tmp_path, local_port=agent.port, calls=calls,
            timeout=25, extra=[*MEDIA, "-mp", str(free_port(both=False))],
        )  # fmt: skip
        customer_run = pool.submit(
            run_sipp, "uas_callback.xml", target, tmp_path, local_port=customer_port,
            calls=calls, timeout=25, inf=csv,
            extra=[*MEDIA, "-mp", str(free_port(both=False)), "-d", str(TALK_MS)],
        )  # fmt: skip
        # SIPp binds its port a moment after it starts (see test_sipp_acd.phones): under
        # load, a callback INVITE sent before waited out the ring timeout unanswered.
        wait_bound(agent.port, customer_port)
        yield agent_run, customer_run


def assert_counted_once(stats: dict[str, Any]) -> None:
    """acd/stats.py's invariant: each caller offered is answered, abandoned, exited or
    still waiting, once (a callback is answered when the customer picks up, not at each
    attempt the agent takes)."""
    total = stats["answered"] + stats["abandoned"] + stats["exited"] + stats["waiting"]
    assert total == stats["offered"], stats


def ended(outputs: list[Output]) -> bool:
    return bool(of(Completed, outputs) or of(Abandoned, outputs) or of(Exit, outputs))


def test_callback_is_answered_and_bridged_to_the_agent(
    pbx_proc: PbxProcess, tmp_path: Path
) -> None:
    """1001 asks for a callback while the only agent is paused; once she is Ready her phone
    rings, she answers, pbx calls 1001 back at its registered contact, 1001 answers and
    talks, then hangs up: one callback requested, one attempt, answered and completed."""
    alice, port = start(pbx_proc, tmp_path)
    with following(pbx_proc, alice) as events:
        pbx(pbx_proc, "agent", "pause", alice.id, "--reason", "meeting")
        events.wait(type="agent_state", agent=alice.id, state="not_ready")
        ask_for_callback(pbx_proc, tmp_path, port, events)
        with phones(pbx_proc, tmp_path, alice, port, [200]) as (agent_run, customer_run):
            pbx(pbx_proc, "agent", "ready", alice.id)
            agent_result = agent_run.result(timeout=40)
            customer_result = customer_run.result(timeout=40)
        assert_succeeded(agent_result, 1)  # answered, then BYE from pbx
        assert_succeeded(customer_result, 1)  # called back, answered, hung up
        offered = events.wait(type="queue_offered", agent=alice.id)
        attempt = events.wait(type="queue_callback_attempt")
        answered = events.wait(type="queue_answered")
        done = events.wait(type="queue_completed")
    assert offered["callback"] == CUSTOMER, offered
    assert (attempt["agent"], attempt["number"], attempt["attempt"]) == (alice.id, CUSTOMER, 1)
    assert answered["agent"] == alice.id
    assert (done["agent"], done["by"]) == (alice.id, "caller"), done
    # The talk is the customer's: from the agent's answer, through the callback's ringing,
    # to the customer's BYE.
    assert TALK_MS / 1000 <= done["talk"] <= TALK_MS / 1000 + 3.0, done
    outputs = logged(pbx_proc, ended)
    [requested] = of(CallbackRequested, outputs)
    assert (requested.number, requested.position) == (CUSTOMER, 1)
    assert [(a.agent, a.number, a.attempt) for a in of(CallbackAttempt, outputs)] == [
        (alice.id, CUSTOMER, 1)
    ]
    assert [o.callback for o in of(Offer, outputs)] == [CUSTOMER]
    assert [a.agent for a in of(Answered, outputs)] == [alice.id]
    assert [(c.agent, c.by) for c in of(Completed, outputs)] == [(alice.id, "caller")]
    assert of(Abandoned, outputs) == of(Exit, outputs) == []
    call_ids = {o.call_id for o in outputs if o.call_id}
    assert call_ids == {requested.call_id}, outputs
    stats = queue_stats(pbx_proc)
    assert (stats["callbacks_requested"], stats["callback_attempts"]) == (1, 1), stats
    assert (stats["offered"], stats["answered"], stats["handled"]) == (1, 1, 1), stats
    assert (stats["abandoned"], stats["exited"], stats["waiting"]) == (0, 0, 0), stats
    assert stats["callbacks_waiting"] == 0, stats
    assert_counted_once(stats)
    rows = agent_rows(pbx_proc)
    assert rows[alice.id]["stats"]["calls"] == 1, rows


def test_a_busy_customer_is_called_again_after_the_retry_delay(
    pbx_proc: PbxProcess, tmp_path: Path
) -> None:
    """--callback-retries 2 --callback-retry-delay 1: the first callback finds 1001 busy
    (486): the agent is hung up on, and 1 s later the ACD rings her again; she answers,
    the second callback reaches 1001, who answers: attempts 1 and 2, then completed."""
    alice, port = start(pbx_proc, tmp_path, "--callback-retries", "2",
                        "--callback-retry-delay", str(RETRY_DELAY))  # fmt: skip
    with following(pbx_proc, alice) as events:
        pbx(pbx_proc, "agent", "pause", alice.id, "--reason", "meeting")
        events.wait(type="agent_state", agent=alice.id, state="not_ready")
        ask_for_callback(pbx_proc, tmp_path, port, events)
        with phones(pbx_proc, tmp_path, alice, port, [486, 200]) as (agent_run, customer_run):
            pbx(pbx_proc, "agent", "ready", alice.id)
            agent_result = agent_run.result(timeout=40)
            customer_result = customer_run.result(timeout=40)
        assert_succeeded(agent_result, 2)  # both answered, both ended by pbx's BYE
        assert_succeeded(customer_result, 2)  # busy, then answered and hung up
        done = events.wait(type="queue_completed")
    assert (done["agent"], done["by"]) == (alice.id, "caller"), done
    outputs = logged(pbx_proc, ended)
    first, second = attempts = of(CallbackAttempt, outputs)
    assert [(a.agent, a.number, a.attempt) for a in attempts] == [
        (alice.id, CUSTOMER, 1), (alice.id, CUSTOMER, 2),
    ]  # fmt: skip
    # The retry waits out the delay (from the first attempt's failure, a moment after it).
    assert RETRY_DELAY <= second.time - first.time <= RETRY_DELAY + 3.0, attempts
    assert [o.callback for o in of(Offer, outputs)] == [CUSTOMER, CUSTOMER]
    assert [(c.agent, c.by) for c in of(Completed, outputs)] == [(alice.id, "caller")]
    assert of(Abandoned, outputs) == of(Exit, outputs) == []
    assert len(of(CallbackRequested, outputs)) == 1
    stats = queue_stats(pbx_proc)
    assert (stats["callbacks_requested"], stats["callback_attempts"]) == (1, 2), stats
    assert (stats["offered"], stats["handled"]) == (1, 1), stats
    assert (stats["abandoned"], stats["exited"], stats["waiting"]) == (0, 0, 0), stats
    assert_counted_once(stats)
    assert stats["answered"] == 1, stats


def test_a_customer_who_never_answers_leaves_the_queue_callback_failed(
    pbx_proc: PbxProcess, tmp_path: Path
) -> None:
    """--callback-retries 2: 1001 is busy for both callbacks; after the second the call
    leaves the queue with reason callback_failed, and the agent is Ready again."""
    alice, port = start(pbx_proc, tmp_path, "--callback-retries", "2",
                        "--callback-retry-delay", str(RETRY_DELAY))  # fmt: skip
    with following(pbx_proc, alice) as events:
        pbx(pbx_proc, "agent", "pause", alice.id, "--reason", "meeting")
        events.wait(type="agent_state", agent=alice.id, state="not_ready")
        ask_for_callback(pbx_proc, tmp_path, port, events)
        with phones(pbx_proc, tmp_path, alice, port, [486, 486]) as (agent_run, customer_run):
            pbx(pbx_proc, "agent", "ready", alice.id)
            agent_result = agent_run.result(timeout=40)
            customer_result = customer_run.result(timeout=40)
        assert_succeeded(agent_result, 2)
        assert_succeeded(customer_result, 2)
        left = events.wait(type="queue_exit")
    assert left["reason"] == "callback_failed", left
    outputs = logged(pbx_proc, ended)
    assert [(a.agent, a.attempt) for a in of(CallbackAttempt, outputs)] == [
        (alice.id, 1), (alice.id, 2),
    ]  # fmt: skip
    [gone] = of(Exit, outputs)
    assert gone.reason is ExitReason.CALLBACK_FAILED
    assert of(Completed, outputs) == of(Abandoned, outputs) == []
    stats = queue_stats(pbx_proc)
    assert (stats["callbacks_requested"], stats["callback_attempts"]) == (1, 2), stats
    assert (stats["offered"], stats["exited"], stats["waiting"]) == (1, 1, 0), stats
    assert stats["exit_reasons"] == {"callback_failed": 1}, stats
    assert (stats["abandoned"], stats["callbacks_waiting"]) == (0, 0), stats
    assert agent_rows(pbx_proc)[alice.id]["state"] == "ready"
    assert_counted_once(stats)
    assert stats["answered"] == 0, stats  # nobody reached the customer
