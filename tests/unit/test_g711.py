"""G.711 against CPython 3.11's `audioop` (deprecated, removed in 3.13) as the oracle."""

from __future__ import annotations

import warnings
from types import ModuleType

import numpy as np
import pytest

from media.g711 import (
    ALAW_TO_ULAW,
    ULAW_TO_ALAW,
    Codec,
    PcmaCodec,
    PcmuCodec,
    alaw_decode,
    alaw_encode,
    transcode,
    ulaw_decode,
    ulaw_encode,
)
from pbx.errors import LocalProtocolError, MediaError

ALL_CODES = bytes(range(256))
ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)


@pytest.fixture(scope="module")
def audioop() -> ModuleType:
    # The stdlib module until 3.12; from 3.13 the audioop-lts package (a test dependency).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

    return audioop


def pcm16(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2")


def test_ulaw_decode_all_codes(audioop: ModuleType) -> None:
    np.testing.assert_array_equal(ulaw_decode(ALL_CODES), pcm16(audioop.ulaw2lin(ALL_CODES, 2)))


def test_alaw_decode_all_codes(audioop: ModuleType) -> None:
    np.testing.assert_array_equal(alaw_decode(ALL_CODES), pcm16(audioop.alaw2lin(ALL_CODES, 2)))


def test_ulaw_encode_all_samples(audioop: ModuleType) -> None:
    raw = ALL_SAMPLES.astype("<i2").tobytes()
    assert ulaw_encode(ALL_SAMPLES) == audioop.lin2ulaw(raw, 2)


def test_alaw_encode_all_samples(audioop: ModuleType) -> None:
    raw = ALL_SAMPLES.astype("<i2").tobytes()
    assert alaw_encode(ALL_SAMPLES) == audioop.lin2alaw(raw, 2)


def test_translate_tables_match_decode_then_encode(audioop: ModuleType) -> None:
    assert audioop.lin2alaw(audioop.ulaw2lin(ALL_CODES, 2), 2) == ULAW_TO_ALAW
    assert audioop.lin2ulaw(audioop.alaw2lin(ALL_CODES, 2), 2) == ALAW_TO_ULAW
    assert transcode(ALL_CODES, "PCMU", "PCMA") == ULAW_TO_ALAW
    assert transcode(ALL_CODES, "pcma", "pcmu") == ALAW_TO_ULAW


def test_transcode_same_codec_and_unknown() -> None:
    assert transcode(b"\x01\x02", "PCMU", "PCMU") == b"\x01\x02"
    with pytest.raises(MediaError):
        transcode(b"\x01", "PCMU", "G729")


def test_batches_match_per_frame_calls() -> None:
    rng = np.random.default_rng(711)
    frames = rng.integers(-32768, 32768, size=(50, 160), dtype=np.int16)
    codes = rng.integers(0, 256, size=(50, 160), dtype=np.uint8)
    for encode, decode in ((ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)):
        assert encode(frames) == b"".join(encode(frame) for frame in frames)
        batch = decode(codes)
        assert batch.shape == (50, 160) and batch.dtype == np.int16
        for row, frame_codes in zip(batch, codes, strict=True):
            np.testing.assert_array_equal(row, decode(frame_codes.tobytes()))


def test_any_length() -> None:
    assert ulaw_encode(np.zeros(0, dtype=np.int16)) == b""
    assert ulaw_decode(b"").shape == (0,)
    assert len(alaw_encode(np.zeros(7, dtype=np.int16))) == 7
    assert alaw_decode(b"\xd5" * 161).shape == (161,)


def test_rejects_non_int16_samples() -> None:
    with pytest.raises(LocalProtocolError):
        ulaw_encode(np.zeros(160, dtype=np.float32))
    with pytest.raises(LocalProtocolError):
        alaw_decode(np.zeros(160, dtype=np.int16))


@pytest.mark.parametrize("codec", [PcmuCodec(), PcmaCodec()], ids=["PCMU", "PCMA"])
def test_sine_snr_above_35_db(codec: Codec) -> None:
    t = np.arange(8000) / 8000
    clean = 16000 * np.sin(2 * np.pi * 1000 * t)
    samples = np.round(clean).astype(np.int16)
    payload = codec.encode(samples)
    assert len(payload) == 8000 and codec.clock_rate == 8000
    noise = codec.decode(payload).astype(np.float64) - clean
    snr = 10 * np.log10(np.sum(clean**2) / np.sum(noise**2))
    assert snr > 35, f"{codec.name}: SNR {snr:.1f} dB"


def test_codec_attributes() -> None:
    assert (PcmuCodec.name, PcmuCodec.payload_type) == ("PCMU", 0)
    assert (PcmaCodec.name, PcmaCodec.payload_type) == ("PCMA", 8)
