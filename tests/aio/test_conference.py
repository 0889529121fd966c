"""Conference rooms between loopback phones, measured on the audio: each member hears the
others and not itself; PIN entry by RFC 4733 keys; a full room; a blind transfer in."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import numpy as np
import pytest

from media.g711 import ULAW_DECODE
from pbx.server import Exchange
from tests.aio.test_call_features import key_press
from tests.aio.test_media_features import (
    Events,
    exchange_with,
    pbx_command,
    pbx_failing,
    phones_on,
    talk,
)
from tests.support.audio import sine, strongest
from tests.support.phone import Call, Phone

ROOMS = """
[[conference]]
number = "800"
name = "staff"

[[conference]]
number = "801"
pin = "1234"
max_members = 2
"""
KEYS = {**{str(d): d for d in range(10)}, "*": 10, "#": 11}


async def talk_and_listen(phone: Phone, call: Call, samples: np.ndarray) -> np.ndarray:
    """Send `samples` (PCMU, real time) while decoding everything the phone receives."""
    heard: list[np.ndarray] = []
    loop = asyncio.get_running_loop()

    async def listen() -> None:
        # sock_recv itself, not recv_rtp: Python 3.11's wait_for can swallow a cancel.
        while True:
            packet = await loop.sock_recv(phone.rtp, 2048)
            heard.append(ULAW_DECODE[np.frombuffer(packet[12:], dtype=np.uint8)])

    listening = asyncio.create_task(listen())
    try:
        await talk(phone, call.media_port, samples)
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
    return np.concatenate(heard) if heard else np.zeros(0, dtype=np.int16)


def level(samples: np.ndarray, hz: float, rate: int = 8000) -> float:
    """The amplitude of `hz` in `samples` (one DFT bin, Hann window)."""
    signal = samples.astype(np.float64) * np.hanning(len(samples))
    t = np.arange(len(samples)) / rate
    return float(abs(np.dot(signal, np.exp(-2j * np.pi * hz * t))) * 4 / len(samples))


async def press(phone: Phone, call: Call, keys: str, first_seq: int) -> None:
    """Keys as RFC 4733 events (three packets each, the last the end), 50 ms apart."""
    seq = first_seq
    for n, key in enumerate(keys):
        timestamp = 8000 * (first_seq + n + 1)
        for duration, end in ((400, False), (800, True), (800, True)):
            phone.rtp.sendto(key_press(seq, timestamp, KEYS[key], duration, end, 101),
                             ("127.0.0.1", call.media_port))  # fmt: skip
            seq += 1
        await asyncio.sleep(0.05)  # the pace of a finger, not a synchronisation


async def hears_tone(phone: Phone, hz: float, seconds: float = 3.0) -> None:
    """Until the phone's received audio (in 100 ms windows) is dominated by `hz`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    window: list[np.ndarray] = []
    while loop.time() < deadline:
        packet = await phone.recv_rtp()
        window.append(ULAW_DECODE[np.frombuffer(packet[12:], dtype=np.uint8)])
        if len(window) == 5:
            samples = np.concatenate(window)
            window.clear()
            if np.abs(samples).max() > 500 and strongest(samples, 1) == pytest.approx([hz], abs=50):
                return
    raise AssertionError(f"{phone.ext} never heard {hz} Hz")


@pytest.fixture
async def exchange(tmp_path: Path) -> Exchange:
    exchange = await exchange_with(tmp_path, ROOMS)
    yield exchange  # type: ignore[misc]
    assert exchange.calls is not None
    await exchange.calls.stop()
    assert exchange.calls.conferences.rooms == {}
    assert not exchange.calls.media_clock.busy
    await exchange.stop()


async def test_each_member_hears_the_others_and_not_itself(
    exchange: Exchange, tmp_path: Path
) -> None:
    events = Events(exchange)
    tones = {"1001": 500.0, "1002": 900.0, "1003": 1300.0}
    async with phones_on(exchange) as phones:
        members = await phones(*tones)
        calls = []
        for phone in members:
            calls.append(await phone.call("800"))
            await events.next("conference_joined")  # the ACK just sent puts it in
        joined = events.of("conference_joined")
        assert [(e["room"], e["party"], e["members"]) for e in joined] == [
            ("800", "1001", 1), ("800", "1002", 2), ("800", "1003", 3),
        ]  # fmt: skip
        listed = json.loads(await pbx_command(tmp_path, "conferences", "--json"))
        [staff] = [room for room in listed if room["number"] == "800"]
        assert sorted(m["party"] for m in staff["members"]) == sorted(tones)
        heard = await asyncio.gather(*(
            talk_and_listen(phone, call, sine(tones[phone.ext], 2.0))
            for phone, call in zip(members, calls, strict=True)
        ))  # fmt: skip
        for phone, samples in zip(members, heard, strict=True):
            middle = samples[len(samples) // 4 : 3 * len(samples) // 4]
            assert len(middle) >= 4000, phone.ext
            others = sorted(hz for ext, hz in tones.items() if ext != phone.ext)
            assert strongest(middle, 2) == pytest.approx(others, abs=10), phone.ext
            own = level(middle, tones[phone.ext])
            assert own < 0.02 * min(level(middle, hz) for hz in others), (phone.ext, own)
        await members[0].bye(calls[0])  # its 200 comes once the call is released
        [left] = events.of("conference_left")
        assert (left["party"], left["members"]) == ("1001", 2)


async def test_a_muted_member_is_not_heard(exchange: Exchange, tmp_path: Path) -> None:
    events = Events(exchange)
    async with phones_on(exchange) as phones:
        alice, bob = await phones("1001", "1002")
        alice_call = await alice.call("800")
        await events.next("conference_joined")
        bob_call = await bob.call("800")
        await events.next("conference_joined")
        assert exchange.calls is not None
        reply = json.loads(await pbx_command(tmp_path, "conferences", "mute", "800", "1001"))
        [muted] = reply["call_ids"]  # what the operator types
        heard_by_bob, _ = await asyncio.gather(
            talk_and_listen(bob, bob_call, np.zeros(8000, dtype=np.int16)),
            talk(alice, alice_call.media_port, sine(700, 1.0)),
        )
        # The join tone (800 + 1200 Hz) at first, then silence: nothing of Alice's 700 Hz.
        assert level(heard_by_bob, 700) < 20, level(heard_by_bob, 700)
        assert np.abs(heard_by_bob[4000:]).max() < 100
        assert exchange.calls.live()[0]["state"] == "conference"
        assert muted in exchange.calls.conferences.attendees


async def test_pin_is_asked_and_a_full_room_is_busy(exchange: Exchange) -> None:
    events = Events(exchange)
    async with phones_on(exchange) as phones:
        alice, bob, carol = await phones("1001", "1002", "1003")
        alice_call = await alice.call("801")
        await hears_tone(alice, 1000)  # the beep asking for the PIN
        await press(alice, alice_call, "99#", 0)
        await hears_tone(alice, 480)  # congestion: wrong; then the beep again
        await hears_tone(alice, 1000)
        assert events.of("conference_joined") == []
        joining = asyncio.ensure_future(events.next("conference_joined"))
        await press(alice, alice_call, "1234#", 100)
        joined = await joining
        assert (joined["room"], joined["party"]) == ("801", "1001")
        pressed = [e["digit"] for e in events.of("dtmf")]
        assert "".join(str(d) for d in pressed) == "99#1234#"

        bob_call = await bob.call("801")
        await hears_tone(bob, 1000)
        joining = asyncio.ensure_future(events.next("conference_joined", timeout=6))
        await press(bob, bob_call, "1234", 200)  # ended by the pause, not #
        await joining
        heard = await talk_and_listen(bob, bob_call, np.zeros(8000, dtype=np.int16))
        assert len(heard) > 0
        final = await carol.final(await carol.dial("801"))
        assert final.status == 486  # two members at most


async def test_three_wrong_pins_hang_up(exchange: Exchange) -> None:
    events = Events(exchange)
    async with phones_on(exchange) as phones:
        [alice] = await phones("1001")
        alice_call = await alice.call("801")
        for n in range(3):
            await press(alice, alice_call, "0#", 10 * n)
        bye = await alice.next("BYE")
        assert bye.call_id == alice_call.dialog.id.call_id
        ended = await events.next("call_ended")
        assert ended["cause"] == "wrong conference PIN"
        assert events.of("conference_joined") == []


async def test_a_blind_transfer_puts_the_party_in_the_room(exchange: Exchange) -> None:
    events = Events(exchange)
    async with phones_on(exchange) as phones:
        alice, bob, carol = await phones("1001", "1002", "1003")
        invite = await alice.dial("1002")
        bob_call = await bob.answer(await bob.incoming())
        alice_call = await alice.answered(invite)
        assert (await bob.refer(bob_call, "800")).status == 202
        joined = await events.next("conference_joined")
        assert (joined["party"], joined["members"]) == ("1001", 1)
        await bob.next("BYE")  # the referrer is let go
        carol_call = await carol.call("800")
        heard_by_carol, heard_by_alice = await asyncio.gather(
            talk_and_listen(carol, carol_call, sine(600, 1.5)),
            talk_and_listen(alice, alice_call, sine(1100, 1.5)),
        )
        assert strongest(heard_by_carol[4000:], 1) == pytest.approx([1100.0], abs=10)
        assert strongest(heard_by_alice[4000:], 1) == pytest.approx([600.0], abs=10)


def tone_halves(heard: np.ndarray) -> tuple[float, float, float]:
    """The loud stretch of `heard` (20 ms windows): its length in seconds, and the strongest
    frequency of its first and of its second half."""
    frames = heard[: len(heard) // 160 * 160].astype(np.float64).reshape(-1, 160)
    loud = np.flatnonzero(np.sqrt(np.mean(frames**2, axis=1)) > 300)
    assert len(loud), "no tone heard"
    stretch = frames[loud[0] : loud[-1] + 1].ravel()
    half = len(stretch) // 2
    [first] = strongest(stretch[:half], 1)
    [second] = strongest(stretch[half:], 1)
    return len(stretch) / 8000, first, second


async def test_join_and_leave_tones_rise_and_fall(exchange: Exchange) -> None:
    # Someone joining: 800 then 1200 Hz, 150 ms each; leaving: 1200 then 800 Hz.
    events = Events(exchange)
    async with phones_on(exchange) as phones:
        alice, bob = await phones("1001", "1002")
        alice_call = await alice.call("800")
        await events.next("conference_joined")
        listening = asyncio.create_task(
            talk_and_listen(alice, alice_call, np.zeros(24000, dtype=np.int16))
        )
        bob_call = await bob.call("800")
        joined = await listening
        listening = asyncio.create_task(
            talk_and_listen(alice, alice_call, np.zeros(24000, dtype=np.int16))
        )
        await bob.bye(bob_call)
        left = await listening
        await alice.bye(alice_call)
    seconds, first, second = tone_halves(joined)
    assert seconds == pytest.approx(0.3, abs=0.05)
    assert (first, second) == (pytest.approx(800, abs=10), pytest.approx(1200, abs=10))
    seconds, first, second = tone_halves(left)
    assert seconds == pytest.approx(0.3, abs=0.05)
    assert (first, second) == (pytest.approx(1200, abs=10), pytest.approx(800, abs=10))


async def test_an_operator_sets_how_loud_a_member_is(exchange: Exchange, tmp_path: Path) -> None:
    # Alice at -12 dB, Carol as she comes: Bob hears Alice's 700 Hz a quarter as loud as
    # Carol's 900 Hz, sent at the same level.
    events = Events(exchange)
    async with phones_on(exchange) as phones:
        alice, bob, carol = await phones("1001", "1002", "1003")
        calls = []
        for member in (alice, bob, carol):
            calls.append(await member.call("800"))
            await events.next("conference_joined")
        alice_call, bob_call, carol_call = calls
        reply = json.loads(await pbx_command(tmp_path, "conferences", "gain", "800", "1001", "-12"))
        assert len(reply["call_ids"]) == 1 and reply["action"] == "gain"
        heard, _, _ = await asyncio.gather(
            talk_and_listen(bob, bob_call, np.zeros(8000, dtype=np.int16)),
            talk(alice, alice_call.media_port, sine(700, 1.0)),
            talk(carol, carol_call.media_port, sine(900, 1.0)),
        )
        [room] = [r for r in json.loads(await pbx_command(tmp_path, "conferences", "--json"))
                  if r["number"] == "800"]  # fmt: skip
        gains = {m["party"]: m["gain_db"] for m in room["members"]}
        refused = await pbx_failing(tmp_path, "conferences", "gain", "800", "1001", "40")
        for member, call in zip((alice, bob, carol), calls, strict=True):
            await member.bye(call)
    middle = heard[len(heard) // 4 : 3 * len(heard) // 4]
    assert level(middle, 900) > 1000, level(middle, 900)
    ratio = level(middle, 700) / level(middle, 900)
    assert ratio == pytest.approx(10 ** (-12 / 20), rel=0.12), ratio
    assert gains == {"1001": -12.0, "1002": 0.0, "1003": 0.0}
    assert "from -30 to 18 dB" in refused
