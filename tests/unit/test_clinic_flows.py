"""The example clinic's flows (examples/clinic/clinic_flows.py), branch by branch, on the
IVR test harness: what the caller hears and where the call goes. This is also the example
of how to unit-test a flow (README, "Testing a flow")."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from ivr import Outcome, Prompts
from ivr.testing import HangUp, MemoryMailboxes, Speak, Wait, run

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "clinic"
EXTENSIONS = {"1001", "1002", "1003", "1004", "1005"}


def _load() -> ModuleType:
    path = EXAMPLE / "clinic_flows.py"
    spec = importlib.util.spec_from_file_location("clinic_flows_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


clinic = _load()
PROMPTS = Prompts([EXAMPLE / "prompts"], base=EXAMPLE)


def call(script: list[object], open_: bool = True, **kwargs: object):  # type: ignore[no-untyped-def]
    kwargs.setdefault("extensions", EXTENSIONS)
    kwargs.setdefault("hours", {"clinic": open_})
    return run(clinic.main, script, prompts=PROMPTS, **kwargs)  # type: ignore[arg-type]


def test_the_menu_is_heard_after_the_welcome() -> None:
    result = call(["1"])
    assert result.prompts[:2] == ["clinic-welcome", "clinic-menu"]
    assert result.answered


def test_1_appointments_queue() -> None:
    result = call(["1"])
    assert result.outcome is Outcome.QUEUED
    assert result.queued == ("appointments", 0)
    assert "please-hold" in result.prompts
    assert result.vars["choice"] == "1"


def test_1_waits_briefly_for_more_digits_because_1001_starts_with_1() -> None:
    result = call(["1"])
    menu_done = next(p for p in result.played if p.names == ("please-hold",))
    # The key cut the menu short at once; then 2 s (the inter-digit wait) for a second key.
    assert menu_done.at == pytest.approx(result.played[0].seconds + 2.0, abs=0.05)


def test_2_prescription_refills_voicemail(tmp_path: Path) -> None:
    boxes = MemoryMailboxes(tmp_path, {"refills": "", "clinic": ""})
    result = call(["2", Speak(6.0), Wait(10)], mailboxes=boxes)
    assert result.outcome is Outcome.VOICEMAIL
    assert result.destination == "refills"
    assert result.prompts[2:5] == ["refills-intro", "leave-message", "tone:beep"]
    (message,) = boxes.stored.values()
    assert message.box == "refills"
    assert message.seconds == pytest.approx(6.0 + boxes.silence_seconds, abs=0.05)


def test_3_nurse_line_at_high_priority() -> None:
    result = call(["3"])
    assert result.queued == ("nurse", clinic.NURSE_PRIORITY)
    assert result.vars["choice"] == "3"


def test_0_reception() -> None:
    result = call(["0"])
    assert result.outcome is Outcome.TRANSFERRED
    assert result.transfers == ["1001"]
    assert result.prompts[-1] == "transferring"


def test_reception_not_answering_takes_a_message_for_it(tmp_path: Path) -> None:
    boxes = MemoryMailboxes(tmp_path, {"1001": "", "clinic": ""}, personal={"1001"})
    result = call(["0", Speak(3.0), HangUp()], unreachable={"1001"}, mailboxes=boxes)
    assert result.outcome is Outcome.VOICEMAIL
    assert result.destination == "1001"
    assert "no-one-available" in result.prompts
    (message,) = boxes.stored.values()
    assert message.box == "1001"


def test_an_extension_that_says_busy_takes_a_message_with_its_busy_greeting(
    tmp_path: Path,
) -> None:
    boxes = MemoryMailboxes(tmp_path, {"1004": "", "clinic": ""}, personal={"1004"})
    result = call(["1004", Speak(3.0), HangUp()], busy={"1004"}, mailboxes=boxes)
    assert result.outcome is Outcome.VOICEMAIL and result.destination == "1004"
    assert "person-busy" in result.prompts and "no-one-available" not in result.prompts
    assert [m.box for m in boxes.stored.values()] == ["1004"]


def test_dial_by_extension() -> None:
    result = call(["1004"])
    assert result.transfers == ["1004"]
    assert result.vars["choice"] == "1004"


def test_an_extension_that_does_not_exist_is_invalid() -> None:
    result = call(["19", "3"])  # "1" waits for more; "19" is no one; then 3
    assert result.prompts.count("invalid") == 1
    assert result.queued == ("nurse", clinic.NURSE_PRIORITY)


def test_invalid_key_then_a_valid_one() -> None:
    result = call(["9", "1"])
    assert result.prompts[:4] == ["clinic-welcome", "clinic-menu", "invalid", "clinic-menu"]
    assert result.queued == ("appointments", 0)


def test_no_key_at_all_goes_to_reception_after_three_tries() -> None:
    result = call([Wait(120)])
    assert result.prompts.count("clinic-menu") == 3
    assert [s for s in result.steps if s[0] == "timeout"] == [
        ("timeout", "attempt 1"), ("timeout", "attempt 2"), ("timeout", "attempt 3")
    ]  # fmt: skip
    assert result.transfers == ["1001"]


def test_three_invalid_keys_go_to_reception() -> None:
    result = call(["9", "8", "7"])
    assert result.prompts.count("invalid") == 3
    assert result.transfers == ["1001"]


def test_no_queue_configured_falls_back_to_reception() -> None:
    result = call(["1"], queues=set())
    assert result.queued is None
    assert result.transfers == ["1001"]


def test_after_hours_always_says_the_emergency_number_in_full(tmp_path: Path) -> None:
    boxes = MemoryMailboxes(tmp_path, {"clinic": ""})
    # Keys pressed during the emergency message do not cut it short.
    result = call(["1", Speak(4.0), Wait(10)], open_=False, mailboxes=boxes)
    first, second = result.played[:2]
    assert first.names == ("after-hours", "emergency") and not first.interrupted
    assert "clinic-menu" not in result.prompts
    assert result.destination == "clinic"
    assert [m.box for m in boxes.stored.values()] == ["clinic"]
    assert second.names == ("after-hours-message",) and not second.interrupted
    # No key for the urgent question: an ordinary message.
    assert result.prompts[3:6] == ["after-hours-urgent", "leave-message", "tone:beep"]
    assert not boxes.stored["m1"].urgent


def test_after_hours_a_caller_can_mark_the_message_urgent(tmp_path: Path) -> None:
    boxes = MemoryMailboxes(tmp_path, {"clinic": ""})
    notices = sum(
        PROMPTS.sound(name).seconds for name in ("after-hours", "emergency", "after-hours-message")
    )
    result = call([Wait(notices + 1.0), "1", Speak(4.0), Wait(10)], open_=False, mailboxes=boxes)
    assert result.played[2].names == ("after-hours-urgent",) and result.played[2].interrupted
    assert result.prompts[4:6] == ["leave-message", "tone:beep"]
    [message] = boxes.stored.values()
    assert message.box == "clinic" and message.urgent


def test_caller_hanging_up_in_the_menu() -> None:
    result = call([Wait(3), HangUp()])
    assert result.outcome is Outcome.CALLER_HUNG_UP
    assert result.transfers == [] and result.queued is None


def test_the_readmes_flow_test_passes_as_written(tmp_path: Path) -> None:
    # README's "Testing a flow" is a test file to put beside clinic_flows.py: it must pass.
    readme = (EXAMPLE.parents[1] / "README.md").read_text()
    section = readme[readme.index("### Testing a flow") :]
    start = section.index("```python\n") + len("```python\n")
    (tmp_path / "test_clinic.py").write_text(section[start : section.index("```", start)])
    shutil.copy(EXAMPLE / "clinic_flows.py", tmp_path)
    shutil.copytree(EXAMPLE / "prompts", tmp_path / "prompts")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_clinic.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout, done.stdout
