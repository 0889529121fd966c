"""Driver for test_baresip_park_pickup.py: pickup and park between baresip phones.

Run as root inside private network and PID namespaces made by the test:

    unshare -n -p -f --kill-child python -m tests.interop.netns_park_pickup DIR

The set-up of netns_call.py with three phones: 1001 (440 Hz) calls 1003 (1700 Hz, manual
answer: it only rings); 1002 (1000 Hz) dials *8 and picks the call up. 1002 then parks it
(blind transfer to 700); 1003 dials the slot, 701, and talks to 1001 until 1001 hangs up.
`pbx events --json` runs alongside; its lines, the recordings, a capture of what reached
1001 and the CDRs (or an error with logs) go to DIR/result.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tests.interop.netns_call import HOST, collect, phone, run
from tests.interop.netns_hold_transfer import EventLog, registered, rtp_low, tapped
from tests.support.baresip import Baresip
from tests.support.pbxproc import PbxProcess

TALK_SECONDS = 2.0
TONES = {"1001": 440.0, "1002": 1000.0, "1003": 1700.0}
PORTS = {"1001": (5071, 4444), "1002": (5081, 4454), "1003": (5091, 4464)}  # SIP, ctrl_tcp


def _calls(
    work: Path, result: dict[str, Any], phones: list[Baresip], pbx: PbxProcess, events: EventLog
) -> None:
    for user, hz in TONES.items():
        sip_port, ctrl_port = PORTS[user]
        phones.append(phone(work, user, sip_port, ctrl_port, hz, "manual"))
    a, b, c = phones
    registered(phones, events)
    assert a.ctrl is not None and b.ctrl is not None and c.ctrl is not None

    # 1001 calls 1003, which rings; 1002 picks it up with *8.
    a.ctrl.cmd("dial", f"sip:1003@{HOST}")
    c.ctrl.wait_event("CALL_INCOMING", timeout=10)
    events.wait(type="call_ringing")
    b.ctrl.cmd("dial", f"sip:*8@{HOST}")
    for p in (a, b):
        assert p.ctrl is not None
        p.ctrl.wait_event("CALL_ESTABLISHED", timeout=10)
    c.ctrl.wait_event("CALL_CLOSED", timeout=10)  # pbx cancelled its ringing
    events.wait(type="call_picked_up")
    time.sleep(TALK_SECONDS)

    # 1002 parks 1001 (blind transfer to the park number); 1003 takes it from slot 701.
    b.ctrl.cmd("transfer", f"sip:700@{HOST}")
    result["parked"] = events.wait(type="call_parked")
    b.ctrl.wait_event("CALL_CLOSED", timeout=10)
    result["live_while_parked"] = pbx.cli_json("calls")
    c.ctrl.cmd("dial", f"sip:{result['parked']['slot']}@{HOST}")
    c.ctrl.wait_event("CALL_ESTABLISHED", timeout=10)
    events.wait(type="call_retrieved")
    result["retrieved_at"] = time.time()
    time.sleep(TALK_SECONDS)

    a.ctrl.cmd("hangup")
    for p in (a, c):
        assert p.ctrl is not None
        p.ctrl.wait_event("CALL_CLOSED", timeout=10)
    events.wait(type="call_ended")
    for p in phones:
        p.stop()
    collect(result, phones, pbx)


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1]), tapped(_calls, TONES, rtp_low(PORTS["1001"][0]))))
