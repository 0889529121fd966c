"""Conference mixing: N-party mix-minus of 20 ms frames, with per-party gain and mute.
Pure numpy: a room's whole tick is one array operation."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Frames = npt.NDArray[np.int16]


def mix_minus(
    frames: Frames,
    gains: npt.NDArray[np.float32] | None = None,
    talking: npt.NDArray[np.bool_] | None = None,
    extra: npt.NDArray[np.int16] | None = None,
) -> Frames:
    """Row i of the result: the sum of every party's frame but party i's own, saturated.

    `frames` is (parties, samples). `gains` scales what each party sends (1.0 as is);
    `talking` False mutes a party (it still hears the others); `extra` (samples,) is added
    for everyone, such as a join tone.
    """
    wide = frames.astype(np.int32)
    if gains is not None:
        wide = (wide * gains[:, None]).astype(np.int32)
    if talking is not None:
        wide = wide * talking[:, None]
    total = wide.sum(axis=0)
    if extra is not None:
        total = total + extra
    mixed: npt.NDArray[np.int32] = total - wide
    return mixed.clip(-32768, 32767).astype(np.int16)
