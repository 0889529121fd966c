"""Call park slots: which parked call waits in which slot. Pure: no clock, no sockets.

A call is parked by a blind transfer to the park number and waits in the lowest free slot
(`[dialplan] park_slots`); dialling the slot retrieves it. The call layer owns the timers
(`park_timeout`) and the media; this only keeps slots and calls straight, so a slot never
holds two calls and a call never sits in two slots.
"""

from __future__ import annotations

from collections.abc import Sequence


class ParkingLot:
    def __init__(self, slots: Sequence[str]) -> None:
        self._slots = tuple(slots)
        self._parked: dict[str, str] = {}  # slot -> call id

    @property
    def slots(self) -> tuple[str, ...]:
        return self._slots

    def park(self, call_id: str) -> str | None:
        """The lowest free slot, now holding `call_id`; None when all are taken. A call
        parked already keeps its slot."""
        current = self.slot_of(call_id)
        if current is not None:
            return current
        for slot in self._slots:
            if slot not in self._parked:
                self._parked[slot] = call_id
                return slot
        return None

    def call_in(self, slot: str) -> str | None:
        return self._parked.get(slot)

    def slot_of(self, call_id: str) -> str | None:
        return next((s for s, c in self._parked.items() if c == call_id), None)

    def release(self, call_id: str) -> str | None:
        """Free the slot `call_id` waited in (retrieved, timed out or hung up); that slot."""
        slot = self.slot_of(call_id)
        if slot is not None:
            del self._parked[slot]
        return slot

    def parked(self) -> dict[str, str]:
        """slot -> call id, lowest slot first."""
        return {s: self._parked[s] for s in self._slots if s in self._parked}
