"""Opening hours: weekly ranges, holidays, time zones and DST, next_change, the [[hours]] and
[[time_route]] configuration, and `pbx hours`."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from pbx.cli import main
from pbx.config import TimeRouteConfig, load
from pbx.errors import ConfigError
from pbx.hours import (
    UTC_ZONE,
    Holiday,
    Range,
    Schedule,
    describe_change,
    parse_holiday,
    parse_ranges,
)

NEW_YORK = ZoneInfo("America/New_York")
WEEKDAY = parse_ranges("08:00-12:00, 13:00-17:00")
CLINIC = Schedule(
    "clinic",
    NEW_YORK,
    monday=WEEKDAY,
    tuesday=WEEKDAY,
    wednesday=WEEKDAY,
    thursday=WEEKDAY,
    friday=WEEKDAY,
    saturday=parse_ranges("09:00-12:00"),
    holidays=(parse_holiday("2026-12-24 08:00-12:00"), parse_holiday("2026-12-25")),
)
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "clinic" / "pbx.toml"


def ny(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    """A New York wall-clock time (fold 0)."""
    return datetime(year, month, day, hour, minute, second, tzinfo=NEW_YORK)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def change(schedule: Schedule, at: datetime) -> datetime | None:
    """next_change in UTC: an aware datetime inside a repeated hour never equals one in
    another zone (PEP 495), so fall-back instants are compared in UTC."""
    found = schedule.next_change(at)
    return None if found is None else found.astimezone(UTC)


def test_parse_ranges() -> None:
    assert (Range(480, 720), Range(780, 1020)) == WEEKDAY
    assert parse_ranges("13:00-17:00,8:00-12:00") == WEEKDAY  # sorted
    assert parse_ranges("") == parse_ranges("  ") == ()
    assert parse_ranges("22:00-24:00") == (Range(1320, 1440),)
    assert str(Range(1320, 1440)) == "22:00-24:00"
    assert str(parse_holiday("2026-12-24 08:00-12:00")) == "2026-12-24 08:00-12:00"
    assert parse_holiday("2026-12-25") == Holiday(date(2026, 12, 25))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("22:00-06:00", "may not cross midnight"),
        ("08:00-08:00", "end must be after the start"),
        ("08:00-24:01", "not a time of day"),
        ("24:00-24:00", "starts by 23:59"),
        ("08:60-09:00", "not a time of day"),
        ("8-12", "expected"),
        ("08:00-12:00,", "expected"),
        ("08:00-12:00, 11:00-13:00", "overlap"),
    ],
)
def test_bad_ranges(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ranges(text)


@pytest.mark.parametrize("text", ["2026-13-01", "20261225", "2026-12-25 8-12", "Christmas"])
def test_bad_holidays(text: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_holiday(text)


def test_weekly_ranges_and_boundaries() -> None:
    # Monday 2026-12-07: [start, end) for both ranges.
    assert not CLINIC.is_open(ny(2026, 12, 7, 7, 59, 59))
    assert CLINIC.is_open(ny(2026, 12, 7, 8, 0))
    assert CLINIC.is_open(ny(2026, 12, 7, 11, 59, 59))
    assert not CLINIC.is_open(ny(2026, 12, 7, 12, 0))  # lunch
    assert CLINIC.is_open(ny(2026, 12, 7, 13, 0))
    assert not CLINIC.is_open(ny(2026, 12, 7, 17, 0))
    assert CLINIC.is_open(ny(2026, 12, 12, 9, 30))  # Saturday
    assert not CLINIC.is_open(ny(2026, 12, 12, 13, 0))
    assert not CLINIC.is_open(ny(2026, 12, 13, 10, 0))  # Sunday: not given, closed


def test_holidays_and_short_days() -> None:
    assert CLINIC.is_open(ny(2026, 12, 24, 11, 0))  # Thursday, short day
    assert not CLINIC.is_open(ny(2026, 12, 24, 13, 0))
    assert not CLINIC.is_open(ny(2026, 12, 25, 10, 0))  # Friday, closed all day
    assert CLINIC.is_open(ny(2026, 12, 26, 10, 0))  # Saturday as usual
    assert CLINIC.ranges_on(date(2026, 12, 24)) == (Range(480, 720),)
    assert CLINIC.ranges_on(date(2026, 12, 25)) == ()


def test_instants_are_read_in_the_schedules_zone() -> None:
    # 13:30 UTC on a December Monday is 08:30 EST: open; 12:30 UTC is 07:30 EST: closed.
    assert CLINIC.is_open(utc(2026, 12, 7, 13, 30))
    assert not CLINIC.is_open(utc(2026, 12, 7, 12, 30))
    # Tuesday 01:30 in Tokyo is Monday 11:30 in New York (open), 02:30 is its lunch.
    tokyo = ZoneInfo("Asia/Tokyo")
    assert CLINIC.is_open(datetime(2026, 12, 8, 1, 30, tzinfo=tokyo))
    assert not CLINIC.is_open(datetime(2026, 12, 8, 2, 30, tzinfo=tokyo))
    with pytest.raises(ValueError, match="no time zone"):
        CLINIC.is_open(datetime(2026, 12, 7, 9, 0))
    with pytest.raises(ValueError, match="no time zone"):
        CLINIC.next_change(datetime(2026, 12, 7, 9, 0))


def test_us_spring_forward() -> None:
    # 2026-03-08: New York skips 02:00-03:00 (EST -5 to EDT -4) at 07:00 UTC.
    early = Schedule("early", NEW_YORK, sunday=parse_ranges("01:00-02:30, 04:00-05:00"))
    assert early.is_open(utc(2026, 3, 8, 6, 59))  # 01:59 EST
    assert not early.is_open(utc(2026, 3, 8, 7, 0))  # 03:00 EDT: 02:30 never came
    assert early.next_change(utc(2026, 3, 8, 6, 0)) == utc(2026, 3, 8, 7, 0)
    # 04:00 EDT is 08:00 UTC, one hour after the jump, not two.
    assert early.next_change(utc(2026, 3, 8, 7, 0)) == utc(2026, 3, 8, 8, 0)
    assert early.next_change(utc(2026, 3, 8, 8, 0)) == utc(2026, 3, 8, 9, 0)
    # The Monday after opens at 08:00 EDT = 12:00 UTC; the Friday before at 13:00 UTC.
    assert not CLINIC.is_open(utc(2026, 3, 6, 12, 30))
    assert CLINIC.is_open(utc(2026, 3, 9, 12, 30))
    monday = CLINIC.next_change(utc(2026, 3, 7, 20, 0))  # Saturday afternoon
    assert monday == utc(2026, 3, 9, 12, 0)
    assert monday is not None and monday.utcoffset() == timedelta(hours=-4)
    assert str(monday) == "2026-03-09 08:00:00-04:00"  # in the schedule's zone


def test_us_fall_back() -> None:
    # 2026-11-01: 01:00-02:00 happens twice (EDT, then EST from 06:00 UTC).
    early = Schedule("early", NEW_YORK, sunday=parse_ranges("01:00-01:30"))
    assert change(early, utc(2026, 11, 1, 4, 0)) == utc(2026, 11, 1, 5, 0)  # 01:00 EDT
    assert change(early, utc(2026, 11, 1, 5, 0)) == utc(2026, 11, 1, 5, 30)  # 01:30 EDT
    # Wall clock back to 01:00 (EST) is inside the range again: it reopens, and closes.
    assert change(early, utc(2026, 11, 1, 5, 30)) == utc(2026, 11, 1, 6, 0)
    assert early.is_open(utc(2026, 11, 1, 6, 0))
    assert change(early, utc(2026, 11, 1, 6, 0)) == utc(2026, 11, 1, 6, 30)  # 01:30 EST
    assert change(early, utc(2026, 11, 1, 6, 30)) == utc(2026, 11, 8, 6, 0)  # a week on, EST
    # A range spanning the repeated hour stays open through both passes: 01:00 EDT-03:00 EST.
    long = Schedule("long", NEW_YORK, sunday=parse_ranges("01:00-03:00"))
    assert change(long, utc(2026, 11, 1, 5, 0)) == utc(2026, 11, 1, 8, 0)


def test_next_change() -> None:
    assert CLINIC.next_change(ny(2026, 12, 7, 7, 0)) == ny(2026, 12, 7, 8, 0)
    assert CLINIC.next_change(ny(2026, 12, 7, 8, 0)) == ny(2026, 12, 7, 12, 0)  # strictly after
    assert CLINIC.next_change(ny(2026, 12, 7, 12, 0)) == ny(2026, 12, 7, 13, 0)
    assert CLINIC.next_change(ny(2026, 12, 12, 12, 0)) == ny(2026, 12, 14, 8, 0)  # weekend
    # Thursday's short day ends at noon; Friday is a holiday; Saturday opens at 09:00.
    assert CLINIC.next_change(ny(2026, 12, 24, 11, 0)) == ny(2026, 12, 24, 12, 0)
    assert CLINIC.next_change(ny(2026, 12, 24, 12, 0)) == ny(2026, 12, 26, 9, 0)
    assert describe_change(CLINIC, ny(2026, 12, 24, 12, 0)) == "opens Sat 09:00"
    assert describe_change(CLINIC, ny(2026, 12, 24, 9, 0)) == "closes 12:00"


def test_night_shift_is_one_stretch_across_midnight() -> None:
    night = Schedule(
        "night", monday=parse_ranges("22:00-24:00"), tuesday=parse_ranges("00:00-06:00")
    )
    assert night.is_open(utc(2026, 12, 7, 23, 59)) and night.is_open(utc(2026, 12, 8, 0, 0))
    assert night.next_change(utc(2026, 12, 7, 22, 0)) == utc(2026, 12, 8, 6, 0)
    assert night.next_change(utc(2026, 12, 8, 6, 0)) == utc(2026, 12, 14, 22, 0)
    ends_at_midnight = Schedule("late", monday=parse_ranges("22:00-24:00"))
    assert ends_at_midnight.next_change(utc(2026, 12, 7, 23, 0)) == utc(2026, 12, 8, 0, 0)


def test_never_changing_schedules() -> None:
    assert Schedule("closed").next_change(utc(2026, 12, 7)) is None
    assert describe_change(Schedule("closed"), utc(2026, 12, 7)) == ""
    always = parse_ranges("00:00-24:00")
    week = (always, always, always, always, always, always, always)
    open_all = Schedule("24x7", UTC_ZONE, *week)
    assert open_all.is_open(utc(2026, 12, 7)) and open_all.next_change(utc(2026, 12, 7)) is None
    # A holiday far ahead is still found.
    once = Schedule("once", holidays=(parse_holiday("2028-02-29 10:00-11:00"),))
    assert once.next_change(utc(2026, 12, 7)) == utc(2028, 2, 29, 10, 0)


# ---- configuration

HOURS = """data_dir = "d"

[[trunk]]
name = "provider"
host = "127.0.0.1"

[[ring_group]]
number = "600"
members = ["1001"]

[[hours]]
name = "clinic"
timezone = "America/New_York"
monday = "08:00-12:00, 13:00-17:00"
saturday = "09:00-12:00"
sunday = ""
holidays = ["2026-12-25", "2026-12-24 08:00-12:00"]

[[hours]]
name = "night"

[[time_route]]
number = "100"
hours = "clinic"
open = "600"
closed = "trunk:provider:+15557654321"

[[time_route]]
number = "101"
hours = "night"
open = "100"
closed = "voicemail:refills:busy"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pbx.toml"
    path.write_text(text)
    return path


def test_hours_and_time_routes_load(tmp_path: Path) -> None:
    config = load(write(tmp_path, HOURS))
    clinic, night = config.hours
    assert clinic == Schedule(
        "clinic",
        NEW_YORK,
        monday=WEEKDAY,
        saturday=(Range(540, 720),),
        holidays=(Holiday(date(2026, 12, 24), (Range(480, 720),)), Holiday(date(2026, 12, 25))),
    )
    assert night == Schedule("night", ZoneInfo("UTC"))  # the default zone; closed throughout
    assert config.time_routes == (
        TimeRouteConfig("100", "clinic", "600", "trunk:provider:+15557654321"),
        TimeRouteConfig("101", "night", "100", "voicemail:refills:busy"),
    )


def test_example_clinic_hours() -> None:
    config = load(EXAMPLE)
    [clinic] = config.hours
    assert (clinic.name, clinic.timezone) == ("clinic", NEW_YORK)
    assert clinic.friday == WEEKDAY and clinic.sunday == ()
    assert [h.day for h in clinic.holidays] == [date(2026, 12, 25), date(2027, 1, 1)]
    assert not clinic.is_open(ny(2027, 1, 1, 10, 0))
    assert clinic.is_open(ny(2027, 1, 2, 10, 0))  # Saturday


def replace(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


# (replace this, with that, the key named, text on the line named: None for the replacement)
BAD_HOURS = [
    ('"America/New_York"', '"America/Springfield"', "hours[0].timezone", None),
    ('"America/New_York"', '"../etc/passwd"', "hours[0].timezone", None),
    ('"08:00-12:00, 13:00-17:00"', '"12:00-08:00"', "hours[0].monday", None),
    ('"08:00-12:00, 13:00-17:00"', '"22:00-02:00"', "hours[0].monday", None),
    ('"08:00-12:00, 13:00-17:00"', '"8am-noon"', "hours[0].monday", None),
    ('saturday = "09:00-12:00"', "saturday = 9", "hours[0].saturday", None),
    ('saturday = "09:00-12:00"', 'saturdy = "09:00-12:00"', "hours[0].saturdy", None),
    ('["2026-12-25",', '["2026-12-32",', "hours[0].holidays", "holidays"),
    ('["2026-12-25",', '["2026-12-24",', "hours[0].holidays", "holidays"),
    (
        'holidays = ["2026-12-25", "2026-12-24 08:00-12:00"]',
        'holidays = "2026-12-25"',
        "hours[0].holidays",
        None,
    ),
    ('08:00-12:00"]', '08:00-"]', "hours[0].holidays", "holidays"),
    ('name = "night"', 'name = "clinic"', "hours[1].name", None),
    ('name = "night"', 'name = "a night"', "hours[1].name", None),
    ('name = "clinic"\n', "", "hours[0].name", "[[hours]]"),
    ('hours = "clinic"', 'hours = "weekend"', "time_route[0].hours", None),
    ('hours = "clinic"\n', "", "time_route[0].hours", "[[time_route]]"),
    ('closed = "trunk:provider:+15557654321"\n', "", "time_route[0].closed", "[[time_route]]"),
    ('"trunk:provider:+15557654321"', '"trunk:other:+1555"', "time_route[0].closed", None),
    ('"trunk:provider:+15557654321"', '"trunk:provider"', "time_route[0].closed", None),
    ('"trunk:provider:+15557654321"', '"pager:1001"', "time_route[0].closed", None),
    ('"trunk:provider:+15557654321"', '"ivr:"', "time_route[0].closed", None),
    ('"trunk:provider:+15557654321"', '"queue:q:high"', "time_route[0].closed", None),
    ('"voicemail:refills:busy"', '"voicemail:refills:loud"', "time_route[1].closed", None),
    ('open = "600"', 'open = "6 00"', "time_route[0].open", None),
    ('open = "600"', 'open = "101"', "time_route[0].open", None),  # 100 -> 101 -> 100
    ('open = "100"', 'open = "101"', "time_route[1].open", None),  # itself
    # A time_route number clashes like a ring group's does.
    ('number = "101"', 'number = "600"', "time_route[1].number", None),
    ('number = "101"', 'number = "701"', "time_route[1].number", None),  # a park slot
    ('number = "101"', 'number = "*8"', "time_route[1].number", None),  # pickup
    ('number = "101"', 'number = "**101"', "time_route[1].number", None),  # directed pickup
    ('number = "101"', 'number = "911"', "time_route[1].number", None),
    ('number = "101"', 'number = "100"', "time_route[1].number", None),
]


@pytest.mark.parametrize(("old", "new", "key", "on_line"), BAD_HOURS)
def test_config_errors_name_key_and_line(
    tmp_path: Path, old: str, new: str, key: str, on_line: str | None
) -> None:
    text = replace(HOURS, old, new)
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    assert info.value.key == key, str(info.value)
    if on_line is None:  # the line the replacement landed on
        expected = HOURS[: HOURS.index(old)].count("\n") + 1
    else:
        expected = next(n for n, line in enumerate(text.splitlines(), 1) if on_line in line)
    assert info.value.line == expected, str(info.value)
    assert str(info.value).startswith(f"{key} (line {expected}): ")


def test_config_error_messages(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an IANA time zone"):
        load(write(tmp_path, replace(HOURS, '"America/New_York"', '"Mars/Olympus"')))
    with pytest.raises(ConfigError, match=r"no \[\[hours\]\] is named 'weekend' \(clinic, night"):
        load(write(tmp_path, replace(HOURS, 'hours = "clinic"', 'hours = "weekend"')))
    with pytest.raises(ConfigError, match="100 -> 101 leads back to itself"):
        load(write(tmp_path, replace(HOURS, 'open = "600"', 'open = "101"')))
    with pytest.raises(ConfigError, match=r"number 600 is already used by ring_group\[0\]"):
        load(write(tmp_path, replace(HOURS, 'number = "101"', 'number = "600"')))


# ---- `pbx hours`


def run_hours(tmp_path: Path, *args: str) -> list[dict[str, object]]:
    result = CliRunner().invoke(main, ["-c", str(write(tmp_path, HOURS)), "hours", *args])
    assert result.exit_code == 0, result.output
    rows: list[dict[str, object]] = json.loads(result.output)
    return rows


def test_cli_hours_json_at(tmp_path: Path) -> None:
    # Monday 2026-12-07 15:30 UTC is 10:30 in New York.
    assert run_hours(tmp_path, "--json", "--at", "2026-12-07T15:30:00+00:00") == [
        {
            "name": "clinic",
            "timezone": "America/New_York",
            "open": True,
            "next_change": "2026-12-07T12:00:00-05:00",
        },
        {"name": "night", "timezone": "UTC", "open": False, "next_change": None},
    ]
    # Without an offset, --at is read in each table's own zone: 10:30 New York time.
    [clinic, _] = run_hours(tmp_path, "--json", "--at", "2026-12-24T12:30")
    assert (clinic["open"], clinic["next_change"]) == (False, "2026-12-26T09:00:00-05:00")


def test_cli_hours_table_and_bad_at(tmp_path: Path) -> None:
    config = str(write(tmp_path, HOURS))
    result = CliRunner().invoke(main, ["-c", config, "hours", "--at", "2026-12-25T10:00-05:00"])
    assert result.exit_code == 0, result.output
    header, clinic, night = result.output.splitlines()
    assert header.split() == ["NAME", "TIMEZONE", "STATE", "NEXT_CHANGE"]
    assert clinic.split() == [
        "clinic", "America/New_York", "closed", "opens", "Sat", "2026-12-26", "09:00", "EST"
    ]  # fmt: skip
    assert night.split() == ["night", "UTC", "closed", "-"]
    bad = CliRunner().invoke(main, ["-c", config, "hours", "--at", "Christmas"])
    assert bad.exit_code == 2 and "--at" in bad.output
