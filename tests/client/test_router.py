"""The router's bookkeeping: every frame counted exactly once, counts kept across changes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

from agentstream import Ticker  # noqa: TC001 - handlers resolve it at run time

from .conftest import make_client, running, wait_for

if TYPE_CHECKING:
    from agentstream.sim import SimExchange

pytestmark = pytest.mark.anyio


async def test_each_frame_is_a_message_or_a_drop_never_both(sim: SimExchange) -> None:
    ws = make_client(sim)
    plain: list[dict[str, Any]] = []
    typed: list[Ticker] = []

    def on_typed(t: Ticker) -> None:
        typed.append(t)

    ws.on_ticker("BTCUSDT", plain.append, every=True)
    ws.on_ticker("BTCUSDT", on_typed, every=True)
    async with running(ws):
        await wait_for(lambda: plain and typed, what="ticks")
        before = ws.stats
        frames = [
            '{"channel":"ticker","symbol":"BTCUSDT","data":[1,2]}',  # data not an object
            '{"channel":"ticker","symbol":"BTCUSDT","data":{"price":"-1","timestamp":1}}',
            '{"channel":"ticker","symbol":"","data":{"price":"1"}}',  # empty symbol
            "not json",
        ]
        for f in frames:
            sim.send_raw(f)
        await wait_for(
            lambda: ws.stats.dropped_frames - before.dropped_frames == 3, what="the drops"
        )
        await anyio.sleep(0.05)  # let the handler's queue drain
        after = ws.stats
        # Every ticker:BTCUSDT message reached the dict handler (the invalid event too,
        # it is a valid dict); the dropped frame is not a message.
        assert after.messages["ticker:BTCUSDT"] == len(plain)
    assert after.invalid_events - before.invalid_events == 1
    assert any(d["price"] == "-1" for d in plain)
    assert all(t.price > 0 for t in typed)


async def test_ticker_all_counts_survive_adding_a_handler(sim: SimExchange) -> None:
    ws = make_client(sim)
    ws.on_ticker("all", lambda d: None)
    async with running(ws):
        await wait_for(lambda: ws.stats.messages.get("ticker:BTCUSDT", 0) >= 3, what="ticks")
        sim.go_silent()  # freeze the counts (the stale timeout is 1 s)
        await anyio.sleep(0.1)
        counted = ws.stats.messages
        ws.on_ticker("BTCUSDT", lambda d: None)  # rebuilds the routing table
        ws.on_ticker("ETHUSDT", lambda d: None)
        await anyio.sleep(0.05)
        now = ws.stats.messages
        sim.resume()
    assert counted["ticker:BTCUSDT"] >= 3
    assert now == counted
