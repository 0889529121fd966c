"""ITU-T G.711 mu-law (PCMU, payload type 0) and A-law (PCMA, payload type 8).

Bit-exact with the reference C code (Sun `g711.c`) that CPython's `audioop`
used, which is gone in Python 3.13. Everything is a numpy table lookup:

* decode: 256-entry `int16` tables indexed by the code byte;
* encode: 65536-entry `uint8` tables indexed by the `uint16` view of the
  `int16` sample, so encoding is one gather with no arithmetic;
* PCMU <-> PCMA: 256-byte tables for `bytes.translate` (decode, then encode,
  like ITU-T G.711 Tables 3 and 4), so a relay never touches samples.

All functions take any length (a 20 ms frame is 160 samples / 160 bytes) and
any shape: a `(frames, 160)` array codes a batch in one call.
"""

from __future__ import annotations

from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from pbx.errors import LocalProtocolError, MediaError

__all__ = [
    "ALAW_DECODE",
    "ALAW_ENCODE",
    "ALAW_TO_ULAW",
    "ULAW_DECODE",
    "ULAW_ENCODE",
    "ULAW_TO_ALAW",
    "Codec",
    "PcmaCodec",
    "PcmuCodec",
    "alaw_decode",
    "alaw_encode",
    "transcode",
    "ulaw_decode",
    "ulaw_encode",
]

Samples = npt.NDArray[np.int16]
Codes = bytes | bytearray | memoryview | npt.NDArray[np.uint8]


def _ulaw_decode_table() -> Samples:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _alaw_decode_table() -> Samples:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _all_samples() -> npt.NDArray[np.int32]:
    """Every int16 value, in the order of its uint16 bit pattern."""
    return np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)


def _ulaw_encode_table() -> npt.NDArray[np.uint8]:
    pcm = _all_samples() >> 2  # 14-bit
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), 8159) + 0x21  # clip, add bias
    seg_end = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
    seg = np.searchsorted(seg_end, mag)  # 8 (out of range) only for the clipped 8159
    uval = np.where(seg < 8, (seg << 4) | ((mag >> (seg + 1)) & 0x0F), 0x7F)
    return (uval ^ mask).astype(np.uint8)


def _alaw_encode_table() -> npt.NDArray[np.uint8]:
    pcm = _all_samples() >> 3  # 13-bit
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg_end = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
    seg = np.searchsorted(seg_end, mag)  # mag <= 0xFFF, so seg < 8
    aval = (seg << 4) | ((mag >> np.maximum(seg, 1)) & 0x0F)
    return (aval ^ mask).astype(np.uint8)


ULAW_DECODE: Final = _ulaw_decode_table()
ALAW_DECODE: Final = _alaw_decode_table()
ULAW_ENCODE: Final = _ulaw_encode_table()
ALAW_ENCODE: Final = _alaw_encode_table()
for _table in (ULAW_DECODE, ALAW_DECODE, ULAW_ENCODE, ALAW_ENCODE):
    _table.flags.writeable = False

ULAW_TO_ALAW: Final = ALAW_ENCODE[ULAW_DECODE.view(np.uint16)].tobytes()
ALAW_TO_ULAW: Final = ULAW_ENCODE[ALAW_DECODE.view(np.uint16)].tobytes()


def _codes(data: Codes) -> npt.NDArray[np.uint8]:
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise LocalProtocolError(f"G.711 codes must be uint8, not {data.dtype}")
        return data
    return np.frombuffer(data, dtype=np.uint8)


def _pattern(samples: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    array = np.asarray(samples)
    if array.dtype != np.int16:
        raise LocalProtocolError(f"G.711 samples must be int16, not {array.dtype}")
    return array.view(np.uint16)


def ulaw_decode(data: Codes) -> Samples:
    """PCMU bytes (or a uint8 array of any shape, e.g. a batch) -> int16 samples."""
    return ULAW_DECODE[_codes(data)]


def alaw_decode(data: Codes) -> Samples:
    """PCMA bytes (or a uint8 array of any shape, e.g. a batch) -> int16 samples."""
    return ALAW_DECODE[_codes(data)]


def ulaw_encode(samples: npt.ArrayLike) -> bytes:
    """int16 samples of any shape -> PCMU bytes, row by row (frame i at [160*i:160*(i+1)])."""
    return ULAW_ENCODE[_pattern(samples)].tobytes()


def alaw_encode(samples: npt.ArrayLike) -> bytes:
    """int16 samples of any shape -> PCMA bytes, row by row (frame i at [160*i:160*(i+1)])."""
    return ALAW_ENCODE[_pattern(samples)].tobytes()


_TRANSLATE: Final[dict[tuple[str, str], bytes]] = {
    ("PCMU", "PCMA"): ULAW_TO_ALAW,
    ("PCMA", "PCMU"): ALAW_TO_ULAW,
}


def transcode(payload: bytes, source: str, target: str) -> bytes:
    """Re-code a G.711 payload between "PCMU" and "PCMA" without decoding it."""
    source, target = source.upper(), target.upper()
    if source == target and source in ("PCMU", "PCMA"):
        return bytes(payload)
    table = _TRANSLATE.get((source, target))
    if table is None:
        raise MediaError(f"cannot transcode {source} to {target}")
    return payload.translate(table)


class Codec(Protocol):
    """An RTP audio codec: int16 frames in, payload bytes out, and back."""

    @property
    def name(self) -> str: ...
    @property
    def payload_type(self) -> int: ...
    @property
    def clock_rate(self) -> int: ...
    def encode(self, samples: npt.ArrayLike) -> bytes: ...
    def decode(self, payload: bytes) -> Samples: ...


class PcmuCodec:
    """G.711 mu-law, RTP/AVP static payload type 0. Stateless."""

    name: Final = "PCMU"
    payload_type: Final = 0
    clock_rate: Final = 8000

    def encode(self, samples: npt.ArrayLike) -> bytes:
        return ulaw_encode(samples)

    def decode(self, payload: bytes) -> Samples:
        return ulaw_decode(payload)


class PcmaCodec:
    """G.711 A-law, RTP/AVP static payload type 8. Stateless."""

    name: Final = "PCMA"
    payload_type: Final = 8
    clock_rate: Final = 8000

    def encode(self, samples: npt.ArrayLike) -> bytes:
        return alaw_encode(samples)

    def decode(self, payload: bytes) -> Samples:
        return alaw_decode(payload)
