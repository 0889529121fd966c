"""sipvicious 0.3.8, the attacker's toolkit: pbx gives svwar nothing and throttles svcrack.

svwar finds extensions from differences between the answers to known and unknown users;
svcrack guesses passwords by answering qop=auth challenges. Both run bound to loopback,
with HOME in tmp_path (they keep sessions in ~/.sipvicious) and an explicit external IP
(without one, svcrack looks up its address by connecting to a public host).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop.helpers import add_users, configure
from tests.support.pbxproc import PbxProcess, make_pbx
from tests.support.ports import free_port

pytestmark = pytest.mark.interop

BIN = Path(sys.executable).parent
USERS = [(str(n), f"pw{n}") for n in range(1001, 1006)]
THROTTLE = "[auth]\nmax_failures = 5\nblock_seconds = 300\n"


def sipvicious(tool: str, home: Path, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run sipvicious_`tool` from 127.0.0.1 and a free port; (exit code, stdout, stderr)."""
    local = ["-b", "127.0.0.1", "-x", "127.0.0.1", "-P", str(free_port(both=False))]
    result = subprocess.run(
        [str(BIN / f"sipvicious_{tool}"), *local, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HOME": str(home)},
    )
    return result.returncode, result.stdout, result.stderr


@pytest.fixture
def pbx(pbx_proc: PbxProcess) -> PbxProcess:
    configure(pbx_proc, THROTTLE)
    add_users(pbx_proc, USERS)
    pbx_proc.start()
    return pbx_proc  # pbx_proc stops it


def test_svwar_finds_no_extensions(pbx: PbxProcess, tmp_path: Path) -> None:
    """Users 1001-1005 exist; scanning 1000-1025 must not tell them from the others.

    svwar first REGISTERs a made-up user to learn what "no such user" looks like; pbx
    challenges it like everyone, so svwar concludes it cannot enumerate and stops.
    """
    code, out, err = sipvicious(
        "svwar", tmp_path, "-e1000-1025", "-m", "REGISTER", "-p", str(pbx.port), "127.0.0.1"
    )
    assert code == 0, err
    assert "found nothing" in err, err
    assert "authentication request for an unknown extension" in err, err
    assert out.strip() == "", out


def test_svwar_forced_scan_finds_no_extensions(pbx: PbxProcess, tmp_path: Path) -> None:
    """--force scans past that check. svwar compares status lines: the first extension it
    tries, 1001, exists, and must be answered exactly like the made-up user was."""
    code, out, err = sipvicious(
        "svwar", tmp_path, "-e1001-1025", "-m", "REGISTER", "--force", "-v",
        "-p", str(pbx.port), "127.0.0.1",
    )  # fmt: skip
    assert code == 0, err
    assert "found nothing" in err, err
    assert "Bad user = SIP/2.0 401" in err, err  # what the made-up user got
    assert "exists" not in err, err  # svwar's verdict line for a told-apart extension
    assert out.strip() == "", out


def test_svcrack_is_throttled(pbx: PbxProcess, tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("".join(f"guess{n:03d}\n" for n in range(200)) + "pw1001\n")
    code, out, err = sipvicious(
        "svcrack", tmp_path, "-u", "1001", "-d", str(words), "--maximumtime", "1",
        "-p", str(pbx.port), "127.0.0.1",
    )  # fmt: skip
    assert "found nothing" in err, (code, out, err)
    assert "pw1001" not in out, out

    # pbx judged exactly max_failures guesses, then stopped answering the source at all.
    failures = [line for line in pbx.log if "failed authentication for '1001'" in line]
    blocking = [line for line in pbx.log if "blocking 127.0.0.1" in line]
    assert len(failures) == 4, failures
    assert len(blocking) == 1, pbx.log[-20:]
    assert "WARNING" in blocking[0] and "'1001'" in blocking[0]


def test_svcrack_wordlist_works_without_throttle(tmp_path: Path) -> None:
    """The control for test_svcrack_is_throttled: same tool and wordlist, throttle off.

    It proves svcrack can talk digest to pbx at all, so "found nothing" above is the
    throttle's doing.
    """
    pbx = make_pbx(tmp_path, "[auth]\nmax_failures = 0\nmax_source_failures = 0\n")
    try:
        add_users(pbx, USERS)
        pbx.start()
        words = tmp_path / "words.txt"
        words.write_text("".join(f"guess{n:03d}\n" for n in range(200)) + "pw1001\n")
        code, out, err = sipvicious(
            "svcrack", tmp_path, "-u", "1001", "-d", str(words), "--maximumtime", "1",
            "-p", str(pbx.port), "127.0.0.1",
        )  # fmt: skip
        assert code == 40, err  # svcrack's "found something"
        assert any(line.split() == ["|", "1001", "|", "pw1001", "|"] for line in out.splitlines())
        assert not any("blocking" in line for line in pbx.log)
    finally:
        pbx.stop()
