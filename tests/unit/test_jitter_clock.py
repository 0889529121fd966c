"""The jitter buffer as the media clock uses it: code bytes kept as they came, every
listener's frame decoded in one batch (`pop_many`), and audio lost to a late clock counted."""

from __future__ import annotations

import logging
import random
import struct
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest

from media.clock import TICK, Listener, MediaClock
from media.g711 import ALAW_DECODE, ULAW_DECODE
from media.jitter import FRAME, JitterBuffer, pop_many
from pbx.errors import LocalProtocolError
from tests.support.clock import armed_clock

Packet = tuple[float, int, bytes]  # arrival, RTP timestamp, G.711 code bytes


def rough_stream(seed: int, count: int = 300) -> list[Packet]:
    """20 and 30 ms packets, jittered, some lost, duplicated or reordered."""
    rng = random.Random(seed)
    size = rng.choice([160, 240])
    packets = []
    for n in range(count):
        if rng.random() < 0.05:
            continue
        codes = bytes(rng.randrange(256) for _ in range(size))
        arrival = n * size / 8000 + rng.uniform(0, 0.05)
        packets.append((arrival, (1 << 32) - 20 * size + n * size, codes))
        if rng.random() < 0.03:
            packets.append((arrival + 0.01, (1 << 32) - 20 * size + n * size, codes))
    return sorted(packets)


def play_out(
    buffer: JitterBuffer, packets: list[Packet], push: Callable[[JitterBuffer, Packet], None]
) -> list[tuple[np.ndarray, bool]]:
    out, pending = [], list(packets)
    for tick in range(int(packets[-1][0] / TICK) + 20):
        while pending and pending[0][0] <= tick * TICK:
            push(buffer, pending.pop(0))
        frame, real = buffer.pop()
        out.append((frame.copy(), real))
    return out


def push_codes(buffer: JitterBuffer, packet: Packet) -> None:
    arrival, timestamp, codes = packet
    data = bytes(12) + codes
    buffer.push_bytes(timestamp, data, 12, len(data), arrival)


def push_decoded(table: np.ndarray) -> Callable[[JitterBuffer, Packet], None]:
    def push(buffer: JitterBuffer, packet: Packet) -> None:
        arrival, timestamp, codes = packet
        buffer.push(timestamp, table[np.frombuffer(codes, dtype=np.uint8)], arrival)

    return push


@pytest.mark.parametrize("seed", range(6))
def test_code_bytes_play_as_the_samples_decoded_on_arrival(seed: int) -> None:
    packets = rough_stream(seed)
    coded = JitterBuffer(decode=ALAW_DECODE)
    decoded = JitterBuffer()
    got = play_out(coded, packets, push_codes)
    expected = play_out(decoded, packets, push_decoded(ALAW_DECODE))
    assert [real for _, real in got] == [real for _, real in expected]
    assert all((a == b).all() for (a, _), (b, _) in zip(got, expected, strict=True))
    assert coded.stats == decoded.stats and coded.stats.concealed > 0


def test_audio_queued_before_a_codec_change_keeps_its_own_table() -> None:
    coded = JitterBuffer(decode=ALAW_DECODE, min_delay=0.05)  # 400: frames straddle packets
    codes = bytes(range(0, 256, 2))[:FRAME] + bytes(FRAME - 128)
    frames = []
    for n in range(16):
        if n == 5:  # the phone changes to mu-law with A-law still queued
            coded.set_decode(ULAW_DECODE)
        if n < 10:
            push_codes(coded, (n * TICK, n * FRAME, codes))
        frames.append(coded.pop()[0])
    audio = np.concatenate(frames)
    law = np.frombuffer(codes, dtype=np.uint8)
    expected = np.concatenate([ALAW_DECODE[law]] * 5 + [ULAW_DECODE[law]] * 5)
    assert not audio[:400].any() and (audio[400:2000] == expected).all()


def test_pop_many_is_a_pop_of_each() -> None:
    """Both laws, an int16 buffer, one never fed, underruns and partial frames: the batch
    gives each buffer what its own `pop` would."""

    def fleet() -> list[JitterBuffer]:
        return [
            JitterBuffer(decode=ALAW_DECODE),
            JitterBuffer(decode=ULAW_DECODE),
            JitterBuffer(decode=ALAW_DECODE),
            JitterBuffer(),
            JitterBuffer(decode=ULAW_DECODE),  # never fed
        ]

    streams = [rough_stream(10 + i) for i in range(4)]
    batched, single = fleet(), fleet()
    for tick in range(int(max(s[-1][0] for s in streams) / TICK) + 20):
        for fleet_ in (batched, single):
            for i, stream in enumerate(streams):
                for packet in stream:
                    if tick * TICK - TICK < packet[0] <= tick * TICK:
                        if i == 3:
                            push_decoded(ALAW_DECODE)(fleet_[i], packet)
                        else:
                            push_codes(fleet_[i], packet)
        frames, real = pop_many(batched)
        for buffer, frame, ok in zip(single, frames, real, strict=True):
            alone, alone_ok = buffer.pop()
            assert ok == alone_ok and (frame == alone).all()
    assert [b.stats for b in batched] == [b.stats for b in single]
    assert all(b.stats.concealed for b in batched[:4])


def test_pop_many_keeps_frames_of_other_sizes_apart() -> None:
    buffers = [JitterBuffer(frame=size, decode=ALAW_DECODE) for size in (160, 80, 240)]
    for n in range(20):
        for buffer in buffers:
            push_codes(buffer, (n * TICK, n * FRAME, bytes(range(n, n + FRAME))))
        frames, _ = pop_many(buffers)
        assert [len(f) for f in frames] == [160, 80, 240]
    last = [ALAW_DECODE[np.arange(n, n + FRAME)] for n in range(20)]
    assert (frames[0] == last[20 - 1 - 320 // FRAME]).all()  # 40 ms behind (min_delay)


def test_frames_wrap_around_the_ring_seamlessly() -> None:
    buffer = JitterBuffer(decode=ULAW_DECODE)
    codes = bytes(range(FRAME))
    out = []
    for n in range(400):  # 8 s: the 2 s ring wraps four times, a frame across its end
        push_codes(buffer, (n * TICK, n * FRAME, codes))
        out.append(buffer.pop())
    played = [frame for frame, real in out if real]
    assert len(played) > 390 and all((f == ULAW_DECODE[np.arange(FRAME)]).all() for f in played)
    assert buffer.stats.concealed == len(out) - len(played) and buffer.stats.dropped_samples == 0


def test_mixing_up_the_two_kinds_of_buffer_is_an_error() -> None:
    with pytest.raises(LocalProtocolError):
        JitterBuffer(decode=ALAW_DECODE).push(0, np.zeros(FRAME, dtype=np.int16), 0.0)
    with pytest.raises(LocalProtocolError):
        JitterBuffer().set_decode(ALAW_DECODE)


# --- the listener and the clock ------------------------------------------------------------


def rtp(seq: int, codes: bytes, pt: int = 8, first: int = 0x80, extra: bytes = b"") -> bytes:
    return struct.pack("!BBHII", first, pt, seq, seq * FRAME, 0xABC) + extra + codes


def test_a_listener_takes_its_packets_with_any_header() -> None:
    codes = bytes(range(40, 40 + FRAME))
    plain, fancy = SimpleNamespace(audio_tap=None), SimpleNamespace(audio_tap=None)
    clock = MediaClock()
    listeners = [Listener(clock, endpoint, "PCMA") for endpoint in (plain, fancy)]  # type: ignore[arg-type]
    for seq in range(20):
        plain.audio_tap(rtp(seq, codes), seq * TICK)
        csrc = b"\0\0\0\1"
        extension = b"\xbe\xde\x00\x01" + b"\1\2\3\4"
        padded = codes + b"\0\0\3"
        fancy.audio_tap(rtp(seq, padded, first=0xB1, extra=csrc + extension), seq * TICK)
        fancy.audio_tap(rtp(seq, b"\1\2\3\4", pt=101), seq * TICK)  # a telephone-event
    frames, _ = pop_many([listener.jitter for listener in listeners])
    assert (frames[0] == frames[1]).all()
    assert [lst.jitter.stats for lst in listeners] == [listeners[0].jitter.stats] * 2


def test_a_stalled_loop_is_counted_and_logged_at_most_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, loop = armed_clock()
    endpoint = SimpleNamespace(audio_tap=None)
    listener = clock.listen(endpoint, "PCMA")  # type: ignore[arg-type]
    seq = 0

    def run(seconds: float, stall: float = 0.0) -> None:
        """`seconds` of packets and ticks; first the loop is blocked for `stall`, its
        packets waiting in the socket."""
        nonlocal seq
        resume = loop.now + stall
        while loop.now < resume + seconds - 1e-9:
            seq += 1
            due = seq * TICK
            loop.now = max(due, resume)
            endpoint.audio_tap(rtp(seq, bytes(FRAME)), loop.now)
            while clock._next <= loop.now + 1e-9:
                clock._tick()

    caplog.set_level(logging.WARNING, logger="media.clock")
    run(2.0)
    assert (clock.skipped, clock.dropped_samples, caplog.records) == (0, 0, [])
    run(2.0, stall=0.3)
    assert clock.skipped >= 12  # about 300 ms of them
    assert clock.dropped_samples == listener.dropped_samples >= 0.2 * 8000
    assert len(caplog.records) == 1 and "ticks skipped" in caplog.records[0].getMessage()
    dropped = clock.dropped_samples
    run(2.0, stall=0.3)  # again within the minute: counted, not logged
    assert clock.dropped_samples > dropped and len(caplog.records) == 1
    run(60.0)
    run(2.0, stall=0.3)
    assert len(caplog.records) == 2
    clock.unlisten(listener)
    assert clock.dropped_samples == listener.dropped_samples
