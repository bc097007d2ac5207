"""Gaps made visible: after a reconnect, on_gap says which channels were down and for how long.

The sim runs at speed 60 (a 1m candle closes every real second), so a few seconds of
downtime lose a known set of candles, which the gap report must list exactly.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import anyio
import pytest

from agentstream import Candle, Gap, OrderUpdate
from agentstream._router import missing_candles as _missing
from agentstream.protocols.agentexchange import KINDS
from agentstream.sim import DEMO_API_KEY, SimExchange

from .conftest import make_client, running, wait_for


def missing_candles(interval: str, last: Any, last_closed: Any, after: Any) -> Any:
    return _missing(KINDS["candles"], interval, last, last_closed, after)


pytestmark = pytest.mark.anyio

T0 = datetime(2026, 2, 23, 15, 30, tzinfo=UTC)
MIN = timedelta(minutes=1)


def _candle(at: datetime, closed: bool) -> dict[str, Any]:
    return {"time": at.isoformat().replace("+00:00", "Z"), "is_closed": closed}


# -- the arithmetic, on its own ------------------------------------------------------


def test_missing_from_the_forming_candle_to_the_first_after() -> None:
    n, listed = missing_candles(
        "1m", _candle(T0 + 2 * MIN, False), _candle(T0 + MIN, True), _candle(T0 + 5 * MIN, False)
    )
    assert n == 3
    assert listed == (T0 + 2 * MIN, T0 + 3 * MIN, T0 + 4 * MIN)


def test_missing_after_a_closed_last_candle_excludes_it() -> None:
    last = _candle(T0 + MIN, True)
    n, listed = missing_candles("1m", last, last, _candle(T0 + 3 * MIN, True))
    assert (n, listed) == (1, (T0 + 2 * MIN,))


def test_nothing_missing_within_one_candle() -> None:
    forming = _candle(T0, False)
    assert missing_candles("1m", forming, None, _candle(T0, False)) == (0, ())
    assert missing_candles("1m", forming, None, _candle(T0, True)) == (0, ())


def test_missing_count_is_exact_beyond_what_is_listed() -> None:
    n, listed = missing_candles(
        "1m", _candle(T0, True), _candle(T0, True), _candle(T0 + timedelta(days=200), False)
    )
    assert n == 200 * 24 * 60 - 1
    assert len(listed) == 10_000
    assert listed[0] == T0 + MIN


def test_epoch_and_typed_candles_are_understood() -> None:
    ms = int(T0.timestamp() * 1000)
    one, zero = Decimal(1), Decimal(0)
    last = Candle(time=T0, open=one, high=one, low=one, close=one, volume=zero, is_closed=True)
    after = {"time": ms + 4 * 60_000, "is_closed": False}
    assert missing_candles("1m", last, last, after)[0] == 3
    assert missing_candles("7m", last, last, after) == (0, ())  # unknown interval
    assert missing_candles("1m", None, None, after) == (0, ())  # nothing seen before


# -- against the sim ----------------------------------------------------------------


@pytest.fixture
async def fast_candles() -> Any:
    async with SimExchange(
        tick_rate=2000, speed=60, ping_interval=0.2, pong_timeout=0.5, order_interval=0.02
    ) as s:
        yield s


async def test_ticker_gap_reports_the_outage_once(fast_candles: SimExchange) -> None:
    sim = fast_candles
    ws = make_client(sim)
    ticks: list[dict[str, Any]] = []
    gaps: list[Gap] = []
    ws.on_ticker("BTCUSDT", ticks.append)
    ws.on_ticker("ETHUSDT", lambda d: None)
    ws.on_gap(gaps.append)
    async with running(ws):
        await wait_for(lambda: len(ticks) >= 5, what="ticks")
        assert gaps == []  # the first connection is no gap
        await sim.stop()
        await anyio.sleep(0.1)
        before = len(ticks)
        last_before = ticks[-1]["timestamp"]
        await anyio.sleep(0.4)
        await sim.start()
        await wait_for(lambda: len(gaps) >= 2, what="a gap per channel")
        await wait_for(lambda: len(ticks) > before, what="ticks after the gap")
        await anyio.sleep(0.2)
        assert ws.stats.gaps == 2
    by_channel = {g.channel: g for g in gaps}
    assert set(by_channel) == {"ticker:BTCUSDT", "ticker:ETHUSDT"}  # once each
    g = by_channel["ticker:BTCUSDT"]
    assert g.duration >= timedelta(seconds=0.4)
    assert g.reconnected_at > g.disconnected_at
    assert g.last_event_at == datetime.fromisoformat(last_before)
    assert g.first_event_at == datetime.fromisoformat(ticks[before]["timestamp"])
    assert g.first_event_at is not None and g.last_event_at is not None
    assert g.first_event_at > g.last_event_at
    assert g.reason
    assert g.missing_candles == () and g.missing_candle_count == 0


async def test_candle_gap_lists_exactly_the_missed_candles() -> None:
    # At speed 240 a 1m candle closes every 0.25 s. A black hole hides the candles that
    # close while the client waits out its stale timeout: the server sent them, to a
    # socket nobody reads, and the new connection never gets them.
    async with SimExchange(tick_rate=2000, speed=240, ping_interval=5, pong_timeout=5) as sim:
        ws = make_client(sim, stale_timeout=0.6)
        seen: list[dict[str, Any]] = []
        gaps: list[Gap] = []
        ws.on_candles("BTCUSDT", "1m", seen.append, partial=True)
        ws.on_gap(gaps.append)
        async with running(ws):
            await wait_for(lambda: any(c["is_closed"] for c in seen), what="a closed candle")
            sim.go_silent()
            await anyio.sleep(0.15)
            before = len(seen)
            await wait_for(lambda: gaps, timeout=5, what="the candle gap")
            await wait_for(lambda: len(seen) > before, what="candles after the gap")
            sim.resume()
    [gap] = gaps
    assert gap.channel == "candles:BTCUSDT:1m"

    def opened(c: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(c["open_time"])

    # The oracle: every minute from the first closed candle seen up to the first candle
    # received after the gap whose closed update was never received.
    closed = {opened(c) for c in seen if c["is_closed"]}
    first_after = opened(seen[before])
    t, expected = min(closed), []
    while t < first_after:
        if t not in closed:
            expected.append(t)
        t += MIN
    assert len(expected) >= 1
    assert list(gap.missing_candles) == expected
    assert gap.missing_candle_count == len(expected)
    assert gap.first_event_at == first_after
    assert gap.last_event_at == opened(seen[before - 1])


async def test_ticker_all_is_one_gap_and_orders_have_theirs(fast_candles: SimExchange) -> None:
    sim = fast_candles
    ws = make_client(sim, stale_timeout=0.8)
    gaps: list[Gap] = []
    orders: list[OrderUpdate] = []

    def on_order(o: OrderUpdate) -> None:
        orders.append(o)

    ws.on_ticker("all", lambda d: None)
    ws.on_order_update(on_order)
    ws.on_gap(gaps.append)
    async with running(ws):
        await wait_for(lambda: ws.stats.connections == 1)  # market orders fill at once
        await sim.place_order(
            DEMO_API_KEY, symbol="BTCUSDT", side="buy", type="market", quantity="0.01"
        )
        await wait_for(lambda: any(o.status == "filled" for o in orders), what="a fill")
        sim.go_silent()  # a black hole: detected as stale, then a new connection
        await wait_for(lambda: ws.stats.reconnects >= 1, timeout=5, what="the reconnect")
        await wait_for(lambda: any(g.channel == "ticker:all" for g in gaps), what="ticker gap")
        assert not any(g.channel == "orders" for g in gaps)  # no order event yet
        await sim.place_order(
            DEMO_API_KEY, symbol="ETHUSDT", side="buy", type="market", quantity="0.01"
        )
        await wait_for(lambda: any(g.channel == "orders" for g in gaps), what="orders gap")
        sim.resume()
    # One ticker:all gap per outage (a busy machine may add a stale one), never one per
    # symbol; the orders gap stays open across outages until an order event closes it.
    assert {g.channel for g in gaps} == {"orders", "ticker:all"}
    assert 1 <= sum(g.channel == "ticker:all" for g in gaps) <= ws.stats.reconnects
    [order_gap] = [g for g in gaps if g.channel == "orders"]
    assert order_gap.last_event_at is not None  # the fill's filled_at
    assert "stale" in order_gap.reason
