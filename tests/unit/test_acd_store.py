"""The ACD's tables: queues, agents with their remembered presence, and the queue log,
whose outputs come back exactly as the engine emitted them."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from acd.model import (
    EVENT_OF,
    Abandoned,
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
    Strategy,
    Transferred,
)
from pbx.store import _QUEUE_NAMES, MIGRATIONS, AgentRecord, Store, StoreError
from tests.support.schema import database_at, schema_version


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "pbx.sqlite3")
    yield opened
    await opened.close()


PHARMACY = QueueSpec(
    name="pharmacy",
    number="610",
    skills={"pharmacy": 3, "spanish": 1},
    strategy=Strategy.BEST_SKILL_MATCH,
    ring_timeout=12.5,
    wrap_up=30.0,
    max_wait=600.0,
    max_length=20,
    announce_every=45.0,
    join_empty=False,
    leave_empty=True,
    ageing=90.0,
    service_level=30.0,
    music="calm",
    overflow=(
        OverflowRule(30.0, OverflowAction.RELAX_SKILLS, skills={"pharmacy": 1}),
        OverflowRule(60.0, OverflowAction.ADD_AGENTS, "billing"),
        OverflowRule(120.0, OverflowAction.VOICEMAIL, "refills"),
        OverflowRule(90.5, OverflowAction.QUEUE, "nurse"),
    ),
    callback_retries=5,
    callback_retry_delay=60.0,
    record=True,
)

# One of every output, with every field away from its default and awkward values
# (enums, tuples, None and non-None float | None, floats that are not round).
OUTPUTS: list[Output] = [
    Entered(1.25, "pharmacy", "c1", caller="5551234", priority=2, position=1),
    Offer(
        2.5,
        "pharmacy",
        "c1",
        agent="alice",
        extension="1001",
        callback="5551234",
        why="longest idle (spanish:5)",
    ),
    CancelOffer(3.0, "pharmacy", "c1", agent="bob", reason="answered elsewhere"),
    Answered(3.1, "pharmacy", "c1", agent="alice", wait=1.8500000000000001),
    NoAnswer(4.0, "pharmacy", "c2", agent="bob", ringing=15.0),
    Abandoned(5.0, "pharmacy", "c3", wait=42.125, position=3),
    Completed(6.0, "pharmacy", "c1", agent="alice", talk=2.9, by="caller"),
    Transferred(7.0, "pharmacy", "c4", agent="bob", target="1005", talk=100.0),
    Announce(8.0, "pharmacy", "c2", position=1, estimated_wait=None),
    Announce(8.5, "pharmacy", "c5", position=2, estimated_wait=37.5),
    Overflowed(9.0, "pharmacy", "c2", action=OverflowAction.QUEUE, target="nurse", wait=90.5),
    Exit(9.0, "pharmacy", "c2", reason=ExitReason.OVERFLOW, wait=90.5, target="refills"),
    CallbackRequested(10.0, "pharmacy", "c6", number="5559876", position=4),
    CallbackAttempt(11.0, "pharmacy", "c6", agent="alice", number="5559876", attempt=2),
    AgentStateChanged(
        12.0,
        "",
        "",
        agent="alice",
        state=AgentState.NOT_READY,
        previous=AgentState.WRAP_UP,
        reason="break",
        queues=("pharmacy", "billing"),
    ),
    AgentStateChanged(
        13.0, "", "c7", agent="bob", state=AgentState.LOGGED_OUT, previous=AgentState.READY
    ),
]


def test_every_output_type_is_covered() -> None:
    assert {type(o) for o in OUTPUTS} == set(EVENT_OF)


def test_every_queue_spec_field_has_a_column() -> None:
    assert tuple(f.name for f in dataclasses.fields(QueueSpec)) == _QUEUE_NAMES


async def test_queue_log_round_trip_is_lossless(store: Store) -> None:
    await store.log_outputs(OUTPUTS[:5])
    await store.log_outputs(OUTPUTS[5:])
    await store.log_outputs([])
    back = await store.queue_log()
    assert back == OUTPUTS
    # Equal is not enough: an enum must come back an enum, a tuple a tuple.
    for got, sent in zip(back, OUTPUTS, strict=True):
        assert type(got) is type(sent)
        for f in dataclasses.fields(sent):
            assert type(getattr(got, f.name)) is type(getattr(sent, f.name)), f.name


async def test_queue_log_filters(store: Store) -> None:
    await store.log_outputs(OUTPUTS)
    assert await store.queue_log(since=9.0) == OUTPUTS[10:]
    assert await store.queue_log(call_id="c6") == OUTPUTS[12:14]
    assert await store.queue_log(queue="") == OUTPUTS[14:]
    assert await store.queue_log(since=6.0, queue="pharmacy", call_id="c1") == [OUTPUTS[6]]


async def test_queue_log_columns(store: Store) -> None:
    await store.log_outputs([OUTPUTS[1], OUTPUTS[5], OUTPUTS[14]])
    with sqlite3.connect(store.path) as db:
        rows = db.execute("SELECT queue, call_id, agent, event FROM queue_log ORDER BY id")
        assert rows.fetchall() == [
            ("pharmacy", "c1", "alice", "offer"),
            ("pharmacy", "c3", "", "abandon"),
            ("", "", "alice", "agent"),
        ]


async def test_queues_add_update_remove(store: Store) -> None:
    await store.add_queue(PHARMACY, 100.0)
    await store.add_queue(QueueSpec("ivr-only"), 101.0)  # no number: reached through the IVR
    await store.add_queue(QueueSpec("ivr-too"), 101.0)  # "" numbers do not collide
    assert await store.queues() == [QueueSpec("ivr-only"), QueueSpec("ivr-too"), PHARMACY]

    changed = dataclasses.replace(PHARMACY, strategy=Strategy.RING_ALL, overflow=())
    await store.update_queue(changed)
    assert (await store.queues())[2] == changed

    with pytest.raises(StoreError, match="queue pharmacy already exists"):
        await store.add_queue(QueueSpec("pharmacy", "611"), 102.0)
    with pytest.raises(StoreError, match="number 610 is already used by queue pharmacy"):
        await store.add_queue(QueueSpec("billing", "610"), 102.0)
    with pytest.raises(StoreError, match="number 610 is already used by queue pharmacy"):
        await store.update_queue(QueueSpec("ivr-only", "610"))
    with pytest.raises(StoreError, match="no queue nurse"):
        await store.update_queue(QueueSpec("nurse"))

    await store.remove_queue("ivr-only")
    with pytest.raises(StoreError, match="no queue ivr-only"):
        await store.remove_queue("ivr-only")
    assert [q.name for q in await store.queues()] == ["ivr-too", "pharmacy"]


async def test_agents_and_their_presence(store: Store) -> None:
    alice = AgentSpec("alice", "1001", "Alice A", {"spanish": 7, "pharmacy": 5})
    await store.add_agent(alice, 100.0)
    await store.add_agent(AgentSpec("bob", "1002"), 100.0)
    assert await store.agents() == [AgentRecord(alice), AgentRecord(AgentSpec("bob", "1002"))]
    with pytest.raises(StoreError, match="agent alice already exists"):
        await store.add_agent(AgentSpec("alice", "1003"), 101.0)

    await store.set_agent_presence("alice", AgentState.NOT_READY, "lunch", ["pharmacy", "x"])
    moved = dataclasses.replace(alice, extension="1004", skills={"spanish": 9})
    await store.update_agent(moved)  # the presence stays
    [record, _] = await store.agents()
    assert record == AgentRecord(moved, AgentState.NOT_READY, "lunch", ("pharmacy", "x"))
    assert type(record.state) is AgentState

    await store.set_agent_presence("alice", "ready", "", ())
    assert (await store.agents())[0].state is AgentState.READY
    with pytest.raises(StoreError, match="no agent state 'dancing'"):
        await store.set_agent_presence("alice", "dancing", "", ())
    with pytest.raises(StoreError, match="no agent carol"):
        await store.set_agent_presence("carol", AgentState.READY, "", ())
    with pytest.raises(StoreError, match="no agent carol"):
        await store.update_agent(AgentSpec("carol", "1009"))

    await store.remove_agent("bob")
    with pytest.raises(StoreError, match="no agent bob"):
        await store.remove_agent("bob")
    assert [r.spec.id for r in await store.agents()] == ["alice"]


async def test_schema_4_database_gains_the_acd_tables(tmp_path: Path) -> None:
    path = database_at(
        tmp_path / "pbx.sqlite3", 4,
        "INSERT INTO users (extension, name, realm, ha1_md5, ha1_sha256, created)"
        " VALUES ('1001', 'Desk', 'pbx', 'a', 'b', 1.0)",
        "INSERT INTO recordings (id, call_id, path, format, started) VALUES"
        " ('r1', 'c1', '/tmp/r1.wav', 'wav', 5.0)",
    )  # fmt: skip
    store = await Store.open(path)
    try:
        assert [u.extension for u in await store.users()] == ["1001"]
        assert [r["id"] for r in await store.recordings()] == ["r1"]
        assert (await store.queues(), await store.agents(), await store.queue_log()) == ([], [], [])
        await store.add_queue(PHARMACY, 1.0)
        await store.add_agent(AgentSpec("alice", "1001"), 1.0)
        await store.log_outputs(OUTPUTS)
        assert await store.queue_log() == OUTPUTS
    finally:
        await store.close()
    assert schema_version(path) == len(MIGRATIONS)
    with sqlite3.connect(path) as db:
        [(state, reason, queues)] = db.execute("SELECT state, reason, queues FROM agents")
        assert (state, reason, queues) == ("logged_out", "", "[]")
