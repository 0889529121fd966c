"""The dialplan: every rule, the order between them, and the Python hook."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pbx.config import Config, OutboundRouteConfig, TimeRouteConfig, from_mapping, load
from pbx.dialplan import (
    TIME_ROUTE_DEPTH,
    CallRequest,
    Dialplan,
    Hook,
    Route,
    RouteKind,
    load_hook,
)
from pbx.errors import ConfigError

EXTENSIONS = {"1001", "1002", "1003", "2000", "9123"}

PLAN = """data_dir = "d"
[dialplan]
emergency_numbers = ["911", "112"]
pickup = "*8"
directed_pickup = "**"
park = "700"
park_slots = [701, 703]

[[ring_group]]
number = "600"
name = "reception"
members = ["1001", "1002"]

[[ring_group]]
number = "601"
members = ["1003", "1001", "1002"]
strategy = "in_order"
member_timeout = 12

[[trunk]]
name = "provider"
host = "127.0.0.1"
caller_id = "+15551230000"

[[trunk]]
name = "cheap"
host = "127.0.0.2"

[[outbound_route]]
name = "outside"
prefix = "9"
strip = 1
trunk = "provider"

[[outbound_route]]
name = "long-distance"
prefix = "91"
strip = 1
prepend = "+"
trunk = "cheap"
caller_id = "+15559990000"
min_length = 12
max_length = 12

[[did]]
number = "+15551230000"
target = "600"

[[did]]
number = "+15551230001"
target = "1003"
trunk = "cheap"

[[did]]
number = "+15551230001"
target = "1002"

[[did]]
number = "15551230002"
target = "701"

[[did]]
number = "+15551230003"
target = "4444"
"""


def configure(tmp_path: Path, text: str = PLAN) -> Config:
    path = tmp_path / "pbx.toml"
    path.write_text(text)
    return load(path)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return configure(tmp_path)


def plan(config: Config, hook: Hook | None = None) -> Dialplan:
    return Dialplan(config, EXTENSIONS.__contains__, hook)


def dial(dialplan: Dialplan, number: str, caller: str = "1001") -> Route:
    return dialplan.route(CallRequest(caller, number))


def from_trunk(dialplan: Dialplan, number: str, trunk: str = "provider") -> Route:
    return dialplan.route(CallRequest("+15557654321", number, trunk))


def test_extension(config: Config) -> None:
    route = dial(plan(config), "1002")
    assert (route.kind, route.number, route.members) == (RouteKind.EXTENSION, "1002", ("1002",))
    assert (route.trunk, route.emergency) == (None, False)
    assert "1002 is an extension" in route.reason


def test_ring_groups(config: Config) -> None:
    dialplan = plan(config)
    together = dial(dialplan, "600")
    assert (together.kind, together.number) == (RouteKind.RING_GROUP, "600")
    assert (together.members, together.in_order) == (("1001", "1002"), False)
    assert "reception" in together.reason
    one_by_one = dial(dialplan, "601")
    assert (one_by_one.members, one_by_one.in_order) == (("1003", "1001", "1002"), True)
    assert one_by_one.member_timeout == 12.0


def test_feature_codes(config: Config) -> None:
    dialplan = plan(config)
    assert dial(dialplan, "*8").kind is RouteKind.PICKUP
    directed = dial(dialplan, "**1003")
    assert (directed.kind, directed.number, directed.members) == (
        RouteKind.DIRECTED_PICKUP,
        "1003",
        ("1003",),
    )
    absent = dial(dialplan, "**5555")
    assert absent.kind is RouteKind.UNKNOWN and "not an extension" in absent.reason
    assert dial(dialplan, "**").kind is RouteKind.UNKNOWN
    assert (dial(dialplan, "700").kind, dial(dialplan, "700").number) == (RouteKind.PARK, "700")
    for slot in ("701", "702", "703"):
        assert (dial(dialplan, slot).kind, dial(dialplan, slot).number) == (
            RouteKind.PARK_SLOT,
            slot,
        )
    assert dial(dialplan, "704").kind is RouteKind.UNKNOWN


def test_feature_codes_come_before_extensions(tmp_path: Path) -> None:
    # An extension that happens to be a park slot is shadowed by the slot.
    config = configure(tmp_path, PLAN.replace("[701, 703]", "[1001, 1001]"))
    assert dial(plan(config), "1001").kind is RouteKind.PARK_SLOT


def test_turned_off_feature_codes_are_not_matched(tmp_path: Path) -> None:
    text = PLAN.replace('pickup = "*8"\ndirected_pickup = "**"\npark = "700"', "")
    text = text.replace("park_slots = [701, 703]", 'pickup = ""\ndirected_pickup = ""\npark = ""')
    config = configure(tmp_path, text.replace('park = ""', 'park = ""\npark_slots = []'))
    dialplan = plan(config)
    for number in ("*8", "**1003", "700", "701", ""):
        assert dial(dialplan, number).kind is RouteKind.UNKNOWN, number


def test_outbound_longest_prefix_strip_prepend_and_caller_id(config: Config) -> None:
    dialplan = plan(config)
    local = dial(dialplan, "95551234")
    assert (local.kind, local.number, local.trunk) == (
        RouteKind.TRUNK,
        "5551234",
        config.trunk("provider"),
    )
    assert local.caller_id == "+15551230000"  # the trunk's: the route names none
    assert "outside" in local.reason
    far = dial(dialplan, "915551234567")
    assert (far.number, far.trunk, far.caller_id) == (
        "+15551234567",
        config.trunk("cheap"),
        "+15559990000",
    )
    assert "long-distance" in far.reason


def test_outbound_length_bounds_fall_back_to_a_shorter_prefix(config: Config) -> None:
    # "91555" starts with "91" but is too short for long-distance: "outside" takes it.
    short = dial(plan(config), "91555")
    assert (short.trunk, short.number) == (config.trunk("provider"), "1555")
    too_long = dial(plan(config), "9155512345678")
    assert too_long.trunk == config.trunk("provider")


def test_outbound_route_without_caller_id_anywhere(tmp_path: Path) -> None:
    bare = configure(tmp_path, PLAN.replace('caller_id = "+15551230000"\n', ""))
    assert dial(plan(bare), "95551234").caller_id is None


def test_prefix_that_leaves_nothing_to_send_does_not_match(config: Config) -> None:
    assert dial(plan(config), "9").kind is RouteKind.UNKNOWN


def test_extensions_and_groups_beat_outbound_routes(config: Config) -> None:
    # 9123 is an extension although "9" is the outside-line prefix.
    assert dial(plan(config), "9123").kind is RouteKind.EXTENSION


def test_catch_all_route(tmp_path: Path) -> None:
    text = PLAN.replace('prefix = "9"\nstrip = 1\n', 'prefix = ""\n')
    route = dial(plan(configure(tmp_path, text)), "5551234")
    assert (route.kind, route.number) == (RouteKind.TRUNK, "5551234")


def test_unknown(config: Config) -> None:
    route = dial(plan(config), "4444")
    assert (route.kind, route.number) == (RouteKind.UNKNOWN, "4444")
    assert "no extension" in route.reason


def test_emergency_goes_to_the_first_trunk(config: Config) -> None:
    for number in ("911", "112"):
        route = dial(plan(config), number)
        assert (route.kind, route.number, route.emergency) == (RouteKind.TRUNK, number, True)
        assert route.trunk == config.trunks[0]
        assert route.caller_id == "+15551230000"


def test_emergency_trunk_setting(tmp_path: Path) -> None:
    config = configure(
        tmp_path, PLAN.replace("[dialplan]", '[dialplan]\nemergency_trunk = "cheap"')
    )
    route = dial(plan(config), "911")
    assert (route.trunk, route.caller_id) == (config.trunk("cheap"), None)


def test_emergency_after_the_outside_line_prefix(config: Config) -> None:
    # "9911" would leave as "911" through route "outside": it is an emergency call, although
    # it is shorter than long-distance's min_length and whatever the hook says.
    route = plan(config, lambda request: "1002").route(CallRequest("1001", "9911"))
    assert (route.kind, route.number, route.emergency) == (RouteKind.TRUNK, "911", True)
    assert route.trunk == config.trunks[0]


def test_emergency_beats_the_hook_and_the_routes(tmp_path: Path) -> None:
    grab = '\n[[outbound_route]]\nname = "grab"\nprefix = "11"\ntrunk = "cheap"\n'
    config = configure(tmp_path, PLAN + grab)
    assert dial(plan(config), "1155").trunk == config.trunk("cheap")
    hooked = plan(config, lambda request: Route(RouteKind.EXTENSION, "1001", ("1001",)))
    route = dial(hooked, "112")
    assert (route.kind, route.trunk, route.emergency) == (RouteKind.TRUNK, config.trunks[0], True)
    assert "emergency" in route.reason


def test_emergency_without_a_trunk_loads_and_is_unknown(tmp_path: Path) -> None:
    config = configure(tmp_path, 'data_dir = "d"\n')
    dialplan = plan(config)
    route = dial(dialplan, "911")
    assert (route.kind, route.emergency) == (RouteKind.UNKNOWN, True)
    assert "no trunk" in route.reason
    assert any("emergency" in warning for warning in dialplan.warnings)
    assert plan(configure(tmp_path, PLAN)).warnings == ()


def test_did_to_ring_group_and_plus_tolerance(config: Config) -> None:
    dialplan = plan(config)
    for number in ("+15551230000", "15551230000"):
        route = from_trunk(dialplan, number)
        assert (route.kind, route.number) == (RouteKind.RING_GROUP, "600")
        assert "DID +15551230000" in route.reason
    slot = from_trunk(dialplan, "+15551230002")  # configured without "+"
    assert (slot.kind, slot.number) == (RouteKind.PARK_SLOT, "701")


def test_did_for_the_callers_trunk_wins(config: Config) -> None:
    dialplan = plan(config)
    assert from_trunk(dialplan, "+15551230001", "cheap").number == "1003"
    assert from_trunk(dialplan, "+15551230001", "provider").number == "1002"


def test_did_restricted_to_another_trunk_does_not_match(tmp_path: Path) -> None:
    text = PLAN.replace('target = "600"\n', 'target = "600"\ntrunk = "cheap"\n')
    route = from_trunk(plan(configure(tmp_path, text)), "+15551230000", "provider")
    assert route.kind is RouteKind.UNKNOWN


def test_did_to_a_missing_extension(config: Config) -> None:
    route = from_trunk(plan(config), "+15551230003")
    assert (route.kind, route.number) == (RouteKind.UNKNOWN, "4444")


def test_trunk_calls_never_reach_outbound_routes_or_emergency(config: Config) -> None:
    dialplan = plan(config)
    for number in ("95551234", "915551234567", "911", "1001", "600", "*8"):
        route = from_trunk(dialplan, number)
        assert route.kind is RouteKind.UNKNOWN, number
        assert "no [[did]]" in route.reason


def test_hook_string_targets(config: Config) -> None:
    targets = {"1": "1003", "2": "601", "3": "*8", "4": "702", "5": "trunk:cheap:+4420"}
    dialplan = plan(config, lambda request: targets.get(request.dialled))
    assert (dial(dialplan, "1").kind, dial(dialplan, "1").number) == (RouteKind.EXTENSION, "1003")
    assert dial(dialplan, "2").in_order
    assert dial(dialplan, "3").kind is RouteKind.PICKUP
    assert dial(dialplan, "4").kind is RouteKind.PARK_SLOT
    out = dial(dialplan, "5")
    assert (out.kind, out.number, out.trunk) == (RouteKind.TRUNK, "+4420", config.trunk("cheap"))
    assert "hook" in out.reason
    # None falls through to the rules.
    assert dial(dialplan, "1002").kind is RouteKind.EXTENSION


def test_hook_overrides_the_rules(config: Config) -> None:
    dialplan = plan(config, lambda request: "1003" if request.dialled == "1002" else None)
    assert dial(dialplan, "1002").number == "1003"


def test_hook_sees_the_request(config: Config) -> None:
    seen: list[CallRequest] = []
    plan(config, lambda request: seen.append(request)).route(CallRequest("1001", "600"))
    assert seen == [CallRequest("1001", "600")]


def test_hook_bad_string_targets_are_unknown(config: Config) -> None:
    targets = {"1": "4444", "2": "trunk:nope:123", "3": "trunk:cheap:", "4": "**4444"}
    dialplan = plan(config, lambda request: targets.get(request.dialled))
    for number in targets:
        route = dial(dialplan, number)
        assert route.kind is RouteKind.UNKNOWN, number
        assert route.reason.startswith("hook"), route.reason


def test_hook_returning_a_route(config: Config) -> None:
    custom = Route(RouteKind.RING_GROUP, "x", ("1003", "2000"), True, 5.0, reason="hook's own")
    assert dial(plan(config, lambda request: custom), "1001") == custom


def test_hook_that_raises_is_logged_and_the_rules_apply(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: CallRequest) -> str:
        raise KeyError("oops")

    with caplog.at_level(logging.ERROR, logger="pbx.dialplan"):
        route = dial(plan(config, broken), "600")
    assert route.kind is RouteKind.RING_GROUP
    [record] = caplog.records
    assert "hook failed" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is KeyError


def test_hook_returning_nonsense_is_logged_and_ignored(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    async def coroutine_hook(request: CallRequest) -> str:
        return "1003"

    answers: list[Callable[[CallRequest], object]] = [lambda request: 42, coroutine_hook]
    for answer in answers:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="pbx.dialplan"):
            route = dial(plan(config, answer), "1002")  # type: ignore[arg-type]
        assert route.kind is RouteKind.EXTENSION and route.number == "1002"
        assert "expected str, Route or None" in caplog.text


def test_hook_cannot_send_trunk_calls_out_again(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    answers: list[str | Route] = [
        "trunk:cheap:+4420",
        Route(RouteKind.TRUNK, "+4420", trunk=config.trunks[1]),
    ]
    for answer in answers:

        def hook(request: CallRequest, answer: str | Route = answer) -> str | Route:
            return answer

        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="pbx.dialplan"):
            route = from_trunk(plan(config, hook), "+15551230000")
        # Refused; the DID applies.
        assert (route.kind, route.number) == (RouteKind.RING_GROUP, "600")
        assert "refused" in caplog.text


def test_hook_routes_trunk_calls_to_internal_targets(config: Config) -> None:
    after_hours = plan(config, lambda request: "2000" if request.from_trunk else None)
    route = from_trunk(after_hours, "+15551230000")
    assert (route.kind, route.number) == (RouteKind.EXTENSION, "2000")
    # Even a number with no DID, when the hook knows it.
    assert from_trunk(after_hours, "+15550000000").number == "2000"


def test_a_trunk_call_dialling_an_emergency_number_asks_the_hook(config: Config) -> None:
    # Inbound "911" is just a number the provider delivered: no emergency override.
    route = from_trunk(plan(config, lambda request: "1003"), "911")
    assert (route.kind, route.emergency) == (RouteKind.EXTENSION, False)


def test_hand_built_config_with_a_dangling_route_is_unknown(tmp_path: Path) -> None:
    config = from_mapping({"data_dir": "d"}, tmp_path / "pbx.toml")
    broken = replace(config, outbound_routes=(OutboundRouteConfig("r", "ghost"),))
    route = dial(plan(broken), "123")
    assert route.kind is RouteKind.UNKNOWN and "ghost" in route.reason


@pytest.fixture
def clean_modules() -> Iterator[None]:
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("pbx_hook_", "h1_")):
            del sys.modules[name]


HOOK_SOURCE = """
from pbx.dialplan import CallRequest


def route(request: CallRequest) -> str | None:
    return "1003" if request.dialled == "0" else None

not_a_function = 3
"""


@pytest.mark.usefixtures("clean_modules")
def test_hook_from_a_file_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "routes.py").write_text(HOOK_SOURCE)
    hook = load_hook("hooks/routes.py:route", tmp_path)
    assert hook(CallRequest("1001", "0")) == "1003"
    assert hook(CallRequest("1001", "1")) is None


@pytest.mark.usefixtures("clean_modules")
def test_hook_module_next_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "h1_clinic_routes.py").write_text(HOOK_SOURCE)
    hook = load_hook("h1_clinic_routes:route", tmp_path)
    assert hook(CallRequest("1001", "0")) == "1003"
    assert str(tmp_path) not in sys.path


@pytest.mark.usefixtures("clean_modules")
def test_hook_module_on_sys_path(tmp_path: Path) -> None:
    hook = load_hook("os.path:basename", tmp_path)
    assert hook is __import__("os").path.basename


@pytest.mark.usefixtures("clean_modules")
def test_dialplan_from_config_loads_the_hook(tmp_path: Path) -> None:
    (tmp_path / "routes.py").write_text(HOOK_SOURCE)
    config = configure(tmp_path, PLAN.replace("[dialplan]", '[dialplan]\nhook = "routes.py:route"'))
    dialplan = Dialplan.from_config(config, EXTENSIONS.__contains__)
    assert dial(dialplan, "0").number == "1003"
    assert dial(dialplan, "600").kind is RouteKind.RING_GROUP


@pytest.mark.usefixtures("clean_modules")
def test_example_clinic_hook(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "clinic" / "pbx.toml"
    hook = load_hook("clinic_routes.py:route", example.parent)
    config = load(example)
    assert dial(plan(config, hook), "0").number == "600"
    assert dial(plan(config, hook), "911").kind is RouteKind.UNKNOWN  # no trunk in the demo


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.py:route", "no such file"),
        ("hooks/routes.py:absent", "has no function absent"),
        ("hooks/routes.py:not_a_function", "is not callable"),
        ("h1_no_such_module:route", "no module h1_no_such_module"),
        ("h1_imports_missing:route", "ModuleNotFoundError"),
        ("hooks/broken.py:route", "SyntaxError"),
        ("noseparator", "expected"),
    ],
)
@pytest.mark.usefixtures("clean_modules")
def test_hook_load_errors(tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "routes.py").write_text(HOOK_SOURCE)
    (tmp_path / "hooks" / "broken.py").write_text("def route(:\n")
    (tmp_path / "h1_imports_missing.py").write_text("import h1_really_absent\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_hook(spec, tmp_path)
    assert info.value.key == "dialplan.hook"


def test_route_is_frozen(config: Config) -> None:
    route = dial(plan(config), "1001")
    with pytest.raises(AttributeError):
        route.number = "1002"  # type: ignore[misc]


# ---- [[time_route]]: clinic hours

TIMED = (
    PLAN
    + """
[[hours]]
name = "clinic"
timezone = "America/New_York"
monday = "08:00-12:00, 13:00-17:00"

[[time_route]]
number = "100"
hours = "clinic"
open = "600"
closed = "trunk:cheap:+15550001111"

[[time_route]]
number = "101"
hours = "clinic"
open = "1003"
closed = "100"

[[did]]
number = "+15551230009"
target = "100"
"""
)
MONDAY_MORNING = datetime(2026, 12, 7, 15, 30, tzinfo=UTC)  # 10:30 in New York
MONDAY_LUNCH = datetime(2026, 12, 7, 17, 30, tzinfo=UTC)  # 12:30
SUNDAY = datetime(2026, 12, 6, 15, 30, tzinfo=UTC)


def timed(config: Config, *times: datetime, hook: Hook | None = None) -> Dialplan:
    """A dialplan whose clock gives `times` one after the other (the last one after)."""
    clock = list(times)
    return Dialplan(
        config,
        EXTENSIONS.__contains__,
        hook,
        now=lambda: clock.pop(0) if len(clock) > 1 else clock[0],
    )


def test_time_route_follows_the_injected_clock(tmp_path: Path) -> None:
    config = configure(tmp_path, TIMED)
    dialplan = timed(config, MONDAY_MORNING, MONDAY_LUNCH)
    open_ = dial(dialplan, "100")
    assert (open_.kind, open_.number, open_.members) == (
        RouteKind.RING_GROUP,
        "600",
        ("1001", "1002"),
    )
    assert open_.reason.startswith("100: clinic hours open (closes 12:00) -> 600: 600 is ring")
    closed = dial(dialplan, "100")  # the same dialplan, two hours later
    assert (closed.kind, closed.number, closed.trunk) == (
        RouteKind.TRUNK,
        "+15550001111",
        config.trunk("cheap"),
    )
    assert closed.reason == "100: clinic hours closed (opens 13:00) -> trunk:cheap:+15550001111"
    assert not closed.emergency


def test_did_to_time_route_to_trunk_is_the_one_way_out_again(tmp_path: Path) -> None:
    config = configure(tmp_path, TIMED)
    # After hours the DID goes to the on-call number through a trunk: allowed.
    after_hours = from_trunk(timed(config, SUNDAY), "+15551230009")
    assert (after_hours.kind, after_hours.number, after_hours.trunk) == (
        RouteKind.TRUNK,
        "+15550001111",
        config.trunk("cheap"),
    )
    assert after_hours.reason == (
        "DID +15551230009 -> 100: 100: clinic hours closed (opens Mon 08:00) "
        "-> trunk:cheap:+15550001111"
    )
    during = from_trunk(timed(config, MONDAY_MORNING), "+15551230009")
    assert (during.kind, during.number) == (RouteKind.RING_GROUP, "600")
    # Only through a DID: a trunk call for the time_route's own number finds no DID.
    direct = from_trunk(timed(config, SUNDAY), "100")
    assert direct.kind is RouteKind.UNKNOWN and "no [[did]]" in direct.reason
    # Other trunk calls still never go out (the existing DID and the outbound prefix).
    assert from_trunk(timed(config, SUNDAY), "+15551230000").kind is RouteKind.RING_GROUP
    assert from_trunk(timed(config, SUNDAY), "95551234").kind is RouteKind.UNKNOWN


def test_hook_still_cannot_send_a_trunk_call_out_even_through_a_time_route(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = configure(tmp_path, TIMED)

    def hook(request: CallRequest) -> str | None:
        return "100" if request.from_trunk else None

    with caplog.at_level(logging.ERROR, logger="pbx.dialplan"):
        route = from_trunk(timed(config, SUNDAY, hook=hook), "+15551230000")
    assert (route.kind, route.number) == (RouteKind.RING_GROUP, "600")  # the DID's target
    assert "refused" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="pbx.dialplan"):
        out = from_trunk(timed(config, SUNDAY, hook=lambda r: "trunk:cheap:+4420"), "+15551230009")
    assert "refused" in caplog.text
    # Refused, the DID applies: its time_route's on-call forward is the configured number.
    assert (out.kind, out.number) == (RouteKind.TRUNK, "+15550001111")
    # While open the hook's time_route answer is internal, and stands.
    assert from_trunk(timed(config, MONDAY_MORNING, hook=hook), "+15557770000").number == "600"


def test_time_route_naming_a_time_route(tmp_path: Path) -> None:
    config = configure(tmp_path, TIMED)
    assert dial(timed(config, MONDAY_MORNING), "101").number == "1003"
    route = dial(timed(config, SUNDAY), "101")
    assert (route.kind, route.number) == (RouteKind.TRUNK, "+15550001111")
    assert route.reason == (
        "101: clinic hours closed (opens Mon 08:00) -> 100; "
        "100: clinic hours closed (opens Mon 08:00) -> trunk:cheap:+15550001111"
    )


def test_time_route_loop_guard(tmp_path: Path) -> None:
    # load() refuses loops; a hand-built Config can still have one.
    config = configure(tmp_path, TIMED)
    loop = (
        TimeRouteConfig("100", "clinic", "101", "101"),
        TimeRouteConfig("101", "clinic", "100", "100"),
    )
    route = dial(timed(replace(config, time_routes=loop), SUNDAY), "100")
    assert (route.kind, route.number) == (RouteKind.UNKNOWN, "100")
    assert "time_route loop" in route.reason and "100 -> 101 -> 100" in route.reason
    chain = tuple(
        TimeRouteConfig(f"{n}", "clinic", f"{n + 1}", f"{n + 1}") for n in range(200, 230)
    )
    long = dial(timed(replace(config, time_routes=chain), SUNDAY), "200")
    assert long.kind is RouteKind.UNKNOWN and f"at most {TIME_ROUTE_DEPTH}" in long.reason
    ghost = (TimeRouteConfig("100", "nowhere", "600", "600"),)
    assert "no [[hours]]" in dial(timed(replace(config, time_routes=ghost), SUNDAY), "100").reason


def test_schedule_lookup_and_default_clock(tmp_path: Path) -> None:
    config = configure(tmp_path, TIMED)
    dialplan = plan(config)  # the real clock: some answer, whatever the time
    clinic = dialplan.schedule("clinic")
    assert clinic is not None and clinic.is_open(MONDAY_MORNING)
    assert not clinic.is_open(MONDAY_LUNCH)
    assert dialplan.schedule("nope") is None
    assert dial(dialplan, "100").kind in (RouteKind.RING_GROUP, RouteKind.TRUNK)


def test_time_routes_send_after_hours_calls_to_a_flow_or_a_mailbox(tmp_path: Path) -> None:
    config = configure(
        tmp_path,
        TIMED
        + """
[[time_route]]
number = "102"
hours = "clinic"
open = "1001"
closed = "ivr:after_hours"

[[time_route]]
number = "103"
hours = "clinic"
open = "1001"
closed = "voicemail:refills:busy"
""",
    )
    closed, opened = timed(config, SUNDAY), timed(config, MONDAY_MORNING)
    flow = dial(closed, "102")
    assert (flow.kind, flow.number) == (RouteKind.IVR, "after_hours"), flow
    assert flow.reason.startswith("102: clinic hours closed (opens Mon 08:00) -> ivr:after_hours")
    box = dial(closed, "103")
    assert (box.kind, box.number, box.greeting) == (RouteKind.VOICEMAIL, "refills", "busy"), box
    for number in ("102", "103"):
        during = dial(opened, number)
        assert (during.kind, during.number) == (RouteKind.EXTENSION, "1001"), during
