"""Schema migrations keep what older versions wrote."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pbx.store import MIGRATIONS, Store


async def test_cdrs_of_schema_2_survive_the_move_to_3(tmp_path: Path) -> None:
    path = tmp_path / "pbx.sqlite3"
    with sqlite3.connect(path) as db:
        for script in MIGRATIONS[:2]:
            db.executescript(script)
        db.execute("PRAGMA user_version = 2")
        db.execute(
            "INSERT INTO cdr (call_id, caller, callee, start, answer, end, duration, billsec,"
            " disposition, status, cause, hangup_by, caller_loss, caller_jitter_ms,"
            " callee_loss, callee_jitter_ms) VALUES"
            " ('old', '1001', '1002', 1.0, 2.0, 5.0, 4.0, 3.0, 'ANSWERED', 200, 'BYE', 'caller',"
            " 0, 0.0, 0, 0.0)"
        )
    store = await Store.open(path)
    try:
        [row] = await store.cdrs()
    finally:
        await store.close()
    assert (row["call_id"], row["caller"], row["billsec"]) == ("old", "1001", 3.0)
    assert (row["legs"], row["route"], row["answered_by"]) == ([], "", "")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
