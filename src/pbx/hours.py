"""Opening hours (time conditions): is the clinic open at an instant, and when does that change.

Pure: no clock. Times are wall-clock times in the schedule's own zone, so "08:00-12:00" is
08:00 local whether or not daylight saving time is in force. A range is [start, end); it may
end at "24:00" but may not cross midnight: a night shift is "22:00-24:00" on one day and
"00:00-06:00" on the next, which together are one stretch without a change at midnight.

On a spring-forward day the skipped wall-clock hour never happens: a range starting inside
it opens at the transition. On a fall-back day the repeated hour happens twice, and so does
any boundary inside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
"""The weekday keys, Monday first (as date.weekday() counts)."""

_RANGE = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")
UTC_ZONE = ZoneInfo("UTC")
"""The default zone of a schedule."""


@dataclass(frozen=True, slots=True, order=True)
class Range:
    """Open from `start` up to, not including, `end`: minutes after local midnight."""

    start: int
    end: int
    """At most 1440 ("24:00")."""

    def __str__(self) -> str:
        return f"{_clock(self.start)}-{_clock(self.end)}"


@dataclass(frozen=True, slots=True)
class Holiday:
    """A date whose opening hours replace the weekday's: none (closed all day), or a
    short day's ranges."""

    day: date
    ranges: tuple[Range, ...] = ()

    def __str__(self) -> str:
        return " ".join([self.day.isoformat(), ", ".join(str(r) for r in self.ranges)]).strip()


@dataclass(frozen=True, slots=True)
class Schedule:
    """One [[hours]] table: weekly ranges per weekday, and holidays that override them."""

    name: str
    timezone: ZoneInfo = UTC_ZONE
    """Where the wall-clock times are read."""
    monday: tuple[Range, ...] = ()
    """Sorted, not overlapping; () is closed all day. Likewise the other days."""
    tuesday: tuple[Range, ...] = ()
    wednesday: tuple[Range, ...] = ()
    thursday: tuple[Range, ...] = ()
    friday: tuple[Range, ...] = ()
    saturday: tuple[Range, ...] = ()
    sunday: tuple[Range, ...] = ()
    holidays: tuple[Holiday, ...] = ()
    """At most one per date."""

    def ranges_on(self, day: date) -> tuple[Range, ...]:
        """The opening ranges of a local date: its holiday's, else its weekday's."""
        for holiday in self.holidays:
            if holiday.day == day:
                return holiday.ranges
        ranges: tuple[Range, ...] = getattr(self, DAYS[day.weekday()])
        return ranges

    def is_open(self, at: datetime) -> bool:
        """Whether `at` (timezone-aware) falls in an opening range."""
        local = _local(at, self.timezone)
        second = local.hour * 3600 + local.minute * 60 + local.second
        return any(r.start * 60 <= second < r.end * 60 for r in self.ranges_on(local.date()))

    def next_change(self, at: datetime) -> datetime | None:
        """The first instant after `at` when is_open() changes, in the schedule's zone; None
        if it never does (never open, or always open, through every holiday given)."""
        local = _local(at, self.timezone)
        state = self.is_open(at)
        last = max((h.day for h in self.holidays), default=local.date())
        # A week after the last holiday the weekly pattern repeats: no change by then, none.
        days = max(0, (last - local.date()).days) + 8
        for offset in range(days):
            day = local.date() + timedelta(days=offset)
            for instant in self._changes_on(day):
                if instant > at and self.is_open(instant) != state:
                    return instant.astimezone(self.timezone)
        return None

    def _changes_on(self, day: date) -> list[datetime]:
        """Every instant of a local date when is_open() could change, sorted (UTC)."""
        zone = self.timezone
        candidates: set[datetime] = set()
        for r in self.ranges_on(day):
            for minute in (r.start, r.end):
                wall = datetime.combine(day + timedelta(days=minute // 1440), _time(minute % 1440))
                for fold in (0, 1):  # a boundary in the repeated hour is crossed twice
                    aware = wall.replace(tzinfo=zone, fold=fold)
                    instant = aware.astimezone(UTC)
                    if instant.astimezone(zone).replace(tzinfo=None) == wall:
                        candidates.add(instant)  # else the wall time is skipped (a DST gap)
        # The clock jumping forward over a boundary, or back below one, changes it too.
        start = datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)
        end = datetime.combine(day + timedelta(days=1), time(), tzinfo=zone).astimezone(UTC)
        if start.astimezone(zone).utcoffset() != end.astimezone(zone).utcoffset():
            candidates.add(_transition(zone, start, end))
        return sorted(candidates)


def parse_ranges(text: str) -> tuple[Range, ...]:
    """ "08:00-12:00, 13:00-17:00" (or "" for closed) as sorted Ranges; ValueError says what
    is wrong."""
    ranges: list[Range] = []
    for part in (p.strip() for p in text.split(",")):
        if not part and not text.strip():
            continue
        match = _RANGE.fullmatch(part)
        if not match:
            raise ValueError(f'{part!r}: expected "HH:MM-HH:MM", e.g. "08:00-12:00, 13:00-17:00"')
        start = _minute(match.group(1), match.group(2), part)
        end = _minute(match.group(3), match.group(4), part)
        if start >= 1440:
            raise ValueError(f"{part!r}: a range starts by 23:59")
        if end <= start:
            raise ValueError(
                f"{part!r}: the end must be after the start; ranges may not cross midnight "
                '(write "22:00-24:00" on one day and "00:00-06:00" on the next)'
            )
        ranges.append(Range(start, end))
    ranges.sort()
    for before, after in pairwise(ranges):
        if after.start < before.end:
            raise ValueError(f"{before} and {after} overlap")
    return tuple(ranges)


def parse_holiday(text: str) -> Holiday:
    """ "2026-12-25" (closed all day) or "2026-12-24 08:00-12:00" (a short day)."""
    day_text, _, ranges_text = text.strip().partition(" ")
    try:
        day = date.fromisoformat(day_text)
    except ValueError:
        raise ValueError(f'{text!r}: expected "YYYY-MM-DD" or "YYYY-MM-DD HH:MM-HH:MM"') from None
    if len(day_text) != 10:
        raise ValueError(f"{text!r}: expected the date as YYYY-MM-DD")
    if ranges_text.strip():
        return Holiday(day, parse_ranges(ranges_text))
    return Holiday(day)


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`; ValueError if there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f'{name!r}: not an IANA time zone (e.g. "America/New_York")') from None


def describe_change(schedule: Schedule, at: datetime) -> str:
    """ "opens Mon 08:00" / "closes 12:00" style text, for logs and `pbx hours`: when the
    state at `at` next changes, in the schedule's zone; "" if it never does."""
    change = schedule.next_change(at)
    if change is None:
        return ""
    verb = "closes" if schedule.is_open(at) else "opens"
    now = _local(at, schedule.timezone)
    if change.date() == now.date():
        when = change.strftime("%H:%M")
    elif change.date() - now.date() < timedelta(days=7):
        when = change.strftime("%a %H:%M")
    else:
        when = change.strftime("%a %Y-%m-%d %H:%M")
    return f"{verb} {when}"


def _local(at: datetime, tz: ZoneInfo) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{at!r} has no time zone: pass an aware datetime")
    return at.astimezone(tz)


def _transition(tz: ZoneInfo, start: datetime, end: datetime) -> datetime:
    """The first instant in (start, end] whose UTC offset differs from start's (to the
    second; zoneinfo has no public list of transitions)."""
    offset = start.astimezone(tz).utcoffset()
    low, high = 0, int((end - start).total_seconds())
    while high - low > 1:
        middle = (low + high) // 2
        if (start + timedelta(seconds=middle)).astimezone(tz).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return start + timedelta(seconds=high)


def _minute(hours: str, minutes: str, part: str) -> int:
    h, m = int(hours), int(minutes)
    if m > 59 or h > 24 or (h == 24 and m):
        raise ValueError(f"{part!r}: {hours}:{minutes} is not a time of day (00:00-24:00)")
    return h * 60 + m


def _time(minute: int) -> time:
    return time(minute // 60, minute % 60)


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"
