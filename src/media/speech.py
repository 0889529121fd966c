"""Spoken prompts: numbers, digits and durations as sequences of prompt names (slugs), and
the audio of such a sequence, for queue announcements and IVR flows.

The English set ships in `media/sounds/en/` as 8 kHz mono G.711 mu-law WAV files named by
slug (`3.wav`, `hundred.wav`, `you-are-caller-number.wav`); `PROMPTS` says what each one
says, and `tools/make_prompts.py` makes them again from it with espeak-ng. Numbers, times
and dates are read the American way: 105 is "one hundred five", 15:05 "three oh five p.m.".

The word functions are pure; `sequence` reads the files through a `PromptCache`;
`prompt_audio` makes any speech (espeak-ng's, a recording) a prompt like the shipped ones.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from datetime import datetime, time
from importlib.resources import files
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile
from scipy.signal import resample_poly

from media.prompts import RATE, Clip, PromptCache, Samples
from pbx.errors import MediaError
from pbx.hours import DAYS as WEEKDAYS

GAP = 0.04
"""Seconds of silence put between two prompts of a sequence (each file also starts and
ends with about 30 ms of its own)."""

LEVEL = -16.0
"""dBFS RMS of the speech of every prompt (over its 10 ms windows of speech, not pauses)."""
CEILING = -1.0
"""dBFS the peaks are softly limited to."""
PAD = 0.03
"""Seconds of silence kept before and after the speech of a prompt."""

_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
          "seventeen", "eighteen", "nineteen")  # fmt: skip
_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
             "ninth", "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth",
             "fifteenth", "sixteenth", "seventeenth", "eighteenth", "nineteenth",
             "twentieth", "thirtieth")  # fmt: skip
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december")  # fmt: skip

PROMPTS: Mapping[str, str] = {
    **{str(n): word for n, word in enumerate(_ONES)},
    **{str(10 + n): word for n, word in enumerate(_TEENS)},
    **{str(20 + 10 * n): word for n, word in enumerate(_TENS)},
    "hundred": "hundred",
    "thousand": "thousand",
    "star": "star",
    "hash": "hash",
    "minute": "minute",
    "minutes": "minutes",
    "second": "second",  # the unit, and the ordinal (the second of May)
    "seconds": "seconds",
    # dates and times, for a voicemail message's envelope
    **{word: word for word in _ORDINALS if word != "second"},
    **{word: word for word in (*WEEKDAYS, *MONTHS)},
    "today": "today",
    "yesterday": "yesterday",
    "received": "received",
    "at": "at",
    "oh": "oh",
    "oclock": "o'clock",
    "midnight": "midnight",
    "noon": "noon",
    "a-m": "a.m.",
    "p-m": "p.m.",
    # queues
    "you-are-caller-number": "you are caller number",
    "your-call-is-important": "your call is important to us, please stay on the line",
    "estimated-wait": "your estimated wait time is about",
    "less-than-a-minute": "less than a minute",
    "please-hold": "please hold",
    "callback-offer": "to keep your place in line and be called back, press star",
    "callback-confirmed": "thank you, we will call you back. goodbye",
    "goodbye": "goodbye",
    "sorry-error": "we are sorry, something went wrong",
    "invalid": "that is not a valid choice",
    # agents
    "agent-logged-in": "agent logged in",
    "agent-logged-out": "agent logged out",
    "agent-paused": "agent paused",
    "agent-ready": "agent ready",
    # voicemail
    "leave-message": "please leave a message after the tone",
    "no-one-available": "the person you are calling is not available",
    "you-have": "you have",
    "new-message": "new message",
    "new-messages": "new messages",
    "saved-message": "saved message",
    "saved-messages": "saved messages",
    "message-saved": "message saved",
    "message-deleted": "message deleted",
    "no-more-messages": "no more messages",
    "enter-pin": "please enter your pin followed by the hash key",
    "pin-incorrect": "that pin is incorrect",
    "voicemail-menu": "press 1 to listen, 7 to delete, 9 to save, 6 for the next message",
    "person-busy": "the person you are calling is on another call",
    "enter-mailbox": "please enter your mailbox number followed by the hash key",
    "mailbox-no-pin": "this mailbox has no pin yet. please ask your administrator to set one",
    "message-from": "message from",
    "urgent": "urgent",
    "urgent-message": "urgent message",
    "mailbox-options": "for mailbox options, press 0",
    "options-menu": "press 1 for your unavailable greeting, 2 for your busy greeting, 4 to "
    "change your pin",
    "record-greeting": "say your greeting after the tone, then press hash",
    "greeting-saved": "greeting saved",
    "greeting-too-short": "that was too short. your greeting was not changed",
    "enter-new-pin": "please enter your new pin followed by the hash key",
    "reenter-pin": "please enter your new pin again",
    "pin-changed": "your pin has been changed",
    "pin-not-changed": "your pin was not changed",
    "operator-option": "to reach an operator, press 0",
    "and": "and",
    # IVR
    "transferring": "please hold while we transfer your call",
    # the site
    "after-hours": "our office is now closed",
    "emergency": "if this is an emergency, hang up and dial nine one one",
}
"""Every prompt of the shipped set: slug -> the English text it says."""

_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_LANGUAGE = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{2,8})*")
_DIGIT_NAMES = {**{str(n): str(n) for n in range(10)}, "*": "star", "#": "hash"}
_SEPARATORS = frozenset(" -.()+/")
MAX_NUMBER = 999_999


def number_words(n: int) -> list[str]:
    """The prompts that say `n` (0-999,999): 21 -> ["20", "1"], 105 -> ["1", "hundred",
    "5"], 2300 -> ["2", "thousand", "3", "hundred"]. ValueError outside that range."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"can say whole numbers 0-{MAX_NUMBER:,}, not {n!r}")
    if n == 0:
        return ["0"]
    thousands, rest = divmod(n, 1000)
    words = [*_below_thousand(thousands), "thousand"] if thousands else []
    return words + _below_thousand(rest)


def _below_thousand(n: int) -> list[str]:
    """1-999 as prompts; [] for 0 (the zero of 2000 is not said)."""
    hundreds, rest = divmod(n, 100)
    words = [str(hundreds), "hundred"] if hundreds else []
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(str(10 * tens))
        if ones:
            words.append(str(ones))
    elif rest:
        words.append(str(rest))
    return words


def digits_words(text: str) -> list[str]:
    """The prompts that say `text` digit by digit ("*" is "star", "#" is "hash"), as for a
    phone number or an extension; spaces and - . ( ) + / are skipped. ValueError for any
    other character."""
    words = []
    for char in text:
        if char in _DIGIT_NAMES:
            words.append(_DIGIT_NAMES[char])
        elif char not in _SEPARATORS:
            raise ValueError(f"cannot say {char!r} of {text!r} as a digit")
    return words


def counted(n: int, one: str, many: str) -> list[str]:
    """`n` and the prompt of its noun: counted(1, "new-message", "new-messages") is
    ["1", "new-message"], counted(3, ...) is ["3", "new-messages"]."""
    return [*number_words(n), one if n == 1 else many]


def duration_words(seconds: float) -> list[str]:
    """A wait as callers are told it, rounded up to whole minutes: 45 s is
    ["less-than-a-minute"], 60 s ["1", "minute"], 150 s ["3", "minutes"]. ValueError
    for a negative or not finite time, or one too long to say."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be finite and not negative, not {seconds!r}")
    if seconds < 60:
        return ["less-than-a-minute"]
    # A hair over a whole minute (60.000001 from float arithmetic) is still that minute.
    minutes = math.ceil(round(seconds / 60, 6))
    return counted(minutes, "minute", "minutes")


def ordinal_words(n: int) -> list[str]:
    """A day of the month (1-31) as said in a date: 2 -> ["second"], 21 -> ["20", "first"],
    30 -> ["thirtieth"]. ValueError outside that range."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 31:
        raise ValueError(f"can say days of the month 1-31, not {n!r}")
    if n < 20:
        return [_ORDINALS[n - 1]]
    tens, ones = divmod(n, 10)
    if not ones:
        return [_ORDINALS[17 + tens]]
    return [str(10 * tens), _ORDINALS[ones - 1]]


def time_words(at: time) -> list[str]:
    """A time of day the American way: 9:00 is ["9", "oclock", "a-m"], 15:05 ["3", "oh",
    "5", "p-m"], 12:30 ["12", "30", "p-m"], 0:45 ["12", "40", "5", "a-m"]; 0:00 and 12:00
    on the minute are ["midnight"] and ["noon"] (12 a.m. and 12 p.m. are often misheard)."""
    if at.minute == 0 and at.hour in (0, 12):
        return ["midnight" if at.hour == 0 else "noon"]
    hour = at.hour % 12 or 12
    if at.minute == 0:
        minutes = ["oclock"]
    elif at.minute < 10:
        minutes = ["oh", str(at.minute)]
    else:
        minutes = number_words(at.minute)
    return [*number_words(hour), *minutes, "a-m" if at.hour < 12 else "p-m"]


def when_words(at: datetime, now: datetime) -> list[str]:
    """When something happened, said against `now` (both in the zone to say it in):
    ["today", "at", ...time], ["yesterday", "at", ...], a weekday within the last week,
    else the month and day (and the year, when not this year's)."""
    days = (now.date() - at.date()).days
    if days <= 0:  # a clock set back may put it ahead of now: it is still today's
        day = ["today"]
    elif days == 1:
        day = ["yesterday"]
    elif 1 < days < 7:
        day = [WEEKDAYS[at.weekday()]]
    else:
        day = [MONTHS[at.month - 1], *ordinal_words(at.day)]
        if at.year != now.year:
            day += number_words(at.year)
    return [*day, "at", *time_words(at.time())]


def sound_path(slug: str, language: str = "en") -> Path:
    """The shipped file of prompt `slug` in `language` (it may not exist: loading it raises
    MediaError then). ValueError for a slug or language that is not a plain name."""
    if not _SLUG.fullmatch(slug):
        raise ValueError(f"not a prompt name: {slug!r}")
    if not _LANGUAGE.fullmatch(language):
        raise ValueError(f"not a language tag: {language!r}")
    return Path(str(files("media").joinpath("sounds", language, f"{slug}.wav")))


def sequence_samples(
    slugs: Iterable[str], cache: PromptCache, language: str = "en", gap: float = GAP
) -> Samples:
    """The prompts one after the other, `gap` seconds apart, as 8 kHz int16 samples.
    MediaError if one of them has no file or cannot be read."""
    return joined([cache.get(sound_path(slug, language)) for slug in slugs], gap)


def joined(sounds: Iterable[Samples], gap: float = GAP) -> Samples:
    """The sounds one after the other, `gap` seconds of silence apart."""
    silence = np.zeros(round(gap * RATE), dtype=np.int16)
    parts: list[Samples] = []
    for sound in sounds:
        if parts:
            parts.append(silence)
        parts.append(sound)
    if not parts:
        return np.zeros(0, dtype=np.int16)
    together: Samples = np.concatenate(parts)
    return together


def sequence(
    slugs: Iterable[str], cache: PromptCache, language: str = "en", gap: float = GAP
) -> Clip:
    """The prompts as one sound for a `Player`:
    `player.play(sequence(["you-are-caller-number", *number_words(3)], cache))`."""
    return Clip(sequence_samples(slugs, cache, language, gap))


def prompt_audio(audio: npt.NDArray[np.float64], rate: int) -> Samples:
    """Speech (mono floats in -1..1 at `rate` Hz) made a prompt like the shipped ones:
    8 kHz, silence trimmed to `PAD` at either end, speech at `LEVEL` dBFS with its peaks
    softly limited to `CEILING`, 5 ms fades. All silence gives an empty prompt."""
    mono = np.asarray(audio, dtype=np.float64)
    mono = mono - mono.mean() if len(mono) else mono
    if rate != RATE:
        common = math.gcd(int(rate), RATE)
        mono = resample_poly(mono, RATE // common, int(rate) // common)
    pad = round(PAD * RATE)
    mono = np.pad(mono, pad)  # speech from the very first sample still gets its `PAD`
    window = RATE // 100  # 10 ms
    count = len(mono) // window
    if count == 0:
        return np.zeros(0, dtype=np.int16)
    levels = np.sqrt((mono[: count * window].reshape(count, window) ** 2).mean(axis=1))
    loudest = float(levels.max())
    if loudest < 1e-5:  # below -100 dBFS: nothing said
        return np.zeros(0, dtype=np.int16)
    loud = np.flatnonzero(levels > loudest * 10 ** (-40 / 20))
    start = max(0, int(loud[0]) * window - pad)
    end = min(len(mono), (int(loud[-1]) + 1) * window + pad)
    mono = mono[start:end]
    # The level of the speech, not of its pauses: 10 ms windows within 35 dB of the loudest.
    speech = levels[loud[0] : loud[-1] + 1]
    speech = speech[speech > loudest * 10 ** (-35 / 20)]
    active = float(np.sqrt((speech**2).mean()))
    mono = mono * (10 ** (LEVEL / 20) / active)
    # Soft limiter: unchanged up to the knee, then a tanh curve that never passes the
    # ceiling (slope 1 at the knee, so no corner to hear).
    ceiling, knee = 10 ** (CEILING / 20), 10 ** ((CEILING - 5) / 20)
    size = np.abs(mono)
    over = size > knee
    size[over] = knee + (ceiling - knee) * np.tanh((size[over] - knee) / (ceiling - knee))
    mono = np.sign(mono) * size
    fade = min(RATE // 200, len(mono) // 2)
    if fade:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
        mono[:fade] *= ramp
        mono[len(mono) - fade :] *= ramp[::-1]
    samples: Samples = np.clip(np.round(mono * 32767), -32768, 32767).astype(np.int16)
    return samples


VOICE = "en-us"
SPEED = 150
"""espeak-ng's voice and words a minute that made the shipped set."""


def speak(text: str, voice: str = VOICE, speed: int = SPEED) -> Samples:
    """`text` spoken by espeak-ng, made a prompt (`prompt_audio`). MediaError when
    espeak-ng is not installed or says nothing."""
    if shutil.which("espeak-ng") is None:
        raise MediaError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        done = subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-z", "-w", str(wav), text],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0 or not wav.exists():
            raise MediaError(f"espeak-ng failed: {done.stderr.strip() or done.returncode}")
        data, rate = soundfile.read(str(wav), dtype="float64", always_2d=True)
    samples = prompt_audio(data.mean(axis=1), int(rate))
    if not len(samples):
        raise MediaError(f"espeak-ng said nothing for {text!r}")
    return samples
