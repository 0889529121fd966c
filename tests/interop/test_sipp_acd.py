"""The call-center ACD with real SIP peers: agents are SIPp UASs registered as their
extensions, callers SIPp UACs dialling the queue's number (pbx answers them at once and
rings an agent). Queues and agents are set up with the operator's CLI (`pbx queue add`,
`pbx agent add|login|pause`), and what happened is read back as an operator or a report
would: `pbx agent list --json`, `pbx queue show --json`, `pbx events --json` and the
queue_log table (`Store.queue_log()`). The one-shot commands run in this process (click's
runner: the same command line, without a Python start-up of 0.7 s each); `pbx serve` and
`pbx events` are processes of their own.

Covered: distribution per strategy (round-robin, fewest-calls), RONA, wrap-up, abandon with
its wait. Callbacks have their own file, test_sipp_acd_callback.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from acd.model import (
    Abandoned,
    AgentState,
    AgentStateChanged,
    Answered,
    Completed,
    Entered,
    NoAnswer,
    Offer,
    Output,
)
from pbx.cli import main
from pbx.store import Store
from tests.interop.helpers import configure
from tests.support.pbxproc import PYTHON, PbxProcess
from tests.support.ports import free_port, wait_bound
from tests.support.sipp import SippResult, run_sipp, write_users_csv

pytestmark = pytest.mark.interop

QUEUE, NUMBER = "sales", "500"
CALLER = ("1001", "pw1001")
MEDIA = ["-mi", "127.0.0.1"]
# OPTIONS pings would reach the SIPp UASs as calls they do not expect.
NO_QUALIFY = "[registrar]\nqualify_interval = 0\n"


@dataclass(frozen=True)
class Agent:
    """An agent and the SIPp UAS that is their phone (registered from `port`)."""

    id: str
    extension: str
    port: int

    @property
    def password(self) -> str:
        return f"pw{self.extension}"


def agents(*names: str) -> list[Agent]:
    return [Agent(name, str(2001 + i), free_port(both=False)) for i, name in enumerate(names)]


def pbx(pbx_proc: PbxProcess, *args: str) -> str:
    """`pbx -c CONFIG *args`; what it printed. It must succeed."""
    result = CliRunner().invoke(main, ["-c", str(pbx_proc.config), *args])
    assert result.exit_code == 0, (args, result.output, result.stderr, result.exception)
    return result.stdout


def pbx_json(pbx_proc: PbxProcess, *args: str) -> Any:
    return json.loads(pbx(pbx_proc, *args, "--json"))


def start_acd(
    pbx_proc: PbxProcess, tmp_path: Path, team: Sequence[Agent], *queue_args: str
) -> None:
    """Users, the queue and its agents through the CLI (the server picks the database up at
    start); start pbx; register each agent's phone from its port; log the agents in, in
    order (that order is round-robin's rotation)."""
    configure(pbx_proc, NO_QUALIFY)
    for extension, password in [CALLER, *((a.extension, a.password) for a in team)]:
        pbx(pbx_proc, "user", "add", extension, "--password", password)
    pbx(pbx_proc, "queue", "add", QUEUE, "--number", NUMBER, *queue_args)
    for agent in team:
        pbx(pbx_proc, "agent", "add", agent.id, "--extension", agent.extension)
    pbx_proc.start()
    target = ("127.0.0.1", pbx_proc.port)

    def register(agent: Agent) -> SippResult:
        csv = write_users_csv(tmp_path / f"{agent.id}.csv", [(agent.extension, agent.password)])
        return run_sipp("register.xml", target, tmp_path, local_port=agent.port, calls=1, inf=csv)

    with ThreadPoolExecutor(len(team)) as pool:
        for result in pool.map(register, team):
            assert result.returncode == 0, result.explain()
    for agent in team:
        pbx(pbx_proc, "agent", "login", agent.id, "--queue", QUEUE)


@contextmanager
def phones(
    pbx_proc: PbxProcess, tmp_path: Path, answering: dict[Agent, tuple[str, int]]
) -> Iterator[dict[Agent, Future[SippResult]]]:
    """Each agent's phone: SIPp running `scenario` for `calls` calls from the agent's port,
    in the background; their results once the block is done."""
    target = ("127.0.0.1", pbx_proc.port)
    with ThreadPoolExecutor(len(answering)) as pool:
        runs: dict[Agent, Future[SippResult]] = {}
        for agent, (scenario, calls) in answering.items():
            media = ["-mp", str(free_port(both=False))]
            runs[agent] = pool.submit(
                run_sipp, scenario, target, tmp_path, local_port=agent.port, calls=calls,
                timeout=20, extra=[*MEDIA, *media],
            )  # fmt: skip
        # SIPp binds its port a moment after it starts: an INVITE sent before would only
        # be answered when Timer A resends it, 0.5 s later (longer than the calls allow).
        wait_bound(*(agent.port for agent in answering))
        yield runs


def call_queue(pbx_proc: PbxProcess, tmp_path: Path, *, calls: int = 1, hold_ms: int) -> SippResult:
    """`calls` calls from 1001 to the queue, one after another (300 ms apart), each hanging
    up `hold_ms` after pbx's answer (which comes as soon as the call enters the queue)."""
    return run_sipp(
        "uac_queue.xml", ("127.0.0.1", pbx_proc.port), tmp_path,
        local_port=free_port(both=False), calls=calls, rate=10, timeout=30,
        inf=write_users_csv(tmp_path / "caller.csv", [CALLER]),
        # -l 1 after run_sipp's own -l: SIPp takes the last one given.
        extra=["-s", NUMBER, *MEDIA, "-d", str(hold_ms), "-l", "1"],
    )  # fmt: skip


def assert_succeeded(result: SippResult, calls: int) -> None:
    assert result.returncode == 0, result.explain()
    assert result.counter("SuccessfulCall(C)") == calls, result.explain()
    assert result.counter("FailedCall(C)") == 0, result.explain()


def queue_log(pbx_proc: PbxProcess) -> list[Output]:
    """Every ACD output so far, as the queue_log table rebuilds them."""

    async def read() -> list[Output]:
        store = await Store.open(pbx_proc.config.parent / "data" / "pbx.sqlite3")
        try:
            return await store.queue_log()
        finally:
            await store.close()

    return asyncio.run(read())


def logged(
    pbx_proc: PbxProcess, done: Callable[[list[Output]], bool], timeout: float = 10.0
) -> list[Output]:
    """The queue log once `done` holds for it: pbx commits outputs a moment after them."""
    deadline = time.monotonic() + timeout
    while True:
        outputs = queue_log(pbx_proc)
        if done(outputs):
            return outputs
        if time.monotonic() > deadline:
            raise AssertionError(f"queue log incomplete after {timeout} s: {outputs}")
        time.sleep(0.2)


def of(kind: type[Output], outputs: list[Output]) -> list[Any]:
    return [o for o in outputs if isinstance(o, kind)]


def completed(count: int) -> Callable[[list[Output]], bool]:
    return lambda outputs: len(of(Completed, outputs)) + len(of(Abandoned, outputs)) >= count


def queue_stats(pbx_proc: PbxProcess) -> dict[str, Any]:
    stats: dict[str, Any] = pbx_json(pbx_proc, "queue", "show", QUEUE)["stats"]
    return stats


def agent_rows(pbx_proc: PbxProcess) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in pbx_json(pbx_proc, "agent", "list")}


class EventLog:
    """`pbx events --json` in the background, its lines collected as they come."""

    def __init__(self, pbx_proc: PbxProcess) -> None:
        self.events: list[dict[str, Any]] = []
        self._arrived = threading.Condition()
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "pbx", "-c", str(pbx_proc.config), "events", "--json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._arrived:
                self.events.append(json.loads(line))
                self._arrived.notify_all()

    def wait(self, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """The first event whose fields include `fields`, arriving within `timeout`."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for event in self.events:
                    if fields.items() <= event.items():
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no event {fields} in {timeout} s: {self.events}")
                self._arrived.wait(left)

    def clear(self) -> None:
        with self._arrived:
            self.events.clear()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@contextmanager
def following(pbx_proc: PbxProcess, agent: Agent) -> Iterator[EventLog]:
    """`pbx events --json` once it is known to be following: `agent` (Ready) is paused
    and made Ready again until the follower has seen that."""
    events = EventLog(pbx_proc)
    try:
        deadline = time.monotonic() + 15
        while True:
            pbx(pbx_proc, "agent", "pause", agent.id, "--reason", "sync")
            pbx(pbx_proc, "agent", "ready", agent.id)
            try:
                events.wait(timeout=1.0, type="agent_state", agent=agent.id, state="ready")
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
        events.clear()
        yield events
    finally:
        events.stop()


# ---- distribution per strategy

ROUNDS = 2  # each agent's share of the calls


def test_round_robin_offers_each_agent_in_turn(pbx_proc: PbxProcess, tmp_path: Path) -> None:
    """Three agents, logged in alice, bob, carol; 6 calls one after another: each is offered
    to the next agent in login order and answered there, so each agent answers 2 (their
    phones take exactly 2 calls each, and nobody is ever passed over)."""
    team = agents("alice", "bob", "carol")
    start_acd(pbx_proc, tmp_path, team, "--strategy", "round-robin", "--ring-timeout", "5")
    calls = ROUNDS * len(team)
    with phones(pbx_proc, tmp_path, {a: ("uas_agent.xml", ROUNDS) for a in team}) as runs:
        caller = call_queue(pbx_proc, tmp_path, calls=calls, hold_ms=700)
        results = {agent: run.result(timeout=60) for agent, run in runs.items()}
    assert_succeeded(caller, calls)
    for result in results.values():
        assert_succeeded(result, ROUNDS)
    outputs = logged(pbx_proc, completed(calls))
    # One call after another: each entered the queue after the one before had completed.
    entered, done = of(Entered, outputs), of(Completed, outputs)
    assert all(e.time > d.time for e, d in zip(entered[1:], done, strict=False)), outputs
    order = [a.id for a in team] * ROUNDS
    assert [o.agent for o in of(Offer, outputs)] == order
    assert [o.agent for o in of(Answered, outputs)] == order
    assert of(NoAnswer, outputs) == []
    stats = queue_stats(pbx_proc)
    assert (stats["offered"], stats["answered"], stats["handled"]) == (calls, calls, calls)
    assert (stats["abandoned"], stats["rona"]) == (0, 0)
    rows = agent_rows(pbx_proc)
    assert {a.id: rows[a.id]["stats"]["calls"] for a in team} == {a.id: ROUNDS for a in team}


def test_fewest_calls_brings_a_late_agent_level(pbx_proc: PbxProcess, tmp_path: Path) -> None:
    """fewest-calls: alice and bob take 2 calls each (alice first: equal counts, she has
    idled longer); then carol logs in with none, and the next 2 calls go to her, although
    she has idled the shortest (longest-idle would have given them to alice and bob);
    the 5th goes to alice again (2 each, alice idle longest)."""
    team = agents("alice", "bob", "carol")
    alice, bob, carol = team
    start_acd(pbx_proc, tmp_path, team, "--strategy", "fewest-calls", "--ring-timeout", "5")
    pbx(pbx_proc, "agent", "logout", carol.id)
    with phones(
        pbx_proc, tmp_path,
        {alice: ("uas_agent.xml", 3), bob: ("uas_agent.xml", 2), carol: ("uas_agent.xml", 2)},
    ) as runs:  # fmt: skip
        first = call_queue(pbx_proc, tmp_path, calls=4, hold_ms=700)
        assert_succeeded(first, 4)
        pbx(pbx_proc, "agent", "login", carol.id, "--queue", QUEUE)
        second = call_queue(pbx_proc, tmp_path, calls=3, hold_ms=700)
        assert_succeeded(second, 3)
        results = {agent: run.result(timeout=60) for agent, run in runs.items()}
    assert_succeeded(results[alice], 3)
    assert_succeeded(results[bob], 2)
    assert_succeeded(results[carol], 2)
    outputs = logged(pbx_proc, completed(7))
    assert [o.agent for o in of(Answered, outputs)] == [
        "alice", "bob", "alice", "bob", "carol", "carol", "alice",
    ]  # fmt: skip
    rows = agent_rows(pbx_proc)
    assert {a.id: rows[a.id]["stats"]["calls"] for a in team} == {
        "alice": 3, "bob": 2, "carol": 2,
    }  # fmt: skip


# ---- RONA

RING_TIMEOUT = 2.0


def test_rona_pauses_the_agent_and_the_next_one_answers(
    pbx_proc: PbxProcess, tmp_path: Path
) -> None:
    """alice's phone only rings (uas_ring.xml: 180, then it needs pbx's CANCEL); after the
    queue's ring timeout she is Not Ready with reason "no answer" and the call rings bob,
    who answers. Events, agent list, queue statistics and the queue log all say so."""
    team = agents("alice", "bob")
    alice, bob = team
    start_acd(pbx_proc, tmp_path, team, "--strategy", "longest-idle",
              "--ring-timeout", str(RING_TIMEOUT))  # fmt: skip
    with following(pbx_proc, bob) as events:
        # alice has idled longer (bob was just paused and made Ready): she rings first.
        with phones(pbx_proc, tmp_path,
                    {alice: ("uas_ring.xml", 1), bob: ("uas_agent.xml", 1)}) as runs:  # fmt: skip
            caller = call_queue(pbx_proc, tmp_path, hold_ms=int(RING_TIMEOUT * 1000) + 2000)
            results = {agent: run.result(timeout=60) for agent, run in runs.items()}
        entered = events.wait(type="queue_entered")
        offered = events.wait(type="queue_offered", agent=alice.id)
        no_answer = events.wait(type="queue_no_answer", agent=alice.id)
        paused = events.wait(type="agent_state", agent=alice.id, state="not_ready")
        answered = events.wait(type="queue_answered", agent=bob.id)
        events.wait(type="queue_completed", agent=bob.id)
    assert_succeeded(caller, 1)
    assert_succeeded(results[alice], 1)  # it got the CANCEL
    assert_succeeded(results[bob], 1)
    assert entered["call_id"] == offered["call_id"] == answered["call_id"]
    assert RING_TIMEOUT - 0.1 <= no_answer["ringing"] <= RING_TIMEOUT + 1.0, no_answer
    assert paused["reason"] == "no answer"
    assert answered["wait"] >= RING_TIMEOUT
    rows = agent_rows(pbx_proc)
    assert (rows[alice.id]["state"], rows[alice.id]["reason"]) == ("not_ready", "no answer")
    assert rows[alice.id]["stats"]["rona"] == 1
    assert rows[bob.id]["state"] == "ready"
    stats = queue_stats(pbx_proc)
    assert (stats["offered"], stats["answered"], stats["rona"], stats["abandoned"]) == (1, 1, 1, 0)
    outputs = logged(pbx_proc, completed(1))
    assert [(o.agent, o.ringing >= RING_TIMEOUT - 0.1) for o in of(NoAnswer, outputs)] == [
        (alice.id, True)
    ]
    assert [o.agent for o in of(Offer, outputs)] == [alice.id, bob.id]
    assert [o.agent for o in of(Answered, outputs)] == [bob.id]


# ---- wrap-up

WRAP_UP = 2.0


def test_wrap_up_holds_the_next_call_back(pbx_proc: PbxProcess, tmp_path: Path) -> None:
    """One agent, --wrap-up 2: a second caller, waiting while the first talks, is offered
    the agent only once the first call has completed and 2 s of wrap-up have passed."""
    [alice] = team = agents("alice")
    start_acd(pbx_proc, tmp_path, team, "--wrap-up", str(WRAP_UP), "--ring-timeout", "5")
    target = ("127.0.0.1", pbx_proc.port)
    with (
        phones(pbx_proc, tmp_path, {alice: ("uas_agent.xml", 2)}) as runs,
        ThreadPoolExecutor(1) as bg,
    ):
        first = bg.submit(call_queue, pbx_proc, tmp_path, hold_ms=2000)
        logged(pbx_proc, lambda outputs: len(of(Answered, outputs)) == 1)
        # The second caller waits in the queue while alice talks to the first.
        second = run_sipp(
            "uac_queue.xml", target, tmp_path, local_port=free_port(both=False), calls=1,
            inf=write_users_csv(tmp_path / "second.csv", [CALLER]),
            extra=["-s", NUMBER, *MEDIA, "-d", str(int(1000 * (WRAP_UP + 3)))],
        )  # fmt: skip
        assert_succeeded(first.result(timeout=30), 1)
        assert_succeeded(second, 1)
        assert_succeeded(runs[alice].result(timeout=60), 2)
    outputs = logged(pbx_proc, completed(2))
    first_call, second_call = (o.call_id for o in of(Entered, outputs))
    [done] = [o for o in of(Completed, outputs) if o.call_id == first_call]
    offers = {o.call_id: o for o in of(Offer, outputs)}
    assert set(offers) == {first_call, second_call}
    entered_second = next(o for o in of(Entered, outputs) if o.call_id == second_call)
    assert entered_second.time < done.time  # it did wait through the first call
    gap = offers[second_call].time - done.time
    assert WRAP_UP <= gap < WRAP_UP + 0.5, gap
    states = [o.state for o in of(AgentStateChanged, outputs) if o.time >= done.time]
    assert states[:3] == [AgentState.WRAP_UP, AgentState.READY, AgentState.RESERVED], states
    # The second call's wrap-up ends too; the statistics then count both, 2 s each.
    [second_done] = [o for o in of(Completed, outputs) if o.call_id == second_call]

    def ready_again(outputs: list[Output]) -> bool:
        return any(o.state is AgentState.READY and o.time > second_done.time
                   for o in of(AgentStateChanged, outputs))  # fmt: skip

    logged(pbx_proc, ready_again)
    stats = queue_stats(pbx_proc)
    assert (stats["answered"], stats["handled"]) == (2, 2)
    assert 2 * WRAP_UP <= stats["wrap_up_time"] < 2 * WRAP_UP + 0.5, stats


# ---- abandon

HOLD = 2.0


def test_a_caller_who_gives_up_is_counted_abandoned_with_their_wait(
    pbx_proc: PbxProcess, tmp_path: Path
) -> None:
    """The only agent is logged in but paused; a caller is answered by the queue, waits 2 s
    and hangs up (BYE): one abandoned call, its wait about 2 s, nobody offered it."""
    [alice] = team = agents("alice")
    start_acd(pbx_proc, tmp_path, team)
    pbx(pbx_proc, "agent", "pause", alice.id, "--reason", "lunch")
    caller = call_queue(pbx_proc, tmp_path, hold_ms=int(HOLD * 1000))
    assert_succeeded(caller, 1)
    outputs = logged(pbx_proc, completed(1))
    [abandoned] = of(Abandoned, outputs)
    assert (abandoned.queue, abandoned.position) == (QUEUE, 1)
    assert HOLD - 0.5 <= abandoned.wait <= HOLD + 2.0, abandoned
    assert of(Offer, outputs) == []
    stats = queue_stats(pbx_proc)
    assert (stats["offered"], stats["abandoned"], stats["answered"]) == (1, 1, 0), stats
    # One abandon: its wait is the average, the same bounds as the logged one above.
    assert stats["average_abandon_wait"] == pytest.approx(abandoned.wait, abs=0.01), stats
    assert HOLD - 0.5 <= stats["average_abandon_wait"] <= HOLD + 2.0, stats
    rows = agent_rows(pbx_proc)
    assert (rows[alice.id]["state"], rows[alice.id]["reason"]) == ("not_ready", "lunch")
