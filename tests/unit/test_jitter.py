"""The adaptive jitter buffer: order, loss, lateness, packetization, drift, wrap."""

from __future__ import annotations

import random

import numpy as np

from media.jitter import FRAME, JitterBuffer


def ramp(start: int, count: int) -> np.ndarray:
    """Samples whose values are their own position (mod 30000): easy to check."""
    return (np.arange(start, start + count) % 30000).astype(np.int16)


def play(buffer: JitterBuffer, ticks: int) -> tuple[np.ndarray, list[bool]]:
    frames, real = [], []
    for _ in range(ticks):
        frame, ok = buffer.pop()
        frames.append(frame)
        real.append(ok)
    return np.concatenate(frames), real


def simulate(
    buffer: JitterBuffer, packets: list[tuple[float, int, np.ndarray]], ticks: int
) -> tuple[np.ndarray, list[bool]]:
    """Packets (arrival, timestamp, samples) pushed as their time comes, a pop every 20 ms."""
    pending = sorted(packets, key=lambda p: p[0])
    frames, real = [], []
    for tick in range(ticks):
        now = tick * 0.02
        while pending and pending[0][0] <= now:
            arrival, timestamp, samples = pending.pop(0)
            buffer.push(timestamp, samples, arrival)
        frame, ok = buffer.pop()
        frames.append(frame)
        real.append(ok)
    return np.concatenate(frames), real


def continuous(audio: np.ndarray, count: int) -> bool:
    played = audio[np.flatnonzero(audio)[0] :]
    return bool((np.diff(played[:count].astype(np.int32)) == 1).all())


def test_in_order_stream_comes_out_whole_after_the_delay() -> None:
    buffer = JitterBuffer(min_delay=0.04)
    out = []
    for n in range(50):
        buffer.push(n * FRAME, ramp(n * FRAME, FRAME), arrival=n * 0.02)
        frame, _ = buffer.pop()
        out.append(frame)
    audio = np.concatenate(out)
    start = int(np.flatnonzero(audio)[0])  # the prefill delay, then the ramp from 1
    assert audio[start - 1] == 0 and audio[start] == 1
    assert (np.diff(audio[start:].astype(np.int32)) == 1).all()
    assert buffer.stats.late == 0 and buffer.stats.dropped_samples == 0


def test_reordered_packets_are_put_back_in_place() -> None:
    buffer = JitterBuffer(min_delay=0.08)
    order = [0, 2, 1, 3, 5, 4, 6, 7, 8, 9]
    packets = [(i * 0.02, n * FRAME, ramp(n * FRAME + 1, FRAME)) for i, n in enumerate(order)]
    audio, _ = simulate(buffer, packets, 16)
    assert continuous(audio, 9 * FRAME)


def test_a_lost_packet_is_concealed_by_a_fading_repeat() -> None:
    buffer = JitterBuffer(min_delay=0.04)
    tone = np.full(FRAME, 1000, dtype=np.int16)
    for n in range(12):
        if n != 6:
            buffer.push(n * FRAME, tone, arrival=n * 0.02)
    audio, real = play(buffer, 14)
    frames = audio.reshape(-1, FRAME)
    missing = real.index(False, real.index(True))
    assert (frames[missing] == 500).all()  # half the level of the frame before
    assert real[missing + 1] and (frames[missing + 1] == 1000).all()
    assert buffer.stats.concealed >= 1


def test_packets_after_their_playout_time_are_dropped() -> None:
    buffer = JitterBuffer(min_delay=0.04)
    packets = [(n * 0.02, n * FRAME, ramp(n * FRAME, FRAME)) for n in range(10) if n != 1]
    packets.append((0.3, FRAME, ramp(FRAME, FRAME)))  # packet 1, long after its time
    _, real = simulate(buffer, packets, 20)
    assert buffer.stats.late == 1
    assert real.count(False) >= 1


def test_30ms_packets_are_cut_into_20ms_frames() -> None:
    buffer = JitterBuffer(min_delay=0.04)
    packets = [(n * 0.03, n * 240, ramp(n * 240 + 1, 240)) for n in range(20)]
    audio, _ = simulate(buffer, packets, 32)
    assert continuous(audio, 18 * 240)


def test_timestamp_wrap_is_seamless() -> None:
    buffer = JitterBuffer(min_delay=0.04)
    base = (1 << 32) - 5 * FRAME
    packets = [(n * 0.02, (base + n * FRAME) % (1 << 32), ramp(n * FRAME + 1, FRAME))
               for n in range(12)]  # fmt: skip
    audio, _ = simulate(buffer, packets, 14)
    assert continuous(audio, 10 * FRAME)


def test_delay_follows_the_jitter() -> None:
    rng = random.Random(4)
    calm, jumpy = JitterBuffer(), JitterBuffer()
    for n in range(500):
        calm.push(n * FRAME, ramp(0, FRAME), n * 0.02)
        jumpy.push(n * FRAME, ramp(0, FRAME), n * 0.02 + rng.uniform(0, 0.06))
        calm.pop()
        jumpy.pop()
    assert calm.target == round(0.04 * 8000)  # the minimum
    assert jumpy.target > 2 * calm.target
    assert jumpy.stats.late < 10  # the delay grew to take the jitter


def test_a_fast_sender_does_not_build_up_delay() -> None:
    buffer = JitterBuffer()
    # 2% more audio than we play: 51 packets a second against 50 pops.
    for n in range(1000):
        buffer.push(n * FRAME, ramp(0, FRAME), n * 0.0196)
        if n % 51 != 50:
            buffer.pop()
    assert buffer.depth <= buffer.target + 3 * FRAME
    assert buffer.stats.dropped_samples > 0


def test_a_new_source_starts_afresh() -> None:
    buffer = JitterBuffer()
    buffer.push(1000, ramp(0, FRAME), 0.0)
    buffer.pop()
    buffer.push(1_000_000, ramp(0, FRAME), 0.02)
    assert buffer.stats.resyncs == 1
