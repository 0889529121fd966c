"""The exchange's mailboxes: messages as WAV files under data_dir/voicemail/BOX, indexed in
the database, with MWI raised whenever a box's counts change.

A mailbox exists when it is a [[mailbox]] of the configuration, or an extension's own one
with `[voicemail] extensions = true`. Its PIN is the one `pbx voicemail pin` set (in the
database), else the [[mailbox]]'s `pin`. Greetings the owner recorded are files named
`greeting-unavailable.wav` and `greeting-busy.wav` (or .flac, .ogg) in the box's directory
(`pbx voicemail greeting BOX KIND FILE` puts one there).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from datetime import tzinfo
from pathlib import Path

import numpy as np
import soundfile

from ivr.session import AUDIO_SUFFIXES, Recording
from ivr.voicemail import Folder, Greeting, Message, Operator
from media.prompts import RATE
from media.vad import speech_bounds
from pbx.config import Config
from pbx.store import Store, VoicemailCounts

log = logging.getLogger("pbx.voicemail")

TRIM_MARGIN = 0.3  # seconds kept around the speech of a message


def box_directory(config: Config, box: str) -> Path:
    return config.voicemail_dir / box


def greeting_path(config: Config, box: str, kind: Greeting) -> Path | None:
    for suffix in AUDIO_SUFFIXES:
        path = box_directory(config, box) / f"greeting-{kind.value}{suffix}"
        if path.is_file():
            return path
    return None


def write_greeting(config: Config, box: str, kind: Greeting, samples: np.ndarray) -> Path:
    """Make `samples` (8 kHz mono) the box's `kind` greeting; its path. Blocking."""
    path = box_directory(config, box) / f"greeting-{kind.value}.wav"
    # Whole or not at all: a caller reaching the box meanwhile reads the old one.
    partial = path.with_name(f".greeting-{kind.value}.partial.wav")
    _write_wav(partial, samples)
    os.replace(partial, path)
    return path


def message_from_row(row: dict[str, object]) -> Message:
    return Message(
        id=str(row["id"]), box=str(row["box"]), caller=str(row["caller"]),
        caller_name=str(row["caller_name"]), received=float(row["received"]),  # type: ignore[arg-type]
        seconds=float(row["seconds"]), path=Path(str(row["path"])),  # type: ignore[arg-type]
        folder=Folder(str(row["folder"])), urgent=bool(row["urgent"]),
    )  # fmt: skip


def trimmed(samples: np.ndarray) -> np.ndarray:
    """The message without the silence the caller left after speaking (the end detector's
    wait) or before it; all of it when no speech is found (a fax tone, a quiet caller)."""
    bounds = speech_bounds(samples, margin=TRIM_MARGIN)
    if bounds is None:
        return samples
    return samples[bounds[0] : bounds[1]]


class Voicemail:
    """`ivr.voicemail.Mailboxes` over the store; `changed(box)` is awaited after every
    change (the exchange sends MWI there)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        is_extension: Callable[[str], bool],
        changed: Callable[[str], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        settings = config.voicemail
        self.config = config
        self.store = store
        self._is_extension = is_extension
        self._changed = changed
        self.clock = clock
        self.max_seconds = settings.max_seconds
        self.silence_seconds = settings.silence_seconds
        self.min_seconds = settings.min_seconds
        self.envelope = settings.envelope
        self.timezone: tzinfo | None = settings.timezone

    def has(self, box: str) -> bool:
        """Whether mailbox `box` exists: a [[mailbox]], or an extension's own one."""
        if self.config.mailbox(box) is not None:
            return True
        return self.config.voicemail.extensions and self._is_extension(box)

    async def exists(self, box: str) -> bool:
        return self.has(box)

    async def is_personal(self, box: str) -> bool:
        return self.config.mailbox(box) is None and self._is_extension(box)

    async def operator(self, box: str) -> Operator | None:
        configured = self.config.mailbox(box)
        own = configured.operator if configured is not None else None
        if own is not None:  # the box's own: at any time (an after-hours box's on-call desk)
            return Operator(own) if own and own != box else None
        target = self.config.voicemail.operator
        if not target or target == box:
            return None
        return Operator(target, self.config.voicemail.operator_hours)

    async def pin(self, box: str) -> str:
        stored = await self.store.mailbox_pin(box)
        if stored is not None:
            return stored
        configured = self.config.mailbox(box)
        return configured.pin if configured is not None else ""

    async def greeting(self, box: str, kind: Greeting) -> Path | None:
        return greeting_path(self.config, box, kind)

    async def save(
        self, box: str, caller: str, caller_name: str, recording: Recording, call_id: str,
        urgent: bool = False,
    ) -> Message | None:  # fmt: skip
        samples = trimmed(recording.samples)
        seconds = len(samples) / RATE
        if seconds < self.min_seconds:
            log.info("call %s: message for %s too short (%.1f s), dropped", call_id, box, seconds)
            return None
        received = self.clock()
        message_id = f"{int(received)}-{os.urandom(3).hex()}"
        path = box_directory(self.config, box) / f"msg-{message_id}.wav"
        await asyncio.to_thread(_write_wav, path, samples)
        message = Message(
            message_id, box, caller, caller_name, received, seconds, path, urgent=urgent
        )
        await self.store.add_voicemail({
            "id": message.id, "box": box, "caller": caller, "caller_name": caller_name,
            "received": received, "seconds": round(seconds, 2), "path": str(path),
            "folder": Folder.NEW.value, "call_id": call_id, "urgent": int(urgent),
        })  # fmt: skip
        log.info("call %s: %.1f s %smessage from %s in mailbox %s", call_id, seconds,
                 "urgent " if urgent else "", caller, box)  # fmt: skip
        await self._notify(box)
        return message

    async def messages(self, box: str) -> list[Message]:
        return [message_from_row(row) for row in await self.store.voicemails(box)]

    async def counts(self, box: str) -> VoicemailCounts:
        """What MWI tells the box's phones."""
        return await self.store.voicemail_counts(box)

    async def set_pin(self, box: str, pin: str) -> None:
        await self.store.set_mailbox_pin(box, pin, self.clock())
        log.info("mailbox %s: PIN changed by phone", box)

    async def set_greeting(self, box: str, kind: Greeting, recording: Recording) -> Path | None:
        samples = trimmed(recording.samples)
        if len(samples) / RATE < self.min_seconds:
            return None
        path = await asyncio.to_thread(write_greeting, self.config, box, kind, samples)
        log.info("mailbox %s: %s greeting recorded by phone (%.1f s)", box, kind.value,
                 len(samples) / RATE)  # fmt: skip
        return path

    async def mark(self, message: Message, folder: Folder) -> None:
        await self.store.set_voicemail_folder(message.id, folder.value)
        await self._notify(message.box)

    async def delete(self, message: Message) -> None:
        await self.store.delete_voicemail(message.id)
        message.path.unlink(missing_ok=True)
        await self._notify(message.box)

    async def _notify(self, box: str) -> None:
        if self._changed is not None:
            try:
                await self._changed(box)
            except Exception:  # MWI failing must not lose the message or the call
                log.exception("message waiting for mailbox %s", box)


def _write_wav(path: Path, samples: np.ndarray) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    soundfile.write(str(path), samples, RATE, subtype="PCM_16")
