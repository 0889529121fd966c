"""Spoken prompts: numbers and durations as prompt names, and the shipped English set."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import soundfile

from media.g711 import ULAW_DECODE, ulaw_encode
from media.prompts import RATE, PromptCache
from media.speech import (
    GAP,
    PROMPTS,
    counted,
    digits_words,
    duration_words,
    number_words,
    ordinal_words,
    prompt_audio,
    sequence,
    sequence_samples,
    sound_path,
    time_words,
    when_words,
)
from pbx.errors import MediaError

# The prompts the queues, agents and voicemail ask for by name (issue 6).
NAMED = (
    "hundred thousand minute minutes second seconds you-are-caller-number "
    "your-call-is-important estimated-wait less-than-a-minute please-hold callback-offer "
    "callback-confirmed goodbye sorry-error invalid agent-logged-in agent-logged-out "
    "agent-paused agent-ready leave-message no-one-available you-have new-message "
    "new-messages saved-message saved-messages message-saved message-deleted "
    "no-more-messages enter-pin pin-incorrect voicemail-menu after-hours emergency"
).split()


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, ["0"]),
        (7, ["7"]),
        (10, ["10"]),
        (13, ["13"]),
        (19, ["19"]),
        (20, ["20"]),
        (21, ["20", "1"]),
        (99, ["90", "9"]),
        (100, ["1", "hundred"]),
        (105, ["1", "hundred", "5"]),
        (110, ["1", "hundred", "10"]),
        (342, ["3", "hundred", "40", "2"]),
        (1000, ["1", "thousand"]),
        (1001, ["1", "thousand", "1"]),
        (2300, ["2", "thousand", "3", "hundred"]),
        (12_019, ["12", "thousand", "19"]),
        (100_000, ["1", "hundred", "thousand"]),
        (999_999, ["9", "hundred", "90", "9", "thousand", "9", "hundred", "90", "9"]),
    ],
)
def test_number_words(n: int, words: list[str]) -> None:
    assert number_words(n) == words


def test_ordinal_words() -> None:
    said = {n: ordinal_words(n) for n in range(1, 32)}
    assert said[1] == ["first"] and said[2] == ["second"] and said[12] == ["twelfth"]
    assert said[19] == ["nineteenth"] and said[20] == ["twentieth"]
    assert said[21] == ["20", "first"] and said[29] == ["20", "ninth"]
    assert said[30] == ["thirtieth"] and said[31] == ["30", "first"]
    assert {word for words in said.values() for word in words} <= set(PROMPTS)
    for bad in (0, 32, -1, True):
        with pytest.raises(ValueError, match="days of the month"):
            ordinal_words(bad)


@pytest.mark.parametrize(
    ("hour", "minute", "words"),
    [
        (0, 0, ["midnight"]),
        (0, 1, ["12", "oh", "1", "a-m"]),
        (0, 45, ["12", "40", "5", "a-m"]),
        (9, 0, ["9", "oclock", "a-m"]),
        (11, 59, ["11", "50", "9", "a-m"]),
        (12, 0, ["noon"]),
        (13, 0, ["1", "oclock", "p-m"]),
        (12, 30, ["12", "30", "p-m"]),
        (15, 5, ["3", "oh", "5", "p-m"]),
        (23, 10, ["11", "10", "p-m"]),
    ],
)
def test_time_words(hour: int, minute: int, words: list[str]) -> None:
    assert time_words(time(hour, minute)) == words


def test_when_words_against_now() -> None:
    now = datetime(2026, 12, 7, 10, 0)  # a Monday
    assert when_words(datetime(2026, 12, 7, 8, 15), now) == ["today", "at", "8", "15", "a-m"]
    assert when_words(datetime(2026, 12, 6, 23, 59), now)[:1] == ["yesterday"]
    assert when_words(datetime(2026, 12, 2, 12, 0), now) == [
        "wednesday", "at", "noon",
    ]  # fmt: skip
    assert when_words(datetime(2026, 11, 30, 7, 1), now) == [
        "november", "thirtieth", "at", "7", "oh", "1", "a-m",
    ]  # fmt: skip
    assert when_words(datetime(2025, 12, 25, 18, 0), now) == [
        "december", "20", "fifth", "2", "thousand", "20", "5", "at", "6", "oclock", "p-m",
    ]  # fmt: skip
    # Days are calendar days, not 24 hours: late last night is yesterday.
    assert when_words(datetime(2026, 12, 6, 23, 0), datetime(2026, 12, 7, 0, 30))[0] == (
        "yesterday"
    )
    # A message stamped after now (a clock set back) is still today's.
    assert when_words(datetime(2026, 12, 7, 10, 5), now)[:1] == ["today"]
    # Across the change to summer time the days are still the zone's calendar days.
    new_york = ZoneInfo("America/New_York")
    before = datetime(2026, 3, 7, 23, 30, tzinfo=new_york)
    after = datetime(2026, 3, 8, 10, 0, tzinfo=new_york)
    assert when_words(before, after) == ["yesterday", "at", "11", "30", "p-m"]
    every = {w for d in range(400) for w in when_words(now - timedelta(days=d, minutes=7 * d), now)}
    assert every <= set(PROMPTS)


@pytest.mark.parametrize("n", [-1, 1_000_000, True])
def test_number_words_out_of_range(n: int) -> None:
    with pytest.raises(ValueError, match="whole numbers"):
        number_words(n)


def test_number_words_slugs_all_exist() -> None:
    used = {word for n in range(0, 1_000_000, 7) for word in number_words(n)}
    used |= {word for n in range(1000) for word in number_words(n)}
    assert used <= set(PROMPTS)


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (0, ["less-than-a-minute"]),
        (45, ["less-than-a-minute"]),
        (59.9, ["less-than-a-minute"]),
        (60, ["1", "minute"]),
        (60.0000001, ["1", "minute"]),
        (61, ["2", "minutes"]),
        (150, ["3", "minutes"]),
        (3600, ["60", "minutes"]),
        (7500, ["1", "hundred", "20", "5", "minutes"]),
    ],
)
def test_duration_words(seconds: float, words: list[str]) -> None:
    assert duration_words(seconds) == words


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf")])
def test_duration_words_refuses(seconds: float) -> None:
    with pytest.raises(ValueError, match="duration"):
        duration_words(seconds)


def test_digits_and_counted() -> None:
    assert digits_words("911") == ["9", "1", "1"]
    assert digits_words("+1 (555) 010-2*#") == [
        "1", "5", "5", "5", "0", "1", "0", "2", "star", "hash",
    ]  # fmt: skip
    assert digits_words("") == []
    with pytest.raises(ValueError, match="'x'"):
        digits_words("12x")
    assert counted(1, "new-message", "new-messages") == ["1", "new-message"]
    assert counted(0, "new-message", "new-messages") == ["0", "new-messages"]
    assert counted(3, "saved-message", "saved-messages") == ["3", "saved-messages"]


def test_sound_path_refuses_what_is_not_a_name() -> None:
    assert sound_path("you-have").name == "you-have.wav"
    assert sound_path("7").parent.name == "en"
    for bad in ("../prompts", "a/b", "", "Goodbye", "x.wav", "-x"):
        with pytest.raises(ValueError, match="prompt name"):
            sound_path(bad)
    with pytest.raises(ValueError, match="language"):
        sound_path("goodbye", "../en")


def test_the_set_is_what_prompts_says() -> None:
    assert set(NAMED) <= set(PROMPTS)
    assert {str(n) for n in [*range(20), *range(20, 100, 10)]} <= set(PROMPTS)
    shipped = {p.stem for p in sound_path("0").parent.glob("*.wav")}
    assert shipped == set(PROMPTS)
    total = sum(sound_path(slug).stat().st_size for slug in PROMPTS)
    assert total < 2_000_000  # 8 kHz mu-law: about 250 s of speech per 2 MB


@pytest.mark.parametrize("slug", sorted(PROMPTS))
def test_prompt_file(slug: str) -> None:
    info = soundfile.info(str(sound_path(slug)))
    assert (info.samplerate, info.channels, info.subtype) == (RATE, 1, "ULAW")
    samples = PromptCache().get(sound_path(slug))
    # Quantized by our G.711 encoder: a PCMU phone gets the file's own codes.
    assert np.array_equal(ULAW_DECODE[np.frombuffer(ulaw_encode(samples), np.uint8)], samples)
    seconds = len(samples) / RATE
    assert 0.2 < seconds <= 6.0
    level = 20 * np.log10(np.sqrt(np.mean(samples.astype(np.float64) ** 2)) / 32767)
    assert -22.0 < level < -14.0  # not silent, and all about as loud
    assert np.abs(samples).max() < 32000  # limited, never clipped
    # Trimmed: the first and last 20 ms are (nearly) silence, and speech follows soon
    # (faintly when it starts with a fricative: "three", "thank you").
    assert np.abs(samples[:160]).max() < 1000 and np.abs(samples[-160:]).max() < 1000
    assert np.abs(samples[: RATE // 10]).max() > 300 and np.abs(samples[-RATE // 10 :]).max() > 300


def test_sequence_length() -> None:
    cache = PromptCache()
    slugs = ["you-are-caller-number", *number_words(2300)]
    lengths = [len(cache.get(sound_path(slug))) for slug in slugs]
    samples = sequence_samples(slugs, cache)
    expected = sum(lengths) + (len(slugs) - 1) * round(GAP * RATE)
    assert len(samples) == expected
    assert 2.5 < len(samples) / RATE < 5.0
    gap_at = lengths[0]
    assert not samples[gap_at : gap_at + round(GAP * RATE)].any()
    assert len(sequence_samples(["1"], cache, gap=0.5)) == len(cache.get(sound_path("1")))
    assert len(sequence_samples([], cache)) == 0


def test_sequence_clip_plays_to_the_end() -> None:
    cache = PromptCache()
    clip = sequence(["you-are-caller-number", "3"], cache)
    frames = []
    while (frame := clip.read(160)) is not None:
        frames.append(frame)
    played = np.concatenate(frames)
    wanted = sequence_samples(["you-are-caller-number", "3"], cache)
    assert len(frames) == -(-len(wanted) // 160)
    assert np.array_equal(played[: len(wanted)], wanted)


def test_sequence_of_a_missing_prompt() -> None:
    with pytest.raises(MediaError, match="no sound file"):
        sequence_samples(["1", "no-such-prompt"], PromptCache())


def test_prompt_audio_trims_and_levels() -> None:
    rate = 22050
    t = np.arange(rate) / rate
    tone = 0.05 * np.sin(2 * np.pi * 440 * t) * (t > 0.3) * (t < 0.7)  # 0.4 s, -29 dBFS
    samples = prompt_audio(tone, rate)
    assert abs(len(samples) / RATE - (0.4 + 0.06)) < 0.02
    middle = samples[len(samples) // 4 : 3 * len(samples) // 4].astype(np.float64)
    assert abs(20 * np.log10(np.sqrt(np.mean(middle**2)) / 32767) + 16) < 0.5
    assert len(prompt_audio(np.zeros(8000), 8000)) == 0
    assert len(prompt_audio(np.zeros(0), 8000)) == 0


def test_every_prompt_is_its_own_recording() -> None:
    contents = {sound_path(slug).read_bytes() for slug in PROMPTS}
    assert len(contents) == len(PROMPTS)
