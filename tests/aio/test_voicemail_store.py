"""The exchange's mailboxes (pbx.voicemail over a real SQLite store) and the operator's
`pbx voicemail ...` commands on them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

from ivr.session import Recording, RecordingEnd
from ivr.testing import speech_like
from ivr.voicemail import Folder, Greeting, Operator
from pbx.cli import main
from pbx.config import Config, load
from pbx.store import Store, User, VoicemailCounts
from pbx.voicemail import Voicemail

CONFIG = """data_dir = "data"
[voicemail]
extensions = true
min_seconds = 1.0
[[mailbox]]
box = "refills"
name = "Prescription refills"
pin = "2468"
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "pbx.toml"
    path.write_text(CONFIG)
    return load(path)


def _message_audio(speech: float, silence: float) -> np.ndarray:
    return np.concatenate([
        np.zeros(round(0.5 * 8000), dtype=np.int16), speech_like(speech),
        np.zeros(round(silence * 8000), dtype=np.int16),
    ])  # fmt: skip


async def test_save_trims_the_silence_and_raises_mwi(config: Config) -> None:
    store = await Store.open(config.database)
    changed: list[str] = []

    async def mwi(box: str) -> None:
        changed.append(box)

    try:
        boxes = Voicemail(config, store, lambda ext: ext == "1002", mwi, clock=lambda: 1000.0)
        assert await boxes.exists("refills") and await boxes.exists("1002")
        assert not await boxes.exists("1003") and not await boxes.exists("nobody")
        assert await boxes.is_personal("1002") and not await boxes.is_personal("refills")
        assert await boxes.pin("refills") == "2468"  # from the config...
        await store.set_mailbox_pin("refills", "1357", 1.0)
        assert await boxes.pin("refills") == "1357"  # ...unless set in the database
        assert await boxes.pin("1002") == ""
        recording = Recording(_message_audio(4.0, 5.0), RecordingEnd.SILENCE)
        message = await boxes.save("1002", "1005", "Dr Who", recording, "call-1")
        assert message is not None and changed == ["1002"]
        data, rate = soundfile.read(str(message.path), dtype="int16")
        assert rate == 8000
        # 4 s of speech kept with 0.3 s each side (and webrtcvad's hangover), not 9.5 s.
        assert 4.4 <= len(data) / 8000 <= 4.9
        assert message.seconds == pytest.approx(len(data) / 8000)
        assert await boxes.counts("1002") == VoicemailCounts(new=1)
        # A caller who hung up at the beep: half a second of nothing.
        short = Recording(np.zeros(4000, dtype=np.int16), RecordingEnd.HANG_UP)
        assert await boxes.save("1002", "1005", "", short, "call-2") is None
        (listed,) = await boxes.messages("1002")
        assert listed.caller_name == "Dr Who" and listed.folder is Folder.NEW
        await boxes.mark(listed, Folder.SAVED)
        assert await boxes.counts("1002") == VoicemailCounts(saved=1)
        await boxes.delete(listed)
        assert await boxes.counts("1002") == VoicemailCounts() and not message.path.exists()
        assert changed == ["1002"] * 3
        assert await boxes.greeting("1002", Greeting.BUSY) is None
    finally:
        await store.close()


def test_urgent_messages_are_counted_apart_and_listed_first(config: Config) -> None:
    async def leave_three() -> None:
        store = await Store.open(config.database)
        now = iter(range(1000, 1010))
        try:
            boxes = Voicemail(config, store, lambda ext: False, clock=lambda: float(next(now)))
            recording = Recording(_message_audio(2.0, 1.0), RecordingEnd.KEY, "#")
            saved = await boxes.save("refills", "1005", "", recording, "c1", urgent=True)
            normal = await boxes.save("refills", "1006", "", recording, "c2")
            urgent = await boxes.save("refills", "1007", "", recording, "c3", urgent=True)
            assert saved is not None and normal is not None and urgent is not None
            assert urgent.urgent and not normal.urgent
            await boxes.mark(saved, Folder.SAVED)
            assert await boxes.counts("refills") == VoicemailCounts(2, 1, 1, 1)
            listed = await boxes.messages("refills")
            # New before saved; in each, urgent before the rest, though left later.
            assert [m.id for m in listed] == [urgent.id, normal.id, saved.id]
            assert [m.urgent for m in listed] == [True, False, True]
        finally:
            await store.close()

    asyncio.run(leave_three())
    code, out = _cli(config, "voicemail", "--json")
    assert code == 0, out
    assert [(r["caller"], r["urgent"]) for r in json.loads(out)] == [
        ("1007", True),
        ("1006", False),
        ("1005", True),
    ]
    code, out = _cli(config, "voicemail")
    assert code == 0 and out.splitlines()[0].split()[:4] == ["ID", "BOX", "FOLDER", "URGENT"]
    assert [line.split()[3] for line in out.splitlines()[1:]] == ["yes", "-", "yes"]
    code, out = _cli(config, "voicemail", "boxes", "--json")
    refills = {b["box"]: b for b in json.loads(out)}["refills"]
    assert (refills["new"], refills["urgent"], refills["saved"]) == (2, 1, 1)


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "clinic" / "pbx.toml"


async def test_each_box_has_its_operator(tmp_path: Path) -> None:
    path = tmp_path / "pbx.toml"
    path.write_text(
        CONFIG.replace(
            "[voicemail]\n", '[voicemail]\noperator = "1001"\noperator_hours = "clinic"\n'
        )
        + 'operator = "600"\n[[mailbox]]\nbox = "night"\noperator = ""\n'
        '[[hours]]\nname = "clinic"\nmonday = "08:00-17:00"\n'
    )
    config = load(path)
    store = await Store.open(config.database)
    try:
        boxes = Voicemail(config, store, lambda ext: ext in ("1001", "1002"))
        assert await boxes.operator("1002") == Operator("1001", "clinic")  # [voicemail]'s
        assert await boxes.operator("refills") == Operator("600")  # its own, at any time
        assert await boxes.operator("night") is None  # "" in [[mailbox]]: none
        assert await boxes.operator("1001") is None  # not the extension that did not answer
        # The demo clinic: reception while open, for every box but reception's own.
        demo = Voicemail(load(EXAMPLE), store, lambda ext: ext in ("1001", "1002"))
        assert await demo.operator("1002") == Operator("1001", "clinic")
        assert await demo.operator("clinic") == Operator("1001", "clinic")
        assert await demo.operator("1001") is None
    finally:
        await store.close()


def _cli(config: Config, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["-c", str(config.path), *args])
    return result.exit_code, result.output


def test_voicemail_commands(config: Config, tmp_path: Path) -> None:
    async def prepare() -> str:
        store = await Store.open(config.database)
        try:
            await store.add_user(User("1002", "", "pbx", "x" * 32, "y" * 64), 0.0)
            boxes = Voicemail(config, store, lambda ext: ext == "1002")
            recording = Recording(_message_audio(2.0, 1.0), RecordingEnd.KEY, "#")
            message = await boxes.save("refills", "1002", "Ann", recording, "c1")
            assert message is not None
            return message.id
        finally:
            await store.close()

    message_id = asyncio.run(prepare())
    code, out = _cli(config, "voicemail", "--json")
    assert code == 0, out
    (row,) = json.loads(out)
    assert row["id"] == message_id and row["box"] == "refills" and row["folder"] == "new"
    assert row["caller"] == "1002" and row["call_id"] == "c1" and row["seconds"] > 1.5
    code, out = _cli(config, "voicemail", "boxes", "--json")
    assert code == 0, out
    boxes = {b["box"]: b for b in json.loads(out)}
    assert set(boxes) == {"refills", "1002"}
    assert boxes["refills"]["new"] == 1 and boxes["refills"]["pin"] is True
    assert boxes["1002"]["pin"] is False
    assert _cli(config, "voicemail", "pin", "1002", "12")[0] == 2  # too short
    assert _cli(config, "voicemail", "pin", "9999", "1234")[0] == 2  # no such box
    assert _cli(config, "voicemail", "pin", "1002", "4321") == (0, "mailbox 1002: PIN set\n")
    greeting = tmp_path / "hello.flac"
    soundfile.write(str(greeting), np.zeros(16000), 16000)
    code, out = _cli(config, "voicemail", "greeting", "1002", "busy", str(greeting))
    assert code == 0, out
    made = config.voicemail_dir / "1002" / "greeting-busy.wav"
    assert soundfile.info(str(made)).samplerate == 8000
    assert soundfile.info(str(made)).duration == pytest.approx(1.0)
    code, out = _cli(config, "voicemail", "boxes", "--json")
    assert {b["box"]: b for b in json.loads(out)}["1002"]["greetings"] == ["busy"]
    assert _cli(config, "voicemail", "mark", message_id, "saved")[0] == 0
    exported = tmp_path / "out"
    exported.mkdir()
    code, out = _cli(config, "voicemail", "export", message_id, str(exported))
    assert code == 0 and Path(out.strip()).parent == exported
    code, out = _cli(config, "voicemail", "--box", "refills", "--json")
    assert json.loads(out)[0]["folder"] == "saved"
    assert _cli(config, "voicemail", "delete", message_id)[0] == 0
    assert json.loads(_cli(config, "voicemail", "--json")[1]) == []
    code, out = _cli(config, "voicemail", "delete", message_id)
    assert code == 1 and "no message" in out


def test_prompts_tts(tmp_path: Path) -> None:
    import shutil

    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: `make test-deps` installs it")
    out = tmp_path / "p" / "hello.wav"
    result = CliRunner().invoke(main, ["prompts", "tts", "hello there", str(out)])
    assert result.exit_code == 0, result.output
    info = soundfile.info(str(out))
    assert info.samplerate == 8000 and info.channels == 1 and 0.4 < info.duration < 2.0
    samples, _ = soundfile.read(str(out))
    assert 20 * np.log10(np.sqrt(np.mean(samples**2))) == pytest.approx(-16.0, abs=1.5)
