#!/usr/bin/env python3
"""Registration throughput: SIPp pushes authenticated REGISTERs at rising rates.

Each registration is two transactions: REGISTER -> 401, REGISTER with digest credentials ->
200 once the binding is committed to SQLite. The script starts its own `pbx serve` (temp
data dir, free loopback port, no qualify pings), writes the users straight into the store,
runs SIPp once per rate step and measures, per step:

- what SIPp saw: successful and failed registrations, retransmissions, mean response time
  (first REGISTER sent to 200 received) and the rate actually achieved;
- what the server spent: CPU time from /proc/PID/stat (utime + stime, all threads) before and
  after the step, as CPU microseconds per registration and as utilisation of one core;
- what SIPp itself spent (getrusage of reaped children), to tell when the load generator,
  not the server, is the limit.

It stops rising after the first step with failures or retransmissions (or one that reached
less than 90% of its target rate), checks that the bindings are in the database after a
clean shutdown, prints a table and writes JSON (benchmarks/results/register.json).

    .venv/bin/python benchmarks/register.py --quick      # smoke run, a few seconds
    .venv/bin/python benchmarks/register.py              # 250 ... 10000/s, 3 s a step
    .venv/bin/python benchmarks/register.py --profile /tmp/pbx.prof   # server under cProfile
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RATES = (250, 500, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 10000)
QUICK_RATES = (100, 200)
FIRST_EXTENSION = 100000
SATURATED = 0.9  # a step that reaches less than this share of its target rate ends the climb

# The stock peer scenario (/work/shared/peers/sipp/register.xml), embedded so that the
# benchmark runs anywhere SIPp is installed.
SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="REGISTER with digest auth">
  <send retrans="500">
    <![CDATA[

      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[field0]@[remote_ip]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[field0]@[remote_ip]>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:[field0]@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Expires: 300
      User-Agent: SIPp
      Content-Length: 0

    ]]>
  </send>
  <recv response="401" auth="true"/>
  <send retrans="500">
    <![CDATA[

      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[field0]@[remote_ip]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[field0]@[remote_ip]>
      Call-ID: [call_id]
      CSeq: 2 REGISTER
      Contact: <sip:[field0]@[local_ip]:[local_port];transport=[transport]>
      [field1]
      Max-Forwards: 70
      Expires: 300
      User-Agent: SIPp
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" rtd="true">
    <action>
      <ereg regexp="expires=[0-9]+" search_in="hdr" header="Contact:" check_it="true"
            assign_to="dummy"/>
    </action>
  </recv>
  <Reference variables="dummy"/>
</scenario>
"""


@dataclass
class Step:
    target_rate: int
    calls: int
    achieved_rate: float
    successful: int
    failed: int
    retransmissions: int
    response_ms: float
    response_p50_ms: float
    response_p99_ms: float
    response_samples: int
    wall_s: float
    server_cpu_s: float
    server_cpu_pct: float
    loop_cpu_pct: float
    cpu_us_per_registration: float | None
    sipp_cpu_pct: float
    sipp_exit: int

    @property
    def clean(self) -> bool:
        return self.successful > 0 and self.failed == 0 and self.retransmissions == 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """utime + stime (proc(5) fields 14 and 15) of a process (all threads) or one thread."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
    text = Path(path).read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def sipp_duration_ms(text: str) -> float:
    """SIPp's HH:MM:SS:uuuuuu (microseconds in the last field) in milliseconds."""
    hours, minutes, seconds, micros = (int(p) for p in text.split(":"))
    return ((hours * 60 + minutes) * 60 + seconds) * 1000 + micros / 1000


def sipp_time(text: str) -> float:
    """The epoch seconds at the end of SIPp's 'date<TAB>time<TAB>epoch' stat cells."""
    return float(text.split("\t")[-1])


def write_users(config_path: Path, count: int, directory: Path) -> Path:
    """Create `count` users in the store and a SEQUENTIAL SIPp injection file for them."""
    from pbx.config import load
    from pbx.sip.digest import ha1
    from pbx.store import Store, User

    config = load(config_path)
    realm = config.realm
    extensions = [str(FIRST_EXTENSION + i) for i in range(count)]

    async def add_all() -> None:
        store = await Store.open(config.database)
        try:
            now = time.time()
            for ext in extensions:
                password = f"pw{ext}"
                await store.add_user(
                    User(
                        ext,
                        "",
                        realm,
                        ha1("MD5", ext, realm, password),
                        ha1("SHA-256", ext, realm, password),
                    ),
                    now,
                )
        finally:
            await store.close()

    asyncio.run(add_all())
    users_csv = directory / "users.csv"
    lines = ["SEQUENTIAL"]
    lines += [f"{ext};[authentication username={ext} password=pw{ext}]" for ext in extensions]
    users_csv.write_text("\n".join(lines) + "\n")
    return users_csv


class Server:
    """`pbx serve` as a child process, optionally under cProfile."""

    def __init__(self, config: Path, port: int, log: Path, profile: Path | None) -> None:
        self.config, self.port, self.log_path, self.profile = config, port, log, profile
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        prefix = ["-m", "cProfile", "-o", str(self.profile)] if self.profile else []
        # -P: the working directory stays off sys.path, or benchmarks/media.py, when run from
        # benchmarks/, would hide the server's `media` package.
        command = [sys.executable, "-P", *prefix, "-m", "pbx", "-c", str(self.config), "serve"]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pbx serve exited at start:\n{self.log_tail()}")
            if self._answers_options():
                return
        raise RuntimeError(f"pbx serve did not answer OPTIONS in {timeout:.0f} s")

    def _answers_options(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(0.2)
            port = sock.getsockname()[1]
            probe = (
                f"OPTIONS sip:127.0.0.1:{self.port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKbench{time.monotonic_ns()}\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:bench@127.0.0.1>;tag=b1\r\n"
                f"To: <sip:127.0.0.1:{self.port}>\r\nCall-ID: bench-{time.monotonic_ns()}\r\n"
                "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            )
            sock.sendto(probe.encode(), ("127.0.0.1", self.port))
            try:
                return sock.recv(65535).startswith(b"SIP/2.0 200")
            except OSError:
                return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"pbx serve exited ({self.proc.returncode}):\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGINT (clean shutdown, lets cProfile write its file), then SIGKILL if stuck."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30 if self.profile else 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def run_step(
    rate: int,
    seconds: float,
    users: int,
    users_csv: Path,
    scenario: Path,
    server: Server,
    sipp_port: int,
    directory: Path,
) -> Step:
    calls = max(1, min(users, round(rate * seconds)))
    stat = directory / f"stat-{rate}.csv"
    limit = max(50, min(users, rate))  # at most one second's worth of calls outstanding
    # SIPp writes response times in batches of -rtt_freq and drops a partial last batch.
    rtt_batch = next(n for n in range(min(calls, 500), 0, -1) if calls % n == 0)
    command = [
        "sipp", "-sf", str(scenario), "-inf", str(users_csv),
        "-i", "127.0.0.1", "-p", str(sipp_port),
        "-r", str(rate), "-m", str(calls), "-l", str(limit),
        "-recv_timeout", "5000", "-timeout", f"{int(seconds * 3 + 30)}s",
        "-trace_stat", "-stf", str(stat), "-fd", "1",
        "-trace_rtt", "-rtt_freq", str(rtt_batch), "-nostdin",
        f"127.0.0.1:{server.port}",
    ]  # fmt: skip
    server.check_alive()
    # The main thread runs the event loop; aiosqlite's thread does the SQLite work.
    loop0 = cpu_seconds(server.pid, server.pid)
    cpu0, sipp0, wall0 = cpu_seconds(server.pid), children_cpu_seconds(), time.monotonic()
    sipp = subprocess.Popen(
        command, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _, err = sipp.communicate(timeout=seconds * 3 + 60)
    finally:
        if sipp.poll() is None:
            sipp.kill()
            sipp.wait(5)
    wall = time.monotonic() - wall0
    server.check_alive()
    server_cpu = cpu_seconds(server.pid) - cpu0
    loop_cpu = cpu_seconds(server.pid, server.pid) - loop0
    sipp_cpu = children_cpu_seconds() - sipp0
    if not stat.exists():
        raise RuntimeError(f"SIPp wrote no statistics (exit {sipp.returncode}): {err.decode()}")
    with stat.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter=";"))
    last = rows[-1]
    successful = int(last["SuccessfulCall(C)"])
    failed = int(last["FailedCall(C)"])
    unfinished = max(0, int(last["OutgoingCall(C)"]) - successful - failed)
    elapsed = sipp_time(last["CurrentTime"]) - sipp_time(last["StartTime"])
    rtts = response_times(directory, sipp.pid)
    if not rtts:  # fall back on SIPp's own mean, whole milliseconds only
        rtts = [sipp_duration_ms(last["ResponseTime1(C)"])] if successful else [0.0]
    return Step(
        target_rate=rate,
        calls=calls,
        achieved_rate=successful / elapsed if elapsed > 0 else 0.0,
        successful=successful,
        failed=failed + unfinished,
        retransmissions=int(last["Retransmissions(C)"]),
        response_ms=sum(rtts) / len(rtts),
        response_p50_ms=rtts[len(rtts) // 2],
        response_p99_ms=rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))],
        response_samples=len(rtts),
        wall_s=wall,
        server_cpu_s=server_cpu,
        server_cpu_pct=100 * server_cpu / wall,
        loop_cpu_pct=100 * loop_cpu / wall,
        cpu_us_per_registration=1e6 * server_cpu / successful if successful else None,
        sipp_cpu_pct=100 * sipp_cpu / wall,
        sipp_exit=sipp.returncode,
    )


def response_times(directory: Path, pid: int) -> list[float]:
    """Per-registration times (ms, sorted) from SIPp's -trace_rtt file of process `pid`.

    SIPp stamps them with its coarse loop clock: single values are multiples of a few ms,
    so a mean well under 1 ms means most registrations finished within one tick.
    """
    values: list[float] = []
    for path in directory.glob(f"*_{pid}_rtt.csv"):
        for line in path.read_text().splitlines()[1:]:
            fields = line.split(";")
            with contextlib.suppress(IndexError, ValueError):
                values.append(float(fields[1]))
        path.unlink()
    return sorted(values)


def count_bindings(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT count(*) FROM bindings WHERE expires_at > ?", (time.time(),))
        return int(row.fetchone()[0])


def print_table(steps: list[Step]) -> None:
    base = steps[0]

    def ratio(value: float | None, reference: float | None) -> str:
        return f"{value / reference:6.2f}" if value and reference else "     -"

    header = (
        f"{'target/s':>8} {'achieved/s':>10} {'ok':>7} {'failed':>6} {'retrans':>7} "
        f"{'srv CPU%':>8} {'loop%':>5} {'us/reg':>7} {'x low':>6} {'resp ms':>8} {'p99 ms':>7} "
        f"{'sipp CPU%':>9}"
    )
    print(header)
    print("-" * len(header))
    for s in steps:
        us = s.cpu_us_per_registration
        print(
            f"{s.target_rate:>8} {s.achieved_rate:>10.0f} {s.successful:>7} {s.failed:>6} "
            f"{s.retransmissions:>7} {s.server_cpu_pct:>8.0f} {s.loop_cpu_pct:>5.0f} "
            f"{f'{us:7.0f}' if us else '      -'} {ratio(us, base.cpu_us_per_registration)} "
            f"{s.response_ms:>8.2f} {s.response_p99_ms:>7.0f} {s.sipp_cpu_pct:>9.0f}"
        )


def sipp_version() -> str:
    try:
        out = subprocess.run(["sipp", "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return next((line.strip() for line in out.stdout.splitlines() if "SIPp" in line), "unknown")


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"short smoke run ({' and '.join(map(str, QUICK_RATES))}/s, 1 s each)",
    )
    parser.add_argument("--max-rate", type=int, default=None, help="highest rate step (/s)")
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=None,
        help="how long each step pushes load (default 3, quick 1)",
    )
    parser.add_argument(
        "--rates",
        type=lambda t: [int(r) for r in t.split(",")],
        help="explicit comma-separated rate steps",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON file (default results/register.json, results/register-quick.json with --quick)",
    )
    parser.add_argument(
        "--scenario",
        type=Path,
        default=None,
        help="SIPp scenario file instead of the embedded register.xml",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="run the server under cProfile and write its stats here",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stats)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("sipp") is None:
        print("sipp is not installed (Debian: apt-get install sip-tester)", file=sys.stderr)
        return 2
    rates = list(args.rates or (QUICK_RATES if args.quick else RATES))
    if args.max_rate is not None:
        rates = [r for r in rates if r <= args.max_rate] or [args.max_rate]
    seconds = args.step_seconds or (1.0 if args.quick else 3.0)
    output = args.output or RESULTS / ("register-quick.json" if args.quick else "register.json")
    users = max(round(r * seconds) for r in rates)

    # SIGTERM (e.g. from `timeout`) unwinds through the finally blocks like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    directory = Path(tempfile.mkdtemp(prefix="pbx-bench-"))
    server: Server | None = None
    steps: list[Step] = []
    try:
        port = free_port()
        config = directory / "pbx.toml"
        config.write_text(
            f'data_dir = "data"\nlog_level = "warning"\n\n'
            f'[sip]\nlisten = ["udp:127.0.0.1:{port}"]\n\n'
            "[registrar]\nqualify_interval = 0\n"
        )
        scenario = args.scenario.resolve() if args.scenario else directory / "register.xml"
        if args.scenario is None:
            scenario.write_text(SCENARIO)
        started = time.monotonic()
        users_csv = write_users(config, users, directory)
        print(f"{users} users written in {time.monotonic() - started:.1f} s", flush=True)
        server = Server(config, port, directory / "pbx.log", args.profile)
        server.start()
        sipp_port = free_port()
        print(
            f"pbx serve pid {server.pid} on udp 127.0.0.1:{port}; steps {rates}/s, "
            f"{seconds:g} s each",
            flush=True,
        )
        for rate in rates:
            step = run_step(rate, seconds, users, users_csv, scenario, server, sipp_port, directory)
            steps.append(step)
            print(
                f"  {rate}/s: {step.successful} ok, {step.failed} failed, "
                f"{step.retransmissions} retrans, {step.achieved_rate:.0f}/s achieved",
                flush=True,
            )
            if not step.clean or step.achieved_rate < SATURATED * rate:
                break
        exit_code = server.stop()
        bindings = count_bindings(directory / "data" / "pbx.sqlite3")
        warnings = server.log_tail(10)
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)

    # Every step starts at the top of the SEQUENTIAL users file, so a step's successful
    # registrations are distinct users: the database holds at least the largest such set,
    # and no more than the users any step reached.
    expected_min = max(s.successful for s in steps)
    expected_max = max(min(s.calls, users) for s in steps)
    persisted = expected_min <= bindings <= expected_max
    clean = [s for s in steps if s.clean]
    best = max(clean, key=lambda s: s.target_rate) if clean else None

    print()
    print_table(steps)
    print()
    print(
        "registration = REGISTER/401 + REGISTER/200. us/reg: server CPU microseconds per\n"
        "registration; 'x low': us/reg relative to the lowest step "
        f"({steps[0].target_rate}/s); srv CPU%:\n"
        "server CPU time / wall time, 100 = one core, all threads; loop%: the main thread\n"
        "alone (the event loop; near 100 it is saturated, the rest is aiosqlite's thread);\n"
        "resp ms / p99 ms: first REGISTER sent to 200 received, SIPp clock (a few ms ticks)."
    )
    print(
        f"bindings in the database after shutdown: {bindings} "
        f"(expected {expected_min}..{expected_max}): {'ok' if persisted else 'MISSING'}"
    )
    if best:
        print(
            f"highest clean rate: {best.target_rate}/s (achieved {best.achieved_rate:.0f}/s), "
            f"{best.cpu_us_per_registration:.0f} us server CPU per registration"
        )
    else:
        print("no step ran without failures or retransmissions")
    if warnings:
        print(f"server log (tail):\n{warnings}")
    if exit_code not in (0, None):
        print(f"pbx serve exited with {exit_code}")

    summary: dict[str, Any] = {
        "max_clean_rate": best.target_rate if best else None,
        "max_clean_achieved_rate": round(best.achieved_rate, 1) if best else None,
        "cpu_us_per_registration": (
            round(best.cpu_us_per_registration, 1)
            if best and best.cpu_us_per_registration
            else None
        ),
        "bindings_persisted": bindings,
        "bindings_expected": [expected_min, expected_max],
        "persisted_ok": persisted,
        "server_exit": exit_code,
    }
    base_us = steps[0].cpu_us_per_registration
    report = {
        "benchmark": "register",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": git_commit(),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sipp": sipp_version(),
            "profiled": args.profile is not None,
        },
        "settings": {"rates": rates, "step_seconds": seconds, "users": users, "quick": args.quick},
        "steps": [
            {
                **asdict(s),
                "clean": s.clean,
                "cpu_vs_lowest": (
                    round(s.cpu_us_per_registration / base_us, 3)
                    if s.cpu_us_per_registration and base_us
                    else None
                ),
            }
            for s in steps
        ],
        "summary": summary,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {output}")
    if args.profile:
        import pstats

        print(f"\nserver profile {args.profile}:")
        stats = pstats.Stats(str(args.profile))
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(25)
    return 0 if best and persisted else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        sys.exit(130)
