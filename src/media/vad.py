"""Voice activity with webrtcvad: which 20 ms frames carry speech, for voicemail's
end-of-message detection and for trimming silence off recordings."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import webrtcvad

RATE = 8000
FRAME = 160


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
