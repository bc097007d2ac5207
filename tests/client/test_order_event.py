"""OrderEvent: one order view across venues. Every row of every status table, and the
view on each venue's stream against the simulated exchange."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest

from agentstream import AgentExchangeWS, OrderEvent, OrderStatus
from agentstream.models import OrderUpdate
from agentstream.protocols import agentexchange, tastytrade, tradier
from agentstream.sim import DEMO_API_KEY, TRADIER_DEMO_TOKEN, SimExchange
from agentstream.tastytrade import PlacedOrder
from agentstream.tradier import TradierOrder, TradierStream

from .conftest import FAST, running, wait_for

S = OrderStatus


AGENTEXCHANGE = [
    ("pending", S.PENDING),
    ("open", S.OPEN),
    ("partially_filled", S.PARTIALLY_FILLED),
    ("filled", S.FILLED),
    ("cancelled", S.CANCELLED),
    ("rejected", S.REJECTED),
    ("expired", S.EXPIRED),
]
TRADIER = [
    ("pending", S.PENDING),
    ("calculated", S.PENDING),
    ("held", S.PENDING),
    ("open", S.OPEN),
    ("accepted_for_bidding", S.OPEN),
    ("partially_filled", S.PARTIALLY_FILLED),
    ("filled", S.FILLED),
    ("canceled", S.CANCELLED),
    ("rejected", S.REJECTED),
    ("error", S.REJECTED),
    ("expired", S.EXPIRED),
]
TASTYTRADE = [
    ("Received", S.PENDING),
    ("Routed", S.PENDING),
    ("In Flight", S.PENDING),
    ("Contingent", S.PENDING),
    ("Live", S.OPEN),
    ("Cancel Requested", S.OPEN),
    ("Replace Requested", S.OPEN),
    ("Filled", S.FILLED),
    ("Cancelled", S.CANCELLED),
    ("Removed", S.CANCELLED),
    ("Partially Removed", S.CANCELLED),
    ("Expired", S.EXPIRED),
    ("Rejected", S.REJECTED),
]


def test_the_tables_are_complete() -> None:
    # Each venue's table in code is exactly the rows tested below (and in the docs).
    assert dict(AGENTEXCHANGE) == agentexchange.STATUS_MAP
    assert dict(TRADIER) == tradier.STATUS_MAP
    assert dict(TASTYTRADE) == tastytrade.STATUS_MAP


def ae_order(status: str, executed: str | None = None) -> OrderUpdate:
    return OrderUpdate(
        order_id="o-1",
        status=status,
        symbol="BTCUSDT",
        side="buy",
        type="limit",
        quantity=Decimal("2"),
        executed_quantity=Decimal(executed) if executed else None,
        executed_price=Decimal("100") if executed else None,
    )


@pytest.mark.parametrize(("status", "mapped"), AGENTEXCHANGE)
def test_agentexchange_row(status: str, mapped: OrderStatus) -> None:
    ev = agentexchange.AgentExchangeProtocol("ws://h:1").order_event(ae_order(status))
    assert (ev.venue, ev.order_id, ev.symbol, ev.side, ev.status) == (
        "agentexchange",
        "o-1",
        "BTCUSDT",
        "buy",
        mapped,
    )
    assert ev.remaining_quantity == Decimal("2")


def test_agentexchange_amounts_and_a_sparse_event() -> None:
    proto = agentexchange.AgentExchangeProtocol("ws://h:1")
    ev = proto.order_event(ae_order("partially_filled", "0.5"))
    assert (ev.filled_quantity, ev.remaining_quantity, ev.average_price) == (
        Decimal("0.5"),
        Decimal("1.5"),
        Decimal("100"),
    )
    sparse = OrderUpdate(
        order_id="o-2", status="filled", symbol="", side="", type="", quantity=Decimal(0)
    )
    ev = proto.order_event(sparse)
    assert (ev.symbol, ev.side, ev.remaining_quantity) == (None, None, None)


@pytest.mark.parametrize(("status", "mapped"), TRADIER)
def test_tradier_row(status: str, mapped: OrderStatus) -> None:
    o = TradierOrder(id=7, status=status, account="VA1", exec_quantity=Decimal(0))
    ev = tradier.TradierProtocol("http://h").order_event(o)
    assert (ev.venue, ev.order_id, ev.account, ev.status) == ("tradier", "7", "VA1", mapped)


def placed(status: str, fills: list[tuple[str, str]] = ()) -> PlacedOrder:  # type: ignore[assignment]
    return msgspec.convert(
        {
            "id": 42,
            "account-number": "5WT00000",
            "time-in-force": "Day",
            "order-type": "Limit",
            "underlying-symbol": "AAPL",
            "underlying-instrument-type": "Equity",
            "status": status,
            "cancellable": True,
            "editable": True,
            "edited": False,
            "updated-at": 1_700_000_000_000,
            "legs": [
                {
                    "instrument-type": "Equity",
                    "symbol": "AAPL",
                    "action": "Sell to Close",
                    "quantity": "3",
                    "remaining-quantity": str(3 - sum(int(q) for q, _ in fills)),
                    "fills": [
                        {
                            "fill-id": f"f{i}",
                            "quantity": q,
                            "fill-price": p,
                            "filled-at": "2026-01-01T00:00:00Z",
                        }
                        for i, (q, p) in enumerate(fills)
                    ],
                }
            ],
        },
        PlacedOrder,
    )


@pytest.mark.parametrize(("status", "mapped"), TASTYTRADE)
def test_tastytrade_row(status: str, mapped: OrderStatus) -> None:
    ev = tastytrade.TastytradeProtocol("ws://h").order_event(placed(status))
    assert (ev.venue, ev.order_id, ev.account, ev.symbol, ev.side, ev.status) == (
        "tastytrade",
        "42",
        "5WT00000",
        "AAPL",
        "sell",
        mapped,
    )


def test_tastytrade_fills_make_a_live_order_partially_filled() -> None:
    ev = tastytrade.TastytradeProtocol("ws://h").order_event(
        placed("Live", [("1", "10"), ("1", "11")])
    )
    assert ev.status is S.PARTIALLY_FILLED
    assert (ev.filled_quantity, ev.remaining_quantity, ev.average_price) == (
        Decimal(2),
        Decimal(1),
        Decimal("10.5"),
    )


def test_unknown_statuses_are_other() -> None:
    assert (
        agentexchange.AgentExchangeProtocol("ws://h:1").order_event(ae_order("weird")).status
        is S.OTHER
    )


@pytest.mark.anyio
async def test_order_event_handlers_on_agentexchange() -> None:
    async with SimExchange(tick_rate=100, order_interval=0.02) as sim:
        ws = AgentExchangeWS(DEMO_API_KEY, sim.url, **FAST)
        got: list[OrderEvent] = []

        def on_order(o: OrderEvent) -> None:
            got.append(o)

        ws.on_order_update(on_order)
        async with running(ws):
            await wait_for(lambda: ws.stats.connections == 1)
            order = await sim.place_order(
                DEMO_API_KEY, symbol="BTCUSDT", side="buy", type="market", quantity="0.01"
            )
            await wait_for(lambda: any(o.status is S.FILLED for o in got))
    filled = next(o for o in got if o.status is S.FILLED)
    assert (filled.venue, filled.order_id, filled.symbol, filled.side) == (
        "agentexchange",
        order["order_id"],
        "BTCUSDT",
        "buy",
    )
    assert filled.filled_quantity == Decimal("0.01")
    assert filled.remaining_quantity == 0
    assert isinstance(filled.raw, OrderUpdate)
    assert filled.recovered is False


@pytest.mark.anyio
async def test_order_event_handlers_on_tradier_see_the_looked_up_fields() -> None:
    import aiohttp

    from agentstream.sim import TRADIER_DEMO_ACCOUNT

    async with SimExchange(tick_rate=100, order_interval=0.02) as sim:
        ws = TradierStream(token=TRADIER_DEMO_TOKEN, base_url=sim.http_url, **FAST)
        got: list[OrderEvent] = []

        def on_order(o: OrderEvent) -> None:
            got.append(o)

        ws.on_order_update(on_order)
        async with running(ws):
            await wait_for(lambda: ws.stats.connections == 1)
            form: dict[str, Any] = {
                "class": "equity",
                "symbol": "SPY",
                "side": "buy",
                "quantity": "3",
                "type": "market",
                "duration": "day",
            }
            headers = {
                "Authorization": f"Bearer {TRADIER_DEMO_TOKEN}",
                "Accept": "application/json",
            }
            url = f"{sim.http_url}/v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders"
            async with aiohttp.ClientSession() as http, http.post(url, data=form, headers=headers):
                pass
            await wait_for(lambda: any(o.status is S.FILLED for o in got))
    filled = next(o for o in got if o.status is S.FILLED)
    assert (filled.venue, filled.account, filled.symbol, filled.side) == (
        "tradier",
        TRADIER_DEMO_ACCOUNT,
        "SPY",
        "buy",
    )
    assert filled.filled_quantity == Decimal(3)
    assert isinstance(filled.raw, TradierOrder)
