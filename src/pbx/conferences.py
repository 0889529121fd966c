"""Conference rooms of the exchange: the [[conference]] tables, one media `Room` per room
in use, who is in it, and the events that say so.

A member is one call answered by the exchange (dialled in, or transferred in): the room
decodes its phone's audio through a listener on the media clock and feeds its player the
mix of everyone else. The calls layer answers, collects the PIN and hangs up; this keeps
the rooms.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from media.aio import MediaEndpoint
from media.clock import Listener, MediaClock
from media.conference import Room
from pbx.config import ConferenceConfig, Config
from pbx.events import ConferenceJoined, ConferenceLeft, EventBus

log = logging.getLogger("pbx.conferences")


@dataclass(eq=False)
class Attendee:
    call_id: str
    room: str
    party: str
    caller: str
    callee: str
    listener: Listener
    joined_at: float
    muted: bool = False  # by an operator
    held: bool = False  # its phone put the room on hold: nothing of it is mixed
    gain_db: float = 0.0  # by an operator: how loud the others hear it


MIN_GAIN_DB, MAX_GAIN_DB = -30.0, 18.0  # 18 dB is the mixer's most, 8 times


class ConferenceManager:
    def __init__(
        self,
        config: Config,
        clock: MediaClock,
        events: EventBus,
        tones: Mapping[str, str],
        now: Callable[[], float] = time.time,
    ) -> None:
        """`tones` is the site's tone plan (`media.tones.tone_plan`): its join and leave."""
        self.clock, self.events, self.now = clock, events, now
        self.configs = {c.number: c for c in config.conferences}
        self._join_tone, self._leave_tone = tones["join"], tones["leave"]
        self.rooms: dict[str, Room] = {}
        self.attendees: dict[str, Attendee] = {}  # by call id

    def config_of(self, number: str) -> ConferenceConfig | None:
        return self.configs.get(number)

    def full(self, number: str) -> bool:
        room = self.rooms.get(number)
        return room is not None and room.full

    def join(
        self, call_id: str, number: str, party: str, caller: str, callee: str,
        endpoint: MediaEndpoint, codec: str,
    ) -> Attendee:  # fmt: skip
        """The call's phone (on `endpoint`, in `codec`: G.711) joins room `number`.
        ValueError if the room is full."""
        conference = self.configs[number]
        room = self.rooms.get(number)
        if room is None:
            room = self.rooms[number] = Room(
                self.clock, conference.max_members, self._join_tone, self._leave_tone
            )
        if room.full:
            raise ValueError(f"conference {number} is full ({conference.max_members})")
        listener = self.clock.listen(endpoint, codec)
        room.join(call_id, listener, self.clock.player(endpoint, codec))
        attendee = self.attendees[call_id] = Attendee(
            call_id, number, party, caller, callee, listener, self.now()
        )
        log.info("conference %s: %s joined (%d there)", number, party, len(room.members))
        self.events.publish(
            ConferenceJoined(attendee.joined_at, call_id, caller, callee, room=number,
                             party=party, members=len(room.members))
        )  # fmt: skip
        return attendee

    def leave(self, call_id: str) -> None:
        attendee = self.attendees.pop(call_id, None)
        if attendee is None:
            return
        room = self.rooms.get(attendee.room)
        if room is not None:
            room.leave(call_id)
            if not room.members:
                del self.rooms[attendee.room]
        self.clock.unlisten(attendee.listener)
        now = self.now()
        members = len(room.members) if room is not None else 0
        log.info("conference %s: %s left (%d there)", attendee.room, attendee.party, members)
        self.events.publish(
            ConferenceLeft(now, call_id, attendee.caller, attendee.callee, room=attendee.room,
                           party=attendee.party, members=members,
                           seconds=round(now - attendee.joined_at, 1))
        )  # fmt: skip

    def set_codec(self, call_id: str, codec: str) -> None:
        """The member's phone renegotiated (PCMU <-> PCMA)."""
        attendee = self.attendees.get(call_id)
        room = self.rooms.get(attendee.room) if attendee is not None else None
        if attendee is None or room is None:
            return
        attendee.listener.set_codec(codec)
        room.members[call_id].player.set_codec(codec)

    def hold(self, call_id: str, held: bool) -> None:
        attendee = self.attendees.get(call_id)
        if attendee is not None:
            attendee.held = held
            self._apply_mute(attendee)

    def mute(self, number: str, who: str, muted: bool) -> list[str]:
        """Mute (or unmute) the members of room `number` that `who` names: a call id, a
        party, or "all". The call ids changed."""
        changed = []
        for attendee in self.attendees.values():
            if attendee.room == number and who in ("all", attendee.call_id, attendee.party):
                attendee.muted = muted
                self._apply_mute(attendee)
                changed.append(attendee.call_id)
        return changed

    def set_gain(self, number: str, who: str, db: float) -> list[str]:
        """How loud the members of room `number` that `who` names (a call id, a party, or
        "all") are in the others' mix: `db` from MIN_GAIN_DB to MAX_GAIN_DB (0: as they
        come). The call ids changed; ValueError for a gain out of range."""
        if not MIN_GAIN_DB <= db <= MAX_GAIN_DB:
            raise ValueError(f"gain {db:g} dB: from {MIN_GAIN_DB:g} to {MAX_GAIN_DB:g} dB")
        room = self.rooms.get(number)
        changed = []
        for attendee in self.attendees.values():
            if attendee.room == number and who in ("all", attendee.call_id, attendee.party):
                attendee.gain_db = db
                if room is not None:
                    room.set_gain(attendee.call_id, 10 ** (db / 20))
                changed.append(attendee.call_id)
        return changed

    def _apply_mute(self, attendee: Attendee) -> None:
        room = self.rooms.get(attendee.room)
        if room is not None:
            room.mute(attendee.call_id, attendee.muted or attendee.held)

    def live(self) -> list[dict[str, object]]:
        """Every configured room and who is in it, for `pbx conferences`."""
        now = self.now()
        out: list[dict[str, object]] = []
        for number, conference in self.configs.items():
            members = [
                {"call_id": a.call_id, "party": a.party, "muted": a.muted, "held": a.held,
                 "gain_db": a.gain_db, "seconds": round(now - a.joined_at, 1)}
                for a in self.attendees.values() if a.room == number
            ]  # fmt: skip
            out.append({
                "number": number, "name": conference.name, "pin": bool(conference.pin),
                "max_members": conference.max_members, "members": members,
            })  # fmt: skip
        return out
