#!/usr/bin/env python3
"""Media cost: microseconds per 20 ms frame of the DSP, and recorded calls on one core.

Two parts:

1. Per frame, in this process (160 samples at 8 kHz; each figure the median of several
   timed runs of many iterations, time.perf_counter_ns):
   - G.711 decode and encode, PCMU and PCMA: numpy table lookups, one frame at a time and
     batches of 10 and 100; baseline the stdlib `audioop` of Python 3.11 (one call per
     frame, with the conversion from and to the int16 array the exchange works on);
   - in-band DTMF detection, `feed_many` over 1, 10 and 100 streams at once, on talk and on
     key tones; baseline the same streams fed one at a time (`InbandDetector.feed`);
   - the conference mix-minus of 3, 10, 30 and 100 parties, plain and with gains and mute;
   - the recording path of 1, 10 and 100 bridged calls: a packet relayed with and without
     the recording's audio tap (decode into the jitter buffer), the media clock's tick per
     recorded call (two jitter buffer pops and the recorder's copy, a second handed to the
     writer thread once a second, as in the server), WAV and FLAC, and the two added up per
     call and 20 ms against the bare relay.
     Real endpoints on loopback sockets; the time they read is simulated (20 ms a step) and
     their sendto does nothing, so these are the relay's Python work, no system calls.

2. Recorded calls. `pbx serve` twice, with the user agents and RTP generator of calls.py
   (rising numbers of bridged PCMA calls, 50 packets/s each way on every leg): first
   without recording, then with every call recorded ([recording] record = "all"). Per
   level: loss, transit, server CPU per call, how much of the audio sent reached the
   recordings (WAV: the generator's A-law filler bytes counted in the files), and the
   recorded run's CPU per call against the bare run's at the same level.

    .venv/bin/python benchmarks/media.py --quick         # smoke run, < 1 minute
    .venv/bin/python benchmarks/media.py                 # both parts, ~4 minutes
    .venv/bin/python benchmarks/media.py --only frames
    .venv/bin/python benchmarks/media.py --only calls --levels 200,300 --seconds 10

Results: benchmarks/results/media.json (media-quick.json with --quick; --output PATH).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

HERE = Path(__file__).resolve().parent
# Run as a script, this file's directory comes first on sys.path, and there this file would
# hide the `media` package it measures: look there last, for calls.py and register.py only.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

from calls import (  # noqa: E402
    COLLAPSED,
    HOST,
    PTIME_MS,
    SETUP_CONCURRENCY,
    BenchCall,
    MediaLevel,
    Phones,
    build_generator,
    run_level,
    server_config,
)
from media.aio import Bridge, FileWriter, MediaEndpoint  # noqa: E402
from media.clock import MediaClock  # noqa: E402
from media.dtmf import InbandDetector, dtmf_samples, feed_many  # noqa: E402
from media.g711 import (  # noqa: E402
    ALAW_DECODE,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)
from media.jitter import JitterBuffer  # noqa: E402
from media.mix import mix_minus  # noqa: E402
from media.ports import PortPool  # noqa: E402
from media.recording import (  # noqa: E402
    FIRST_WRITE_TICKS,
    RecordedStream,
    Recorder,
    audio_duration,
)
from media.rtp import RtpPacket  # noqa: E402
from register import Server, cpu_model, free_port, git_commit, write_users  # noqa: E402

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
except ImportError:  # Python 3.13 and later
    audioop = None  # type: ignore[assignment]

RESULTS = HERE / "results"
RATE, FRAME, TICK = 8000, 160, 0.02
STREAMS = (1, 10, 100)
PARTIES = (3, 10, 30, 100)
LEVELS = (50, 100, 150, 200, 250, 300, 400, 500)
QUICK_LEVELS = (10, 25)
CYCLE = 50  # distinct input frames per stream (1 s), cycled
BENCH_PORTS = (43000, 44999)  # the endpoints of part 1; below the kernel's ephemeral ports
# Goals from the issue.
DTMF_GOAL_US = 20.0  # per frame
MIX_GOAL_US = 100.0  # per tick of a 30-party room
MIX_GOAL_PARTIES = 30
RECORDING_GOAL = 1.25  # a recorded call's CPU against a bridged call's
# The generator's packets: a 28-byte stamp (RTP header, stream id, sequence, send time),
# then A-law 0xD5 ("silence", +8 decoded). A recording holds each such sample it got.
FILLER_SAMPLE = int(ALAW_DECODE[0xD5])
FILLER_PER_PACKET = 172 - 28
LOSSLESS_AUDIO_PCT = 99.5  # of the audio sent, found in the recordings
WAV_HEADER = 44

# --- part 1: per frame ----------------------------------------------------------------------


@dataclass
class Figure:
    group: str
    name: str
    n: int
    """Streams, parties or calls handled together."""
    item: str
    """What `us` is per: a frame, a party, a packet, a call (per 20 ms)."""
    us: float
    baseline: str | None = None
    baseline_us: float | None = None
    goal: str | None = None
    met: bool | None = None

    @property
    def us_per_tick(self) -> float:
        """All `n` of them: what one 20 ms tick spends."""
        return self.us * self.n

    @property
    def ratio(self) -> float | None:
        return self.us / self.baseline_us if self.baseline_us else None


def median_ns(step: Callable[[], object], seconds: float, repeat: int) -> float:
    """ns per call of `step`: the median of `repeat` runs of as many calls as fill
    `seconds` (counted from a calibration run)."""
    number = 1
    while True:
        started = time.perf_counter_ns()
        for _ in range(number):
            step()
        spent = time.perf_counter_ns() - started
        if spent > 2_000_000:
            break
        number *= 2
    number = max(1, round(number * seconds * 1e9 / spent))
    runs = []
    for _ in range(repeat):
        started = time.perf_counter_ns()
        for _ in range(number):
            step()
        runs.append((time.perf_counter_ns() - started) / number)
    return statistics.median(runs)


def feeding(function: Callable[[Any], object], inputs: Callable[[], Any]) -> Callable[[], None]:
    """A step to time: `function` of the next input."""

    def step() -> None:
        function(inputs())

    return step


def each(function: Callable[[Any], object], inputs: Callable[[], Any]) -> Callable[[], None]:
    """A step to time: `function` of every item of the next input, one call at a time."""

    def step() -> None:
        for item in inputs():
            function(item)

    return step


def talk(frames: int, streams: int, seed: int = 1) -> npt.NDArray[np.int16]:
    """(frames, streams, 160) of synthetic talk: the harmonics of a pitch gliding around
    170 Hz under a 4 Hz syllable envelope, with some noise, about -20 dBm0."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames * FRAME) / RATE
    out = np.empty((streams, len(t)))
    for s in range(streams):
        pitch = 170 + 80 * np.sin(2 * np.pi * (0.3 + 0.2 * rng.random()) * t + 6.3 * rng.random())
        phase = 2 * np.pi * np.cumsum(pitch) / RATE
        voice = sum(np.sin(k * phase) / k for k in range(1, 12))
        envelope = np.clip(np.sin(2 * np.pi * 4 * t + 6.3 * rng.random()), 0, None)
        out[s] = voice * envelope + 0.05 * rng.standard_normal(len(t))
    out *= 2300 / np.sqrt(np.mean(out**2))
    samples = out.clip(-32768, 32767).astype(np.int16)
    return np.ascontiguousarray(samples.reshape(streams, frames, FRAME).transpose(1, 0, 2))


def keys(frames: int, streams: int, seed: int = 2) -> npt.NDArray[np.int16]:
    """(frames, streams, 160): key tones, 100 ms on and 100 ms off, each stream shifted."""
    rng = np.random.default_rng(seed)
    tones = np.resize(dtmf_samples("1593#7*0"), frames * FRAME)
    shifted = [np.roll(tones, int(rng.integers(0, len(tones)))) for _ in range(streams)]
    return np.ascontiguousarray(np.stack(shifted).reshape(streams, frames, FRAME).swapaxes(0, 1))


def _audioop_decode(function: Callable[[bytes, int], bytes], payload: bytes) -> object:
    return np.frombuffer(function(payload, 2), dtype=np.int16)


def _audioop_encode(
    function: Callable[[bytes, int], bytes], frame: npt.NDArray[np.int16]
) -> object:
    return function(frame.tobytes(), 2)


def g711_figures(seconds: float, repeat: int) -> list[Figure]:
    frames = talk(CYCLE, max(STREAMS))
    figures: list[Figure] = []
    laws: tuple[tuple[str, Callable[..., Any], Callable[..., bytes], str, str], ...] = (
        ("PCMU", ulaw_decode, ulaw_encode, "ulaw2lin", "lin2ulaw"),
        ("PCMA", alaw_decode, alaw_encode, "alaw2lin", "lin2alaw"),
    )
    for law, decode, encode, to_linear, from_linear in laws:
        batches = [np.frombuffer(encode(f), dtype=np.uint8).reshape(f.shape) for f in frames]
        payloads = [[row.tobytes() for row in batch] for batch in batches]
        for n in STREAMS:
            if n == 1:
                codes_in: Any = itertools.cycle([p[0] for p in payloads]).__next__
                samples_in: Any = itertools.cycle([f[0] for f in frames]).__next__
            else:
                codes_in = itertools.cycle([b[:n] for b in batches]).__next__
                samples_in = itertools.cycle([f[:n] for f in frames]).__next__
            rows_in = itertools.cycle([p[:n] for p in payloads]).__next__
            frame_rows = itertools.cycle([list(f[:n]) for f in frames]).__next__
            base_decode = base_encode = None
            if audioop is not None:
                lin, comp = getattr(audioop, to_linear), getattr(audioop, from_linear)
                old_decode = each(functools.partial(_audioop_decode, lin), rows_in)
                old_encode = each(functools.partial(_audioop_encode, comp), frame_rows)
                base_decode = median_ns(old_decode, seconds, repeat) / n / 1000
                base_encode = median_ns(old_encode, seconds, repeat) / n / 1000
            us = median_ns(feeding(decode, codes_in), seconds, repeat) / n / 1000
            figures.append(Figure("G.711", f"decode {law}", n, "frame", us, "audioop", base_decode))
            us = median_ns(feeding(encode, samples_in), seconds, repeat) / n / 1000
            figures.append(Figure("G.711", f"encode {law}", n, "frame", us, "audioop", base_encode))
    return figures


def dtmf_figures(seconds: float, repeat: int) -> list[Figure]:
    figures: list[Figure] = []
    goal = f"<= {DTMF_GOAL_US:g}/frame"
    for what, signal_of in (("talk", talk), ("key tones", keys)):
        signal = signal_of(CYCLE, max(STREAMS))
        for n in STREAMS:
            batched = [InbandDetector() for _ in range(n)]
            single = [InbandDetector() for _ in range(n)]
            frames = itertools.cycle([np.ascontiguousarray(f[:n]) for f in signal]).__next__
            rows = itertools.cycle([list(zip(single, f[:n], strict=True)) for f in signal])
            one_by_one = each(lambda pair: pair[0].feed(pair[1]), rows.__next__)
            base = median_ns(one_by_one, seconds, repeat) / n / 1000
            step = feeding(functools.partial(feed_many, batched), frames)
            us = median_ns(step, seconds, repeat) / n / 1000
            figures.append(
                Figure("DTMF", f"in-band, {what}", n, "frame", us, "one at a time", base, goal,
                       us <= DTMF_GOAL_US)
            )  # fmt: skip
    return figures


def mix_figures(seconds: float, repeat: int) -> list[Figure]:
    rng = np.random.default_rng(3)
    signal = talk(CYCLE, max(PARTIES), seed=4)
    figures: list[Figure] = []
    for n in PARTIES:
        frames = itertools.cycle([np.ascontiguousarray(f[:n]) for f in signal]).__next__
        gains = rng.uniform(0.5, 2.0, n).astype(np.float32)
        talking = rng.random(n) > 0.1
        goal = f"<= {MIX_GOAL_US:g}/tick" if n == MIX_GOAL_PARTIES else None
        plain = median_ns(feeding(mix_minus, frames), seconds, repeat) / n / 1000
        met = plain * n <= MIX_GOAL_US if goal else None
        figures.append(Figure("mix", "mix-minus", n, "party", plain, None, None, goal, met))
        step = feeding(functools.partial(mix_minus, gains=gains, talking=talking), frames)
        us = median_ns(step, seconds, repeat) / n / 1000
        met = us * n <= MIX_GOAL_US if goal else None
        figures.append(
            Figure("mix", "mix-minus, gains+mute", n, "party", us, "plain", plain, goal, met)
        )
    return figures


def jitter_figures(seconds: float, repeat: int) -> list[Figure]:
    """One stream's jitter buffer: a frame in (push) and a frame out (pop), in step."""
    frames = talk(CYCLE, 1)[:, 0]
    buffer, now, k = JitterBuffer(), 0.0, 0
    spent = [0, 0]

    def step() -> None:
        nonlocal now, k
        started = time.perf_counter_ns()
        buffer.push(160 * k, frames[k % CYCLE], now)
        middle = time.perf_counter_ns()
        buffer.pop()
        spent[0] += middle - started
        spent[1] += time.perf_counter_ns() - middle
        now, k = now + TICK, k + 1

    push, pop = [], []
    for _ in range(repeat):
        spent[:] = [0, 0]
        count = max(500, round(seconds / 20e-6))
        for _ in range(count):
            step()
        push.append(spent[0] / count / 1000)
        pop.append(spent[1] / count / 1000)
    return [
        Figure("recording", "jitter buffer push", 1, "frame", statistics.median(push)),
        Figure("recording", "jitter buffer pop", 1, "frame", statistics.median(pop)),
    ]


class _NoSend:
    """A transport whose sendto does nothing (as in relay.py): the relay's Python work."""

    def sendto(self, data: bytes, addr: object) -> None:
        pass


class _SimulatedTime:
    """The endpoints' clock: 20 ms a step, so the jitter buffers see packets on time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


async def recording_run(
    calls: int, fmt: str | None, seconds: float, repeat: int, directory: Path
) -> tuple[float, float | None]:
    """`calls` bridged calls, 20 ms at a time: one packet in on each leg (relayed to the
    other), then, when recording (`fmt`), the media clock's tick. Medians of us per packet
    and of us per call per tick (None without recording)."""
    pool = PortPool(*BENCH_PORTS)
    clock = MediaClock()
    sim = _SimulatedTime()
    phone_a, phone_b = (HOST, 9), (HOST, 11)
    legs: list[tuple[MediaEndpoint, MediaEndpoint]] = []
    transports: dict[MediaEndpoint, Any] = {}  # the real ones, put back to close them
    bridges: list[Bridge] = []
    recorders: list[Recorder] = []
    files = FileWriter("bench-recording-writes")  # the server's writer thread
    try:
        for _ in range(calls):
            a = await MediaEndpoint.open(pool, HOST, phone_a, rtcp_interval=None)
            b = await MediaEndpoint.open(pool, HOST, phone_b, rtcp_interval=None)
            legs.append((a, b))
            for endpoint in (a, b):
                transports[endpoint] = endpoint._rtp
                endpoint._rtp = _NoSend()  # type: ignore[assignment]
                endpoint._time = sim.time
            bridges.append(Bridge(a, b))
        if fmt is not None:
            for i, (a, b) in enumerate(legs):
                left, right = RecordedStream("PCMA", a), RecordedStream("PCMA", b)
                path = directory / f"{fmt}-{calls}-{i}.{fmt}"
                recorder = Recorder(path, fmt, left, right, files, sim.time)
                recorders.append(recorder)
                clock.add_second_job(recorder, FIRST_WRITE_TICKS)
            clock.stop()  # ticks come from run_tick below, not the loop
        # A whole sequence cycle (the timestamps jump back once, a resync, every 22 min).
        audio = [alaw_encode(f[0]) for f in talk(CYCLE, 1, seed=5)]
        packets = [
            RtpPacket(8, seq, 160 * seq, 0xA, audio[seq % CYCLE]).encode() for seq in range(1 << 16)
        ]
        following = itertools.cycle(packets).__next__
        receivers = [(a.datagram_received, b.datagram_received) for a, b in legs]
        spent = [0, 0]

        def step() -> None:
            sim.now += TICK
            packet = following()
            started = time.perf_counter_ns()
            for receive_a, receive_b in receivers:
                receive_a(packet, phone_a)
                receive_b(packet, phone_b)
            middle = time.perf_counter_ns()
            if fmt is not None:
                clock.run_tick(sim.now)
            spent[0] += middle - started
            spent[1] += time.perf_counter_ns() - middle

        for _ in range(60):  # latch, RFC 3550 probation, the jitter buffers' first delay
            step()
        per_step = calls * (35e-6 if fmt else 4e-6)  # a first guess, then measured
        packet_us, tick_us = [], []
        for _ in range(repeat):
            # Whole seconds of ticks, so that every recorder's file write is in the figure.
            steps = max(100, -(-round(seconds / per_step) // 50) * 50)
            spent[:] = [0, 0]
            started = time.perf_counter_ns()
            for _ in range(steps):
                step()
            per_step = (time.perf_counter_ns() - started) / steps / 1e9
            packet_us.append(spent[0] / steps / (2 * calls) / 1000)
            tick_us.append(spent[1] / steps / calls / 1000)
        return statistics.median(packet_us), statistics.median(tick_us) if fmt else None
    finally:
        for recorder in recorders:
            recorder.close()
        files.close()
        for bridge in bridges:
            bridge.close()
        for pair in legs:
            for endpoint in pair:
                endpoint._rtp = transports.get(endpoint, endpoint._rtp)
                endpoint.close()
                await endpoint.wait_closed()


async def recording_figures(seconds: float, repeat: int, directory: Path) -> list[Figure]:
    figures: list[Figure] = []
    goal = f"< {RECORDING_GOAL:g}x"
    for n in STREAMS:
        bare, _ = await recording_run(n, None, seconds, repeat, directory)
        figures.append(Figure("recording", "relay, not recorded", n, "packet", bare))
        for fmt in ("wav", "flac"):
            tapped, tick = await recording_run(n, fmt, seconds, repeat, directory)
            assert tick is not None
            if fmt == "wav":
                figures.append(
                    Figure("recording", "relay + recording tap", n, "packet", tapped,
                           "relay", bare)
                )  # fmt: skip
            figures.append(Figure("recording", f"clock tick, {fmt}", n, "call", tick))
            call = 2 * tapped + tick
            figures.append(
                Figure("recording", f"recorded call, {fmt}", n, "call", call, "bridged call",
                       2 * bare, goal, call / (2 * bare) < RECORDING_GOAL)
            )  # fmt: skip
    return figures


def measure_frames(seconds: float, repeat: int) -> list[Figure]:
    figures = []
    for part in (g711_figures, dtmf_figures, mix_figures, jitter_figures):
        figures += part(seconds, repeat)
        print(f"  {part.__name__.removesuffix('_figures')}: done", flush=True)
    directory = Path(tempfile.mkdtemp(prefix="pbx-bench-media-"))
    try:
        figures += asyncio.run(recording_figures(seconds, repeat, directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print("  recording: done", flush=True)
    return figures


def print_frames_table(figures: Sequence[Figure]) -> None:
    header = (
        f"{'measure':<24} {'n':>4} {'per':>6} {'us':>8} {'us/tick':>8} "
        f"{'baseline':>13} {'base us':>8} {'x base':>6}  {'goal':<12} {'met':<3}"
    )
    print(header)
    print("-" * len(header))
    group = None
    for f in figures:
        if group is not None and f.group != group:
            print()
        group = f.group
        ratio = f.ratio
        print(
            f"{f.name:<24} {f.n:>4} {f.item:>6} {f.us:>8.2f} {f.us_per_tick:>8.1f} "
            f"{f.baseline or '-':>13} "
            f"{f'{f.baseline_us:8.2f}' if f.baseline_us else '       -'} "
            f"{f'{ratio:6.2f}' if ratio else '     -'}  {f.goal or '':<12} "
            f"{'' if f.met is None else 'yes' if f.met else 'NO'}"
        )


# --- part 2: recorded calls against pbx serve ---------------------------------------------


class AudioCounter:
    """The generator's filler samples in the WAV files under a directory, read as they
    grow: the recorders write a second at a time and keep the header true."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._offsets: dict[Path, int] = {}
        self.samples = 0

    def update(self) -> int:
        for path in sorted(self.root.rglob("*.wav")):
            offset = self._offsets.get(path, WAV_HEADER)
            with path.open("rb") as file:
                file.seek(offset)
                data = file.read()
            usable = len(data) // 4 * 4  # whole stereo samples only
            samples = np.frombuffer(data[:usable], dtype="<i2")
            self.samples += int(np.count_nonzero(samples == FILLER_SAMPLE))
            self._offsets[path] = offset + usable
        return self.samples


@dataclass
class CallLevel:
    record: str | None
    media: MediaLevel
    audio_recorded_pct: float | None
    """Of the audio the generator sent in the level, the share found in the recordings."""

    @property
    def calls(self) -> int:
        return self.media.calls

    @property
    def cpu_us_per_call_s(self) -> float:
        """Server CPU microseconds per second of one call."""
        return self.media.server_cpu_pct * 1e4 / self.media.calls if self.media.calls else 0.0

    @property
    def other_cpu_pct(self) -> float:
        """The machine's busy CPU beyond the server's and the generator's: this script's
        user agents, and whatever else runs here (100 = one core)."""
        m = self.media
        return max(0.0, m.host_cpu_pct - m.server_cpu_pct - m.generator_cpu_pct)

    @property
    def lossless(self) -> bool:
        """No packet lost, and (recorded to WAV) the audio in the recordings."""
        audio = self.audio_recorded_pct
        return (
            self.media.sent > 0
            and self.media.lost == 0
            and (audio is None or audio >= LOSSLESS_AUDIO_PCT)
        )


@dataclass
class CallRun:
    record: str | None
    levels: list[CallLevel] = field(default_factory=list)
    hung_up: int = 0
    files: int = 0
    recorded_seconds: float = 0.0
    server_exit: int | None = None
    log_tail: str = ""


async def run_levels(
    levels: Sequence[int],
    seconds: float,
    server: Server,
    generator: list[str],
    run: CallRun,
    recordings: Path | None,
) -> None:
    """calls.run_media, with the recordings read after each level."""
    phones = await Phones.open((HOST, server.port))
    counter = AudioCounter(recordings) if recordings is not None else None
    try:
        await phones.register_callee()
        for target in levels:
            media = await run_level(phones, target, seconds, server, generator, None)
            audio = None
            if counter is not None:
                before = counter.samples
                await asyncio.sleep(1.5)  # the jitter buffers' delay, then a recorder write
                found = counter.update() - before
                audio = 100 * found / (FILLER_PER_PACKET * media.sent) if media.sent else 0.0
            level = CallLevel(run.record, media, audio)
            run.levels.append(level)
            print(
                f"  {media.calls} calls: {media.sent / media.seconds:.0f} packets/s sent, "
                f"{media.lost} lost, transit p99 {media.transit_p99_ms:.2f} ms, server CPU "
                f"{media.server_cpu_pct:.0f}%"
                + (f", {audio:.2f}% of the audio recorded" if audio is not None else ""),
                flush=True,
            )
            if media.loss_pct > 100 * COLLAPSED or media.calls < target:
                break
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def bye(call: BenchCall) -> bool:
            async with gate:
                return await phones.hang_up(call)

        run.hung_up = sum(await asyncio.gather(*(bye(c) for c in phones.calls)))
    finally:
        phones.close()


def run_calls(
    record: str | None, levels: Sequence[int], seconds: float, generator: list[str], keep: bool
) -> CallRun:
    """One `pbx serve` in a temp dir, recording every call in `record` (None: none)."""
    directory = Path(tempfile.mkdtemp(prefix="pbx-bench-media-calls-"))
    server: Server | None = None
    run = CallRun(record)
    try:
        port = free_port()
        config = directory / "pbx.toml"
        config.write_text(server_config(port, record))
        write_users(config, 2, directory)  # the callee and the caller of calls.py
        server = Server(config, port, directory / "pbx.log", None)
        server.start()
        print(
            f"pbx serve pid {server.pid} on udp {HOST}:{port}, "
            + (f"every call recorded ({record})" if record else "no recording"),
            flush=True,
        )
        recordings = directory / "data" / "recordings"
        asyncio.run(
            run_levels(levels, seconds, server, generator, run,
                       recordings if record == "wav" else None)
        )  # fmt: skip
        run.server_exit = server.stop()
        run.log_tail = server.log_tail(10)
        files = sorted(recordings.rglob(f"*.{record}")) if record else []
        run.files = len(files)
        run.recorded_seconds = sum(audio_duration(path) or 0.0 for path in files)
    finally:
        if server is not None:
            server.stop()
        if keep:
            print(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    return run


def print_calls_table(bare: CallRun, recorded: CallRun) -> None:
    header = (
        f"{'calls':>5} {'rec':>4} {'pkts/s in':>9} {'lost':>6} {'transit p50':>11} "
        f"{'p99 ms':>7} {'srv CPU%':>8} {'us/call-s':>9} {'x bare':>6} {'audio %':>7} "
        f"{'gen CPU%':>8} {'other%':>6}"
    )
    print(header)
    print("-" * len(header))
    base = {lv.calls: lv for lv in bare.levels}
    rows = sorted(bare.levels + recorded.levels, key=lambda lv: (lv.calls, lv.record or ""))
    for lv in rows:
        m = lv.media
        reference = base.get(lv.calls) if lv.record else None
        ratio = lv.cpu_us_per_call_s / reference.cpu_us_per_call_s if reference else None
        audio = lv.audio_recorded_pct
        print(
            f"{m.calls:>5} {lv.record or 'no':>4} {m.sent / m.seconds:>9.0f} {m.lost:>6} "
            f"{m.transit_p50_ms:>11.2f} {m.transit_p99_ms:>7.2f} {m.server_cpu_pct:>8.0f} "
            f"{lv.cpu_us_per_call_s:>9.0f} {f'{ratio:6.2f}' if ratio else '     -'} "
            f"{f'{audio:7.2f}' if audio is not None else '      -'} {m.generator_cpu_pct:>8.0f} "
            f"{lv.other_cpu_pct:>6.0f}"
        )


def recording_overhead(bare: CallRun, recorded: CallRun) -> tuple[int, float] | None:
    """(calls, recorded CPU per call / bare CPU per call) at the highest level that both
    runs carried without loss."""
    clean_bare = {lv.calls: lv for lv in bare.levels if lv.lossless}
    both = [lv for lv in recorded.levels if lv.lossless and lv.calls in clean_bare]
    if not both:
        return None
    top = max(both, key=lambda lv: lv.calls)
    return top.calls, top.cpu_us_per_call_s / clean_bare[top.calls].cpu_us_per_call_s


def level_report(lv: CallLevel) -> dict[str, Any]:
    return {
        **asdict(lv.media),
        "record": lv.record,
        "audio_recorded_pct": lv.audio_recorded_pct,
        "cpu_us_per_call_s": round(lv.cpu_us_per_call_s, 1),
        "other_cpu_pct": round(lv.other_cpu_pct, 1),
        "lossless": lv.lossless,
        "clean": lv.media.clean,
    }


def best(levels: Sequence[CallLevel], test: Callable[[CallLevel], bool]) -> int | None:
    passing = [lv.calls for lv in levels if test(lv)]
    return max(passing) if passing else None


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    numbers = lambda t: [int(r) for r in t.split(",")]  # noqa: E731
    parser.add_argument("--quick", action="store_true", help="short smoke run (< 1 minute)")
    parser.add_argument("--only", choices=("frames", "calls"), help="run one part only")
    parser.add_argument(
        "--run-seconds", type=float, help="seconds per timed run of a frame figure (0.2)"
    )
    parser.add_argument("--repeat", type=int, help="timed runs per figure; the median (5)")
    parser.add_argument("--levels", type=numbers, help="concurrent call levels")
    parser.add_argument("--seconds", type=float, help="seconds of RTP per call level (8)")
    parser.add_argument(
        "--format", choices=("wav", "flac"), default="wav", help="recording format (wav)"
    )
    parser.add_argument(
        "--python-generator", action="store_true", help="use the Python RTP generator, not C"
    )
    parser.add_argument("--output", "--json", dest="output", type=Path, help="JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temp dirs (logs, files)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    do_frames, do_calls = args.only in (None, "frames"), args.only in (None, "calls")
    run_seconds = args.run_seconds or (0.02 if args.quick else 0.2)
    repeat = args.repeat or (3 if args.quick else 5)
    levels = sorted(args.levels or (QUICK_LEVELS if args.quick else LEVELS))
    seconds = args.seconds or (2.0 if args.quick else 8.0)
    output = args.output or RESULTS / ("media-quick.json" if args.quick else "media.json")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    figures: list[Figure] = []
    if do_frames:
        print(f"per frame: {repeat} runs of ~{run_seconds:g} s per figure, the median", flush=True)
        figures = measure_frames(run_seconds, repeat)
    runs: list[CallRun] = []
    generator_name = None
    if do_calls:
        build = Path(tempfile.mkdtemp(prefix="pbx-bench-media-gen-"))
        try:
            built = None if args.python_generator else build_generator(build)
            generator = built or [sys.executable, str(HERE / "calls.py"), "--generate"]
            generator_name = "rtpload (C)" if built else "Python"
            print(
                f"calls: levels {levels}, {seconds:g} s of RTP each, generator {generator_name}",
                flush=True,
            )
            for record in (None, args.format):
                runs.append(run_calls(record, levels, seconds, generator, args.keep))
        finally:
            shutil.rmtree(build, ignore_errors=True)

    summary: dict[str, Any] = {}
    goals: list[dict[str, Any]] = []
    ok = True
    if figures:
        print()
        print_frames_table(figures)
        print(
            "\nper: what `us` is for (a 20 ms frame of one stream, one party of a room, one "
            "packet, one call's\n20 ms); us/tick: all n of them, what a 20 ms tick spends; "
            "x base: us against the baseline\nmeasured here (audioop: Python 3.11's C module; "
            "one at a time: InbandDetector.feed per stream;\nrelay / bridged call: the same "
            "calls not recorded). Recording figures are the relay's Python\nwork only "
            "(sendto stubbed), without the kernel's and the event loop's share of a packet."
        )

        def figure(name: str, n: int) -> Figure:
            return next(f for f in figures if f.name == name and f.n == n)

        top = max(STREAMS)
        dtmf = figure("in-band, talk", top)
        dtmf_one = figure("in-band, talk", 1)
        mix = figure("mix-minus", MIX_GOAL_PARTIES)
        tapped = figure("recorded call, wav", top)
        goals += [
            {
                "goal": f"in-band DTMF detection <= {DTMF_GOAL_US:g} us per frame",
                "value_us": round(dtmf.us, 2),
                "streams": top,
                "one_stream_us": round(dtmf_one.us, 2),
                # Every figure: talk (what a line mostly carries) and key tones held half
                # the time, over each batch size.
                "us_per_frame": {
                    signal: {str(n): round(figure(f"in-band, {signal}", n).us, 2) for n in STREAMS}
                    for signal in ("talk", "key tones")
                },
                "met": all(figure("in-band, talk", n).us <= DTMF_GOAL_US for n in STREAMS),
                "met_for_key_tones": all(
                    figure("in-band, key tones", n).us <= DTMF_GOAL_US for n in STREAMS
                ),
            },
            {
                "goal": f"{MIX_GOAL_PARTIES}-party mix <= {MIX_GOAL_US:g} us per tick",
                "value_us": round(mix.us_per_tick, 2),
                "met": mix.us_per_tick <= MIX_GOAL_US,
            },
        ]
        summary["frames"] = {
            "decode_pcmu_us": round(figure("decode PCMU", 1).us, 3),
            "decode_pcmu_vs_audioop": _round(figure("decode PCMU", 1).ratio),
            "encode_pcmu_us": round(figure("encode PCMU", 1).us, 3),
            "encode_pcmu_vs_audioop": _round(figure("encode PCMU", 1).ratio),
            "dtmf_us_per_frame": {str(n): round(figure("in-band, talk", n).us, 2) for n in STREAMS},
            "dtmf_batched_vs_one_at_a_time": _round(dtmf.ratio),
            "mix_us_per_tick": {
                str(n): round(figure("mix-minus", n).us_per_tick, 2) for n in PARTIES
            },
            "recorded_call_vs_relay_python_work": _round(tapped.ratio),
        }
        print(
            f"\nin-band DTMF: {dtmf.us:.1f} us/frame batched over {top} streams, "
            f"{dtmf_one.us:.1f} us for one stream, "
            f"{figure('in-band, key tones', 1).us:.1f} for one of key tones "
            f"(goal <= {DTMF_GOAL_US:g}); "
            f"{MIX_GOAL_PARTIES}-party mix {mix.us_per_tick:.1f} us/tick "
            f"(goal <= {MIX_GOAL_US:g}); a recorded call's Python work "
            f"{tapped.ratio or 0:.2f}x a bridged one's ({top} calls)"
        )
    if runs:
        bare, recorded = runs
        print()
        print_calls_table(bare, recorded)
        print(
            "\nrec: recording format (no: not recorded); pkts/s in: RTP sent to the exchange "
            "(as many relayed\nback); lost: packets that never came back; transit: through "
            "the exchange; us/call-s: server CPU\nmicroseconds per second of one call; x bare: "
            "that against the unrecorded run's at the same level;\naudio %: of the audio sent "
            "in the level, the share found in the recordings; gen: the load\ngenerator's CPU; "
            "other%: the rest of the machine's busy CPU (this script, anything else\nrunning). "
            f"Lossless: nothing lost and >= {LOSSLESS_AUDIO_PCT:g}% of the audio recorded."
        )
        overhead = recording_overhead(bare, recorded)
        max_recorded = best(recorded.levels, lambda lv: lv.lossless)
        max_bare = best(bare.levels, lambda lv: lv.lossless)
        if overhead:
            calls, ratio = overhead
            print(
                f"recording adds {100 * (ratio - 1):.0f}% to a bridged call's server CPU at "
                f"{calls} calls (goal < {100 * (RECORDING_GOAL - 1):.0f}%)"
            )
        print(
            f"most concurrent calls without loss: {max_recorded or 'none'} recorded, "
            f"{max_bare or 'none'} not recorded (of the levels run)"
        )
        print(
            f"recordings: {recorded.files} files for {recorded.hung_up} calls hung up, "
            f"{recorded.recorded_seconds:.0f} s of audio"
        )
        for run in runs:
            if run.log_tail:
                print(f"server log ({run.record or 'no recording'}, tail):\n{run.log_tail}")
            if run.server_exit not in (0, None):
                print(f"pbx serve ({run.record or 'no recording'}) exited with {run.server_exit}")
        goals.append(
            {
                "goal": f"recording adds < {100 * (RECORDING_GOAL - 1):.0f}% to a bridged "
                "call's CPU",
                "calls": overhead[0] if overhead else None,
                "value_pct": round(100 * (overhead[1] - 1), 1) if overhead else None,
                "met": overhead is not None and overhead[1] < RECORDING_GOAL,
            }
        )
        summary["calls"] = {
            "max_lossless_recorded": max_recorded,
            "max_lossless_bare": max_bare,
            "max_clean_recorded": best(recorded.levels, lambda lv: lv.media.clean),
            "max_clean_bare": best(bare.levels, lambda lv: lv.media.clean),
            "recording_cpu_ratio": _round(overhead[1]) if overhead else None,
            "recording_cpu_ratio_at_calls": overhead[0] if overhead else None,
            "recording_files": recorded.files,
            "recorded_seconds": round(recorded.recorded_seconds, 1),
            "hung_up": {"bare": bare.hung_up, "recorded": recorded.hung_up},
            "server_exit": {"bare": bare.server_exit, "recorded": recorded.server_exit},
            "generator": generator_name,
        }
        ok = (
            max_recorded is not None
            and recorded.files == recorded.hung_up == recorded.levels[-1].calls
            and bare.hung_up == bare.levels[-1].calls
        )
    if goals:
        print()
        for goal in goals:
            print(f"goal: {goal['goal']}: {'met' if goal['met'] else 'NOT met'}")
    summary["goals"] = goals

    report = {
        "benchmark": "media",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": git_commit(),
        "host": {
            "cpus": os.cpu_count(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "audioop": audioop is not None,
        },
        "settings": {
            "run_seconds": run_seconds if do_frames else None,
            "repeat": repeat if do_frames else None,
            "streams": list(STREAMS),
            "parties": list(PARTIES),
            "levels": levels if do_calls else None,
            "seconds": seconds if do_calls else None,
            "format": args.format,
            "ptime_ms": PTIME_MS,
            "quick": args.quick,
        },
        "frames": [
            {**asdict(f), "us_per_tick": round(f.us_per_tick, 3), "ratio": _round(f.ratio)}
            for f in figures
        ],
        "calls": {
            (run.record or "bare"): {
                "levels": [level_report(lv) for lv in run.levels],
                "hung_up": run.hung_up,
                "files": run.files,
                "recorded_seconds": round(run.recorded_seconds, 1),
                "server_exit": run.server_exit,
            }
            for run in runs
        },
        "summary": summary,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {output}")
    return 0 if ok else 1


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        sys.exit(130)
