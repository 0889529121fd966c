"""Call-progress tones (dial, ringback, busy, congestion, call waiting) and the beeps of
conferences and prompts, as 8 kHz 20 ms frames. Pure numpy.

A tone is written the way Asterisk's indications.conf writes it, so that a site can copy
its country's tones from there: comma-separated segments `F1[+F2]/MS`, where 0 Hz is
silence and a segment without `/MS` lasts for ever; a leading `!` plays a segment once and
does not repeat it. `"480+620/500,0/500"` is the North American busy tone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pbx.errors import ConfigError

RATE = 8000
FRAME = 160
# 0 dBm0 is 3.14 dB below the G.711 overload point (ITU-T G.711 §4): peak 22754 of 32767.
_DBM0_PEAK = 32767 * 10 ** (-3.14 / 20)
DEFAULT_LEVEL = -13.0
"""dBm0 of each frequency of a tone."""

TONE_NAMES = ("dial", "ringback", "busy", "congestion", "call_waiting", "beep", "join", "leave")

COUNTRIES: Mapping[str, Mapping[str, str]] = {
    # North America (ANSI T1.401, the Precise Tone Plan)
    "us": {
        "dial": "350+440",
        "ringback": "440+480/2000,0/4000",
        "busy": "480+620/500,0/500",
        "congestion": "480+620/250,0/250",
        "call_waiting": "440/300,0/9700",
    },
    # United Kingdom (BT SIN 350)
    "uk": {
        "dial": "350+440",
        "ringback": "400+450/400,0/200,400+450/400,0/2000",
        "busy": "400/375,0/375",
        "congestion": "400/400,0/350,400/225,0/525",
        "call_waiting": "400/100,0/3000",
    },
    # Europe (ETSI TR 101 041 / CEPT recommendation)
    "eu": {
        "dial": "425",
        "ringback": "425/1000,0/4000",
        "busy": "425/500,0/500",
        "congestion": "425/250,0/250",
        "call_waiting": "425/200,0/200,425/200,0/4400",
    },
}
_COMMON = {"beep": "!1000/250", "join": "!800/150,!1200/150", "leave": "!1200/150,!800/150"}


@dataclass(frozen=True, slots=True)
class Segment:
    frequencies: tuple[float, ...]  # () is silence
    milliseconds: int | None  # None: for ever
    once: bool = False


def parse_tone(text: str) -> tuple[Segment, ...]:
    """Parse an indications.conf tone (`F1[+F2]/MS,...`); ValueError says what is wrong."""
    segments = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ValueError(f"empty segment in tone {text!r}")
        once = part.startswith("!")
        body = part[1:] if once else part
        freqs, slash, duration = body.partition("/")
        if slash and not duration:
            raise ValueError(f"a segment's '/' needs milliseconds after it: {part!r}")
        try:
            frequencies = tuple(float(f) for f in freqs.split("+"))
            milliseconds = int(duration) if duration else None
        except ValueError:
            raise ValueError(f"bad segment {part!r} in tone {text!r}") from None
        if any(not 0 <= f < RATE / 2 for f in frequencies) or len(frequencies) > 4:
            raise ValueError(f"frequencies must be 0-3999 Hz, at most 4: {part!r}")
        if milliseconds is not None and not 0 < milliseconds <= 60_000:
            raise ValueError(f"segment duration must be 1-60000 ms: {part!r}")
        audible = tuple(f for f in frequencies if f > 0)
        segments.append(Segment(audible, milliseconds, once))
    if any(s.milliseconds is None for s in segments[:-1]):
        raise ValueError(f"only the last segment may last for ever: {text!r}")
    return tuple(segments)


def tone_plan(country: str = "us", overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every tone of `country` ("us", "uk", "eu") with the site's overrides; ConfigError if
    the country is unknown or a tone does not parse."""
    if country not in COUNTRIES:
        raise ConfigError(f"unknown country {country!r}; known: {', '.join(COUNTRIES)}")
    plan = {**COUNTRIES[country], **_COMMON, **(overrides or {})}
    for name, text in plan.items():
        try:
            parse_tone(text)
        except ValueError as exc:
            raise ConfigError(str(exc), key=f"tones.{name}") from None
    return plan


def _samples(segment: Segment, count: int, level: float) -> npt.NDArray[np.float64]:
    t = np.arange(count) / RATE
    out = np.zeros(count)
    peak = _DBM0_PEAK * 10 ** (level / 20)
    for f in segment.frequencies:
        out += peak * np.sin(2 * np.pi * f * t)
    return out


class Tone:
    """An endless (or, with only `!` segments, finite) stream of 20 ms frames of a tone."""

    def __init__(self, text: str, level: float = DEFAULT_LEVEL) -> None:
        self.text = text
        segments = parse_tone(text)
        # A segment for ever is a second of it repeated: whole cycles of any whole-Hz
        # frequency fit a second, so the repeat is seamless.
        once = [s for s in segments if s.once]
        repeating = [s for s in segments if not s.once]
        self._head = self._render(once, level)
        self._cycle = self._render(repeating, level)
        self._position = 0

    @staticmethod
    def _render(segments: list[Segment], level: float) -> npt.NDArray[np.int16]:
        parts = [
            _samples(s, RATE if s.milliseconds is None else s.milliseconds * RATE // 1000, level)
            for s in segments
        ]
        joined = np.concatenate(parts) if parts else np.zeros(0)
        return np.clip(np.round(joined), -32768, 32767).astype(np.int16)

    @property
    def finite(self) -> bool:
        return len(self._cycle) == 0

    @property
    def length(self) -> int:
        """Samples of the part played once (all of a finite tone)."""
        return len(self._head)

    def frames(self) -> Iterator[npt.NDArray[np.int16]]:
        """Frames from where the tone is now; a finite tone ends, padded with silence."""
        while True:
            frame = self.read(FRAME)
            if frame is None:
                return
            yield frame

    def read(self, count: int) -> npt.NDArray[np.int16] | None:
        """The next `count` samples; None once a finite tone is over."""
        head, cycle = self._head, self._cycle
        total_head = len(head)
        if self.finite and self._position >= total_head:
            return None
        out = np.zeros(count, dtype=np.int16)
        filled = 0
        while filled < count:
            position = self._position
            if position < total_head:
                chunk = head[position : position + count - filled]
            elif len(cycle):
                offset = (position - total_head) % len(cycle)
                chunk = cycle[offset : offset + count - filled]
            else:
                break
            out[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
            self._position += len(chunk)
        return out


def tone_samples(plan: str, seconds: float, pad: bool = True) -> npt.NDArray[np.int16]:
    """`seconds` of tone `plan` (indications.conf notation; "" is silence): a cadence that
    repeats, or a finite one padded with silence (`pad` False: a finite one is cut at its
    own end, however long was asked)."""
    count = round(seconds * RATE)
    tone = Tone(plan) if plan else None
    if tone is not None and tone.finite and not pad:
        count = min(count, tone.length)
    samples = tone.read(count) if tone is not None else None
    return samples if samples is not None else np.zeros(count, dtype=np.int16)
