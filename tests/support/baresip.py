"""Run baresip 1.0 (Debian `baresip`) headless for tests, driven over its ctrl_tcp module.

The configuration comes from ../shared/peers/baresip/mkconf.sh (copied next to the config
directory and run there). mkconf.sh writes the account into `accounts`, which would make
baresip register at start-up, before a test could be listening for the outcome; so
`Baresip.start()` takes the account line out of that file, starts baresip with no account,
connects to ctrl_tcp and then creates the account with `uanew`: every registration event
(REGISTERING, REGISTER_OK, REGISTER_FAIL) reaches the test.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.ports import free_port
from tests.support.shared import PEERS as SHARED_PEERS

PEERS = SHARED_PEERS / "baresip"


def baresip_binary() -> str:
    path = shutil.which("baresip")
    if path is None:
        pytest.fail("baresip is not installed: `make test` installs it (Debian baresip)")
    return path


def write_tone(path: Path, seconds: float = 1.0, rate: int = 8000, hz: float = 440.0) -> Path:
    """A mono 16-bit WAV sine tone (aufile needs a readable source even without calls)."""
    import math

    frames = bytearray()
    for n in range(int(seconds * rate)):
        sample = int(8000 * math.sin(2 * math.pi * hz * n / rate))
        frames += sample.to_bytes(2, "little", signed=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(frames))
    return path


def free_sip_port() -> int:
    """A port P free for UDP and TCP with P+1 free for TCP too (baresip puts TLS there)."""
    for _ in range(100):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tls:
            try:
                tls.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair for baresip")


class Ctrl:
    """ctrl_tcp client: netstring-framed JSON commands, responses and events."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.events: list[dict[str, Any]] = []
        self._token = 0

    def close(self) -> None:
        self.sock.close()

    def _recv(self, timeout: float) -> dict[str, Any]:
        self.sock.settimeout(max(0.01, timeout))
        while True:
            length, colon, rest = self.buf.partition(b":")
            if colon and len(rest) > int(length):
                message, self.buf = rest[: int(length)], rest[int(length) + 1 :]
                result: dict[str, Any] = json.loads(message)
                return result
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("baresip closed ctrl_tcp")
            self.buf += chunk

    def cmd(self, command: str, params: str = "", timeout: float = 5.0) -> dict[str, Any]:
        self._token += 1
        token = str(self._token)
        data = json.dumps({"command": command, "params": params, "token": token}).encode()
        self.sock.sendall(b"%d:%s," % (len(data), data))
        deadline = time.monotonic() + timeout
        while True:
            message = self._recv(deadline - time.monotonic())
            if message.get("response") and message.get("token") == token:
                return message
            if message.get("event"):
                self.events.append(message)

    def wait_event(self, *types: str, timeout: float = 10.0) -> dict[str, Any]:
        """The first event (already received or arriving within `timeout`) of one of `types`."""
        for i, event in enumerate(self.events):
            if event.get("type") in types:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self._recv(left)
            except TimeoutError:
                break
            if message.get("event"):
                if message.get("type") in types:
                    return message
                self.events.append(message)
        seen = [e.get("type") for e in self.events]
        raise TimeoutError(f"no {' or '.join(types)} event within {timeout} s (seen: {seen})")


@dataclass
class Baresip:
    """One baresip process with its own config dir, SIP port and ctrl_tcp port."""

    directory: Path
    user: str
    password: str
    registrar: str  # host:port
    tone: Path
    sip_port: int = field(default_factory=free_sip_port)
    ctrl_port: int = field(default_factory=lambda: free_port(both=False))
    account: str = ""
    proc: subprocess.Popen[str] | None = None
    ctrl: Ctrl | None = None
    output: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)

    def configure(self) -> None:
        mkconf = self.directory.parent / "mkconf.sh"
        if not mkconf.exists():
            shutil.copy(PEERS / "mkconf.sh", mkconf)
        rtp_low = 40000 + (self.sip_port % 1000) * 10
        subprocess.run(
            ["bash", str(mkconf), str(self.directory), self.user, self.password,
             str(self.sip_port), str(self.ctrl_port), f"{rtp_low}-{rtp_low + 9}",
             "manual", str(self.tone), self.registrar],
            check=True, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        accounts = self.directory / "accounts"
        self.account = accounts.read_text().strip()
        accounts.write_text("")  # created over ctrl_tcp instead, see the module docstring

    def start(self, timeout: float = 10.0) -> Ctrl:
        if not self.account:
            self.configure()
        self.proc = subprocess.Popen(
            [baresip_binary(), "-f", str(self.directory)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise AssertionError("baresip did not start:\n" + "\n".join(self.output[-30:]))
        self.ctrl = Ctrl(self.ctrl_port)
        return self.ctrl

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line.rstrip())
            if "baresip is ready" in line:
                self._ready.set()
        self._ready.set()  # exited: let start() report it

    def add_account(self, account: str | None = None) -> dict[str, Any]:
        """Create the user agent (`uanew`); it starts registering at once."""
        assert self.ctrl is not None
        return self.ctrl.cmd("uanew", account or self.account)

    def stop(self, timeout: float = 10.0, kill: bool = False) -> int | None:
        """SIGTERM (baresip unregisters on the way out), SIGKILL if it lingers.

        `kill=True` sends SIGKILL at once: for an instance whose unregistration could only
        time out (its registrar no longer answers it).
        """
        if self.ctrl is not None:
            self.ctrl.close()
            self.ctrl = None
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code
