"""`RecordedStream` places a phone's packets on a recording's timeline a second at a time:
by their RTP timestamps, anchored on the earliest arrivals. Measured sample for sample
against what was sent, through jitter, reordering, repeats, loss, timestamp jumps, new
SSRCs, drifting sender clocks and RFC 3550's optional header parts."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import numpy.typing as npt
import pytest
import soundfile

from media.clock import FRAME, TICK
from media.g711 import ALAW_DECODE, alaw_encode
from media.recording import FIRST_WRITE_TICKS, RATE, RecordedStream, Recorder
from media.rtp import RtpExtension, RtpPacket
from tests.support.audio import sine
from tests.support.clock import armed_clock, run_until
from tests.support.streams import heard

Samples = npt.NDArray[np.int16]
START = 1000.0  # the clock's time at the recorder's first tick, less a tick


@dataclass
class Arrival:
    at: float
    packet: bytes


def packets(
    samples: Samples,
    timestamp: int = 0,
    ssrc: int = 0x5EED,
    sent: float = START,
    payload_type: int = 8,
    **header: object,
) -> list[Arrival]:
    """`samples` in 20 ms PCMA packets, each sent (and, undelayed, arriving) as its 20 ms
    ends, from `sent` on."""
    out = []
    for n in range(len(samples) // FRAME):
        payload = alaw_encode(samples[n * FRAME : (n + 1) * FRAME])
        ts = (timestamp + n * FRAME) % (1 << 32)
        data = RtpPacket(payload_type, n % (1 << 16), ts, ssrc, payload, **header).encode()  # type: ignore[arg-type]
        out.append(Arrival(sent + (n + 1) * TICK, data))
    return out


def record(tmp_path: Path, arrivals: list[Arrival], seconds: float) -> tuple[Samples, Recorder]:
    """The arrivals (in any order) fed to a recorder as a media clock would: each tick
    after the packets that came before it. The left channel of the finished file."""
    stream = RecordedStream("PCMA")
    recorder = Recorder(tmp_path / "s.wav", "wav", stream, None)
    pending = sorted(arrivals, key=lambda a: a.at)
    for tick in range(1, round(seconds / TICK) + 1):
        now = START + tick * TICK
        while pending and pending[0].at <= now:
            arrival = pending.pop(0)
            stream.packet(arrival.packet, arrival.at)
        recorder.tick(now)
    recorder.close()
    data, _ = soundfile.read(tmp_path / "s.wav", dtype="int16")
    return data[:, 0], recorder


def test_an_undelayed_stream_is_recorded_sample_for_sample(tmp_path: Path) -> None:
    talk = sine(700, 5.0)
    left, recorder = record(tmp_path, packets(talk, timestamp=0xFFFF_F000), 5.0)  # it wraps
    assert np.array_equal(left, heard(talk))
    assert recorder.lost_samples == 0


@pytest.mark.parametrize("seed", range(6))
def test_jitter_reordering_repeats_and_loss(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    talk = sine(300 + 100 * seed, 8.0)
    sent = packets(talk, timestamp=rng.getrandbits(32))
    arrivals, expected = [], heard(talk).copy()
    for n, arrival in enumerate(sent):
        if n % 10 and rng.random() < 0.05:  # lost in the network: silence in its place
            expected[n * FRAME : (n + 1) * FRAME] = 0
            continue
        # Up to 150 ms late (some on time each second: the stream's earliest), so reordered.
        delay = 0.0 if n % 10 == 0 else rng.uniform(0, 0.15)
        arrivals.append(Arrival(arrival.at + delay, arrival.packet))
        if rng.random() < 0.03:
            arrivals.append(Arrival(arrival.at + rng.uniform(0, 0.15), arrival.packet))
    left, recorder = record(tmp_path, arrivals, 8.2)  # the last packets come by 8.15 s
    assert np.array_equal(left[: 8 * RATE], expected) and not left[8 * RATE :].any()
    assert recorder.lost_samples == 0


def test_a_packet_later_than_its_second_is_lost_and_counted(tmp_path: Path) -> None:
    talk = sine(500, 4.0)
    arrivals = packets(talk)
    arrivals[60].at += 1.3  # its second (1 s-2 s) was written 0.2 s after it ended
    left, recorder = record(tmp_path, arrivals, 4.0)
    expected = heard(talk)
    expected[60 * FRAME : 61 * FRAME] = 0
    assert np.array_equal(left, expected)
    assert recorder.lost_samples == FRAME


@pytest.mark.parametrize("change", ["timestamps jump", "timestamps go on", "a new ssrc"])
def test_after_a_silence_the_stream_is_anchored_afresh(tmp_path: Path, change: str) -> None:
    """A sender on hold for 1 s comes back with its timestamps jumped ahead, or going on
    as if it never stopped, or as a new stream: its audio goes where it arrives."""
    before, after = sine(400, 2.0), sine(900, 2.0)
    first = packets(before, timestamp=5000)
    resumed = {
        "timestamps jump": dict(timestamp=123_456_789),
        "timestamps go on": dict(timestamp=5000 + len(before)),
        "a new ssrc": dict(timestamp=5000 + len(before), ssrc=0xBEEF),
    }[change]
    second = packets(after, sent=START + 3.0, **resumed)  # type: ignore[arg-type]
    left, recorder = record(tmp_path, first + second, 5.0)
    assert np.array_equal(left[: 2 * RATE], heard(before))
    assert not left[2 * RATE : 3 * RATE].any()
    assert np.array_equal(left[3 * RATE :], heard(after))
    assert recorder.lost_samples == 0


def test_a_sender_clock_running_fast_stays_in_step_with_the_call(tmp_path: Path) -> None:
    """0.5% fast: 50 ms more audio than time in 10 s. The stream is re-anchored 20 ms at a
    time, so each packet stays within 40 ms of when it came, as a jitter buffer keeps it."""
    levels = np.unique(np.abs(ALAW_DECODE))[1:][-100:]  # loud enough, distinct in A-law
    count = 502
    talk = np.repeat(levels[np.arange(count) % len(levels)], FRAME).astype(np.int16)
    arrivals = packets(talk)
    for n, arrival in enumerate(arrivals):
        arrival.at = START + (n + 1) * TICK / 1.005
    left, _ = record(tmp_path, arrivals, 10.0)
    assert len(left) == 10 * RATE
    recorded = np.flatnonzero(left)
    assert len(recorded) > 0.99 * len(left)  # the re-anchoring overlaps, it leaves no gaps
    for n in range(0, len(left) - FRAME, FRAME):
        level = left[n + FRAME // 2]
        candidates = [k for k in range(count) if levels[k % len(levels)] == level]
        came = min(candidates, key=lambda k: abs(arrivals[k].at - START - n / RATE))
        assert abs(arrivals[came].at - TICK - START - n / RATE) <= 0.04


def test_optional_header_parts_and_other_payloads(tmp_path: Path) -> None:
    """CSRCs, a header extension and padding (RFC 3550 5.1, 5.3.1) are skipped; a change
    of packet time (30 ms) is followed; telephone-events are not audio."""
    talk = sine(600, 4.0)
    plain = packets(talk)
    extended = packets(talk, csrcs=(1, 2), extension=RtpExtension(0xBEDE, b"\0" * 8), padding=4)
    mixed = plain[:50] + extended[50:100] + plain[100:]
    events = [Arrival(a.at, RtpPacket(101, 0, 0, 0x5EED, b"\x01\x0a\x00\xa0").encode())
              for a in plain[::7]]  # fmt: skip
    left, recorder = record(tmp_path, mixed + events, 4.0)
    assert np.array_equal(left, heard(talk))
    thirty = []  # 30 ms packets (240 samples), a new stream
    for n in range(len(talk) // 240):
        payload = alaw_encode(talk[n * 240 : (n + 1) * 240])
        packet = RtpPacket(8, n, n * 240, 1, payload).encode()
        thirty.append(Arrival(START + (n + 1) * 0.03, packet))
    left, recorder = record(tmp_path, plain[:100] + thirty[70:], 4.0)  # 2 s, then 2.1 s on
    assert np.array_equal(left[: 2 * RATE], heard(talk[: 2 * RATE]))
    assert not left[2 * RATE : 70 * 240].any()
    assert np.array_equal(left[70 * 240 : 133 * 240], heard(talk[70 * 240 : 133 * 240]))
    assert recorder.lost_samples == 0


def test_a_side_followed_anew_keeps_what_the_old_stream_got(tmp_path: Path) -> None:
    """A transfer: the caller's side changes stream mid-second; nothing of either is lost."""
    old, new = sine(400, 3.0), sine(1000, 3.0)
    first, second = RecordedStream("PCMA"), RecordedStream("PCMA")
    recorder = Recorder(tmp_path / "t.wav", "wav", first, None)
    sent_old, sent_new = packets(old), packets(new)
    for n in range(150):
        now = START + (n + 1) * TICK
        if n == 75:
            recorder.follow(0, second)
        (first if n < 75 else second).packet((sent_old if n < 75 else sent_new)[n].packet, now)
        recorder.tick(now)
    recorder.close()
    left = soundfile.read(tmp_path / "t.wav", dtype="int16")[0][:, 0]
    assert np.array_equal(left[: 75 * FRAME], heard(old[: 75 * FRAME]))
    assert np.array_equal(left[75 * FRAME :], heard(new[75 * FRAME : 150 * FRAME]))


# --- on the media clock ---------------------------------------------------------------


def test_second_jobs_tick_once_a_second_from_when_they_are_due_and_spread() -> None:
    clock, loop = armed_clock()
    ticked: dict[int, list[int]] = {}
    jobs = [
        SimpleNamespace(tick=lambda now, i=i: ticked.setdefault(i, []).append(clock.ticks))
        for i in range(120)
    ]
    for job in jobs:
        clock.add_second_job(job, due_in=60)  # type: ignore[arg-type]
    clock.add_second_job(jobs[0], due_in=60)  # type: ignore[arg-type]  # once only
    run_until(clock, loop, 175 * TICK)
    assert sorted(ticked) == list(range(120))
    for ticks in ticked.values():  # (and once in the second before, a job's own to see)
        due = [t for t in ticks if t >= 60]
        assert 60 <= due[0] < 70 and np.diff(due).tolist() == [50, 50]
    per_tick = Counter(tick for ticks in ticked.values() for tick in ticks if tick >= 60)
    assert set(per_tick.values()) == {12}  # 120 over the 10 ticks from the due one
    for job in jobs[1:]:
        clock.remove_second_job(job)  # type: ignore[arg-type]
    assert clock.busy
    clock.remove_second_job(jobs[0])  # type: ignore[arg-type]
    assert not clock.busy
    run_until(clock, loop, 250 * TICK)
    assert all(len([t for t in ticks if t >= 60]) == 3 for ticks in ticked.values())


def test_a_recording_keeps_the_audio_through_a_stalled_loop(tmp_path: Path) -> None:
    """The loop blocked for 300 ms: the clock skips those ticks (a conference drops that
    audio), but the packets that waited in the socket go where their timestamps say."""
    clock, loop = armed_clock()
    endpoint = SimpleNamespace(record_taps=())
    stream = RecordedStream("PCMA", endpoint)  # type: ignore[arg-type]
    recorder = Recorder(tmp_path / "stall.wav", "wav", stream, None, time=clock.time)
    clock.add_second_job(recorder, FIRST_WRITE_TICKS)
    talk = sine(450, 6.0)
    sent = packets(talk, sent=0.0)
    for n, arrival in enumerate(sent):
        if 100 <= n < 114:
            continue  # 2.02-2.28 s: the loop is blocked, the packets wait in the socket
        loop.now = arrival.at  # (after the stall, late: its ticks are skipped)
        for came in [*(sent[100:114] if n == 114 else []), arrival]:
            for tap in endpoint.record_taps:
                tap(came.packet, arrival.at)
        run_until(clock, loop, arrival.at)
    recorder.close()
    assert clock.skipped >= 12
    left = soundfile.read(tmp_path / "stall.wav", dtype="int16")[0][:, 0]
    assert np.array_equal(left, heard(talk))
    assert recorder.lost_samples == 0


@pytest.mark.parametrize(
    ("change", "timestamp", "ssrc"),
    [
        ("timestamps restart ahead", 1_000_000, 0x5EED),
        ("timestamps restart behind", -1_000_000, 0x5EED),
        ("a new ssrc 100 ms off", 800, 0xBEEF),
    ],
)
def test_a_stream_changing_mid_second_is_anchored_afresh_at_once(
    tmp_path: Path, change: str, timestamp: int, ssrc: int
) -> None:
    """No silence before it: the packets before and after the change share a second."""
    talk = sine(500, 4.0)
    before = packets(talk[: 75 * FRAME], timestamp=7000)
    after = packets(talk[75 * FRAME :], timestamp=7000 + 75 * FRAME + timestamp, ssrc=ssrc,
                    sent=START + 75 * TICK)  # fmt: skip
    left, recorder = record(tmp_path, before + after, 4.0)
    assert np.array_equal(left, heard(talk))
    assert recorder.lost_samples == 0


def test_seconds_written_late_keep_every_packet(tmp_path: Path) -> None:
    """A recorder ticked late (4.5 s of packets, then its first tick): the packets past its
    timeline wait for the seconds after."""
    now = [START]
    stream = RecordedStream("PCMA")
    recorder = Recorder(tmp_path / "late.wav", "wav", stream, None, time=lambda: now[0])
    talk = sine(650, 4.5)
    for arrival in packets(talk):
        stream.packet(arrival.packet, arrival.at)
    now[0] = START + 4.5
    recorder.tick(now[0])
    recorder.close()
    left = soundfile.read(tmp_path / "late.wav", dtype="int16")[0][:, 0]
    assert np.array_equal(left, heard(talk))
    assert recorder.lost_samples == 0
