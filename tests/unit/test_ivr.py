"""The IVR flow API on the test harness: collect, menu, record, play, the runner's error
handling and hang-ups, the registry (loading, reloading, bad modules), voicemail flows."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import soundfile

from ivr import DialStatus, FlowRegistry, HungUp, Outcome, RecordingEnd, Session, flow
from ivr.flows import Flow, import_flows
from ivr.testing import (
    TEST_EPOCH,
    HangUp,
    MemoryMailboxes,
    ScriptedChannel,
    Speak,
    Wait,
    run,
    run_async,
)
from ivr.voicemail import Folder, Greeting, check_messages
from pbx.errors import ConfigError


def collecting(**options: object):  # type: ignore[no-untyped-def]
    async def flow_(call: Session) -> None:
        call.set_var("got", await call.collect(**options))  # type: ignore[arg-type]

    return flow_


@pytest.mark.parametrize(
    ("script", "options", "got", "elapsed"),
    [
        (["1234"], {"max_digits": 4}, "1234", 0.0),
        (["12#9"], {"max_digits": 6}, "12", 0.0),  # the terminator ends it, not kept
        (["12", Wait(10)], {"max_digits": 6, "inter_digit_timeout": 3.0}, "12", 3.0),
        ([Wait(10)], {"max_digits": 4, "timeout": 5.0}, "", 5.0),
        ([Wait(4), "7"], {"max_digits": 1, "timeout": 5.0}, "7", 4.0),
        (["12*"], {"max_digits": 6, "terminator": "*#"}, "12", 0.0),
        (["1#"], {"max_digits": 3, "terminator": ""}, "1#", 3.0),
    ],
)
def test_collect(
    script: list[object], options: dict[str, object], got: str, elapsed: float
) -> None:
    result = run(collecting(**options), script)  # type: ignore[arg-type]
    assert result.vars["got"] == got
    assert result.elapsed == pytest.approx(elapsed)


def test_collect_with_a_prompt_takes_the_key_that_cut_it_short() -> None:
    result = run(collecting(max_digits=2, prompt="enter-pin"), ["42"])
    assert result.vars["got"] == "42"
    assert result.played[0].interrupted and result.played[0].seconds == 0.0


def test_collect_refuses_zero_digits() -> None:
    result = run(collecting(max_digits=0), [])
    assert result.outcome is Outcome.HUNG_UP  # the flow failed: apology, no fallback
    assert ("error", "ValueError: max_digits must be at least 1") in result.steps


def menu_flow(**options: object):  # type: ignore[no-untyped-def]
    async def flow_(call: Session) -> None:
        call.set_var("choice", await call.menu("please-hold", "123", **options))  # type: ignore[arg-type]

    return flow_


def test_menu_choice_is_immediate_without_extensions() -> None:
    result = run(menu_flow(), ["2"])
    assert result.vars["choice"] == "2"
    assert result.elapsed == 0.0  # the key cut the prompt at once


def test_menu_invalid_then_timeout_then_nothing() -> None:
    result = run(menu_flow(retries=3, timeout_prompt="goodbye"), ["9", Wait(100)])
    assert result.vars["choice"] == "None"
    steps = [s for s in result.steps if s[0] in ("invalid", "timeout", "menu")]
    assert steps == [("invalid", "9"), ("timeout", "attempt 2"), ("timeout", "attempt 3"),
                     ("menu", "no choice")]  # fmt: skip
    # The timeout prompt plays between tries, not after the last one.
    assert result.prompts == ["please-hold", "invalid", "please-hold", "goodbye", "please-hold"]


def test_menu_with_extensions() -> None:
    both = {"extensions": {"1001", "200"}}
    assert run(menu_flow(extensions=True), ["1001"], **both).vars["choice"] == "1001"
    assert run(menu_flow(extensions=True), ["1", Wait(5)], **both).vars["choice"] == "1"
    assert run(menu_flow(extensions=True), ["200"], **both).vars["choice"] == "200"
    assert run(menu_flow(extensions=True), ["2", Wait(5)], **both).vars["choice"] == "2"
    assert run(menu_flow(extensions=True), ["3"], **both).vars["choice"] == "3"
    invalid = run(menu_flow(extensions=True, retries=1), ["105"], **both)
    assert ("invalid", "105") in invalid.steps


def test_play_says_numbers_and_digits() -> None:
    async def say(call: Session) -> None:
        await call.say_number(1205)
        await call.say_digits("10*2")

    result = run(say, [])
    assert result.prompts == ["1", "thousand", "2", "hundred", "5", "1", "0", "star", "2"]
    assert result.outcome is Outcome.HUNG_UP  # returning hangs up


def test_prompt_lookup_prefers_the_site_directory(tmp_path: Path) -> None:
    import soundfile

    from ivr import Prompts

    soundfile.write(str(tmp_path / "goodbye.wav"), np.zeros(800, dtype=np.int16), 8000)
    prompts = Prompts([tmp_path], base=tmp_path)
    assert prompts.path("goodbye") == tmp_path / "goodbye.wav"
    assert prompts.path("please-hold").name == "please-hold.wav"  # the shipped one
    assert prompts.path("sub/x.wav") == tmp_path / "sub" / "x.wav"
    assert prompts.sound(["goodbye", "goodbye"]).seconds == pytest.approx(0.2 + 0.04)
    with pytest.raises(ValueError, match="not a prompt name"):
        prompts.path("Not A Name")


def recorder(**options: object):  # type: ignore[no-untyped-def]
    async def flow_(call: Session) -> None:
        recording = await call.record(**options)  # type: ignore[arg-type]
        call.set_var("end", recording.ended_by.value)
        call.set_var("seconds", f"{recording.seconds:.2f}")

    return flow_


@pytest.mark.parametrize(
    ("script", "options", "end", "seconds"),
    [
        ([Speak(3), Wait(60)], {"silence_seconds": 2.0}, RecordingEnd.SILENCE, 5.0),
        ([Speak(3), "#"], {}, RecordingEnd.KEY, 3.0),
        ([Speak(3), HangUp()], {}, RecordingEnd.HANG_UP, 3.0),
        ([Speak(30)], {"max_seconds": 10.0}, RecordingEnd.MAX_LENGTH, 10.0),
        ([Speak(2), Wait(1), Speak(2), Wait(9)], {"silence_seconds": 3.0}, RecordingEnd.SILENCE,
         8.0),
    ],
)  # fmt: skip
def test_record_ends(
    script: list[object], options: dict[str, object], end: RecordingEnd, seconds: float
) -> None:
    result = run(recorder(**options), script)
    assert result.vars["end"] == end.value
    assert float(result.vars["seconds"]) == pytest.approx(seconds, abs=0.01)
    assert result.prompts == ["tone:beep"]


def test_the_harness_speech_is_speech_to_webrtcvad() -> None:
    from media.vad import speech_bounds

    result = run(recorder(silence_seconds=2.0), [Wait(1), Speak(2), Wait(5)])
    (recording,) = result.recordings
    bounds = speech_bounds(recording.samples, margin=0.0)
    assert bounds is not None
    # The beep took the first 0.25 s of the caller's silence.
    assert bounds[0] / 8000 == pytest.approx(0.75, abs=0.05)
    assert bounds[1] / 8000 == pytest.approx(2.75, abs=0.15)  # webrtcvad's hangover


def test_an_exception_gets_the_apology_and_the_fallback(caplog: pytest.LogCaptureFixture) -> None:
    @flow("broken", fallback="1001")
    async def broken(call: Session) -> None:
        await call.play("please-hold")
        raise RuntimeError("bug in the flow")

    with caplog.at_level(logging.ERROR, logger="ivr"):
        result = run(broken, [])
    assert result.prompts == ["please-hold", "sorry-error"]
    assert result.outcome is Outcome.FALLBACK
    assert result.transfers == ["1001"]
    assert "bug in the flow" in caplog.text and "Traceback" in caplog.text


def test_a_failing_flow_without_fallback_uses_the_default_and_else_hangs_up() -> None:
    async def broken(call: Session) -> None:
        raise KeyError("x")

    assert run(broken, [], fallback="600").transfers == ["600"]
    result = run(broken, [], unreachable={"600"}, fallback="600")
    assert result.outcome is Outcome.HUNG_UP


def test_a_caller_hanging_up_ends_the_flow_cleanly() -> None:
    finished: list[str] = []

    async def long(call: Session) -> None:
        try:
            await call.play("your-call-is-important")
            await call.collect(4, timeout=30.0)
        finally:
            finished.append("cleanup ran")

    result = run(long, [Wait(1), HangUp()])
    assert result.outcome is Outcome.CALLER_HUNG_UP
    assert finished == ["cleanup ran"]
    assert result.steps[-1] == ("ended", "caller hung up")


def test_a_cancelled_flow_reports_the_hang_up() -> None:
    async def waits(call: Session) -> None:
        await call.collect(1, timeout=3600.0)

    async def scenario() -> list[tuple[str, str]]:
        from ivr import Prompts
        from ivr.flows import run_flow

        channel = ScriptedChannel([])
        started = asyncio.Event()
        real_digit = channel.digit

        async def digit(seconds: float) -> str | None:
            started.set()
            await asyncio.sleep(3600)  # a real phone: nothing pressed
            return await real_digit(seconds)

        channel.digit = digit  # type: ignore[method-assign]
        session = Session(channel, Prompts())
        task = asyncio.ensure_future(run_flow(Flow("w", waits), session))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return channel.steps

    steps = asyncio.run(scenario())
    assert steps[-1] == ("ended", "caller hung up")


def test_after_a_transfer_the_call_is_gone_for_the_flow() -> None:
    async def keeps_going(call: Session) -> None:
        assert await call.transfer("1001")
        with pytest.raises(HungUp):
            await call.play("please-hold")
        call.set_var("after", "raised")

    result = run(keeps_going, [])
    assert result.vars["after"] == "raised"
    assert result.outcome is Outcome.TRANSFERRED


def test_flow_decorator_checks() -> None:
    with pytest.raises(ValueError, match="not a flow name"):
        flow("a:b")
    with pytest.raises(TypeError, match="not an async function"):
        flow("sync")(lambda call: None)  # type: ignore[arg-type,return-value]


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def test_registry_loads_and_reloads(tmp_path: Path) -> None:
    module = tmp_path / "site_flows.py"
    _write(module, 'from ivr import flow\n\n@flow("main", fallback="1001")\nasync def main(call):\n'
                   '    await call.play("goodbye")\n')  # fmt: skip
    registry = FlowRegistry(["site_flows.py"], tmp_path)
    assert registry.load() == []
    old = registry.get("main")
    assert old is not None and old.fallback == "1001"
    _write(module, 'from ivr import flow\n\n@flow("main")\nasync def main(call):\n'
                   '    await call.play("please-hold")\n\n@flow("other")\nasync def other(call):\n'
                   '    pass\n')  # fmt: skip
    assert registry.load() == []
    assert sorted(registry.flows) == ["main", "other"]
    new = registry.get("main")
    assert new is not None and new.function is not old.function
    assert run(new, []).prompts == ["please-hold"]
    assert run(old, []).prompts == ["goodbye"]  # a call in the old flow keeps its code
    _write(module, "def broken(:\n")
    errors = registry.load()
    assert len(errors) == 1 and "SyntaxError" in errors[0]
    assert sorted(registry.flows) == ["main", "other"]  # kept


def test_registry_errors(tmp_path: Path) -> None:
    twice = 'from ivr import flow\n\n@flow("a")\nasync def f(call):\n    pass\n'
    _write(tmp_path / "twice.py", twice + twice.replace("def f", "def g").split("\n", 1)[1])
    errors = FlowRegistry(["missing.py", "twice.py", "no_such_module_x"], tmp_path).load()
    assert len(errors) == 3
    assert "no such file" in errors[0]
    assert "two flows are named 'a'" in errors[1]
    assert "no module no_such_module_x" in errors[2]
    with pytest.raises(ConfigError):
        import_flows("missing.py", tmp_path)


def test_voicemail_check_messages(tmp_path: Path) -> None:
    boxes = MemoryMailboxes(tmp_path, {"1002": "4321"}, personal={"1002"})

    async def leave(call: Session) -> None:
        await call.voicemail("1002")

    for speech in (3.0, 5.0):
        assert run(leave, [Speak(speech), Wait(10)], mailboxes=boxes, caller="1005").outcome is (
            Outcome.VOICEMAIL
        )
    first, second = boxes.stored.values()

    async def listen(call: Session) -> None:
        await check_messages(call, boxes, "1002")

    # Wrong PIN once, then right; hear the first, delete it (7) while the menu plays; hear
    # the second, save it (9).
    result = run(listen, ["1111#", "4321#", Wait(16), "7", Wait(16), "9"], mailboxes=boxes)
    prompts = result.prompts
    assert prompts[:3] == ["enter-pin", "pin-incorrect", "enter-pin"]
    assert prompts[3:9] == ["you-have", "2", "new-messages", "and", "0", "saved-messages"]
    # Each message's envelope, then the message: left a minute apart from 9 a.m. (UTC).
    at = prompts.index(str(first.path))
    assert prompts[at - 11 : at] == [
        "received", "today", "at", "9", "oclock", "a-m", "message-from", "1", "0", "0", "5",
    ]  # fmt: skip
    at = prompts.index(str(second.path))
    assert prompts[at - 12 : at] == [
        "received", "today", "at", "9", "oh", "1", "a-m", "message-from", "1", "0", "0", "5",
    ]  # fmt: skip
    assert str(first.path) in prompts and str(second.path) in prompts
    assert "message-deleted" in prompts and "message-saved" in prompts
    assert prompts[-3:] == ["no-more-messages", "mailbox-options", "goodbye"]
    assert list(boxes.stored) == [second.id]
    assert boxes.stored[second.id].folder is Folder.SAVED
    assert not first.path.exists()


def test_the_envelope_is_said_in_the_mailboxes_zone_or_not_at_all(tmp_path: Path) -> None:
    now = [TEST_EPOCH]  # Monday 2026-01-05 09:00 UTC: 04:00 in New York
    boxes = MemoryMailboxes(
        tmp_path, {"1002": "4321"}, timezone=ZoneInfo("America/New_York"), clock=lambda: now[0]
    )

    async def leave(call: Session) -> None:
        await call.voicemail("1002")

    async def listen(call: Session) -> None:
        await check_messages(call, boxes, "1002")

    run(leave, [Speak(3.0), Wait(10)], mailboxes=boxes, caller="anonymous")
    [message] = boxes.stored.values()
    now[0] += 86_400  # Tuesday, 04:00 there
    prompts = run(listen, ["4321#", Wait(20)], mailboxes=boxes).prompts
    at = prompts.index(str(message.path))
    # Not a number the caller gave: no "message from".
    assert prompts[at - 6 : at] == ["received", "yesterday", "at", "4", "oclock", "a-m"]
    now[0] += 3 * 86_400  # Friday: a weekday
    prompts = run(listen, ["4321#", Wait(20)], mailboxes=boxes).prompts
    assert prompts[prompts.index("received") + 1] == "monday"
    # Without the envelope, a caller's number is still said.
    run(leave, [Speak(3.0), Wait(10)], mailboxes=boxes, caller="1005")
    boxes.envelope = False
    prompts = run(listen, ["4321#", Wait(20), "6", Wait(20)], mailboxes=boxes).prompts
    assert "received" not in prompts and str(message.path) in prompts
    assert prompts.count("message-from") == 1, prompts


def test_an_urgent_message_is_counted_and_heard_first(tmp_path: Path) -> None:
    boxes = MemoryMailboxes(tmp_path, {"1002": "4321"})
    question = tmp_path / "press-1-if-urgent.wav"
    soundfile.write(str(question), np.zeros(8000, dtype=np.int16), 8000)

    async def leave(call: Session) -> None:
        # A flow asks; the caller's answer decides.
        key = await call.menu(question, "12", retries=0, timeout=3.0)
        await call.voicemail("1002", urgent=key == "1")

    run(leave, ["2", Speak(3.0), Wait(10)], mailboxes=boxes, caller="1005")
    run(leave, ["1", Speak(3.0), Wait(10)], mailboxes=boxes, caller="1006")
    normal, urgent = boxes.stored.values()
    assert urgent.urgent and not normal.urgent

    async def listen(call: Session) -> None:
        await check_messages(call, boxes, "1002")

    result = run(listen, ["4321#", Wait(16), "9", Wait(16), "9"], mailboxes=boxes)
    prompts = result.prompts
    assert prompts[1:8] == ["you-have", "2", "new-messages", "1", "urgent", "and", "0"]
    # The urgent message, though left second, is heard first, and announced.
    heard = [p for p in prompts if p in (str(normal.path), str(urgent.path))]
    assert heard == [str(urgent.path), str(normal.path)]
    assert prompts.index("urgent-message") < prompts.index(str(urgent.path))
    assert prompts.count("urgent-message") == 1


def test_mailbox_options_record_a_greeting_and_change_the_pin(tmp_path: Path) -> None:
    boxes = MemoryMailboxes(tmp_path, {"1002": "4321"}, personal={"1002"})

    async def listen(call: Session) -> None:
        await check_messages(call, boxes, "1002")

    # No messages; 0 for the options, 2 the busy greeting (said after the tone, then #);
    # 4 a new PIN, twice; then nothing, and the session ends.
    script = ["4321#", "0", "2", Wait(5), Speak(3.0), "#", "4", "2468#", "2468#"]
    result = run(listen, script, mailboxes=boxes)
    greeting = boxes.greetings[("1002", Greeting.BUSY)]
    assert ("greeting", "busy: recorded") in result.steps
    kept, _ = soundfile.read(str(greeting), dtype="int16")
    frames = kept[: len(kept) // 160 * 160].reshape(-1, 160).astype(np.float64)
    talking = np.sqrt((frames**2).mean(axis=1)) > 100
    assert talking.sum() * 0.02 == pytest.approx(3.0, abs=0.1)  # the 3 s said, kept
    prompts = result.prompts
    assert prompts.index("record-greeting") < prompts.index(str(greeting))  # heard back
    assert ("pin", "changed") in result.steps and boxes.pins["1002"] == "2468"
    assert prompts[-3:] == ["options-menu", "options-menu", "goodbye"]  # one retry
    assert result.outcome is Outcome.HUNG_UP

    async def leave(call: Session) -> None:
        await call.voicemail("1002", "busy")

    # Callers now hear the owner's greeting, not the standard one.
    assert run(leave, [HangUp()], mailboxes=boxes).prompts[:1] == [str(greeting)]


SIXTEEN = "1234567890123456"


@pytest.mark.parametrize(
    ("pins", "changed"),
    [
        (["12#"], False),  # too short
        (["2468#", "2469#"], False),  # a typo the second time
        ([SIXTEEN + "7#", SIXTEEN + "7#"], False),  # too long
        ([SIXTEEN + "#", SIXTEEN + "#"], True),  # the longest
        (["1234#", "1234#"], True),  # the shortest
    ],
)
def test_a_new_pin_must_be_4_to_16_digits_and_typed_twice(
    tmp_path: Path, pins: list[str], changed: bool
) -> None:
    boxes = MemoryMailboxes(tmp_path, {"1002": "4321"})

    async def listen(call: Session) -> None:
        await check_messages(call, boxes, "1002")

    result = run(listen, ["4321#", "0", "4", pins[0], Wait(1), *pins[1:]], mailboxes=boxes)
    first_entry = [d for s, d in result.steps if s == "collected"][1]  # after the old PIN
    assert first_entry == pins[0].rstrip("#")  # the whole of it was read as the new PIN
    expected = pins[0].rstrip("#") if changed else "4321"
    assert boxes.pins["1002"] == expected
    assert ("pin", "changed" if changed else "not changed") in result.steps


def test_a_greeting_too_short_or_hung_up_on_changes_nothing(tmp_path: Path) -> None:
    boxes = MemoryMailboxes(tmp_path, {"1002": "4321"}, min_seconds=2.0)

    async def listen(call: Session) -> None:
        await check_messages(call, boxes, "1002")

    short = run(listen, ["4321#", "0", "1", Wait(5), Speak(0.3), "#"], mailboxes=boxes)
    assert ("greeting", "unavailable: too short, not changed") in short.steps
    assert "greeting-too-short" in short.prompts
    hung_up = run(listen, ["4321#", "0", "1", Wait(5), Speak(3.0), HangUp()], mailboxes=boxes)
    assert hung_up.outcome is Outcome.CALLER_HUNG_UP
    assert boxes.greetings == {}


def test_0_during_the_greeting_goes_to_the_operator(tmp_path: Path) -> None:
    boxes = MemoryMailboxes(tmp_path, {"1002": ""}, personal={"1002"}, operator="1001")

    async def leave(call: Session) -> None:
        await call.voicemail("1002")

    result = run(leave, ["0"], mailboxes=boxes)
    assert result.prompts[:3] == ["no-one-available", "leave-message", "operator-option"]
    assert result.transfers == ["1001"] and result.outcome is Outcome.TRANSFERRED
    assert boxes.stored == {}
    # The operator does not answer: the caller leaves the message after all.
    after = run(leave, ["0", Wait(3), Speak(3.0), Wait(10)], mailboxes=boxes,
                unreachable={"1001"})  # fmt: skip
    assert after.prompts.count("leave-message") == 2 and after.outcome is Outcome.VOICEMAIL
    assert len(boxes.stored) == 1
    # Another key only skips the greeting; without an operator, 0 does too.
    for mailboxes, key in ((boxes, "5"), (MemoryMailboxes(tmp_path, {"1002": ""}), "0")):
        skipped = run(leave, [key, Wait(1), Speak(3.0), Wait(10)], mailboxes=mailboxes)
        assert skipped.transfers == [] and skipped.outcome is Outcome.VOICEMAIL


def test_the_operator_is_offered_only_while_its_hours_are_open(tmp_path: Path) -> None:
    boxes = MemoryMailboxes(tmp_path, {"1001": "", "1002": ""}, personal={"1001", "1002"},
                            operator="1001", operator_hours="clinic")  # fmt: skip

    async def leave(call: Session) -> None:
        await call.voicemail("1002")

    script = ["0", Wait(1), Speak(3.0), Wait(10)]
    opened = run(leave, script, mailboxes=boxes, hours={"clinic": True})
    assert "operator-option" in opened.prompts and opened.transfers == ["1001"]
    closed = run(leave, script, mailboxes=boxes, hours={"clinic": False})
    assert "operator-option" not in closed.prompts and closed.transfers == []
    assert closed.outcome is Outcome.VOICEMAIL and len(boxes.stored) == 1  # 0 skipped
    # Reception's own box does not offer reception, which has just not answered.

    async def leave_for_reception(call: Session) -> None:
        await call.voicemail("1001")

    own = run(leave_for_reception, script, mailboxes=boxes, hours={"clinic": True})
    assert "operator-option" not in own.prompts and own.transfers == []
    assert own.outcome is Outcome.VOICEMAIL


def test_voicemail_access_refused(tmp_path: Path) -> None:
    boxes = MemoryMailboxes(tmp_path, {"1002": "4321", "nopin": ""})

    async def listen(box: str | None):  # type: ignore[no-untyped-def]
        async def flow_(call: Session) -> None:
            await check_messages(call, boxes, box)

        return flow_

    wrong = run(asyncio.run(listen("1002")), ["1#", "2#", "3#"], mailboxes=boxes)
    assert wrong.prompts.count("pin-incorrect") == 3
    assert wrong.prompts[-1] == "goodbye" and wrong.outcome is Outcome.HUNG_UP
    nopin = run(asyncio.run(listen("nopin")), [], mailboxes=boxes)
    assert nopin.prompts == ["mailbox-no-pin", "goodbye"]
    asked = run(asyncio.run(listen(None)), ["77#"], mailboxes=boxes)
    assert asked.prompts == ["enter-mailbox", "invalid", "goodbye"]


def test_too_short_a_message_is_dropped(tmp_path: Path) -> None:
    boxes = MemoryMailboxes(tmp_path, {"refills": ""}, min_seconds=1.0)

    async def leave(call: Session) -> None:
        await call.voicemail("refills")

    result = run(leave, [HangUp()], mailboxes=boxes, patience=0.0)
    assert boxes.stored == {}
    assert ("message", "too short, dropped") in result.steps or result.outcome is (
        Outcome.CALLER_HUNG_UP
    )


def test_voicemail_to_a_box_that_does_not_exist_goes_on(tmp_path: Path) -> None:
    async def flow_(call: Session) -> None:
        if not await call.voicemail("nobody"):
            await call.transfer("1001")

    result = run(flow_, [], mailboxes=MemoryMailboxes(tmp_path))
    assert result.transfers == ["1001"]


def test_run_async_works_inside_a_loop() -> None:
    async def flow_(call: Session) -> None:
        await call.enqueue("nurse", priority=3)

    async def main() -> tuple[str, int] | None:
        return (await run_async(flow_, [])).queued

    assert asyncio.run(main()) == ("nurse", 3)


def test_a_dotted_flow_module_reloads_afresh(tmp_path: Path) -> None:
    # "pkg.module" in [ivr] modules: a reload is a new module compiled from the source, so
    # an edit of the same size within the same second is seen, and old calls keep theirs.
    package = tmp_path / "site_pkg_reload"
    package.mkdir()
    _write(package / "__init__.py", "")
    source = 'from ivr import flow\n\nPROMPT = "{}"\n\n@flow("main")\nasync def main(call):\n' \
             "    await call.play(PROMPT)\n"  # fmt: skip
    _write(package / "flows.py", source.format("goodbye"))
    registry = FlowRegistry(["site_pkg_reload.flows"], tmp_path)
    try:
        assert registry.load() == []
        old = registry.get("main")
        _write(package / "flows.py", source.format("invalid"))  # the same size
        assert registry.load() == []
        new = registry.get("main")
        assert old is not None and new is not None
        assert run(new, []).prompts == ["invalid"]
        assert run(old, []).prompts == ["goodbye"]
        _write(package / "flows.py", "def broken(:\n")
        [error] = registry.load()
        assert "SyntaxError" in error and registry.get("main") is new
        assert sys.modules["site_pkg_reload.flows"].PROMPT == "invalid"  # still there
    finally:
        for name in ("site_pkg_reload.flows", "site_pkg_reload"):
            sys.modules.pop(name, None)


def test_dial_status_says_how_the_last_transfer_went() -> None:
    seen: list[DialStatus] = []

    async def transfers(call: Session) -> None:
        seen.append(call.dial_status)
        for target in ("1002", "1003", "1004"):
            if await call.transfer(target):
                break
            seen.append(call.dial_status)
        seen.append(call.dial_status)

    result = run(transfers, [], busy={"1002"}, unreachable={"1003"})
    assert seen == [DialStatus.NONE, DialStatus.BUSY, DialStatus.NO_ANSWER, DialStatus.ANSWER]
    assert result.transfers == ["1004"] and result.outcome is Outcome.TRANSFERRED

    async def to_a_queue(call: Session) -> None:
        await call.transfer("queue:nowhere")
        seen.append(call.dial_status)

    seen.clear()
    run(to_a_queue, [], queues={"appointments"})
    assert seen == [DialStatus.UNAVAILABLE]


def test_dial_tone_until_the_caller_dials(caplog: pytest.LogCaptureFixture) -> None:
    async def dial_tone(call: Session) -> None:
        await call.tone("dial", 10.0)  # until a key, as a line's dial tone
        call.set_var("number", await call.collect(max_digits=4, timeout=5.0))

    result = run(dial_tone, [Wait(1.5), "1003"])
    assert result.prompts == ["tone:dial"]
    assert result.played[0].interrupted and result.played[0].seconds == pytest.approx(1.5)
    assert result.vars["number"] == "1003"
    # The site's plan: a tone it does not have is an error in the flow (the apology).
    broken = run(lambda call: call.tone("siren", 1.0), [])  # type: ignore[arg-type,return-value]
    assert broken.prompts == ["sorry-error"] and "no tone 'siren'" in caplog.text


def test_a_tone_that_plays_once_is_no_longer_than_itself() -> None:
    async def beep(call: Session) -> None:
        await call.tone("beep", 5.0)

    [played] = run(beep, []).played
    assert played.seconds == pytest.approx(0.25)  # not 5 s, most of them silence
