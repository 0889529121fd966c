"""Measuring audio in tests: the strongest frequencies of a signal, and test tones."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def strongest(samples: npt.ArrayLike, count: int = 2, rate: int = 8000) -> list[float]:
    """The `count` strongest frequencies (at least 30 Hz apart), in ascending order."""
    signal = np.asarray(samples, dtype=np.float64)
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    freqs = np.fft.rfftfreq(len(signal), 1 / rate)
    peaks: list[float] = []
    for index in np.argsort(spectrum)[::-1]:
        if all(abs(freqs[index] - p) > 30 for p in peaks):
            peaks.append(float(freqs[index]))
        if len(peaks) == count:
            break
    return sorted(peaks)


def sine(hz: float, seconds: float, rate: int = 8000, amplitude: float = 8000) -> np.ndarray:
    """A 16-bit sine tone."""
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16)
