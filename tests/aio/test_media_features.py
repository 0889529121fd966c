"""Media features of calls between loopback phones, measured on the audio: recording
(which party is in which channel, by tone frequency), its feature codes, index and CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile

from media.dtmf import InbandDetector, dtmf_samples
from media.g711 import ULAW_DECODE, ulaw_encode
from pbx import config as pbx_config
from pbx.events import Event
from pbx.server import Exchange
from tests.aio.test_call_features import FEATURES, USERS, key_press
from tests.aio.test_register_flow import server_of
from tests.conftest import add_users
from tests.support.audio import sine, strongest
from tests.support.espeak import espeak
from tests.support.pbxproc import write_config
from tests.support.phone import Call, Phone, rtp_packet
from tests.support.ports import free_port
from tests.support.streams import killed_mid_recording

PhoneFactory = Callable[..., Awaitable[list[Phone]]]
RECORD_ALL = """
[recording]
record = "all"
"""


class Events:
    """The exchange's events as they come, and a way to await the next of a type."""

    def __init__(self, exchange: Exchange) -> None:
        self.seen: list[Event] = []
        self._waiters: list[tuple[str, asyncio.Future[Event]]] = []
        exchange.events.subscribe(self._on)

    def _on(self, event: Event) -> None:
        self.seen.append(event)
        for kind, future in list(self._waiters):
            if event.type == kind and not future.done():
                future.set_result(event)
                self._waiters.remove((kind, future))

    async def next(self, kind: str, timeout: float = 5.0) -> dict[str, object]:
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiters.append((kind, future))
        return (await asyncio.wait_for(future, timeout)).to_json()

    def of(self, kind: str) -> list[dict[str, object]]:
        return [e.to_json() for e in self.seen if e.type == kind]

    async def at_least(
        self, kind: str, count: int, timeout: float = 5.0
    ) -> list[dict[str, object]]:
        """The events of a type once there are `count` of them (some may be out already)."""
        while len(self.of(kind)) < count:
            await self.next(kind, timeout)
        return self.of(kind)


async def exchange_with(tmp_path: Path, extra: str) -> Exchange:
    config = FEATURES.format(park_timeout=30) + extra
    exchange = Exchange(pbx_config.load(write_config(tmp_path, free_port(), config)))
    await exchange.start()
    await add_users(exchange, USERS)
    return exchange


@contextlib.asynccontextmanager
async def phones_on(exchange: Exchange) -> AsyncIterator[PhoneFactory]:
    async with contextlib.AsyncExitStack() as stack:

        async def make(*extensions: str) -> list[Phone]:
            made = []
            for ext in extensions:
                phone = await Phone(server_of(exchange), ext, USERS[ext]).start()
                stack.push_async_callback(phone.stop)
                made.append(phone)
            return made

        yield make
        assert exchange.calls is not None
        await exchange.calls.stop()


async def talk(phone: Phone, port: int, samples: np.ndarray) -> None:
    """Send `samples` as PCMU in real time (20 ms packets): a phone's microphone."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for seq in range(len(samples) // 160):
        payload = ulaw_encode(samples[seq * 160 : (seq + 1) * 160])
        phone.rtp.sendto(rtp_packet(seq, payload), ("127.0.0.1", port))
        await asyncio.sleep(max(0.0, start + (seq + 1) * 0.02 - loop.time()))


async def pbx_command(tmp_path: Path, *args: str) -> str:
    """Run `pbx -c CONFIG ARGS...` as the operator would; its standard output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pbx", "-c", str(tmp_path / "pbx.toml"), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def connected(alice: Phone, bob: Phone) -> tuple[Call, Call]:
    invite = await alice.dial("1002")
    bob_call = await bob.answer(await bob.incoming())
    return await alice.answered(invite), bob_call


async def test_record_all_puts_the_caller_left_and_the_callee_right(tmp_path: Path) -> None:
    exchange = await exchange_with(tmp_path, RECORD_ALL)
    events = Events(exchange)
    try:
        async with phones_on(exchange) as phones:
            alice, bob = await phones("1001", "1002")
            alice_call, bob_call = await connected(alice, bob)
            started = events.of("recording_started")
            assert len(started) == 1 and started[0]["by"] == "policy"
            await asyncio.gather(
                talk(alice, alice_call.media_port, sine(500, 1.5)),
                talk(bob, bob_call.media_port, sine(1200, 1.5)),
            )
            await alice.bye(alice_call)
            stopped = await events.next("recording_stopped")
        path = Path(str(stopped["path"]))
        assert path.is_relative_to(tmp_path) and path.suffix == ".wav"
        data, rate = soundfile.read(path, dtype="int16")
        assert rate == 8000 and data.shape[1] == 2
        duration = stopped["duration"]
        assert isinstance(duration, float) and 1.4 <= duration <= 3.0, duration
        sound = np.flatnonzero(np.abs(data).max(axis=1))
        talking = data[sound[0] : sound[-1] + 1]
        assert len(talking) >= 8000  # over a second where both talked
        middle = talking[len(talking) // 4 : 3 * len(talking) // 4]
        assert strongest(middle[:, 0], 1) == pytest.approx([500.0], abs=10)
        assert strongest(middle[:, 1], 1) == pytest.approx([1200.0], abs=10)
        assert exchange.store is not None
        [row] = await exchange.store.recordings()
        assert row["call_id"] == stopped["call_id"] and row["path"] == str(path)
    finally:
        await exchange.stop()
    listed = await pbx_command(tmp_path, "recordings", "--json")
    [entry] = json.loads(listed)
    assert entry["path"] == str(path) and entry["call_id"] == stopped["call_id"]
    assert entry["duration"] == pytest.approx(stopped["duration"], abs=0.01)
    await pbx_command(tmp_path, "recordings", "export", str(entry["call_id"]), f"{tmp_path}/out/")
    assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes()


async def call_between(caller: Phone, callee: Phone) -> tuple[Call, Call]:
    invite = await caller.dial(callee.ext)
    callee_call = await callee.answer(await callee.incoming())
    return await caller.answered(invite), callee_call


@pytest.mark.parametrize(
    ("policy", "rules", "recorded"),
    [
        # Only what a rule names: calls of extension 1002, either way.
        ("rules", '[[recording_rule]]\nextension = "1002"\n', {"1002", "1002<"}),
        # Everything but what a rule keeps out.
        ("all", '[[recording_rule]]\nextension = "1003"\nrecord = false\n', {"1002", "1002<"}),
    ],
)
async def test_recording_rules_pick_calls_by_extension(
    tmp_path: Path, policy: str, rules: str, recorded: set[str]
) -> None:
    exchange = await exchange_with(tmp_path, f'[recording]\nrecord = "{policy}"\n\n{rules}')
    events = Events(exchange)
    made: set[str] = set()
    try:
        async with phones_on(exchange) as phones:
            alice, bob, carol = await phones("1001", "1002", "1003")
            # 1001 calls 1002, then 1003; then 1002 calls 1001 (1002 is the caller).
            calls = ((alice, bob, "1002"), (alice, carol, "1003"), (bob, alice, "1002<"))
            for n, (caller, callee, name) in enumerate(calls):
                before = len(events.of("recording_started"))
                caller_call, _ = await call_between(caller, callee)
                answered = (await events.at_least("call_answered", n + 1))[n]
                if len(events.of("recording_started")) > before:
                    [started] = events.of("recording_started")[before:]
                    assert started["call_id"] == answered["call_id"]
                    assert started["by"] == "policy"
                    made.add(name)
                await caller.bye(caller_call)
                await callee.next("BYE")
                await events.at_least("call_ended", n + 1)
    finally:
        await exchange.stop()
    assert made == recorded


async def test_the_api_starts_pauses_resumes_and_stops_a_recording(tmp_path: Path) -> None:
    # `pbx recordings start|pause|resume|stop CALL_ID`, as an operator runs them, on a call
    # the policy does not record; the caller's tone is in the file but for the pause.
    exchange = await exchange_with(tmp_path, "")
    events = Events(exchange)
    try:
        async with phones_on(exchange) as phones:
            alice, bob = await phones("1001", "1002")
            alice_call, _ = await connected(alice, bob)
            [answered] = events.of("call_answered")
            call_id = str(answered["call_id"])
            tone = asyncio.create_task(talk(alice, alice_call.media_port, sine(600, 30.0)))
            try:
                said = json.loads(await pbx_command(tmp_path, "recordings", "start", call_id))
                assert said["call_id"] == call_id
                [started] = events.of("recording_started")
                assert started["by"] == "api" and started["path"] == said["path"]
                await pbx_command(tmp_path, "recordings", "pause", call_id)
                await pbx_command(tmp_path, "recordings", "resume", call_id)
                paused = events.of("recording_paused")
                assert [(p["paused"], p["by"]) for p in paused] == [(True, "api"), (False, "api")]
                await pbx_command(tmp_path, "recordings", "stop", call_id)
                [stopped] = await events.at_least("recording_stopped", 1, timeout=10)
                # Stopped by hand: the policy does not start it again, and it is not live.
                failed = await pbx_failing(tmp_path, "recordings", "pause", call_id)
                assert "is not being recorded" in failed
            finally:
                tone.cancel()
            await alice.bye(alice_call)
        unknown = await pbx_failing(tmp_path, "recordings", "pause", "no-such-call")
        assert "no answered call 'no-such-call'" in unknown
    finally:
        await exchange.stop()
    pause = stopped["paused_seconds"]
    assert isinstance(pause, float) and pause > 0.05, stopped
    data, _ = soundfile.read(Path(str(stopped["path"])), dtype="int16")
    left = data[:, 0].astype(np.float64)
    assert strongest(left, 1) == pytest.approx([600.0], abs=10)
    # The pause is a stretch of silence as long as it was, between the tone before and after.
    frames = left[: len(left) // 160 * 160].reshape(-1, 160)
    loud = np.sqrt(np.mean(frames**2, axis=1)) > 1000
    assert loud[:3].all() and loud[-3:].all(), loud
    quiet_runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[1], loud, [1]]).astype(np.int8))))
    longest_quiet = max(quiet_runs[::2], default=0) * 0.02
    assert longest_quiet == pytest.approx(pause, abs=0.1), (longest_quiet, pause)


async def pbx_failing(tmp_path: Path, *args: str) -> str:
    """Run `pbx -c CONFIG ARGS...` that must fail; its standard error."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pbx", "-c", str(tmp_path / "pbx.toml"), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode != 0
    return err.decode()


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return espeak(tmp_path_factory.mktemp("speech"))


async def test_trim_silence_cuts_a_recording_down_to_its_speech(
    tmp_path: Path, speech: np.ndarray
) -> None:
    """The caller says a sentence between 1.5 s silences (more before: the ring, the answer);
    the callee says nothing. With trim_silence the file keeps the sentence and 0.5 s either
    side, and the event and the index say so."""
    exchange = await exchange_with(tmp_path, RECORD_ALL + "trim_silence = true\n")
    events = Events(exchange)
    quiet = np.zeros(12000, dtype=np.int16)
    try:
        async with phones_on(exchange) as phones:
            alice, bob = await phones("1001", "1002")
            alice_call, _ = await connected(alice, bob)
            await talk(alice, alice_call.media_port, np.concatenate([quiet, speech, quiet]))
            await alice.bye(alice_call)
            stopped = await events.next("recording_stopped")
        heard = ULAW_DECODE[np.frombuffer(ulaw_encode(speech), np.uint8)]  # as the line has it
        sound = np.flatnonzero(heard)
        duration = stopped["duration"]
        assert isinstance(duration, float)
        assert duration == pytest.approx((sound[-1] - sound[0]) / 8000 + 1.0, abs=0.15)
        data, _ = soundfile.read(Path(str(stopped["path"])), dtype="int16")
        assert len(data) / 8000 == pytest.approx(duration, abs=1e-3)
        assert not data[:, 1].any()
        said = float((heard.astype(np.float64) ** 2).sum())
        assert float((data[:, 0].astype(np.float64) ** 2).sum()) == pytest.approx(said, rel=0.02)
        assert exchange.store is not None
        await exchange.rows_written()
        [row] = await exchange.store.recordings()
        assert row["duration"] == pytest.approx(duration)
    finally:
        await exchange.stop()


async def test_feature_codes_start_pause_and_stop_a_recording(tmp_path: Path) -> None:
    exchange = await exchange_with(tmp_path, "")
    events = Events(exchange)
    relay = [("Content-Type", "application/dtmf-relay")]
    try:
        async with phones_on(exchange) as phones:
            alice, bob = await phones("1001", "1002")
            alice_call, bob_call = await connected(alice, bob)
            assert events.of("recording_started") == []  # record = "none" by default

            async def press(keys: str) -> None:
                for key in keys:
                    body = f"Signal={key}\r\nDuration=100\r\n".encode()
                    assert (await bob.request(bob_call, "INFO", relay, body)).status == 200

            await press("*1")
            started = events.of("recording_started")
            assert [s["by"] for s in started] == ["1002"]
            await press("*2")
            paused = events.of("recording_paused")
            assert [(p["paused"], p["by"]) for p in paused] == [(True, "1002")]
            await press("*2")
            assert [p["paused"] for p in events.of("recording_paused")] == [True, False]
            await press("*1")
            [stopped] = await events.at_least("recording_stopped", 1)  # once the file is done
            assert stopped["recording_id"] == started[0]["recording_id"]
            await alice.bye(alice_call)
            await bob.next("BYE")
            assert len(events.of("recording_started")) == 1  # not started again
    finally:
        await exchange.stop()


@pytest.mark.parametrize("fmt", ["wav", "flac"])
async def test_a_recording_left_unfinished_is_repaired_on_start(tmp_path: Path, fmt: str) -> None:
    exchange = await exchange_with(tmp_path, RECORD_ALL + f'format = "{fmt}"\n')
    events = Events(exchange)
    async with phones_on(exchange) as phones:
        alice, bob = await phones("1001", "1002")
        alice_call, _ = await connected(alice, bob)
        started = events.of("recording_started")[0]
        await talk(alice, alice_call.media_port, sine(700, 1.3))
        assert exchange.calls is not None
        # A crash: the process dies with the file open (nothing closes or indexes it).
        exchange.calls.recordings.active.clear()
        exchange.calls.media_clock.stop()
    await exchange.stop()
    path = Path(str(started["path"]))
    assert path.suffix == f".{fmt}"
    if fmt == "wav":
        with open(path, "ab") as file:
            file.write(b"\x00\x01" * 1001)  # a write the header never heard of
    else:  # the file a killed process leaves (here the recorder's own close ran)
        assert killed_mid_recording(path, fmt).returncode == -9
        assert soundfile.info(str(path)).frames > 2**62  # no length in the header
    again = Exchange(pbx_config.load(tmp_path / "pbx.toml"))
    await again.start()
    try:
        assert again.store is not None
        [row] = await again.store.recordings()
        assert row["ended"] is not None and float(row["duration"]) >= 1.0  # type: ignore[arg-type]
        data, _ = soundfile.read(path, dtype="int16")
        assert len(data) / 8000 == pytest.approx(float(row["duration"]), abs=0.01)  # type: ignore[arg-type]
    finally:
        await again.stop()


async def test_recordings_past_their_retention_are_deleted(tmp_path: Path) -> None:
    rule = RECORD_ALL + 'retention_days = 30\n\n[[recording_rule]]\nextension = "1002"\n'
    rule += "retention_days = 1\n"
    exchange = await exchange_with(tmp_path, rule)
    events = Events(exchange)
    try:
        async with phones_on(exchange) as phones:
            alice, bob = await phones("1001", "1002")
            alice_call, _ = await connected(alice, bob)
            await alice.bye(alice_call)
            stopped = await events.next("recording_stopped")
        assert events.of("recording_started")[0]["retention_days"] == 1.0  # the rule's
        path = Path(str(stopped["path"]))
        assert exchange.store is not None
        await exchange.rows_written()
        assert await exchange.purge_recordings(time.time() + 3600) == 0
        assert await exchange.purge_recordings(time.time() + 2 * 86400) == 1
        assert not path.exists()
        assert await exchange.store.recordings() == []
        assert len(await exchange.store.recordings(deleted=True)) == 1
    finally:
        await exchange.stop()


async def test_inband_digits_of_a_phone_without_telephone_event(tmp_path: Path) -> None:
    """Alice's SDP has no telephone-event: her key presses are tones in her audio, which
    pbx detects (exactly) and reports; Bob's RFC 4733 press reaches her as a tone."""
    exchange = await exchange_with(tmp_path, "")
    events = Events(exchange)
    try:
        async with phones_on(exchange) as phones:
            alice, bob = await phones("1001", "1002")
            invite = await alice.dial("1002", body=alice.offer(formats=(0,)))
            bob_call = await bob.answer(await bob.incoming())
            alice_call = await alice.answered(invite)
            assert "telephone-event" not in alice_call.remote_sdp.decode()
            silence = np.zeros(1600, dtype=np.int16)
            keyed = np.concatenate([silence, dtmf_samples("159#", 80, 80), silence])
            await talk(alice, alice_call.media_port, keyed)
            digits = [e for e in events.of("dtmf") if e["party"] == "1001"]
            assert "".join(str(e["digit"]) for e in digits) == "159#"
            assert {e["source"] for e in digits} == {"inband"}

            # Bob's phone agreed telephone-event: tones in his audio reach Alice as they
            # are, and are not reported (a phone that sends both would count twice).
            await talk(bob, bob_call.media_port, keyed)
            assert await digits_heard(alice) == list("159#")
            assert [e for e in events.of("dtmf") if e["party"] == "1002"] == []

            # Bob presses 7 as RFC 4733 events: Alice hears the 7 tone.
            base = 20000
            for seq, (duration, end) in enumerate(((400, False), (800, False), (1200, True))):
                bob.rtp.sendto(key_press(seq + 500, base, 7, duration, end, 101),
                               ("127.0.0.1", bob_call.media_port))  # fmt: skip
            assert await digits_heard(alice) == ["7"]
            from_bob = [e for e in events.of("dtmf") if e["party"] == "1002"]
            assert [(e["digit"], e["source"]) for e in from_bob] == [("7", "rfc4733")]
    finally:
        await exchange.stop()


async def digits_heard(phone: Phone) -> list[str]:
    """The DTMF digits in what `phone` receives until 0.5 s pass without a packet."""
    detector = InbandDetector()
    heard: list[str] = []
    with contextlib.suppress(TimeoutError):
        while True:
            packet = await phone.recv_rtp(timeout=0.5)
            frame = ULAW_DECODE[np.frombuffer(packet[12:], dtype=np.uint8)]
            heard += [d.digit for d in detector.feed(frame)]
    for _ in range(5):  # a tone still going at the end: its pause
        heard += [d.digit for d in detector.feed(np.zeros(160, dtype=np.int16))]
    return heard


async def received(phone: Phone, packets: int = 50) -> np.ndarray:
    """The next `packets` RTP packets the phone receives, decoded (PCMU)."""
    frames = [ULAW_DECODE[np.frombuffer((await phone.recv_rtp())[12:], dtype=np.uint8)]
              for _ in range(packets)]  # fmt: skip
    return np.concatenate(frames)


async def test_the_held_party_hears_the_chime_and_then_the_caller_again(tmp_path: Path) -> None:
    exchange = await exchange_with(tmp_path, "")
    events = Events(exchange)
    try:
        async with phones_on(exchange) as phones:
            alice, bob = await phones("1001", "1002")
            alice_call, _ = await connected(alice, bob)
            assert (await alice.hold(alice_call)).status == 200
            assert [e["held"] for e in events.of("call_held")] == [True]
            # No music files in data_dir/moh: the built-in chime (C5, E5, G5, a pause).
            chime = await received(bob, 150)
            notes = strongest(chime, 3)
            assert notes == pytest.approx([523.0, 659.0, 784.0], abs=10)
            resume = await alice.request(alice_call, "INVITE", body=alice.offer())
            assert resume.status == 200
            await bob.hears(alice, alice_call.media_port, b"\x33")  # relayed again
    finally:
        await exchange.stop()


async def test_music_files_play_to_a_parked_caller(tmp_path: Path) -> None:
    music = tmp_path / "data" / "moh"
    music.mkdir(parents=True)
    stereo = np.stack([sine(700, 0.6, rate=16000)] * 2, axis=1)
    soundfile.write(music / "01-theme.wav", stereo, 16000)  # any rate and channels
    soundfile.write(music / "02-more.flac", sine(1100, 0.6, rate=22050), 22050)
    exchange = await exchange_with(tmp_path, "")
    assert exchange.config.data_dir == tmp_path / "data"
    try:
        async with phones_on(exchange) as phones:
            alice, bob = await phones("1001", "1002")
            _, bob_call = await connected(alice, bob)
            assert (await bob.refer(bob_call, "700")).status == 202
            await bob.next("BYE")
            heard = await received(alice, 150)  # 3 s: the two files, one after the other, looped
    finally:
        await exchange.stop()
    assert np.abs(heard).max() > 2000
    windows = heard[: len(heard) // 800 * 800].astype(np.float64).reshape(-1, 800)
    tunes = [strongest(w, 1)[0] for w in windows if np.sqrt(np.mean(w**2)) > 1000]
    order = [min((700, 1100), key=lambda hz: abs(hz - tune)) for tune in tunes]
    runs = [hz for n, hz in enumerate(order) if n == 0 or order[n - 1] != hz]
    assert len(runs) >= 4 and runs[:4] in ([700, 1100, 700, 1100], [1100, 700, 1100, 700]), runs
