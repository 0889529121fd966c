"""Driver for test_baresip_conference.py: three baresips talking in one pbx conference room.

Run as root inside private network and PID namespaces made by the test:

    unshare -n -p -f --kill-child python -m tests.interop.netns_conference DIR

The set-up of netns_call.py (pbx and the phones on 10.77.0.1, a veth address only that
namespace has) with room 800 and three phones, each playing its own tone: 1001 (440 Hz),
1002 (650 Hz) and 1003 (1500 Hz), well away from the join and leave tones (800 and
1200 Hz) and the beep (1000 Hz). They dial 800 one after the other, all three talk
TALK_SECONDS, then hang up in turn. `pbx events --json` runs alongside.

DIR/result.json gets the events, the room as `pbx conferences --json` listed it with all
three in, each phone's recording of what it received with the wall-clock time its call
was established, the time the third member joined and the time the first hung up (so the
test can measure the part all three were in), or an error with logs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tests.interop.helpers import configure
from tests.interop.netns_call import HOST, collect, network, phone, run
from tests.interop.netns_hold_transfer import EventLog, registered
from tests.support.baresip import Baresip
from tests.support.pbxproc import PbxProcess

ROOM = "800"
TALK_SECONDS = 3.0
TONES = {"1001": 440.0, "1002": 650.0, "1003": 1500.0}
PORTS = {"1001": (5071, 4444), "1002": (5081, 4454), "1003": (5091, 4464)}  # SIP, ctrl_tcp


def conference(work: Path, result: dict[str, Any], phones: list[Baresip], pbx: PbxProcess) -> None:
    configure(pbx, f'[[conference]]\nnumber = "{ROOM}"\n')
    network()
    for user in TONES:
        pbx.add_user(user, f"pw{user}")
    pbx.start()
    events = EventLog(pbx.config)
    try:
        _meet(work, result, phones, pbx, events)
    finally:
        events.stop()
        result["events"] = events.events


def _meet(
    work: Path, result: dict[str, Any], phones: list[Baresip], pbx: PbxProcess, events: EventLog
) -> None:
    for user, hz in TONES.items():
        sip_port, ctrl_port = PORTS[user]
        phones.append(phone(work, user, sip_port, ctrl_port, hz, "manual"))
    registered(phones, events)

    established: dict[str, float] = {}
    for p in phones:
        assert p.ctrl is not None
        p.ctrl.cmd("dial", f"sip:{ROOM}@{HOST}")
        p.ctrl.wait_event("CALL_ESTABLISHED", timeout=10)
        established[p.user] = time.time()
        joined = events.wait(type="conference_joined", party=p.user)
    result["established"] = established
    result["all_in"] = joined["time"]  # the third joined: pbx's clock, the same as ours
    result["live"] = pbx.cli_json("conferences")
    time.sleep(TALK_SECONDS)

    result["first_hangup"] = time.time()
    for p in phones:
        assert p.ctrl is not None
        p.ctrl.cmd("hangup")
        p.ctrl.wait_event("CALL_CLOSED", timeout=10)
        events.wait(type="conference_left", party=p.user)
    for p in phones:
        p.stop()
    collect(result, phones, pbx)


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1]), conference))
