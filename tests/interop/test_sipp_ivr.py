"""The example clinic's auto attendant (examples/clinic/clinic_flows.py and its prompts, as
shipped) answering SIPp callers: each caller dials 100 and keys a choice by RFC 4733 in the
RTP it plays, and the test checks where the call went, as an operator would see it: `pbx
events --json` (the flow's steps, transfers), `pbx cdr --json` (answered_by), `pbx
voicemail --json` (the message left) and the queue log (the priority a caller entered at).

Every branch runs at once, as a caller of its own (caller numbers 50xx start with no menu
key, so "2" is never taken for the start of an extension), against one pbx open all week;
a second pbx, closed all week, takes the after-hours call at the same time. The time-out
branch sets the pace: the 15 s menu and 6 s of silence, three times over.

The callers' audio is built here as pcaps: G.711 A-law frames (silence, or espeak-ng's
speech where a message is left) with RFC 4733 events where a key is pressed."""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from acd.model import Entered
from ivr.session import Prompts
from media.g711 import alaw_encode
from pbx.voicemail import trimmed
from tests.interop.helpers import add_users, clinic_setup, configure
from tests.interop.netns_hold_transfer import EventLog
from tests.interop.test_sipp_acd import logged, of
from tests.support.espeak import espeak
from tests.support.pbxproc import PbxProcess, make_pbx
from tests.support.ports import free_port, wait_bound
from tests.support.sipp import SippResult, run_sipp, write_users_csv

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[2]
CLINIC = ROOT / "examples" / "clinic"
RECEPTION = ("1001", "pw1001")
MEDIA = ["-mi", "127.0.0.1"]
KEY_AT = 0.5  # seconds into the call: during the welcome, which the key cuts short
SILENCE_SECONDS = 3.0  # [voicemail] silence_seconds: longer than the callers' pause
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def clinic_config(directory: Path, open_hours: str) -> PbxProcess:
    """A pbx with the example's flows and prompts (copied beside its configuration, which
    names them as pbx.toml does) and an [[hours]] "clinic" of `open_hours` every day ("":
    closed all week)."""
    directory.mkdir(parents=True, exist_ok=True)
    proc = make_pbx(directory)
    configure(proc, clinic_setup(directory, open_hours, SILENCE_SECONDS, 60))
    return proc


# ---- the callers' RTP, as pcaps SIPp plays (Ethernet / IPv4 / UDP / RTP)

FRAME = 160  # samples: 20 ms at 8 kHz
PCMA, EVENT = 8, 101  # payload types of uac_pcap.xml's offer
DIGITS = "0123456789*#"
EVENT_FRAMES = 5  # a key held 100 ms


def _packet(seq: int, timestamp: int, payload_type: int, payload: bytes, marker: bool) -> bytes:
    rtp = struct.pack("!BBHII", 0x80, payload_type | (0x80 if marker else 0), seq & 0xFFFF,
                      timestamp & 0xFFFFFFFF, 0x5EED) + payload  # fmt: skip
    udp = struct.pack("!HHHH", 40000, 40002, 8 + len(rtp), 0) + rtp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))  # fmt: skip
    return b"\x00" * 12 + b"\x08\x00" + ip + udp


def write_pcap(
    path: Path, seconds: float, keys: Sequence[tuple[float, str]] = (),
    speech: Sequence[tuple[float, np.ndarray]] = (),
) -> Path:  # fmt: skip
    """`seconds` of A-law RTP, 20 ms a packet: silence, with `speech` (samples) from the
    times given, and the `keys` (time, digit) as RFC 4733 events of 100 ms (audio packets
    give way to event packets meanwhile; the event's three end packets as RFC 4733 §2.5.1.4
    advises)."""
    frames = round(seconds * 50)
    audio = np.zeros(frames * FRAME, dtype=np.int16)
    for start, samples in speech:
        at = round(start * 8000)
        audio[at : at + len(samples)] = samples[: len(audio) - at]
    events: dict[int, tuple[str, int]] = {}  # frame -> (digit, the event's first frame)
    for at, digit in keys:
        first = round(at * 50)
        events.update((first + i, (digit, first)) for i in range(EVENT_FRAMES))
    records = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    seq = 0
    for frame in range(frames):
        payloads: list[tuple[int, bytes, bool, int]] = []
        if frame in events:
            digit, first = events[frame]
            end = frame == first + EVENT_FRAMES - 1
            body = struct.pack("!BBH", DIGITS.index(digit), (0x80 if end else 0) | 10,
                               (frame - first + 1) * FRAME)  # fmt: skip
            for _ in range(3 if end else 1):
                payloads.append((EVENT, body, frame == first, first * FRAME))
        else:
            chunk = audio[frame * FRAME : (frame + 1) * FRAME]
            payloads.append((PCMA, alaw_encode(chunk), False, frame * FRAME))
        for payload_type, body, marker, timestamp in payloads:
            packet = _packet(seq, timestamp, payload_type, body, marker)
            seq += 1
            usec = frame * 20_000
            records.append(struct.pack("<IIII", usec // 1_000_000, usec % 1_000_000,
                                       len(packet), len(packet)) + packet)  # fmt: skip
    path.write_bytes(b"".join(records))
    return path


# ---- the calls


@dataclass(frozen=True)
class Branch:
    """One caller: `caller` keys `keys` (time, digit) and hangs up after `seconds`."""

    caller: str
    seconds: float
    keys: tuple[tuple[float, str], ...] = ()
    speech_at: float | None = None  # when its message starts (None: it says nothing)


def prompt_seconds(*names: str) -> float:
    """How long the prompts (the clinic's, then the shipped set) play, one after another."""
    prompts = Prompts([CLINIC / "prompts"])
    return sum(prompts.sound(name).seconds for name in names)


def branches(speech_seconds: float) -> dict[str, Branch]:
    beep = 0.25
    # Key 2: refills-intro, then the box's greeting (with 0 for reception: it is open) and
    # the beep; speech 1 s after that.
    greeting = prompt_seconds("leave-message", "operator-option")
    refills_at = KEY_AT + prompt_seconds("refills-intro") + greeting + beep + 1.0
    # After hours: both notices in full, the message prompt; 1 a second into the urgent
    # question (the message is urgent); the greeting and the beep.
    urgent_at = prompt_seconds("after-hours", "emergency", "after-hours-message") + 0.2 + 1.0
    after_at = urgent_at + prompt_seconds("leave-message") + beep + 1.0
    # No key: the welcome, then the menu and its 6 s wait three times, then "transferring".
    no_choice = prompt_seconds("clinic-welcome") + 3 * (prompt_seconds("clinic-menu") + 6.0)
    hang_up = 1.5  # after the message: well before SILENCE_SECONDS would end it
    return {
        "appointments": Branch("5001", 6.0, ((KEY_AT, "1"),)),
        "refills": Branch(
            "5002", refills_at + speech_seconds + hang_up, ((KEY_AT, "2"),), speech_at=refills_at
        ),
        "nurse": Branch("5003", 5.0, ((KEY_AT, "3"),)),
        "reception": Branch("5004", 8.0, ((KEY_AT, "0"),)),
        "invalid": Branch("5005", KEY_AT + prompt_seconds("invalid") + 3.0, ((KEY_AT, "9"),)),
        # 1 0 0 9: it starts like 1001, but no such extension is there.
        "no_such_extension": Branch(
            "5008",
            KEY_AT + 1.2 + prompt_seconds("invalid") + 3.0,
            tuple((KEY_AT + 0.3 * n, key) for n, key in enumerate("1009")),
        ),
        "timeout": Branch("5006", no_choice + prompt_seconds("transferring") + 4.0),
        "after_hours": Branch(
            "5007", after_at + speech_seconds + hang_up, ((urgent_at, "1"),), speech_at=after_at
        ),
    }


def call_100(
    proc: PbxProcess, work: Path, name: str, branch: Branch, speech: np.ndarray
) -> SippResult:
    """`branch`'s caller dials 100 (uac_pcap.xml: its pcap from the answer on, BYE at the
    end)."""
    directory = work / name
    directory.mkdir()
    spoken = [(branch.speech_at, speech)] if branch.speech_at is not None else []
    pcap = write_pcap(directory / "audio.pcap", branch.seconds + 0.5, branch.keys, spoken)
    return run_sipp(
        "uac_pcap.xml", ("127.0.0.1", proc.port), directory, local_port=free_port(both=False),
        calls=1, timeout=branch.seconds + 20, files=[pcap],
        inf=write_users_csv(directory / "caller.csv", [(branch.caller, f"pw{branch.caller}")]),
        extra=["-s", "100", *MEDIA, "-d", str(int(branch.seconds * 1000))],
    )  # fmt: skip


def following(proc: PbxProcess, work: Path, user: tuple[str, str], port: int) -> EventLog:
    """`pbx events --json` once it is known to follow: `user` registers (from `port`, where
    its SIPp UAS will run) until the follower reports the registration."""
    events = EventLog(proc.config)
    for attempt in range(10):
        registered = run_sipp(
            "register.xml", ("127.0.0.1", proc.port), work, local_port=port, calls=1,
            inf=write_users_csv(work / f"register-{attempt}.csv", [user]),
        )  # fmt: skip
        assert registered.returncode == 0, registered.explain()
        try:
            events.wait(type="registration", timeout=1.5)
        except TimeoutError:
            continue
        return events
    events.stop()
    raise AssertionError("pbx events never reported the registration")


@dataclass
class Clinic:
    """What the callers' runs left behind, per branch name."""

    calls: dict[str, SippResult]
    events: list[dict[str, Any]]
    cdrs: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    reception: SippResult
    entered: list[Entered]
    closed_events: list[dict[str, Any]]
    closed_messages: list[dict[str, Any]]
    plan: dict[str, Branch]
    message_seconds: float
    """The speech as the server trims a message (its VAD bounds and margin)."""

    def of(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        """The events of branch `name`'s call (the after-hours one's from the closed pbx)."""
        caller = self.plan[name].caller
        source = self.closed_events if name == "after_hours" else self.events
        return [e for e in source
                if e.get("caller") == caller and fields.items() <= e.items()]  # fmt: skip

    def steps(self, name: str) -> list[tuple[str, str]]:
        return [(e["step"], e["detail"]) for e in self.of(name, type="ivr")]

    def cdr(self, name: str) -> dict[str, Any]:
        [row] = [r for r in self.cdrs if r["caller"] == self.plan[name].caller]
        return row


def users_of(plan: dict[str, Branch]) -> list[tuple[str, str]]:
    return [RECEPTION, *((b.caller, f"pw{b.caller}") for b in plan.values())]


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clinic]:
    work = tmp_path_factory.mktemp("clinic")
    speech = espeak(work)
    plan = branches(len(speech) / 8000)
    open_pbx = clinic_config(work / "open", "00:00-24:00")
    closed_pbx = clinic_config(work / "closed", "")
    try:
        for proc in (open_pbx, closed_pbx):
            add_users(proc, users_of(plan))
        # Queues only the IVR reaches (no number), nobody to answer: callers wait in them.
        open_pbx.cli("queue", "add", "appointments", "--number", "", "--join-empty")
        open_pbx.cli("queue", "add", "nurse", "--number", "", "--join-empty")
        open_pbx.start()
        closed_pbx.start()
        reception_port = free_port(both=False)
        events = following(open_pbx, work, RECEPTION, reception_port)
        closed_events = following(closed_pbx, work, RECEPTION, free_port(both=False))
        target = ("127.0.0.1", open_pbx.port)
        open_branches = {n: b for n, b in plan.items() if n != "after_hours"}
        with ThreadPoolExecutor(len(plan) + 1) as pool:
            # 1001 answers twice: key 0, and the caller who made no choice.
            reception = pool.submit(
                run_sipp, "uas_agent.xml", target, work, local_port=reception_port, calls=2,
                timeout=max(b.seconds for b in plan.values()) + 20,
                extra=[*MEDIA, "-mp", str(free_port(both=False))],
            )  # fmt: skip
            wait_bound(reception_port)
            runs: dict[str, Future[SippResult]] = {
                name: pool.submit(call_100, open_pbx, work, name, branch, speech)
                for name, branch in open_branches.items()
            }
            runs["after_hours"] = pool.submit(
                call_100, closed_pbx, work, "after_hours", plan["after_hours"], speech
            )
            calls = {name: run.result(timeout=180) for name, run in runs.items()}
            reception_result = reception.result(timeout=60)
        try:
            for log in (events, closed_events):
                for name, branch in plan.items():
                    if (log is closed_events) == (name == "after_hours"):
                        log.wait(type="call_ended", caller=branch.caller, timeout=10)
        finally:
            events.stop()
            closed_events.stop()
        entered = of(Entered, logged(open_pbx, lambda out: len(of(Entered, out)) >= 2))
        yield Clinic(
            calls=calls,
            events=events.events,
            cdrs=open_pbx.cli_json("cdr"),
            messages=open_pbx.cli_json("voicemail"),
            reception=reception_result,
            entered=entered,
            closed_events=closed_events.events,
            closed_messages=closed_pbx.cli_json("voicemail"),
            plan=plan,
            message_seconds=len(trimmed(speech)) / 8000,
        )
    finally:
        open_pbx.stop()
        closed_pbx.stop()


def assert_completed(clinic: Clinic, name: str) -> None:
    result = clinic.calls[name]
    assert result.returncode == 0, result.explain()
    assert result.counter("SuccessfulCall(C)") == 1, result.explain()
    steps = clinic.steps(name)
    assert steps[0] == ("started", "main"), steps


def test_key_1_queues_the_caller_for_appointments(clinic: Clinic) -> None:
    assert_completed(clinic, "appointments")
    assert ("menu", "1") in clinic.steps("appointments")
    assert ("queue", "appointments") in clinic.steps("appointments")
    [moved] = clinic.of("appointments", type="call_transferred")
    assert (moved["to"], moved["by"]) == ("queue:appointments", "ivr:main")
    [entered] = [e for e in clinic.entered if e.caller == "5001"]
    assert (entered.queue, entered.priority) == ("appointments", 0)
    cdr = clinic.cdr("appointments")
    assert (cdr["route"], cdr["dialled"]) == ("ivr", "100"), cdr


def test_key_3_queues_the_caller_for_the_nurse_ahead_of_others(clinic: Clinic) -> None:
    assert_completed(clinic, "nurse")
    assert ("queue", "nurse:5") in clinic.steps("nurse")
    [moved] = clinic.of("nurse", type="call_transferred")
    assert (moved["to"], moved["by"]) == ("queue:nurse", "ivr:main")
    [entered] = [e for e in clinic.entered if e.caller == "5003"]
    assert (entered.queue, entered.priority) == ("nurse", 5)


def test_key_2_leaves_a_message_for_refills(clinic: Clinic) -> None:
    assert_completed(clinic, "refills")
    steps = clinic.steps("refills")
    assert ("menu", "2") in steps and ("play", "refills-intro") in steps, steps
    assert ("voicemail", "refills") in steps, steps
    assert ("play", "leave-message operator-option") in steps, steps
    # The caller hung up to end it (well before the silence would have): the message stays.
    [recorded] = [detail for step, detail in steps if step == "recorded"]
    assert recorded.endswith("hang-up"), steps
    [message] = [m for m in clinic.messages if m["caller"] == "5002"]
    assert (message["box"], message["folder"]) == ("refills", "new")
    # The message is the speech (trimmed to it), not the 1 s before it and 1.5 s after.
    # (Through A-law and the voice detector's hangover the server's bounds come out up to
    # ~0.4 s wider than the same trim of the speech as synthesized.)
    assert message["seconds"] == pytest.approx(clinic.message_seconds, abs=0.6), message
    assert Path(message["path"]).is_file()
    assert clinic.cdr("refills")["answered_by"] == "voicemail:refills"


def test_key_0_rings_reception(clinic: Clinic) -> None:
    assert_completed(clinic, "reception")
    steps = clinic.steps("reception")
    assert ("menu", "0") in steps and ("transfer", "1001") in steps, steps
    assert clinic.cdr("reception")["answered_by"] == "1001"
    assert clinic.reception.returncode == 0, clinic.reception.explain()
    assert clinic.reception.counter("SuccessfulCall(C)") == 2, clinic.reception.explain()


def test_an_invalid_key_says_so_and_offers_the_menu_again(clinic: Clinic) -> None:
    assert_completed(clinic, "invalid")
    steps = clinic.steps("invalid")
    at = steps.index(("invalid", "9"))
    assert steps[at + 1 : at + 3] == [("play", "invalid"), ("play", "clinic-menu")], steps
    assert [s for s in steps if s == ("play", "clinic-menu")] == [("play", "clinic-menu")] * 2
    assert steps[-1] == ("ended", "caller hung up"), steps


def test_an_extension_that_does_not_exist_is_an_invalid_choice(clinic: Clinic) -> None:
    assert_completed(clinic, "no_such_extension")
    steps = clinic.steps("no_such_extension")
    at = steps.index(("invalid", "1009"))
    assert steps[at + 1 : at + 3] == [("play", "invalid"), ("play", "clinic-menu")], steps
    assert not [s for s in steps if s[0] == "transfer"], steps


def test_no_key_at_all_goes_to_reception_after_the_retries(clinic: Clinic) -> None:
    assert_completed(clinic, "timeout")
    steps = clinic.steps("timeout")
    timeouts = [s for s in steps if s[0] == "timeout"]
    assert timeouts == [("timeout", f"attempt {n}") for n in (1, 2, 3)], steps
    assert ("menu", "no choice") in steps and ("transfer", "1001") in steps, steps
    assert clinic.cdr("timeout")["answered_by"] == "1001"


def test_after_hours_callers_hear_the_notices_then_leave_a_message(clinic: Clinic) -> None:
    assert_completed(clinic, "after_hours")
    steps = clinic.steps("after_hours")
    plays = [detail for step, detail in steps if step == "play"]
    assert plays[:3] == ["after-hours emergency", "after-hours-message", "after-hours-urgent"]
    assert ("menu", "1") in steps, steps
    assert "clinic-menu" not in plays
    assert ("voicemail", "clinic") in steps, steps
    assert "leave-message" in plays, plays  # no "operator-option": reception is closed
    assert clinic.of("after_hours", type="call_ended")[0]["answered_by"] == "voicemail:clinic"
    [message] = clinic.closed_messages
    assert (message["box"], message["caller"], message["urgent"]) == ("clinic", "5007", True)
    assert message["seconds"] > 1.0, message
