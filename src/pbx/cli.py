"""The `pbx` command (operator contract: see README and ../shared/DESIGN.md)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from acd.model import (
    AcdError,
    AgentSpec,
    AgentState,
    OverflowAction,
    OverflowRule,
    QueueSpec,
    Skills,
    Strategy,
    format_skills,
    parse_skills,
)
from acd.stats import Statistics
from media.recording import audio_duration
from pbx import __version__, control
from pbx.config import Config, answered_by_config, load
from pbx.control import ControlError
from pbx.errors import PbxError
from pbx.sip.digest import ha1
from pbx.store import AgentRecord, Binding, Store, User

T = TypeVar("T")
_PASSWORD_ALPHABET = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def _run(work: Callable[[Store], Awaitable[T]], config: Config) -> T:
    """Run one piece of database work; a PbxError becomes a clear message and exit code 1."""

    async def main() -> T:
        store = await Store.open(config.database)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except PbxError as exc:
        raise click.ClickException(str(exc)) from None


class _Context:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            if self.config_path is None:
                raise click.UsageError("give the configuration file: pbx -c CONFIG ...")
            try:
                self._config = load(self.config_path)
            except PbxError as exc:
                raise click.ClickException(str(exc)) from None
        return self._config


pass_ctx = click.make_pass_decorator(_Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--config",
    "config_path",
    envvar="PBX_CONFIG",
    type=click.Path(dir_okay=False),
    help="The TOML configuration file (or $PBX_CONFIG).",
)
@click.version_option(__version__, prog_name="pbx")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """pbx: a SIP softswitch with a built-in call-center ACD."""
    ctx.obj = _Context(config_path)


@main.command()
@pass_ctx
def serve(ctx: _Context) -> None:
    """Run the exchange in the foreground until SIGINT or SIGTERM."""
    config = ctx.config
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from pbx.server import serve as run_server

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_server(config, stop)

    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(run())
    except PbxError as exc:
        raise click.ClickException(str(exc)) from None
    logging.getLogger("pbx").info("stopped")


@main.group()
def user() -> None:
    """Manage users (extensions)."""


def _user_record(config: Config, extension: str, name: str, password: str) -> User:
    realm = config.realm
    return User(
        extension,
        name,
        realm,
        ha1("MD5", extension, realm, password),
        ha1("SHA-256", extension, realm, password),
    )


def _password_argument(password: str | None) -> str | None:
    """`--password -` reads one line from standard input: argv is visible to every user."""
    if password == "-":
        return sys.stdin.readline().rstrip("\r\n")
    return password


def _check_extension(extension: str) -> str:
    if not extension or not all(c.isalnum() or c in "-_.+" for c in extension):
        raise click.BadParameter("use letters, digits and - _ . + only", param_hint="EXT")
    return extension


@user.command("add")
@click.argument("extension")
@click.option(
    "--password",
    help="SIP password ('-' reads it from standard input, out of sight of ps); "
    "a random one is made and printed if omitted.",
)
@click.option("--name", default="", help="Display name.")
@pass_ctx
def user_add(ctx: _Context, extension: str, password: str | None, name: str) -> None:
    """Add a user that phones register as."""
    _check_extension(extension)
    password = _password_argument(password)
    generated = password is None
    # Letters and digits only: easy to type on a desk phone's keypad, never starts with '-'.
    password = password or "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(14))
    record = _user_record(ctx.config, extension, name, password)

    async def add(store: Store) -> None:
        problem = await _number_taken(store, ctx.config, extension)
        if problem is not None:  # the phone would never ring: the dialplan answers first
            raise click.BadParameter(problem, param_hint="EXT")
        await store.add_user(record, time.time())

    _run(add, ctx.config)
    if generated:
        click.echo(f"{extension}\t{password}")
    else:
        click.echo(f"added {extension}")


@user.command("passwd")
@click.argument("extension")
@click.option(
    "--password", required=True, help="The new SIP password ('-' reads it from standard input)."
)
@pass_ctx
def user_passwd(ctx: _Context, extension: str, password: str) -> None:
    """Change a user's password."""
    password = _password_argument(password) or ""
    if not password:
        raise click.BadParameter("the password is empty", param_hint="--password")
    record = _user_record(ctx.config, extension, "", password)
    _run(
        lambda s: s.update_password(extension, record.realm, record.ha1_md5, record.ha1_sha256),
        ctx.config,
    )
    click.echo(f"password of {extension} changed")


@user.command("remove")
@click.argument("extension")
@pass_ctx
def user_remove(ctx: _Context, extension: str) -> None:
    """Remove a user and its registrations."""
    _run(lambda s: s.remove_user(extension), ctx.config)
    click.echo(f"removed {extension}")


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
@pass_ctx
def user_list(ctx: _Context, as_json: bool) -> None:
    """List users."""
    users = _run(lambda s: s.users(), ctx.config)
    rows = [{"extension": u.extension, "name": u.name, "realm": u.realm} for u in users]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _table(rows, ["extension", "name", "realm"])


def _registration_row(b: Binding, now: float) -> dict[str, Any]:
    return {
        "aor": b.aor,
        "contact": b.contact,
        "expires_in": max(0, round(b.expires_at - now)),
        "transport": b.transport,
        "source": b.source,
        "user_agent": b.user_agent,
        "reachable": b.reachable,
        "rtt_ms": None if b.rtt_ms is None else round(b.rtt_ms, 1),
        "status": {True: "reachable", False: "unreachable", None: "unknown"}[b.reachable],
        "registered_at": b.registered_at,
        "q": b.q,
        "instance": b.instance,
    }


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
@pass_ctx
def registrations(ctx: _Context, as_json: bool) -> None:
    """List current registrations (bindings)."""
    now = time.time()
    bindings = _run(lambda s: s.bindings(), ctx.config)
    rows = [_registration_row(b, now) for b in bindings if b.expires_at > now]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _table(rows, ["aor", "contact", "expires_in", "transport", "source", "status", "user_agent"])


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[str(r[c]) if r[c] is not None else "-" for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _ask(ctx: _Context, command: str) -> Any:
    """One command to the running server; its errors become a clear message."""
    try:
        return control.call(ctx.config.control_socket, command)
    except PbxError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@pass_ctx
def status(ctx: _Context, as_json: bool) -> None:
    """Live state of the running server: listeners, counters, registrations."""
    result = _ask(ctx, "status")
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"pbx {result['version']} pid {result['pid']}, up {result['uptime']} s")
    click.echo("listening: " + ", ".join(result["listen"]))
    click.echo(
        f"users: {result['users']}, bindings: {result['bindings']} "
        f"({result['reachable']} reachable)"
    )
    for key, value in result["sip"].items():
        click.echo(f"sip.{key}: {value}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
@pass_ctx
def calls(ctx: _Context, as_json: bool) -> None:
    """Calls in progress on the running server."""
    rows = _ask(ctx, "calls")
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _table(rows, ["call_id", "caller", "callee", "state", "duration", "legs", "slot"])


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
@pass_ctx
def trunks(ctx: _Context, as_json: bool) -> None:
    """SIP trunks of the running server and their registration with the provider."""
    rows = _ask(ctx, "trunks")
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        parts = [str(p) for p in (row["last_status"], row["last_reason"]) if p not in (None, "")]
        row["last_status"] = " ".join(parts) or None
    _table(rows, ["name", "host", "port", "transport", "state", "last_status", "expires_in"])


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
@click.option(
    "--since",
    default=None,
    help="Only calls started at or after this: a Unix time, an ISO date/time, or -24h / -30m.",
)
@pass_ctx
def cdr(ctx: _Context, as_json: bool, since: str | None) -> None:
    """Call detail records, one per finished call, oldest first."""
    start = _parse_since(since) if since else 0.0
    rows = _run(lambda s: s.cdrs(start), ctx.config)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        started, billsec = row["start"], row["billsec"]
        assert isinstance(started, float)
        assert isinstance(billsec, float)
        row["start"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
        row["billsec"] = round(billsec, 1)
    columns = ["start", "caller", "callee", "answered_by", "disposition", "billsec", "hangup_by"]
    _table(rows, [*columns, "cause"])


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
@click.option("--since", default=None, help="Only recordings started at or after this (as cdr).")
@click.option("--call", "call_id", default=None, help="Only the recordings of this call.")
@click.pass_context
def recordings(ctx: click.Context, as_json: bool, since: str | None, call_id: str | None) -> None:
    """Call recordings, oldest first (and, as subcommands, export and control of live
    ones). A recording still being made shows the duration written so far."""
    if ctx.invoked_subcommand is not None:
        return
    config = ctx.ensure_object(_Context).config
    start = _parse_since(since) if since else 0.0
    rows = _run(lambda s: s.recordings(start, call_id), config)
    for row in rows:
        if row["ended"] is None:  # being recorded: what the file holds so far
            row["duration"] = audio_duration(Path(str(row["path"]))) or 0.0
        row["duration"] = round(float(row["duration"]), 2)  # type: ignore[arg-type]
        row["live"] = row["ended"] is None
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        started = row["started"]
        assert isinstance(started, float)
        row["started"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
    _table(rows, ["started", "call_id", "duration", "paused_seconds", "live", "path"])


@recordings.command("export")
@click.argument("which")
@click.argument("destination", type=click.Path(file_okay=True, dir_okay=True))
@pass_ctx
def recordings_export(ctx: _Context, which: str, destination: str) -> None:
    """Copy the recordings of a call (WHICH: its call id, or a recording id) to
    DESTINATION: a directory (made if needed), or a file name for a single recording."""
    rows = _run(lambda s: s.recordings(0.0, which), ctx.config)
    if not rows:
        raise click.ClickException(f"no recording of {which!r} (see `pbx recordings`)")
    target = Path(destination)
    if len(rows) > 1 or target.is_dir() or destination.endswith(os.sep):
        target.mkdir(parents=True, exist_ok=True)
        pairs = [(Path(str(r["path"])), target / Path(str(r["path"])).name) for r in rows]
    else:
        pairs = [(Path(str(rows[0]["path"])), target)]
    for source, dest in pairs:
        try:
            shutil.copyfile(source, dest)
        except OSError as exc:
            raise click.ClickException(f"cannot copy {source}: {exc.strerror}") from None
        click.echo(str(dest))


def _control_action(
    command: str, action: str, doc: str, *arguments: str, negative: bool = False
) -> click.Command:
    """A subcommand `action ARGUMENTS...` that sends `command` with them to the running
    server and prints its JSON reply (`negative`: an argument may be "-12", not an
    option)."""

    @pass_ctx
    def run(ctx: _Context, /, **values: str) -> None:
        params: dict[str, Any] = {"action": action, **values}
        try:
            result = control.call(ctx.config.control_socket, command, **params)
        except PbxError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(json.dumps(result))

    run.__doc__ = doc
    for name in reversed(arguments):
        run = click.argument(name)(run)
    settings = {"ignore_unknown_options": True} if negative else {}
    return click.command(action, context_settings=settings)(run)


_RECORDING_ACTIONS = {
    "start": "Start recording a live call (as the toggle feature code does).",
    "stop": "Stop recording a live call; the policy does not start it again.",
    "pause": "Pause a live call's recording: silence until resumed (card numbers...).",
    "resume": "Resume a paused recording.",
}
for _action, _doc in _RECORDING_ACTIONS.items():
    recordings.add_command(_control_action("recording", _action, _doc, "call_id"))


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
@click.pass_context
def conferences(ctx: click.Context, as_json: bool) -> None:
    """Conference rooms of the running server and who is in them (and, as subcommands,
    mute, unmute and kick)."""
    if ctx.invoked_subcommand is not None:
        return
    rows = _ask(ctx.ensure_object(_Context), "conferences")
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        members = row.pop("members")
        row["members"] = (
            ", ".join(m["party"] + (" (muted)" if m["muted"] else "") for m in members) or "-"
        )
    _table(rows, ["number", "name", "pin", "max_members", "members"])


_CONFERENCE_ACTIONS = {
    "mute": "Mute WHO (an extension, a call id, or all) in conference ROOM.",
    "unmute": "Let WHO be heard again in conference ROOM.",
    "kick": "Hang up WHO's call in conference ROOM.",
}
for _action, _doc in _CONFERENCE_ACTIONS.items():
    conferences.add_command(_control_action("conference", _action, _doc, "room", "who"))
_GAIN_DOC = "How loud WHO is to the others in conference ROOM: DB from -30 to 18 (0: as is)."
conferences.add_command(
    _control_action("conference", "gain", _GAIN_DOC, "room", "who", "db", negative=True)
)


def _parse_since(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text.startswith("-") and text[-1] in units:
            return time.time() - float(text[1:-1]) * units[text[-1]]
        try:
            return float(text)
        except ValueError:
            return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise click.BadParameter(
            "use a Unix time, an ISO date/time or -24h, -30m, -7d", param_hint="--since"
        ) from None


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, for scripts.")
@pass_ctx
def events(ctx: _Context, as_json: bool) -> None:
    """Follow the live event bus of the running server until Ctrl-C."""
    try:
        for event in control.follow(ctx.config.control_socket, "events"):
            if as_json:
                click.echo(json.dumps(event))
            else:
                stamp = time.strftime("%H:%M:%S", time.localtime(event.pop("time")))
                kind = event.pop("type")
                click.echo(f"{stamp} {kind} " + " ".join(f"{k}={v}" for k, v in event.items()))
    except KeyboardInterrupt:
        pass
    except PbxError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@pass_ctx
def reload(ctx: _Context, as_json: bool) -> None:
    """Import the IVR flow modules afresh, without dropping calls (a call in a flow
    finishes it as it was). A module that fails keeps its old flows: exit code 1."""
    answer = _ask(ctx, "reload")
    if as_json:
        click.echo(json.dumps(answer, indent=2))
    else:
        click.echo(f"flows: {', '.join(answer['flows']) or '(none)'}")
        for error in answer["errors"]:
            click.echo(f"error: {error}", err=True)
    if answer["errors"]:
        raise SystemExit(1)


# ---- voicemail: messages and mailboxes (from the database; no server needed)


def _mailbox_changed(ctx: _Context, box: str) -> None:
    """Tell a running server that `box` changed (its phones' MWI); none running is fine."""
    with contextlib.suppress(PbxError):
        control.call(ctx.config.control_socket, "mailbox_changed", box=box)


def _message_rows(config: Config, box: str | None) -> list[dict[str, Any]]:
    rows = _run(lambda s: s.voicemails(box), config)
    return [dict(r) for r in rows]


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
@click.option("--box", default=None, help="Only this mailbox's messages.")
@click.pass_context
def voicemail(ctx: click.Context, as_json: bool, box: str | None) -> None:
    """Voicemail messages, new first (and, as subcommands, mailboxes, PINs, greetings)."""
    if ctx.invoked_subcommand is not None:
        return
    config = ctx.ensure_object(_Context).config
    rows = _message_rows(config, box)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        row["received"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["received"]))
        row["caller"] = (
            f"{row['caller']} ({row['caller_name']})" if row["caller_name"] else (row["caller"])
        )
        row["urgent"] = "yes" if row["urgent"] else None
    _table(rows, ["id", "box", "folder", "urgent", "received", "caller", "seconds"])


def _boxes(config: Config) -> list[str]:
    boxes = [m.box for m in config.mailboxes]
    if config.voicemail.extensions:
        users = _run(lambda s: s.users(), config)
        boxes += [u.extension for u in users if u.extension not in boxes]
    return boxes


def _check_box(config: Config, box: str) -> str:
    if box not in _boxes(config):
        raise click.BadParameter(
            f"no mailbox {box!r} ([[mailbox]] tables, and extensions with "
            "[voicemail] extensions = true; `pbx voicemail boxes` lists them)",
            param_hint="BOX",
        )
    return box


@voicemail.command("boxes")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
@pass_ctx
def voicemail_boxes(ctx: _Context, as_json: bool) -> None:
    """Every mailbox: its messages (new, of them urgent, saved), whether it has a PIN and
    greetings."""
    from ivr.voicemail import Greeting
    from pbx.voicemail import greeting_path

    config = ctx.config
    boxes = _boxes(config)

    async def gather(store: Store) -> list[dict[str, Any]]:
        rows = []
        for box in boxes:
            counts = await store.voicemail_counts(box)
            stored = await store.mailbox_pin(box)
            configured = config.mailbox(box)
            pin = stored if stored is not None else configured.pin if configured else ""
            rows.append({
                "box": box, "name": configured.name if configured else "",
                "new": counts.new, "urgent": counts.urgent_new, "saved": counts.saved,
                "pin": bool(pin),
                "greetings": [g.value for g in Greeting if greeting_path(config, box, g)],
            })  # fmt: skip
        return rows

    rows = _run(gather, config)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        row["greetings"] = ",".join(row["greetings"]) or None
        row["name"] = row["name"] or None
    _table(rows, ["box", "name", "new", "urgent", "saved", "pin", "greetings"])


@voicemail.command("pin")
@click.argument("box")
@click.argument("pin")
@pass_ctx
def voicemail_pin(ctx: _Context, box: str, pin: str) -> None:
    """Set mailbox BOX's PIN for listening by phone (4 to 16 digits)."""
    from ivr.voicemail import valid_pin

    if not valid_pin(pin):
        raise click.BadParameter("expected 4 to 16 digits", param_hint="PIN")
    config = ctx.config
    _check_box(config, box)
    _run(lambda s: s.set_mailbox_pin(box, pin, time.time()), config)
    click.echo(f"mailbox {box}: PIN set")


def _one_message(config: Config, message_id: str) -> dict[str, Any]:
    rows = _run(lambda s: s.voicemails(message_id=message_id), config)
    if not rows:
        raise click.ClickException(f"no message {message_id!r} (see `pbx voicemail`)")
    return dict(rows[0])


@voicemail.command("delete")
@click.argument("message_id")
@pass_ctx
def voicemail_delete(ctx: _Context, message_id: str) -> None:
    """Delete a message (its row and its file)."""
    config = ctx.config
    row = _one_message(config, message_id)
    _run(lambda s: s.delete_voicemail(message_id), config)
    Path(str(row["path"])).unlink(missing_ok=True)
    _mailbox_changed(ctx, str(row["box"]))
    click.echo(f"deleted {message_id}")


@voicemail.command("mark")
@click.argument("message_id")
@click.argument("folder", type=click.Choice(["new", "saved"]))
@pass_ctx
def voicemail_mark(ctx: _Context, message_id: str, folder: str) -> None:
    """Mark a message new (its box's phones show it waiting) or saved."""
    config = ctx.config
    row = _one_message(config, message_id)
    _run(lambda s: s.set_voicemail_folder(message_id, folder), config)
    _mailbox_changed(ctx, str(row["box"]))
    click.echo(f"{message_id}: {folder}")


@voicemail.command("export")
@click.argument("message_id")
@click.argument("destination", type=click.Path(file_okay=True, dir_okay=True))
@pass_ctx
def voicemail_export(ctx: _Context, message_id: str, destination: str) -> None:
    """Copy a message's WAV file to DESTINATION (a file, or a directory)."""
    row = _one_message(ctx.config, message_id)
    source = Path(str(row["path"]))
    target = Path(destination)
    if target.is_dir():
        target = target / source.name
    try:
        shutil.copyfile(source, target)
    except OSError as exc:
        raise click.ClickException(f"cannot copy {source}: {exc.strerror}") from None
    click.echo(str(target))


@voicemail.command("greeting")
@click.argument("box")
@click.argument("kind", type=click.Choice(["unavailable", "busy"]))
@click.argument("audio", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--remove", is_flag=True, help="Go back to the standard greeting.")
@pass_ctx
def voicemail_greeting(ctx: _Context, box: str, kind: str, audio: str | None, remove: bool) -> None:
    """Set mailbox BOX's KIND greeting from AUDIO (WAV, FLAC or OGG of any rate, made
    8 kHz mono), or --remove it."""
    from ivr.voicemail import Greeting
    from media.prompts import RATE, load_audio
    from pbx.voicemail import box_directory, write_greeting

    config = ctx.config
    _check_box(config, box)
    if remove:
        (box_directory(config, box) / f"greeting-{kind}.wav").unlink(missing_ok=True)
        click.echo(f"mailbox {box}: standard {kind} greeting")
        return
    if audio is None:
        raise click.UsageError("give the AUDIO file, or --remove")
    try:
        samples = load_audio(Path(audio))
    except PbxError as exc:
        raise click.ClickException(str(exc)) from None
    target = write_greeting(config, box, Greeting(kind), samples)
    click.echo(f"mailbox {box}: {kind} greeting {target} ({len(samples) / RATE:.1f} s)")


# ---- prompts


@main.group()
def prompts() -> None:
    """Sound prompts for IVR flows."""


@prompts.command("tts")
@click.argument("text")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--voice", default="en-us", show_default=True, help="espeak-ng voice.")
@click.option("--speed", default=150, show_default=True, help="Words a minute.")
def prompts_tts(text: str, out: str, voice: str, speed: int) -> None:
    """Speak TEXT with espeak-ng into OUT, a prompt like the shipped ones (8 kHz mono
    16-bit WAV, level set, silence trimmed). Put it in an [ivr] prompts directory as
    NAME.wav and flows can play("NAME")."""
    import soundfile

    from media.prompts import RATE
    from media.speech import speak

    try:
        samples = speak(text, voice, speed)
    except PbxError as exc:
        raise click.ClickException(str(exc)) from None
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(target), samples, RATE, subtype="PCM_16", format="WAV")
    click.echo(f"{target}: {len(samples) / RATE:.2f} s")


@main.command("check-config")
@pass_ctx
def check_config(ctx: _Context) -> None:
    """Validate the configuration file and print what it means."""
    config = ctx.config
    click.echo(f"configuration {config.path} is valid")
    click.echo(f"data_dir: {config.data_dir}")
    click.echo("sip.listen: " + ", ".join(str(a) for a in config.sip.listen))
    click.echo(f"realm: {config.realm}")


# ---- the ACD: `pbx queue ...` and `pbx agent ...`
#
# Definitions (add, set, remove) always go to the database; a running server picks them up
# within a second, as it does for users. Presence and figures come from the running server
# when there is one; without one, from what the database remembers (`_ask_or_offline`).

_NOT_RUNNING = "pbx is not running"  # how control.call says that no server listens


def _ask_or_offline(
    ctx: _Context, command: str, offline: Callable[[], T], **params: Any
) -> tuple[Any, bool]:
    """Ask the running server; when none runs, `offline()` answers instead. Returns the
    answer and whether the server gave it. Any other failure is an error."""
    try:
        return control.call(ctx.config.control_socket, command, **params), True
    except ControlError as exc:
        if not str(exc).startswith(_NOT_RUNNING):
            raise click.ClickException(str(exc)) from None
    return offline(), False


def _check_name(value: str, hint: str) -> str:
    """Queue and agent names: they appear in targets like "queue:NAME", so no colons."""
    if not value or not all(c.isalnum() or c in "-_." for c in value):
        raise click.BadParameter("use letters, digits and - _ . only", param_hint=hint)
    return value


def _check_number(value: str, hint: str) -> str:
    if not value or not all(c.isalnum() or c in "*#+._-" for c in value):
        raise click.BadParameter(
            f"{value!r} is not a dialable number (digits, letters, * # + . _ -)", param_hint=hint
        )
    return value


def _skills_option(text: str, hint: str = "--skills") -> Skills:
    try:
        return parse_skills(text)
    except AcdError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


def _parse_overflow(text: str) -> OverflowRule:
    """`AFTER:ACTION[:TARGET[:SKILLS]]`, e.g. `30:relax::spanish:3`, `60:add-agents:billing`,
    `120:voicemail:refills`, `90:queue:nurse` (SKILLS may hold colons and commas)."""
    after_text, _, rest = text.partition(":")
    action_text, _, rest = rest.partition(":")
    target, _, skills_text = rest.partition(":")
    actions = ", ".join(a.value for a in OverflowAction)

    def bad(why: str) -> click.BadParameter:
        return click.BadParameter(
            f"{text!r}: {why} (AFTER:ACTION[:TARGET[:SKILLS]], ACTION one of {actions})",
            param_hint="--overflow",
        )

    try:
        after = float(after_text)
    except ValueError:
        raise bad(f"{after_text!r} is not a number of seconds") from None
    if not 0 <= after < float("inf"):
        raise bad("AFTER must be 0 or more seconds")
    try:
        action = OverflowAction(action_text)
    except ValueError:
        raise bad(f"no action {action_text!r}") from None
    if action is OverflowAction.RELAX_SKILLS:
        if target:
            raise bad("relax takes no target: write 30:relax::skill:level")
    elif not target:
        raise bad(f"{action.value} needs a target")
    elif skills_text:
        raise bad(f"only relax takes skills, not {action.value}")
    elif action is not OverflowAction.VOICEMAIL:
        _check_name(target, "--overflow")
    return OverflowRule(after, action, target, _skills_option(skills_text, "--overflow"))


def _format_overflow(rule: dict[str, Any]) -> str:
    """A rule as --overflow takes it (from its JSON form, live or offline)."""
    skills = format_skills(rule.get("skills") or {})
    parts = [f"{float(rule['after']):g}", str(rule["action"]), str(rule.get("target") or "")]
    return ":".join([*parts, skills] if skills else parts).rstrip(":")


async def _number_taken(store: Store, config: Config, number: str, queue: str = "") -> str | None:
    """Why `number` cannot be given to a user (or to queue `queue`): the configuration
    answers it first, or another queue has it. None if it is free of both."""
    problem = answered_by_config(config, number)
    for other in await store.queues():
        if problem is None and other.number == number and other.name != queue:
            problem = f"{number} is already the number of queue {other.name}"
    return problem


async def _check_queue(
    store: Store, config: Config, spec: QueueSpec, new_number: bool = True
) -> None:
    """Refuse a number something else answers; warn of overflow to queues not (yet) there."""
    if spec.number and new_number:
        number = spec.number
        problem = await _number_taken(store, config, number, queue=spec.name)
        if problem is None and number in {u.extension for u in await store.users()}:
            problem = f"{number} is already the extension of user {number}"
        if problem is not None:
            raise click.BadParameter(problem, param_hint="--number")
    names = {q.name for q in await store.queues()}
    for rule in spec.overflow:
        if rule.action not in (OverflowAction.ADD_AGENTS, OverflowAction.QUEUE):
            continue
        if rule.target == spec.name:
            raise click.BadParameter(
                f"queue {spec.name} cannot overflow to itself", param_hint="--overflow"
            )
        if rule.target not in names:
            click.echo(
                f"warning: overflow to queue {rule.target}, which does not exist yet", err=True
            )


_SECONDS = click.FloatRange(min=0)
_POSITIVE = click.FloatRange(min=0, min_open=True)
_COUNT = click.IntRange(min=0)
# (option, type, help); every one defaults to None: "not given" (queue set keeps the value).
_QUEUE_OPTIONS: list[tuple[str, Any, str]] = [
    ("--number", None, "What callers dial ('' for a queue reached only by the IVR or a hook)."),
    ("--skills", None, "Required skills with minimum levels: spanish:5,pharmacy:1 ('' none)."),
    ("--strategy", click.Choice([s.value for s in Strategy]), "How an agent is chosen."),
    ("--ring-timeout", _POSITIVE, "Seconds an offer rings an agent."),
    ("--wrap-up", _SECONDS, "Seconds after a call before the agent gets another."),
    ("--max-wait", _SECONDS, "Seconds before a caller leaves the queue (0: no limit)."),
    ("--max-length", _COUNT, "Callers beyond this many are refused (0: no limit)."),
    ("--announce-every", _SECONDS, "Seconds between position announcements (0: never)."),
    ("--ageing", _SECONDS, "Seconds of waiting one priority level is worth."),
    ("--service-level", _POSITIVE, "T of 'answered within T seconds', for statistics."),
    ("--join-empty/--no-join-empty", None, "Take callers while no agent could answer."),
    ("--leave-empty/--no-leave-empty", None, "Callers leave when the last agent goes."),
    ("--music", None, "Music-on-hold class: a directory under data_dir/moh ('' default)."),
    ("--record/--no-record", None, "Record the calls agents answer from this queue."),
    ("--callback-retries", _COUNT, "Tries to reach a caller who asked for a callback."),
    ("--callback-retry-delay", _SECONDS, "Seconds between callback tries."),
]


def _queue_options(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option("--no-overflow", is_flag=True, help="Remove every overflow rule.")(
        command
    )
    command = click.option(
        "--overflow",
        multiple=True,
        metavar="AFTER:ACTION[:TARGET[:SKILLS]]",
        help="An overflow rule; repeat for several (they replace the queue's rules): "
        "30:relax::spanish:3, 60:add-agents:billing, 120:voicemail:refills, 90:queue:nurse.",
    )(command)
    for name, kind, text in reversed(_QUEUE_OPTIONS):
        command = click.option(name, type=kind, default=None, help=text)(command)
    return command


def _queue_changes(options: dict[str, Any]) -> dict[str, Any]:
    """The QueueSpec fields the options given change, parsed and checked."""
    overflow, no_overflow = options.pop("overflow"), options.pop("no_overflow")
    changes = {k: v for k, v in options.items() if v is not None}
    if changes.get("number"):
        _check_number(changes["number"], "--number")
    if "skills" in changes:
        changes["skills"] = _skills_option(changes["skills"])
    if "strategy" in changes:
        changes["strategy"] = Strategy(changes["strategy"])
    if "music" in changes and (
        Path(changes["music"]).is_absolute() or ".." in Path(changes["music"]).parts
    ):
        raise click.BadParameter("a directory under data_dir/moh", param_hint="--music")
    if overflow and no_overflow:
        raise click.UsageError("--overflow and --no-overflow together")
    if overflow or no_overflow:
        changes["overflow"] = tuple(_parse_overflow(text) for text in overflow)
    return changes


def _queue_json(spec: QueueSpec) -> dict[str, Any]:
    """A queue's settings as the running server shows them too."""
    row = dataclasses.asdict(spec)
    row["strategy"] = spec.strategy.value
    row["overflow"] = [{**dataclasses.asdict(r), "action": r.action.value} for r in spec.overflow]
    return row


@main.group()
def queue() -> None:
    """Manage call-center queues (and, when the server runs, see them live)."""


@queue.command("add")
@click.argument("name")
@_queue_options
@pass_ctx
def queue_add(ctx: _Context, /, name: str, **options: Any) -> None:
    """Add a queue. Unset options keep their defaults (see README)."""
    _check_name(name, "NAME")
    spec = dataclasses.replace(QueueSpec(name), **_queue_changes(options))
    config = ctx.config

    async def work(store: Store) -> None:
        await _check_queue(store, config, spec)
        await store.add_queue(spec, time.time())

    _run(work, config)
    click.echo(f"added queue {name}" + (f" (number {spec.number})" if spec.number else ""))


@queue.command("set")
@click.argument("name")
@_queue_options
@pass_ctx
def queue_set(ctx: _Context, /, name: str, **options: Any) -> None:
    """Change a queue's settings: only the options given change."""
    changes = _queue_changes(options)
    if not changes:
        raise click.UsageError("nothing to change: give at least one option (see --help)")
    config = ctx.config

    async def work(store: Store) -> None:
        current = next((q for q in await store.queues() if q.name == name), None)
        if current is None:
            raise click.ClickException(f"no queue {name} (see `pbx queue list`)")
        spec = dataclasses.replace(current, **changes)
        await _check_queue(store, config, spec, new_number=spec.number != current.number)
        await store.update_queue(spec)

    _run(work, config)
    click.echo(f"changed queue {name}")


@queue.command("remove")
@click.argument("name")
@pass_ctx
def queue_remove(ctx: _Context, name: str) -> None:
    """Remove a queue (agents logged into it stay logged into their other queues)."""
    _run(lambda s: s.remove_queue(name), ctx.config)
    click.echo(f"removed queue {name}")


def _queue_table_row(row: dict[str, Any]) -> dict[str, Any]:
    stats = row.get("stats") or {}
    level = stats.get("service_level")
    return {
        "name": row["name"],
        "number": row["number"] or None,
        "strategy": row["strategy"],
        "skills": format_skills(row["skills"]) or None,
        "overflow": ", ".join(_format_overflow(r) for r in row["overflow"]) or None,
        "waiting": stats.get("waiting"),
        "agents": len(row["agents"]) if "agents" in row else None,
        "answered": stats.get("answered"),
        "abandoned": stats.get("abandoned"),
        "sl%": None if level is None else round(level, 1),
    }


@queue.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
@pass_ctx
def queue_list(ctx: _Context, as_json: bool) -> None:
    """List queues: with the running server's figures when it runs."""
    config = ctx.config

    def offline() -> list[dict[str, Any]]:
        return [_queue_json(spec) for spec in _run(lambda s: s.queues(), config)]

    rows, live = _ask_or_offline(ctx, "queues", offline)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    columns = ["name", "number", "strategy", "skills", "overflow"]
    if live:
        columns += ["waiting", "agents", "answered", "abandoned", "sl%"]
    _table([_queue_table_row(r) for r in rows], columns)


def _midnight(now: float) -> float:
    day = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp()


def _queue_from_log(config: Config, name: str, since: float) -> dict[str, Any]:
    """A queue's settings and figures as the database has them: statistics folded from the
    queue log since `since`, the agents whose remembered presence is in it."""

    async def work(store: Store) -> dict[str, Any]:
        specs = await store.queues()
        spec = next((q for q in specs if q.name == name), None)
        if spec is None:
            raise click.ClickException(f"no queue {name} (see `pbx queue list`)")
        stats = Statistics({q.name: q.service_level for q in specs})
        stats.feed_all(await store.queue_log(since=since))
        agents = [
            r.spec.id
            for r in await store.agents()
            if name in r.queues and r.state is not AgentState.LOGGED_OUT
        ]
        figures = stats.queue_stats(name, time.time()).to_json()
        return {**_queue_json(spec), "stats": figures, "waiting": [], "agents": agents}

    return _run(work, config)


def _shown(value: Any) -> str:
    """A figure for people: floats to one decimal, None as "-", counts by kind inline."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_shown(v)}" for k, v in value.items()) or "-"
    return str(value)


@queue.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@click.option(
    "--since",
    default=None,
    help="Figures from the queue log since this (as cdr --since), live server or not; "
    "by default the running server's, else the log since midnight.",
)
@pass_ctx
def queue_show(ctx: _Context, name: str, as_json: bool, since: str | None) -> None:
    """A queue's settings and statistics, who waits and which agents serve it."""
    config = ctx.config
    start = _parse_since(since) if since is not None else _midnight(time.time())
    if since is not None:
        row, live = _queue_from_log(config, name, start), False
    else:
        row, live = _ask_or_offline(
            ctx, "queue", lambda: _queue_from_log(config, name, start), name=name
        )
    if as_json:
        click.echo(json.dumps(row, indent=2))
        return
    stats, waiting = row.pop("stats"), row.pop("waiting")
    row["skills"] = format_skills(row["skills"]) or "-"
    row["overflow"] = ", ".join(_format_overflow(r) for r in row["overflow"]) or "-"
    row["agents"] = ", ".join(row["agents"]) or "-"
    for key, value in row.items():
        click.echo(f"{key}: {_shown(value)}")
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(start))
    click.echo(f"statistics ({'live' if live else 'from the queue log since ' + stamp}):")
    for key, value in stats.items():
        click.echo(f"  {key}: {_shown(value)}")
    if waiting:
        click.echo("waiting:")
        rows = [{**w, "agents": ", ".join(w.get("agents") or []) or None} for w in waiting]
        _table(rows, ["position", "call_id", "caller", "priority", "wait", "state", "agents"])


@queue.command("explain")
@click.argument("call_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
@pass_ctx
def queue_explain(ctx: _Context, call_id: str, as_json: bool) -> None:
    """Why a call in a queue went where it went, and why it waits if it does."""

    def offline() -> list[Any]:
        raise click.ClickException(
            f"{_NOT_RUNNING}: explain asks the running server's queues (pbx serve)"
        )

    lines, _ = _ask_or_offline(ctx, "explain", offline, call_id=call_id)
    if as_json:
        click.echo(json.dumps(lines, indent=2))
        return
    for line in lines:
        click.echo(line if isinstance(line, str) else json.dumps(line))


@main.group()
def agent() -> None:
    """Manage call-center agents and their presence (login, ready, pause, logout)."""


async def _check_agent(store: Store, spec: AgentSpec) -> None:
    """One agent per phone; a phone not (yet) a user is only a warning."""
    other = next(
        (r.spec.id for r in await store.agents()
         if r.spec.extension == spec.extension and r.spec.id != spec.id),
        None,
    )  # fmt: skip
    if other is not None:
        raise click.BadParameter(
            f"{spec.extension} is already the phone of agent {other}", param_hint="--extension"
        )
    if spec.extension not in {u.extension for u in await store.users()}:
        click.echo(
            f"warning: {spec.extension} is not a user yet; the agent's phone must be one "
            f"(pbx user add {spec.extension})",
            err=True,
        )


@agent.command("add")
@click.argument("agent_id", metavar="ID")
@click.option("--extension", required=True, help="The agent's phone (a user's extension).")
@click.option("--skills", default="", help="Skills with levels 1-10, e.g. spanish:7,pharmacy:5.")
@click.option("--name", default="", help="Display name.")
@pass_ctx
def agent_add(ctx: _Context, agent_id: str, extension: str, skills: str, name: str) -> None:
    """Add an agent (logged out)."""
    _check_name(agent_id, "ID")
    spec = AgentSpec(
        agent_id, _check_number(extension, "--extension"), name, _skills_option(skills)
    )

    async def work(store: Store) -> None:
        await _check_agent(store, spec)
        await store.add_agent(spec, time.time())

    _run(work, ctx.config)
    click.echo(f"added agent {agent_id} at {extension}")


async def _agent_record(store: Store, agent_id: str) -> AgentRecord:
    record = next((r for r in await store.agents() if r.spec.id == agent_id), None)
    if record is None:
        raise click.ClickException(f"no agent {agent_id} (see `pbx agent list`)")
    return record


@agent.command("set")
@click.argument("agent_id", metavar="ID")
@click.option("--extension", default=None, help="The agent's phone.")
@click.option("--skills", default=None, help="Skills with levels (replaces them all; '' none).")
@click.option("--name", default=None, help="Display name.")
@pass_ctx
def agent_set(
    ctx: _Context, agent_id: str, extension: str | None, skills: str | None, name: str | None
) -> None:
    """Change an agent's phone, skills or name (their presence stays)."""
    changes: dict[str, Any] = {}
    if extension is not None:
        changes["extension"] = _check_number(extension, "--extension")
    if skills is not None:
        changes["skills"] = _skills_option(skills)
    if name is not None:
        changes["name"] = name
    if not changes:
        raise click.UsageError("nothing to change: give --extension, --skills or --name")

    async def work(store: Store) -> None:
        spec = dataclasses.replace((await _agent_record(store, agent_id)).spec, **changes)
        if extension is not None:
            await _check_agent(store, spec)
        await store.update_agent(spec)

    _run(work, ctx.config)
    click.echo(f"changed agent {agent_id}")


@agent.command("remove")
@click.argument("agent_id", metavar="ID")
@pass_ctx
def agent_remove(ctx: _Context, agent_id: str) -> None:
    """Remove an agent."""
    _run(lambda s: s.remove_agent(agent_id), ctx.config)
    click.echo(f"removed agent {agent_id}")


def _agent_json(record: AgentRecord) -> dict[str, Any]:
    spec = record.spec
    return {
        "id": spec.id, "extension": spec.extension, "name": spec.name, "skills": spec.skills,
        "state": record.state.value, "reason": record.reason, "queues": list(record.queues),
    }  # fmt: skip


def _presence(
    record: AgentRecord, action: str, queues: tuple[str, ...], reason: str
) -> tuple[AgentState, str, tuple[str, ...]]:
    """What an action makes of an agent's remembered presence, by the engine's rules."""
    agent_id, state, current = record.spec.id, record.state, record.queues
    logged_out = state is AgentState.LOGGED_OUT
    if action == "login":
        joined = (*current, *(q for q in queues if q not in current))
        return (AgentState.READY if logged_out else state), record.reason, joined
    if action == "logout":
        for name in queues:
            if name not in current:
                raise click.ClickException(f"agent {agent_id} is not logged in to queue {name}")
        left = tuple(q for q in current if q not in queues) if queues else ()
        return (AgentState.LOGGED_OUT, "", ()) if not left else (state, record.reason, left)
    if logged_out:
        raise click.ClickException(f"agent {agent_id} is logged out; log in to a queue first")
    if action == "ready":
        return AgentState.READY, "", current
    return AgentState.NOT_READY, reason or "paused", current


def _agent_action(ctx: _Context, action: str, agent_id: str, queues: tuple[str, ...] = (),
                  reason: str = "") -> None:  # fmt: skip
    """Log in, log out, ready or pause: live through the server, else remembered in the
    database for the server to apply when it starts."""
    config = ctx.config

    async def check(store: Store) -> AgentRecord:
        record = await _agent_record(store, agent_id)
        known = {q.name for q in await store.queues()}
        for name in queues:
            if action == "login" and name not in known:
                raise click.ClickException(f"no queue {name} (see `pbx queue list`)")
        return record

    record = _run(check, config)

    def offline() -> dict[str, Any]:
        state, why, joined = _presence(record, action, queues, reason)
        _run(lambda s: s.set_agent_presence(agent_id, state, why, joined), config)
        return _agent_json(dataclasses.replace(record, state=state, reason=why, queues=joined))

    row, live = _ask_or_offline(ctx, "agent", offline, action=action, agent=agent_id,
                                queues=list(queues), reason=reason)  # fmt: skip
    where = f" in {', '.join(row['queues'])}" if row["queues"] else ""
    why = f" ({row['reason']})" if row.get("reason") else ""
    click.echo(f"agent {agent_id}: {row['state']}{why}{where}")
    if not live:
        click.echo(f"{_NOT_RUNNING}: this applies when it starts")


@agent.command("login")
@click.argument("agent_id", metavar="ID")
@click.option(
    "--queue", "queues", multiple=True, required=True, help="A queue to join (repeat for several)."
)
@pass_ctx
def agent_login(ctx: _Context, agent_id: str, queues: tuple[str, ...]) -> None:
    """Log an agent in to queues (Ready if they were logged out)."""
    _agent_action(ctx, "login", agent_id, queues)


@agent.command("logout")
@click.argument("agent_id", metavar="ID")
@click.option(
    "--queue", "queues", multiple=True, help="Leave only this queue (repeatable); default all."
)
@pass_ctx
def agent_logout(ctx: _Context, agent_id: str, queues: tuple[str, ...]) -> None:
    """Log an agent out of some queues, or of all (once a call in progress ends)."""
    _agent_action(ctx, "logout", agent_id, queues)


@agent.command("ready")
@click.argument("agent_id", metavar="ID")
@pass_ctx
def agent_ready(ctx: _Context, agent_id: str) -> None:
    """Make a logged-in agent Ready for calls."""
    _agent_action(ctx, "ready", agent_id)


@agent.command("pause")
@click.argument("agent_id", metavar="ID")
@click.option(
    "--reason", default="paused", show_default=True, help="Why: break, lunch, training..."
)
@pass_ctx
def agent_pause(ctx: _Context, agent_id: str, reason: str) -> None:
    """Make a logged-in agent Not Ready (after the call in progress, if any)."""
    _agent_action(ctx, "pause", agent_id, reason=reason)


@agent.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
@pass_ctx
def agent_list(ctx: _Context, as_json: bool) -> None:
    """List agents with their state: live when the server runs, else as remembered."""
    config = ctx.config

    def offline() -> list[dict[str, Any]]:
        return [_agent_json(r) for r in _run(lambda s: s.agents(), config)]

    rows, _ = _ask_or_offline(ctx, "agents", offline)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    shown = [
        {**row, "skills": format_skills(row["skills"]) or None,
         "queues": ",".join(row["queues"]) or None, "name": row["name"] or None,
         "reason": row["reason"] or None}
        for row in rows
    ]  # fmt: skip
    _table(shown, ["id", "extension", "name", "skills", "state", "reason", "queues"])


# ---- opening hours: `pbx hours` (from the configuration alone; no server needed)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
@click.option(
    "--at",
    "at_text",
    default=None,
    metavar="ISO-DATETIME",
    help="Instead of now: an ISO date/time; without an offset, in each schedule's own zone.",
)
@pass_ctx
def hours(ctx: _Context, as_json: bool, at_text: str | None) -> None:
    """The [[hours]] tables: open or closed now (or --at), and when that next changes."""
    try:
        given = datetime.fromisoformat(at_text) if at_text else None
    except ValueError:
        raise click.BadParameter(
            "use an ISO date/time, e.g. 2026-12-24T10:00 or 2026-12-24T10:00-05:00",
            param_hint="--at",
        ) from None
    now = datetime.now().astimezone()
    rows, shown = [], []
    for schedule in ctx.config.hours:
        zone = schedule.timezone
        at = now if given is None else given if given.tzinfo else given.replace(tzinfo=zone)
        is_open, change = schedule.is_open(at), schedule.next_change(at)
        rows.append(
            {
                "name": schedule.name,
                "timezone": zone.key,
                "open": is_open,
                "next_change": change.isoformat() if change else None,
            }
        )
        verb = "closes" if is_open else "opens"
        shown.append(
            {
                "name": schedule.name,
                "timezone": zone.key,
                "state": "open" if is_open else "closed",
                "next_change": f"{verb} {change:%a %Y-%m-%d %H:%M %Z}" if change else None,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _table(shown, ["name", "timezone", "state", "next_change"])
