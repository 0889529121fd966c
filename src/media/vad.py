"""Voice activity with webrtcvad: which 20 ms frames carry speech, for voicemail's
end-of-message detection and for trimming silence off recordings."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import webrtcvad

RATE = 8000
FRAME = 160
_SCAN = 100  # frames (2 s) read at a time by `speech_extent`


class VoiceDetector:
    """Speech or not, frame by frame (webrtcvad, `aggressiveness` 0-3), and how long the
    speaker has been quiet."""

    def __init__(self, aggressiveness: int = 2) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)
        self.silent_frames = 0
        self.speech_frames = 0

    def is_speech(self, frame: npt.NDArray[np.int16]) -> bool:
        speech = bool(self._vad.is_speech(np.ascontiguousarray(frame, "<i2").tobytes(), RATE))
        if speech:
            self.speech_frames += 1
            self.silent_frames = 0
        else:
            self.silent_frames += 1
        return speech

    @property
    def silence(self) -> float:
        """Seconds since the last frame of speech."""
        return self.silent_frames * FRAME / RATE


def speech_bounds(
    samples: npt.NDArray[np.int16], aggressiveness: int = 2, margin: float = 0.2
) -> tuple[int, int] | None:
    """Where speech starts and ends in `samples` (8 kHz), widened by `margin` seconds each
    side; None if there is none. Trims a message's leading and trailing silence."""
    detector = VoiceDetector(aggressiveness)
    frames = len(samples) // FRAME
    voiced = [i for i in range(frames) if detector.is_speech(samples[i * FRAME : (i + 1) * FRAME])]
    if not voiced:
        return None
    pad = int(margin * RATE)
    start = max(0, voiced[0] * FRAME - pad)
    end = min(len(samples), (voiced[-1] + 1) * FRAME + pad)
    return start, end


def speech_extent(
    read: Callable[[int, int], npt.NDArray[np.int16]],
    length: int,
    aggressiveness: int = 2,
) -> tuple[int, int] | None:
    """Where speech starts and ends (samples, whole 20 ms frames) in a recording of
    `length` samples at 8 kHz with one or more channels, speech on any channel counting;
    None if there is none. `read(start, count)` gives samples (count, channels).

    Only the two ends are looked at: forward from the start to the first frame of speech
    (one detector per channel running on), then back from the end, 2 s at a time (each
    block through fresh detectors, in order), to the last. Frames of digital silence (all
    zero: a pause, nobody on a side) are silence without asking the VAD."""
    frames = length // FRAME
    vads: list[webrtcvad.Vad] = []
    first = None
    for start in range(0, frames, _SCAN):
        block = read(start * FRAME, min(_SCAN, frames - start) * FRAME)
        vads = vads or [webrtcvad.Vad(aggressiveness) for _ in range(block.shape[1])]
        voiced = _voiced(vads, block, first_only=True)
        if voiced:
            first = start + voiced[0]
            break
    if first is None:
        return None
    end = frames
    while end > first + 1:
        start = max(first + 1, end - _SCAN)
        block = read(start * FRAME, (end - start) * FRAME)
        voiced = _voiced([webrtcvad.Vad(aggressiveness) for _ in vads], block, first_only=False)
        if voiced:
            return first * FRAME, (start + voiced[-1] + 1) * FRAME
        end = start
    return first * FRAME, (first + 1) * FRAME


def _voiced(vads: list[webrtcvad.Vad], block: npt.NDArray[np.int16], first_only: bool) -> list[int]:
    """The frames of `block` (samples, channels) with speech on any channel, in order:
    each channel through its own detector, frame after frame; `first_only` stops at one."""
    count = len(block) // FRAME
    if not count:
        return []
    block = block[: count * FRAME]
    sound = np.asarray(block.reshape(count, FRAME, len(vads)).any(axis=1))  # (frames, channels)
    found: set[int] = set()
    for c, vad in enumerate(vads):
        data = np.ascontiguousarray(block[:, c], "<i2").tobytes()
        for i in np.flatnonzero(sound[:, c]).tolist():
            if first_only and found and i >= min(found):
                break
            if vad.is_speech(data[2 * FRAME * i : 2 * FRAME * (i + 1)], RATE):
                found.add(i)
                if first_only:
                    break
    return sorted(found)
