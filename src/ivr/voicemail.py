"""Voicemail as IVR flows: leaving a message, and listening to one's messages by phone.

Both run on the flow API (`ivr.session.Session`), so the test harness drives them like any
flow. Where messages live is a `Mailboxes`: the exchange's keeps files and database rows
(`pbx.voicemail`) and raises MWI when a box changes; `ivr.testing.MemoryMailboxes` keeps
them in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from ivr.session import HungUp, Recording, RecordingEnd, Session
from media.speech import counted, digits_words, number_words, when_words


class Folder(StrEnum):
    NEW = "new"
    SAVED = "saved"


class Greeting(StrEnum):
    UNAVAILABLE = "unavailable"
    BUSY = "busy"


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    box: str
    caller: str
    caller_name: str
    received: float
    seconds: float
    path: Path
    folder: Folder = Folder.NEW
    urgent: bool = False
    """Marked urgent by the flow that took it: heard first, counted apart by MWI."""


@dataclass(frozen=True, slots=True)
class Operator:
    """Where a caller who presses 0 during a greeting goes instead of leaving a message."""

    target: str
    """A dialplan target: reception's extension, a ring group..."""
    hours: str = ""
    """Names an [[hours]] schedule: 0 is offered only while it is open ("" always)."""


class Mailboxes(Protocol):
    max_seconds: float
    """The longest message (seconds)."""
    silence_seconds: float
    """This much silence after speech ends a message."""
    min_seconds: float
    """A shorter message (a caller hanging up at the beep) is not kept."""
    envelope: bool
    """Say when each message came, and from whom, before it plays (False: only from
    whom)."""
    timezone: tzinfo | None
    """The zone the envelope is said in (None: the machine's own)."""
    clock: Callable[[], float]
    """Now, as a UNIX time (what `Message.received` is)."""

    async def exists(self, box: str) -> bool: ...

    async def pin(self, box: str) -> str:
        """The box's PIN ("" when none is set: no access by phone)."""

    async def greeting(self, box: str, kind: Greeting) -> Path | None:
        """The box owner's own recorded greeting, if there is one."""

    async def is_personal(self, box: str) -> bool:
        """An extension's own box (its default greeting names a person)."""

    async def operator(self, box: str) -> Operator | None:
        """Where 0 during `box`'s greeting goes (None: 0 only skips the greeting, as any
        key does). Never the box's own extension: it has just not answered."""

    async def save(
        self, box: str, caller: str, caller_name: str, recording: Recording, call_id: str,
        urgent: bool = False,
    ) -> Message | None:  # fmt: skip
        """Keep the message (None: too short to keep)."""

    async def messages(self, box: str) -> list[Message]:
        """New messages first, then saved ones; in each, urgent ones first, then oldest
        first."""

    async def mark(self, message: Message, folder: Folder) -> None: ...

    async def delete(self, message: Message) -> None: ...

    async def set_pin(self, box: str, pin: str) -> None:
        """The box's new PIN (`valid_pin` has checked it)."""

    async def set_greeting(self, box: str, kind: Greeting, recording: Recording) -> Path | None:
        """Keep the owner's recording as the box's `kind` greeting (None: too short, the
        greeting stays as it was)."""


PIN_TRIES = 3
MENU_KEYS = "1679"  # 1 listen again, 6 next, 7 delete, 9 save
OPTIONS_KEY = "0"  # after the messages: the mailbox options
OPERATOR_KEY = "0"  # during a greeting: the operator, instead of a message
OPTION_KEYS = "124"  # 1 unavailable greeting, 2 busy greeting, 4 new PIN (as Asterisk's)
GREETING_SECONDS = 60.0
GREETING_SILENCE = 3.0


MIN_PIN, MAX_PIN = 4, 16


def valid_pin(pin: str) -> bool:
    """A mailbox PIN: 4 to 16 digits."""
    return pin.isascii() and pin.isdigit() and MIN_PIN <= len(pin) <= MAX_PIN


async def leave_message(
    call: Session,
    mailboxes: Mailboxes,
    box: str,
    greeting: str = Greeting.UNAVAILABLE,
    urgent: bool = False,
) -> Message | None:
    """The greeting, the beep, the message (kept even when the caller hangs up to end it).
    A key pressed during the greeting skips it; 0 goes to the box's operator, if it has
    one and its hours are open (None: the caller went there)."""
    kind = Greeting(greeting)
    own = await mailboxes.greeting(box, kind)
    if own is not None:
        greeting_prompts: list[str | Path] = [own]
    elif await mailboxes.is_personal(box):
        first = "person-busy" if kind is Greeting.BUSY else "no-one-available"
        greeting_prompts = [first, "leave-message"]
    else:
        greeting_prompts = ["leave-message"]
    operator = await mailboxes.operator(box)
    if operator is not None and operator.hours and not call.is_open(operator.hours):
        operator = None  # reception is closed: no one would answer
    if operator is not None and own is None:  # an owner's greeting says it, if it wants
        greeting_prompts.append("operator-option")
    await call.play(greeting_prompts)
    if operator is not None and await call.channel.digit(0.0) == OPERATOR_KEY:
        if await call.transfer(operator.target):
            return None
        await call.play("leave-message")  # no one there: a message after all
    call.channel.taking_message(box)
    recording = await call.record(mailboxes.max_seconds, mailboxes.silence_seconds)
    # Shielded: a hang-up now must not lose the message half-way into the database.
    message = await asyncio.shield(
        mailboxes.save(box, call.caller, call.caller_name, recording, call.call_id, urgent)
    )
    call.channel.report("message", message.id if message is not None else "too short, dropped")
    try:
        if message is not None:
            await call.play(["message-saved", "goodbye"], interruptible=False)
        else:
            await call.play("goodbye", interruptible=False)
    except HungUp:
        pass  # the caller hung up to end the message: that is how most messages end
    return message


async def check_messages(call: Session, mailboxes: Mailboxes, box: str | None = None) -> None:
    """Voicemail by phone: the box (asked for when None), its PIN, then each message with
    1 to hear it again, 7 to delete it, 9 to save it, 6 for the next; after the last, 0
    for the mailbox options (`mailbox_options`)."""
    await call.answer()
    if box is None:
        box = await call.collect(max_digits=12, timeout=10.0, prompt="enter-mailbox")
    if not box or not await mailboxes.exists(box):
        await call.play(["invalid", "goodbye"], interruptible=False)
        await call.hangup()
        return
    pin = await mailboxes.pin(box)
    if not pin:
        await call.play(["mailbox-no-pin", "goodbye"], interruptible=False)
        await call.hangup()
        return
    for attempt in range(PIN_TRIES):
        entered = await call.collect(
            max_digits=16, timeout=10.0, inter_digit_timeout=5.0, prompt="enter-pin"
        )
        if entered == pin:
            break
        call.channel.report("pin", f"wrong, attempt {attempt + 1}")
        await call.play("pin-incorrect")
    else:
        await call.play("goodbye", interruptible=False)
        await call.hangup()
        return
    call.channel.report("pin", "accepted")
    messages = await mailboxes.messages(box)
    new = sum(m.folder is Folder.NEW for m in messages)
    urgent = sum(m.folder is Folder.NEW and m.urgent for m in messages)
    saved = len(messages) - new
    await call.play(
        ["you-have", *counted(new, "new-message", "new-messages"),
         *([*number_words(urgent), "urgent"] if urgent else []), "and",
         *counted(saved, "saved-message", "saved-messages")]
    )  # fmt: skip
    for message in messages:
        if not await _one_message(call, mailboxes, message):
            break
    else:
        await call.play("no-more-messages")
        choice = await call.menu("mailbox-options", OPTIONS_KEY, retries=0, timeout=4.0)
        if choice == OPTIONS_KEY:
            await mailbox_options(call, mailboxes, box)
    await call.play("goodbye", interruptible=False)
    await call.hangup()


async def mailbox_options(call: Session, mailboxes: Mailboxes, box: str) -> None:
    """The owner's own settings, until no key is pressed: 1 record the unavailable
    greeting, 2 the busy one, 4 a new PIN."""
    while True:
        key = await call.menu("options-menu", OPTION_KEYS, retries=2, timeout=6.0)
        if key is None:
            return
        if key == "4":
            await _change_pin(call, mailboxes, box)
        else:
            kind = Greeting.UNAVAILABLE if key == "1" else Greeting.BUSY
            await _record_greeting(call, mailboxes, box, kind)


async def _record_greeting(call: Session, mailboxes: Mailboxes, box: str, kind: Greeting) -> None:
    await call.play("record-greeting")
    recording = await call.record(GREETING_SECONDS, GREETING_SILENCE)
    if recording.ended_by is RecordingEnd.HANG_UP:
        return  # not confirmed: the greeting stays as it was
    path = await mailboxes.set_greeting(box, kind, recording)
    if path is None:
        call.channel.report("greeting", f"{kind.value}: too short, not changed")
        await call.play("greeting-too-short")
        return
    call.channel.report("greeting", f"{kind.value}: recorded")
    await call.play([path, "greeting-saved"])  # what callers will hear


async def _change_pin(call: Session, mailboxes: Mailboxes, box: str) -> None:
    # One digit more than a PIN may have: a 16-digit one still ends at its #, and a longer
    # one is seen as too long (its rest, and its #, are dropped).
    new = await call.collect(MAX_PIN + 1, 10.0, 5.0, prompt="enter-new-pin")
    call.channel.flush()
    if (
        not valid_pin(new)
        or await call.collect(MAX_PIN + 1, 10.0, 5.0, prompt="reenter-pin") != new
    ):
        call.channel.report("pin", "not changed")
        await call.play("pin-not-changed")
        return
    await mailboxes.set_pin(box, new)
    call.channel.report("pin", "changed")
    await call.play("pin-changed")


def envelope_words(message: Message, now: float, zone: tzinfo | None = None) -> list[str]:
    """When a message came, against `now`, in `zone` (None: the machine's own):
    "received today at 9 oh 5 a.m."."""
    received = datetime.fromtimestamp(message.received, zone)
    return ["received", *when_words(received, datetime.fromtimestamp(now, zone))]


async def _one_message(call: Session, mailboxes: Mailboxes, message: Message) -> bool:
    """Play a message and act on the caller's keys; False when the caller made no choice
    (the session ends)."""
    while True:
        if message.urgent:
            await call.play("urgent-message")
        said = (
            envelope_words(message, mailboxes.clock(), mailboxes.timezone)
            if mailboxes.envelope
            else []
        )
        if message.caller.isdigit():
            said += ["message-from", *digits_words(message.caller)]
        if said:
            await call.play(said)
        await call.play(message.path)
        if message.folder is Folder.NEW:
            await mailboxes.mark(message, Folder.SAVED)  # heard: no longer new (as Asterisk)
            message = replace(message, folder=Folder.SAVED)
        key = await call.menu("voicemail-menu", MENU_KEYS, retries=2, timeout=6.0)
        if key == "1":
            continue
        if key == "7":
            await mailboxes.delete(message)
            await call.play("message-deleted")
        elif key == "9":
            await call.play("message-saved")
        return key is not None
