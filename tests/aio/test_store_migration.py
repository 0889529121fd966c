"""Schema migrations keep what older versions wrote."""

from __future__ import annotations

from pathlib import Path

from pbx.store import MIGRATIONS, Store
from tests.support.schema import database_at, schema_version


async def test_cdrs_of_schema_2_survive_the_move_to_3(tmp_path: Path) -> None:
    path = database_at(
        tmp_path / "pbx.sqlite3", 2,
        "INSERT INTO cdr (call_id, caller, callee, start, answer, end, duration, billsec,"
        " disposition, status, cause, hangup_by, caller_loss, caller_jitter_ms,"
        " callee_loss, callee_jitter_ms) VALUES"
        " ('old', '1001', '1002', 1.0, 2.0, 5.0, 4.0, 3.0, 'ANSWERED', 200, 'BYE', 'caller',"
        " 0, 0.0, 0, 0.0)",
    )  # fmt: skip
    store = await Store.open(path)
    try:
        [row] = await store.cdrs()
    finally:
        await store.close()
    assert (row["call_id"], row["caller"], row["billsec"]) == ("old", "1001", 3.0)
    assert (row["legs"], row["route"], row["answered_by"]) == ([], "", "")
    assert schema_version(path) == len(MIGRATIONS)


async def test_messages_of_schema_6_are_not_urgent_after_the_move_to_7(tmp_path: Path) -> None:
    path = database_at(
        tmp_path / "pbx.sqlite3", 6,
        "INSERT INTO voicemail (id, box, caller, received, seconds, path)"
        " VALUES ('m1', '1001', '1005', 1.0, 4.5, '/tmp/m1.wav')",
    )  # fmt: skip
    store = await Store.open(path)
    try:
        [row] = await store.voicemails("1001")
        counts = await store.voicemail_counts("1001")
    finally:
        await store.close()
    assert (row["id"], row["folder"], row["urgent"]) == ("m1", "new", False)
    assert (counts.new, counts.urgent_new) == (1, 0)
