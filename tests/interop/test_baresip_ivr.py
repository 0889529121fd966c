"""The example clinic's auto attendant with real phones: a baresip caller dials the main
number, keys an extension, and leaves a message that lights the MWI of a subscribed baresip.

As test_baresip_call.py, the call runs in private network and PID namespaces, driven by
netns_ivr.py. 1001 (baresip's mwi module subscribed to its mailbox) rejects the call the
flow puts through to it; 1002 (the caller) keys 1001 by RFC 4733 during the welcome, says
a sentence after the beep and falls silent. The test checks, as an operator sees it, where
the call went (`pbx events --json`: the flow's steps and the keys; `pbx cdr --json`), the
message (`pbx voicemail --json` and its audio), the NOTIFYs 1001 took (its MWI_NOTIFY
events, the SIP on the wire) and what the caller heard, prompt by prompt, in its own
recording of the call.
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ivr.session import Prompts
from tests.interop.helpers import run_in_namespace, samples_of
from tests.interop.netns_ivr import CLINIC, KEYS, SPEECH_LEAD

pytestmark = pytest.mark.interop

HEARD = 0.9  # normalized correlation of a prompt's half second with what the caller got


def best_match(samples: np.ndarray, chunk: np.ndarray) -> tuple[float, float]:
    """Where `chunk` is found in `samples`: the peak normalized cross-correlation (1.0 is
    the same waveform, up to a gain) and its offset in seconds at 8 kHz."""
    dot = np.correlate(samples, chunk, "valid")
    energy = np.convolve(samples**2, np.ones(len(chunk)), "valid")
    score = dot / np.maximum(np.sqrt(energy * float(chunk @ chunk)), 1e-9)
    at = int(score.argmax())
    return float(score[at]), at / 8000


def prompt_part(name: str, start: float | None = None) -> np.ndarray:
    """Half a second of prompt `name` (the clinic's, else the shipped one) at 8 kHz: from
    `start` seconds in, else from its middle."""
    samples = Prompts([CLINIC / "prompts"]).sound(name).samples.astype(np.float64)
    first = round(start * 8000) if start is not None else len(samples) // 2 - 2000
    return samples[first : first + 4000]


def wav_samples(path: Path) -> np.ndarray:
    with wave.open(str(path)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
        return np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float64)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("ivr")
    outcome = run_in_namespace("tests.interop.netns_ivr", work)
    outcome["work"] = str(work)
    return outcome


def test_the_keys_reach_the_extension_then_its_voicemail(result: dict[str, Any]) -> None:
    events = result["events"]
    keys = [(e["digit"], e["leg"], e["source"]) for e in events if e["type"] == "dtmf"]
    assert keys == [(key, "caller", "rfc4733") for key in KEYS], keys
    steps = [(e["step"], e["detail"]) for e in events if e["type"] == "ivr"]
    [message] = result["voicemail"]
    expected = [
        ("started", "main"),
        ("play", "clinic-welcome"),
        ("menu", "1001"),
        ("transfer", "1001"),
        ("voicemail", "1001"),
        ("play", "person-busy leave-message"),  # 1001's phone said busy
        ("play", "tone:beep"),
        ("message", message["id"]),
        ("play", "message-saved goodbye"),
        ("ended", "voicemail"),
    ]
    assert [s for s in steps if s in expected] == expected, steps
    # The caller's silence ended the message, not a hang-up or the time limit.
    [recorded] = [detail for step, detail in steps if step == "recorded"]
    assert recorded.endswith(", silence"), steps
    # 1001 was rung and turned the call down (baresip rejects with 486).
    to_1001 = result["sip_1001"]
    assert any("\nINVITE sip:1001" in m for m in to_1001), to_1001
    assert any("\nSIP/2.0 486 " in m for m in to_1001), to_1001

    [cdr] = result["cdr"]
    assert (cdr["caller"], cdr["dialled"], cdr["route"]) == ("1002", "100", "ivr"), cdr
    assert (cdr["disposition"], cdr["answered_by"]) == ("ANSWERED", "voicemail:1001"), cdr
    assert cdr["hangup_by"] == "system", cdr  # pbx hung up after "goodbye"


def test_the_message_is_the_callers_sentence(result: dict[str, Any]) -> None:
    [message] = result["voicemail"]
    [cdr] = result["cdr"]
    assert (message["box"], message["caller"], message["folder"]) == ("1001", "1002", "new")
    assert message["call_id"] == cdr["call_id"], (message, cdr)
    # Trimmed to the speech: longer than a second, about as long as the sentence.
    speech = result["speech_seconds"]
    assert message["seconds"] > 1.0 and abs(message["seconds"] - speech) < 1.0, (message, speech)
    stored = wav_samples(Path(message["path"]))
    said = wav_samples(Path(result["work"]) / "message.wav")  # silence, speech, silence
    middle = round((SPEECH_LEAD + speech / 2) * 8000)
    score, _ = best_match(stored, said[middle - 2000 : middle + 2000])
    assert score > HEARD, score


def test_the_subscribed_phone_is_told_of_the_message(result: dict[str, Any]) -> None:
    # baresip's mwi module reported each NOTIFY: the empty box on subscribing, then one new
    # message.
    before, after = result["mwi"]
    assert "Messages-Waiting: no" in before and "Voice-Message: 0/0" in before, before
    assert "Messages-Waiting: yes" in after and "Voice-Message: 1/0" in after, after
    assert any("1001 subscribed to MWI of 1001" in line for line in result["mwi_log"])
    # On the wire: pbx's NOTIFYs in the subscription's dialog, 1001 answering each 200.
    notifies = [m for m in result["sip_1001"] if "\nNOTIFY sip:1001" in m]
    assert len(notifies) >= 2, result["sip_1001"]
    assert "Messages-Waiting: yes" in notifies[-1], notifies[-1]
    assert "Subscription-State: active" in notifies[-1], notifies[-1]


def test_the_caller_hears_the_prompts_in_order(result: dict[str, Any]) -> None:
    [path] = result["received"]["1002"]
    samples, rate = samples_of(Path(path))
    assert rate == 8000
    heard = {}
    for name, start in (
        ("clinic-welcome", 0.2),  # from its start: the first key came a second in
        ("transferring", None),
        ("person-busy", None),  # baresip turned the call down: 486, busy
        ("leave-message", None),
        ("message-saved", None),
    ):
        score, at = best_match(samples, prompt_part(name, start))
        assert score > HEARD, (name, score)
        heard[name] = at
    assert list(heard) == sorted(heard, key=heard.__getitem__), heard
    # The keys cut the welcome and the menu short: the menu's middle never played.
    score, _ = best_match(samples, prompt_part("clinic-menu"))
    assert score < 0.6, score
