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
