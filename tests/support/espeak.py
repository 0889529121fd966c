"""Synthetic speech for tests: espeak-ng's voice at 8 kHz, as a phone's microphone sends it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from media.prompts import load_audio

SENTENCE = "Hello, this is doctor Alvarez returning your call about the results."


def espeak(directory: Path, text: str = SENTENCE) -> npt.NDArray[np.int16]:
    """`text` spoken by espeak-ng, 8 kHz mono int16 (fails, never skips, without it)."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: `make test-deps` installs it")
    path = directory / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, timeout=30,
                   capture_output=True)  # fmt: skip
    return load_audio(path)
