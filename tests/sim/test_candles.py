"""Candles: built from the same ticks as the ticker, updates while forming, a final one
with ``is_closed: true``, consecutive open times with flat zero-volume candles in gaps."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from agentstream.sim import INTERVAL_MS, SimExchange
from tests.sim.helpers import (
    ISO_S,
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
FIELDS = {"time", "open", "high", "low", "close", "volume", "is_closed"}


def closed(symbol: str, interval: str) -> Any:
    return lambda m: (
        m.get("channel") == "candles"
        and m.get("symbol") == symbol
        and m.get("interval") == interval
        and m["data"]["is_closed"] is True
    )


def check_candle(m: dict[str, Any], sim: SimExchange, symbol: str, interval: str) -> None:
    assert set(m) == {"channel", "symbol", "interval", "data"}
    assert (m["channel"], m["symbol"], m["interval"]) == ("candles", symbol, interval)
    d = m["data"]
    assert set(d) == FIELDS
    assert isinstance(d["is_closed"], bool)
    assert ISO_S.match(d["time"]), d["time"]
    t = parse_iso(d["time"])
    assert int(t.timestamp() * 1000) % INTERVAL_MS[interval] == 0  # aligned to the interval
    pair = sim.market.pairs[symbol]
    for k in ("open", "high", "low", "close"):
        assert decimals(d[k]) == pair.price_dp, (k, d)
    assert decimals(d["volume"]) == pair.qty_dp
    o, h, lo, c = (Decimal(d[k]) for k in ("open", "high", "low", "close"))
    assert lo <= o <= h and lo <= c <= h, d
    assert lo > 0 and Decimal(d["volume"]) >= 0


def check_consecutive(candles: list[dict[str, Any]], interval: str) -> None:
    step = timedelta(milliseconds=INTERVAL_MS[interval])
    times = [parse_iso(m["data"]["time"]) for m in candles]
    for a, b in itertools.pairwise(times):
        assert b - a == step, (interval, a, b)


async def test_closed_1m_candles_are_consistent_and_consecutive(
    session: aiohttp.ClientSession,
) -> None:
    async with fast_sim(speed=3600) as sim, session.ws_connect(sim.ws_url()) as ws:
        assert (await subscribe(ws, channel="candles", symbol="btcusdt", interval="1m"))[
            "channel"
        ] == "candles:BTCUSDT:1m"
        finals = await collect(ws, closed("BTCUSDT", "1m"), 12)
        for m in finals:
            check_candle(m, sim, "BTCUSDT", "1m")
        check_consecutive(finals, "1m")


async def test_updates_while_forming_then_the_final_candle(session: aiohttp.ClientSession) -> None:
    async with fast_sim(speed=600) as sim, session.ws_connect(sim.ws_url()) as ws:
        await subscribe(ws, channel="candles", symbol="BTCUSDT", interval="1m")
        msgs = [m for m in await collect_for(ws, 0.5) if m.get("channel") == "candles"]
        for m in msgs:
            check_candle(m, sim, "BTCUSDT", "1m")
        updates = [m["data"] for m in msgs if not m["data"]["is_closed"]]
        finals = [m["data"] for m in msgs if m["data"]["is_closed"]]
        assert len(updates) >= 10 and len(finals) >= 3
        # Each final candle carries the state of the last update of its bucket, and
        # nothing of that bucket comes after its final candle.
        for f in finals:
            same = [i for i, m in enumerate(msgs) if m["data"]["time"] == f["time"]]
            pos = msgs.index(next(m for m in msgs if m["data"] is f))
            assert max(same) == pos
            before = [msgs[i]["data"] for i in same if not msgs[i]["data"]["is_closed"]]
            if before and Decimal(f["volume"]) > 0:
                assert {**before[-1], "is_closed": True} == f
        # Only one final per bucket.
        assert len({f["time"] for f in finals}) == len(finals)


async def test_candles_are_built_from_the_ticker_trades(session: aiohttp.ClientSession) -> None:
    async with fast_sim(speed=600) as sim, session.ws_connect(sim.ws_url()) as ws:
        await subscribe(ws, channel="ticker", symbol="BTCUSDT")
        await subscribe(ws, channel="candles", symbol="BTCUSDT", interval="1m")
        msgs = await collect_for(ws, 0.7)
        ticks = [m["data"] for m in msgs if m.get("channel") == "ticker"]
        finals = [
            m["data"] for m in msgs if m.get("channel") == "candles" and m["data"]["is_closed"]
        ]
        assert len(finals) >= 4
        first_tick = parse_iso(ticks[0]["timestamp"])
        checked = 0
        for f in finals:
            start = parse_iso(f["time"])
            if start < first_tick:
                continue  # the bucket began before we saw its trades
            end = start + timedelta(minutes=1)
            inside = [t for t in ticks if start <= parse_iso(t["timestamp"]) < end]
            if not inside:
                assert Decimal(f["volume"]) == 0
                assert f["open"] == f["high"] == f["low"] == f["close"]
                continue
            prices = [Decimal(t["price"]) for t in inside]
            assert Decimal(f["open"]) == prices[0]
            assert Decimal(f["close"]) == prices[-1]
            assert Decimal(f["high"]) == max(prices)
            assert Decimal(f["low"]) == min(prices)
            assert Decimal(f["volume"]) == sum(Decimal(t["quantity"]) for t in inside)
            checked += 1
        assert checked >= 2


async def test_a_pair_that_did_not_trade_gets_flat_zero_volume_candles(
    session: aiohttp.ClientSession,
) -> None:
    # The last pair is the least active one: at this rate it trades about once a second,
    # so most of its 1m candles (1/60 s each at speed 3600) see no trade.
    async with fast_sim(speed=3600, tick_rate=500) as sim, session.ws_connect(sim.ws_url()) as ws:
        sym = list(sim.market.pairs)[-1]
        await subscribe(ws, channel="candles", symbol=sym, interval="1m")
        finals = await collect(ws, closed(sym, "1m"), 20)
        for m in finals:
            check_candle(m, sim, sym, "1m")
        check_consecutive(finals, "1m")
        flat = [m["data"] for m in finals if Decimal(m["data"]["volume"]) == 0]
        assert len(flat) >= 10
        for d in flat:
            assert d["open"] == d["high"] == d["low"] == d["close"]
        # A flat candle continues at the previous close.
        for a, b in itertools.pairwise(finals):
            if Decimal(b["data"]["volume"]) == 0:
                assert b["data"]["open"] == a["data"]["close"]


async def test_every_interval_closes_consecutive_candles(session: aiohttp.ClientSession) -> None:
    # At 400,000x a day lasts about 0.2 s.
    async with fast_sim(speed=400_000) as sim, session.ws_connect(sim.ws_url()) as ws:
        intervals = ["5m", "15m", "1h", "4h", "1d"]
        for iv in intervals:
            await subscribe(ws, channel="candles", symbol="ETHUSDT", interval=iv)
        msgs = [m for m in await collect_for(ws, 0.8) if m.get("channel") == "candles"]
        for iv in intervals:
            finals = [m for m in msgs if m["interval"] == iv and m["data"]["is_closed"]]
            assert len(finals) >= 2, iv
            for m in finals:
                check_candle(m, sim, "ETHUSDT", iv)
            check_consecutive(finals, iv)
        days = [parse_iso(m["data"]["time"]) for m in msgs if m["interval"] == "1d"]
        assert all(d.time() == datetime.min.time() for d in days)  # midnight UTC


async def test_candles_only_for_the_subscribed_symbol_and_interval(
    sim: SimExchange, ws: WS
) -> None:
    await subscribe(ws, channel="candles", symbol="BTCUSDT", interval="5m")
    msgs = await collect(ws, on("candles"), 5)
    assert {(m["symbol"], m["interval"]) for m in msgs} == {("BTCUSDT", "5m")}
