"""Firehose mode: ``ticker_all`` as fast as the socket takes it, in the protocol's shape."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from tests.sim.helpers import ISO_MS, SYMBOL, decimals, expect_quiet, fast_sim, send

if TYPE_CHECKING:
    from agentstream.sim import SimExchange

pytestmark = pytest.mark.anyio

WS = aiohttp.ClientWebSocketResponse

#: These tests read nothing but tickers and acks, so they keep the account's portfolio
#: snapshots (which the real server, and the sim by default, push to every socket of
#: the key) to sockets subscribed to them.
FIREHOSE: dict[str, Any] = {"firehose": True, "private_to_all_sockets": False}


async def read_tickers(ws: WS, seconds: float) -> list[dict[str, Any]]:
    """Every ticker message received in ``seconds``; fails on anything else."""
    out: list[dict[str, Any]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        msg = await ws.receive(timeout=2)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        data = json.loads(msg.data)
        if data.get("type") is not None:
            continue
        out.append(data)
    return out


async def test_firehose_streams_well_formed_tickers_fast(session: aiohttp.ClientSession) -> None:
    async with fast_sim(**FIREHOSE) as sim, session.ws_connect(sim.ws_url()) as ws:
        await send(ws, {"action": "subscribe", "channel": "ticker_all"})
        first = json.loads((await ws.receive(timeout=2)).data)
        assert first == {"type": "subscribed", "channel": "ticker:all"}
        msgs = await read_tickers(ws, 0.5)
        # Far beyond the market's tick rate (a loose floor: this test shares the CPU with
        # the server; bench/sim_firehose.py measures the real figure).
        assert len(msgs) > 5_000
        pairs = sim.market.pairs
        for m in msgs[:2000]:
            assert set(m) == {"channel", "symbol", "data"} and m["channel"] == "ticker"
            assert SYMBOL.match(m["symbol"])
            d = m["data"]
            assert set(d) == {"price", "quantity", "timestamp", "is_buyer_maker"}
            assert decimals(d["price"]) == pairs[m["symbol"]].price_dp
            assert decimals(d["quantity"]) == pairs[m["symbol"]].qty_dp
            assert ISO_MS.match(d["timestamp"])
            assert isinstance(d["is_buyer_maker"], bool)
        assert len({m["symbol"] for m in msgs}) >= 300


async def drain_until_ack(ws: WS, kind: str) -> None:
    while True:
        msg = await ws.receive(timeout=2)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        if json.loads(msg.data).get("type") == kind:
            return


async def test_firehose_stops_on_unsubscribe_and_does_not_double(
    session: aiohttp.ClientSession,
) -> None:
    async with fast_sim(**FIREHOSE) as sim, session.ws_connect(sim.ws_url()) as ws:
        await send(ws, {"action": "subscribe", "channel": "ticker_all"})
        await drain_until_ack(ws, "subscribed")
        await read_tickers(ws, 0.1)
        await send(ws, {"action": "unsubscribe", "channel": "ticker_all"})
        await drain_until_ack(ws, "unsubscribed")
        # Regression: the firehose kept streaming after the unsubscribe.
        await expect_quiet(ws, 0.3)
        # Subscribing twice starts one stream, not two (each frame sent once).
        await send(ws, {"action": "subscribe", "channel": "ticker_all"})
        await send(ws, {"action": "subscribe", "channel": "ticker_all"})
        await drain_until_ack(ws, "subscribed")
        await drain_until_ack(ws, "subscribed")
        assert len(firehose_tasks(sim)) == 1


def firehose_tasks(sim: SimExchange) -> list[asyncio.Task[object]]:
    """The running tasks that stream the firehose (whatever their name)."""
    return [
        t
        for t in asyncio.all_tasks()
        if getattr(getattr(t.get_coro(), "cr_code", None), "co_name", "") == "firehose"
    ]


async def test_firehose_mode_still_serves_everything_else(session: aiohttp.ClientSession) -> None:
    async with fast_sim(**FIREHOSE) as sim, session.ws_connect(sim.ws_url()) as ws:
        await send(ws, {"action": "subscribe", "channel": "orders"})
        assert json.loads((await ws.receive(timeout=2)).data) == {
            "type": "subscribed",
            "channel": "orders",
        }
        assert sim.config.firehose
