"""The Feed: frames through a client's real dispatch with no network, handlers awaited.

These use the plugin's ``agentstream_feed`` fixture directly (our own suite loads the
plugin like any user's); tests/plugin/test_fixtures.py runs test files as a user would.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from agentstream import AgentExchangeWS, Candle, HandlerError, OrderUpdate, Ticker
from agentstream.errors import ConfigurationError
from agentstream.testing import Feed
from agentstream.tradier import TradierOrder, TradierStream

if TYPE_CHECKING:
    from collections.abc import Callable

TICK = {"price": "64000.5", "volume": "0.25", "timestamp": "2026-02-23T15:30:00.000Z"}
CANDLE = {
    "open": "1",
    "high": "3",
    "low": "0.5",
    "close": "2",
    "volume": "10",
    "time": 1771860600000,
    "is_closed": True,
}
ORDER = {
    "order_id": "o-1",
    "status": "filled",
    "symbol": "BTCUSDT",
    "side": "buy",
    "type": "market",
    "quantity": "0.01",
    "executed_price": "64000.5",
}


def test_dict_and_typed_handlers_sync_async_and_threaded(
    agentstream_feed: Callable[..., Feed],
) -> None:
    ws = AgentExchangeWS("ak_test_feedkey01")
    got: dict[str, list[Any]] = {"dict": [], "typed": [], "async": [], "thread": []}

    @ws.on_ticker("BTCUSDT")
    def plain(data: dict[str, Any]) -> None:
        got["dict"].append(data)

    @ws.on_ticker("BTCUSDT")
    def typed(t: Ticker) -> None:
        got["typed"].append(t)

    @ws.on_ticker("BTCUSDT")
    async def slow_async(t: Ticker) -> None:
        await anyio.sleep(0.05)  # the feed must wait for it, not only for its start
        got["async"].append(t)

    @ws.on_ticker("BTCUSDT", thread=True)
    def slow_thread(data: dict[str, Any]) -> None:
        time.sleep(0.05)
        got["thread"].append((data, threading.current_thread().name))

    feed = agentstream_feed(ws)
    for i in range(3):
        feed.event("ticker:BTCUSDT", {**TICK, "price": f"{i}.5"})

    assert [d["price"] for d in got["dict"]] == ["0.5", "1.5", "2.5"]
    assert got["dict"][0]["symbol"] == "BTCUSDT"  # as live: the frame's symbol is added
    assert [t.price for t in got["typed"]] == [Decimal("0.5"), Decimal("1.5"), Decimal("2.5")]
    assert all(isinstance(t, Ticker) and t.symbol == "BTCUSDT" for t in got["typed"])
    assert [t.price for t in got["async"]] == [Decimal("0.5"), Decimal("1.5"), Decimal("2.5")]
    assert len(got["thread"]) == 3
    assert got["thread"][0][1] != "agentstream-feed"  # a worker thread, not the loop's
    assert ws.stats.messages == {"ticker:BTCUSDT": 3}
    assert ws.stats.state == "connected"


def test_handler_errors_reach_on_error_before_send_returns(
    agentstream_feed: Callable[..., Feed],
) -> None:
    ws = AgentExchangeWS("ak_test_feedkey01")
    errors: list[tuple[BaseException, dict[str, Any]]] = []

    @ws.on_order_update
    def broken(order: OrderUpdate) -> None:
        raise ValueError(f"cannot handle {order.order_id}")

    @ws.on_error
    async def on_error(exc: BaseException, context: dict[str, Any]) -> None:
        await anyio.sleep(0.02)
        errors.append((exc, context))

    feed = agentstream_feed(ws)
    feed.event("orders", ORDER)

    assert len(errors) == 1
    exc, context = errors[0]
    assert isinstance(exc, HandlerError)
    assert isinstance(exc.__cause__, ValueError)
    assert "o-1" in str(exc.__cause__)
    assert context["channel"] == "orders"
    assert ws.stats.handler_errors == 1


def test_candles_closed_only_and_invalid_or_malformed_frames_are_counted(
    agentstream_feed: Callable[..., Feed],
) -> None:
    ws = AgentExchangeWS("ak_test_feedkey01")
    plain: list[dict[str, Any]] = []
    ws.on_candles("ETHUSDT", "1m")(plain.append)
    candle: list[Candle] = []

    @ws.on_candles("ETHUSDT", "1m")
    def on_candle(c: Candle) -> None:
        candle.append(c)

    feed = agentstream_feed(ws)
    feed.event("candles:ETHUSDT:1m", {**CANDLE, "is_closed": False})  # forming: not final
    feed.event("candles:ETHUSDT:1m", CANDLE)
    feed.send("not json", {"channel": "candles", "symbol": "ETHUSDT", "interval": "1m"})
    feed.event("candles:ETHUSDT:1m", {**CANDLE, "close": "not a number"})

    # As live: dict handlers get what the server sent; typed ones only valid events.
    assert [(c["close"], c["symbol"]) for c in plain] == [
        ("2", "ETHUSDT"),
        ("not a number", "ETHUSDT"),
    ]
    assert [(c.close, c.interval, c.is_closed) for c in candle] == [(Decimal(2), "1m", True)]
    assert ws.stats.dropped_frames == 2
    assert ws.stats.invalid_events == 1


def test_any_venue_whole_frames_and_remove_handler_during_and_after(
    agentstream_feed: Callable[..., Feed],
) -> None:
    ws = TradierStream("tradier_test_token", enrich=False)  # no REST look-up: no network
    seen: list[TradierOrder] = []

    @ws.on_order_update
    def on_order(order: TradierOrder) -> None:
        seen.append(order)

    feed = agentstream_feed(ws)
    frame = {
        "id": 1000001,
        "event": "order",
        "status": "filled",
        "type": "limit",
        "price": 250.25,
        "avg_fill_price": 250.25,
        "exec_quantity": 4.0,
        "remaining_quantity": 0.0,
        "account": "VA000001",
    }
    feed.send(frame)
    assert [(o.id, o.status, o.exec_quantity) for o in seen] == [(1000001, "filled", Decimal(4))]
    with pytest.raises(ConfigurationError, match="send"):
        feed.event("orders", frame)
    assert ws.remove_handler(on_order) == 1  # the user's callable, not the feed's wrapper
    feed.send({**frame, "id": 1000002})
    assert len(seen) == 1
    feed.stop()
    ws.on_order_update(on_order)
    assert ws.remove_handler(on_order) == 1


def test_a_running_client_is_refused_and_a_stopped_feed_refuses_frames() -> None:
    ws = AgentExchangeWS("ak_test_feedkey01")
    ws.on_ticker("BTCUSDT")(lambda data: None)
    with Feed(ws) as feed:
        with pytest.raises(ConfigurationError, match="running"):
            Feed(ws).start()
        feed.event("ticker:BTCUSDT", TICK)
    assert ws.stats.state == "stopped"
    with pytest.raises(RuntimeError, match="not running"):
        feed.event("ticker:BTCUSDT", TICK)


def test_on_connect_runs_once_at_start() -> None:
    ws = AgentExchangeWS("ak_test_feedkey01")
    connects: list[str] = []
    ws.on_connect(lambda: connects.append(ws.stats.state))
    with Feed(ws):
        assert connects == ["connected"]
