"""The embedded database: SQLite through aiosqlite, WAL mode, versioned migrations.

The server and the CLI open the same file; WAL lets the CLI add users while the server
runs. Writes that record what happened are committed before the phone is answered, so a
`kill -9` loses nothing that was acknowledged. Binding writes are grouped: every change
queued while one commit runs goes into the next commit (group commit), which keeps the
registrar fast under load without answering before the data is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import sqlite3
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import aiosqlite

from acd.model import (
    EVENT_OF,
    OUTPUT_OF,
    AgentSpec,
    AgentState,
    LoggedEvent,
    Output,
    OverflowAction,
    OverflowRule,
    QueueSpec,
    Strategy,
    format_skills,
    parse_skills,
)
from pbx.errors import PbxError
from pbx.events import CallEnded, RecordingStarted

MIGRATIONS: tuple[str, ...] = (
    # 1: users and registrations
    """
    CREATE TABLE settings (key TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE users (
        extension TEXT PRIMARY KEY,
        name TEXT NOT NULL DEFAULT '',
        realm TEXT NOT NULL,
        ha1_md5 TEXT NOT NULL,
        ha1_sha256 TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE bindings (
        aor TEXT NOT NULL,
        contact TEXT NOT NULL,
        expires_at REAL NOT NULL,
        call_id TEXT NOT NULL,
        cseq INTEGER NOT NULL,
        q REAL,
        transport TEXT NOT NULL,
        source TEXT NOT NULL,
        local TEXT NOT NULL DEFAULT '',
        user_agent TEXT NOT NULL DEFAULT '',
        instance TEXT,
        registered_at REAL NOT NULL,
        reachable INTEGER,
        rtt_ms REAL,
        PRIMARY KEY (aor, contact)
    );
    CREATE INDEX bindings_expiry ON bindings (expires_at);
    """,
    # 2: call detail records, one row per call, written when it ends
    """
    CREATE TABLE cdr (
        id INTEGER PRIMARY KEY,
        call_id TEXT NOT NULL UNIQUE,
        caller TEXT NOT NULL,
        callee TEXT NOT NULL,
        start REAL NOT NULL,
        answer REAL,
        end REAL NOT NULL,
        duration REAL NOT NULL,
        billsec REAL NOT NULL,
        disposition TEXT NOT NULL,
        status INTEGER NOT NULL,
        cause TEXT NOT NULL,
        hangup_by TEXT NOT NULL,
        caller_loss INTEGER NOT NULL,
        caller_jitter_ms REAL NOT NULL,
        callee_loss INTEGER NOT NULL,
        callee_jitter_ms REAL NOT NULL
    );
    CREATE INDEX cdr_start ON cdr (start);
    """,
    # 3: what the dialplan made of the call, who answered, every party it involved
    """
    ALTER TABLE cdr ADD COLUMN dialled TEXT NOT NULL DEFAULT '';
    ALTER TABLE cdr ADD COLUMN route TEXT NOT NULL DEFAULT '';
    ALTER TABLE cdr ADD COLUMN trunk TEXT NOT NULL DEFAULT '';
    ALTER TABLE cdr ADD COLUMN answered_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE cdr ADD COLUMN legs TEXT NOT NULL DEFAULT '[]'
    """,
    # 4: call recordings, a row from the moment the file is opened (ended NULL until done)
    """
    CREATE TABLE recordings (
        id TEXT PRIMARY KEY,
        call_id TEXT NOT NULL,
        path TEXT NOT NULL,
        format TEXT NOT NULL,
        started REAL NOT NULL,
        ended REAL,
        duration REAL NOT NULL DEFAULT 0,
        paused_seconds REAL NOT NULL DEFAULT 0,
        retention_days REAL NOT NULL DEFAULT 0,
        started_by TEXT NOT NULL DEFAULT '',
        deleted REAL
    );
    CREATE INDEX recordings_call ON recordings (call_id);
    CREATE INDEX recordings_started ON recordings (started);
    """,
    # 5: the ACD: agents (with the presence a restart restores), queues, and the queue log
    # (every engine output, committed as it happens: statistics are rebuilt from it)
    """
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        extension TEXT NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        skills TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'logged_out',
        reason TEXT NOT NULL DEFAULT '',
        queues TEXT NOT NULL DEFAULT '[]'
    );
    CREATE TABLE queues (
        name TEXT PRIMARY KEY,
        number TEXT NOT NULL DEFAULT '',
        skills TEXT NOT NULL DEFAULT '',
        strategy TEXT NOT NULL,
        ring_timeout REAL NOT NULL,
        wrap_up REAL NOT NULL,
        max_wait REAL NOT NULL,
        max_length INTEGER NOT NULL,
        announce_every REAL NOT NULL,
        join_empty INTEGER NOT NULL,
        leave_empty INTEGER NOT NULL,
        ageing REAL NOT NULL,
        service_level REAL NOT NULL,
        music TEXT NOT NULL DEFAULT '',
        overflow TEXT NOT NULL DEFAULT '[]',
        callback_retries INTEGER NOT NULL,
        callback_retry_delay REAL NOT NULL,
        record INTEGER NOT NULL,
        created REAL NOT NULL
    );
    CREATE UNIQUE INDEX queues_number ON queues (number) WHERE number != '';
    CREATE TABLE queue_log (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        queue TEXT NOT NULL,
        call_id TEXT NOT NULL,
        agent TEXT NOT NULL DEFAULT '',
        event TEXT NOT NULL,
        data TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX queue_log_time ON queue_log (time);
    CREATE INDEX queue_log_call ON queue_log (call_id);
    """,
    # 6: voicemail: the PIN each mailbox was given, and every message left (its file
    # under data_dir/voicemail/BOX)
    """
    CREATE TABLE mailboxes (
        box TEXT PRIMARY KEY,
        pin TEXT NOT NULL DEFAULT '',
        changed REAL NOT NULL
    );
    CREATE TABLE voicemail (
        id TEXT PRIMARY KEY,
        box TEXT NOT NULL,
        caller TEXT NOT NULL DEFAULT '',
        caller_name TEXT NOT NULL DEFAULT '',
        received REAL NOT NULL,
        seconds REAL NOT NULL,
        path TEXT NOT NULL,
        folder TEXT NOT NULL DEFAULT 'new',
        call_id TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX voicemail_box ON voicemail (box, received);
    """,
    # 7: urgent voicemail (RFC 3842's urgent counts; urgent messages are heard first)
    """
    ALTER TABLE voicemail ADD COLUMN urgent INTEGER NOT NULL DEFAULT 0;
    """,
    # 8: MWI subscriptions, so that a crash does not leave the phones' lamps stale (a clean
    # stop ends them: the phones subscribe again); `state` is pbx.mwi's record, JSON
    """
    CREATE TABLE mwi_subscriptions (
        call_id TEXT NOT NULL,
        local_tag TEXT NOT NULL,
        remote_tag TEXT NOT NULL,
        expires_at REAL NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (call_id, local_tag, remote_tag)
    );
    """,
)


OPEN_PATIENCE = 15.0  # seconds an open keeps retrying while others hold the database


@dataclass(frozen=True, slots=True)
class VoicemailCounts:
    """A mailbox's messages: what MWI tells its phones (RFC 3842's new/old (urgent))."""

    new: int = 0
    saved: int = 0
    urgent_new: int = 0
    """Of `new`, how many are urgent."""
    urgent_saved: int = 0


class StoreError(PbxError):
    """A database operation failed or was refused (e.g. a duplicate user)."""


@dataclass(frozen=True, slots=True)
class User:
    extension: str
    name: str
    realm: str
    ha1_md5: str
    ha1_sha256: str

    def ha1(self, algorithm: str) -> str | None:
        return {"MD5": self.ha1_md5, "SHA-256": self.ha1_sha256}.get(algorithm)


@dataclass(frozen=True, slots=True)
class Binding:
    """One registered contact of an address-of-record (RFC 3261 §10)."""

    aor: str
    contact: str
    expires_at: float
    call_id: str
    cseq: int
    transport: str
    source: str
    registered_at: float
    q: float | None = None
    local: str = ""
    user_agent: str = ""
    instance: str | None = None
    reachable: bool | None = None
    rtt_ms: float | None = None


_BINDING_COLUMNS = (
    "aor, contact, expires_at, call_id, cseq, transport, source, registered_at, q, local, "
    "user_agent, instance, reachable, rtt_ms"
)


_CDR_COLUMNS = (
    "call_id, caller, callee, start, answer, end, duration, billsec, disposition, status, "
    "cause, hangup_by, caller_loss, caller_jitter_ms, callee_loss, callee_jitter_ms, "
    "dialled, route, trunk, answered_by, legs"
)
_VOICEMAIL_COLUMNS = (
    "id, box, caller, caller_name, received, seconds, path, folder, call_id, urgent"
)
_RECORDING_COLUMNS = (
    "id, call_id, path, format, started, ended, duration, paused_seconds, retention_days, "
    "started_by, deleted"
)


def _binding_row(b: Binding) -> tuple[object, ...]:
    reachable = None if b.reachable is None else int(b.reachable)
    return (
        b.aor, b.contact, b.expires_at, b.call_id, b.cseq, b.transport, b.source,
        b.registered_at, b.q, b.local, b.user_agent, b.instance, reachable, b.rtt_ms,
    )  # fmt: skip


def _binding_from_row(row: Sequence[object]) -> Binding:
    values = list(row)
    reachable = values[12]
    values[12] = None if reachable is None else bool(reachable)
    return Binding(*values)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """An agent as the database keeps it: who they are, and the presence they had (logged
    in where, paused why), which the exchange restores when it starts."""

    spec: AgentSpec
    state: AgentState = AgentState.LOGGED_OUT
    reason: str = ""
    queues: tuple[str, ...] = ()


# Every QueueSpec field, in column order (a test holds the two together).
_QUEUE_COLUMNS = (
    "name, number, skills, strategy, ring_timeout, wrap_up, max_wait, max_length, "
    "announce_every, join_empty, leave_empty, ageing, service_level, music, overflow, "
    "callback_retries, callback_retry_delay, record"
)
_QUEUE_NAMES = tuple(c.strip() for c in _QUEUE_COLUMNS.split(","))


def _overflow_json(rules: Iterable[OverflowRule]) -> str:
    return json.dumps(
        [
            {"after": r.after, "action": r.action.value, "target": r.target, "skills": r.skills}
            for r in rules
        ]
    )


def _overflow_from_json(text: str) -> tuple[OverflowRule, ...]:
    return tuple(
        OverflowRule(
            float(r["after"]), OverflowAction(r["action"]), str(r["target"]), dict(r["skills"])
        )
        for r in json.loads(text)
    )


def _queue_row(spec: QueueSpec) -> tuple[object, ...]:
    encode: dict[str, object] = {
        "skills": format_skills(spec.skills),
        "strategy": spec.strategy.value,
        "join_empty": int(spec.join_empty),
        "leave_empty": int(spec.leave_empty),
        "record": int(spec.record),
        "overflow": _overflow_json(spec.overflow),
    }
    return tuple(encode.get(name, getattr(spec, name)) for name in _QUEUE_NAMES)


def _queue_from_row(row: Sequence[object]) -> QueueSpec:
    values = dict(zip(_QUEUE_NAMES, row, strict=True))
    values["skills"] = parse_skills(str(values["skills"]))
    values["strategy"] = Strategy(str(values["strategy"]))
    for flag in ("join_empty", "leave_empty", "record"):
        values[flag] = bool(values[flag])
    values["overflow"] = _overflow_from_json(str(values["overflow"]))
    return QueueSpec(**values)  # type: ignore[arg-type]


# queue_log: these fields of an output have columns of their own; the rest go to `data`.
_LOG_COLUMNS = ("time", "queue", "call_id", "agent")


def _plain(value: object) -> object:
    """An output field as JSON: enums by value, tuples as lists."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _log_row(output: Output) -> tuple[object, ...]:
    data = {
        f.name: _plain(getattr(output, f.name))
        for f in dataclasses.fields(output)
        if f.name not in _LOG_COLUMNS
    }
    agent = getattr(output, "agent", "")
    event = EVENT_OF[type(output)].value
    return (output.time, output.queue, output.call_id, agent, event, json.dumps(data))


def _decoder(hint: object) -> typing.Callable[[object], object]:
    """Turns a JSON value back into a field of type `hint` (the types outputs use)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        [inner] = [a for a in typing.get_args(hint) if a is not type(None)]
        decode = _decoder(inner)
        return lambda value: None if value is None else decode(value)
    if typing.get_origin(hint) is tuple:
        [item, *_] = typing.get_args(hint)
        decode = _decoder(item)
        return lambda value: tuple(decode(v) for v in value)  # type: ignore[attr-defined]
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint
    if hint is float:
        return lambda value: float(value)  # type: ignore[arg-type]
    return lambda value: value


# Output type -> its `data` fields and how to decode each.
_LOG_FIELDS: dict[type[Output], dict[str, typing.Callable[[object], object]]] = {
    kind: {
        name: _decoder(hint)
        for name, hint in typing.get_type_hints(kind).items()
        if name not in _LOG_COLUMNS
    }
    for kind in EVENT_OF
}

_WITH_AGENT = frozenset(k for k in EVENT_OF if "agent" in {f.name for f in dataclasses.fields(k)})


def _output_from_row(row: Sequence[object]) -> Output:
    number, time, queue, call_id, agent, event, data = row
    try:
        kind = OUTPUT_OF[LoggedEvent(event)]
        values = {
            name: _LOG_FIELDS[kind][name](value) for name, value in json.loads(str(data)).items()
        }
        if kind in _WITH_AGENT:
            values["agent"] = agent
        return kind(time=float(time), queue=queue, call_id=call_id, **values)  # type: ignore[arg-type]
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"queue_log row {number} cannot be read: {exc}") from None


class Store:
    """Async access to the database. Open with `await Store.open(path)`.

    Reads use `execute_fetchall`, one trip to the database thread: a cursor stepped over
    several trips would see rows that a group commit replaced in between, twice.
    """

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self._pending: list[tuple[Binding | None, tuple[str, str] | None, asyncio.Future[None]]]
        self._pending = []
        self._flusher: asyncio.Task[None] | None = None
        # One connection, one transaction at a time: a commit by another writer in the
        # middle of a binding batch would commit half of it.
        self._writing = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (creating and migrating as needed) the database at `path`.

        Processes opening a new database together can be refused with "database is locked"
        without SQLite's busy handler being consulted (switching to WAL needs the database
        to itself); such an open is retried for up to OPEN_PATIENCE seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + OPEN_PATIENCE
        while True:
            try:
                return await cls._open_once(path)
            except StoreError as exc:
                if not isinstance(exc.__cause__, sqlite3.OperationalError) or "locked" not in str(
                    exc.__cause__
                ):
                    raise
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.05 + random.random() * 0.1)

    @classmethod
    async def _open_once(cls, path: Path) -> Store:
        # The database holds HA1 hashes, which open any account as well as a password would:
        # only the pbx user may read it (and its WAL files, created with the same umask).
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        old_umask = os.umask(0o077)
        try:
            db = await aiosqlite.connect(path, timeout=10.0)
        except Exception as exc:  # sqlite3.Error, OSError
            raise StoreError(f"cannot open database {path}: {exc}") from exc
        finally:
            os.umask(old_umask)
        store = cls(db, path)
        try:
            await db.execute("PRAGMA busy_timeout=10000")
            await db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a process crash (kill -9) loses nothing committed; only a
            # power cut may lose the last commits.
            await db.execute("PRAGMA synchronous=NORMAL")
            await store._migrate()
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    path.with_name(path.name + suffix).chmod(0o600)
        except BaseException as exc:
            # Close the connection, or its thread keeps a failed process alive.
            await db.close()
            if isinstance(exc, StoreError):
                raise
            if isinstance(exc, Exception):
                raise StoreError(f"cannot open database {path}: {exc}") from exc
            raise
        return store

    async def _migrate(self) -> None:
        """Bring the schema up to date, once, even when several processes start together.

        The version is read inside an IMMEDIATE transaction, so a second process waits for
        the first one's migration and then finds nothing left to do.
        """
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            row = next(iter(await self._db.execute_fetchall("PRAGMA user_version")), None)
            version = int(row[0]) if row else 0
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"database schema {version} is newer than this pbx understands "
                    f"({len(MIGRATIONS)}); upgrade pbx"
                )
            for number, script in enumerate(MIGRATIONS[version:], version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        await self._db.execute(statement)
                await self._db.execute(f"PRAGMA user_version = {number}")
            await self._db.commit()
        except BaseException:
            await self._db.rollback()
            raise

    async def close(self) -> None:
        if self._flusher is not None:
            await self._flusher
        await self._db.close()

    async def data_version(self) -> int:
        """Changes whenever another connection commits (PRAGMA data_version)."""
        row = next(iter(await self._db.execute_fetchall("PRAGMA data_version")), None)
        return int(row[0]) if row else 0

    # settings

    async def secret(self, key: str, size: int = 32) -> bytes:
        """A random secret kept across restarts (e.g. the digest nonce key)."""
        rows = await self._db.execute_fetchall("SELECT value FROM settings WHERE key = ?", (key,))
        row = next(iter(rows), None)
        if row:
            return bytes(row[0])
        value = os.urandom(size)
        await self._write(
            [("INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)", (key, value))]
        )
        return await self.secret(key, size)

    async def _write(self, statements: list[tuple[str, tuple[object, ...]]]) -> list[int]:
        """Run statements in one transaction; their row counts. Rolled back on error."""
        async with self._writing:
            counts = []
            try:
                for sql, params in statements:
                    cursor = await self._db.execute(sql, params)
                    counts.append(cursor.rowcount)
                await self._db.commit()
            except BaseException:
                await self._db.rollback()
                raise
            return counts

    # users

    async def add_user(self, user: User, now: float) -> None:
        try:
            await self._write(
                [
                    (
                        "INSERT INTO users (extension, name, realm, ha1_md5, ha1_sha256, created) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (user.extension, user.name, user.realm, user.ha1_md5, user.ha1_sha256, now),
                    )
                ]
            )
        except aiosqlite.IntegrityError:
            raise StoreError(f"user {user.extension} already exists") from None

    async def update_password(self, extension: str, realm: str, md5: str, sha256: str) -> None:
        [changed] = await self._write(
            [
                (
                    "UPDATE users SET realm = ?, ha1_md5 = ?, ha1_sha256 = ? WHERE extension = ?",
                    (realm, md5, sha256, extension),
                )
            ]
        )
        if changed == 0:
            raise StoreError(f"no user {extension}")

    async def remove_user(self, extension: str) -> None:
        removed, _ = await self._write(
            [
                ("DELETE FROM users WHERE extension = ?", (extension,)),
                ("DELETE FROM bindings WHERE aor = ?", (extension,)),
            ]
        )
        if removed == 0:
            raise StoreError(f"no user {extension}")

    async def users(self) -> list[User]:
        rows = await self._db.execute_fetchall(
            "SELECT extension, name, realm, ha1_md5, ha1_sha256 FROM users ORDER BY extension"
        )
        return [User(*row) for row in rows]

    # call detail records

    async def add_cdr(self, ended: CallEnded) -> None:
        answer = ended.answered
        values = (
            ended.call_id, ended.caller, ended.callee, ended.started, answer, ended.time,
            ended.time - ended.started, 0.0 if answer is None else ended.time - answer,
            ended.disposition, ended.status, ended.cause, ended.hangup_by,
            ended.caller_loss, ended.caller_jitter_ms, ended.callee_loss, ended.callee_jitter_ms,
            ended.dialled, ended.route, ended.trunk, ended.answered_by, json.dumps(ended.legs),
        )  # fmt: skip
        marks = ", ".join("?" * len(values))
        await self._write([(f"INSERT OR REPLACE INTO cdr ({_CDR_COLUMNS}) VALUES ({marks})",
                            values)])  # fmt: skip

    async def cdrs(self, since: float = 0.0) -> list[dict[str, object]]:
        rows = await self._db.execute_fetchall(
            f"SELECT {_CDR_COLUMNS} FROM cdr WHERE start >= ? ORDER BY start", (since,)
        )
        names = [c.strip() for c in _CDR_COLUMNS.split(",")]
        records = [dict(zip(names, row, strict=True)) for row in rows]
        for record in records:
            record["legs"] = json.loads(str(record["legs"]))
        return records

    # recordings

    async def add_recording(self, started: RecordingStarted) -> None:
        values = (
            started.recording_id, started.call_id, started.path, started.format, started.time,
            started.retention_days, started.by,
        )  # fmt: skip
        await self._write([(
            "INSERT OR IGNORE INTO recordings (id, call_id, path, format, started, "
            "retention_days, started_by) VALUES (?, ?, ?, ?, ?, ?, ?)", values,
        )])  # fmt: skip

    async def finish_recording(
        self, recording_id: str, ended: float, duration: float, paused_seconds: float
    ) -> None:
        await self._write([(
            "UPDATE recordings SET ended = ?, duration = ?, paused_seconds = ? WHERE id = ?",
            (ended, duration, paused_seconds, recording_id),
        )])  # fmt: skip

    async def recordings(
        self, since: float = 0.0, call_id: str | None = None, deleted: bool = False
    ) -> list[dict[str, object]]:
        where = "started >= ?" + ("" if deleted else " AND deleted IS NULL")
        params: tuple[object, ...] = (since,)
        if call_id is not None:
            where += " AND (call_id = ? OR id = ?)"
            params += (call_id, call_id)
        rows = await self._db.execute_fetchall(
            f"SELECT {_RECORDING_COLUMNS} FROM recordings WHERE {where} ORDER BY started", params
        )
        names = [c.strip() for c in _RECORDING_COLUMNS.split(",")]
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def unfinished_recordings(self) -> list[dict[str, object]]:
        """Recordings a stopped process left open (it crashed or was killed mid-call)."""
        rows = await self._db.execute_fetchall(
            f"SELECT {_RECORDING_COLUMNS} FROM recordings WHERE ended IS NULL AND deleted IS NULL"
        )
        names = [c.strip() for c in _RECORDING_COLUMNS.split(",")]
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def expired_recordings(self, now: float, default_days: float) -> list[dict[str, object]]:
        """Finished recordings past their retention (their own days, else `default_days`;
        0 keeps for ever)."""
        rows = await self._db.execute_fetchall(
            f"SELECT {_RECORDING_COLUMNS} FROM recordings WHERE deleted IS NULL "
            "AND ended IS NOT NULL AND "
            "(CASE WHEN retention_days > 0 THEN retention_days ELSE ? END) > 0 AND "
            "started + 86400 * (CASE WHEN retention_days > 0 THEN retention_days ELSE ? END) < ?",
            (default_days, default_days, now),
        )
        names = [c.strip() for c in _RECORDING_COLUMNS.split(",")]
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def mark_recording_deleted(self, recording_id: str, now: float) -> None:
        await self._write([("UPDATE recordings SET deleted = ? WHERE id = ?", (now, recording_id))])

    # voicemail

    async def mailbox_pin(self, box: str) -> str | None:
        """The PIN set for `box` (None: none set here)."""
        rows = await self._db.execute_fetchall("SELECT pin FROM mailboxes WHERE box = ?", (box,))
        row = next(iter(rows), None)
        return str(row[0]) if row else None

    async def set_mailbox_pin(self, box: str, pin: str, now: float) -> None:
        await self._write([(
            "INSERT INTO mailboxes (box, pin, changed) VALUES (?, ?, ?) "
            "ON CONFLICT (box) DO UPDATE SET pin = excluded.pin, changed = excluded.changed",
            (box, pin, now),
        )])  # fmt: skip

    async def add_voicemail(self, message: dict[str, object]) -> None:
        names = ", ".join(message)
        marks = ", ".join("?" * len(message))
        await self._write(
            [(f"INSERT INTO voicemail ({names}) VALUES ({marks})", tuple(message.values()))]
        )

    async def voicemails(
        self, box: str | None = None, message_id: str | None = None
    ) -> list[dict[str, object]]:
        """Messages (of `box`, or the one `message_id`): new first, then saved; in each,
        urgent ones first, then oldest first. `urgent` is a bool."""
        conditions, params = ["1"], []
        if box is not None:
            conditions.append("box = ?")
            params.append(box)
        if message_id is not None:
            conditions.append("id = ?")
            params.append(message_id)
        rows = await self._db.execute_fetchall(
            f"SELECT {_VOICEMAIL_COLUMNS} FROM voicemail WHERE {' AND '.join(conditions)} "
            "ORDER BY box, folder != 'new', NOT urgent, received",
            params,
        )
        names = [c.strip() for c in _VOICEMAIL_COLUMNS.split(",")]
        messages = [dict(zip(names, row, strict=True)) for row in rows]
        for message in messages:
            message["urgent"] = bool(message["urgent"])
        return messages

    async def voicemail_counts(self, box: str) -> VoicemailCounts:
        """How many messages `box` holds, by folder and urgency."""
        rows = await self._db.execute_fetchall(
            "SELECT TOTAL(folder = 'new'), TOTAL(folder != 'new'), "
            "TOTAL(folder = 'new' AND urgent), TOTAL(folder != 'new' AND urgent) "
            "FROM voicemail WHERE box = ?",
            (box,),
        )
        [counts] = rows
        return VoicemailCounts(*(int(n) for n in counts))

    async def set_voicemail_folder(self, message_id: str, folder: str) -> None:
        await self._write([("UPDATE voicemail SET folder = ? WHERE id = ?", (folder, message_id))])

    async def delete_voicemail(self, message_id: str) -> bool:
        counts = await self._write([("DELETE FROM voicemail WHERE id = ?", (message_id,))])
        return counts[0] > 0

    # MWI subscriptions

    async def mwi_subscriptions(self) -> list[tuple[tuple[str, str, str], float, str]]:
        """Every stored subscription: its dialog ID (remote tag "" for none), when it
        expires, its state."""
        rows = await self._db.execute_fetchall(
            "SELECT call_id, local_tag, remote_tag, expires_at, state FROM mwi_subscriptions"
        )
        return [((str(r[0]), str(r[1]), str(r[2])), float(r[3]), str(r[4])) for r in rows]

    async def write_mwi_subscriptions(
        self,
        saved: Iterable[tuple[tuple[str, str, str], float, str]],
        deleted: Iterable[tuple[str, str, str]],
    ) -> None:
        """Insert or replace `saved` (as `mwi_subscriptions` gives them) and remove
        `deleted`, in one transaction."""
        await self._write([
            *((
                "INSERT OR REPLACE INTO mwi_subscriptions "
                "(call_id, local_tag, remote_tag, expires_at, state) VALUES (?, ?, ?, ?, ?)",
                (*key, expires_at, state),
            ) for key, expires_at, state in saved),
            *((
                "DELETE FROM mwi_subscriptions "
                "WHERE call_id = ? AND local_tag = ? AND remote_tag = ?", key,
            ) for key in deleted),
        ])  # fmt: skip

    async def clear_mwi_subscriptions(self) -> None:
        await self._write([("DELETE FROM mwi_subscriptions", ())])

    # the ACD: queues, agents, the queue log

    async def add_queue(self, spec: QueueSpec, now: float) -> None:
        values = _queue_row(spec)
        marks = ", ".join("?" * (len(values) + 1))
        try:
            await self._write([(
                f"INSERT INTO queues ({_QUEUE_COLUMNS}, created) VALUES ({marks})",
                (*values, now),
            )])  # fmt: skip
        except aiosqlite.IntegrityError as exc:
            raise await self._queue_conflict(spec, exc) from None

    async def update_queue(self, spec: QueueSpec) -> None:
        """Replace a queue's settings (its name stays the key)."""
        values = _queue_row(spec)
        assignments = ", ".join(f"{name} = ?" for name in _QUEUE_NAMES[1:])
        try:
            [changed] = await self._write([(
                f"UPDATE queues SET {assignments} WHERE name = ?", (*values[1:], spec.name),
            )])  # fmt: skip
        except aiosqlite.IntegrityError as exc:
            raise await self._queue_conflict(spec, exc) from None
        if changed == 0:
            raise StoreError(f"no queue {spec.name}")

    async def _queue_conflict(self, spec: QueueSpec, exc: Exception) -> StoreError:
        if "queues.number" in str(exc):
            rows = await self._db.execute_fetchall(
                "SELECT name FROM queues WHERE number = ?", (spec.number,)
            )
            owner = next(iter(rows), None)
            which = f" by queue {owner[0]}" if owner else ""
            return StoreError(f"number {spec.number} is already used{which}")
        return StoreError(f"queue {spec.name} already exists")

    async def remove_queue(self, name: str) -> None:
        [removed] = await self._write([("DELETE FROM queues WHERE name = ?", (name,))])
        if removed == 0:
            raise StoreError(f"no queue {name}")

    async def queues(self) -> list[QueueSpec]:
        rows = await self._db.execute_fetchall(f"SELECT {_QUEUE_COLUMNS} FROM queues ORDER BY name")
        return [_queue_from_row(row) for row in rows]

    async def add_agent(self, spec: AgentSpec, now: float) -> None:
        try:
            await self._write([(
                "INSERT INTO agents (id, extension, name, skills, created) VALUES (?, ?, ?, ?, ?)",
                (spec.id, spec.extension, spec.name, format_skills(spec.skills), now),
            )])  # fmt: skip
        except aiosqlite.IntegrityError:
            raise StoreError(f"agent {spec.id} already exists") from None

    async def update_agent(self, spec: AgentSpec) -> None:
        """Change an agent's extension, name and skills; their presence stays."""
        [changed] = await self._write([(
            "UPDATE agents SET extension = ?, name = ?, skills = ? WHERE id = ?",
            (spec.extension, spec.name, format_skills(spec.skills), spec.id),
        )])  # fmt: skip
        if changed == 0:
            raise StoreError(f"no agent {spec.id}")

    async def remove_agent(self, agent_id: str) -> None:
        [removed] = await self._write([("DELETE FROM agents WHERE id = ?", (agent_id,))])
        if removed == 0:
            raise StoreError(f"no agent {agent_id}")

    async def agents(self) -> list[AgentRecord]:
        rows = await self._db.execute_fetchall(
            "SELECT id, extension, name, skills, state, reason, queues FROM agents ORDER BY id"
        )
        return [
            AgentRecord(
                AgentSpec(agent_id, extension, name, parse_skills(skills)),
                AgentState(state),
                reason,
                tuple(json.loads(queues)),
            )
            for agent_id, extension, name, skills, state, reason, queues in rows
        ]

    async def set_agent_presence(
        self, agent_id: str, state: AgentState | str, reason: str, queues: Sequence[str]
    ) -> None:
        """Remember where an agent is (the exchange restores it when it starts)."""
        try:
            value = AgentState(state).value
        except ValueError:
            raise StoreError(f"agent {agent_id}: no agent state {state!r}") from None
        [changed] = await self._write([(
            "UPDATE agents SET state = ?, reason = ?, queues = ? WHERE id = ?",
            (value, reason, json.dumps(list(queues)), agent_id),
        )])  # fmt: skip
        if changed == 0:
            raise StoreError(f"no agent {agent_id}")

    async def log_outputs(self, outputs: Sequence[Output]) -> None:
        """Append engine outputs to the queue log, all in one transaction."""
        if not outputs:
            return
        rows = [_log_row(output) for output in outputs]
        async with self._writing:
            try:
                await self._db.executemany(
                    "INSERT INTO queue_log (time, queue, call_id, agent, event, data) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                await self._db.commit()
            except BaseException:
                await self._db.rollback()
                raise

    async def queue_log(
        self, since: float = 0.0, queue: str | None = None, call_id: str | None = None
    ) -> list[Output]:
        """The outputs logged at or after `since`, in the order they were logged."""
        params: list[object]
        where, params = "time >= ?", [since]
        if queue is not None:
            where += " AND queue = ?"
            params.append(queue)
        if call_id is not None:
            where += " AND call_id = ?"
            params.append(call_id)
        rows = await self._db.execute_fetchall(
            "SELECT id, time, queue, call_id, agent, event, data FROM queue_log "
            f"WHERE {where} ORDER BY id",
            params,
        )
        return [_output_from_row(row) for row in rows]

    # bindings

    async def bindings(self) -> list[Binding]:
        rows = await self._db.execute_fetchall(
            f"SELECT {_BINDING_COLUMNS} FROM bindings ORDER BY aor, contact"
        )
        return [_binding_from_row(row) for row in rows]

    async def purge_expired(self, now: float) -> int:
        [purged] = await self._write([("DELETE FROM bindings WHERE expires_at <= ?", (now,))])
        return purged

    def save_binding(self, binding: Binding) -> asyncio.Future[None]:
        """Queue an insert-or-replace; the future resolves once it is committed."""
        return self._queue(binding, None)

    def delete_binding(self, aor: str, contact: str) -> asyncio.Future[None]:
        return self._queue(None, (aor, contact))

    def _queue(self, binding: Binding | None, key: tuple[str, str] | None) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((binding, key, future))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                # The last change queued for a contact is the one that counts.
                final: dict[tuple[str, str], Binding | None] = {}
                for binding, key, _ in batch:
                    final[(binding.aor, binding.contact) if binding else key] = binding  # type: ignore[index]
                error: BaseException | None = None
                await self._writing.acquire()
                try:
                    await self._db.executemany(
                        f"INSERT OR REPLACE INTO bindings ({_BINDING_COLUMNS}) "
                        f"VALUES ({', '.join('?' * 14)})",
                        [_binding_row(b) for b in final.values() if b is not None],
                    )
                    await self._db.executemany(
                        "DELETE FROM bindings WHERE aor = ? AND contact = ?",
                        [k for k, b in final.items() if b is None],
                    )
                    await self._db.commit()
                except Exception as exc:  # the database refused: every waiter learns it
                    error = exc
                    with contextlib.suppress(Exception):
                        await self._db.rollback()
                finally:
                    self._writing.release()
                for _, _, future in batch:
                    if future.done():
                        continue
                    if error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(StoreError(f"binding write failed: {error}"))
        finally:
            self._flusher = None
