"""The exchange: wires the SIP endpoint, the registrar, qualify pings and the store."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from media.ports import PortPool
from pbx import __version__
from pbx.calls import SUPPORTED as CALLS_SUPPORTED
from pbx.calls import CallManager
from pbx.config import Config, answered_by_config
from pbx.control import ControlServer
from pbx.dialplan import Dialplan
from pbx.errors import (
    ConfigError,
    PbxError,
    RemoteProtocolError,
    SipStatus,
    TransactionTimeout,
    TransportError,
)
from pbx.events import CallEnded, Event, EventBus, RecordingStarted, RecordingStopped
from pbx.flows import FlowService
from pbx.mwi import ALLOW_EVENTS, MwiService
from pbx.queues import QueueManager
from pbx.recordings import finished_duration
from pbx.registrar import Registrar, peer_for_binding
from pbx.sip.aio import Peer, SipEndpoint
from pbx.sip.message import (
    KNOWN_METHODS,
    Method,
    Request,
    build_response,
    new_branch,
    new_tag,
)
from pbx.sip.uri import SipUri, parse_uri
from pbx.store import Binding, Store, VoicemailCounts
from pbx.trunk import TrunkManager
from pbx.voicemail import Voicemail

log = logging.getLogger("pbx")

ALLOW = "REGISTER, OPTIONS, INVITE, ACK, BYE, CANCEL, REFER, SUBSCRIBE"
CALL_METHODS = frozenset(
    {Method.INVITE, Method.ACK, Method.BYE, Method.CANCEL, Method.REFER, Method.UPDATE,
     Method.INFO}
)  # fmt: skip
ACCEPT = "application/sdp"
# Path (RFC 3327) and outbound (RFC 5626) are not implemented yet: neither is advertised,
# and a request that requires them gets 420.
SUPPORTED = CALLS_SUPPORTED
SUPPORTED_OPTIONS = frozenset(o.strip() for o in SUPPORTED.split(","))
USERS_REFRESH = 1.0  # seconds: how soon `pbx user add` on a running server takes effect
PURGE_INTERVAL = 10.0


class Exchange:
    """One running pbx: `await start()`, then `await stop()`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store: Store | None = None
        self.endpoint = SipEndpoint(
            config.sip.listen,
            self.dispatch,
            max_message=config.sip.max_message,
            user_agent=config.sip.user_agent,
            tcp_idle_timeout=config.sip.tcp_idle_timeout,
            tcp_max_per_address=config.sip.tcp_max_per_address,
        )
        self.registrar: Registrar | None = None
        self.calls: CallManager | None = None
        self.queues: QueueManager | None = None
        self.voicemail: Voicemail | None = None
        self.flows: FlowService | None = None
        # Registrations with the providers, and `trunks.trunk_for(peer)` for the calls.
        self.trunks = TrunkManager(config.trunks, self.endpoint, config.sip.user_agent)
        self._tasks: list[asyncio.Task[None]] = []
        self.started_at = time.time()
        self.events = EventBus()
        # Message waiting: `await exchange.mwi.changed(box)` when a mailbox changes.
        self.mwi = MwiService(config, self.endpoint, self._mailbox_counts, self.events)
        self.control = ControlServer(
            config.control_socket,
            {
                "status": self._status,
                "calls": self._live_calls,
                "trunks": self._trunks,
                "recording": self._recording_control,
                "conferences": self._conferences,
                "conference": self._conference_control,
                "agents": self._agents,
                "agent": self._agent_control,
                "queues": self._queues,
                "queue": self._queue,
                "explain": self._explain,
                "reload": self._reload,
                "mailbox_changed": self._mailbox_changed,
            },
            {"events": self._follow_events},
        )
        self._cdr_writes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store = await Store.open(self.config.database)
        try:
            secret = await self.store.secret("digest-nonce-key")
            self.registrar = Registrar(
                self.store,
                self.config.registrar,
                self.config.auth,
                self.config.realm,
                secret,
                self.endpoint.respond,
                self.config.sip.user_agent,
                events=self.events,
            )
            await self.registrar.load()
            self.mwi.start(self.registrar, self.store)
            restored = await self.mwi.restore()  # before SUBSCRIBEs come in
            await self.endpoint.start()
            await self.control.start()
            pool = PortPool(*self.config.rtp.port_range)
            registrar = self.registrar
            self.queues = QueueManager(self.store, self.events)
            dialplan = Dialplan.from_config(
                self.config, lambda ext: ext in registrar.users, queues=self.queues
            )
            for warning in dialplan.warnings:
                log.warning("dialplan: %s", warning)
            self.calls = CallManager(
                self.config, self.endpoint, self.registrar, pool, events=self.events,
                dialplan=dialplan, trunks=self.trunks,
            )  # fmt: skip
            self.calls.acd = self.queues
            store = self.store
            self.voicemail = Voicemail(
                self.config, store, lambda ext: ext in registrar.users, self.mwi.changed
            )
            self.calls.flows = self.flows = FlowService(self.config, self.calls, self.voicemail)
            errors = self.flows.load()
            if errors:
                raise ConfigError("; ".join(errors), key="ivr.modules")
            await self.queues.start(self.calls)
            await self._warn_of_unreachable_numbers()
            self.events.subscribe(self._write_cdr)
            await self._finish_recordings()
            await self.trunks.start()
            self.mwi.notify(restored)  # the counts come from the voicemail above
        except BaseException:
            # A start that fails half-way releases what it took, so the process can exit.
            await self.endpoint.stop()
            await self.store.close()
            self.store = None
            raise
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        if self.config.registrar.qualify_interval > 0:
            self._tasks.append(asyncio.create_task(self._qualify_loop()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.control.stop()
        if self.calls is not None:
            await self.calls.stop()
        if self.queues is not None:
            await self.queues.stop()
        if self._cdr_writes:
            await asyncio.gather(*self._cdr_writes, return_exceptions=True)
        await self.mwi.stop()  # final NOTIFYs: the endpoint must still be up
        await self.trunks.stop()  # unregisters: the endpoint must still be up
        await self.endpoint.stop()
        if self.store is not None:
            await self.store.close()
            self.store = None

    async def _status(self, _request: dict[str, Any]) -> dict[str, Any]:
        registrar = self.registrar
        bindings = list(registrar.all_bindings()) if registrar else []
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": round(time.time() - self.started_at, 1),
            "listen": [str(a) for a in self.endpoint.bound.values()],
            "users": len(registrar.users) if registrar else 0,
            "bindings": len(bindings),
            "reachable": sum(1 for b in bindings if b.reachable),
            "sip": dataclasses.asdict(self.endpoint.stats),
        }

    async def _trunks(self, _request: dict[str, Any]) -> list[dict[str, Any]]:
        return self.trunks.status_json()

    async def _live_calls(self, _request: dict[str, Any]) -> list[dict[str, object]]:
        return self.calls.live() if self.calls is not None else []

    def _write_cdr(self, event: Event) -> None:
        """The CDR writer: one row per call, committed as soon as the call has ended."""
        if not isinstance(event, CallEnded) or self.store is None:
            return
        task = asyncio.ensure_future(self.store.add_cdr(event))
        self._cdr_writes.add(task)
        task.add_done_callback(self._cdr_written)

    def _cdr_written(self, task: asyncio.Task[None]) -> None:
        self._cdr_writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cannot write a CDR or recording row: %s", task.exception())

    # recordings

    async def _finish_recordings(self) -> None:
        """Index rows for recordings as they start and end; on start, make whole the
        files a previous process left unfinished (killed mid-call)."""
        assert self.store is not None
        self.events.subscribe(self._write_recording)
        for row in await self.store.unfinished_recordings():
            path = Path(str(row["path"]))
            duration = finished_duration(path, str(row["format"]))
            log.warning("recording %s was left unfinished; %s", path,
                        f"repaired: {duration:.1f} s" if duration is not None
                        else "nothing playable is left")  # fmt: skip
            await self.store.finish_recording(str(row["id"]), time.time(), duration or 0.0, 0.0)

    def _write_recording(self, event: Event) -> None:
        if self.store is None:
            return
        if isinstance(event, RecordingStarted):
            work = self.store.add_recording(event)
        elif isinstance(event, RecordingStopped):
            work = self.store.finish_recording(
                event.recording_id, event.time, event.duration, event.paused_seconds
            )
        else:
            return
        task = asyncio.ensure_future(work)
        self._cdr_writes.add(task)
        task.add_done_callback(self._cdr_written)

    async def rows_written(self) -> None:
        """Wait for every CDR and recording row queued so far to be committed."""
        while self._cdr_writes:
            await asyncio.gather(*self._cdr_writes, return_exceptions=True)

    async def purge_recordings(self, now: float | None = None) -> int:
        """Delete the recordings past their retention; how many went."""
        assert self.store is not None
        now = time.time() if now is None else now
        expired = await self.store.expired_recordings(now, self.config.recording.retention_days)
        for row in expired:
            path = Path(str(row["path"]))
            try:
                await asyncio.to_thread(path.unlink, missing_ok=True)
            except OSError as exc:
                log.error("cannot delete expired recording %s: %s", path, exc)
                continue
            log.info("recording %s deleted: past its retention", path)
            await self.store.mark_recording_deleted(str(row["id"]), now)
        return len(expired)

    # the ACD: `pbx agent ...` and `pbx queue ...` on a running server

    def _acd(self) -> QueueManager:
        if self.queues is None:
            raise PbxError("the exchange is not running its queues")
        return self.queues

    async def _agents(self, _request: dict[str, Any]) -> list[dict[str, Any]]:
        return self._acd().agent_rows()

    async def _agent_control(self, request: dict[str, Any]) -> dict[str, Any]:
        acd = self._acd()
        await acd.refresh()  # an agent added a moment ago by the CLI
        queues = request.get("queues") or []
        if not isinstance(queues, list):
            raise PbxError("queues must be a list")
        agent, action = str(request.get("agent", "")), str(request.get("action", ""))
        reason = str(request.get("reason") or "")
        return acd.agent_action(agent, action, [str(q) for q in queues], reason)

    async def _queues(self, _request: dict[str, Any]) -> list[dict[str, Any]]:
        acd = self._acd()
        await acd.refresh()
        return acd.queue_rows()

    async def _queue(self, request: dict[str, Any]) -> dict[str, Any]:
        acd = self._acd()
        await acd.refresh()
        return acd.queue_row(str(request.get("name", "")))

    async def _explain(self, request: dict[str, Any]) -> list[str]:
        return self._acd().explain(str(request.get("call_id", "")))

    async def _recording_control(self, request: dict[str, Any]) -> dict[str, Any]:
        """`pbx recordings start|stop|pause|resume CALL_ID` on a live call."""
        if self.calls is None:
            raise PbxError("the exchange is not running calls")
        action, call_id = str(request.get("action", "")), str(request.get("call_id", ""))
        call = self.calls.calls.get(call_id)
        if call is None or not call.answered:
            raise PbxError(f"no answered call {call_id!r} (see `pbx calls`)")
        recordings = self.calls.recordings
        if action == "start":
            recording = recordings.start(call.id, call.caller, call.callee,
                                         *self.calls.sides(call), by="api")  # fmt: skip
            if recording is None:
                raise PbxError(f"call {call_id} is already recorded (or cannot be)")
            return {"call_id": call_id, "path": str(recording.path)}
        if action in ("pause", "resume"):
            if not recordings.pause(call_id, action == "pause"):
                raise PbxError(f"call {call_id} is not being recorded")
            return {"call_id": call_id, "paused": action == "pause"}
        if action == "stop":
            stopped = recordings.stop(call_id, by_hand=True)
            if stopped is None:
                raise PbxError(f"call {call_id} is not being recorded")
            return {"call_id": call_id, "path": str(stopped.path)}
        raise PbxError(f"unknown recording action {action!r}: start, stop, pause or resume")

    async def _conferences(self, _request: dict[str, Any]) -> list[dict[str, object]]:
        return self.calls.conferences.live() if self.calls is not None else []

    async def _conference_control(self, request: dict[str, Any]) -> dict[str, Any]:
        """`pbx conferences mute|unmute|kick ROOM WHO` and `gain ROOM WHO DB` (WHO: a party,
        call id or "all")."""
        if self.calls is None:
            raise PbxError("the exchange is not running calls")
        action, room = str(request.get("action", "")), str(request.get("room", ""))
        who = str(request.get("who", ""))
        conferences = self.calls.conferences
        if conferences.config_of(room) is None:
            raise PbxError(f"no conference {room!r} (see `pbx conferences`)")
        if action in ("mute", "unmute"):
            changed = conferences.mute(room, who, action == "mute")
        elif action == "gain":
            try:
                changed = conferences.set_gain(room, who, float(request.get("db", "")))
            except ValueError as exc:
                raise PbxError(f"gain: {exc}") from None
        elif action == "kick":
            changed = await self.calls.kick(room, who)
        else:
            raise PbxError(f"unknown conference action {action!r}: mute, unmute, gain or kick")
        if not changed:
            raise PbxError(f"nobody in conference {room} is {who!r}")
        return {"room": room, "action": action, "call_ids": changed}

    async def _follow_events(self, _request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        async for event in self.events.follow():
            yield event.to_json()

    # requests

    def dispatch(self, request: Request, peer: Peer) -> None:
        method = request.method
        if method == Method.ACK:
            if self.calls is not None:
                self.calls.handle(request, peer)
            return
        uri = request.uri
        if not isinstance(uri, SipUri) and uri.scheme != "tel":
            self._reply(request, SipStatus.UNSUPPORTED_URI_SCHEME)
            return
        try:
            required = request.list_values("Require")
        except RemoteProtocolError as exc:
            self._reply(request, exc.status, [("Warning", f'399 pbx "{exc}"')])
            return
        unsupported = [o for o in required if o.lower() not in SUPPORTED_OPTIONS]
        if unsupported and method != Method.CANCEL:
            self._reply(request, SipStatus.BAD_EXTENSION, [("Unsupported", ", ".join(unsupported))])
            return
        if method in CALL_METHODS and self.calls is not None and self.calls.handle(request, peer):
            return
        if method == Method.REGISTER:
            assert self.registrar is not None
            self.registrar.handle(request, peer)
        elif method == Method.SUBSCRIBE:
            self.mwi.handle(request, peer)
        elif method == Method.OPTIONS:
            self._reply(
                request,
                SipStatus.OK,
                [
                    ("Allow", ALLOW),
                    ("Allow-Events", ALLOW_EVENTS),
                    ("Accept", ACCEPT),
                    ("Supported", SUPPORTED),
                ],
            )
        elif method in KNOWN_METHODS:
            self._reply(request, SipStatus.METHOD_NOT_ALLOWED, [("Allow", ALLOW)])
        else:
            self._reply(request, SipStatus.NOT_IMPLEMENTED, [("Allow", ALLOW)])

    async def _mailbox_counts(self, box: str) -> VoicemailCounts:
        """The messages in mailbox `box`, for message waiting indication."""
        if self.voicemail is None:
            return VoicemailCounts()
        return await self.voicemail.counts(box)

    async def _mailbox_changed(self, request: dict[str, Any]) -> dict[str, Any]:
        """`pbx voicemail delete|mark` changed a box: its phones' MWI follows."""
        box = request.get("box")
        if not isinstance(box, str) or not box:
            raise PbxError("mailbox_changed needs a box")
        await self.mwi.changed(box)
        return {"box": box}

    async def _reload(self, _request: dict[str, Any]) -> dict[str, Any]:
        """`pbx reload`: import the IVR flow modules afresh (calls in a flow finish it as
        it was). A module that fails keeps its old flows, and the error is returned."""
        if self.flows is None:
            raise PbxError("the exchange is not started")
        errors = self.flows.load()
        return {"flows": sorted(self.flows.registry.flows), "errors": errors}

    def _reply(
        self, request: Request, status: int, headers: list[tuple[str, str]] | None = None
    ) -> None:
        headers = [*(headers or []), ("Server", self.config.sip.user_agent)]
        self.endpoint.respond(request, build_response(request, status, headers=headers,
                                                      to_tag=new_tag()))  # fmt: skip

    async def _warn_of_unreachable_numbers(self) -> None:
        """Users and queues whose number the configuration answers first (`pbx user add`
        and `queue add` refuse those, but the config may have changed since)."""
        assert self.store is not None
        assert self.registrar is not None
        for extension in sorted(self.registrar.users):
            problem = answered_by_config(self.config, extension)
            if problem is not None:
                log.warning("user %s cannot be called: %s", extension, problem)
        for queue in await self.store.queues():
            problem = answered_by_config(self.config, queue.number) if queue.number else None
            if problem is not None:
                log.warning("queue %s cannot be dialled: %s", queue.name, problem)

    # housekeeping

    async def _housekeeping(self) -> None:
        assert self.registrar is not None
        since_purge = 0.0
        while True:
            await asyncio.sleep(USERS_REFRESH)
            try:
                await self.registrar.refresh_users()
                if self.queues is not None:
                    await self.queues.refresh()
                since_purge += USERS_REFRESH
                if since_purge >= PURGE_INTERVAL:
                    since_purge = 0.0
                    await self.registrar.purge()
                    await self.purge_recordings()
            except Exception:
                log.exception("housekeeping failed; will retry")

    async def _qualify_loop(self) -> None:
        """RFC 3261 §11 OPTIONS pings to every registered contact."""
        assert self.registrar is not None
        interval = self.config.registrar.qualify_interval
        while True:
            bindings = list(self.registrar.all_bindings())
            results = await asyncio.gather(
                *(self.qualify(b) for b in bindings), return_exceptions=True
            )
            for binding, result in zip(bindings, results, strict=True):
                if isinstance(result, Exception):
                    log.error("qualify of %s at %s failed: %s", binding.aor, binding.source, result)
            await asyncio.sleep(interval)

    async def qualify(self, binding: Binding) -> bool:
        """Ping one contact; records and returns whether it answered."""
        assert self.registrar is not None
        try:
            peer = peer_for_binding(binding)
        except PbxError:
            return False
        request = self._options_for(binding, peer)
        started = time.monotonic()
        reachable = False
        rtt: float | None = None
        try:
            await asyncio.wait_for(
                self.endpoint.request(request, peer), self.config.registrar.qualify_timeout
            )
            reachable, rtt = True, (time.monotonic() - started) * 1000
        except (TimeoutError, TransactionTimeout, TransportError):
            pass
        if binding.reachable is not reachable:
            level = logging.INFO if reachable else logging.WARNING
            log.log(level, "%s at %s is %s", binding.aor, binding.source,
                    "reachable" if reachable else "unreachable")  # fmt: skip
        await self.registrar.set_reachability(binding, reachable, rtt)
        return reachable

    def _options_for(self, binding: Binding, peer: Peer) -> Request:
        local = peer.local
        host = f"[{local.host}]" if ":" in local.host else local.host
        contact = parse_uri(binding.contact)
        return Request.build(
            Method.OPTIONS,
            contact,
            [
                ("Via", f"SIP/2.0/{peer.transport.upper()} {host}:{local.port};branch="
                        f"{new_branch()};rport"),
                ("Max-Forwards", "70"),
                ("From", f"<sip:pbx@{host}:{local.port}>;tag={new_tag()}"),
                ("To", f"<{binding.contact}>"),
                ("Call-ID", f"{new_tag()}{new_tag()}@{host}"),
                ("CSeq", "1 OPTIONS"),
                ("User-Agent", self.config.sip.user_agent),
                ("Accept", ACCEPT),
            ],
        )  # fmt: skip


GC_THRESHOLDS = (50_000, 50, 1_000)


def tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector from pausing the exchange under load.

    A UDP server transaction lives 32 s after its answer (Timer J), so under load the heap
    holds hundreds of thousands of long-lived objects, and CPython's default thresholds
    walk all of them every few seconds: pauses of 150-350 ms that made phones retransmit
    (benchmarks/register.py at 2,500/s), while those walks freed nothing. A larger young
    generation lets the many short-lived message objects die before promotion, and full
    collections become rare; start-up objects are frozen out of them altogether.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(config: Config, stop: asyncio.Event) -> None:
    """Run until `stop` is set."""
    exchange = Exchange(config)
    await exchange.start()
    tune_garbage_collector()
    try:
        await stop.wait()
    finally:
        await exchange.stop()
