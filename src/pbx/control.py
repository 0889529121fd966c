"""The control socket: how `pbx` commands talk to a running `pbx serve`.

A Unix socket in the data directory speaks JSON lines: one request object
(`{"command": "status"}`), one response object (`{"ok": true, "result": ...}` or
`{"ok": false, "error": "..."}`). Only local users with access to the data directory can
reach it, which is the same trust as reading the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from pbx.errors import PbxError

log = logging.getLogger("pbx.control")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
# A stream answers with one JSON object per line until the client goes away.
Stream = Callable[[dict[str, Any]], AsyncIterator[dict[str, Any]]]
MAX_REQUEST = 65536


class ControlError(PbxError):
    """The running server could not be reached or refused the command."""


class ControlServer:
    def __init__(
        self, path: Path, handlers: dict[str, Handler], streams: dict[str, Stream] | None = None
    ) -> None:
        self.path = path
        self.handlers = handlers
        self.streams = streams or {}
        self._clients: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left behind by a server that was killed
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(self.path))
        except OSError as exc:
            # A path too long for a Unix socket must not stop the exchange itself.
            log.warning("no control socket at %s: %s", self.path, exc)
            return
        self.path.chmod(0o600)

    async def _stream(
        self,
        items: AsyncIterator[dict[str, Any]],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        # The client sends nothing more; its EOF is how we learn that it went away.
        gone = asyncio.ensure_future(reader.read())
        try:
            while True:
                following = asyncio.ensure_future(anext(items))
                await asyncio.wait({following, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    following.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await following  # let the generator settle before aclose()
                    break
                try:
                    item = following.result()
                except StopAsyncIteration:
                    break
                writer.write(json.dumps(item).encode() + b"\n")
                await writer.drain()
        finally:
            gone.cancel()
            await items.aclose()  # type: ignore[attr-defined]

    async def stop(self) -> None:
        for task in list(self._clients):
            task.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)
        try:
            line = await reader.readline()
            try:
                request = json.loads(line)
                name = request["command"]
                if name in self.streams:
                    await self._stream(self.streams[name](request), reader, writer)
                    return
                reply = {"ok": True, "result": await self.handlers[name](request)}
            except (ValueError, KeyError, TypeError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            except PbxError as exc:
                reply = {"ok": False, "error": str(exc)}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("control request failed")
        finally:
            writer.close()


def follow(path: Path, command: str, **params: Any) -> Iterator[dict[str, Any]]:
    """Each object a streaming command sends, until the server stops (blocking; CLI)."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(f"pbx is not running (no server at {path})") from None
    except OSError as exc:
        raise ControlError(f"cannot reach the running pbx at {path}: {exc}") from None
    with sock, sock.makefile("rb") as lines:
        sock.sendall(json.dumps({"command": command, **params}).encode() + b"\n")
        for line in lines:
            yield json.loads(line)


def call(path: Path, command: str, timeout: float = 5.0, **params: Any) -> Any:
    """Send one command to the running server (blocking; for the CLI)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps({"command": command, **params}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(f"pbx is not running (no server at {path})") from None
    except OSError as exc:
        raise ControlError(f"cannot reach the running pbx at {path}: {exc}") from None
    reply = json.loads(data)
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "the server refused the command"))
    return reply["result"]
