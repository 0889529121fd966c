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

from media.aio import MediaEndpoint
from media.dtmf import Digit, InbandDetector, feed_many
from media.g711 import ALAW_DECODE, ULAW_DECODE, alaw_encode, ulaw_encode
from media.jitter import JitterBuffer
from pbx.errors import MediaError

log = logging.getLogger("media.clock")

TICK = 0.02
FRAME = 160
Samples = npt.NDArray[np.int16]
_DECODE = {"PCMU": ULAW_DECODE, "PCMA": ALAW_DECODE}
_ENCODE = {"PCMU": ulaw_encode, "PCMA": alaw_encode}
_PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8}


def decodable(codec: str) -> bool:
    """Whether we can decode (and make) audio in this codec: G.711 only."""
    return codec.upper() in _DECODE


class Source(Protocol):
    def read(self, count: int) -> Samples | None:
        """The next `count` samples, or None when the source is over."""


class Job(Protocol):
    def tick(self, now: float) -> None: ...


class Listener:
    """One phone's audio, decoded: the endpoint's packets of `codec` go through a jitter
    buffer, and `frame` is this tick's 20 ms (`real` False when concealed or silence)."""

    def __init__(self, clock: MediaClock, endpoint: MediaEndpoint, codec: str) -> None:
        self._clock, self.endpoint = clock, endpoint
        self.jitter = JitterBuffer()
        self.frame: Samples = np.zeros(FRAME, dtype=np.int16)
        self.real = False
        self.users = 0
        self._detector: InbandDetector | None = None
        self.on_digit: Callable[[Digit], None] | None = None
        self.set_codec(codec)
        endpoint.audio_tap = self._packet

    def set_codec(self, codec: str) -> None:
        name = codec.upper()
        if name not in _DECODE:
            raise MediaError(f"cannot decode {codec}: only PCMU and PCMA")
        self._table, self._payload_type = _DECODE[name], _PAYLOAD_TYPES[name]

    def detect_inband(self, on_digit: Callable[[Digit], None] | None) -> None:
        """Run the in-band DTMF detector on this phone's audio (None: stop)."""
        self.on_digit = on_digit
        self._detector = InbandDetector() if on_digit is not None else None

    def _packet(self, data: bytes, now: float) -> None:
        if data[1] & 0x7F != self._payload_type:
            return  # telephone-events, comfort noise...
        b0 = data[0]
        start = 12 + 4 * (b0 & 0x0F)
        if b0 & 0x10:
            if len(data) < start + 4:
                return
            start += 4 + 4 * int.from_bytes(data[start + 2 : start + 4], "big")
        end = len(data) - data[-1] if b0 & 0x20 else len(data)
        if end <= start:
            return
        timestamp = int.from_bytes(data[4:8], "big")
        codes = np.frombuffer(data, dtype=np.uint8, count=end - start, offset=start)
        self.jitter.push(timestamp, self._table[codes], now)

    def _pop(self) -> None:
        self.frame, self.real = self.jitter.pop()

    def close(self) -> None:
        if self.endpoint.audio_tap == self._packet:
            self.endpoint.audio_tap = None


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
        self._encode, self._payload_type = _ENCODE[name], _PAYLOAD_TYPES[name]

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
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0
        self.ticks = 0
        self.late = 0  # ticks that came more than a tick late

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

    @property
    def busy(self) -> bool:
        return bool(self._listeners or self._players or self._jobs)

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
        listeners = list(self._listeners.values())
        for listener in listeners:
            listener._pop()
        detecting = [lst for lst in listeners if lst._detector is not None]
        if detecting:
            frames = np.stack([lst.frame for lst in detecting])
            detectors = [lst._detector for lst in detecting if lst._detector is not None]
            for listener, digits in zip(detecting, feed_many(detectors, frames), strict=True):
                for digit in digits:
                    if listener.on_digit is not None:
                        listener.on_digit(digit)
        for job in list(self._jobs):
            job.tick(now)
        for player in list(self._players):
            player._tick(now)
