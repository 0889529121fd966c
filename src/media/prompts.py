"""Prompts and music on hold: sound files of any rate and channel count, read with
soundfile (WAV, FLAC, OGG...) and made 8 kHz mono 16-bit with scipy's polyphase resampler,
cached by path and modification time. The sources hand out 20 ms frames to a player.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile
from scipy.signal import resample_poly

from pbx.errors import MediaError

RATE = 8000
Samples = npt.NDArray[np.int16]
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".au"})


def load_audio(path: Path) -> Samples:
    """The file's audio as 8 kHz mono int16: channels averaged, then resampled exactly
    (by the reduced ratio of the two rates). MediaError if it cannot be read."""
    try:
        data, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    except (RuntimeError, OSError, soundfile.LibsndfileError) as exc:
        raise MediaError(f"cannot read sound file {path}: {exc}") from None
    mono = data.mean(axis=1)
    if rate != RATE:
        common = math.gcd(int(rate), RATE)
        mono = resample_poly(mono, RATE // common, int(rate) // common)
    # libsndfile reads int16 x as x / 32768: scaled back by the same, a 16-bit (or G.711)
    # file at 8 kHz gives its own samples, bit for bit.
    samples: Samples = np.clip(np.round(mono * 32768), -32768, 32767).astype(np.int16)
    return samples


class PromptCache:
    """Decoded prompts by path, kept while the file does not change; the least recently
    used are dropped beyond `max_seconds` of audio in all."""

    def __init__(self, max_seconds: float = 3600.0) -> None:
        self._max = int(max_seconds * RATE)
        self._entries: OrderedDict[Path, tuple[float, Samples]] = OrderedDict()
        self._size = 0

    def get(self, path: Path) -> Samples:
        path = path.resolve()
        try:
            mtime = path.stat().st_mtime
        except OSError as exc:
            raise MediaError(f"no sound file {path}: {exc.strerror}") from None
        entry = self._entries.get(path)
        if entry is not None and entry[0] == mtime:
            self._entries.move_to_end(path)
            return entry[1]
        samples = load_audio(path)
        if entry is not None:
            self._size -= len(entry[1])
        self._entries[path] = (mtime, samples)
        self._size += len(samples)
        while self._size > self._max and len(self._entries) > 1:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._size -= len(dropped)
        return samples


class Clip:
    """A sound to play once (or looped for ever): frames of `count` samples via `read`."""

    def __init__(self, samples: Samples, loop: bool = False) -> None:
        self._samples, self._loop, self._position = samples, loop and len(samples) > 0, 0

    def read(self, count: int) -> Samples | None:
        """The next `count` samples (the last ones padded with silence); None when over."""
        samples, position = self._samples, self._position
        if position >= len(samples) and not self._loop:
            return None
        if not self._loop:
            chunk = samples[position : position + count]
            self._position += count
            if len(chunk) < count:
                chunk = np.pad(chunk, (0, count - len(chunk)))
            return chunk
        out = np.empty(count, dtype=np.int16)
        filled = 0
        while filled < count:
            position %= len(samples)
            piece = samples[position : position + count - filled]
            out[filled : filled + len(piece)] = piece
            filled += len(piece)
            position += len(piece)
        self._position = position
        return out


def music_files(directory: Path) -> list[Path]:
    """The sound files of a music-on-hold directory, in name order."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)


def playlist(cache: PromptCache, files: Sequence[Path]) -> Clip | None:
    """Music on hold: the files one after the other, looped; None if none can be read."""
    parts = []
    for path in files:
        try:
            parts.append(cache.get(path))
        except MediaError:
            continue  # a broken file is skipped (the server logs it where it lists them)
    if not parts:
        return None
    return Clip(np.concatenate(parts), loop=True)
