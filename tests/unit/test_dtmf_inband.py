"""In-band DTMF detection against ITU-T Q.24 (frequency tolerance, twist, level, timing),
and talk-off: minutes of synthetic speech (espeak-ng) and noise give no digit."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
from scipy.signal import resample_poly

from media.dtmf import COLUMNS, KEYPAD, ROWS, InbandDetector, dtmf_samples, feed_many
from tests.support.audio import strongest

RATE = 8000
TALKOFF = Path(__file__).resolve().parents[1] / "data" / "talkoff.txt"
PEAK_0DBM0 = 32767 * 10 ** (-3.14 / 20)


def dual(digit: str, ms: float, low_dev: float = 0.0, high_dev: float = 0.0,
         low_dbm0: float = -8.0, high_dbm0: float = -6.0) -> np.ndarray:  # fmt: skip
    row = next(i for i, keys in enumerate(KEYPAD) if digit in keys)
    col = KEYPAD[row].index(digit)
    t = np.arange(round(ms * RATE / 1000)) / RATE
    low = PEAK_0DBM0 * 10 ** (low_dbm0 / 20) * np.sin(2 * np.pi * ROWS[row] * (1 + low_dev) * t)
    high = (
        PEAK_0DBM0 * 10 ** (high_dbm0 / 20) * np.sin(2 * np.pi * COLUMNS[col] * (1 + high_dev) * t)
    )
    return low + high


def silence(ms: float) -> np.ndarray:
    return np.zeros(round(ms * RATE / 1000))


def detect(signal: np.ndarray) -> str:
    padded = np.concatenate([signal, silence(200)])
    padded = padded[: len(padded) // 160 * 160]
    samples = np.clip(np.round(padded), -32768, 32767).astype(np.int16)
    detector = InbandDetector()
    found = []
    for frame in samples.reshape(-1, 160):
        found += [d.digit for d in detector.feed(frame)]
    return "".join(found)


ALL = "123A456B789C*0#D"


def test_every_digit_at_the_shortest_tone_and_pause() -> None:
    # Q.24: 40 ms tones with 40 ms pauses must all be recognised.
    signal = np.concatenate([np.concatenate([dual(d, 40), silence(40)]) for d in ALL])
    assert detect(signal) == ALL


@pytest.mark.parametrize("ms", [10, 20])
def test_too_short_tones_are_not_digits(ms: int) -> None:
    signal = np.concatenate([np.concatenate([dual(d, ms), silence(60)]) for d in ALL])
    assert detect(signal) == ""


@pytest.mark.parametrize("deviation", [-0.015, 0.015])
def test_within_1_5_percent_is_accepted(deviation: float) -> None:
    for digit in ALL:
        assert detect(dual(digit, 60, deviation, deviation)) == digit, digit
        assert detect(dual(digit, 60, deviation, -deviation)) == digit, digit


@pytest.mark.parametrize("deviation", [-0.035, 0.035, -0.05, 0.05, -0.07, 0.07])
def test_beyond_3_5_percent_is_rejected(deviation: float) -> None:
    for digit in ALL:
        assert detect(dual(digit, 80, low_dev=deviation)) == "", (digit, "low")
        assert detect(dual(digit, 80, high_dev=deviation)) == "", (digit, "high")


def test_twist_limits() -> None:
    for digit in "159#":
        # Normal twist: the high group weaker, up to 8 dB; reverse: the low group, up to 4.
        assert detect(dual(digit, 60, low_dbm0=-10, high_dbm0=-17.5)) == digit
        assert detect(dual(digit, 60, low_dbm0=-10, high_dbm0=-20.5)) == ""
        assert detect(dual(digit, 60, low_dbm0=-13.5, high_dbm0=-10)) == digit
        assert detect(dual(digit, 60, low_dbm0=-16.5, high_dbm0=-10)) == ""


def test_level_limits() -> None:
    assert detect(dual("5", 60, low_dbm0=-26, high_dbm0=-26)) == "5"
    assert detect(dual("5", 60, low_dbm0=-36, high_dbm0=-36)) == ""


def test_noise_at_15_db_snr_and_a_10ms_dropout() -> None:
    rng = np.random.default_rng(1)
    tones = np.concatenate([np.concatenate([dual(d, 60), silence(60)]) for d in ALL])
    tone_rms = np.sqrt(np.mean(dual("5", 60) ** 2))
    noisy = tones + rng.normal(0, tone_rms * 10 ** (-15 / 20), len(tones))
    assert detect(noisy) == ALL
    broken = np.concatenate([dual("7", 60), silence(10), dual("7", 60)])
    assert detect(broken) == "7"


def test_repeated_digit_with_a_40ms_pause_is_two_digits() -> None:
    assert detect(np.concatenate([dual("3", 50), silence(40), dual("3", 50)])) == "33"


def test_keys_changing_without_a_pause() -> None:
    # Each key's run is judged afresh (held test and all), though the one before it was
    # steady; a key coming back after another is a new digit.
    signal = np.concatenate([dual("1", 200), dual("2", 200), dual("1", 200)])
    padded = np.concatenate([signal, silence(200)])
    detector = InbandDetector()
    digits = [d for frame in padded.reshape(-1, 160) for d in detector.feed(frame)]
    assert [d.digit for d in digits] == ["1", "2", "1"]
    assert [round(d.duration, 2) for d in digits] == pytest.approx([0.2] * 3, abs=0.03)


def test_duration_is_measured() -> None:
    detector = InbandDetector()
    samples = np.concatenate([dual("9", 300), silence(200)])
    samples = np.round(samples[: len(samples) // 160 * 160]).astype(np.int16)
    digits = [d for frame in samples.reshape(-1, 160) for d in detector.feed(frame)]
    assert [d.digit for d in digits] == ["9"]
    assert digits[0].duration == pytest.approx(0.3, abs=0.03)


def test_many_streams_in_one_pass_agree_with_one_by_one() -> None:
    streams = ["12", "#", "", "ABCD"]
    length = 8000
    signals = []
    for digits in streams:
        s = dtmf_samples(digits, 80, 80) if digits else np.zeros(0, np.int16)
        signals.append(np.pad(s, (0, length - len(s))))
    frames = np.stack(signals).astype(np.int16).reshape(len(streams), -1, 160)
    detectors = [InbandDetector() for _ in streams]
    found = [""] * len(streams)
    for tick in range(frames.shape[1]):
        for i, digits in enumerate(feed_many(detectors, frames[:, tick])):
            found[i] += "".join(d.digit for d in digits)
    assert found == streams


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """About eight minutes of synthetic speech (a clinic's calls) in four voices, at 8 kHz."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.fail("espeak-ng is not installed: `make test-deps` installs it")
    text = TALKOFF.read_text()
    directory = tmp_path_factory.mktemp("speech")
    parts = []
    for n, (voice, pitch, speed) in enumerate(
        [("en-us", 50, 170), ("en+f3", 80, 150), ("en-gb", 30, 190), ("en+m7", 99, 160)]
    ):
        wav = directory / f"voice{n}.wav"
        subprocess.run(
            [espeak, "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(wav), text],
            check=True, timeout=60, capture_output=True,
        )  # fmt: skip
        data, rate = soundfile.read(wav, dtype="float64")
        parts.append(resample_poly(data, 8000, rate) * 20000)
    joined = np.concatenate(parts)
    assert len(joined) > 420 * RATE, len(joined) / RATE
    return joined


def detect_in_parallel(signal: np.ndarray, streams: int = 16) -> list[str]:
    """`signal` cut into `streams` pieces, each a stream of its own, all fed in one pass a
    tick (how the exchange runs the detector for all its calls)."""
    frames = len(signal) // 160 // streams
    samples = np.clip(np.round(signal[: frames * 160 * streams]), -32768, 32767)
    batch = samples.astype(np.int16).reshape(streams, frames, 160)
    detectors = [InbandDetector() for _ in range(streams)]
    found = [""] * streams
    for tick in range(frames):
        for i, digits in enumerate(feed_many(detectors, batch[:, tick])):
            found[i] += "".join(d.digit for d in digits)
    return found


def test_no_digits_in_minutes_of_speech(speech: np.ndarray) -> None:
    assert detect_in_parallel(speech) == [""] * 16
    assert detect_in_parallel(np.clip(speech * 2, -32768, 32767)) == [""] * 16


def test_no_digits_in_noise_and_music_like_chords() -> None:
    rng = np.random.default_rng(7)
    assert detect(rng.normal(0, 3000, 60 * RATE)) == ""
    t = np.arange(10 * RATE) / RATE
    chords = sum(3000 * np.sin(2 * np.pi * f * t) for f in (440, 554.37, 659.25, 880))
    assert detect(chords) == ""


def test_speech_does_not_hide_digits(speech: np.ndarray) -> None:
    tones = np.concatenate([np.concatenate([dual(d, 60), silence(60)]) for d in "0123456789"])
    mixed = np.concatenate([speech[: 5 * RATE], tones, speech[5 * RATE : 10 * RATE]])
    assert detect(mixed) == "0123456789"


def test_generated_keys_are_the_standard_frequencies_and_levels() -> None:
    # Each key: its row and column frequency (ITU-T Q.23), the low group at -8 dBm0 and the
    # high at -6 dBm0 (2 dB of pre-twist), 100 ms of tone then 100 ms of silence.
    peak_0dbm0 = 32767 * 10 ** (-3.14 / 20)
    for row, keys in enumerate(KEYPAD):
        for col, key in enumerate(keys):
            audio = dtmf_samples(key).astype(np.float64)
            assert len(audio) == 1600 and not audio[800:].any()
            tone = audio[:800]
            assert strongest(tone, 2) == pytest.approx([ROWS[row], COLUMNS[col]], abs=6)
            fitted = np.linalg.lstsq(
                np.stack([np.sin(2 * np.pi * f * np.arange(800) / 8000 + p)
                          for f in (ROWS[row], COLUMNS[col]) for p in (0, np.pi / 2)], axis=1),
                tone, rcond=None,
            )[0]  # fmt: skip
            amplitudes = np.hypot(fitted[0::2], fitted[1::2])
            dbm0 = 20 * np.log10(amplitudes / peak_0dbm0)
            assert dbm0 == pytest.approx([-8.0, -6.0], abs=0.05)
