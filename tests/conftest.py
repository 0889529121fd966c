"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pbx import config as pbx_config
from pbx.server import Exchange
from pbx.sip.digest import ha1
from pbx.store import User
from tests.support.pbxproc import PbxProcess, make_pbx, write_config
from tests.support.ports import free_port


async def add_users(ex: Exchange, passwords: dict[str, str]) -> None:
    """Create users in a started in-process exchange and make its registrar see them."""
    assert ex.store is not None
    assert ex.registrar is not None
    realm = ex.config.realm
    for ext, pw in passwords.items():
        md5, sha256 = ha1("MD5", ext, realm, pw), ha1("SHA-256", ext, realm, pw)
        await ex.store.add_user(User(ext, "", realm, md5, sha256), 0)
    await ex.registrar.refresh_users(force=True)


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
    path = write_config(
        tmp_path,
        port,
        '[registrar]\nqualify_interval = 0\n[auth]\nalgorithms = ["MD5", "SHA-256"]\n',
    )
    ex = Exchange(pbx_config.load(path))
    await ex.start()
    await add_users(ex, {"1001": "pw1001", "1002": "pw1002"})
    yield ex
    await ex.stop()
