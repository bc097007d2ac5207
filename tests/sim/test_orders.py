"""The REST API, the order lifecycle and the private ``orders`` / ``portfolio`` channels."""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal
from typing import Any, cast

import aiohttp
import pytest

from agentstream.sim import DEMO_API_KEY, SimExchange
from tests.sim.helpers import (
    ISO_MS,
    collect,
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
FEE_RATE = Decimal("0.001")


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

    async def order(self, **body: Any) -> dict[str, Any]:
        status, data = await self.call("POST", "/trade/order", body)
        assert status == 201, data
        return cast("dict[str, Any]", data)

    async def portfolio(self) -> dict[str, Any]:
        status, data = await self.call("GET", "/account/portfolio")
        assert status == 200, data
        return cast("dict[str, Any]", data)

    async def orders(self) -> list[dict[str, Any]]:
        status, data = await self.call("GET", "/trade/orders")
        assert status == 200, data
        return cast("list[dict[str, Any]]", data["orders"])

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


def check_order(d: dict[str, Any], *, fills: bool, price: bool = False) -> None:
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
    assert d["side"] in ("buy", "sell") and d["type"] in ("market", "limit")
    dec(d["quantity"])
    for k in ("executed_price", "executed_quantity", "fee", "price"):
        if k in d:
            assert dec(d[k]) > 0, (k, d)
    for k in ("filled_at", "cancelled_at"):
        if k in d:
            assert ISO_MS.match(d[k]), d[k]


def check_portfolio(d: dict[str, Any], start: Decimal = Decimal(10000)) -> None:
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


async def test_market_buy_fills_and_is_pushed(sim: SimExchange, ws: WS, rest: Rest) -> None:
    await subscribe(ws, channel="orders")
    await subscribe(ws, channel="portfolio")
    placed = await rest.order(symbol="btcusdt", side="buy", type="market", quantity="0.010")
    check_order(placed, fills=False)
    assert placed["status"] == "pending"
    assert (placed["symbol"], placed["side"], placed["type"]) == ("BTCUSDT", "buy", "market")
    assert dec(placed["quantity"]) == Decimal("0.01")
    oid = placed["order_id"]

    pending = await recv_until(ws, order_update(oid))
    assert set(pending) == {"channel", "data"}
    assert pending["data"] == placed
    filled = (await recv_until(ws, order_update(oid, "filled")))["data"]
    check_order(filled, fills=True)
    qty, px, fee = (dec(filled[k]) for k in ("executed_quantity", "executed_price", "fee"))
    assert qty == Decimal("0.01")
    assert decimals_of(filled["executed_price"]) <= 2
    assert abs(fee - qty * px * FEE_RATE) < Decimal("0.00000001")

    # a portfolio snapshot follows the trade
    snap = (await recv_until(ws, on("portfolio")))["data"]
    check_portfolio(snap)
    cost = qty * px + fee
    assert abs(dec(snap["available_cash"]) - (Decimal(10000) - cost)) <= Decimal("0.01")
    assert abs(dec(snap["realized_pnl"]) + fee) <= Decimal("0.01")  # the fee is realized

    # REST views agree
    status, got = await rest.call("GET", f"/trade/order/{oid}")
    assert status == 200 and got == filled
    assert [o["order_id"] for o in await rest.orders()] == [oid]
    status, only = await rest.call("GET", "/trade/orders?status=filled")
    assert [o["order_id"] for o in only["orders"]] == [oid]
    status, none = await rest.call("GET", "/trade/orders?status=open")
    assert none == {"orders": []}
    pf = await rest.portfolio()
    check_portfolio(pf)
    assert dec(pf["available_cash"]) == dec(snap["available_cash"])
    # equity = cash + position at the current price; about 10000 minus fees
    assert abs(dec(pf["total_equity"]) - Decimal(10000)) < 50


def decimals_of(s: str) -> int:
    return len(s.split(".")[1]) if "." in s else 0


async def test_large_order_is_partially_filled_first(ws: WS, rest: Rest) -> None:
    await subscribe(ws, channel="orders")
    await subscribe(ws, channel="portfolio")
    placed = await rest.order(symbol="BTCUSDT", side="buy", type="market", quantity="0.06")
    oid = placed["order_id"]
    part = (await recv_until(ws, order_update(oid, "partially_filled")))["data"]
    check_order(part, fills=True)
    assert dec(part["executed_quantity"]) == Decimal("0.03")
    snap1 = (await recv_until(ws, on("portfolio")))["data"]
    check_portfolio(snap1)
    done = (await recv_until(ws, order_update(oid, "filled")))["data"]
    check_order(done, fills=True)
    assert dec(done["executed_quantity"]) == Decimal("0.06")
    assert dec(done["fee"]) > dec(part["fee"])
    snap2 = (await recv_until(ws, on("portfolio")))["data"]
    check_portfolio(snap2)
    # After the first half, the rest is still reserved (at the placement price); after
    # the second, the cash is exactly what the whole order cost.
    part_cost = dec(part["executed_quantity"]) * dec(part["executed_price"]) + dec(part["fee"])
    assert dec(snap1["available_cash"]) < Decimal(10000) - part_cost
    cost = dec(done["executed_quantity"]) * dec(done["executed_price"]) + dec(done["fee"])
    assert abs(dec(snap2["available_cash"]) - (Decimal(10000) - cost)) <= Decimal("0.02")


async def test_limit_buy_at_or_above_the_price_opens_then_fills(ws: WS, rest: Rest) -> None:
    await subscribe(ws, channel="orders")
    limit = (await rest.price("ETHUSDT") * Decimal("1.02")).quantize(Decimal("0.01"))
    placed = await rest.order(
        symbol="ETHUSDT", side="buy", type="limit", quantity="0.1", price=str(limit)
    )
    check_order(placed, fills=False, price=True)
    assert dec(placed["price"]) == limit
    oid = placed["order_id"]
    seen = [m["data"] for m in await collect(ws, order_update(oid), 3)]
    assert [d["status"] for d in seen] == ["pending", "open", "filled"]
    check_order(seen[1], fills=False, price=True)
    check_order(seen[2], fills=True, price=True)
    assert dec(seen[2]["executed_price"]) <= limit


async def test_limit_order_below_the_market_rests_and_can_be_cancelled(ws: WS, rest: Rest) -> None:
    await subscribe(ws, channel="orders")
    limit = (await rest.price("ETHUSDT") / 2).quantize(Decimal("0.01"), ROUND_DOWN)
    placed = await rest.order(
        symbol="ETHUSDT", side="buy", type="limit", quantity="1", price=str(limit)
    )
    oid = placed["order_id"]
    await recv_until(ws, order_update(oid, "open"))
    # the cash is reserved while it rests, and it does not fill
    reserved = Decimal(10000) - dec((await rest.portfolio())["available_cash"])
    assert abs(reserved - limit * (1 + FEE_RATE)) <= Decimal("0.01")
    later = [m for m in await collect_for(ws, 0.3) if m.get("channel") == "orders"]
    assert later == []
    status, _ = await rest.call("GET", f"/trade/order/{oid}")
    assert status == 200 and _["status"] == "open"

    status, cancelled = await rest.call("DELETE", f"/trade/order/{oid}")
    assert status == 200
    check_order(cancelled, fills=False, price=True)
    assert cancelled["status"] == "cancelled"
    pushed = (await recv_until(ws, order_update(oid, "cancelled")))["data"]
    assert pushed == cancelled
    assert dec((await rest.portfolio())["available_cash"]) == Decimal(10000)

    status, err = await rest.call("DELETE", f"/trade/order/{oid}")
    assert status == 409 and err["error"]["code"] == "ORDER_NOT_OPEN"
    status, err = await rest.call("DELETE", "/trade/order/no-such-order")
    assert status == 404 and err["error"]["code"] == "ORDER_NOT_FOUND"
    status, err = await rest.call("GET", "/trade/order/no-such-order")
    assert status == 404 and err["error"]["code"] == "ORDER_NOT_FOUND"


async def test_buy_then_sell_realizes_pnl(ws: WS, rest: Rest) -> None:
    await subscribe(ws, channel="orders")
    await subscribe(ws, channel="portfolio")
    buy = await rest.order(symbol="SOLUSDT", side="buy", type="market", quantity="5")
    await recv_until(ws, order_update(buy["order_id"], "filled"))
    held = await rest.portfolio()
    check_portfolio(held)
    assert dec(held["total_equity"]) > dec(held["available_cash"])  # the position counts

    # a resting limit sell reserves the coins: they cannot be sold twice
    high = (await rest.price("SOLUSDT") * 2).quantize(Decimal("0.01"))
    resting = await rest.order(
        symbol="SOLUSDT", side="sell", type="limit", quantity="5", price=str(high)
    )
    status, err = await rest.call(
        "POST",
        "/trade/order",
        {"symbol": "SOLUSDT", "side": "sell", "type": "market", "quantity": "1"},
    )
    assert status == 400 and err["error"]["code"] == "INSUFFICIENT_BALANCE"
    status, _ = await rest.call("DELETE", f"/trade/order/{resting['order_id']}")
    assert status == 200

    sell = await rest.order(symbol="SOLUSDT", side="sell", type="market", quantity="5")
    done = (await recv_until(ws, order_update(sell["order_id"], "filled")))["data"]
    check_order(done, fills=True)
    assert done["side"] == "sell"
    snap = (await recv_until(ws, on("portfolio")))["data"]
    check_portfolio(snap)
    # flat again: equity is cash, nothing unrealized, fees were paid
    assert snap["total_equity"] == snap["available_cash"]
    assert dec(snap["unrealized_pnl"]) == 0
    assert dec(snap["realized_pnl"]) != 0
    assert dec(snap["total_equity"]) - Decimal(10000) == dec(snap["realized_pnl"])
    roi = (dec(snap["total_equity"]) - 10000) / 100
    assert abs(dec(snap["roi_pct"]) - roi) <= Decimal("0.01")


BAD_ORDERS: list[tuple[Any, str]] = [
    ({"symbol": "NOPEUSDT", "side": "buy", "type": "market", "quantity": "1"}, "INVALID_SYMBOL"),
    ({"symbol": "BTCUSDT", "side": "buy", "type": "market", "quantity": "0"}, "INVALID_QUANTITY"),
    ({"symbol": "BTCUSDT", "side": "buy", "type": "market", "quantity": "-1"}, "INVALID_QUANTITY"),
    ({"symbol": "BTCUSDT", "side": "buy", "type": "market", "quantity": "x"}, "INVALID_QUANTITY"),
    ({"symbol": "BTCUSDT", "side": "buy", "type": "market", "quantity": "NaN"}, "INVALID_QUANTITY"),
    (
        {"symbol": "BTCUSDT", "side": "buy", "type": "market", "quantity": "0.0000001"},
        "INVALID_QUANTITY",
    ),
    ({"symbol": "BTCUSDT", "side": "hold", "type": "market", "quantity": "1"}, "INVALID_SIDE"),
    ({"symbol": "BTCUSDT", "side": "buy", "type": "stop", "quantity": "1"}, "INVALID_TYPE"),
    ({"symbol": "BTCUSDT", "side": "buy", "type": "limit", "quantity": "0.01"}, "INVALID_PRICE"),
    (
        {"symbol": "BTCUSDT", "side": "buy", "type": "limit", "quantity": "0.01", "price": "0"},
        "INVALID_PRICE",
    ),
    (
        {"symbol": "BTCUSDT", "side": "buy", "type": "market", "quantity": "100"},
        "INSUFFICIENT_BALANCE",
    ),
    (
        {"symbol": "BTCUSDT", "side": "sell", "type": "market", "quantity": "0.01"},
        "INSUFFICIENT_BALANCE",
    ),
    ({"symbol": "BTCUSDT", "side": "buy", "type": "market"}, "MISSING_FIELD"),
    (
        {"symbol": "BTCUSDT", "side": "buy", "type": "market", "quantity": "1", "leverage": 5},
        "INVALID_FIELD",
    ),
    ([1, 2, 3], "INVALID_JSON"),
]


@pytest.mark.parametrize(("body", "code"), BAD_ORDERS)
async def test_bad_orders_get_4xx_and_change_nothing(
    ws: WS, rest: Rest, body: Any, code: str
) -> None:
    await subscribe(ws, channel="orders")
    before = await rest.portfolio()
    status, err = await rest.call("POST", "/trade/order", body)
    assert status == 400, err
    assert set(err) == {"error"}
    assert err["error"]["code"] == code
    assert isinstance(err["error"]["message"], str) and len(err["error"]["message"]) > 10
    assert await rest.orders() == []
    after = await rest.portfolio()
    assert {k: v for k, v in after.items() if k != "timestamp"} == {
        k: v for k, v in before.items() if k != "timestamp"
    }
    assert [m for m in await collect_for(ws, 0.15) if m.get("channel") == "orders"] == []


async def test_a_body_that_is_not_json_gets_400(rest: Rest, session: aiohttp.ClientSession) -> None:
    async with session.post(
        rest.base + "/trade/order", data=b"symbol=BTCUSDT", headers=rest.headers
    ) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "INVALID_JSON"
    assert await rest.orders() == []


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/trade/order"),
        ("DELETE", "/trade/order/abc"),
        ("GET", "/trade/order/abc"),
        ("GET", "/trade/orders"),
        ("GET", "/account/portfolio"),
    ],
)
async def test_private_endpoints_need_a_valid_key(
    sim: SimExchange,
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    headers: dict[str, str],
) -> None:
    body = {"symbol": "BTCUSDT", "side": "buy", "type": "market", "quantity": "0.01"}
    async with session.request(
        method, f"{sim.http_url}/api/v1{path}", json=body, headers=headers
    ) as r:
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "UNAUTHORIZED"
    assert sim.accounts[DEMO_API_KEY].orders == {}


async def test_public_market_endpoints_need_no_key(
    sim: SimExchange, session: aiohttp.ClientSession
) -> None:
    for path in ("/market/pairs", "/market/price/BTCUSDT"):
        async with session.get(f"{sim.http_url}/api/v1{path}") as r:
            assert r.status == 200


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
        snaps = await collect(ws, on("portfolio"), 3, timeout=1.0)
        for m in snaps:
            assert set(m) == {"channel", "data"}
            check_portfolio(m["data"])
            assert m["data"]["total_equity"] == "10000.00"
            assert m["data"]["available_cash"] == "10000.00"
            assert m["data"]["roi_pct"] == "0.00"
            assert ISO_MS.match(m["data"]["timestamp"])


async def test_an_order_the_market_moved_past_is_rejected_with_a_reason(
    sim: SimExchange, ws: WS, rest: Rest
) -> None:
    await subscribe(ws, channel="orders")
    # Place in-process and move the price in the same step of the event loop, so the
    # engine sees a market buy that the cash no longer covers.
    pair = sim.market.pairs["ETHUSDT"]
    qty = (Decimal(9000) / pair.price_decimal()).quantize(Decimal("0.0001"), ROUND_DOWN)
    placed = await sim.place_order(
        DEMO_API_KEY, symbol="ETHUSDT", side="buy", type="market", quantity=str(qty)
    )
    pair.price *= 3
    rejected = (await recv_until(ws, order_update(placed["order_id"], "rejected")))["data"]
    check_order(rejected, fills=False)
    assert "insufficient" in rejected["rejected_reason"]
    pf = await rest.portfolio()
    assert pf["available_cash"] == "10000.00"  # the reservation was released


async def test_order_decimals_are_plain_strings_even_when_tiny_or_round(
    session: aiohttp.ClientSession,
) -> None:
    # Regression: Decimal.normalize() turned a fee of 10 into "1E+1" and a fee of
    # 0.00000008 into "8E-8"; the protocol wants plain decimal strings.
    cash = Decimal(50000)
    async with (
        fast_sim(api_keys={DEMO_API_KEY: cash}) as sim,
        session.ws_connect(sim.ws_url()) as ws,
    ):
        rest = Rest(session, sim, DEMO_API_KEY)
        await subscribe(ws, channel="orders")
        tiny = await rest.order(symbol="PEPEUSDT", side="buy", type="market", quantity="10")
        # a buy limit far above the market fills at once at the limit: fee 0.1 * 100000 / 1000
        assert await rest.price("BTCUSDT") < 90_000
        big = await rest.order(
            symbol="BTCUSDT", side="buy", type="limit", quantity="1E-1", price="100000"
        )
        assert big["quantity"] == "0.1"
        assert big["price"] == "100000.00"
        for placed in (tiny, big):
            done = (await recv_until(ws, order_update(placed["order_id"], "filled")))["data"]
            check_order(done, fills=True, price=placed is big)
            fee, px, q = (dec(done[k]) for k in ("fee", "executed_price", "executed_quantity"))
            assert abs(fee - px * q * FEE_RATE) <= Decimal("0.00000001")
            if placed is big:
                assert done["fee"] in ("10", "10.00", "10.00000000"), done
        check_portfolio(await rest.portfolio(), start=cash)
