"""The operator contract: CLI user management against a running `pbx serve` process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from tests.support.pbxproc import PbxProcess, make_pbx
from tests.support.phone import Phone
from tests.support.sipclient import SipTestClient

REFRESH_DEADLINE = 10.0  # the server re-reads users within ~1 s of a CLI change


async def register_until(proc: PbxProcess, user: str, password: str, status: int) -> int:
    """Register repeatedly (bounded) until the answer is `status`; returns the last status."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REFRESH_DEADLINE
    got = 0
    while loop.time() < deadline:
        async with SipTestClient(("127.0.0.1", proc.port)) as ua:
            got = (await ua.register(user, password)).status
        if got == status:
            return got
        await asyncio.sleep(0.2)
    return got


async def test_user_add_passwd_remove_while_running(pbx_proc: PbxProcess) -> None:
    pbx_proc.start()
    pbx_proc.cli("user", "add", "1001", "--password", "first", "--name", "Reception")
    assert await register_until(pbx_proc, "1001", "first", 200) == 200
    [row] = pbx_proc.cli_json("registrations")
    assert row["aor"] == "1001"
    assert row["transport"] == "udp"
    assert row["user_agent"] == "pbx-tests"
    assert row["source"].startswith("127.0.0.1:")
    assert 0 < row["expires_in"] <= 300
    assert row["contact"].startswith("sip:1001@127.0.0.1:")

    pbx_proc.cli("user", "passwd", "1001", "--password", "second")
    assert await register_until(pbx_proc, "1001", "first", 401) == 401
    assert await register_until(pbx_proc, "1001", "second", 200) == 200

    users = pbx_proc.cli_json("user", "list")
    assert users == [{"extension": "1001", "name": "Reception", "realm": "pbx"}]

    pbx_proc.cli("user", "remove", "1001")
    assert pbx_proc.cli_json("registrations") == []
    assert await register_until(pbx_proc, "1001", "second", 401) == 401


def test_cli_errors_are_clear(pbx_proc: PbxProcess) -> None:
    pbx_proc.add_user("1001", "pw")
    dup = pbx_proc.cli("user", "add", "1001", "--password", "pw", check=False)
    assert dup.returncode != 0
    assert "already exists" in dup.stderr
    missing = pbx_proc.cli("user", "remove", "1999", check=False)
    assert missing.returncode != 0
    assert "no user 1999" in missing.stderr
    bad = pbx_proc.cli("user", "add", "10 01", "--password", "pw", check=False)
    assert bad.returncode != 0


def test_generated_password_is_printed_once(pbx_proc: PbxProcess) -> None:
    out = pbx_proc.cli("user", "add", "1005").stdout.split()
    assert out[0] == "1005"
    assert len(out[1]) >= 12


def test_broken_config_stops_startup_with_key_and_line(pbx_proc: PbxProcess) -> None:
    text = pbx_proc.config.read_text().replace("[rtp]", "[rtp]\nport_rnage = [1, 2]")
    pbx_proc.config.write_text(text)
    result = pbx_proc.cli("serve", check=False)
    assert result.returncode != 0
    assert "rtp.port_rnage" in result.stderr
    assert "line" in result.stderr


def test_sigterm_stops_cleanly(pbx_proc: PbxProcess) -> None:
    pbx_proc.start()
    assert pbx_proc.stop() == 0
    assert any("stopped" in line for line in pbx_proc.log)


def test_status_reports_live_counters(pbx_proc: PbxProcess) -> None:
    import socket

    pbx_proc.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\xff\xfe garbage that is no SIP at all", ("127.0.0.1", pbx_proc.port))
        sock.sendto(
            b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKs;rport\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: st\r\n"
            b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            ("127.0.0.1", pbx_proc.port),
        )
        sock.settimeout(5)
        # Datagrams are handled in order: the OPTIONS answer means the garbage was counted.
        assert sock.recv(65536).startswith(b"SIP/2.0 200 ")
    status = json.loads(pbx_proc.cli("status", "--json").stdout)
    assert status["sip"]["malformed"] == 1
    assert status["sip"]["requests"] >= 1
    assert status["listen"] == [f"udp:127.0.0.1:{pbx_proc.port}", f"tcp:127.0.0.1:{pbx_proc.port}"]
    pbx_proc.stop()
    stopped = pbx_proc.cli("status", check=False)
    assert stopped.returncode != 0
    assert "not running" in stopped.stderr


def test_port_in_use_fails_fast_and_clearly(pbx_proc: PbxProcess) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        taken.bind(("127.0.0.1", pbx_proc.port))
        taken.listen()
        result = pbx_proc.cli("serve", check=False)  # bounded by cli()'s timeout
    assert result.returncode == 1
    assert f"cannot listen on tcp:127.0.0.1:{pbx_proc.port}" in result.stderr


def test_newer_schema_is_refused_without_hanging(pbx_proc: PbxProcess) -> None:
    import sqlite3

    pbx_proc.add_user("1001", "pw")
    database = pbx_proc.config.parent / "data" / "pbx.sqlite3"
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA user_version = 99")
    for command in (["user", "list"], ["serve"]):
        result = pbx_proc.cli(*command, check=False)
        assert result.returncode == 1
        assert "newer than this pbx understands" in result.stderr
        assert "Traceback" not in result.stderr


def test_concurrent_first_use_of_a_new_database(pbx_proc: PbxProcess) -> None:
    import subprocess
    import sys

    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pbx", "-c", str(pbx_proc.config), "user", "add", ext,
             "--password", "pw"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for ext in ("1001", "1002", "1003", "1004")
    ]  # fmt: skip
    results = [p.communicate(timeout=30) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], results
    assert len(pbx_proc.cli_json("user", "list")) == 4


async def test_password_from_stdin(pbx_proc: PbxProcess) -> None:
    import subprocess
    import sys

    subprocess.run(  # noqa: ASYNC221 - the CLI runs before the server starts
        [sys.executable, "-m", "pbx", "-c", str(pbx_proc.config), "user", "add", "1001",
         "--password", "-"],
        input="from-stdin\n", text=True, check=True, timeout=30, capture_output=True,
    )  # fmt: skip
    pbx_proc.start()
    assert await register_until(pbx_proc, "1001", "from-stdin", 200) == 200


async def test_cdr_listing_shows_routing_and_legs(pbx_proc: PbxProcess) -> None:
    """`pbx cdr` shows what a call left in the database, in JSON and as a table."""
    from pbx import config as pbx_config
    from pbx.events import CallEnded
    from pbx.store import Store

    pbx_proc.add_user("1001", "pw")  # creates the database
    store = await Store.open(pbx_config.load(pbx_proc.config).database)
    try:
        await store.add_cdr(CallEnded(
            110.0, "c1", "1001", "600", started=100.0, answered=102.0, disposition="ANSWERED",
            cause="BYE from the caller", hangup_by="caller", status=200, dialled="600",
            route="ring group", answered_by="1003", legs=("1001", "1003", "1002"),
        ))  # fmt: skip
    finally:
        await store.close()
    [row] = pbx_proc.cli_json("cdr")
    assert (row["callee"], row["route"], row["answered_by"]) == ("600", "ring group", "1003")
    assert row["legs"] == ["1001", "1003", "1002"]
    assert (row["duration"], row["billsec"]) == (10.0, 8.0)
    table = pbx_proc.cli("cdr").stdout
    assert "ANSWERED_BY" in table.splitlines()[0] and "1003" in table


FLOW = """from ivr import Session, flow

@flow("main")
async def main(call: Session) -> None:
    await call.answer()
    await call.collect(timeout=60.0)
"""


async def test_reload_by_the_cli_keeps_calls_and_says_what_failed(tmp_path: Path) -> None:
    (tmp_path / "flows.py").write_text(FLOW)
    extra = '[registrar]\nqualify_interval = 0\n[ivr]\nmodules = ["flows.py"]\n'
    extra += '[ivr.numbers]\n"200" = "main"\n'
    proc = make_pbx(tmp_path, extra)
    try:
        proc.add_user("1001", "pw1001")
        proc.start()
        alice = await Phone(("127.0.0.1", proc.port), "1001", "pw1001").start()
        try:
            call = await alice.call("200")  # in the flow, waiting for a key
            # A new flow beside the old: reloaded, listed, exit 0.
            (tmp_path / "flows.py").write_text(FLOW + FLOW.split("\n", 1)[1].replace(
                '"main"', '"other"').replace("def main", "def other"))  # fmt: skip
            done = proc.cli("reload")
            assert done.stdout.strip() == "flows: main, other", done.stdout
            # A module that no longer imports: exit 1, the error said, the old flows kept.
            (tmp_path / "flows.py").write_text("def broken(:\n")
            failed = proc.cli("reload", check=False)
            assert failed.returncode == 1, failed
            assert failed.stdout.strip() == "flows: main, other", failed.stdout
            assert "error:" in failed.stderr and "SyntaxError" in failed.stderr, failed.stderr
            # The call that was in the flow all along is still up.
            [live] = proc.cli_json("calls")
            assert (live["caller"], live["callee"], live["state"]) == ("1001", "main", "answered")
            assert (await alice.bye(call)).status == 200
        finally:
            await alice.stop()
    finally:
        proc.stop()


def test_serve_refuses_to_start_with_a_flow_module_that_does_not_import(tmp_path: Path) -> None:
    (tmp_path / "flows.py").write_text("def broken(:\n")
    proc = make_pbx(tmp_path, '[ivr]\nmodules = ["flows.py"]\n')
    done = subprocess.run(
        [sys.executable, "-m", "pbx", "-c", str(proc.config), "serve"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "ivr.modules" in done.stderr and "SyntaxError" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr  # a clear error, not a crash
