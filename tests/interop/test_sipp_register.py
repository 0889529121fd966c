"""SIPp registers many users with digest auth; the registrar lists exactly what SIPp bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop.helpers import add_users, registrations
from tests.support.pbxproc import PbxProcess
from tests.support.ports import free_port
from tests.support.sipp import run_sipp, write_users_csv

pytestmark = pytest.mark.interop


def users_from(first: int, count: int) -> list[tuple[str, str]]:
    return [(str(n), f"pw{n}") for n in range(first, first + count)]


def test_fifty_users_register(pbx_proc: PbxProcess, tmp_path: Path) -> None:
    users = users_from(2000, 50)
    add_users(pbx_proc, users)
    pbx_proc.start()
    local_port = free_port(both=False)
    result = run_sipp(
        "register.xml",
        ("127.0.0.1", pbx_proc.port),
        tmp_path,
        local_port=local_port,
        calls=len(users),
        inf=write_users_csv(tmp_path / "users.csv", users),
    )

    assert result.returncode == 0, result.explain()
    assert result.counter("SuccessfulCall(C)") == 50, result.explain()
    assert result.counter("FailedCall(C)") == 0, result.explain()

    rows = registrations(pbx_proc)
    assert sorted(rows) == [ext for ext, _ in users]
    for ext, bindings in rows.items():
        [row] = bindings
        assert row["contact"] == f"sip:{ext}@127.0.0.1:{local_port};transport=UDP"
        assert row["transport"] == "udp"
        assert row["source"] == f"127.0.0.1:{local_port}"
        assert row["user_agent"] == "SIPp"
        assert 0 < row["expires_in"] <= 300


def test_wrong_password_gets_no_binding(pbx_proc: PbxProcess, tmp_path: Path) -> None:
    users = users_from(2000, 5)
    add_users(pbx_proc, users)
    pbx_proc.start()
    injected = [(ext, "not-" + pw if ext == "2002" else pw) for ext, pw in users]
    local_port = free_port(both=False)
    result = run_sipp(
        "register.xml",
        ("127.0.0.1", pbx_proc.port),
        tmp_path,
        local_port=local_port,
        calls=len(users),
        inf=write_users_csv(tmp_path / "users.csv", injected),
    )

    # Exactly the one call with the wrong password fails, on the 401 where 200 was expected.
    assert result.returncode == 1, result.explain()
    assert result.counter("SuccessfulCall(C)") == 4, result.explain()
    assert result.counter("FailedCall(C)") == 1, result.explain()
    assert result.counter("FailedUnexpectedMessage(C)") == 1, result.explain()
    assert "401" in result.errors, result.explain()

    rows = registrations(pbx_proc)
    assert sorted(rows) == ["2000", "2001", "2003", "2004"]
    assert all(row["source"] == f"127.0.0.1:{local_port}" for [row] in rows.values())
