"""The media clock: one 20 ms tick for everything of the exchange that decodes or makes
audio, so that the DSP runs over all streams at once (numpy pays off per batch, not per
packet).

On each tick, in this order:
1. every `Listener` (a decoded phone: recording, in-band DTMF, a conference) takes its next
   frame out of its jitter buffer;
2. the in-band DTMF detectors of all listeners that want one run in one numpy pass;
3. the jobs (recorders, conference rooms) use those frames;
4. every `Player` (our own audio to a phone: prompts, tones, music on hold, a room's mix)
   sends its next frame.

A call that only relays RTP costs the clock nothing: it runs only while something is
registered, and its timer is armed on the loop's monotonic clock at fixed 20 ms steps (a
late tick is caught up, not drifted; more than 100 ms behind skips ahead).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

import numpy as np
import numpy.typing as npt

from media.aio import PAYLOAD_TYPES, MediaEndpoint
from media.dtmf import Digit, InbandDetector, feed_many
from media.g711 import ALAW_DECODE, ULAW_DECODE, alaw_encode, ulaw_encode
from media.jitter import JitterBuffer, pop_many
from media.rtp import payload_span
from pbx.errors import MediaError

log = logging.getLogger("media.clock")

TICK = 0.02
FRAME = 160
Samples = npt.NDArray[np.int16]
DECODE = {"PCMU": ULAW_DECODE, "PCMA": ALAW_DECODE}
_ENCODE = {"PCMU": ulaw_encode, "PCMA": alaw_encode}
_SKIP_AHEAD = 6 * TICK  # `_tick` skips ahead when a tick comes later than this
_COUNT_TICKS = 50  # the audio dropped is counted once a second
_SPREAD = 10  # ticks a second job's slot may come after its due tick
_WARN_EVERY = 60.0  # seconds between warnings of it


def decodable(codec: str) -> bool:
    """Whether we can decode (and make) audio in this codec: G.711 only."""
    return codec.upper() in DECODE


class Source(Protocol):
    def read(self, count: int) -> Samples | None:
        """The next `count` samples, or None when the source is over."""


class Job(Protocol):
    def tick(self, now: float) -> None: ...


class Listener:
    """One phone's audio, decoded: the endpoint's packets of `codec` go through a jitter
    buffer, and `frame` is this tick's 20 ms (`real` False when concealed or silence).

    The packets' code bytes wait in the jitter buffer as they came; the clock decodes every
    listener's frame of a tick in one numpy operation (a packet decoded on its own costs
    several times as much)."""

    __slots__ = (
        "_clock", "_detector", "_dropped_counted", "_payload_type", "endpoint", "frame",
        "jitter", "on_digit", "real", "users",
    )  # fmt: skip

    def __init__(self, clock: MediaClock, endpoint: MediaEndpoint, codec: str) -> None:
        self._clock, self.endpoint = clock, endpoint
        self.jitter = JitterBuffer(decode=DECODE[_decodable_name(codec)])
        self.frame: Samples = np.zeros(FRAME, dtype=np.int16)
        self.real = False
        self.users = 0
        self._detector: InbandDetector | None = None
        self.on_digit: Callable[[Digit], None] | None = None
        self._dropped_counted = 0  # of jitter.stats.dropped_samples, in the clock's total
        self.set_codec(codec)
        endpoint.audio_tap = self._packet

    def set_codec(self, codec: str) -> None:
        name = _decodable_name(codec)
        self._payload_type = PAYLOAD_TYPES[name]
        if self.jitter.decode is not DECODE[name]:
            self.jitter.set_decode(DECODE[name])

    @property
    def dropped_samples(self) -> int:
        """Samples of this phone's audio the jitter buffer dropped to catch up: a sender
        whose clock runs fast, or ticks of ours that came late (an overloaded server)."""
        return self.jitter.stats.dropped_samples

    def detect_inband(self, on_digit: Callable[[Digit], None] | None) -> None:
        """Run the in-band DTMF detector on this phone's audio (None: stop)."""
        self.on_digit = on_digit
        self._detector = InbandDetector() if on_digit is not None else None

    def _packet(self, data: bytes, now: float) -> None:
        # Every packet of every decoded phone comes here: the usual header (version 2, no
        # padding, extension or CSRCs) is taken first, with no numpy call at all.
        if data[1] & 0x7F != self._payload_type:
            return  # telephone-events, comfort noise...
        if data[0] == 0x80:
            start, end = 12, len(data)
        else:
            start, end = payload_span(data)
        if end <= start:
            return
        self.jitter.push_bytes(int.from_bytes(data[4:8], "big"), data, start, end, now)

    def close(self) -> None:
        self._clock._count_dropped(self)
        if self.endpoint.audio_tap == self._packet:
            self.endpoint.audio_tap = None


def _decodable_name(codec: str) -> str:
    name = codec.upper()
    if name not in DECODE:
        raise MediaError(f"cannot decode {codec}: only PCMU and PCMA")
    return name


class Player:
    """Our own audio to one phone, in its codec: sources played one after the other, each
    `play` a future that is done when its source ends (or is cancelled by `stop`). While
    anything plays, what the bridge relays to this phone is dropped."""

    def __init__(self, clock: MediaClock, endpoint: MediaEndpoint, codec: str) -> None:
        self._clock, self.endpoint = clock, endpoint
        self._queue: deque[tuple[Source, asyncio.Future[None]]] = deque()
        self.set_codec(codec)

    def set_codec(self, codec: str) -> None:
        name = codec.upper()
        if name not in _ENCODE:
            raise MediaError(f"cannot play audio in {codec}: only PCMU and PCMA")
        self._encode, self._payload_type = _ENCODE[name], PAYLOAD_TYPES[name]

    @property
    def playing(self) -> bool:
        return bool(self._queue)

    def play(self, source: Source) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((source, done))
        self.endpoint.local = True
        self._clock.add_player(self)
        return done

    def stop(self) -> None:
        """Stop everything queued; the relay takes over again."""
        while self._queue:
            _, done = self._queue.popleft()
            if not done.done():
                done.cancel()
        self._idle()

    def _idle(self) -> None:
        self.endpoint.local = False
        self._clock.remove_player(self)

    def _tick(self, now: float) -> None:
        while self._queue:
            source, done = self._queue[0]
            frame = None if done.done() else source.read(FRAME)
            if frame is not None:
                packet, _ = self.endpoint.outgoing.emit(
                    self._payload_type, self._encode(frame), FRAME, now
                )
                self.endpoint.send_local(packet)
                return
            self._queue.popleft()
            if not done.done():
                done.set_result(None)
        self._idle()


class MediaClock:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: dict[int, Listener] = {}  # by id(endpoint)
        self._players: list[Player] = []
        self._player_of: dict[int, Player] = {}  # by id(endpoint)
        self._jobs: list[Job] = []
        # Jobs ticked once a second, each on a tick of its own: a bucket a tick.
        self._second_jobs: list[list[Job]] = [[] for _ in range(_COUNT_TICKS)]
        self._second_count = 0
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0
        self.ticks = 0
        self.late = 0  # ticks that came more than a tick late
        self.skipped = 0
        """Ticks never run: the loop was more than 100 ms behind and skipped ahead."""
        self.dropped_samples = 0
        """Samples of decoded audio the listeners' jitter buffers dropped to catch up
        (counted once a second, and as a listener closes): after late or skipped ticks,
        and from senders whose clocks run fast."""
        self._dropped_new = 0  # since the last count, once a second
        self._behind_at = -_WARN_EVERY  # when a tick last came more than a tick late
        self._skipped_unreported = self._dropped_unreported = 0  # since the last warning
        self._warn_after = 0.0

    # registration

    def listen(self, endpoint: MediaEndpoint, codec: str) -> Listener:
        """The decoded audio of `endpoint` (shared: each user calls `unlisten` when done)."""
        listener = self._listeners.get(id(endpoint))
        if listener is None:
            listener = self._listeners[id(endpoint)] = Listener(self, endpoint, codec)
        else:
            listener.set_codec(codec)
        listener.users += 1
        self._arm()
        return listener

    def unlisten(self, listener: Listener) -> None:
        listener.users -= 1
        if listener.users <= 0 and self._listeners.get(id(listener.endpoint)) is listener:
            del self._listeners[id(listener.endpoint)]
            listener.close()

    def listener_of(self, endpoint: MediaEndpoint) -> Listener | None:
        return self._listeners.get(id(endpoint))

    def player(self, endpoint: MediaEndpoint, codec: str) -> Player:
        """The one player of `endpoint` (made on first use), set to `codec`."""
        player = self._player_of.get(id(endpoint))
        if player is None or player.endpoint is not endpoint:
            player = self._player_of[id(endpoint)] = Player(self, endpoint, codec)
        else:
            player.set_codec(codec)
        return player

    def player_of(self, endpoint: MediaEndpoint) -> Player | None:
        player = self._player_of.get(id(endpoint))
        return player if player is not None and player.endpoint is endpoint else None

    def release(self, endpoint: MediaEndpoint) -> None:
        """The endpoint is closing: stop what plays to it and stop listening to it."""
        player = self._player_of.pop(id(endpoint), None)
        if player is not None and player.endpoint is endpoint:
            player.stop()
        listener = self._listeners.get(id(endpoint))
        if listener is not None and listener.endpoint is endpoint:
            del self._listeners[id(endpoint)]
            listener.close()

    def add_player(self, player: Player) -> None:
        if player not in self._players:
            self._players.append(player)
            self._arm()

    def remove_player(self, player: Player) -> None:
        if player in self._players:
            self._players.remove(player)

    def add_job(self, job: Job) -> None:
        if job not in self._jobs:
            self._jobs.append(job)
            self._arm()

    def remove_job(self, job: Job) -> None:
        if job in self._jobs:
            self._jobs.remove(job)

    def add_second_job(self, job: Job, due_in: int = 0) -> None:
        """Tick `job` once a second (work that needs no more: a recorder's writes), first
        `due_in` ticks from now or up to `_SPREAD` ticks later: on the one of those with
        the fewest such jobs, so that jobs added together spread their work."""
        if any(job in bucket for bucket in self._second_jobs):
            return
        first = self.ticks + due_in
        slots = [(first + k) % _COUNT_TICKS for k in range(_SPREAD)]
        self._second_jobs[min(slots, key=lambda slot: len(self._second_jobs[slot]))].append(job)
        self._second_count += 1
        self._arm()

    def remove_second_job(self, job: Job) -> None:
        for bucket in self._second_jobs:
            if job in bucket:
                bucket.remove(job)
                self._second_count -= 1

    def time(self) -> float:
        """The clock's time: its loop's, which the endpoints stamp packets with."""
        loop = self._loop or asyncio.get_running_loop()
        return loop.time()

    @property
    def busy(self) -> bool:
        return bool(self._listeners or self._players or self._jobs or self._second_count)

    # ticking

    def _arm(self) -> None:
        if self._handle is not None:
            return
        loop = self._loop = asyncio.get_running_loop()
        self._next = loop.time() + TICK
        self._handle = loop.call_at(self._next, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        # `_handle` stays set while the tick runs: what it starts (a digit's callback that
        # plays a tone) must not arm a second timer beside the one re-armed below.
        assert self._loop is not None
        now = self._loop.time()
        try:
            self.run_tick(now)
        except Exception:  # one broken job must not stop every call's media
            log.exception("media tick failed")
        if not self.busy:
            self._handle = None
            return
        self._next += TICK
        if now - self._next > 5 * TICK:
            self._next = now + TICK  # far behind: skip ahead rather than burst
        elif now > self._next + TICK:
            self.late += 1
        self._handle = self._loop.call_at(self._next, self._tick)

    def run_tick(self, now: float) -> None:
        """One tick's work (the loop calls it; tests and benchmarks may call it directly)."""
        self.ticks += 1
        if self._handle is not None:  # run by `_tick`, which due at `_next`
            behind = now - self._next
            if behind > 2 * TICK:
                self._behind_at = now
                if behind > _SKIP_AHEAD:  # `_tick` skips the ticks due until now
                    self.skipped += int(behind / TICK)
                    self._skipped_unreported += int(behind / TICK)
        listeners = list(self._listeners.values())
        detecting = self._take_frames(listeners) if listeners else []
        if self.ticks % _COUNT_TICKS == 0:
            self._count_loss(now, listeners)
        if detecting:
            frames = np.stack([lst.frame for lst in detecting])
            detectors = [lst._detector for lst in detecting if lst._detector is not None]
            for listener, digits in zip(detecting, feed_many(detectors, frames), strict=True):
                for digit in digits:
                    if listener.on_digit is not None:
                        listener.on_digit(digit)
        for job in list(self._jobs):
            job.tick(now)
        if self._second_count:
            for job in list(self._second_jobs[self.ticks % _COUNT_TICKS]):
                job.tick(now)
        for player in list(self._players):
            player._tick(now)

    def _take_frames(self, listeners: list[Listener]) -> list[Listener]:
        """Every listener's frame of this tick (decoded together); those that detect DTMF."""
        frames, real = pop_many([listener.jitter for listener in listeners])
        detecting = []
        for listener, frame, got in zip(listeners, frames, real, strict=True):
            listener.frame, listener.real = frame, got
            if listener._detector is not None:
                detecting.append(listener)
        return detecting

    def _count_dropped(self, listener: Listener) -> None:
        """Add what `listener`'s jitter buffer dropped since it was last counted."""
        dropped = listener.jitter.stats.dropped_samples
        self.dropped_samples += dropped - listener._dropped_counted
        self._dropped_new += dropped - listener._dropped_counted
        listener._dropped_counted = dropped

    def _count_loss(self, now: float, listeners: list[Listener]) -> None:
        """Once a second: the audio dropped to catch up. A server too busy to tick on time
        makes gaps in every conference and voicemail message (not in recordings: those
        place packets by their timestamps); say so, at most once a minute."""
        for listener in listeners:
            self._count_dropped(listener)
        dropped, self._dropped_new = self._dropped_new, 0
        if now - self._behind_at < 2 * _COUNT_TICKS * TICK:
            self._dropped_unreported += dropped  # not a fast sender's: the clock was behind
        skipped, lost = self._skipped_unreported, self._dropped_unreported
        if (skipped or lost) and now >= self._warn_after:
            log.warning(
                "media clock behind (server overloaded?): %d ticks skipped, %.0f ms of "
                "decoded audio dropped to catch up (over %d streams); conferences, "
                "voicemail and in-band DTMF lose that audio",
                skipped, lost * 1000 / 8000, len(listeners),
            )  # fmt: skip
            self._skipped_unreported = self._dropped_unreported = 0
            self._warn_after = now + _WARN_EVERY
