"""Driver for test_baresip_ivr.py: a baresip caller in the example clinic's auto attendant
leaves a message for a baresip phone that rejects the call, and that phone's MWI lights.

Run as root inside private network and PID namespaces made by the test:

    unshare -n -p -f --kill-child python -m tests.interop.netns_ivr DIR

The same set-up as netns_call.py (pbx and the phones on 10.77.0.1, a veth address only that
namespace has), with examples/clinic's flows and prompts, open all week. 1001 (baresip's
`mwi` module) subscribes to its mailbox's message-summary once registered. 1002 dials the
main number 100, keys 1 0 0 1 (RFC 4733) during the welcome; 1001 rejects the call that
rings it (486, busy), so the flow takes a message for 1001 with its busy greeting. 1002
says a sentence after the beep (its audio source switched from silence to espeak-ng's
speech) and falls silent; the
silence ends the message, pbx says goodbye and hangs up. `pbx events --json` runs along;
its lines, 1001's MWI_NOTIFY bodies, the SIP between pbx and 1001 (tapped on `lo`), `pbx
cdr --json`, `pbx voicemail --json`, pbx's MWI log lines and 1002's recording of what it
heard (baresip's sndfile) go to DIR/result.json.
"""

from __future__ import annotations

import sys
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from tests.interop.helpers import clinic_setup, configure, wait_for
from tests.interop.netns_call import HOST, SIP_PORT, network, register, run
from tests.interop.netns_hold_transfer import EventLog, Tap, reregister
from tests.support.baresip import Baresip
from tests.support.espeak import espeak
from tests.support.pbxproc import PbxProcess

ROOT = Path(__file__).resolve().parents[2]
CLINIC = ROOT / "examples" / "clinic"
PORTS = {"1001": (5071, 4444), "1002": (5081, 4454)}  # SIP, ctrl_tcp
KEYS = "1001"
WELCOME_HEARD = 1.0  # seconds of the welcome the caller hears before its first key
SILENCE_SECONDS = 2.0  # [voicemail] silence_seconds: what ends the message
SPEECH_LEAD = 0.3  # silence before the sentence in the caller's speech file
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def write_wav(path: Path, samples: np.ndarray) -> Path:
    """Mono 16-bit 8 kHz, as aufile plays it into a G.711 call."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(samples.astype("<i2").tobytes())
    return path


def clinic(work: Path, pbx: PbxProcess) -> None:
    """The example's flows and prompts beside pbx's configuration, which names them."""
    configure(pbx, clinic_setup(work, "00:00-24:00", SILENCE_SECONDS, 30))


def phone(work: Path, user: str, source: Path, mwi: bool) -> Baresip:
    """A baresip for `user` on HOST, playing `source`, answering nothing by itself; with
    `mwi`, its mwi module subscribes to the user's mailbox after each registration."""
    sip_port, ctrl_port = PORTS[user]
    b = Baresip(
        work / f"baresip-{user}", user, f"pw{user}", f"{HOST}:{SIP_PORT}", source, sip_port,
        ctrl_port,
    )  # fmt: skip
    b.configure()
    config = b.directory / "config"
    text = config.read_text().replace(f"127.0.0.1:{sip_port}", f"{HOST}:{sip_port}")
    if mwi:
        text += "module_app\t\tmwi.so\n"
        b.account = b.account.replace("mwi=no", "mwi=yes")
    config.write_text(text)
    return b


def mwi_notify(p: Baresip, needle: str, timeout: float) -> str:
    """The body of the next MWI_NOTIFY event of `p` that contains `needle`."""
    assert p.ctrl is not None
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        body = str(p.ctrl.wait_event("MWI_NOTIFY", timeout=left).get("param", ""))
        if needle in body:
            return body
    raise TimeoutError(f"no MWI_NOTIFY with {needle!r} within {timeout} s")


def scenario(work: Path, result: dict[str, Any], phones: list[Baresip], pbx: PbxProcess) -> None:
    clinic(work, pbx)
    speech = espeak(work)
    silence = write_wav(work / "silence.wav", np.zeros(60 * 8000))
    lead, tail = np.zeros(round(SPEECH_LEAD * 8000)), np.zeros(round(4 * SILENCE_SECONDS * 8000))
    message = write_wav(work / "message.wav", np.concatenate([lead, speech, tail]))
    result["speech_seconds"] = len(speech) / 8000
    network()
    tap = Tap()
    events: EventLog | None = None
    try:
        for user in PORTS:
            pbx.add_user(user, f"pw{user}")
        pbx.start()
        events = EventLog(pbx.config)
        caller = phone(work, "1002", silence, mwi=False)
        callee = phone(work, "1001", silence, mwi=True)
        phones += [caller, callee]
        register(phones)
        # The subscription's first NOTIFY: an empty mailbox.
        result["mwi"] = [mwi_notify(callee, "Messages-Waiting: no", timeout=10)]
        # The follower must be subscribed before the call: the caller registers again
        # until it reports a registration (1001 keeps its subscription).
        events.confirm(lambda: reregister(caller), type="registration", aor="1002")
        call(caller, callee, events, message, result)
    finally:
        if events is not None:
            events.stop()
            result["events"] = events.events
        tap.stop()
        # What went between pbx and 1001: the SUBSCRIBE, NOTIFYs, the INVITE it rejected.
        result["sip_1001"] = [m for m in tap.sip() if str(PORTS["1001"][0]) in m.split("\n")[0]]
    for p in phones:
        p.stop()
    collect(result, phones, pbx)


def call(
    caller: Baresip, callee: Baresip, events: EventLog, message: Path, result: dict[str, Any]
) -> None:
    assert caller.ctrl is not None and callee.ctrl is not None
    caller.ctrl.cmd("dial", f"sip:100@{HOST}")
    caller.ctrl.wait_event("CALL_ESTABLISHED", timeout=10)
    events.wait(type="ivr", step="play", detail="clinic-welcome")
    time.sleep(WELCOME_HEARD)  # how much of the welcome the caller hears, not a wait
    for key in KEYS:  # RFC 4733: press, hold a moment, release
        caller.ctrl.cmd("sndcode", key)
        time.sleep(0.15)
        caller.ctrl.cmd("sndcode", "\x00")
        time.sleep(0.15)
    callee.ctrl.wait_event("CALL_INCOMING", timeout=15)
    callee.ctrl.cmd("hangup")  # rejected (486): the flow takes a message instead
    events.wait(type="ivr", step="play", detail="tone:beep", timeout=20)
    caller.ctrl.cmd("ausrc", f"aufile,{message}")
    # The silence after the sentence ends the message; pbx says goodbye and hangs up.
    caller.ctrl.wait_event("CALL_CLOSED", timeout=30)
    events.wait(type="call_ended", caller="1002")
    events.wait(type="ivr", step="ended")  # the flow's last step comes just after
    result["mwi"].append(mwi_notify(callee, "Messages-Waiting: yes", timeout=10))


def collect(result: dict[str, Any], phones: list[Baresip], pbx: PbxProcess) -> None:
    """The CDR (written just after the call ends), the mailbox, and what each phone heard."""
    result["cdr"] = wait_for("the call's CDR", lambda: pbx.cli_json("cdr") or None)
    result["voicemail"] = pbx.cli_json("voicemail")
    result["mwi_log"] = [line for line in pbx.log if "pbx.mwi" in line]
    result["received"] = {
        p.user: [str(f) for f in sorted((p.directory / "rec").glob("dump-*-dec.wav"))]
        for p in phones
    }


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1]), scenario))
