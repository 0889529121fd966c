"""Call-progress tones: the indications.conf notation, cadences and frequencies measured."""

from __future__ import annotations

import numpy as np
import pytest

from media.tones import COUNTRIES, Tone, parse_tone, tone_plan
from pbx.errors import ConfigError
from tests.support.audio import strongest


def test_us_busy_cadence_and_frequencies() -> None:
    tone = Tone(COUNTRIES["us"]["busy"])
    audio = np.concatenate([tone.read(160) for _ in range(100)])  # 2 s
    on = np.abs(audio.reshape(-1, 80)).max(axis=1) > 1000  # per 10 ms
    assert list(on[:100]) == ([True] * 50 + [False] * 50)
    assert strongest(audio[:4000].astype(float)) == pytest.approx([480, 620], abs=3)


def test_continuous_dial_tone_is_seamless_across_its_repeat() -> None:
    tone = Tone("350+440")
    audio = np.concatenate([tone.read(160) for _ in range(110)]).astype(float)
    t = np.arange(len(audio)) / 8000
    expected = 5095 * (np.sin(2 * np.pi * 350 * t) + np.sin(2 * np.pi * 440 * t))
    assert np.abs(audio - expected).max() < 40  # the second repeats without a click


def test_play_once_segments_end() -> None:
    beep = Tone("!1000/250")
    assert beep.finite
    frames = list(beep.frames())
    assert len(frames) == 13  # 250 ms, the last frame padded
    assert strongest(np.concatenate(frames)[:2000].astype(float), 1) == pytest.approx([1000], abs=3)


@pytest.mark.parametrize(
    "text", ["", "480+620/", "abc", "5000", "480/0", "350+440,0/100", "1+2+3+4+5/100"]
)
def test_bad_tones_are_refused(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each says what is wrong
        parse_tone(text)


def test_tone_plans_per_country_and_overrides() -> None:
    assert tone_plan("eu")["busy"] == "425/500,0/500"
    assert tone_plan("uk", {"busy": "400/500,0/500"})["busy"] == "400/500,0/500"
    with pytest.raises(ConfigError, match=r"tones\.busy"):
        tone_plan("us", {"busy": "nonsense"})
    with pytest.raises(ConfigError, match="unknown country"):
        tone_plan("mars")


# Each country's tones as its standard gives them, written out apart from the table:
# (frequencies of the sound, [(on ms, off ms), ...] of one cycle; None: continuous).
STANDARD = {
    ("us", "dial"): ((350, 440), None),
    ("us", "ringback"): ((440, 480), [(2000, 4000)]),
    ("us", "busy"): ((480, 620), [(500, 500)]),
    ("us", "congestion"): ((480, 620), [(250, 250)]),
    ("us", "call_waiting"): ((440,), [(300, 9700)]),
    ("uk", "dial"): ((350, 440), None),
    ("uk", "ringback"): ((400, 450), [(400, 200), (400, 2000)]),
    ("uk", "busy"): ((400,), [(375, 375)]),
    ("uk", "congestion"): ((400,), [(400, 350), (225, 525)]),
    ("uk", "call_waiting"): ((400,), [(100, 3000)]),
    ("eu", "dial"): ((425,), None),
    ("eu", "ringback"): ((425,), [(1000, 4000)]),
    ("eu", "busy"): ((425,), [(500, 500)]),
    ("eu", "congestion"): ((425,), [(250, 250)]),
    ("eu", "call_waiting"): ((425,), [(200, 200), (200, 4400)]),
}


@pytest.mark.parametrize(("country", "name"), sorted(STANDARD))
def test_every_countrys_tones_are_heard_as_its_standard_gives_them(country: str, name: str) -> None:
    frequencies, cadence = STANDARD[(country, name)]
    tone = Tone(tone_plan(country)[name])
    cycle_ms = sum(on + off for on, off in cadence) if cadence else 2000
    audio = np.concatenate([tone.read(160) for _ in range(2 * cycle_ms // 20)])
    # On and off, 5 ms by 5 ms, over two cycles: the cadence measured.
    loud = np.abs(audio.reshape(-1, 40)).max(axis=1) > 1000
    expected = [True] * (2 * cycle_ms // 5)
    if cadence:
        one = [s for on, off in cadence for s in [True] * (on // 5) + [False] * (off // 5)]
        expected = one * 2
    assert loud.tolist() == expected
    # The frequencies of the first burst, and its level: -13 dBm0 each (0 dBm0 is 3.14 dB
    # below the G.711 overload point).
    burst = audio[: (cadence[0][0] if cadence else 1000) * 8].astype(np.float64)
    assert strongest(burst, len(frequencies)) == pytest.approx(sorted(frequencies), abs=3)
    level = 32767 * 10 ** (-3.14 / 20) * 10 ** (-13 / 20) / np.sqrt(2)
    assert np.sqrt(np.mean(burst**2)) == pytest.approx(level * np.sqrt(len(frequencies)), rel=0.03)
