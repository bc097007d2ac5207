"""What the platform's real server does that its SDK page does not say (issue: part 5).

Each test runs against the simulated exchange set up to behave like the real server
(``shared/protocol/agentexchange.md``): private events on every socket of the key,
order events with the fields its serializer lacked, and no 15m or 4h candles.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from agentstream import AgentExchangeWS, Candle, OrderUpdate
from agentstream.sim import DEMO_API_KEY, REAL_SERVER_INTERVALS, SimExchange

from .conftest import FAST, running, wait_for

pytestmark = pytest.mark.anyio

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT")


async def test_order_updates_reach_handlers_once_however_many_sockets_are_open() -> None:
    # The real server sends order events to every socket of the key, subscribed or not;
    # with two channels per socket these five channels take three sockets.
    async with SimExchange(tick_rate=500, order_interval=0.02) as sim:
        ws = AgentExchangeWS(DEMO_API_KEY, sim.url, max_subscriptions_per_connection=2, **FAST)
        plain: list[dict[str, Any]] = []
        typed: list[OrderUpdate] = []

        def on_typed(o: OrderUpdate) -> None:
            typed.append(o)

        for sym in SYMBOLS:
            ws.on_ticker(sym, lambda d: None)
        ws.on_order_update(plain.append)
        ws.on_order_update(on_typed)
        async with running(ws):
            await wait_for(lambda: ws.stats.connections == 3, what="three sockets")
            ids = []
            for _ in range(3):
                order = await sim.place_order(
                    DEMO_API_KEY, symbol="BTCUSDT", side="buy", type="market", quantity="0.001"
                )
                ids.append(order["order_id"])
            await wait_for(
                lambda: sum(1 for d in plain if d["status"] == "filled") == 3,
                what="three fills",
            )
            await wait_for(lambda: len(typed) == len(plain), what="typed handler caught up")
            assert ws.stats.duplicate_events > 0  # the other sockets did get them
        seen = Counter((d["order_id"], d["status"]) for d in plain)
        assert {oid for oid, _ in seen} == set(ids)
        assert max(seen.values()) == 1, seen
        assert Counter((o.order_id, o.status) for o in typed) == seen


async def test_sparse_order_events_are_delivered_not_dropped() -> None:
    # quantity "0" and empty symbol / side / type: what the real server sends when its
    # serializer lacks them. A typed handler must still get the event.
    async with SimExchange(tick_rate=200, order_interval=0.02, sparse_order_events=True) as sim:
        ws = AgentExchangeWS(DEMO_API_KEY, sim.url, **FAST)
        plain: list[dict[str, Any]] = []
        typed: list[OrderUpdate] = []

        def on_typed(o: OrderUpdate) -> None:
            typed.append(o)

        ws.on_order_update(plain.append)
        ws.on_order_update(on_typed)
        async with running(ws):
            await wait_for(lambda: ws.stats.connections == 1)
            order = await sim.place_order(
                DEMO_API_KEY, symbol="ETHUSDT", side="buy", type="market", quantity="0.01"
            )
            await wait_for(lambda: any(o.status == "filled" for o in typed), what="the fill")
            assert ws.stats.invalid_events == 0
        assert [o.order_id for o in typed] == [d["order_id"] for d in plain]
        filled = next(o for o in typed if o.status == "filled")
        assert filled.order_id == order["order_id"]
        assert (filled.quantity, filled.symbol, filled.side, filled.type) == (
            Decimal(0),
            "",
            "",
            "",
        )
        assert filled.executed_quantity == Decimal("0.01")
        assert plain[-1]["quantity"] == "0"


def _window(c: dict[str, Any], seconds: int) -> int:
    """The start (epoch seconds) of the ``seconds``-long UTC window of candle ``c``."""
    t = msgspec.convert(c["time"], datetime)
    return int(t.timestamp()) // seconds * seconds


async def _built_candles(speed: float, target: str, source: str, n: int) -> None:
    seconds = {"15m": 900, "4h": 14400}[target]
    async with SimExchange(
        candle_intervals=REAL_SERVER_INTERVALS, tick_rate=400, speed=speed
    ) as sim:
        ws = AgentExchangeWS(DEMO_API_KEY, sim.url, **FAST)
        errors: list[BaseException] = []
        built: list[dict[str, Any]] = []
        built_typed: list[Candle] = []
        finer: list[dict[str, Any]] = []

        def on_typed(c: Candle) -> None:
            built_typed.append(c)

        ws.on_error(lambda exc, ctx: errors.append(exc))
        ws.on_candles("BTCUSDT", target, built.append)
        ws.on_candles("BTCUSDT", target, on_typed)
        ws.on_candles("BTCUSDT", source, finer.append)
        async with running(ws):
            await wait_for(lambda: len(built) >= n, timeout=15, what=f"{n} {target} candles")
            assert sim.subscriptions() == [{f"candles:BTCUSDT:{source}"}]
        assert {str(c) for c in ws.channels} == {
            f"candles:BTCUSDT:{source}",
            f"candles:BTCUSDT:{target}",
        }
        # The refusal is still reported, once.
        assert [getattr(e, "code", None) for e in errors] == ["INVALID_CHANNEL"]
        by_window: dict[int, list[dict[str, Any]]] = {}
        for c in finer:
            by_window.setdefault(_window(c, seconds), []).append(c)
        per_window = seconds // {"5m": 300, "1h": 3600}[source]
        for c in built:
            assert c["is_closed"] is True
            assert c["interval"] == target
            assert c["symbol"] == "BTCUSDT"
            assert c["time"] == c["open_time"]
            # Every candle delivered is exact: a window the client saw only part of
            # (the first one after connecting started before it did) is withheld.
            parts = by_window[_window(c, seconds)]
            assert len(parts) == per_window, (c, parts)
            assert Decimal(c["open"]) == Decimal(parts[0]["open"])
            assert Decimal(c["close"]) == Decimal(parts[-1]["close"])
            assert Decimal(c["high"]) == max(Decimal(p["high"]) for p in parts)
            assert Decimal(c["low"]) == min(Decimal(p["low"]) for p in parts)
            assert Decimal(c["volume"]) == sum(Decimal(p["volume"]) for p in parts)
        assert [(t.open, t.close, t.volume) for t in built_typed[: len(built)]] == [
            (Decimal(c["open"]), Decimal(c["close"]), Decimal(c["volume"])) for c in built
        ]


async def test_15m_candles_are_built_from_5m_when_the_server_refuses_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="agentstream"):
        await _built_candles(speed=1200, target="15m", source="5m", n=3)
    lines = [r.getMessage() for r in caplog.records if "does not serve" in r.getMessage()]
    assert lines == [
        "the server does not serve candles:BTCUSDT:15m; building it from candles:BTCUSDT:5m "
        "(closed candles, aligned to UTC interval boundaries)"
    ]


async def test_4h_candles_are_built_from_1h() -> None:
    await _built_candles(speed=14400, target="4h", source="1h", n=3)
