"""No order update lost: after a reconnect, the orders read over REST fill the gap.

While the client cannot reconnect (the sim refuses handshakes), an order fills and
another is cancelled: the stream sends those events to nobody. After the reconnect the
handlers get exactly those states, once, marked recovered, before live events go on.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any

import anyio
import pytest

from agentstream import AgentExchangeWS, OrderEvent, OrderStatus, OrderUpdate, RestError
from agentstream.sim import DEMO_API_KEY, SimExchange

from .conftest import FAST, running, wait_for

pytestmark = pytest.mark.anyio


def states(events: list[dict[str, Any]]) -> Counter[tuple[str, str, str]]:
    return Counter(
        (e["order_id"], e["status"], str(Decimal(e["executed_quantity"] or 0).normalize()))
        for e in events
    )


async def test_updates_missed_while_disconnected_are_recovered_once() -> None:
    async with SimExchange(tick_rate=200, order_interval=0.02) as sim:
        ws = AgentExchangeWS(DEMO_API_KEY, sim.url, **FAST)
        plain: list[dict[str, Any]] = []
        typed: list[OrderUpdate] = []
        views: list[OrderEvent] = []

        def on_typed(o: OrderUpdate) -> None:
            typed.append(o)

        def on_view(o: OrderEvent) -> None:
            views.append(o)

        ws.on_order_update(plain.append)
        ws.on_order_update(on_typed)
        ws.on_order_update(on_view)
        async with running(ws):
            await wait_for(lambda: ws.stats.connections == 1)
            # A limit order far below the market: it stays open.
            resting = await ws.rest.place_order("ETHUSDT", "buy", "0.1", type="limit", price="1")
            await wait_for(lambda: any(d["order_id"] == resting.order_id for d in plain))
            # Down, and kept down: nothing the stream sends now reaches the client.
            sim.refuse_handshakes(503)
            await sim.drop_connections()
            await wait_for(lambda: ws.stats.failed_attempts >= 1, what="kept out")
            filled = await sim.place_order(
                DEMO_API_KEY, symbol="BTCUSDT", side="buy", type="market", quantity="0.01"
            )
            await sim.cancel_order(DEMO_API_KEY, resting.order_id)
            await anyio.sleep(0.3)  # the engine fills the market order meanwhile
            sim.accept_handshakes()
            await wait_for(lambda: ws.stats.recovered_orders >= 2, what="recovery")
            # Live events go on afterwards, not marked.
            later = await ws.rest.place_order("SOLUSDT", "buy", "0.1")
            await wait_for(
                lambda: any(
                    d["order_id"] == later.order_id and d["status"] == "filled" for d in plain
                )
            )
    recovered = [d for d in plain if d["recovered"]]
    assert {(d["order_id"], d["status"]) for d in recovered} == {
        (filled["order_id"], "filled"),
        (resting.order_id, "cancelled"),
    }
    assert all(d["recovered"] is False for d in plain if d["order_id"] == later.order_id)
    # Each (order, status, filled quantity) reached the handlers once.
    assert max(states(plain).values()) == 1
    assert len(typed) == len(plain)
    assert {o.order_id for o in typed if o.recovered} == {d["order_id"] for d in recovered}
    assert {(v.order_id, v.status) for v in views if v.recovered} == {
        (filled["order_id"], OrderStatus.FILLED),
        (resting.order_id, OrderStatus.CANCELLED),
    }
    assert ws.stats.gaps >= 1  # the gap is still reported


async def test_recover_orders_false_leaves_the_gap() -> None:
    async with SimExchange(tick_rate=200, order_interval=0.02) as sim:
        ws = AgentExchangeWS(DEMO_API_KEY, sim.url, recover_orders=False, **FAST)
        plain: list[dict[str, Any]] = []
        ws.on_order_update(plain.append)
        async with running(ws):
            await wait_for(lambda: ws.stats.connections == 1)
            sim.refuse_handshakes(503)
            await sim.drop_connections()
            await wait_for(lambda: ws.stats.failed_attempts >= 1)
            await sim.place_order(
                DEMO_API_KEY, symbol="BTCUSDT", side="buy", type="market", quantity="0.01"
            )
            await anyio.sleep(0.3)
            sim.accept_handshakes()
            await wait_for(lambda: ws.stats.connections == 1 and ws.stats.reconnects == 1)
            await anyio.sleep(0.3)
        assert plain == []
        assert ws.stats.recovered_orders == 0


async def test_an_order_placed_and_cancelled_while_down_is_recovered() -> None:
    # The platform's REST order has no cancelled_at: its created_at makes it recent.
    async with SimExchange(tick_rate=200, order_interval=0.02) as sim:
        ws = AgentExchangeWS(DEMO_API_KEY, sim.url, **FAST)
        got: list[dict[str, Any]] = []
        ws.on_order_update(got.append)
        async with running(ws):
            await wait_for(lambda: ws.stats.connections == 1)
            sim.refuse_handshakes(503)
            await sim.drop_connections()
            await wait_for(lambda: ws.stats.failed_attempts >= 1, what="kept out")
            placed = await sim.place_order(
                DEMO_API_KEY, symbol="ETHUSDT", side="buy", type="limit", quantity="2", price="1"
            )
            await sim.cancel_order(DEMO_API_KEY, placed["order_id"])
            sim.accept_handshakes()
            await wait_for(lambda: any(d["order_id"] == placed["order_id"] for d in got))
    assert [(d["status"], d["recovered"]) for d in got] == [("cancelled", True)]


async def test_a_failing_rest_api_is_reported_retried_and_never_holds_live_events() -> None:
    async with SimExchange(tick_rate=200, order_interval=0.02) as sim:
        ws = AgentExchangeWS(DEMO_API_KEY, sim.url, **FAST)
        got: list[dict[str, Any]] = []
        errors: list[tuple[BaseException, dict[str, Any]]] = []
        ws.on_error(lambda exc, ctx: errors.append((exc, ctx)))
        ws.on_order_update(got.append)
        async with running(ws):
            await wait_for(lambda: ws.stats.connections == 1)
            sim.refuse_handshakes(503)
            await sim.drop_connections()
            await wait_for(lambda: ws.stats.failed_attempts >= 1, what="kept out")
            missed = await sim.place_order(
                DEMO_API_KEY, symbol="BTCUSDT", side="buy", type="market", quantity="0.01"
            )
            sim.fail_rest(503)  # recovery will fail until healed
            sim.accept_handshakes()
            await wait_for(
                lambda: any(ctx.get("stage") == "recovery" for _, ctx in errors),
                what="the failure reported",
            )
            # Live events are not held behind the failing API.
            live = await sim.place_order(
                DEMO_API_KEY, symbol="ETHUSDT", side="buy", type="market", quantity="0.01"
            )
            await wait_for(lambda: any(d["order_id"] == live["order_id"] for d in got))
            assert not any(d["order_id"] == missed["order_id"] for d in got)
            sim.heal_rest()  # the retry (with the backoff) now succeeds
            await wait_for(lambda: any(d["order_id"] == missed["order_id"] for d in got))
    [recovered] = [d for d in got if d["order_id"] == missed["order_id"]]
    assert (recovered["status"], recovered["recovered"]) == ("filled", True)
    assert all(isinstance(e, RestError) for e, ctx in errors if ctx.get("stage") == "recovery")
    assert ws.error is None
