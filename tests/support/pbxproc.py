"""Run `pbx serve` as a real process for tests, on loopback with free ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.ports import free_port

PYTHON = sys.executable


def write_config(directory: Path, port: int, extra: str = "", host: str = "127.0.0.1") -> Path:
    bracketed = f"[{host}]" if ":" in host else host
    path = directory / "pbx.toml"
    path.write_text(
        f"""data_dir = "data"
log_level = "debug"

[sip]
listen = ["udp:{bracketed}:{port}", "tcp:{bracketed}:{port}"]

[rtp]
port_range = [30000, 30999]
address = "{host}"
{extra}
"""
    )
    return path


@dataclass
class PbxProcess:
    """A `pbx serve` child process; `start()` returns once it listens."""

    config: Path
    port: int
    host: str = "127.0.0.1"
    proc: subprocess.Popen[str] | None = None
    log: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [PYTHON, "-m", "pbx", "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"pbx {' '.join(args)} failed: {result.stderr}")
        return result

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def add_user(self, extension: str, password: str) -> None:
        self.cli("user", "add", extension, "--password", password)

    def start(self, timeout: float = 20.0) -> None:
        # One event per process: the reader of a previous (killed) process must not be
        # able to signal this one ready when it reaches its own end of file.
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "pbx", "-c", str(self.config), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._read_log, args=(self.proc, self._ready), daemon=True).start()
        if not self._ready.wait(timeout):
            self.stop()
            raise AssertionError("pbx did not start:\n" + "\n".join(self.log[-30:]))

    def _read_log(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stderr is not None
        listening = 0
        for line in proc.stderr:
            self.log.append(line.rstrip())
            if "listening on" in line:
                listening += 1
                if listening == 2:
                    ready.set()
        ready.set()  # exited: let start() report it

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def make_pbx(directory: Path, extra: str = "", host: str = "127.0.0.1") -> PbxProcess:
    port = free_port(host)
    return PbxProcess(write_config(directory, port, extra, host), port, host)
