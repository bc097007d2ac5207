"""TastytradeREST against the simulated exchange's tastytrade front-end: orders, balances
and positions as the streamer's own models with exact Decimals, the real API's pages,
refusals as RestError, the token masked, ``stream.rest`` and order recovery.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest
from aiohttp import web

from agentstream import AuthenticationError, ConfigurationError, RestError
from agentstream._rest import decode_answer as _decode
from agentstream.sim import TASTYTRADE_DEMO_ACCOUNT, TASTYTRADE_DEMO_TOKEN, SimExchange
from agentstream.tastytrade import (
    AccountBalance,
    CurrentPosition,
    PlacedOrder,
    TastytradeREST,
    TastytradeStream,
)
from agentstream.tastytrade.rest import (
    LIVE_API_URL,
    SANDBOX_API_URL,
    _OrderAnswer,
    _OrdersAnswer,
)

from .conftest import running, wait_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio

ACCT = TASTYTRADE_DEMO_ACCOUNT
SIM: dict[str, Any] = {"tick_rate": 100, "order_interval": 0.02, "tastytrade_idle_timeout": 0.5}
FAST: dict[str, Any] = {
    "stale_timeout": 1.0,
    "backoff_initial": 0.02,
    "backoff_max": 0.1,
    "backoff_jitter": 0.0,
    "connect_timeout": 2.0,
    "close_timeout": 0.2,
    "heartbeat_interval": 0.1,
}


@pytest.fixture
async def sim() -> AsyncIterator[SimExchange]:
    async with SimExchange(**SIM) as s:
        yield s


@pytest.fixture
async def rest(sim: SimExchange) -> AsyncIterator[TastytradeREST]:
    async with TastytradeREST(TASTYTRADE_DEMO_TOKEN, base_url=sim.http_url) as r:
        yield r


def market_price(sim: SimExchange, symbol: str = "AAPL") -> Decimal:
    return sim.market.equities[symbol].price_decimal()


def far_below(sim: SimExchange, symbol: str = "AAPL") -> Decimal:
    """A buy limit that stays open: half the market, in cents."""
    return (market_price(sim, symbol) * Decimal("0.5")).quantize(Decimal("0.01"))


def is_open(rest: TastytradeREST) -> bool:
    """Whether the client holds open connections."""
    return rest._transport is not None


async def final(rest: TastytradeREST, oid: int, status: str) -> PlacedOrder:
    """The order once it reaches ``status`` (polled over REST)."""
    with anyio.fail_after(5):
        while (order := await rest.get_order(ACCT, oid)).status != status:
            await anyio.sleep(0.02)
    return order


# -- construction ------------------------------------------------------------------------


def test_roots_and_the_token_never_shown() -> None:
    secret = "Bearer tt_live_0123456789abcdef"
    assert TastytradeREST(secret).base_url == LIVE_API_URL == "https://api.tastyworks.com"
    assert TastytradeREST(secret, sandbox=True).base_url == SANDBOX_API_URL
    assert TastytradeREST(secret, sandbox=True, base_url="http://h:1/").base_url == "http://h:1"
    assert secret not in repr(TastytradeREST(secret))
    assert TastytradeREST(secret)._headers(secret)["Authorization"] == secret  # as given
    with pytest.raises(ConfigurationError):
        TastytradeREST("")
    with pytest.raises(ConfigurationError):
        TastytradeREST(secret, base_url="ftp://nope")


def test_the_streams_rest_root() -> None:
    tok = TASTYTRADE_DEMO_TOKEN
    assert TastytradeStream(tok).api_url == LIVE_API_URL
    assert TastytradeStream(tok, sandbox=True).api_url == SANDBOX_API_URL
    assert TastytradeStream(tok, url="wss://streamer.cert.tastyworks.com").api_url == (
        SANDBOX_API_URL
    )
    sim_url = "ws://127.0.0.1:8000/tastytrade"
    assert TastytradeStream(tok, url=sim_url).api_url == "http://127.0.0.1:8000"
    assert TastytradeStream(tok, url="wss://h:9/tt").api_url == "https://h:9"
    given = TastytradeStream(tok, url=sim_url, api_url="http://other:1/")
    assert given.api_url == "http://other:1"
    assert given.rest.base_url == "http://other:1"
    assert given.rest is given.rest  # one per stream


# -- orders ------------------------------------------------------------------------------


async def test_place_get_list_and_cancel(sim: SimExchange, rest: TastytradeREST) -> None:
    limit = far_below(sim)
    order = await rest.place_order(ACCT, "aapl", "Buy to Open", 2, "Limit", "GTC", price=limit)
    assert isinstance(order, PlacedOrder)
    assert order.id is not None
    oid = order.id
    assert (order.account_number, order.underlying_symbol, order.order_type) == (
        ACCT,
        "AAPL",
        "Limit",
    )
    assert (order.time_in_force, order.price, order.price_effect) == ("GTC", limit, "Debit")
    assert order.signed_price == -limit
    assert order.size == 2 and type(order.size) is Decimal
    assert [(leg.symbol, leg.action, leg.quantity) for leg in order.legs] == [
        ("AAPL", "Buy to Open", Decimal(2))
    ]
    assert not order.recovered

    got = await rest.get_order(ACCT, oid)
    assert (got.id, got.price) == (oid, limit)
    assert got.status in ("Received", "Routed", "In Flight", "Live")

    other = await rest.place_order(ACCT, "MSFT", "Buy to Open", "1", "Limit", price="1.00")
    assert other.id is not None
    assert {oid, other.id} <= {o.id for o in await rest.live_orders(ACCT)}
    listed = await rest.orders(ACCT, statuses=["Live"], start_date=date.today())
    assert {oid, other.id} <= {o.id for o in listed}
    assert all(isinstance(o, PlacedOrder) for o in listed)

    cancelled = await rest.cancel_order(ACCT, oid)
    assert cancelled.id == oid
    assert cancelled.status in ("Cancel Requested", "Cancelled")
    assert (await final(rest, oid, "Cancelled")).is_terminal
    with pytest.raises(RestError) as again:  # no longer open
        await rest.cancel_order(ACCT, oid)
    assert again.value.status == 422
    with pytest.raises(RestError) as unknown:
        await rest.get_order(ACCT, 424242)
    assert unknown.value.status == 404
    assert unknown.value.code == "record_not_found"
    with pytest.raises(ConfigurationError, match="order_id"):
        await rest.get_order(ACCT, "1")  # type: ignore[arg-type]


async def test_a_fill_balances_and_positions(sim: SimExchange, rest: TastytradeREST) -> None:
    before = await rest.balances(ACCT)
    assert isinstance(before, AccountBalance)
    assert before.account_number == ACCT
    assert before.cash_balance == Decimal("100000.00")
    assert str(before.cash_balance) == "100000.00"  # the wire's text, digit for digit
    assert await rest.positions(ACCT) == []

    order = await rest.place_order(ACCT, "AAPL", "Buy to Open", 3)
    assert order.id is not None and order.price is None
    filled = await final(rest, order.id, "Filled")
    fills = filled.legs[0].fills
    assert sum(f.quantity for f in fills) == 3
    assert all(type(f.fill_price) is Decimal for f in fills)

    after = await rest.balances(ACCT)
    assert after.cash_balance is not None and after.cash_balance < before.cash_balance
    positions = await rest.positions(ACCT)
    assert [(p.symbol, p.signed_quantity, p.quantity_direction) for p in positions] == [
        ("AAPL", Decimal(3), "Long")
    ]
    assert isinstance(positions[0], CurrentPosition)
    assert type(positions[0].average_open_price) is Decimal


async def test_a_refused_order_is_a_rest_error(sim: SimExchange, rest: TastytradeREST) -> None:
    with pytest.raises(RestError) as refused:
        await rest.place_order(ACCT, "NOPE", "Buy to Open", 1)
    assert refused.value.status == 400
    assert refused.value.code == "validation_error"
    assert "POST /accounts/" in str(refused.value)
    with pytest.raises(RestError) as bad_action:
        await rest.place_order(ACCT, "AAPL", "Buy", 1)
    assert bad_action.value.status == 400
    with pytest.raises(ConfigurationError, match="float"):
        await rest.place_order(ACCT, "AAPL", "Buy to Open", 1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="finite"):
        await rest.place_order(ACCT, "AAPL", "Buy to Open", 1, "Limit", price=Decimal("NaN"))
    with pytest.raises(AuthenticationError):  # a token good for another account only
        await rest.balances("5WT99999")
    assert sim.tastytrade.accounts[ACCT].orders == {}  # nothing was placed


async def test_a_bad_token_is_an_authentication_error_and_never_shown(
    sim: SimExchange,
) -> None:
    secret = "Bearer tt_wrong_0123456789abcdef"
    async with TastytradeREST(secret, base_url=sim.http_url) as rest:
        for call in (rest.balances(ACCT), rest.live_orders(ACCT), rest.get_order(ACCT, 1)):
            with pytest.raises(AuthenticationError) as refused:
                await call
            exc = refused.value
            assert exc.status == 401
            for text in (str(exc), repr(exc), repr(rest), str(exc.__cause__ or "")):
                assert secret not in text
                assert "tt_wrong_0123456789abcdef" not in text


async def test_a_token_callable_is_read_for_every_request(sim: SimExchange) -> None:
    calls: list[int] = []

    async def token() -> str:
        calls.append(1)
        return sim.tastytrade.mint_token(ACCT)

    async with TastytradeREST(token, base_url=sim.http_url) as rest:
        await rest.balances(ACCT)
        await rest.positions(ACCT)
    assert len(calls) == 2


# -- the real API's shapes -----------------------------------------------------------------


def _order_json(oid: int, status: str = "Filled", updated: int = 1_688_584_052_750) -> Any:
    return {
        "id": oid,
        "account-number": ACCT,
        "time-in-force": "Day",
        "order-type": "Limit",
        "underlying-symbol": "AAPL",
        "underlying-instrument-type": "Equity",
        "status": status,
        "cancellable": False,
        "editable": False,
        "edited": False,
        "price": "187.45",
        "price-effect": "Debit",
        "updated-at": updated,
        "legs": [],
    }


def test_json_numbers_decode_without_a_float() -> None:
    body = (
        b'{"data": {"id": 7, "account-number": "5WT1", "time-in-force": "Day",'
        b' "order-type": "Limit", "underlying-symbol": "AAPL",'
        b' "underlying-instrument-type": "Equity", "status": "Live", "cancellable": true,'
        b' "editable": true, "edited": false, "updated-at": 1688584052750, "legs": [],'
        b' "price": 0.10000000000000000001, "value": 12345678901234567.89},'
        b' "context": "/accounts/5WT1/orders/7"}'
    )
    order = _decode(body, _OrderAnswer, "GET /x").data
    assert order.price == Decimal("0.10000000000000000001")
    assert order.value == Decimal("12345678901234567.89")  # not 12345678901234568
    assert order.updated_at == datetime(2023, 7, 5, 19, 7, 32, 750000, tzinfo=UTC)
    page = msgspec.json.encode(
        {
            "data": {"items": [_order_json(1)]},
            "pagination": {"per-page": 1, "page-offset": 0, "total-pages": 3},
        }
    )
    answer = _decode(page, _OrdersAnswer, "GET /x")
    assert answer.pagination is not None and answer.pagination.total_pages == 3
    assert [o.id for o in answer.data.items] == [1]
    with pytest.raises(RestError, match="does not understand"):
        _decode(b'{"data": {"id": 7}}', _OrderAnswer, "x")
    with pytest.raises(RestError, match="does not understand"):
        _decode(b"<order/>", _OrderAnswer, "x")


@contextlib.asynccontextmanager
async def paginating_server(total: int, per_page: int) -> AsyncIterator[tuple[str, list[Any]]]:
    """A stand-in for tastytrade's order search: ``total`` orders, paged as the real API."""
    seen: list[Any] = []

    async def search(request: web.Request) -> web.Response:
        seen.append(request.query)
        size = int(request.query["per-page"])
        offset = int(request.query.get("page-offset", "0"))
        ids = list(range(total, 0, -1))[offset * size : (offset + 1) * size]
        pages = (total + size - 1) // size
        body = {
            "data": {"items": [_order_json(i) for i in ids]},
            "api-version": "v1",
            "context": request.path,
            "pagination": {
                "per-page": size,
                "page-offset": offset,
                "item-offset": offset * size,
                "total-items": total,
                "total-pages": pages,
                "current-item-count": len(ids),
                "previous-link": None,
                "next-link": None,
                "paging-link-template": None,
            },
        }
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/accounts/{account}/orders", search)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_the_real_apis_pages_are_walked() -> None:
    async with (
        paginating_server(total=7, per_page=3) as (url, seen),
        TastytradeREST("Bearer x", base_url=url) as rest,
    ):
        every = await rest.orders(
            ACCT,
            per_page=3,
            statuses=["Filled", "Cancelled"],
            start_at=datetime(2024, 1, 15, 14, 30, tzinfo=UTC),
            underlying_symbol="aapl",
        )
        assert [o.id for o in every] == [7, 6, 5, 4, 3, 2, 1]
        assert [q["page-offset"] for q in seen] == ["0", "1", "2"]
        first = seen[0]
        assert first.getall("status[]") == ["Filled", "Cancelled"]
        assert first["start-at"] == "2024-01-15T14:30:00.000Z"
        assert (first["underlying-symbol"], first["sort"]) == ("AAPL", "Desc")

        seen.clear()
        page = await rest.orders(ACCT, per_page=3, page_offset=1)
        assert [o.id for o in page] == [4, 3, 2]
        assert [q["page-offset"] for q in seen] == ["1"]
        assert [o.id for o in await rest.orders(ACCT, per_page=2, max_pages=2)] == [7, 6, 5, 4]
        with pytest.raises(ConfigurationError, match="per_page"):
            await rest.orders(ACCT, per_page=0)


# -- beside a stream ---------------------------------------------------------------------


async def test_the_streams_rest_client(sim: SimExchange) -> None:
    ts = TastytradeStream(TASTYTRADE_DEMO_TOKEN, [ACCT], url=sim.url + "/tastytrade", **FAST)
    assert ts.api_url == sim.http_url
    async with running(ts):
        await wait_for(lambda: ts.stats.connections == 1)
        order = await ts.rest.place_order(ACCT, "AAPL", "Buy to Open", 1)
        assert order.id is not None
        assert is_open(ts.rest)
    assert not is_open(ts.rest)  # closed when the run ended
    assert (await ts.rest.get_order(ACCT, order.id)).id == order.id  # and reopens
    await ts.rest.aclose()


async def test_order_updates_missed_while_disconnected_are_recovered(sim: SimExchange) -> None:
    ts = TastytradeStream(TASTYTRADE_DEMO_TOKEN, [ACCT], url=sim.url + "/tastytrade", **FAST)
    got: list[PlacedOrder] = []

    @ts.on_order_update()
    def on_order(o: PlacedOrder) -> None:
        got.append(o)

    async with running(ts):
        await wait_for(lambda: ts.stats.connections == 1)
        sim.refuse_handshakes(503)
        await sim.drop_connections()
        await wait_for(lambda: ts.stats.failed_attempts >= 1, what="kept out")
        placed = await sim.tastytrade.place_order(ACCT, symbol="AAPL", action="Buy to Open")
        oid = placed["id"]
        await anyio.sleep(0.3)  # filled while nobody listens
        sim.accept_handshakes()
        await wait_for(lambda: any(o.id == oid and o.status == "Filled" for o in got))
        await anyio.sleep(0.2)  # no second copy arrives
    filled = [o for o in got if o.id == oid and o.status == "Filled"]
    assert len(filled) == 1
    assert filled[0].recovered is True
    assert (filled[0].underlying_symbol, filled[0].legs[0].action) == ("AAPL", "Buy to Open")
    assert ts.stats.recovered_orders >= 1
