"""The operator contract for the ACD: `pbx queue ...` and `pbx agent ...`, with the server
stopped (the database remembers) and running (a stand-in control server checks what the
CLI asks it)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner, Result

from acd.model import (
    Abandoned,
    AgentSpec,
    AgentState,
    Answered,
    Completed,
    Entered,
    Output,
    OverflowAction,
    OverflowRule,
    QueueSpec,
    Strategy,
)
from pbx import config as pbx_config
from pbx.cli import main
from pbx.control import ControlServer
from pbx.errors import PbxError
from pbx.server import Exchange
from pbx.sip.digest import ha1
from pbx.store import AgentRecord, Store, User
from tests.support.pbxproc import write_config
from tests.support.ports import free_port

T = TypeVar("T")

CONFIG = """data_dir = "data"

[[ring_group]]
number = "600"
name = "reception"
members = ["1001", "1002"]

[[conference]]
number = "800"
name = "staff"

[ivr]
numbers = { "100" = "main" }
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "pbx.toml"
    path.write_text(CONFIG)
    return path


def pbx(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["-c", str(config), *args])


def ok(config: Path, *args: str) -> Result:
    result = pbx(config, *args)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def fails(config: Path, *args: str) -> str:
    """The error message of a command that must fail."""
    result = pbx(config, *args)
    assert result.exit_code != 0, result.stdout
    return " ".join(result.stderr.split())


def with_store(config: Path, work: Callable[[Store], Awaitable[T]]) -> T:
    async def run() -> T:
        store = await Store.open(config.parent / "data" / "pbx.sqlite3")
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def add_user(config: Path, extension: str) -> None:
    md5, sha = ha1("MD5", extension, "pbx", "pw"), ha1("SHA-256", extension, "pbx", "pw")
    with_store(config, lambda s: s.add_user(User(extension, "", "pbx", md5, sha), 0.0))


def test_queue_add_list_set_remove(config: Path) -> None:
    added = ok(
        config, "queue", "add", "pharmacy", "--number", "610", "--skills", "pharmacy:3,spanish",
        "--strategy", "best-skill-match", "--ring-timeout", "12.5", "--wrap-up", "30",
        "--max-wait", "600", "--max-length", "20", "--announce-every", "45", "--ageing", "90",
        "--service-level", "30", "--no-join-empty", "--leave-empty", "--music", "calm",
        "--record", "--callback-retries", "5", "--callback-retry-delay", "60",
        "--overflow", "30:relax::pharmacy:1,spanish:2", "--overflow", "60:add-agents:billing",
        "--overflow", "120:voicemail:refills", "--overflow", "90:queue:nurse",
    )  # fmt: skip
    assert "added queue pharmacy" in added.stdout
    assert "overflow to queue billing, which does not exist yet" in added.stderr
    ok(config, "queue", "add", "billing", "--number", "620")
    ok(config, "queue", "add", "callbacks")  # no number: reached by the IVR or a hook
    pharmacy = QueueSpec(
        "pharmacy", "610", {"pharmacy": 3, "spanish": 1}, Strategy.BEST_SKILL_MATCH,
        ring_timeout=12.5, wrap_up=30.0, max_wait=600.0, max_length=20, announce_every=45.0,
        join_empty=False, leave_empty=True, ageing=90.0, service_level=30.0, music="calm",
        overflow=(
            OverflowRule(30.0, OverflowAction.RELAX_SKILLS, "", {"pharmacy": 1, "spanish": 2}),
            OverflowRule(60.0, OverflowAction.ADD_AGENTS, "billing"),
            OverflowRule(120.0, OverflowAction.VOICEMAIL, "refills"),
            OverflowRule(90.0, OverflowAction.QUEUE, "nurse"),
        ),
        callback_retries=5, callback_retry_delay=60.0, record=True,
    )  # fmt: skip
    assert with_store(config, lambda s: s.queues()) == [
        QueueSpec("billing", "620"), QueueSpec("callbacks"), pharmacy,
    ]  # fmt: skip

    rows = json.loads(ok(config, "queue", "list", "--json").stdout)
    assert [r["name"] for r in rows] == ["billing", "callbacks", "pharmacy"]
    assert rows[2]["skills"] == {"pharmacy": 3, "spanish": 1}
    assert rows[2]["strategy"] == "best-skill-match"
    assert rows[2]["overflow"][0] == {
        "after": 30.0, "action": "relax", "target": "", "skills": {"pharmacy": 1, "spanish": 2},
    }  # fmt: skip
    table = ok(config, "queue", "list").stdout
    assert "30:relax::pharmacy:1,spanish:2, 60:add-agents:billing" in table
    assert "120:voicemail:refills, 90:queue:nurse" in table

    ok(config, "queue", "set", "pharmacy", "--strategy", "ring-all", "--join-empty",
       "--no-overflow", "--skills", "")  # fmt: skip
    ok(config, "queue", "set", "billing", "--overflow", "45:queue:pharmacy", "--number", "621")
    ok(config, "queue", "set", "billing", "--wrap-up", "5")  # the number stays: no collision
    queues = {q.name: q for q in with_store(config, lambda s: s.queues())}
    assert queues["pharmacy"] == dataclasses.replace(
        pharmacy, skills={}, strategy=Strategy.RING_ALL, join_empty=True, overflow=()
    )
    assert queues["billing"].number == "621"
    assert queues["billing"].wrap_up == 5.0
    assert queues["billing"].overflow == (OverflowRule(45.0, OverflowAction.QUEUE, "pharmacy"),)

    assert "removed queue callbacks" in ok(config, "queue", "remove", "callbacks").stdout
    assert "no queue callbacks" in fails(config, "queue", "remove", "callbacks")
    assert [r["name"] for r in json.loads(ok(config, "queue", "list", "--json").stdout)] == [
        "billing", "pharmacy",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "loudest"], "'loudest' is not one of"),
        (["--skills", "spanish:11"], "level 11 is outside 1-10"),
        (["--skills", "spa nish"], "bad skill name"),
        (["--number", "600"], "600 is already ring group reception in pbx.toml"),
        (["--number", "800"], "800 is already conference room staff in pbx.toml"),
        (["--number", "700"], "700 is already dialplan.park in pbx.toml"),
        (["--number", "705"], "705 is already a park slot"),
        (["--number", "911"], "911 is already an emergency number"),
        (["--number", "*8"], "*8 is already dialplan.pickup"),
        (["--number", "**12"], "**12 starts with '**' (dialplan.directed_pickup"),
        (["--number", "100"], "100 is already IVR flow main (ivr.numbers) in pbx.toml"),
        (["--number", "1001"], "1001 is already the extension of user 1001"),
        (["--number", "610"], "610 is already the number of queue pharmacy"),
        (["--number", "6 1"], "is not a dialable number"),
        (["--ring-timeout", "0"], "--ring-timeout"),
        (["--max-length", "-1"], "--max-length"),
        (["--overflow", "soon:queue:billing"], "'soon' is not a number of seconds"),
        (["--overflow", "30:teleport:billing"], "no action 'teleport'"),
        (["--overflow", "30:queue"], "queue needs a target"),
        (["--overflow", "30:relax:billing"], "relax takes no target"),
        (["--overflow", "30:queue:billing:spanish"], "only relax takes skills"),
        (["--overflow", "30:relax::spanish:99"], "level 99 is outside 1-10"),
        (["--overflow", "30:queue:other"], "queue other cannot overflow to itself"),
        (["--music", "../../etc"], "--music"),
    ],
)
def test_queue_validation(config: Path, args: list[str], message: str) -> None:
    add_user(config, "1001")
    ok(config, "queue", "add", "pharmacy", "--number", "610")
    assert message in fails(config, "queue", "add", "other", *args)
    assert [q.name for q in with_store(config, lambda s: s.queues())] == ["pharmacy"]


@pytest.mark.parametrize(
    ("extension", "message"),
    [
        ("100", "100 is already IVR flow main (ivr.numbers) in pbx.toml"),
        ("600", "600 is already ring group reception in pbx.toml"),
        ("705", "705 is already a park slot"),
        ("610", "610 is already the number of queue pharmacy"),
    ],
)
def test_a_user_cannot_have_a_number_the_dialplan_answers_first(
    config: Path, extension: str, message: str
) -> None:
    ok(config, "queue", "add", "pharmacy", "--number", "610")
    assert message in fails(config, "user", "add", extension, "--password", "pw")
    assert with_store(config, lambda s: s.users()) == []
    ok(config, "user", "add", "1001", "--password", "pw")


async def test_the_server_warns_of_users_and_queues_it_cannot_reach(
    config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Added before the config gave their numbers to something else."""
    await asyncio.to_thread(add_user, config, "800")
    await asyncio.to_thread(ok, config, "queue", "add", "reception", "--number", "650")
    body = CONFIG.removeprefix('data_dir = "data"\n')
    extra = f'{body}\n[[ring_group]]\nnumber = "650"\nmembers = ["1001"]\n'
    exchange = Exchange(pbx_config.load(write_config(config.parent, free_port(), extra)))
    with caplog.at_level("WARNING", logger="pbx"):
        await exchange.start()
        await exchange.stop()
    warnings = [r.getMessage() for r in caplog.records if "cannot be" in r.getMessage()]
    assert warnings == [
        "user 800 cannot be called: 800 is already conference room staff in pbx.toml",
        "queue reception cannot be dialled: 650 is already ring group 650 in pbx.toml",
    ]


def test_queue_name_and_set_errors(config: Path) -> None:
    assert "letters, digits and - _ . only" in fails(config, "queue", "add", "a:b")
    ok(config, "queue", "add", "pharmacy", "--number", "610")
    assert "queue pharmacy already exists" in fails(config, "queue", "add", "pharmacy")
    assert "nothing to change" in fails(config, "queue", "set", "pharmacy")
    assert "no queue nurse" in fails(config, "queue", "set", "nurse", "--wrap-up", "3")
    assert "--overflow and --no-overflow together" in fails(
        config, "queue", "set", "pharmacy", "--overflow", "3:queue:x", "--no-overflow"
    )


def test_agent_add_list_set_remove(config: Path) -> None:
    add_user(config, "1001")
    added = ok(config, "agent", "add", "alice", "--extension", "1001",
               "--skills", "spanish:7,pharmacy:5", "--name", "Alice A")  # fmt: skip
    assert (added.stdout, added.stderr) == ("added agent alice at 1001\n", "")
    later = ok(config, "agent", "add", "bob", "--extension", "1002")
    assert "warning: 1002 is not a user yet" in later.stderr  # a warning: bob is added

    rows = json.loads(ok(config, "agent", "list", "--json").stdout)
    assert rows == [
        {"id": "alice", "extension": "1001", "name": "Alice A",
         "skills": {"pharmacy": 5, "spanish": 7}, "state": "logged_out", "reason": "",
         "queues": []},
        {"id": "bob", "extension": "1002", "name": "", "skills": {}, "state": "logged_out",
         "reason": "", "queues": []},
    ]  # fmt: skip
    table = ok(config, "agent", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "EXTENSION", "NAME", "SKILLS", "STATE", "REASON", "QUEUES"]
    assert table[1].split() == ["alice", "1001", "Alice", "A", "pharmacy:5,spanish:7",
                                "logged_out", "-", "-"]  # fmt: skip

    ok(config, "agent", "set", "bob", "--skills", "billing:4", "--name", "Bob B")
    ok(config, "agent", "set", "alice", "--extension", "1003")
    agents = with_store(config, lambda s: s.agents())
    assert [r.spec for r in agents] == [
        AgentSpec("alice", "1003", "Alice A", {"spanish": 7, "pharmacy": 5}),
        AgentSpec("bob", "1002", "Bob B", {"billing": 4}),
    ]

    assert "agent alice already exists" in fails(config, "agent", "add", "alice",
                                                 "--extension", "1005")  # fmt: skip
    assert "1002 is already the phone of agent bob" in fails(
        config, "agent", "add", "carol", "--extension", "1002"
    )
    assert "1002 is already the phone of agent bob" in fails(
        config, "agent", "set", "alice", "--extension", "1002"
    )
    assert "level 0 is outside 1-10" in fails(
        config, "agent", "add", "carol", "--extension", "1005", "--skills", "spanish:0"
    )
    assert "--extension" in fails(config, "agent", "add", "carol")
    assert "nothing to change" in fails(config, "agent", "set", "alice")
    assert "no agent carol" in fails(config, "agent", "set", "carol", "--name", "C")

    ok(config, "agent", "remove", "bob")
    assert "no agent bob" in fails(config, "agent", "remove", "bob")
    assert [r["id"] for r in json.loads(ok(config, "agent", "list", "--json").stdout)] == ["alice"]


def test_offline_presence_is_remembered_for_the_next_start(config: Path) -> None:
    ok(config, "queue", "add", "pharmacy", "--number", "610")
    ok(config, "queue", "add", "billing", "--number", "620")
    ok(config, "agent", "add", "alice", "--extension", "1001")

    def record() -> AgentRecord:
        [only] = with_store(config, lambda s: s.agents())
        return only

    assert "log in to a queue first" in fails(config, "agent", "pause", "alice")
    assert "log in to a queue first" in fails(config, "agent", "ready", "alice")
    assert "no queue nurse" in fails(config, "agent", "login", "alice", "--queue", "nurse")
    assert "no agent zed" in fails(config, "agent", "login", "zed", "--queue", "billing")
    assert "--queue" in fails(config, "agent", "login", "alice")

    login = ok(config, "agent", "login", "alice", "--queue", "pharmacy", "--queue", "billing")
    assert login.stdout.splitlines() == [
        "agent alice: ready in pharmacy, billing",
        "pbx is not running: this applies when it starts",
    ]
    assert record() == AgentRecord(
        AgentSpec("alice", "1001"), AgentState.READY, "", ("pharmacy", "billing")
    )
    ok(config, "agent", "pause", "alice", "--reason", "lunch")
    assert (record().state, record().reason) == (AgentState.NOT_READY, "lunch")
    ok(config, "agent", "login", "alice", "--queue", "pharmacy")  # already in: stays paused
    assert record().state is AgentState.NOT_READY
    ok(config, "agent", "ready", "alice")
    assert (record().state, record().reason) == (AgentState.READY, "")

    assert "not logged in to queue nurse" in fails(
        config, "agent", "logout", "alice", "--queue", "nurse"
    )
    ok(config, "agent", "logout", "alice", "--queue", "billing")
    assert (record().state, record().queues) == (AgentState.READY, ("pharmacy",))
    [row] = json.loads(ok(config, "agent", "list", "--json").stdout)
    assert (row["state"], row["queues"]) == ("ready", ["pharmacy"])
    ok(config, "agent", "logout", "alice")
    assert record() == AgentRecord(AgentSpec("alice", "1001"))


def _midnight(now: float) -> float:
    return (
        datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    )


def test_queue_show_offline_folds_the_queue_log(config: Path) -> None:
    ok(config, "queue", "add", "pharmacy", "--number", "610", "--service-level", "15")
    ok(config, "agent", "add", "alice", "--extension", "1001")
    ok(config, "agent", "login", "alice", "--queue", "pharmacy")
    now = time.time()
    base = max(now - 100.0, _midnight(now))  # today: what `queue show` reads by default
    log: list[Output] = [
        Entered(base - 86400.0, "pharmacy", "yesterday", caller="5550000", priority=0, position=1),
        Entered(base + 1, "pharmacy", "c1", caller="5551111", priority=0, position=1),
        Answered(base + 11, "pharmacy", "c1", agent="alice", wait=10.0),
        Completed(base + 71, "pharmacy", "c1", agent="alice", talk=60.0, by="caller"),
        Entered(base + 2, "pharmacy", "c2", caller="5552222", priority=1, position=1),
        Abandoned(base + 32, "pharmacy", "c2", wait=30.0, position=1),
        Entered(base + 3, "pharmacy", "c3", caller="5553333", priority=0, position=1),
        Answered(base + 23, "pharmacy", "c3", agent="alice", wait=20.0),
        Entered(base + 4, "billing", "c4", caller="5554444", priority=0, position=1),
        Entered(base + 5, "pharmacy", "c5", caller="5555555", priority=0, position=1),
    ]
    with_store(config, lambda s: s.log_outputs(log))

    shown = json.loads(ok(config, "queue", "show", "pharmacy", "--json").stdout)
    stats = shown["stats"]
    assert (shown["name"], shown["number"], shown["agents"], shown["waiting"]) == (
        "pharmacy", "610", ["alice"], [],
    )  # fmt: skip
    assert stats["queue"] == "pharmacy"
    assert (stats["offered"], stats["answered"], stats["abandoned"], stats["waiting"]) == (
        4, 2, 1, 1,
    )  # fmt: skip
    # T = 15 s (the queue's own): c1 within, c3 not; c2 abandoned after T.
    assert stats["service_level_seconds"] == 15.0
    assert (stats["answered_within_sl"], stats["abandoned_after_sl"]) == (1, 1)
    assert stats["service_level"] == pytest.approx(100 / 3)
    assert stats["average_speed_of_answer"] == pytest.approx(15.0)
    assert (stats["handled"], stats["talk_time"]) == (1, 60.0)

    # --since reads the log from then, whatever runs: yesterday's call counts too.
    since = str(base - 90000.0)
    older = json.loads(ok(config, "queue", "show", "pharmacy", "--since", since, "--json").stdout)
    assert (older["stats"]["offered"], older["stats"]["waiting"]) == (5, 2)

    text = ok(config, "queue", "show", "pharmacy").stdout
    assert "number: 610" in text
    assert "agents: alice" in text
    assert "statistics (from the queue log since " in text
    assert "  service_level: 33.3" in text
    assert "no queue nurse" in fails(config, "queue", "show", "nurse")


def test_queue_explain_needs_the_server(config: Path) -> None:
    message = fails(config, "queue", "explain", "some-call")
    assert "pbx is not running" in message
    assert "explain" in message


class StandIn:
    """A control server on the config's socket, answering as the exchange would."""

    def __init__(self, socket: Path) -> None:
        self.requests: list[dict[str, Any]] = []
        self.refuse: str | None = None
        self._loop = asyncio.new_event_loop()
        handlers = {name: self._handler(name) for name in
                    ("agents", "agent", "queues", "queue", "explain")}  # fmt: skip
        self._server = ControlServer(socket, handlers)

    def _handler(self, name: str) -> Callable[[dict[str, Any]], Awaitable[Any]]:
        async def handle(request: dict[str, Any]) -> Any:
            self.requests.append(request)
            if self.refuse is not None:
                raise PbxError(self.refuse)
            return LIVE[name]

        return handle

    def __enter__(self) -> StandIn:
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._server.start(), self._loop).result(5)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)


LIVE_AGENT = {
    "id": "alice", "extension": "1001", "name": "Alice A", "skills": {"spanish": 7},
    "state": "on_call", "reason": "", "since": 5.0, "queues": ["pharmacy"], "call_id": "c9",
    "calls": 3, "talk": 120.0, "stats": {},
}  # fmt: skip
LIVE_QUEUE = {
    "name": "pharmacy", "number": "610", "skills": {}, "strategy": "ring-all",
    "overflow": [{"after": 30.0, "action": "queue", "target": "nurse", "skills": {}}],
    "stats": {"waiting": 2, "answered": 7, "abandoned": 1, "service_level": 87.5},
    "waiting": [{"call_id": "c7", "caller": "5557777", "priority": 0, "position": 1,
                 "wait": 12.0, "state": "ringing", "agents": ["bob"], "callback": ""}],
    "agents": ["alice", "bob"], "staffed": True,
}  # fmt: skip
LIVE: dict[str, Any] = {
    "agents": [LIVE_AGENT],
    "agent": LIVE_AGENT,
    "queues": [LIVE_QUEUE],
    "queue": LIVE_QUEUE,
    "explain": ["entered pharmacy at priority 0", "ringing bob"],
}


@pytest.fixture
def stand_in(config: Path) -> Iterator[StandIn]:
    ok(config, "queue", "add", "pharmacy", "--number", "610")
    ok(config, "agent", "add", "alice", "--extension", "1001")
    with StandIn(config.parent / "data" / "pbx.sock") as server:
        yield server


def test_live_commands_ask_the_running_server(config: Path, stand_in: StandIn) -> None:
    login = ok(config, "agent", "login", "alice", "--queue", "pharmacy")
    assert login.stdout == "agent alice: on_call in pharmacy\n"  # the server's answer
    ok(config, "agent", "pause", "alice", "--reason", "lunch")
    ok(config, "agent", "logout", "alice")
    ok(config, "agent", "ready", "alice")
    assert json.loads(ok(config, "agent", "list", "--json").stdout) == [LIVE_AGENT]
    assert "on_call" in ok(config, "agent", "list").stdout
    assert json.loads(ok(config, "queue", "list", "--json").stdout) == [LIVE_QUEUE]
    table = ok(config, "queue", "list").stdout.splitlines()
    assert table[0].split()[-5:] == ["WAITING", "AGENTS", "ANSWERED", "ABANDONED", "SL%"]
    assert table[1].split()[-5:] == ["2", "2", "7", "1", "87.5"]
    assert json.loads(ok(config, "queue", "show", "pharmacy", "--json").stdout) == LIVE_QUEUE
    text = ok(config, "queue", "show", "pharmacy").stdout
    assert "statistics (live):" in text
    assert "overflow: 30:queue:nurse" in text
    assert "c7" in text
    explained = ok(config, "queue", "explain", "c7")
    assert explained.stdout == "entered pharmacy at priority 0\nringing bob\n"
    assert json.loads(ok(config, "queue", "explain", "c7", "--json").stdout) == LIVE["explain"]
    assert stand_in.requests == [
        {"command": "agent", "action": "login", "agent": "alice", "queues": ["pharmacy"],
         "reason": ""},
        {"command": "agent", "action": "pause", "agent": "alice", "queues": [],
         "reason": "lunch"},
        {"command": "agent", "action": "logout", "agent": "alice", "queues": [], "reason": ""},
        {"command": "agent", "action": "ready", "agent": "alice", "queues": [], "reason": ""},
        {"command": "agents"},
        {"command": "agents"},
        {"command": "queues"},
        {"command": "queues"},
        {"command": "queue", "name": "pharmacy"},
        {"command": "queue", "name": "pharmacy"},
        {"command": "explain", "call_id": "c7"},
        {"command": "explain", "call_id": "c7"},
    ]  # fmt: skip
    # The server keeps presence itself: nothing was written for it here.
    [record] = with_store(config, lambda s: s.agents())
    assert record.state is AgentState.LOGGED_OUT


def test_a_refusal_from_the_server_is_an_error(config: Path, stand_in: StandIn) -> None:
    stand_in.refuse = "agent alice is on a call"
    assert "agent alice is on a call" in fails(config, "agent", "pause", "alice")
    assert "agent alice is on a call" in fails(config, "agent", "list")
    [record] = with_store(config, lambda s: s.agents())
    assert record.state is AgentState.LOGGED_OUT  # no fallback to the database
