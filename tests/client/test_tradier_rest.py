"""TradierREST against the simulated exchange's Tradier front-end: typed orders with exact
Decimals, Tradier's list quirks, refusals as RestError, the token masked, and ``ws.rest``.
"""

from __future__ import annotations

import logging
import threading
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from agentstream import AuthenticationError, ConfigurationError, RestError
from agentstream._rest import decode_answer as _decode
from agentstream.protocols.tradier import LIVE_URL, SANDBOX_URL
from agentstream.sim import TRADIER_DEMO_ACCOUNT, TRADIER_DEMO_TOKEN, SimExchange
from agentstream.tradier import TradierOrder, TradierREST, TradierStream
from agentstream.tradier.rest import _OrderAnswer, _OrdersAnswer

from .conftest import running, wait_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio

SECOND_ACCOUNT = "VA000002"
SIM: dict[str, Any] = {"tick_rate": 200, "order_interval": 0.02}
FAST: dict[str, Any] = {
    "stale_timeout": 1.0,
    "backoff_initial": 0.02,
    "backoff_max": 0.1,
    "backoff_jitter": 0.0,
    "connect_timeout": 2.0,
    "close_timeout": 0.2,
}
EIGHT = Decimal("0.00000001")


@pytest.fixture
async def sim() -> AsyncIterator[SimExchange]:
    async with SimExchange(**SIM) as s:
        yield s


@pytest.fixture
async def rest(sim: SimExchange) -> AsyncIterator[TradierREST]:
    async with TradierREST(
        TRADIER_DEMO_TOKEN, base_url=sim.http_url, account=TRADIER_DEMO_ACCOUNT
    ) as r:
        yield r


def market_price(sim: SimExchange, symbol: str = "AAPL") -> Decimal:
    return sim.market.equities[symbol].price_decimal()


def far_below(sim: SimExchange, symbol: str = "AAPL") -> Decimal:
    """A buy limit that stays open: half the market, in cents."""
    return (market_price(sim, symbol) * Decimal("0.5")).quantize(Decimal("0.01"))


def above(sim: SimExchange, symbol: str = "AAPL") -> Decimal:
    """A buy limit that fills at once, at the limit: 10 % over the market, in cents."""
    return (market_price(sim, symbol) * Decimal("1.1")).quantize(Decimal("0.01"))


def is_open(rest: TradierREST) -> bool:
    """Whether the client holds open connections."""
    return rest._transport is not None


async def filled(rest: TradierREST, oid: int) -> TradierOrder:
    """The order once it is filled (polled over REST)."""
    with anyio.fail_after(5):
        while (order := await rest.get_order(oid)).status != "filled":
            await anyio.sleep(0.02)
    return order


# -- construction ------------------------------------------------------------------------


def test_base_urls_like_the_streams_and_the_token_never_shown() -> None:
    secret = "tradier_live_0123456789abcdef"
    assert TradierREST(secret).base_url == LIVE_URL
    assert TradierREST(secret, sandbox=True).base_url == SANDBOX_URL
    assert TradierREST(secret, sandbox=True, base_url="http://h:1/").base_url == "http://h:1"
    assert secret not in repr(TradierREST(secret))
    with pytest.raises(ConfigurationError):
        TradierREST("")
    with pytest.raises(ConfigurationError):
        TradierREST(secret, base_url="ftp://nope")


async def test_an_account_is_required_and_amounts_are_exact_types(sim: SimExchange) -> None:
    async with TradierREST(TRADIER_DEMO_TOKEN, base_url=sim.http_url) as rest:
        with pytest.raises(ConfigurationError, match="account"):
            await rest.list_orders()
        assert await rest.list_orders(TRADIER_DEMO_ACCOUNT) == []
        rest.account = TRADIER_DEMO_ACCOUNT
        assert await rest.list_orders() == []
        with pytest.raises(ConfigurationError, match="float"):
            await rest.place_order("AAPL", "buy", 1.5)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="finite"):
            await rest.place_order("AAPL", "buy", 1, type="limit", price=Decimal("NaN"))
        with pytest.raises(ConfigurationError, match="order_id"):
            await rest.get_order("1000001")  # type: ignore[arg-type]


# -- orders ------------------------------------------------------------------------------


async def test_place_get_and_list_none_one_several(sim: SimExchange, rest: TradierREST) -> None:
    assert await rest.list_orders() == []  # Tradier's "null"
    limit = far_below(sim)
    oid = await rest.place_order("aapl", "buy", 2, type="limit", price=limit, tag="t-1")
    assert isinstance(oid, int)

    order = await rest.get_order(oid)
    assert isinstance(order, TradierOrder)
    assert (order.id, order.account, order.symbol, order.side, order.type) == (
        oid,
        TRADIER_DEMO_ACCOUNT,
        "AAPL",
        "buy",
        "limit",
    )
    assert order.quantity == 2
    assert order.price == limit
    assert order.tag == "t-1"  # one order's look-up carries its tag
    assert order.status in ("pending", "open")
    assert order.create_date is not None and order.create_date.tzinfo is not None

    one = await rest.list_orders()  # Tradier's plain object for one order
    assert [o.id for o in one] == [oid]
    assert one[0].account == TRADIER_DEMO_ACCOUNT
    assert one[0].tag is None  # listed without tags unless asked
    assert [o.tag for o in await rest.list_orders(include_tags=True)] == ["t-1"]

    more = [
        await rest.place_order("MSFT", "buy", "1", type="limit", price=far_below(sim, "MSFT")),
        await rest.place_order("SPY", "buy", Decimal("3"), "limit", "gtc", far_below(sim, "SPY")),
    ]
    several = await rest.list_orders()
    assert [o.id for o in several] == [oid, *more]
    assert [o.symbol for o in several] == ["AAPL", "MSFT", "SPY"]
    assert all(o.account == TRADIER_DEMO_ACCOUNT for o in several)


async def test_amounts_are_exact_decimals(sim: SimExchange, rest: TradierREST) -> None:
    limit = above(sim)
    oid = await rest.place_order("AAPL", "buy", 2, type="limit", price=limit)
    order = await filled(rest, oid)
    kept = sim.tradier.accounts[TRADIER_DEMO_ACCOUNT].orders[oid]
    # Tradier's REST writes eight decimals: the Decimal keeps that text, digit for digit.
    assert str(order.price) == format(limit.quantize(EIGHT), "f")
    assert str(order.avg_fill_price) == format(kept.avg_fill_price.quantize(EIGHT), "f")
    assert order.avg_fill_price == limit
    assert str(order.quantity) == str(order.exec_quantity) == "2.00000000"
    assert order.remaining_quantity == 0
    for name in ("price", "avg_fill_price", "exec_quantity", "last_fill_quantity", "quantity"):
        assert type(getattr(order, name)) is Decimal, name


def test_json_numbers_decode_without_a_float() -> None:
    body = (
        b'{"order": {"id": 7, "status": "open", "symbol": "AAPL", "side": "buy",'
        b' "quantity": 1.00000000, "price": 0.10000000000000000001,'
        b' "avg_fill_price": 12345678901234567.89, "class": "equity", "duration": "day"}}'
    )
    order = _decode(body, _OrderAnswer, "GET /x").order
    assert order.price == Decimal("0.10000000000000000001")
    assert order.avg_fill_price == Decimal("12345678901234567.89")  # not 12345678901234568
    one = _decode(b'{"orders": {"order": {"id": 1, "status": "open"}}}', _OrdersAnswer, "x")
    assert one.orders is not None and not isinstance(one.orders, str)
    assert isinstance(one.orders.order, TradierOrder)
    with pytest.raises(RestError, match="price must be non-negative"):
        _decode(b'{"order": {"id": 7, "status": "open", "price": -1}}', _OrderAnswer, "x")
    with pytest.raises(RestError, match="does not understand"):
        _decode(b"<order/>", _OrderAnswer, "x")


async def test_cancel_reads_the_order_back(sim: SimExchange, rest: TradierREST) -> None:
    oid = await rest.place_order("AAPL", "buy", 5, type="limit", price=far_below(sim))
    cancelled = await rest.cancel_order(oid)
    assert (cancelled.id, cancelled.status, cancelled.symbol) == (oid, "canceled", "AAPL")
    assert cancelled.remaining_quantity == 0
    assert cancelled.exec_quantity == 0
    with pytest.raises(RestError) as again:  # no longer open
        await rest.cancel_order(oid)
    assert again.value.status == 400
    assert "canceled" in again.value.detail
    with pytest.raises(RestError) as unknown:
        await rest.get_order(424242)
    assert unknown.value.status == 404
    assert "Order not found: 424242" in str(unknown.value)


async def test_a_refused_order_is_a_rest_error_with_tradiers_messages(
    rest: TradierREST,
) -> None:
    with pytest.raises(RestError) as info:
        await rest.place_order("AAPL", "hold", "1.5")
    exc = info.value
    assert exc.status == 400
    assert "Invalid Parameter: side" in exc.detail
    assert "Invalid Parameter: quantity" in exc.detail
    assert exc.detail in str(exc)
    assert str(exc).startswith(f"POST /v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders answered HTTP 400")
    with pytest.raises(RestError, match="Invalid Parameter: price"):
        await rest.place_order("AAPL", "buy", 1, type="limit")  # no price
    assert await rest.list_orders() == []  # nothing was placed


async def test_a_bad_token_is_an_authentication_error_never_showing_it(
    sim: SimExchange, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "tradier_live_0123456789abcdef_secret"
    with caplog.at_level(logging.DEBUG):
        async with TradierREST(secret, base_url=sim.http_url, account="VA000001") as rest:
            for call in (rest.list_orders(), rest.profile(), rest.place_order("AAPL", "buy", 1)):
                with pytest.raises(AuthenticationError) as info:
                    await call
                assert info.value.status == 401
                for text in (str(info.value), repr(info.value), repr(info.value.args)):
                    assert secret not in text
    assert secret not in repr(rest)
    assert all(secret not in r.getMessage() for r in caplog.records)
    # A good token for another user's account is refused too (the sim answers 401).
    async with TradierREST(TRADIER_DEMO_TOKEN, base_url=sim.http_url, account="VA999999") as rest:
        with pytest.raises(AuthenticationError):
            await rest.list_orders()


async def test_profile_lists_one_account_or_several() -> None:
    tokens = {
        TRADIER_DEMO_TOKEN: TRADIER_DEMO_ACCOUNT,
        "two": (TRADIER_DEMO_ACCOUNT, SECOND_ACCOUNT),
    }
    async with SimExchange(tick_rate=0, tradier_tokens=tokens) as sim:
        async with TradierREST(TRADIER_DEMO_TOKEN, base_url=sim.http_url) as one:
            assert await one.profile() == [TRADIER_DEMO_ACCOUNT]  # a plain object
        async with TradierREST("two", base_url=sim.http_url) as two:
            accounts = await two.profile()  # a list
            assert accounts == [TRADIER_DEMO_ACCOUNT, SECOND_ACCOUNT]
            oid = await two.place_order(
                "AAPL", "buy", 1, type="limit", price="1.00", account=accounts[1]
            )
            assert [o.id for o in await two.list_orders(accounts[1])] == [oid]
            assert await two.list_orders(accounts[0]) == []


# -- ws.rest -----------------------------------------------------------------------------


async def test_the_streams_rest_client(sim: SimExchange) -> None:
    ws = TradierStream(token=TRADIER_DEMO_TOKEN, base_url=sim.http_url, enrich=False, **FAST)
    rest = ws.rest
    assert rest is ws.rest  # one per stream
    assert rest.base_url == ws.base_url
    rest.account = TRADIER_DEMO_ACCOUNT
    assert await rest.list_orders() == []  # usable before the run

    seen: list[TradierOrder] = []

    @ws.on_order_update()
    def on_order(o: TradierOrder) -> None:
        seen.append(o)

    async with running(ws):
        await wait_for(lambda: ws.stats.connections == 1, what="the stream connected")
        oid = await ws.rest.place_order("AAPL", "buy", 1, type="limit", price=above(sim))
        await wait_for(lambda: any(o.id == oid and o.status == "filled" for o in seen))
        event = next(o for o in seen if o.id == oid and o.status == "filled")
        order = await ws.rest.get_order(oid)
        assert order.status == "filled"
        assert order.avg_fill_price == event.avg_fill_price  # one model, same amounts
        assert order.exec_quantity == event.exec_quantity
        assert is_open(rest)
    assert not is_open(rest)  # closed when the run ended
    assert [o.id for o in await ws.rest.list_orders()] == [oid]  # and reopened on use
    await ws.rest.aclose()


async def test_the_streams_rest_reads_the_streams_credential(sim: SimExchange) -> None:
    calls: list[int] = []

    async def token() -> str:
        calls.append(1)
        return TRADIER_DEMO_TOKEN

    ws = TradierStream(token=token, sandbox=True, **FAST)
    assert ws.rest.base_url == SANDBOX_URL
    ws = TradierStream(token=token, base_url=sim.http_url, **FAST)
    async with ws.rest as rest:
        assert await rest.profile() == [TRADIER_DEMO_ACCOUNT]
        assert await rest.profile() == [TRADIER_DEMO_ACCOUNT]
    assert len(calls) == 2  # read for every request


async def test_a_run_on_another_loop_leaves_this_loops_rest_connections(
    sim: SimExchange,
) -> None:
    ws = TradierStream(token=TRADIER_DEMO_TOKEN, base_url=sim.http_url, enrich=False, **FAST)
    ws.rest.account = TRADIER_DEMO_ACCOUNT
    assert await ws.rest.list_orders() == []  # connections opened on this loop
    thread = threading.Thread(target=ws.run_forever, daemon=True)
    thread.start()
    await wait_for(lambda: ws.stats.connections == 1, what="the stream connected")
    assert await anyio.to_thread.run_sync(ws.stop, 5.0)
    thread.join(5)
    assert is_open(ws.rest)  # not the run's to close: this loop's
    assert await ws.rest.list_orders() == []
    await ws.rest.aclose()
    assert not is_open(ws.rest)
