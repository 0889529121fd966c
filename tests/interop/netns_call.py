"""Driver for test_baresip_call.py: one baresip-to-baresip call through pbx, with audio.

Run as root inside private network and PID namespaces made by the test:

    unshare -n -p -f --kill-child python -m tests.interop.netns_call DIR [--record]

baresip 1.0 refuses loopback for media (../shared/peers/README.md), so this brings `lo` up,
gives a veth pair the private address 10.77.0.1/24 and runs pbx and both phones on it.
Nothing outside the namespace is ever addressed; every process started here dies with it.
The outcome (recordings, CDRs, or an error with logs) goes to DIR/result.json.

With --record (test_baresip_recording.py) pbx records every call ([recording] record =
"all"); `pbx recordings --json` once the recording is finished, and the talk time the
phones saw, go to result.json too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.interop.helpers import configure, wait_for
from tests.support.baresip import Baresip, write_tone
from tests.support.pbxproc import PbxProcess, write_config

HOST = "10.77.0.1"
SIP_PORT = 5060
TALK_SECONDS = 3.0
RECORD_ALL = '[recording]\nrecord = "all"\nformat = "wav"\n'


def network() -> None:
    for command in (
        "ip link set lo up",
        "ip link add v0 type veth peer name v1",
        f"ip addr add {HOST}/24 dev v0",
        "ip link set v0 up",
        "ip link set v1 up",
        "ip route add default dev v0",
    ):
        subprocess.run(command.split(), check=True, capture_output=True, timeout=10)


def phone(work: Path, user: str, sip_port: int, ctrl_port: int, hz: float, answer: str) -> Baresip:
    tone = write_tone(work / f"tone-{user}.wav", seconds=30, hz=hz)
    b = Baresip(
        work / f"baresip-{user}", user, f"pw{user}", f"{HOST}:{SIP_PORT}", tone, sip_port, ctrl_port
    )
    b.configure()
    config = b.directory / "config"
    config.write_text(config.read_text().replace(f"127.0.0.1:{sip_port}", f"{HOST}:{sip_port}"))
    b.account = b.account.replace("answermode=manual", f"answermode={answer}")
    return b


def register(phones: list[Baresip]) -> None:
    """Start each phone and wait until its registration succeeded."""
    for p in phones:
        p.start()
        p.add_account()
        assert p.ctrl is not None
        event = p.ctrl.wait_event("REGISTER_OK", "REGISTER_FAIL", timeout=10)
        assert event["type"] == "REGISTER_OK", event


def two_phones(work: Path, phones: list[Baresip], pbx: PbxProcess) -> tuple[Baresip, Baresip]:
    """Users 1001 and 1002, pbx started, and their phones registered: 1001 (440 Hz) and
    1002 (1000 Hz, auto-answer); (caller, callee)."""
    pbx.add_user("1001", "pw1001")
    pbx.add_user("1002", "pw1002")
    pbx.start()
    caller = phone(work, "1001", 5071, 4444, 440.0, "manual")
    callee = phone(work, "1002", 5081, 4454, 1000.0, "auto")
    phones += [caller, callee]
    register(phones)
    return caller, callee


def talk(caller: Baresip, phones: list[Baresip]) -> float:
    """`caller` dials 1002, both phones talk TALK_SECONDS and `caller` hangs up; the
    seconds from the call established (at both phones) to it closed (at both)."""
    assert caller.ctrl is not None
    caller.ctrl.cmd("dial", f"sip:1002@{HOST}")
    for p in phones:
        assert p.ctrl is not None
        p.ctrl.wait_event("CALL_ESTABLISHED", timeout=10)
    established = time.monotonic()
    time.sleep(TALK_SECONDS)
    caller.ctrl.cmd("hangup")
    for p in phones:
        assert p.ctrl is not None
        p.ctrl.wait_event("CALL_CLOSED", timeout=10)
    return time.monotonic() - established


def call(work: Path, result: dict[str, Any], phones: list[Baresip], pbx: PbxProcess) -> None:
    network()
    caller, _ = two_phones(work, phones, pbx)
    talk(caller, phones)
    for p in phones:
        p.stop()
    collect(result, phones, pbx)


def recorded_call(
    work: Path, result: dict[str, Any], phones: list[Baresip], pbx: PbxProcess
) -> None:
    """`call`, with pbx recording it; the listing `pbx recordings --json` gives once the
    recording is finished (the server indexes it just after the call ends)."""
    configure(pbx, RECORD_ALL)
    network()
    caller, _ = two_phones(work, phones, pbx)
    result["talk_seconds"] = talk(caller, phones)
    for p in phones:
        p.stop()
    collect(result, phones, pbx)
    result["recordings"] = wait_for(
        "a finished recording in `pbx recordings --json`", lambda: finished_recordings(pbx)
    )


def finished_recordings(pbx: PbxProcess) -> list[dict[str, Any]] | None:
    """`pbx recordings --json` (the CLI, as the operator runs it) once it lists recordings
    and none of them is still being made."""
    rows: list[dict[str, Any]] = pbx.cli_json("recordings")
    return rows if rows and not any(row["live"] for row in rows) else None


def collect(result: dict[str, Any], phones: list[Baresip], pbx: PbxProcess) -> None:
    """The call's CDR (written just after it ends) and what each phone recorded hearing."""
    deadline = time.monotonic() + 5
    while not (cdrs := pbx.cli_json("cdr")) and time.monotonic() < deadline:
        time.sleep(0.2)
    result["cdr"] = cdrs
    result["received"] = {
        p.user: [str(f) for f in sorted((p.directory / "rec").glob("dump-*-dec.wav"))]
        for p in phones
    }


Scenario = Callable[[Path, dict[str, Any], list[Baresip], PbxProcess], None]


def run(work: Path, scenario: Scenario) -> int:
    """Run a scenario against pbx; write result.json (with diagnostics on failure)."""
    result: dict[str, Any] = {}
    phones: list[Baresip] = []
    pbx = PbxProcess(write_config(work, SIP_PORT, host=HOST), SIP_PORT, HOST)
    code = 0
    try:
        scenario(work, result, phones, pbx)
    except BaseException:
        result["error"] = traceback.format_exc()
        code = 1
    finally:
        for p in phones:
            p.stop(timeout=3)
        pbx.stop(timeout=3)
        result["pbx_log"] = pbx.log[-200:]
        result["baresip"] = {p.user: p.output[-60:] for p in phones}
        (work / "result.json").write_text(json.dumps(result, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1]), recorded_call if "--record" in sys.argv[2:] else call))
