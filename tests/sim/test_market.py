"""The market: 600+ USDT pairs, ticker messages, decimal precision, timestamps, the clock."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import anyio
import pytest

from agentstream.sim import Market, SimExchange
from tests.sim.helpers import (
    ISO_MS,
    SYMBOL,
    collect,
    collect_for,
    decimals,
    fast_sim,
    on,
    parse_iso,
    subscribe,
)

pytestmark = pytest.mark.anyio

WS = aiohttp.ClientWebSocketResponse


async def get_pairs(session: aiohttp.ClientSession, sim: SimExchange) -> dict[str, dict[str, Any]]:
    async with session.get(f"{sim.http_url}/api/v1/market/pairs") as r:
        assert r.status == 200
        body = await r.json()
    return {p["symbol"]: p for p in body["pairs"]}


async def test_market_has_600_plus_usdt_pairs_with_matching_price_precision(
    sim: SimExchange, session: aiohttp.ClientSession
) -> None:
    pairs = await get_pairs(session, sim)
    assert len(pairs) >= 600
    for sym in ("BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT"):
        assert sym in pairs
    for sym, p in pairs.items():
        assert SYMBOL.match(sym), sym
        assert set(p) == {"symbol", "price_decimals", "quantity_decimals"}
        assert isinstance(p["price_decimals"], int) and 2 <= p["price_decimals"] <= 8
        assert isinstance(p["quantity_decimals"], int) and 0 <= p["quantity_decimals"] <= 8

    # Every pair's price has exactly its price_decimals places, and is positive.
    async def check(sym: str) -> None:
        async with session.get(f"{sim.http_url}/api/v1/market/price/{sym}") as r:
            assert r.status == 200
            body = await r.json()
        assert body["symbol"] == sym
        assert decimals(body["price"]) == pairs[sym]["price_decimals"], body
        assert Decimal(body["price"]) > 0
        assert ISO_MS.match(body["timestamp"])

    syms = list(pairs)
    for i in range(0, len(syms), 50):
        async with anyio.create_task_group() as tg:
            for sym in syms[i : i + 50]:
                tg.start_soon(check, sym)


async def test_plausible_prices_for_the_majors(
    sim: SimExchange, session: aiohttp.ClientSession
) -> None:
    async def price(sym: str) -> Decimal:
        async with session.get(f"{sim.http_url}/api/v1/market/price/{sym}") as r:
            return Decimal((await r.json())["price"])

    assert 10_000 < await price("BTCUSDT") < 500_000
    assert 500 < await price("ETHUSDT") < 20_000
    assert 0 < await price("DOGEUSDT") < 5
    assert decimals(str(await price("BTCUSDT"))) == 2


async def test_price_endpoint_upper_cases_and_404s(
    sim: SimExchange, session: aiohttp.ClientSession
) -> None:
    async with session.get(f"{sim.http_url}/api/v1/market/price/ethusdt") as r:
        assert r.status == 200
        assert (await r.json())["symbol"] == "ETHUSDT"
    async with session.get(f"{sim.http_url}/api/v1/market/price/NOPEUSDT") as r:
        assert r.status == 404
        err = (await r.json())["error"]
        assert err["code"] == "INVALID_SYMBOL"
        assert "NOPEUSDT" in err["message"]


async def test_ticker_message_shape(ws: WS, sim: SimExchange) -> None:
    await subscribe(ws, channel="ticker", symbol="BTCUSDT")
    for m in await collect(ws, on("ticker"), 5):
        assert set(m) == {"channel", "symbol", "data"}
        assert m["symbol"] == "BTCUSDT"
        d = m["data"]
        assert set(d) == {"price", "quantity", "timestamp", "is_buyer_maker"}
        pair = sim.market.pairs["BTCUSDT"]
        assert decimals(d["price"]) == pair.price_dp == 2
        assert decimals(d["quantity"]) == pair.qty_dp
        assert Decimal(d["quantity"]) > 0
        assert ISO_MS.match(d["timestamp"]), d["timestamp"]
        assert isinstance(d["is_buyer_maker"], bool)


async def test_ticker_all_carries_every_pair_with_its_precision(
    session: aiohttp.ClientSession,
) -> None:
    async with fast_sim(tick_rate=50_000) as sim, session.ws_connect(sim.ws_url()) as ws:
        pairs = await get_pairs(session, sim)
        await subscribe(ws, channel="ticker_all")
        seen: set[str] = set()
        msgs = [m for m in await collect_for(ws, 1.0) if m.get("channel") == "ticker"]
        assert len(msgs) > 5_000
        for m in msgs:
            sym = m["symbol"]
            seen.add(sym)
            d = m["data"]
            assert decimals(d["price"]) == pairs[sym]["price_decimals"], m
            assert decimals(d["quantity"]) == pairs[sym]["quantity_decimals"], m
            assert Decimal(d["price"]) > 0 and Decimal(d["quantity"]) > 0
        # Activity is skewed (BTC trades most) but the feed covers the market.
        assert len(seen) >= 300, len(seen)
        assert "BTCUSDT" in seen


async def test_the_clock_runs_at_speed(session: aiohttp.ClientSession) -> None:
    async with fast_sim(speed=600) as sim:
        url = f"{sim.http_url}/api/v1/market/price/BTCUSDT"
        async with session.get(url) as r:
            t1 = parse_iso((await r.json())["timestamp"])
        await anyio.sleep(0.25)
        async with session.get(url) as r:
            t2 = parse_iso((await r.json())["timestamp"])
        # 0.25 s real at 600x is 150 s simulated (allow for scheduling delays)
        assert timedelta(seconds=140) <= t2 - t1 <= timedelta(seconds=400)


async def test_ticker_timestamps_are_simulated_time_and_ordered(
    session: aiohttp.ClientSession,
) -> None:
    async with fast_sim(speed=3600) as sim, session.ws_connect(sim.ws_url()) as ws:
        await subscribe(ws, channel="ticker", symbol="BTCUSDT")
        msgs = await collect(ws, on("ticker"), 30)
        times = [parse_iso(m["data"]["timestamp"]) for m in msgs]
        assert times == sorted(times)
        assert times[-1] - times[0] >= timedelta(seconds=30)  # far more than real time


@pytest.mark.parametrize("rate", [200.0, 2000.0])
async def test_tick_rate_is_configurable(session: aiohttp.ClientSession, rate: float) -> None:
    async with fast_sim(tick_rate=rate) as sim, session.ws_connect(sim.ws_url()) as ws:
        await subscribe(ws, channel="ticker_all")
        n = len([m for m in await collect_for(ws, 0.5) if m.get("channel") == "ticker"])
        assert 0.25 * rate <= n <= 0.75 * rate, n
        assert sim.stats.ticks >= n


def test_the_market_is_seeded() -> None:
    a, b, c = Market(seed=7), Market(seed=7), Market(seed=8)
    assert list(a.pairs) == list(b.pairs)
    ta = [(t.pair.symbol, t.price, t.qty) for t in a.ticks(500, 0)]
    tb = [(t.pair.symbol, t.price, t.qty) for t in b.ticks(500, 0)]
    assert ta == tb
    assert list(c.pairs) != list(a.pairs)


async def test_same_seed_same_market_over_the_wire(session: aiohttp.ClientSession) -> None:
    async with fast_sim(seed=5) as s1, fast_sim(seed=5) as s2:
        assert await get_pairs(session, s1) == await get_pairs(session, s2)


async def test_messages_are_compact_json_text_frames(ws: WS) -> None:
    await subscribe(ws, channel="ticker", symbol="BTCUSDT")
    msg = await ws.receive(timeout=2)
    while json.loads(msg.data).get("channel") != "ticker":
        msg = await ws.receive(timeout=2)
    assert msg.type is aiohttp.WSMsgType.TEXT
    assert isinstance(json.loads(msg.data)["data"]["price"], str)  # never a float
