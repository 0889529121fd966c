"""Conference mixing, prompts, voice activity and recording files, measured on real audio
(tones by their frequency, speech made by espeak-ng)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import soundfile

from media.clock import MediaClock
from media.conference import Room
from media.mix import mix_minus
from media.prompts import Clip, PromptCache, load_audio, music_files, playlist
from media.recording import FRAME, Recorder, WavWriter, audio_duration, repair_wav
from media.vad import VoiceDetector, speech_bounds
from pbx.errors import MediaError
from tests.support.audio import sine, strongest
from tests.support.streams import Party, Ticks, heard

TONES = (440.0, 700.0, 1100.0)


def frames_of(*hz: float, seconds: float = 0.2) -> np.ndarray:
    return np.stack([sine(f, seconds, amplitude=6000) for f in hz])


# --- mix-minus ---------------------------------------------------------------


def test_each_party_hears_the_others_and_not_itself() -> None:
    mixed = mix_minus(frames_of(*TONES))
    for i, own in enumerate(TONES):
        heard = strongest(mixed[i], 2)
        others = sorted(f for f in TONES if f != own)
        assert heard == pytest.approx(others, abs=10), (own, heard)


def test_thirty_parties_each_hear_the_twenty_nine_others_and_not_themselves() -> None:
    hz = 300.0 + 100.0 * np.arange(30)  # 300-3200 Hz, a bin of 5 Hz apart in 0.2 s
    frames = np.stack([sine(f, 0.2, amplitude=700) for f in hz])
    mixed = mix_minus(frames).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(mixed, axis=1)) / (mixed.shape[1] / 2)
    bins = np.round(hz * mixed.shape[1] / 8000).astype(int)
    levels = spectrum[:, bins]  # (listener, talker): each talker's amplitude in each mix
    own = np.diag(levels)
    others = levels[~np.eye(30, dtype=bool)]
    assert own.max() < 5  # not itself (rounding: less than 1% of 700)
    assert others == pytest.approx(700, rel=0.02)  # every other, at its level


def test_mute_gain_and_saturation() -> None:
    frames = frames_of(*TONES)
    muted = mix_minus(frames, talking=np.array([True, False, True]))
    assert strongest(muted[0], 1) == pytest.approx([1100.0], abs=10)  # 700 Hz is muted
    assert strongest(muted[1], 2) == pytest.approx([440.0, 1100.0], abs=10)  # still hears
    quiet = mix_minus(frames, gains=np.array([0.5, 1.0, 1.0], dtype=np.float32))
    assert np.abs(quiet[1]).max() < np.abs(mix_minus(frames)[1]).max()
    loud = np.full((30, FRAME), 20000, dtype=np.int16)
    assert mix_minus(loud).max() == 32767  # saturated, not wrapped around
    assert mix_minus(-loud).min() == -32768


def test_an_extra_sound_reaches_everyone() -> None:
    frames = np.zeros((3, 1600), dtype=np.int16)
    mixed = mix_minus(frames, extra=sine(1000, 0.2).astype(np.int16))
    assert all(strongest(row, 1) == pytest.approx([1000.0], abs=10) for row in mixed)


# --- prompts -----------------------------------------------------------------


def test_any_rate_and_channel_count_becomes_8k_mono(tmp_path: Path) -> None:
    rate = 44100
    t = np.arange(rate) / rate
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 600 * t)] * 2, axis=1)
    soundfile.write(tmp_path / "a.flac", stereo, rate)
    soundfile.write(tmp_path / "b.ogg", stereo[:, 0], rate)
    for name in ("a.flac", "b.ogg"):
        samples = load_audio(tmp_path / name)
        assert samples.dtype == np.int16
        assert len(samples) == pytest.approx(8000, abs=2)
        assert strongest(samples, 1) == pytest.approx([600.0], abs=5)
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    with pytest.raises(MediaError, match="cannot read"):
        load_audio(tmp_path / "bad.wav")


def test_an_8khz_file_loads_bit_for_bit(tmp_path: Path) -> None:
    samples = np.array([-32768, -20001, -1, 0, 1, 16385, 20001, 32767], dtype=np.int16)
    soundfile.write(tmp_path / "p.wav", samples, 8000, subtype="PCM_16")
    assert load_audio(tmp_path / "p.wav").tolist() == samples.tolist()


def test_cache_reloads_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "p.wav"
    soundfile.write(path, sine(500, 0.5), 8000, subtype="PCM_16")
    cache = PromptCache()
    first = cache.get(path)
    assert cache.get(path) is first
    soundfile.write(path, sine(900, 0.5, rate=16000), 16000, subtype="PCM_16")
    os.utime(path, (1, 1))  # a different modification time, whatever the clock's grain
    assert strongest(cache.get(path), 1) == pytest.approx([900.0], abs=5)
    with pytest.raises(MediaError, match="no sound file"):
        cache.get(tmp_path / "missing.wav")


def test_clips_pad_the_last_frame_and_loop() -> None:
    clip = Clip(np.arange(1, 251, dtype=np.int16))
    first, second = clip.read(160), clip.read(160)
    assert first is not None and second is not None
    assert list(second[:90]) == list(range(161, 251)) and not second[90:].any()
    assert clip.read(160) is None
    looped = Clip(np.arange(1, 101, dtype=np.int16), loop=True)
    chunk = looped.read(160)
    assert chunk is not None and chunk[100] == 1 and chunk[159] == 60


def test_music_playlist_skips_broken_files(tmp_path: Path) -> None:
    soundfile.write(tmp_path / "1.wav", sine(300, 0.1), 8000)
    (tmp_path / "2.wav").write_bytes(b"broken")
    (tmp_path / "notes.txt").write_text("not music")
    files = music_files(tmp_path)
    assert [p.name for p in files] == ["1.wav", "2.wav"]
    clip = playlist(PromptCache(), files)
    assert clip is not None and clip.read(2000) is not None  # looped past its 800 samples
    assert playlist(PromptCache(), [tmp_path / "2.wav"]) is None
    assert music_files(tmp_path / "none") == []


# --- voice activity ----------------------------------------------------------


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: `make test` installs it")
    path = tmp_path_factory.mktemp("vad") / "speech.wav"
    subprocess.run(
        ["espeak-ng", "-w", str(path), "Please leave your message after the tone."],
        check=True, timeout=30,
    )  # fmt: skip
    return load_audio(path)


def test_speech_is_found_between_silences(speech: np.ndarray) -> None:
    silence = np.zeros(8000, dtype=np.int16)
    samples = np.concatenate([silence, speech, silence])
    own = speech_bounds(speech, margin=0.0)
    bounds = speech_bounds(samples, margin=0.0)
    assert own is not None and bounds is not None
    assert own[1] - own[0] > 8000  # over a second of the sentence is speech
    # A second of silence before moves the speech by that second, and only it.
    assert abs(bounds[0] - (own[0] + 8000)) <= FRAME and abs(bounds[1] - (own[1] + 8000)) <= FRAME
    assert speech_bounds(samples)[0] == bounds[0] - 1600  # type: ignore[index]
    assert speech_bounds(silence) is None


def test_silence_after_speech_is_measured(speech: np.ndarray) -> None:
    detector = VoiceDetector()
    for i in range(len(speech) // FRAME):
        detector.is_speech(speech[i * FRAME : (i + 1) * FRAME])
    assert detector.speech_frames > 20
    detector.silent_frames = 0
    for _ in range(100):
        detector.is_speech(np.zeros(FRAME, dtype=np.int16))
    assert detector.silence == pytest.approx(2.0)


# --- recording ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_caller_left_callee_right_and_pause_is_silence(tmp_path: Path, fmt: str) -> None:
    caller, callee = Party(sine(500, 10.0)), Party(sine(1200, 10.0))
    path = tmp_path / f"call.{fmt}"
    recorder, ticks = Recorder(path, fmt, caller.stream, callee.stream), Ticks()
    ticks.run(recorder, [caller, callee], 100)  # 2 s
    recorder.paused = True
    ticks.run(recorder, [caller, callee], 50)
    recorder.paused = False
    ticks.run(recorder, [caller, callee], 25)
    recorder.close()
    data, rate = soundfile.read(path, dtype="int16")
    assert rate == 8000 and data.shape == (175 * FRAME, 2)
    assert strongest(data[:16000, 0], 1) == pytest.approx([500.0], abs=5)
    assert strongest(data[:16000, 1], 1) == pytest.approx([1200.0], abs=5)
    assert np.array_equal(data[:16000, 0], heard(caller.samples[:16000]))  # sample for sample
    assert not data[16000:24000].any()  # paused
    assert np.array_equal(data[24000:, 1], heard(callee.samples[24000:28000]))
    assert (recorder.duration, recorder.paused_seconds) == (3.5, 1.0)
    assert audio_duration(path) == pytest.approx(3.5)


def test_a_wav_in_progress_plays_up_to_the_second_before_last(tmp_path: Path) -> None:
    caller = Party(sine(500, 10.0))
    path = tmp_path / "live.wav"
    recorder, ticks = Recorder(path, "wav", caller.stream, None), Ticks()
    ticks.run(recorder, [caller], 130)  # 2.6 s: the second 1-2 waited 0.2 s for late packets
    data, _ = soundfile.read(path, dtype="int16")  # read while the call goes on
    assert data.shape == (16000, 2) and not data[:, 1].any()
    recorder.close()
    assert audio_duration(path) == pytest.approx(2.6)


def test_repair_of_a_cut_off_wav(tmp_path: Path) -> None:
    path = tmp_path / "cut.wav"
    writer = WavWriter(path)
    writer.write(np.zeros((8000, 2), dtype=np.int16))
    writer.close()
    with open(path, "ab") as file:  # written after the last header update, then a crash
        file.write(b"\x01\x00" * 8001)
    assert audio_duration(path) == pytest.approx(1.0)  # the header says one second
    assert repair_wav(path) == pytest.approx(1.5)
    data, _ = soundfile.read(path, dtype="int16")
    assert data.shape == (12000, 2)
    (tmp_path / "x.wav").write_bytes(b"nonsense")
    assert repair_wav(tmp_path / "x.wav") is None


class _Heard:
    """A room member's ends, without sockets: what it says, and what the room plays it."""

    def __init__(self, frame: np.ndarray) -> None:
        self.frame = frame
        self.feed: Any = None

    def play(self, source: Any) -> None:
        self.feed = source

    def stop(self) -> None:
        self.feed = None

    def heard(self) -> np.ndarray:
        return self.feed.read(160)


async def test_room_mixes_minus_self_with_gain_mute_and_join_tones() -> None:
    clock = MediaClock()
    room = Room(clock, capacity=3, join_tone="!800/40", leave_tone="!1200/40")
    a, b, c = (_Heard(np.full(160, level, dtype=np.int16)) for level in (1000, 2000, 4000))
    for key, member in zip("abc", (a, b, c), strict=True):
        room.join(key, member, member)  # type: ignore[arg-type]
    assert room.full
    with pytest.raises(ValueError, match="full"):
        room.join("d", a, a)  # type: ignore[arg-type]
    for _ in range(4):  # two join tones of 40 ms (b's and c's) in everyone's mix
        room.tick(0.0)
        assert len(set(a.heard().tolist())) > 1
    room.tick(0.0)
    assert [set(m.heard().tolist()) for m in (a, b, c)] == [{6000}, {5000}, {3000}]
    room.mute("c", True)
    room.set_gain("a", 0.5)
    room.tick(0.0)
    assert [set(m.heard().tolist()) for m in (a, b, c)] == [{2000}, {500}, {2500}]
    room.leave("b")
    assert b.feed is None
    room.tick(0.0)
    assert np.abs(a.heard()).max() > 1000  # the leave tone (c is muted: nothing else)
    room.leave("a")
    room.leave("c")
    assert not clock.busy


async def test_work_started_during_a_tick_does_not_double_the_clock() -> None:
    """A job that registers more work mid-tick (as a digit callback playing a tone does)
    must not arm a second timer: ten ticks still take nine 20 ms steps at least."""
    clock = MediaClock()
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    class Spawner:
        ticks = 0

        def tick(self, now: float) -> None:
            self.ticks += 1
            clock.add_job(SimpleNamespace(tick=lambda now: None))  # type: ignore[arg-type]
            if self.ticks == 10 and not done.done():
                done.set_result(loop.time())

    started = loop.time()
    clock.add_job(Spawner())
    finished = await asyncio.wait_for(done, 5)
    clock.stop()
    assert finished - started >= 9 * 0.02
