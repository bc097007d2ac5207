"""The REST API, the order lifecycle and the private ``orders`` / ``portfolio`` channels.

The REST answers are the platform's (TradeReady ``src/api/routes/trading.py``,
``src/api/schemas/trading.py``, ``src/api/routes/account.py``): every schema field is
present (``null`` when unused), decimals are strings, times pydantic's ISO form; errors
are ``{"error": {"code", "message"[, "details"]}}``, and a request the schema refuses
gets FastAPI's 422 ``{"detail": [...]}``.
"""

from __future__ import annotations

import re
import uuid
from decimal import ROUND_DOWN, Decimal
from typing import Any, cast

import aiohttp
import pytest

from agentstream.sim import DEMO_API_KEY, SimExchange
from tests.sim.helpers import (
    ISO_MS,
    collect_for,
    dec,
    fast_sim,
    on,
    parse_iso,
    recv_until,
    subscribe,
)

pytestmark = pytest.mark.anyio

WS = aiohttp.ClientWebSocketResponse
JSON = dict[str, Any]
BASE_FIELDS = {"order_id", "status", "symbol", "side", "type", "quantity"}
FILL_FIELDS = {"executed_price", "executed_quantity", "fee", "filled_at"}
PORTFOLIO_FIELDS = {
    "total_equity",
    "available_cash",
    "unrealized_pnl",
    "realized_pnl",
    "roi_pct",
    "timestamp",
}
#: OrderResponse (POST), in the schema's order.
PLACED_FIELDS = [
    "order_id",
    "status",
    "symbol",
    "side",
    "type",
    "requested_quantity",
    "executed_quantity",
    "executed_price",
    "slippage_pct",
    "fee",
    "total_cost",
    "filled_at",
    "quantity",
    "price",
    "locked_amount",
    "created_at",
]
FILLED_ONLY = PLACED_FIELDS[5:12]
PENDING_ONLY = PLACED_FIELDS[12:]
#: OrderDetailResponse (GET /order/{id}, the lists).
DETAIL_FIELDS = [
    "order_id",
    "status",
    "symbol",
    "side",
    "type",
    "quantity",
    "price",
    "executed_price",
    "executed_qty",
    "slippage_pct",
    "fee",
    "created_at",
    "filled_at",
]
PORTFOLIO_REST_FIELDS = [
    "total_equity",
    "available_cash",
    "locked_cash",
    "total_position_value",
    "unrealized_pnl",
    "realized_pnl",
    "total_pnl",
    "roi_pct",
    "starting_balance",
    "positions",
    "timestamp",
]
POSITION_FIELDS = [
    "symbol",
    "asset",
    "quantity",
    "avg_entry_price",
    "current_price",
    "market_value",
    "unrealized_pnl",
    "unrealized_pnl_pct",
    "opened_at",
]
FEE_RATE = Decimal("0.001")
SLIP = Decimal("0.0001")
#: pydantic's datetime: microseconds when there are any, and Z.
ISO_US = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")
EIGHT = re.compile(r"^\d+\.\d{8}$")


class Rest:
    """A bare REST client of one API key."""

    def __init__(self, session: aiohttp.ClientSession, sim: SimExchange, key: str) -> None:
        self.session, self.base, self.headers = (
            session,
            f"{sim.http_url}/api/v1",
            {"X-API-Key": key},
        )

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(
            method, self.base + path, json=body, headers=self.headers
        ) as r:
            assert r.content_type == "application/json"
            return r.status, await r.json()

    async def order(self, **body: Any) -> JSON:
        status, data = await self.call("POST", "/trade/order", body)
        assert status == 201, data
        return cast("JSON", data)

    async def portfolio(self) -> JSON:
        status, data = await self.call("GET", "/account/portfolio")
        assert status == 200, data
        return cast("JSON", data)

    async def orders(self, query: str = "") -> list[JSON]:
        status, data = await self.call("GET", "/trade/orders" + query)
        assert status == 200, data
        return cast("list[JSON]", data["orders"])

    async def price(self, symbol: str) -> Decimal:
        status, data = await self.call("GET", f"/market/price/{symbol}")
        assert status == 200, data
        return dec(data["price"])


@pytest.fixture
def rest(sim: SimExchange, session: aiohttp.ClientSession) -> Rest:
    return Rest(session, sim, DEMO_API_KEY)


def order_update(order_id: str, status: str | None = None) -> Any:
    return lambda m: (
        m.get("channel") == "orders"
        and m["data"]["order_id"] == order_id
        and (status is None or m["data"]["status"] == status)
    )


def check_order(d: JSON, *, fills: bool, price: bool = False) -> None:
    """The exact field set of an order event: optional fields only when they apply."""
    want = set(BASE_FIELDS)
    if fills:
        want |= FILL_FIELDS
    if price:
        want.add("price")
    if d["status"] == "cancelled":
        want.add("cancelled_at")
    if d["status"] == "rejected":
        want.add("rejected_reason")
    assert set(d) == want, d
    assert d["side"] in ("buy", "sell")
    assert d["type"] in ("market", "limit", "stop_loss", "take_profit")
    dec(d["quantity"])
    for k in ("executed_price", "executed_quantity", "fee", "price"):
        if k in d:
            assert dec(d[k]) > 0, (k, d)
    for k in ("filled_at", "cancelled_at"):
        if k in d:
            assert ISO_MS.match(d[k]), d[k]


def check_portfolio(d: JSON, start: Decimal = Decimal(10000)) -> None:
    """The ``portfolio`` channel's snapshot."""
    assert set(d) == PORTFOLIO_FIELDS, d
    for k in PORTFOLIO_FIELDS - {"timestamp"}:
        dec(d[k])
        assert len(d[k].split(".")[1]) == 2, d
    parse_iso(d["timestamp"])
    # equity is the starting cash plus what was realized plus what is not yet
    equity, realized, unrealized = (
        dec(d[k]) for k in ("total_equity", "realized_pnl", "unrealized_pnl")
    )
    assert abs(equity - (start + realized + unrealized)) <= Decimal("0.02"), d
    roi = (equity - start) / start * 100
    assert abs(dec(d["roi_pct"]) - roi) <= Decimal("0.01"), d


def check_placed(d: JSON) -> None:
    """An OrderResponse: all 16 fields; a filled one's pending fields null, and vice versa."""
    assert list(d) == PLACED_FIELDS, d
    uuid.UUID(d["order_id"])
    unused = PENDING_ONLY if d["status"] == "filled" else FILLED_ONLY
    assert all(d[k] is None for k in unused), d
    used = FILLED_ONLY if d["status"] == "filled" else ["quantity", "created_at"]
    assert all(d[k] is not None for k in used), d
    stamp = d["filled_at"] or d["created_at"]
    assert ISO_US.match(stamp), stamp


def check_detail(d: JSON) -> None:
    """An OrderDetailResponse: 13 fields; amounts as NUMERIC(20, 8) columns give them."""
    assert list(d) == DETAIL_FIELDS, d
    uuid.UUID(d["order_id"])
    assert EIGHT.match(d["quantity"]), d
    filled = d["status"] == "filled"
    for k in ("executed_price", "executed_qty", "fee"):
        assert (d[k] is not None) == filled, d
        if filled:
            assert EIGHT.match(d[k]), d
    if filled:
        assert d["slippage_pct"] == "0.010000", d
        assert ISO_US.match(d["filled_at"]), d
    else:
        assert d["slippage_pct"] is None and d["filled_at"] is None, d
    if d["price"] is not None:
        assert EIGHT.match(d["price"]), d
    assert ISO_US.match(d["created_at"]), d


def q8(d: Decimal) -> str:
    return str(d.quantize(Decimal("0.00000001")))


# -- market orders fill when placed ------------------------------------------------------


async def test_market_buy_fills_when_placed_and_is_pushed(
    sim: SimExchange, ws: WS, rest: Rest
) -> None:
    await subscribe(ws, channel="orders")
    await subscribe(ws, channel="portfolio")
    ref = await rest.price("BTCUSDT")
    placed = await rest.order(symbol="btcusdt", side="buy", type="market", quantity="0.010")
    check_placed(placed)
    assert placed["status"] == "filled"
    assert (placed["symbol"], placed["side"], placed["type"]) == ("BTCUSDT", "buy", "market")
    # The quantities as the request wrote them; the price with slippage, 8 decimals.
    assert placed["requested_quantity"] == placed["executed_quantity"] == "0.010"
    px = Decimal(placed["executed_price"])
    assert EIGHT.match(placed["executed_price"])
    assert abs(px - ref * (1 + SLIP)) <= ref * SLIP * 3  # the market may have ticked
    assert placed["slippage_pct"] == "0.010000"
    fee = Decimal(placed["fee"])
    assert abs(fee - Decimal("0.01") * px * FEE_RATE) <= Decimal("0.00000001")
    assert Decimal(placed["total_cost"]) == px * Decimal("0.010") + fee
    oid = placed["order_id"]

    # One event: filled (it never rested), then the portfolio snapshot.
    filled = (await recv_until(ws, order_update(oid)))["data"]
    assert filled["status"] == "filled"
    check_order(filled, fills=True)
    assert (filled["executed_price"], filled["fee"]) == (placed["executed_price"], placed["fee"])
    assert dec(filled["executed_quantity"]) == Decimal("0.01")
    snap = (await recv_until(ws, on("portfolio")))["data"]
    check_portfolio(snap)
    cost = Decimal("0.01") * px + fee
    assert abs(dec(snap["available_cash"]) - (Decimal(10000) - cost)) <= Decimal("0.01")
    # The buy fee is in the position's cost basis, not realized (as the platform counts).
    assert dec(snap["realized_pnl"]) == 0

    # REST views agree
    status, got = await rest.call("GET", f"/trade/order/{oid}")
    assert status == 200
    check_detail(got)
    assert (got["status"], got["quantity"], got["executed_qty"], got["price"]) == (
        "filled",
        "0.01000000",
        "0.01000000",
        None,
    )
    assert (got["executed_price"], got["fee"]) == (q8(px), q8(fee))
    status, listed = await rest.call("GET", "/trade/orders")
    assert listed == {"orders": [got], "total": 1, "limit": 100, "offset": 0}
    assert [o["order_id"] for o in await rest.orders("?status=filled")] == [oid]
    assert await rest.orders("?status=pending") == []
    assert await rest.orders("?symbol=ethusdt") == []
    assert [o["order_id"] for o in await rest.orders("?symbol=btcusdt")] == [oid]
    # In process, the same: filled when place_order returns.
    done = await sim.place_order(
        DEMO_API_KEY, symbol="ETHUSDT", side="buy", type="market", quantity="0.01"
    )
    assert done["status"] == "filled"


async def test_unknown_body_fields_are_ignored_and_a_number_is_a_quantity(rest: Rest) -> None:
    placed = await rest.order(
        symbol=" SOLUSDT ", side="buy", type="market", quantity=1, leverage=5, client_id="x"
    )
    check_placed(placed)
    assert (placed["symbol"], placed["requested_quantity"]) == ("SOLUSDT", "1")


# -- pending orders ----------------------------------------------------------------------


async def test_limit_buy_at_or_above_the_price_fills_on_the_next_step(ws: WS, rest: Rest) -> None:
    await subscribe(ws, channel="orders")
    limit = (await rest.price("ETHUSDT") * Decimal("1.02")).quantize(Decimal("0.01"))
    placed = await rest.order(
        symbol="ETHUSDT", side="buy", type="limit", quantity="0.1", price=str(limit)
    )
    check_placed(placed)
    assert placed["status"] == "pending"
    assert (placed["quantity"], placed["price"]) == ("0.1", str(limit))
    gross = Decimal("0.1") * limit
    assert placed["locked_amount"] == str(gross + gross * FEE_RATE)
    oid = placed["order_id"]
    pending = (await recv_until(ws, order_update(oid)))["data"]
    check_order(pending, fills=False, price=True)
    assert pending["status"] == "pending"
    filled = (await recv_until(ws, order_update(oid)))["data"]
    assert filled["status"] == "filled"  # no "open", no partial fill: pending, then filled
    check_order(filled, fills=True, price=True)
    # It fills at the market (plus slippage), not at its limit.
    assert dec(filled["executed_price"]) < limit
    assert dec(filled["executed_quantity"]) == Decimal("0.1")


async def test_a_limit_order_below_the_market_rests_and_can_be_cancelled(
    ws: WS, rest: Rest
) -> None:
    await subscribe(ws, channel="orders")
    limit = (await rest.price("ETHUSDT") / 2).quantize(Decimal("0.01"), ROUND_DOWN)
    placed = await rest.order(
        symbol="ETHUSDT", side="buy", type="limit", quantity="1", price=str(limit)
    )
    oid = placed["order_id"]
    await recv_until(ws, order_update(oid, "pending"))
    # the cash is locked while it rests, and it does not fill
    pf = await rest.portfolio()
    locked = limit * (1 + FEE_RATE)
    assert Decimal(pf["locked_cash"]) == locked.quantize(Decimal("0.00000001"))
    assert Decimal(pf["available_cash"]) == Decimal(10000) - Decimal(pf["locked_cash"])
    later = [m for m in await collect_for(ws, 0.3) if m.get("channel") == "orders"]
    assert later == []
    status, got = await rest.call("GET", f"/trade/order/{oid}")
    assert status == 200 and got["status"] == "pending"
    check_detail(got)

    status, cancelled = await rest.call("DELETE", f"/trade/order/{oid}")
    assert status == 200
    assert list(cancelled) == ["order_id", "status", "unlocked_amount", "cancelled_at"]
    assert (cancelled["order_id"], cancelled["status"]) == (oid, "cancelled")
    gross = Decimal("1.00000000") * Decimal(f"{limit}000000")
    assert cancelled["unlocked_amount"] == str(gross + gross * FEE_RATE)
    assert ISO_US.match(cancelled["cancelled_at"])
    pushed = (await recv_until(ws, order_update(oid, "cancelled")))["data"]
    check_order(pushed, fills=False, price=True)
    assert Decimal((await rest.portfolio())["available_cash"]) == Decimal(10000)
    status, got = await rest.call("GET", f"/trade/order/{oid}")
    assert got["status"] == "cancelled" and "cancelled_at" not in got  # not in the schema

    # Cancelling it again: 400 (not 409), the platform's code and details.
    status, err = await rest.call("DELETE", f"/trade/order/{oid}")
    assert (status, err) == (
        400,
        {
            "error": {
                "code": "ORDER_NOT_CANCELLABLE",
                "message": f"Order '{oid}' cannot be cancelled (status: cancelled).",
                "details": {"order_id": oid, "current_status": "cancelled"},
            }
        },
    )
    unknown = str(uuid.uuid4())
    for method in ("GET", "DELETE"):
        status, err = await rest.call(method, f"/trade/order/{unknown}")
        assert (status, err) == (
            404,
            {
                "error": {
                    "code": "ORDER_NOT_FOUND",
                    "message": f"Order '{unknown}' not found.",
                    "details": {"order_id": unknown},
                }
            },
        )
        # Not a UUID: FastAPI refuses the path parameter.
        status, err = await rest.call(method, "/trade/order/no-such-order")
        assert status == 422, err
        [item] = err["detail"]
        assert (item["type"], item["loc"], item["input"]) == (
            "uuid_parsing",
            ["path", "order_id"],
            "no-such-order",
        )
        assert item["msg"].startswith("Input should be a valid UUID, ")


async def test_stop_loss_and_take_profit(ws: WS, rest: Rest) -> None:
    await subscribe(ws, channel="orders")
    buy = await rest.order(symbol="SOLUSDT", side="buy", type="market", quantity="4")
    assert buy["status"] == "filled"
    px = await rest.price("SOLUSDT")
    # A stop-loss whose trigger the price is already under fires on the next step; a
    # take-profit far above rests. ``stop_price`` is the platform's alias of ``price``.
    stop = await rest.order(
        symbol="SOLUSDT", side="sell", type="stop_loss", quantity="1", stop_price=str(px * 2)
    )
    take = await rest.order(
        symbol="SOLUSDT", side="sell", type="take_profit", quantity="1", price=str(px * 2)
    )
    for placed in (stop, take):
        check_placed(placed)
        assert placed["status"] == "pending" and placed["locked_amount"] == "1"
    fired = (await recv_until(ws, order_update(stop["order_id"], "filled")))["data"]
    check_order(fired, fills=True, price=True)
    assert fired["type"] == "stop_loss"
    assert dec(fired["executed_price"]) < px * 2
    status, got = await rest.call("GET", f"/trade/order/{take['order_id']}")
    assert got["status"] == "pending"
    # 4 held, 1 sold, 1 locked by the take-profit: 2 can still be sold.
    status, err = await rest.call(
        "POST",
        "/trade/order",
        {"symbol": "SOLUSDT", "side": "sell", "type": "market", "quantity": "3"},
    )
    assert status == 400 and err["error"]["details"] == {"reason": "insufficient_balance"}


async def test_buy_then_sell_realizes_pnl(ws: WS, rest: Rest) -> None:
    await subscribe(ws, channel="orders")
    await subscribe(ws, channel="portfolio")
    buy = await rest.order(symbol="SOLUSDT", side="buy", type="market", quantity="5")
    held = await rest.portfolio()
    assert Decimal(held["total_equity"]) > Decimal(held["available_cash"])  # the position counts
    [position] = held["positions"]
    assert list(position) == POSITION_FIELDS
    assert (position["symbol"], position["asset"], position["quantity"]) == (
        "SOLUSDT",
        "SOL",
        "5.00000000",
    )
    # The entry price includes the buy fee.
    entry = (Decimal(buy["total_cost"]) / 5).quantize(Decimal("0.00000001"))
    assert Decimal(position["avg_entry_price"]) == entry

    # a resting limit sell locks the coins: they cannot be sold twice
    high = (await rest.price("SOLUSDT") * 2).quantize(Decimal("0.01"))
    resting = await rest.order(
        symbol="SOLUSDT", side="sell", type="limit", quantity="5", price=str(high)
    )
    status, err = await rest.call(
        "POST",
        "/trade/order",
        {"symbol": "SOLUSDT", "side": "sell", "type": "market", "quantity": "1"},
    )
    assert (status, err["error"]["code"]) == (400, "ORDER_REJECTED")
    status, balance = await rest.call("GET", "/account/balance")
    assert status == 200
    assert balance["balances"][1] == {
        "asset": "SOL",
        "available": "0E-8",
        "locked": "5.00000000",
        "total": "5.00000000",
    }
    status, _ = await rest.call("DELETE", f"/trade/order/{resting['order_id']}")
    assert status == 200

    sell = await rest.order(symbol="SOLUSDT", side="sell", type="market", quantity="5")
    assert sell["status"] == "filled"
    assert Decimal(sell["total_cost"]) == Decimal(sell["executed_price"]) * 5 - Decimal(sell["fee"])
    done = (await recv_until(ws, order_update(sell["order_id"], "filled")))["data"]
    check_order(done, fills=True)
    assert done["side"] == "sell"
    snap = (await recv_until(ws, on("portfolio")))["data"]
    check_portfolio(snap)
    # flat again: equity is cash, nothing unrealized, both fees were paid
    assert snap["total_equity"] == snap["available_cash"]
    assert dec(snap["unrealized_pnl"]) == 0
    assert dec(snap["realized_pnl"]) != 0
    assert dec(snap["total_equity"]) - Decimal(10000) == dec(snap["realized_pnl"])
    pf = await rest.portfolio()
    assert pf["positions"] == []
    assert Decimal(pf["total_pnl"]) == Decimal(pf["realized_pnl"])
    assert Decimal(pf["roi_pct"]) == Decimal(pf["total_pnl"]) / 100


# -- lists: newest first, pages, open orders, cancel all -------------------------------


async def test_lists_are_newest_first_and_paged(rest: Rest) -> None:
    low = (await rest.price("ETHUSDT") / 2).quantize(Decimal("0.01"), ROUND_DOWN)
    ids = []
    for _ in range(5):
        placed = await rest.order(
            symbol="ETHUSDT", side="buy", type="limit", quantity="0.01", price=str(low)
        )
        ids.append(placed["order_id"])
    market = await rest.order(symbol="SOLUSDT", side="buy", type="market", quantity="1")
    newest_first = [market["order_id"], *reversed(ids)]
    assert [o["order_id"] for o in await rest.orders()] == newest_first
    status, page = await rest.call("GET", "/trade/orders?limit=2&offset=1")
    assert [o["order_id"] for o in page["orders"]] == newest_first[1:3]
    # ``total`` is the length of the page, as the platform computes it.
    assert (page["total"], page["limit"], page["offset"]) == (2, 2, 1)
    status, page = await rest.call("GET", "/trade/orders?offset=5")
    assert (len(page["orders"]), page["total"]) == (1, 1)
    status, page = await rest.call("GET", "/trade/orders?offset=50")
    assert page == {"orders": [], "total": 0, "limit": 100, "offset": 50}

    status, opened = await rest.call("GET", "/trade/orders/open")
    assert status == 200
    assert [o["order_id"] for o in opened["orders"]] == list(reversed(ids))
    assert (opened["total"], opened["limit"], opened["offset"]) == (5, 100, 0)
    for o in opened["orders"]:
        check_detail(o)
    status, page = await rest.call("GET", "/trade/orders/open?limit=200&offset=3")
    assert [o["order_id"] for o in page["orders"]] == list(reversed(ids))[3:]


@pytest.mark.parametrize(
    ("path", "loc", "kind"),
    [
        ("/trade/orders?limit=0", "limit", "greater_than_equal"),
        ("/trade/orders?limit=501", "limit", "less_than_equal"),
        ("/trade/orders?limit=ten", "limit", "int_parsing"),
        ("/trade/orders?offset=-1", "offset", "greater_than_equal"),
        ("/trade/orders/open?limit=201", "limit", "less_than_equal"),
        ("/trade/orders/open?limit=0", "limit", "greater_than_equal"),
    ],
)
async def test_page_parameters_out_of_range_get_422(
    rest: Rest, path: str, loc: str, kind: str
) -> None:
    status, err = await rest.call("GET", path)
    assert status == 422
    [item] = err["detail"]
    assert (item["type"], item["loc"]) == (kind, ["query", loc])
    assert isinstance(item["input"], str) and item["msg"].startswith("Input should be")


async def test_cancel_all_open_orders(ws: WS, rest: Rest) -> None:
    await subscribe(ws, channel="orders")
    low = (await rest.price("ETHUSDT") / 2).quantize(Decimal("0.01"), ROUND_DOWN)
    await rest.order(symbol="SOLUSDT", side="buy", type="market", quantity="2")
    high = (await rest.price("SOLUSDT") * 3).quantize(Decimal("0.01"))
    buys = [
        await rest.order(symbol="ETHUSDT", side="buy", type="limit", quantity=q, price=str(low))
        for q in ("0.01", "0.02")
    ]
    sell = await rest.order(
        symbol="SOLUSDT", side="sell", type="limit", quantity="1.5", price=str(high)
    )
    status, done = await rest.call("DELETE", "/trade/orders/open")
    assert status == 200
    # Buys unlock quantity x price x 1.001 (USDT), sells their quantity (coins): summed.
    p8 = Decimal(f"{low}000000")
    want = sum(
        ((Decimal(q) * p8) * (1 + FEE_RATE) for q in ("0.01000000", "0.02000000")), Decimal(0)
    ) + Decimal("1.50000000")
    assert done == {"cancelled_count": 3, "total_unlocked": str(want)}
    cancelled: set[str] = set()
    while len(cancelled) < 3:
        m = await recv_until(ws, lambda m: on("orders")(m) and m["data"]["status"] == "cancelled")
        cancelled.add(m["data"]["order_id"])
    assert cancelled == {o["order_id"] for o in (*buys, sell)}
    status, opened = await rest.call("GET", "/trade/orders/open")
    assert opened["orders"] == [] and opened["total"] == 0
    assert await rest.call("DELETE", "/trade/orders/open") == (
        200,
        {"cancelled_count": 0, "total_unlocked": "0"},
    )
    pf = await rest.portfolio()
    assert Decimal(pf["locked_cash"]) == 0


# -- refusals ---------------------------------------------------------------------------

BTC = {"symbol": "BTCUSDT", "side": "buy", "type": "market"}
#: Bodies FastAPI refuses: (body, [(type, loc)]).
SCHEMA_ERRORS: list[tuple[Any, list[tuple[str, list[Any]]]]] = [
    ({**BTC, "quantity": "0"}, [("greater_than", ["body", "quantity"])]),
    ({**BTC, "quantity": "-1"}, [("greater_than", ["body", "quantity"])]),
    ({**BTC, "quantity": "x"}, [("decimal_parsing", ["body", "quantity"])]),
    ({**BTC, "quantity": "NaN"}, [("finite_number", ["body", "quantity"])]),
    ({**BTC, "quantity": None}, [("decimal_type", ["body", "quantity"])]),
    ({**BTC, "side": "hold", "quantity": "1"}, [("literal_error", ["body", "side"])]),
    ({**BTC, "type": "stop", "quantity": "1"}, [("literal_error", ["body", "type"])]),
    ({**BTC, "type": "limit", "quantity": "0.01"}, [("value_error", ["body"])]),
    ({**BTC, "quantity": "0.01", "price": "100"}, [("value_error", ["body"])]),
    (
        {**BTC, "type": "limit", "quantity": "0.01", "price": "0"},
        [("greater_than", ["body", "price"])],
    ),
    ({**BTC, "symbol": "", "quantity": "1"}, [("string_too_short", ["body", "symbol"])]),
    (BTC, [("missing", ["body", "quantity"])]),
    (
        {},
        [
            ("missing", ["body", "symbol"]),
            ("missing", ["body", "side"]),
            ("missing", ["body", "type"]),
            ("missing", ["body", "quantity"]),
        ],
    ),
    ([1, 2, 3], [("model_attributes_type", ["body"])]),
]


async def nothing_changed(ws: WS, rest: Rest, before: JSON) -> None:
    assert await rest.orders() == []
    after = await rest.portfolio()
    assert {k: v for k, v in after.items() if k != "timestamp"} == {
        k: v for k, v in before.items() if k != "timestamp"
    }
    assert [m for m in await collect_for(ws, 0.15) if m.get("channel") == "orders"] == []


@pytest.mark.parametrize(("body", "errors"), SCHEMA_ERRORS)
async def test_bodies_the_schema_refuses_get_422_detail(
    ws: WS, rest: Rest, body: Any, errors: list[tuple[str, list[Any]]]
) -> None:
    await subscribe(ws, channel="orders")
    before = await rest.portfolio()
    status, err = await rest.call("POST", "/trade/order", body)
    assert status == 422, err
    assert set(err) == {"detail"}
    assert [(e["type"], e["loc"]) for e in err["detail"]] == errors
    for e in err["detail"]:
        assert isinstance(e["msg"], str) and e["msg"]
        assert "input" in e
    await nothing_changed(ws, rest, before)


async def test_the_model_validator_messages(rest: Rest) -> None:
    _, err = await rest.call("POST", "/trade/order", {**BTC, "type": "limit", "quantity": "1"})
    assert err["detail"][0]["msg"] == "Value error, 'price' is required for 'limit' orders."
    assert err["detail"][0]["ctx"] == {"error": {}}
    _, err = await rest.call("POST", "/trade/order", {**BTC, "quantity": "1", "price": "5"})
    assert err["detail"][0]["msg"] == "Value error, 'price' must not be set for 'market' orders."
    _, err = await rest.call("POST", "/trade/order", {**BTC, "side": "hold", "quantity": "1"})
    assert err["detail"][0]["msg"] == "Input should be 'buy' or 'sell'"


#: Orders the risk manager refuses: 400 ORDER_REJECTED, the reason as message and detail.
RISK_REJECTIONS: list[tuple[JSON, str]] = [
    ({**BTC, "symbol": "NOPEUSDT", "quantity": "1"}, "price_unavailable"),
    ({**BTC, "quantity": "0.00001"}, "order_too_small"),  # 0.65 USDT
    ({**BTC, "quantity": "100"}, "insufficient_balance"),
    ({**BTC, "side": "sell", "quantity": "0.01"}, "insufficient_balance"),
]


@pytest.mark.parametrize(("body", "reason"), RISK_REJECTIONS)
async def test_the_risk_manager_rejects_with_a_reason(
    ws: WS, rest: Rest, body: JSON, reason: str
) -> None:
    await subscribe(ws, channel="orders")
    before = await rest.portfolio()
    status, err = await rest.call("POST", "/trade/order", body)
    assert (status, err) == (
        400,
        {"error": {"code": "ORDER_REJECTED", "message": reason, "details": {"reason": reason}}},
    )
    await nothing_changed(ws, rest, before)


async def test_a_limit_buy_the_cash_cannot_lock_is_insufficient_balance(ws: WS, rest: Rest) -> None:
    # The risk manager prices a buy at the market; the engine locks it at its limit.
    await subscribe(ws, channel="orders")
    before = await rest.portfolio()
    body = {**BTC, "type": "limit", "quantity": "0.1", "price": "1000000"}
    status, err = await rest.call("POST", "/trade/order", body)
    assert status == 400
    required = Decimal("0.1") * 1000000 + Decimal("0.1") * 1000000 * FEE_RATE
    assert err["error"] == {
        "code": "INSUFFICIENT_BALANCE",
        "message": f"Not enough USDT. Required: {required}, Available: 10000",
        "details": {"asset": "USDT", "required": str(required), "available": "10000"},
    }
    await nothing_changed(ws, rest, before)


async def test_at_most_50_open_orders(rest: Rest) -> None:
    low = (await rest.price("SOLUSDT") / 2).quantize(Decimal("0.01"), ROUND_DOWN)
    body = {
        "symbol": "SOLUSDT",
        "side": "buy",
        "type": "limit",
        "quantity": "0.1",
        "price": str(low),
    }
    for _ in range(50):
        await rest.order(**body)
    status, err = await rest.call("POST", "/trade/order", body)
    assert (status, err["error"]["code"], err["error"]["message"]) == (
        400,
        "ORDER_REJECTED",
        "max_open_orders_exceeded",
    )
    status, opened = await rest.call("GET", "/trade/orders/open?limit=200")
    assert opened["total"] == 50


async def test_bodies_that_are_not_json(rest: Rest, session: aiohttp.ClientSession) -> None:
    url = rest.base + "/trade/order"
    json_type = {**rest.headers, "Content-Type": "application/json"}
    async with session.post(url, data=b'{"symbol": ', headers=json_type) as r:
        assert r.status == 422
        [item] = (await r.json())["detail"]
        assert (item["type"], item["loc"], item["msg"]) == (
            "json_invalid",
            ["body", 11],
            "JSON decode error",
        )
    # A form body is not parsed: the schema refuses the text.
    async with session.post(url, data=b"symbol=BTCUSDT", headers=rest.headers) as r:
        assert r.status == 422
        [item] = (await r.json())["detail"]
        assert (item["type"], item["input"]) == ("model_attributes_type", "symbol=BTCUSDT")
    async with session.post(url, headers=rest.headers) as r:
        assert r.status == 422
        assert (await r.json())["detail"] == [
            {"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}
        ]
    assert await rest.orders() == []


PRIVATE = [
    ("POST", "/trade/order"),
    ("DELETE", "/trade/order/abc"),
    ("GET", "/trade/order/abc"),
    ("GET", "/trade/orders"),
    ("GET", "/trade/orders/open"),
    ("DELETE", "/trade/orders/open"),
    ("GET", "/account/portfolio"),
    ("GET", "/account/balance"),
    ("GET", "/account/positions"),
]


@pytest.mark.parametrize(
    ("headers", "code", "message"),
    [
        ({}, "INVALID_API_KEY", "Authentication credentials are required."),
        ({"X-API-Key": ""}, "INVALID_API_KEY", "Authentication credentials are required."),
        ({"X-API-Key": "wrong"}, "INVALID_API_KEY", "Invalid API key."),
        # Bearer carries a JWT on the platform, never an API key.
        (
            {"Authorization": f"Bearer {DEMO_API_KEY}"},
            "INVALID_TOKEN",
            "JWT token is invalid: Not enough segments",
        ),
    ],
)
@pytest.mark.parametrize(("method", "path"), PRIVATE)
async def test_private_endpoints_need_a_valid_key(
    sim: SimExchange,
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    headers: dict[str, str],
    code: str,
    message: str,
) -> None:
    body = {"symbol": "BTCUSDT", "side": "buy", "type": "market", "quantity": "0.01"}
    async with session.request(
        method, f"{sim.http_url}/api/v1{path}", json=body, headers=headers
    ) as r:
        assert r.status == 401
        assert await r.json() == {"error": {"code": code, "message": message}}
    assert sim.accounts[DEMO_API_KEY].orders == {}


async def test_public_market_endpoints_need_no_key(
    sim: SimExchange, session: aiohttp.ClientSession
) -> None:
    for path in ("/market/pairs", "/market/price/BTCUSDT"):
        async with session.get(f"{sim.http_url}/api/v1{path}") as r:
            assert r.status == 200


# -- the account endpoints -------------------------------------------------------------


async def test_portfolio_balance_and_positions_shapes(rest: Rest) -> None:
    fresh = await rest.portfolio()
    assert list(fresh) == PORTFOLIO_REST_FIELDS
    assert (fresh["available_cash"], fresh["locked_cash"], fresh["starting_balance"]) == (
        "10000.00000000",
        "0E-8",
        "10000.00000000",
    )
    assert fresh["positions"] == [] and ISO_US.match(fresh["timestamp"])
    await rest.order(symbol="ETHUSDT", side="buy", type="market", quantity="0.5")
    low = (await rest.price("ETHUSDT") / 2).quantize(Decimal("0.01"), ROUND_DOWN)
    await rest.order(symbol="ETHUSDT", side="buy", type="limit", quantity="0.1", price=str(low))
    pf = await rest.portfolio()
    parts = (Decimal(pf[k]) for k in ("available_cash", "locked_cash", "total_position_value"))
    assert Decimal(pf["total_equity"]) == sum(parts, Decimal(0))
    assert Decimal(pf["total_pnl"]) == Decimal(pf["unrealized_pnl"]) + Decimal(pf["realized_pnl"])
    [pos] = pf["positions"]
    assert list(pos) == POSITION_FIELDS and ISO_US.match(pos["opened_at"])
    assert Decimal(pos["market_value"]) == Decimal(pos["quantity"]) * Decimal(pos["current_price"])

    status, bal = await rest.call("GET", "/account/balance")
    assert status == 200 and list(bal) == ["balances", "total_equity_usdt"]
    usdt, eth = bal["balances"]
    assert (usdt["asset"], usdt["available"], usdt["locked"]) == (
        "USDT",
        pf["available_cash"],
        pf["locked_cash"],
    )
    assert eth == {
        "asset": "ETH",
        "available": "0.50000000",
        "locked": "0E-8",
        "total": "0.50000000",
    }
    status, positions = await rest.call("GET", "/account/positions")
    assert status == 200 and list(positions) == ["positions", "total_unrealized_pnl"]
    assert [p["symbol"] for p in positions["positions"]] == ["ETHUSDT"]


# -- the private channels ----------------------------------------------------------------


async def test_private_channels_are_per_account(session: aiohttp.ClientSession) -> None:
    keys = {"ak_a": Decimal(10000), "ak_b": Decimal(10000)}
    async with (
        fast_sim(api_keys=keys) as sim,
        session.ws_connect(sim.ws_url("ak_a")) as ws_a,
        session.ws_connect(sim.ws_url("ak_b")) as ws_b,
    ):
        for w in (ws_a, ws_b):
            await subscribe(w, channel="orders")
            await subscribe(w, channel="portfolio")
        placed = await Rest(session, sim, "ak_a").order(
            symbol="BTCUSDT", side="buy", type="market", quantity="0.01"
        )
        await recv_until(ws_a, order_update(placed["order_id"], "filled"))
        a_snap = (await recv_until(ws_a, on("portfolio")))["data"]
        assert dec(a_snap["available_cash"]) < 10000
        b_msgs = await collect_for(ws_b, 0.2)
        assert [m for m in b_msgs if m.get("channel") == "orders"] == []
        # ak_b's snapshots (if the timer fired) show its own untouched account
        for m in b_msgs:
            if m.get("channel") == "portfolio":
                assert m["data"]["available_cash"] == "10000.00"
        assert await Rest(session, sim, "ak_b").orders() == []
        status, _ = await Rest(session, sim, "ak_b").call(
            "GET", f"/trade/order/{placed['order_id']}"
        )
        assert status == 404


async def test_portfolio_snapshots_come_every_portfolio_interval(
    session: aiohttp.ClientSession,
) -> None:
    async with fast_sim(portfolio_interval=0.1) as sim, session.ws_connect(sim.ws_url()) as ws:
        await subscribe(ws, channel="portfolio")
        snaps = [(await recv_until(ws, on("portfolio"))) for _ in range(3)]
        for m in snaps:
            assert set(m) == {"channel", "data"}
            check_portfolio(m["data"])
            assert m["data"]["total_equity"] == "10000.00"
            assert m["data"]["available_cash"] == "10000.00"
            assert m["data"]["roi_pct"] == "0.00"
            assert ISO_MS.match(m["data"]["timestamp"])


async def test_order_event_decimals_are_plain_strings(session: aiohttp.ClientSession) -> None:
    # Regression: Decimal.normalize() turned a fee of 10 into "1E+1" and a fee of
    # 0.00000008 into "8E-8"; the protocol wants plain decimal strings.
    cash = Decimal(50000)
    async with (
        fast_sim(api_keys={DEMO_API_KEY: cash}) as sim,
        session.ws_connect(sim.ws_url()) as ws,
    ):
        rest = Rest(session, sim, DEMO_API_KEY)
        await subscribe(ws, channel="orders")
        tiny = await rest.order(symbol="PEPEUSDT", side="buy", type="market", quantity="200000")
        big = await rest.order(
            symbol="BTCUSDT", side="buy", type="limit", quantity="1E-1", price="100000"
        )
        assert (big["quantity"], big["price"]) == ("0.1", "100000")  # as the request wrote them
        for placed in (tiny, big):
            done = (await recv_until(ws, order_update(placed["order_id"], "filled")))["data"]
            check_order(done, fills=True, price=placed is big)
            fee, px, q = (dec(done[k]) for k in ("fee", "executed_price", "executed_quantity"))
            assert abs(fee - px * q * FEE_RATE) <= Decimal("0.00000001")
            assert "E" not in done["quantity"]
