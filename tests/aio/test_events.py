"""The event bus: registration events in-process and through `pbx events --json`."""

from __future__ import annotations

import asyncio
import json
import select
import subprocess
import sys

from pbx.events import Event, EventBus, RegistrationChanged
from pbx.server import Exchange
from tests.aio.test_register_flow import server_of
from tests.support.pbxproc import PbxProcess
from tests.support.sipclient import SipTestClient


async def test_registration_lifecycle_events(exchange: Exchange) -> None:
    seen: list[Event] = []
    exchange.events.subscribe(seen.append)
    async with SipTestClient(server_of(exchange)) as ua:
        await ua.register("1001", "pw1001")
        await ua.register("1001", "pw1001")
        await ua.register("1001", "pw1001", expires=0)
    actions = [e.action for e in seen if isinstance(e, RegistrationChanged)]
    assert actions == ["registered", "refreshed", "unregistered"]
    first = seen[0].to_json()
    assert first["type"] == "registration"
    assert first["aor"] == "1001"
    assert first["transport"] == "udp"
    assert first["user_agent"] == "pbx-tests"


async def test_slow_follower_is_told_what_it_lost() -> None:
    bus = EventBus()
    follower = bus.follow(limit=2)
    task = asyncio.ensure_future(anext(follower))
    await asyncio.sleep(0)  # let the follower start and subscribe
    for n in range(5):
        bus.publish(RegistrationChanged(float(n), "1001", "sip:x", "registered"))
    first = await task
    assert first.to_json()["type"] == "events_lost"
    second = await anext(follower)
    assert second.to_json()["time"] == 3.0
    await follower.aclose()


def test_pbx_events_json_follows_a_running_server(pbx_proc: PbxProcess) -> None:
    pbx_proc.add_user("1001", "pw1001")
    pbx_proc.start()
    follower = subprocess.Popen(
        [sys.executable, "-m", "pbx", "-c", str(pbx_proc.config), "events", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The follower subscribes some time after it starts, and nothing tells us when:
        # register (a bounded number of times) until its first line arrives.
        async def register() -> int:
            async with SipTestClient(("127.0.0.1", pbx_proc.port)) as ua:
                return (await ua.register("1001", "pw1001")).status

        assert follower.stdout is not None
        for _ in range(20):
            assert asyncio.run(register()) == 200
            ready, _, _ = select.select([follower.stdout], [], [], 0.5)
            if ready:
                break
        line = json.loads(follower.stdout.readline())
        assert line["type"] == "registration"
        assert line["aor"] == "1001"
        assert line["action"] in ("registered", "refreshed")
        assert isinstance(line["time"], float)
    finally:
        follower.terminate()
        follower.wait(10)
    pbx_proc.stop()
