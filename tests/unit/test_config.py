"""Configuration loading: defaults, relative paths, errors that name the key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pbx.config import ListenAddress, load
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
