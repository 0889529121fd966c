"""Databases as an older pbx left them, for the migration tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pbx.store import MIGRATIONS


def database_at(path: Path, version: int, *statements: str) -> Path:
    """A database at schema `version` (its first `version` migrations), holding what
    `statements` insert; `path`."""
    with sqlite3.connect(path) as db:
        for script in MIGRATIONS[:version]:
            db.executescript(script)
        db.execute(f"PRAGMA user_version = {version}")
        for statement in statements:
            db.execute(statement)
    return path


def schema_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
