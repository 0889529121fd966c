"""Shared steps of the interop tests: provisioning through the CLI, reading the listing."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from tests.support.pbxproc import PbxProcess

T = TypeVar("T")


def configure(proc: PbxProcess, extra: str) -> None:
    """Append TOML tables to a not-yet-started pbx's configuration."""
    proc.config.write_text(proc.config.read_text() + "\n" + extra)


def add_users(proc: PbxProcess, users: Iterable[tuple[str, str]]) -> None:
    """`pbx user add` for each (extension, password), the CLI as an operator runs it.

    The first call runs alone and creates the database; the rest run in parallel.
    """
    first, *rest = list(users)
    proc.add_user(*first)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda user: proc.add_user(*user), rest))


def registrations(proc: PbxProcess) -> dict[str, list[dict[str, Any]]]:
    """`pbx registrations --json`, grouped by address-of-record."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for row in proc.cli_json("registrations"):
        rows.setdefault(row["aor"], []).append(row)
    return rows


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 10.0) -> T:
    """Poll `probe` (cheap, in-process) until it returns something, within `timeout`.

    Only for states no peer announces as an event (a line in pbx's log, say).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def log_line(proc: PbxProcess, needle: str, start: int = 0) -> str | None:
    """The first line of pbx's log (from index `start`) that contains `needle`."""
    return next((line for line in proc.log[start:] if needle in line), None)
