"""Configuration loading: defaults, relative paths, errors that name the key and line."""

from __future__ import annotations

import re
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from pbx.config import (
    CallsConfig,
    DialplanConfig,
    DidConfig,
    ListenAddress,
    OutboundRouteConfig,
    RingGroupConfig,
    RingStrategy,
    TrunkConfig,
    _Locator,
    load,
)
from pbx.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "clinic" / "pbx.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pbx.toml"
    path.write_text(text)
    return path


def test_example_clinic_config_loads() -> None:
    config = load(EXAMPLE)
    assert config.data_dir == EXAMPLE.parent / "data"
    assert ListenAddress("udp", "127.0.0.1", 5060) in config.sip.listen
    assert config.realm == "clinic.example"


def test_defaults_and_relative_data_dir(tmp_path: Path) -> None:
    config = load(write(tmp_path, 'data_dir = "state"\n'))
    assert config.data_dir == tmp_path / "state"
    assert config.sip.listen == (ListenAddress("udp", "127.0.0.1", 5060),)
    assert config.rtp.port_range == (20000, 20999)
    assert config.realm == "pbx"


def test_ipv6_listen(tmp_path: Path) -> None:
    config = load(write(tmp_path, 'data_dir = "d"\n[sip]\nlisten = ["tcp:[::1]:5070"]\n'))
    assert config.sip.listen == (ListenAddress("tcp", "::1", 5070),)
    assert str(config.sip.listen[0]) == "tcp:[::1]:5070"


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ('data_dir = "d"\n[sip]\nlisten = ["udp:127.0.0.1:5060"]\nlisen = 1\n', "sip.lisen", 4),
        ('data_dir = "d"\n[sip]\nlisten = ["sctp:127.0.0.1:5060"]\n', "sip.listen", 3),
        ('data_dir = "d"\n\n[rtp]\nport_range = [20001, 20000]\n', "rtp.port_range", 4),
        ('data_dir = "d"\n[rtp]\naddress = "not-an-ip"\n', "rtp.address", 3),
        ('data_dir = "d"\n[registrar]\nmin_expires = "60"\n', "registrar.min_expires", 3),
        ('data_dir = "d"\n[auth]\nalgorithms = ["SHA-512"]\n', "auth.algorithms", 3),
        ('data_dir = "d"\ncolour = "blue"\n', "colour", 2),
        ('data_dir = "d"\nsip = 3\n', "sip", 2),
    ],
)
def test_errors_name_key_and_line(tmp_path: Path, text: str, key: str, line: int) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    assert info.value.key == key
    assert info.value.line == line
    assert str(info.value).startswith(f"{key} (line {line}): ")


def test_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data_dir"):
        load(write(tmp_path, "[sip]\n"))


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 1"):
        load(write(tmp_path, "data_dir = \n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "absent.toml")


def test_inconsistent_expiry_bounds(tmp_path: Path) -> None:
    text = 'data_dir = "d"\n[registrar]\nmin_expires = 600\ndefault_expires = 60\n'
    with pytest.raises(ConfigError, match=r"registrar\.default_expires"):
        load(write(tmp_path, text))


DIALPLAN = """data_dir = "d"
[calls]
session_expires = 600
min_se = 120
max_forwards = 20

[dialplan]
emergency_numbers = ["911"]
emergency_trunk = "backup"
hook = "routes.py:route"
pickup = "*9"
directed_pickup = "##"
park = "800"
park_slots = [801, 803]
park_timeout = 45

[[ring_group]]
number = "600"
name = "reception"
members = ["1001", "1002"]
strategy = "in_order"
member_timeout = 15

[[trunk]]
name = "provider"
host = "sip.provider.example"
port = 5080
transport = "TCP"
username = "clinic"
password = "secret"
realm = "provider.example"
register = true
expires = 600
domain = "provider.example"
caller_id = "+15551230000"

[[trunk]]
name = "backup"
host = "::1"

[[outbound_route]]
name = "local"
prefix = "9"
strip = 1
prepend = "+1"
trunk = "provider"
caller_id = "+15559990000"
min_length = 8
max_length = 12

[[did]]
number = "+15551230000"
target = "600"
trunk = "provider"
"""


def test_dialplan_sections_load(tmp_path: Path) -> None:
    config = load(write(tmp_path, DIALPLAN))
    assert config.calls == CallsConfig(session_expires=600, min_se=120, max_forwards=20)
    assert config.dialplan == DialplanConfig(
        emergency_numbers=("911",),
        emergency_trunk="backup",
        hook="routes.py:route",
        pickup="*9",
        directed_pickup="##",
        park="800",
        park_slots=(801, 803),
        park_timeout=45.0,
    )
    assert config.dialplan.slots == ("801", "802", "803")
    assert config.ring_groups == (
        RingGroupConfig("600", ("1001", "1002"), "reception", RingStrategy.IN_ORDER, 15.0),
    )
    provider = TrunkConfig(
        name="provider",
        host="sip.provider.example",
        port=5080,
        transport="tcp",
        username="clinic",
        password="secret",
        realm="provider.example",
        register=True,
        expires=600,
        domain="provider.example",
        caller_id="+15551230000",
    )
    assert config.trunks == (provider, TrunkConfig("backup", "::1"))
    assert "secret" not in repr(config)
    assert config.trunk("provider") == provider
    assert config.trunk("nope") is None
    assert config.emergency_trunk == TrunkConfig("backup", "::1")
    assert config.trunks[1].sip_domain == "::1"
    assert config.outbound_routes == (
        OutboundRouteConfig("local", "provider", "9", 1, "+1", "+15559990000", 8, 12),
    )
    assert config.dids == (DidConfig("+15551230000", "600", "provider"),)


def test_dialplan_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path, 'data_dir = "d"\n'))
    assert config.calls == CallsConfig(60.0, 1800, 90, 70)
    plan = config.dialplan
    assert plan.emergency_numbers == ("911", "112")
    assert (plan.pickup, plan.directed_pickup, plan.park) == ("*8", "**", "700")
    assert (plan.park_slots, plan.park_timeout, plan.hook) == ((701, 720), 120.0, None)
    assert len(plan.slots) == 20
    assert (config.ring_groups, config.trunks, config.outbound_routes, config.dids) == (
        (),
        (),
        (),
        (),
    )
    assert config.emergency_trunk is None
    trunk = load(write(tmp_path, 'data_dir = "d"\n[[trunk]]\nname = "t"\nhost = "10.0.0.1"\n'))
    assert trunk.trunks[0] == TrunkConfig("t", "10.0.0.1", 5060, "udp", "", "", "", False, 3600)
    assert trunk.emergency_trunk == trunk.trunks[0]
    group = load(write(tmp_path, 'data_dir = "d"\n[[ring_group]]\nnumber = "6"\nmembers = ["1"]'))
    assert group.ring_groups[0].strategy is RingStrategy.SIMULTANEOUS
    assert group.ring_groups[0].member_timeout == 20.0


def test_feature_codes_can_be_turned_off(tmp_path: Path) -> None:
    text = 'data_dir = "d"\n[dialplan]\npickup = ""\ndirected_pickup = ""\npark = ""\n'
    plan = load(write(tmp_path, text + "park_slots = []\nemergency_numbers = []\n")).dialplan
    assert (plan.pickup, plan.directed_pickup, plan.park, plan.park_slots) == ("", "", "", None)
    assert (plan.slots, plan.emergency_numbers) == ((), ())


def replace(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


def line_of(text: str, needle: str, occurrence: int = 0) -> int:
    lines = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
    return lines[occurrence]


# (replace this, with that, the key named, text on the line named (None: the replacement's
# first line), which occurrence of that text)
BAD_DIALPLAN = [
    ("session_expires = 600", "session_expires = 60", "calls.session_expires", None, 0),
    ("session_expires = 600", "session_expires = 6.5", "calls.session_expires", None, 0),
    ("min_se = 120", "min_se = 0", "calls.min_se", None, 0),
    ("max_forwards = 20", "max_forwards = 256", "calls.max_forwards", None, 0),
    ("max_forwards = 20", "max_forwards = 0", "calls.max_forwards", None, 0),
    ('["911"]', "[911]", "dialplan.emergency_numbers", "emergency_numbers", 0),
    ('["911"]', '["911", "911"]', "dialplan.emergency_numbers", "emergency_numbers", 0),
    ('["911"]', '"911"', "dialplan.emergency_numbers", "emergency_numbers", 0),
    ('"backup"\nhook', '"nope"\nhook', "dialplan.emergency_trunk", '"nope"', 0),
    ('"routes.py:route"', '"routes.py"', "dialplan.hook", None, 0),
    ('"routes.py:route"', '"routes:1st"', "dialplan.hook", None, 0),
    ('pickup = "*9"', 'pickup = "*9 "', "dialplan.pickup", None, 0),
    ('pickup = "*9"', "pickup = 9", "dialplan.pickup", None, 0),
    ("[801, 803]", "[803, 801]", "dialplan.park_slots", None, 0),
    ("[801, 803]", "[801]", "dialplan.park_slots", None, 0),
    ("[801, 803]", "[0, 5000]", "dialplan.park_slots", None, 0),
    ("[801, 803]", "[]", "dialplan.park_slots", None, 0),
    ("park_timeout = 45", "park_timeout = 0", "dialplan.park_timeout", None, 0),
    ("park_timeout = 45", "park_timeot = 45", "dialplan.park_timeot", None, 0),
    ('number = "600"', "number = 600", "ring_group[0].number", None, 0),
    ('number = "600"\n', "", "ring_group[0].number", "[[ring_group]]", 0),
    ('["1001", "1002"]', "[]", "ring_group[0].members", "members", 0),
    ('["1001", "1002"]', '["1001", "1001"]', "ring_group[0].members", None, 0),
    ('"in_order"', '"random"', "ring_group[0].strategy", None, 0),
    ("member_timeout = 15", "member_timeout = -1", "ring_group[0].member_timeout", None, 0),
    ('name = "provider"', 'name = "Provider"', "trunk[0].name", None, 0),
    ('host = "::1"', 'host = "bad host"', "trunk[1].host", None, 0),
    ('host = "::1"', 'hots = "::1"', "trunk[1].hots", None, 0),
    ('name = "backup"\nhost = "::1"\n', 'name = "b"\n', "trunk[1].host", "[[trunk]]", 1),
    ("port = 5080", "port = 70000", "trunk[0].port", None, 0),
    ('transport = "TCP"', 'transport = "tls"', "trunk[0].transport", None, 0),
    ("register = true", 'register = "yes"', "trunk[0].register", None, 0),
    ('username = "clinic"\n', "", "trunk[0].register", "register", 0),
    ("expires = 600\ndomain", "expires = 0\ndomain", "trunk[0].expires", "expires = 0", 0),
    ('name = "backup"', 'name = "provider"', "trunk[1].name", 'name = "provider"', 1),
    ('prefix = "9"', 'prefix = "9 "', "outbound_route[0].prefix", None, 0),
    ("strip = 1", "strip = -1", "outbound_route[0].strip", None, 0),
    ('"provider"\ncaller_id', '"nope"\ncaller_id', "outbound_route[0].trunk", '"nope"', 0),
    ("max_length = 12", "max_length = 4", "outbound_route[0].max_length", None, 0),
    ('name = "local"\n', "", "outbound_route[0].name", "[[outbound_route]]", 0),
    ('target = "600"', 'target = "trunk:provider:123"', "did[0].target", None, 0),
    ('target = "600"\n', "", "did[0].target", "[[did]]", 0),
    ('600"\ntrunk = "provider"', '600"\ntrunk = "other"', "did[0].trunk", 'trunk = "other"', 0),
    ("[[did]]", "[did]", "did", None, 0),
    ('number = "600"', 'number = "800"', "ring_group[0].number", None, 0),
    ('number = "600"', 'number = "802"', "ring_group[0].number", None, 0),
    ('number = "600"', 'number = "911"', "ring_group[0].number", None, 0),
    ('number = "600"', 'number = "##600"', "ring_group[0].number", None, 0),
    ('pickup = "*9"', 'pickup = "800"', "dialplan.park", 'park = "800"', 0),
    ('directed_pickup = "##"', 'directed_pickup = "80"', "dialplan.park", 'park = "800"', 0),
    ('"##"\npark = "800"', '"80"\npark = "700"', "dialplan.park_slots", "park_slots", 0),
    ('directed_pickup = "##"', 'directed_pickup = "9"', "dialplan.emergency_numbers", "emerg", 0),
]


@pytest.mark.parametrize(("old", "new", "key", "on_line", "occurrence"), BAD_DIALPLAN)
def test_dialplan_errors_name_key_and_line(
    tmp_path: Path, old: str, new: str, key: str, on_line: str | None, occurrence: int
) -> None:
    text = replace(DIALPLAN, old, new)
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    assert info.value.key == key, str(info.value)
    expected = line_of(text, on_line or new.splitlines()[0], occurrence)
    assert info.value.line == expected, str(info.value)
    assert str(info.value).startswith(f"{key} (line {expected}): ")


def test_duplicate_did_counts_plus_as_the_same_number(tmp_path: Path) -> None:
    twin = '\n[[did]]\nnumber = "15551230000"\ntarget = "1001"\n'
    text = DIALPLAN + twin + 'trunk = "provider"\n'
    with pytest.raises(ConfigError, match=r"DID 15551230000 is already did\[0\]") as info:
        load(write(tmp_path, text))
    assert (info.value.key, info.value.line) == ("did[1].number", line_of(text, '"15551230000"'))
    # The same number for any trunk is another DID: the one for the caller's trunk wins.
    assert len(load(write(tmp_path, DIALPLAN + twin)).dids) == 2


def test_locator_finds_keys_in_the_nth_array_table() -> None:
    text = '[[trunk]]\nname = "a"\nhost = "h"\n\n[[trunk]]\nname = "b"\n# host = "x"\nhost = "y"\n'
    locator = _Locator(text)
    assert locator.line("trunk[0].host") == 3
    assert locator.line("trunk[1].host") == 8
    assert locator.line("trunk[1].port") == 5  # not written: the table's header
    assert locator.line("trunk[1]") == 5
    assert locator.line("trunk") == 1
    assert locator.line("trunk[2].host") is None


def test_example_clinic_ring_group_and_commented_trunk(tmp_path: Path) -> None:
    config = load(EXAMPLE)
    assert config.ring_groups[0].number == "600"
    assert config.ring_groups[0].members == ("1001", "1002")
    assert config.trunks == ()
    # The commented trunk, route, DID and hook are a working example once uncommented.
    text = re.sub(r"(?m)^# (\[\[|[a-z_]+ = )", r"\1", EXAMPLE.read_text())
    full = load(write(tmp_path, replace(text, 'data_dir = "data"', f'data_dir = "{tmp_path}"')))
    assert [t.name for t in full.trunks] == ["provider"]
    assert full.outbound_routes[0].trunk == "provider"
    assert full.dids[0].target == "600"
    assert full.dialplan.hook == "clinic_routes.py:route"


def test_ivr_and_voicemail_sections(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            'data_dir = "d"\n[ivr]\nmodules = ["flows.py", "site.flows"]\nprompts = ["p"]\n'
            'fallback = "1001"\n[ivr.numbers]\n"100" = "main"\n"101" = "after_hours"\n'
            "[voicemail]\nextensions = true\nring_seconds = 20\nsilence_seconds = 0\n"
            'envelope = false\ntimezone = "America/Chicago"\n'
            '[[mailbox]]\nbox = "refills"\nname = "Refills"\npin = "1234"\n',
        )
    )
    assert config.ivr.modules == ("flows.py", "site.flows")
    assert config.ivr.numbers == (("100", "main"), ("101", "after_hours"))
    assert config.voicemail.extensions and config.voicemail.ring_seconds == 20.0
    assert config.voicemail.silence_seconds == 0.0  # only # or a hang-up ends a message
    assert not config.voicemail.envelope
    assert config.voicemail.timezone == ZoneInfo("America/Chicago")
    assert config.mailbox("refills") is not None and config.mailbox("x") is None
    assert config.voicemail_dir == tmp_path / "d" / "voicemail"
    example = load(EXAMPLE)
    assert example.voicemail.envelope and example.voicemail.timezone is None
    assert ("100", "main") in example.ivr.numbers
    assert {m.box for m in example.mailboxes} == {"refills", "clinic"}


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ('[ivr]\nmodules = "flows.py"\n', "ivr.modules", "list of non-empty strings"),
        ('[ivr.numbers]\n"100" = "no spaces"\n', "ivr.numbers", "expected a flow name"),
        ('[ivr.numbers]\n"1 0" = "main"\n', "ivr.numbers", "not a dialable number"),
        ('[ivr]\nfallback = "a b"\n', "ivr.fallback", "not a dialplan target"),
        ("[voicemail]\nring_seconds = -1\n", "voicemail.ring_seconds", ""),
        ('[voicemail]\noperator = "0 0"\n', "voicemail.operator", "not a dialplan target"),
        ('[voicemail]\noperator_hours = "clinic"\n', "voicemail.operator_hours",
         "no [[hours]] is named 'clinic' (none is configured)"),
        ('[[mailbox]]\nbox = "a"\noperator = "x y"\n', "mailbox[0].operator",
         "not a dialplan target"),
        ('[voicemail]\ntimezone = "Mars/Olympus"\n', "voicemail.timezone", "not an IANA"),
        ("[voicemail]\nenvelope = 1\n", "voicemail.envelope", ""),
        ('[[mailbox]]\nbox = "a/b"\n', "mailbox[0].box", "letters, digits"),
        ('[[mailbox]]\nbox = "a"\n[[mailbox]]\nbox = "a"\n', "mailbox[1].box", "already used"),
        ('[ivr.numbers]\n"800" = "main"\n[[conference]]\nnumber = "800"\n',
         "ivr.numbers.800", "already used"),
        ('[voicemail]\naccess = "*8"\n', "voicemail.access", "already used"),
    ],
)  # fmt: skip
def test_ivr_and_voicemail_errors(tmp_path: Path, text: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, 'data_dir = "d"\n' + text))
    assert caught.value.key == key
    assert message in str(caught.value)
