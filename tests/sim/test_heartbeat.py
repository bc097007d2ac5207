"""Heartbeat: server pings, both pong spellings, a late pong drops the client (4408)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from typing import Any

import aiohttp
import anyio
import pytest

from agentstream.sim import CLOSE_PONG_TIMEOUT, SimExchange
from tests.sim.helpers import expect_end, fast_sim, recv_until, send, subscribe, wait_for

pytestmark = pytest.mark.anyio

WS = aiohttp.ClientWebSocketResponse


def is_ping(m: dict[str, Any]) -> bool:
    return m.get("type") == "ping"


async def test_server_pings_every_ping_interval(session: aiohttp.ClientSession) -> None:
    async with (
        fast_sim(ping_interval=0.1, pong_timeout=1.0) as sim,
        session.ws_connect(sim.ws_url()) as ws,
    ):
        stamps = []
        for _ in range(4):
            ping = await recv_until(ws, is_ping, timeout=1.0)
            assert ping == {"type": "ping"}  # exactly the protocol's message
            stamps.append(time.monotonic())
            await send(ws, {"action": "pong"})
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert all(0.05 <= g <= 0.6 for g in gaps), gaps


async def test_ping_frame_is_a_json_text_frame(session: aiohttp.ClientSession) -> None:
    async with fast_sim(ping_interval=0.1) as sim, session.ws_connect(sim.ws_url()) as ws:
        msg = await ws.receive(timeout=1.0)
        assert msg.type is aiohttp.WSMsgType.TEXT
        assert json.loads(msg.data) == {"type": "ping"}


@pytest.mark.parametrize(
    "pong",
    [{"action": "pong"}, {"type": "pong"}, {"type": "pong", "action": "pong"}],
    ids=["action", "type", "both"],
)
async def test_answered_pings_keep_the_connection(
    session: aiohttp.ClientSession, pong: dict[str, str]
) -> None:
    async with (
        fast_sim(ping_interval=0.1, pong_timeout=0.15) as sim,
        session.ws_connect(sim.ws_url()) as ws,
    ):
        await subscribe(ws, channel="orders")
        pings = 0
        with anyio.move_on_after(0.7):
            while True:
                msg = await ws.receive()
                assert msg.type is aiohttp.WSMsgType.TEXT, (msg, ws.close_code)
                if json.loads(msg.data).get("type") == "ping":
                    pings += 1
                    await send(ws, pong)
        assert pings >= 4
        assert not ws.closed
        (record,) = sim.open_connections()
        assert record.pongs >= 4
        # the connection is fully usable after many heartbeats
        assert (await subscribe(ws, channel="portfolio"))["type"] == "subscribed"


async def test_a_client_that_never_pongs_is_dropped_with_4408(
    session: aiohttp.ClientSession,
) -> None:
    async with (
        fast_sim(ping_interval=0.1, pong_timeout=0.2) as sim,
        session.ws_connect(sim.ws_url()) as ws,
    ):
        t0 = time.monotonic()
        await recv_until(ws, is_ping, timeout=1.0, answer_pings=False)
        end = await expect_end(ws, timeout=2.0)
        took = time.monotonic() - t0
        assert end.type is aiohttp.WSMsgType.CLOSE
        assert end.data == CLOSE_PONG_TIMEOUT == 4408
        assert 0.2 <= took <= 1.5, took
        await wait_for(lambda: sim.open_connections() == [])
        assert sim.connection_log[-1].close_reason == "pong timeout"


async def test_a_late_pong_does_not_save_the_client(session: aiohttp.ClientSession) -> None:
    async with (
        fast_sim(ping_interval=0.1, pong_timeout=0.15) as sim,
        session.ws_connect(sim.ws_url()) as ws,
    ):
        await recv_until(ws, is_ping, timeout=1.0, answer_pings=False)
        await anyio.sleep(0.2)  # past the pong timeout
        with contextlib.suppress(ConnectionError):  # the server may have closed already
            await send(ws, {"type": "pong", "action": "pong"})
        end = await expect_end(ws, timeout=2.0)
        assert (end.type, end.data) == (aiohttp.WSMsgType.CLOSE, 4408)


async def test_default_heartbeat_is_30s_ping_10s_pong(sim: SimExchange) -> None:
    # The fixture's sim only overrides speed and rates; the heartbeat is the platform's.
    assert (sim.config.ping_interval, sim.config.pong_timeout) == (30.0, 10.0)
    assert sim.config.subscription_limit == 10


def heartbeat_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("sim-heartbeat-")]


async def test_leaving_right_after_a_pong_ends_the_connection_handler(
    session: aiohttp.ClientSession,
) -> None:
    # Regression: a cancellation arriving together with the pong was swallowed, and the
    # heartbeat task (and the handler waiting for it) outlived the connection.
    async with fast_sim(ping_interval=0.05, pong_timeout=5.0) as sim:
        for _ in range(3):
            ws = await session.ws_connect(sim.ws_url())
            await recv_until(ws, is_ping, timeout=1.0, answer_pings=False)
            await send(ws, {"action": "pong"})
            await ws.close()
        await wait_for(lambda: sim.open_connections() == [] and heartbeat_tasks() == [], 1.0)
        t0 = time.monotonic()
        await sim.stop()
        assert time.monotonic() - t0 < 0.3
