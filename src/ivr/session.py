"""The call object an IVR flow is given: `async def flow(call)`.

A `Session` is the flow author's API (answer, play, collect, menu, record, transfer,
enqueue, voicemail, hangup...). It runs on a `Channel`, the one thing that differs between
the live exchange (`pbx.flows`, RTP and SIP) and the test harness (`ivr.testing`, scripted
keys on a virtual clock): the session's logic (menus, retries, time-outs, prompt lookup) is
the same in both, so a flow that passes its unit tests behaves the same way on the phone.

A caller hanging up cancels the flow's task (the exchange's doing); a channel that finds
the call over raises `HungUp` instead. Either way the flow ends where it was, and a flow may
catch `HungUp` (or use `finally`) to clean up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from media.prompts import RATE, PromptCache, Samples
from media.speech import GAP, digits_words, joined, number_words, sound_path
from media.tones import Tone, tone_samples

if TYPE_CHECKING:
    from ivr.voicemail import Mailboxes

log = logging.getLogger("ivr")

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
BEEP = "1000/250"  # the tone before a recording starts: 1 kHz for a quarter second
BEEP_NAME = "tone:beep"


class HungUp(Exception):
    """The caller is gone (or the call left the flow: transferred, queued): whatever the
    flow asks of the call now cannot happen."""


class RecordingEnd(StrEnum):
    SILENCE = "silence"
    MAX_LENGTH = "max length"
    KEY = "key"
    HANG_UP = "hang-up"


class DialStatus(StrEnum):
    """How the flow's last `transfer` went (Asterisk's DIALSTATUS)."""

    NONE = "none"  # no transfer yet
    ANSWER = "answer"  # it got there: answered, or taken by a queue, flow or mailbox
    BUSY = "busy"  # 486 or 600 from the phone: its voicemail's busy greeting fits
    NO_ANSWER = "no answer"  # rang out (or 408, 487)
    UNAVAILABLE = "unavailable"  # not registered, no route, no such queue, flow or box
    REJECTED = "rejected"  # declined (603) or another refusal


class Outcome(StrEnum):
    """How a flow left the call."""

    RUNNING = "running"
    TRANSFERRED = "transferred"
    QUEUED = "queued"
    VOICEMAIL = "voicemail"
    HUNG_UP = "hung up"  # the flow hung up (or returned, which hangs up)
    CALLER_HUNG_UP = "caller hung up"
    FALLBACK = "fallback"  # the flow failed; the caller went to its fallback


@dataclass(frozen=True, slots=True)
class Sound:
    """Audio to play, and what it is (prompt names, file paths, "tone:beep") for logs and
    for the test harness, which records what a caller heard by these names."""

    names: tuple[str, ...]
    samples: Samples

    @property
    def seconds(self) -> float:
        return len(self.samples) / RATE


@dataclass(frozen=True, slots=True)
class Recording:
    """What the caller said: 8 kHz mono samples, and what ended it."""

    samples: Samples
    ended_by: RecordingEnd
    key: str = ""  # the key that ended it, if one did

    @property
    def seconds(self) -> float:
        return len(self.samples) / RATE


class Channel(Protocol):
    """What a session needs of the call under it."""

    call_id: str
    caller: str
    caller_name: str
    dialled: str
    flow: str

    @property
    def mailboxes(self) -> Mailboxes | None:
        """Where `voicemail` keeps messages (None: no voicemail here)."""

    @property
    def tones(self) -> Mapping[str, str]:
        """The site's call-progress tones by name (`[tones]`: dial, busy...)."""

    async def answer(self) -> None:
        """Answer the call (nothing if it is answered). HungUp if the caller is gone."""

    async def play(self, sound: Sound, interruptible: bool) -> None:
        """Play `sound` to the caller until it ends, or (interruptible) until a key is
        pressed; the key stays for the next `digit`. A key already waiting skips it."""

    async def digit(self, seconds: float) -> str | None:
        """The next key the caller presses within `seconds` seconds (None: none)."""

    def flush(self) -> None:
        """Forget the keys pressed and not yet read."""

    async def record(self, max_seconds: float, silence_seconds: float, keys: str) -> Recording:
        """What the caller says until `silence_seconds` of silence after speech (0: no
        silence detection), `max_seconds`, one of `keys`, or a hang-up, which does not
        raise here: a message left by a caller who then hangs up is kept."""

    async def transfer(self, target: str) -> DialStatus:
        """Send the caller to `target` (a dialplan target): ANSWER once it is there (the
        flow is then over), else why it could not be reached."""

    async def enqueue(self, queue: str, priority: int) -> bool:
        """Put the caller in ACD queue `queue`; False if there is no such queue."""

    async def hang_up(self) -> None: ...

    def is_extension_prefix(self, digits: str) -> bool:
        """Whether some extension starts with `digits` (for dial-by-extension)."""

    def is_extension(self, number: str) -> bool: ...

    def is_open(self, hours: str) -> bool:
        """Whether the [[hours]] schedule `hours` is open now (KeyError: no such one)."""

    def taking_message(self, box: str) -> None:
        """A message for mailbox `box` is being taken: the box answered the call."""

    def report(self, step: str, detail: str = "") -> None:
        """Tell the event bus (`pbx events`) what the flow did."""


PromptLike = str | Path | Sequence[str | Path]


class Prompts:
    """Finds the audio of a prompt: a name ("clinic-menu") is looked for as a sound file
    in the site's prompt directories, then in the shipped set (`media/sounds/en`); a path
    (containing "/" or ending in .wav, .flac, .ogg) is a file, relative to `base`."""

    def __init__(
        self, directories: Sequence[Path] = (), base: Path | None = None,
        cache: PromptCache | None = None, language: str = "en",
    ) -> None:  # fmt: skip
        self.directories = tuple(directories)
        self.base = base or Path.cwd()
        self.cache = cache or PromptCache()
        self.language = language

    def path(self, prompt: str | Path) -> Path:
        text = str(prompt)
        if isinstance(prompt, Path) or "/" in text or text.lower().endswith(AUDIO_SUFFIXES):
            return self.base / prompt
        for directory in self.directories:
            for suffix in AUDIO_SUFFIXES:
                candidate = directory / f"{text}{suffix}"
                if candidate.is_file():
                    return candidate
        return sound_path(text, self.language)

    def sound(self, prompt: PromptLike) -> Sound:
        """The prompt(s) as one sound, `GAP` seconds apart. MediaError if one cannot be read,
        ValueError for a name that is not a plain prompt name."""
        parts = [prompt] if isinstance(prompt, (str, Path)) else list(prompt)
        samples = joined([self.cache.get(self.path(part)) for part in parts], GAP)
        return Sound(tuple(str(p) for p in parts), samples)


def beep() -> Sound:
    samples = Tone(BEEP).read(round(0.25 * RATE))
    assert samples is not None
    return Sound((BEEP_NAME,), samples)


class Session:
    """The `call` of `async def flow(call)`."""

    def __init__(self, channel: Channel, prompts: Prompts) -> None:
        self._channel = channel
        self.prompts = prompts
        self.vars: dict[str, str] = {}
        self.outcome = Outcome.RUNNING
        self.destination = ""  # where the call went: the transfer target, queue or box
        self.dial_status = DialStatus.NONE
        """How the last `transfer` went: BUSY, NO_ANSWER... (a phone that said busy gets
        its voicemail's busy greeting: `voicemail(box, greeting="busy")`)."""

    # who and what

    @property
    def call_id(self) -> str:
        return self._channel.call_id

    @property
    def caller(self) -> str:
        """The caller's extension, or the number of a caller from outside."""
        return self._channel.caller

    @property
    def caller_name(self) -> str:
        return self._channel.caller_name

    @property
    def dialled(self) -> str:
        return self._channel.dialled

    @property
    def flow(self) -> str:
        return self._channel.flow

    def set_var(self, name: str, value: object) -> None:
        """Keep a value with the call (it shows in the flow's events)."""
        self.vars[name] = str(value)
        self._channel.report("set", f"{name}={value}")

    def get_var(self, name: str, default: str = "") -> str:
        return self.vars.get(name, default)

    def is_open(self, hours: str) -> bool:
        """Whether the [[hours]] schedule named `hours` is open now."""
        return self._channel.is_open(hours)

    def is_extension(self, number: str) -> bool:
        return self._channel.is_extension(number)

    # media

    def _live(self) -> Channel:
        if self.outcome is not Outcome.RUNNING:
            raise HungUp(f"the call left the flow ({self.outcome.value})")
        return self._channel

    async def answer(self) -> None:
        await self._live().answer()

    async def play(self, prompt: PromptLike, interruptible: bool = True) -> None:
        """Play prompt names, files or a list of them; a key pressed stops an interruptible
        prompt and is kept for the next `collect` or `menu` (type-ahead). Keys pressed
        during a prompt that is not interruptible are dropped (they were tries to skip it)."""
        channel = self._live()
        await channel.answer()
        await self._play(channel, prompt, interruptible)
        if not interruptible:
            channel.flush()

    async def _play(
        self, channel: Channel, prompt: PromptLike | Sound, interruptible: bool
    ) -> None:
        sound = prompt if isinstance(prompt, Sound) else self.prompts.sound(prompt)
        channel.report("play", " ".join(sound.names))
        await channel.play(sound, interruptible)

    async def tone(self, name: str, seconds: float, interruptible: bool = True) -> None:
        """Play the site's call-progress tone `name` ("dial", "ringback", "busy",
        "congestion", "call_waiting", "beep"...: `[tones]`) for `seconds` (a tone that
        plays once, as "beep", for no longer than itself); a key stops it
        as it stops a prompt (dial tone until the caller dials, as Asterisk's Playtones).
        KeyError for a tone the site does not have."""
        channel = self._live()
        plan = channel.tones
        if name not in plan:
            raise KeyError(f"no tone {name!r}; the site's: {', '.join(sorted(plan))}")
        await channel.answer()
        sound = Sound((f"tone:{name}",), tone_samples(plan[name], seconds, pad=False))
        await self._play(channel, sound, interruptible)
        if not interruptible:
            channel.flush()

    async def say_digits(self, digits: str, interruptible: bool = True) -> None:
        """Say "1 0 0 2" (also * and #)."""
        await self.play(digits_words(digits), interruptible)

    async def say_number(self, number: int, interruptible: bool = True) -> None:
        """Say "one thousand two"."""
        await self.play(number_words(number), interruptible)

    async def collect(
        self,
        max_digits: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109 (the flow API's name for it)
        inter_digit_timeout: float = 3.0,
        terminator: str = "#",
        prompt: PromptLike | None = None,
    ) -> str:
        """Keys until `max_digits`, the `terminator` (not included), `timeout` seconds
        without a first key, or `inter_digit_timeout` between keys. "" if none."""
        if max_digits < 1:
            raise ValueError("max_digits must be at least 1")
        channel = self._live()
        await channel.answer()
        if prompt is not None:
            await self._play(channel, prompt, True)
        entered = ""
        while len(entered) < max_digits:
            key = await channel.digit(inter_digit_timeout if entered else timeout)
            if key is None:
                break
            if terminator and key in terminator:
                break
            entered += key
        channel.report("collected", entered)
        return entered

    async def menu(
        self,
        prompt: PromptLike,
        options: Iterable[str] | Mapping[str, object],
        retries: int = 3,
        invalid_prompt: PromptLike | None = "invalid",
        timeout_prompt: PromptLike | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109 (the flow API's name for it)
        extensions: bool = False,
        inter_digit_timeout: float = 2.0,
    ) -> str | None:
        """Play `prompt` and take one key of `options` (a key is "1", "*"...); after a key
        not offered the caller hears `invalid_prompt`, after `timeout` seconds of nothing
        `timeout_prompt`, and the prompt again, `retries` times in all. None if no choice
        was made. With `extensions`, the caller may also dial an extension's number
        instead (a key that starts one waits `inter_digit_timeout` for the next)."""
        choices = set(options)
        channel = self._live()
        await channel.answer()
        for attempt in range(1, max(1, retries) + 1):
            await self._play(channel, prompt, True)
            key = await channel.digit(timeout)
            if key is None:
                channel.report("timeout", f"attempt {attempt}")
                if timeout_prompt is not None and attempt < retries:
                    await self._play(channel, timeout_prompt, True)
                continue
            entered = key
            if extensions:
                # "1" may be an option and the start of 1001: wait a little for more.
                while channel.is_extension_prefix(entered) and not channel.is_extension(entered):
                    more = await channel.digit(inter_digit_timeout)
                    if more is None:
                        break
                    entered += more
            if entered in choices or (extensions and channel.is_extension(entered)):
                channel.report("menu", entered)
                return entered
            channel.report("invalid", entered)
            if invalid_prompt is not None:
                await self._play(channel, invalid_prompt, True)
        channel.report("menu", "no choice")
        return None

    async def record(
        self, max_seconds: float = 120.0, silence_seconds: float = 5.0, beep_first: bool = True,
        keys: str = "#",
    ) -> Recording:  # fmt: skip
        """What the caller says after the beep, until `silence_seconds` of silence after
        speech, `max_seconds`, a key of `keys` or a hang-up (which does not raise: a
        message is kept even when the caller hangs up to end it)."""
        channel = self._live()
        await channel.answer()
        if beep_first:
            channel.report("play", BEEP_NAME)
            await channel.play(beep(), False)
        channel.flush()
        recording = await channel.record(max_seconds, silence_seconds, keys)
        channel.report("recorded", f"{recording.seconds:.1f} s, {recording.ended_by.value}")
        return recording

    # where the call goes

    async def transfer(self, target: str) -> bool:
        """Send the caller to `target`: an extension, a ring group, "queue:NAME",
        "voicemail:BOX", "ivr:FLOW", "trunk:NAME:NUMBER"... True once it got there (the
        flow has done its part: later calls raise HungUp); False if it could not be
        reached (busy, no answer, no such target: `dial_status` says which), and the flow
        goes on."""
        channel = self._live()
        channel.report("transfer", target)
        self.dial_status = await channel.transfer(target)
        if self.dial_status is DialStatus.ANSWER:
            self.outcome, self.destination = Outcome.TRANSFERRED, target
            return True
        return False

    async def enqueue(self, queue: str, priority: int = 0) -> bool:
        """Put the caller in ACD queue `queue` at `priority` (higher is served first);
        the queue takes the call from here. False if there is no such queue."""
        channel = self._live()
        await channel.answer()
        channel.report("queue", f"{queue}:{priority}" if priority else queue)
        if await channel.enqueue(queue, priority):
            self.outcome, self.destination = Outcome.QUEUED, queue
            return True
        return False

    async def voicemail(
        self, box: str, greeting: str = "unavailable", urgent: bool = False
    ) -> bool:
        """Take a message for mailbox `box` (its `greeting`: "unavailable" or "busy"),
        then hang up; an `urgent` one is counted apart by MWI and heard first. False if
        there is no such box (the flow goes on)."""
        from ivr.voicemail import leave_message

        channel = self._live()
        mailboxes = channel.mailboxes
        if mailboxes is None or not await mailboxes.exists(box):
            channel.report("voicemail", f"{box}: no such mailbox")
            return False
        await channel.answer()
        channel.flush()  # keys from the menu before must not skip the greeting
        channel.report("voicemail", box)
        self.destination = box
        await leave_message(self, mailboxes, box, greeting, urgent)
        if self.outcome is Outcome.RUNNING:
            self.outcome = Outcome.VOICEMAIL
            await channel.hang_up()
        return True

    async def hangup(self) -> None:
        if self.outcome is not Outcome.RUNNING:
            return
        self.outcome = Outcome.HUNG_UP
        self._channel.report("hangup")
        await self._channel.hang_up()

    # for ivr.voicemail, which keeps running after the caller hung up during a message

    @property
    def channel(self) -> Channel:
        return self._channel
