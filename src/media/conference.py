"""Conference rooms on the media clock: every tick, the frames of all members (from their
listeners' jitter buffers) are mixed minus each member's own in one numpy operation, and
each member's player sends its row. Join and leave tones go into everyone's mix.

A room is a clock job; members are keyed by whatever the caller chooses (a call id).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from media.clock import FRAME, Listener, MediaClock, Player, Samples
from media.mix import mix_minus
from media.tones import Tone

_SILENCE = np.zeros(FRAME, dtype=np.int16)


class Feed:
    """A player's source that never ends: the room's latest frame for one member."""

    def __init__(self) -> None:
        self.frame: Samples = _SILENCE

    def read(self, count: int) -> Samples | None:
        frame, self.frame = self.frame, _SILENCE
        return frame


@dataclass(eq=False)
class Member:
    key: str
    listener: Listener
    player: Player
    feed: Feed = field(default_factory=Feed)
    gain: float = 1.0
    muted: bool = False


class Room:
    """Up to `capacity` members hearing each other. `join_tone`/`leave_tone` are tone
    plans (indications.conf notation, finite) played to the room; "" for none."""

    def __init__(
        self, clock: MediaClock, capacity: int = 30, join_tone: str = "", leave_tone: str = ""
    ) -> None:
        self._clock = clock
        self.capacity = capacity
        self._join_tone, self._leave_tone = join_tone, leave_tone
        self.members: dict[str, Member] = {}
        self._tones: deque[Tone] = deque()
        self.ticks = 0

    @property
    def full(self) -> bool:
        return len(self.members) >= self.capacity

    def join(self, key: str, listener: Listener, player: Player) -> Member:
        """`listener` (the member's decoded audio, which the room now uses) and `player`
        (to its phone, which the room now feeds) join. The others hear the join tone."""
        if key in self.members:
            return self.members[key]
        if self.full:
            raise ValueError(f"the room is full ({self.capacity})")
        if self.members:
            self._announce(self._join_tone)
        member = self.members[key] = Member(key, listener, player)
        player.play(member.feed)
        self._clock.add_job(self)
        return member

    def leave(self, key: str) -> Member | None:
        """The member's player is stopped; the caller gives its listener back."""
        member = self.members.pop(key, None)
        if member is None:
            return None
        member.player.stop()
        if self.members:
            self._announce(self._leave_tone)
        else:
            self._tones.clear()
            self._clock.remove_job(self)
        return member

    def mute(self, key: str, muted: bool) -> bool:
        member = self.members.get(key)
        if member is None:
            return False
        member.muted = muted
        return True

    def set_gain(self, key: str, gain: float) -> bool:
        member = self.members.get(key)
        if member is None or not 0.0 <= gain <= 8.0:
            return False
        member.gain = gain
        return True

    def _announce(self, plan: str) -> None:
        if plan:
            self._tones.append(Tone(plan))

    def _extra(self) -> Samples | None:
        """This tick's frame of the tones being announced (one after the other)."""
        while self._tones:
            frame = self._tones[0].read(FRAME)
            if frame is not None:
                return frame
            self._tones.popleft()
        return None

    def tick(self, now: float) -> None:
        self.ticks += 1
        members = list(self.members.values())
        if not members:
            return
        frames = np.stack([m.listener.frame for m in members])
        gains = np.array([m.gain for m in members], dtype=np.float32)
        talking = np.array([not m.muted for m in members], dtype=np.bool_)
        unity = bool(np.all(gains == 1.0))
        extra = self._extra()
        mixed = mix_minus(frames, None if unity else gains, talking, extra)
        for member, row in zip(members, mixed, strict=True):
            member.feed.frame = row
