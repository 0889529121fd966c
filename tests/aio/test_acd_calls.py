"""ACD queues with loopback phones: callers dial a queue, agents' phones ring, the one who
answers talks to the caller (measured on the audio); no answer, abandon, wrap-up, feature
codes, per-queue recording, and the operator's `pbx agent` / `pbx queue` commands."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from acd.model import AgentSpec, AgentState, Entered, Exit, ExitReason, QueueSpec
from pbx import config as pbx_config
from pbx.server import Exchange
from tests.aio.test_conference import level, press, talk_and_listen
from tests.aio.test_media_features import Events, exchange_with, pbx_command, phones_on
from tests.support.audio import sine

QUEUE_NUMBER = "500"


class Log(Events):
    """Events in order: `next` returns the first of a kind not returned yet, even one that
    came before the call (the ACD publishes several in one step)."""

    def __init__(self, exchange: Exchange) -> None:
        super().__init__(exchange)
        self._taken: dict[str, int] = {}

    async def next(self, kind: str, timeout: float = 5.0) -> dict[str, object]:
        taken = self._taken.get(kind, 0)
        seen = self.of(kind)
        if len(seen) <= taken:
            await super().next(kind, timeout)
            seen = self.of(kind)
        self._taken[kind] = taken + 1
        return seen[taken]


async def queue_exchange(tmp_path: Path, extra: str = "", **spec: object) -> Exchange:
    exchange = await exchange_with(tmp_path, extra)
    store = exchange.store
    assert store is not None and exchange.queues is not None
    fields = {"ring_timeout": 2.0, **spec}
    await store.add_queue(QueueSpec("sales", QUEUE_NUMBER, **fields), time.time())  # type: ignore[arg-type]
    for agent_id, extension in (("alice", "1002"), ("bob", "1003")):
        await store.add_agent(AgentSpec(agent_id, extension, agent_id.title()), time.time())
    await exchange.queues.refresh(force=True)
    return exchange


@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[Exchange]:
    exchange = await queue_exchange(tmp_path)
    try:
        yield exchange
    finally:
        await exchange.stop()


def login(exchange: Exchange, *agents: str) -> None:
    assert exchange.queues is not None
    for agent in agents:
        exchange.queues.agent_action(agent, "login", ["sales"])


def state(exchange: Exchange, agent: str) -> AgentState:
    assert exchange.queues is not None
    return exchange.queues.engine.agent_status(agent).state


async def test_a_caller_in_the_queue_reaches_an_agent_and_they_talk(pbx: Exchange) -> None:
    events = Log(pbx)
    async with phones_on(pbx) as phones:
        caller, agent_phone, _ = await phones("1001", "1002", "1003")
        login(pbx, "alice")
        invite = await caller.dial(QUEUE_NUMBER)
        caller_call = await caller.answered(invite)  # the queue answers at once
        entered = await events.next("queue_entered")
        assert (entered["queue"], entered["caller"], entered["position"]) == ("sales", "1001", 1)
        offered = await events.next("queue_offered")
        assert (offered["agent"], offered["extension"]) == ("alice", "1002")
        ring = await agent_phone.incoming()
        assert "1001" in ring.from_.uri.__str__()  # the agent sees who calls
        agent_call = await agent_phone.answer(ring)
        answered = await events.next("queue_answered")
        assert answered["agent"] == "alice" and float(str(answered["wait"])) >= 0.0
        assert state(pbx, "alice") is AgentState.ON_CALL
        # The agent's voice reaches the caller: 900 Hz dominates what the caller hears.
        heard, _ = await asyncio.gather(
            talk_and_listen(caller, caller_call, np.zeros(8000, dtype=np.int16)),
            talk_and_listen(agent_phone, agent_call, sine(900, 1.0)),
        )
        tail = heard[-4000:].astype(np.float64)
        assert level(tail, 900) > 10 * max(level(tail, 523), level(tail, 659), 1.0)
        await caller.bye(caller_call)
        completed = await events.next("queue_completed")
        assert completed["agent"] == "alice" and completed["by"] == "caller"
        assert state(pbx, "alice") is AgentState.READY
    assert pbx.queues is not None
    await pbx.queues.written()
    assert pbx.store is not None
    logged = [type(o).__name__ for o in await pbx.store.queue_log(call_id=str(entered["call_id"]))]
    assert (
        logged[0] == "Entered"
        and "Answered" in logged
        and logged[-1] in ("Completed", "AgentStateChanged")
    )
    stats = pbx.queues.queue_row("sales")["stats"]
    assert (stats["offered"], stats["answered"], stats["abandoned"]) == (1, 1, 0)


async def test_an_agent_who_does_not_answer_is_paused_and_the_next_one_rings(
    pbx: Exchange,
) -> None:
    events = Log(pbx)
    async with phones_on(pbx) as phones:
        caller, alice_phone, bob_phone = await phones("1001", "1002", "1003")
        login(pbx, "alice")
        login(pbx, "bob")  # alice idles longer: she is offered the call first
        invite = await caller.dial(QUEUE_NUMBER)
        await caller.answered(invite)
        ignored = await alice_phone.incoming()
        alice_phone.ring(ignored)
        no_answer = await events.next("queue_no_answer", timeout=6.0)
        assert no_answer["agent"] == "alice"
        await alice_phone.next("CANCEL")
        assert state(pbx, "alice") is AgentState.NOT_READY
        assert pbx.queues is not None
        assert pbx.queues.engine.agent_status("alice").reason == "no answer"
        bob_call = await bob_phone.answer(await bob_phone.incoming())
        assert (await events.next("queue_answered"))["agent"] == "bob"
        await bob_phone.bye(bob_call)
        assert (await events.next("queue_completed"))["by"] == "agent"


async def test_a_caller_who_hangs_up_waiting_is_counted_as_abandoned(pbx: Exchange) -> None:
    events = Log(pbx)
    async with phones_on(pbx) as phones:
        (caller,) = await phones("1001")
        invite = await caller.dial(QUEUE_NUMBER)
        caller_call = await caller.answered(invite)
        await events.next("queue_entered")
        await caller.bye(caller_call)
        abandoned = await events.next("queue_abandoned")
        assert abandoned["position"] == 1 and float(str(abandoned["wait"])) > 0.0
    assert pbx.queues is not None
    stats = pbx.queues.queue_row("sales")["stats"]
    assert (stats["offered"], stats["abandoned"], stats["answered"]) == (1, 1, 0)
    assert stats["average_abandon_wait"] > 0.0


async def test_a_phone_that_refuses_the_offer_hands_the_call_on(pbx: Exchange) -> None:
    events = Log(pbx)
    async with phones_on(pbx) as phones:
        caller, alice_phone, bob_phone = await phones("1001", "1002", "1003")
        login(pbx, "alice", "bob")
        await caller.answered(await caller.dial(QUEUE_NUMBER))
        alice_phone.reject(await alice_phone.incoming(), 486)
        await bob_phone.answer(await bob_phone.incoming())
        assert (await events.next("queue_answered"))["agent"] == "bob"
        assert pbx.queues is not None
        assert pbx.queues.engine.agent_status("alice").reason == "busy"


async def test_agents_log_in_and_pause_from_their_phones(pbx: Exchange) -> None:
    events = Log(pbx)
    async with phones_on(pbx) as phones:
        alice_phone, stranger = await phones("1002", "1004")
        steps = [("*45", AgentState.READY), ("*46", AgentState.NOT_READY),
                 ("*46", AgentState.READY), ("*45", AgentState.LOGGED_OUT)]  # fmt: skip
        for code, expected in steps:
            await alice_phone.answered(await alice_phone.dial(code))
            await alice_phone.next("BYE", timeout=6.0)  # it says so, then hangs up
            assert state(pbx, "alice") is expected, code
        changes = [e["state"] for e in events.of("agent_state") if e["agent"] == "alice"]
        assert changes == ["ready", "not_ready", "ready", "logged_out"]
        refused = await stranger.dial("*45")
        assert (await stranger.final(refused)).status == 403


async def test_the_queue_records_what_its_agents_answer(tmp_path: Path) -> None:
    exchange = await queue_exchange(tmp_path, record=True)
    events = Log(exchange)
    try:
        async with phones_on(exchange) as phones:
            caller, agent_phone = await phones("1001", "1002")
            login(exchange, "alice")
            caller_call = await caller.answered(await caller.dial(QUEUE_NUMBER))
            agent_call = await agent_phone.answer(await agent_phone.incoming())
            started = await events.next("recording_started")
            await asyncio.gather(
                talk_and_listen(caller, caller_call, sine(500, 1.0)),
                talk_and_listen(agent_phone, agent_call, sine(1200, 1.0)),
            )
            await caller.bye(caller_call)
            stopped = await events.next("recording_stopped")
        assert started["call_id"] == stopped["call_id"]
        data, _ = soundfile.read(str(stopped["path"]), dtype="int16")
        left, right = data[:, 0].astype(np.float64), data[:, 1].astype(np.float64)
        assert level(left, 500) > 10 * level(left, 1200)
        assert level(right, 1200) > 10 * level(right, 500)
    finally:
        await exchange.stop()


async def test_operators_drive_agents_and_queues_with_the_cli(tmp_path: Path) -> None:
    exchange = await exchange_with(tmp_path, "")
    try:
        await pbx_command(tmp_path, "queue", "add", "billing", "--number", "510",
                          "--skills", "spanish:5,pharmacy:1", "--strategy", "round-robin",
                          "--ring-timeout", "5", "--wrap-up", "3")  # fmt: skip
        await pbx_command(tmp_path, "agent", "add", "maria", "--extension", "1002",
                          "--skills", "spanish:7,pharmacy:5")  # fmt: skip
        await pbx_command(tmp_path, "agent", "login", "maria", "--queue", "billing")
        [row] = json.loads(await pbx_command(tmp_path, "agent", "list", "--json"))
        assert (row["id"], row["state"], row["queues"]) == ("maria", "ready", ["billing"])
        await pbx_command(tmp_path, "agent", "pause", "maria", "--reason", "lunch")
        [row] = json.loads(await pbx_command(tmp_path, "agent", "list", "--json"))
        assert (row["state"], row["reason"]) == ("not_ready", "lunch")
        await pbx_command(tmp_path, "agent", "ready", "maria")
        shown = json.loads(await pbx_command(tmp_path, "queue", "show", "billing", "--json"))
        assert shown["strategy"] == "round-robin" and shown["skills"] == {
            "spanish": 5,
            "pharmacy": 1,
        }
        assert shown["stats"]["offered"] == 0 and shown["agents"] == ["maria"]
        events = Log(exchange)
        async with phones_on(exchange) as phones:
            caller, maria = await phones("1001", "1002")
            caller_call = await caller.answered(await caller.dial("510"))
            await maria.answer(await maria.incoming())
            await events.next("queue_answered")  # the exchange took her 200 in
            shown = json.loads(await pbx_command(tmp_path, "queue", "show", "billing", "--json"))
            assert shown["stats"]["answered"] == 1
            [waiting] = shown["waiting"]
            explained = json.loads(await pbx_command(tmp_path, "queue", "explain",
                                                     waiting["call_id"], "--json"))  # fmt: skip
            assert any("maria" in line for line in explained)
            await caller.bye(caller_call)
    finally:
        await exchange.stop()


async def test_a_caller_asks_for_a_callback_and_is_called_back(tmp_path: Path) -> None:
    exchange = await queue_exchange(tmp_path, callback_retries=2, callback_retry_delay=0.5)
    events = Log(exchange)
    try:
        async with phones_on(exchange) as phones:
            caller, agent_phone = await phones("1001", "1002")
            login(exchange, "alice")
            assert exchange.queues is not None
            exchange.queues.agent_action("alice", "pause", reason="meeting")
            caller_call = await caller.answered(await caller.dial(QUEUE_NUMBER))
            await events.next("queue_entered")
            await press(caller, caller_call, "*", first_seq=1)
            requested = await events.next("queue_callback_requested")
            assert requested["number"] == "1001"
            await caller.next("BYE", timeout=8.0)  # told so, then let go
            exchange.queues.agent_action("alice", "ready")
            # First attempt: the agent answers, the caller's phone turns it down.
            await agent_phone.answer(await agent_phone.incoming())
            assert (await events.next("queue_callback_attempt"))["attempt"] == 1
            caller.reject(await caller.incoming(), 486)
            await agent_phone.next("BYE")
            # The retry: this time the caller answers and talks to the agent.
            agent_call = await agent_phone.answer(await agent_phone.incoming(timeout=8.0))
            assert (await events.next("queue_callback_attempt"))["attempt"] == 2
            back = await caller.answer(await caller.incoming())
            heard, _ = await asyncio.gather(
                talk_and_listen(caller, back, np.zeros(8000, dtype=np.int16)),
                talk_and_listen(agent_phone, agent_call, sine(900, 1.0)),
            )
            assert level(heard[-4000:].astype(np.float64), 900) > 500
            await agent_phone.bye(agent_call)
            assert (await events.next("queue_completed"))["by"] == "agent"
    finally:
        await exchange.stop()


async def test_waiting_callers_hear_their_position(tmp_path: Path) -> None:
    exchange = await queue_exchange(tmp_path, '[media]\nmusic_on_hold = ""\n', announce_every=1.0)
    events = Log(exchange)
    try:
        async with phones_on(exchange) as phones:
            (caller,) = await phones("1001")
            caller_call = await caller.answered(await caller.dial(QUEUE_NUMBER))
            announced = await events.next("queue_announce")
            assert announced["position"] == 1 and announced["estimated_wait"] is None
            heard = await talk_and_listen(caller, caller_call, np.zeros(16000, dtype=np.int16))
            # Silence (no music) but for the words: speech energy in the second heard.
            loud = np.abs(heard.astype(np.float64)) > 1000
            assert 0.05 < loud.mean() < 0.9
    finally:
        await exchange.stop()


async def test_an_agent_whose_phone_is_away_is_skipped_until_it_registers(
    pbx: Exchange,
) -> None:
    events = Log(pbx)
    async with phones_on(pbx) as phones:
        caller, alice_phone = await phones("1001", "1002")
        login(pbx, "bob")  # 1003 is not registered, and bob idles longest
        login(pbx, "alice")
        caller_call = await caller.answered(await caller.dial(QUEUE_NUMBER))
        await alice_phone.answer(await alice_phone.incoming())
        assert [e["agent"] for e in events.of("queue_offered")] == ["bob", "alice"]
        assert pbx.queues is not None
        assert pbx.queues.engine.agent_status("bob").reason == "unreachable"
        stats = await events.next("queue_stats")
        assert stats["queue"] == "sales" and "offered" in stats["stats"]  # type: ignore[operator]
        await caller.bye(caller_call)
        await phones("1003")  # registers: bob is back
        assert state(pbx, "bob") is AgentState.READY


async def test_an_agent_who_transfers_the_caller_is_done_with_the_call(tmp_path: Path) -> None:
    exchange = await queue_exchange(tmp_path, wrap_up=30.0)
    events = Log(exchange)
    try:
        async with phones_on(exchange) as phones:
            caller, agent_phone, pharmacist = await phones("1001", "1002", "1004")
            login(exchange, "alice")
            await caller.answered(await caller.dial(QUEUE_NUMBER))
            agent_call = await agent_phone.answer(await agent_phone.incoming())
            await events.next("queue_answered")
            assert (await agent_phone.refer(agent_call, "1004")).status == 202
            await pharmacist.answer(await pharmacist.incoming())
            transferred = await events.next("queue_transferred")
            assert (transferred["agent"], transferred["target"]) == ("alice", "1004")
            assert state(exchange, "alice") is AgentState.WRAP_UP
            assert exchange.queues is not None
            stats = exchange.queues.queue_row("sales")["stats"]
            assert (stats["answered"], stats["handled"], stats["waiting"]) == (1, 1, 0)
    finally:
        await exchange.stop()


async def test_reception_transfers_a_caller_into_the_queue(pbx: Exchange) -> None:
    events = Log(pbx)
    async with phones_on(pbx) as phones:
        caller, alice_phone, reception = await phones("1001", "1002", "1004")
        login(pbx, "alice")
        invite = await caller.dial("1004")
        desk_call = await reception.answer(await reception.incoming())
        caller_call = await caller.answered(invite)
        assert (await reception.refer(desk_call, QUEUE_NUMBER)).status == 202
        await reception.next("BYE")  # let go once the caller is in the queue
        entered = await events.next("queue_entered")
        assert entered["caller"] == "1001"
        agent_call = await alice_phone.answer(await alice_phone.incoming())
        assert (await events.next("queue_answered"))["agent"] == "alice"
        heard, _ = await asyncio.gather(
            talk_and_listen(caller, caller_call, np.zeros(8000, dtype=np.int16)),
            talk_and_listen(alice_phone, agent_call, sine(900, 1.0)),
        )
        assert level(heard[-4000:].astype(np.float64), 900) > 500
        transfers = events.of("call_transferred")
        assert [t["to"] for t in transfers] == ["queue:sales"]


async def test_calls_a_killed_process_left_in_a_queue_are_closed_at_start(
    tmp_path: Path,
) -> None:
    exchange = await queue_exchange(tmp_path)
    assert exchange.store is not None
    now = time.time()
    # What a process killed with a caller waiting leaves: an entry and nothing after it.
    await exchange.store.log_outputs([Entered(now - 30, "sales", "gone", "1001", 0, 1)])
    await exchange.stop()
    again = Exchange(pbx_config.load(tmp_path / "pbx.toml"))
    await again.start()
    try:
        assert again.queues is not None
        stats = again.queues.queue_row("sales")["stats"]
        assert (stats["offered"], stats["waiting"], stats["exited"]) == (1, 0, 1)
        assert stats["exit_reasons"] == {"lost": 1}
        assert again.store is not None
        [*_, last] = await again.store.queue_log(call_id="gone")
        assert isinstance(last, Exit) and last.reason is ExitReason.LOST
    finally:
        await again.stop()


async def test_an_agent_on_a_call_of_their_own_is_not_rung_until_it_ends(pbx: Exchange) -> None:
    events = Log(pbx)
    async with phones_on(pbx) as phones:
        caller, alice_phone, friend = await phones("1001", "1002", "1004")
        login(pbx, "alice")
        private = await alice_phone.dial("1004")
        await friend.answer(await friend.incoming())
        private_call = await alice_phone.answered(private)
        await caller.answered(await caller.dial(QUEUE_NUMBER))
        await events.next("queue_offered")
        assert pbx.queues is not None
        assert pbx.queues.engine.agent_status("alice").reason == "in a call"
        await alice_phone.bye(private_call)  # her own call is over: she is rung now
        await alice_phone.answer(await alice_phone.incoming())
        assert (await events.next("queue_answered"))["agent"] == "alice"
