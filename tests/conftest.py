"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pbx import config as pbx_config
from pbx.server import Exchange
from tests.support.pbxproc import PbxProcess, make_pbx, write_config
from tests.support.ports import free_port

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def pbx_proc(tmp_path: Path) -> Iterator[PbxProcess]:
    """A `pbx serve` process (not yet started) with its config in tmp_path."""
    proc = make_pbx(tmp_path)
    yield proc
    proc.stop()


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    """An in-process exchange on free loopback ports, users 1001 (pw1001) and 1002."""
    port = free_port()
    path = write_config(tmp_path, port, "[registrar]\nqualify_interval = 0\n")
    ex = Exchange(pbx_config.load(path))
    await ex.start()
    assert ex.store is not None
    from pbx.sip.digest import ha1
    from pbx.store import User

    for ext in ("1001", "1002"):
        pw = "pw" + ext
        realm = ex.config.realm
        await ex.store.add_user(
            User(ext, "", realm, ha1("MD5", ext, realm, pw), ha1("SHA-256", ext, realm, pw)), 0
        )
    assert ex.registrar is not None
    await ex.registrar.refresh_users(force=True)
    yield ex
    await ex.stop()
