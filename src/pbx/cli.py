"""The `pbx` command (operator contract: see README and ../shared/DESIGN.md)."""

from __future__ import annotations

import asyncio
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

from media.recording import audio_duration
from pbx import __version__, control
from pbx.config import Config, load
from pbx.errors import PbxError
from pbx.sip.digest import ha1
from pbx.store import Binding, Store, User

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
    _run(lambda s: s.add_user(record, time.time()), ctx.config)
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


def _control_action(command: str, action: str, doc: str, *arguments: str) -> click.Command:
    """A subcommand `action ARGUMENTS...` that sends `command` with them to the running
    server and prints its JSON reply."""

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
    return click.command(action)(run)


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


@main.command("check-config")
@pass_ctx
def check_config(ctx: _Context) -> None:
    """Validate the configuration file and print what it means."""
    config = ctx.config
    click.echo(f"configuration {config.path} is valid")
    click.echo(f"data_dir: {config.data_dir}")
    click.echo("sip.listen: " + ", ".join(str(a) for a in config.sip.listen))
    click.echo(f"realm: {config.realm}")
