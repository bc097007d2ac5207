"""TastytradeStream against the simulated exchange's tastytrade front-end: every rule.

connect first and acked; heartbeats with the current token; an expired token refreshed
once from a callable, fatal from a string; after a reconnect connect and every
subscription again, then the reconnect callback; batches unwrapped; errors reported
and the stream goes on; and the SDK page's usage, unchanged.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from agentstream import AuthenticationError, HandlerError, OrderEvent, OrderStatus, ServerError
from agentstream.sim import TASTYTRADE_DEMO_ACCOUNT, TASTYTRADE_DEMO_TOKEN, SimExchange
from agentstream.tastytrade import (
    AccountBalance,
    CurrentPosition,
    PlacedOrder,
    QuoteAlert,
    TastytradeStream,
    Watchlist,
)

from .conftest import running, wait_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio

FAST: dict[str, Any] = {
    "stale_timeout": 1.0,
    "backoff_initial": 0.02,
    "backoff_max": 0.1,
    "backoff_jitter": 0.0,
    "connect_timeout": 2.0,
    "close_timeout": 0.2,
    "heartbeat_interval": 0.1,
}
SIM: dict[str, Any] = {"tick_rate": 100, "order_interval": 0.02, "tastytrade_idle_timeout": 0.5}
ACCT = TASTYTRADE_DEMO_ACCOUNT


@pytest.fixture
async def sim() -> AsyncIterator[SimExchange]:
    async with SimExchange(**SIM) as s:
        yield s


def url(sim: SimExchange) -> str:
    return sim.url + "/tastytrade"


def streamer(sim: SimExchange, token: Any = TASTYTRADE_DEMO_TOKEN, **kw: Any) -> TastytradeStream:
    return TastytradeStream(token, url=url(sim), **{**FAST, **kw})


async def buy(sim: SimExchange, symbol: str = "AAPL") -> str:
    order = await sim.tastytrade.place_order(ACCT, symbol=symbol, action="Buy to Open")
    return str(order["id"])


async def test_the_sdk_pages_usage(sim: SimExchange) -> None:
    # As the seed: async with, subscribe_accounts with Account-like objects, the two
    # subscriptions, listen(PlacedOrder), a reconnect callback with extra arguments.
    class Account:
        account_number = ACCT

    calls: list[tuple[Any, ...]] = []

    async def callback(streamer: TastytradeStream, arg1: str, arg2: int) -> None:
        calls.append((streamer, arg1, arg2))

    got: list[PlacedOrder] = []
    with anyio.fail_after(10):
        async with TastytradeStream(
            TASTYTRADE_DEMO_TOKEN,
            url=url(sim),
            reconnect_fn=callback,
            reconnect_args=("a", 2),
            **FAST,
        ) as s:
            await s.subscribe_accounts([Account()])
            await s.subscribe_public_watchlists()
            await s.subscribe_quote_alerts()
            placed: list[str] = []

            async def place_soon() -> None:
                await anyio.sleep(0.2)  # the accounts' connect is acked by then
                placed.append(await buy(sim))

            async with anyio.create_task_group() as tg:
                tg.start_soon(place_soon)
                async for order in s.listen(PlacedOrder):
                    got.append(order)
                    if order.status == "Filled":
                        break
    assert {str(o.id) for o in got} == set(placed)
    assert next(o.status for o in got) == "Received"
    assert got[-1].account_number == ACCT
    assert got[-1].underlying_symbol == "AAPL"
    assert got[-1].legs[0].fills


async def test_decorators_get_every_message_kind(sim: SimExchange) -> None:
    ts = streamer(sim, accounts=[ACCT])
    orders: list[dict[str, Any]] = []
    typed: list[PlacedOrder] = []
    balances: list[AccountBalance] = []
    positions: list[CurrentPosition] = []
    alerts: list[QuoteAlert] = []
    watchlists: list[Watchlist] = []

    def on_typed(o: PlacedOrder) -> None:
        typed.append(o)

    def on_balance(b: AccountBalance) -> None:
        balances.append(b)

    def on_position(p: CurrentPosition) -> None:
        positions.append(p)

    def on_alert(a: QuoteAlert) -> None:
        alerts.append(a)

    def on_watchlist(w: Watchlist) -> None:
        watchlists.append(w)

    views: list[OrderEvent] = []

    def on_view(o: OrderEvent) -> None:
        views.append(o)

    ts.on_order_update(orders.append)
    ts.on_order_update(on_typed)
    ts.on_order_update(on_view)
    ts.on_balance(on_balance)
    ts.on_position(on_position)
    ts.on_quote_alert(on_alert)
    ts.on_watchlist(on_watchlist)
    async with running(ts):
        await wait_for(lambda: ts.stats.connections == 1 and len(sim.tastytrade.state()) > 0)
        await wait_for(lambda: sim.tastytrade.connect_requests >= 1)
        await anyio.sleep(0.1)  # the subscriptions after the connect's ack
        await buy(sim)
        await wait_for(lambda: any(o.status == "Filled" for o in typed), what="the fill")
        await wait_for(lambda: balances and positions, what="balance and position")
        sim.push_tastytrade_quote_alert("AAPL")
        sim.push_tastytrade_watchlist("Movers", ["AAPL", "NVDA"])
        await wait_for(lambda: alerts and watchlists, what="alert and watchlist")
    assert orders[-1]["account-number"] == ACCT  # dicts keep the kebab-case keys
    filled = next(v for v in views if v.status is OrderStatus.FILLED)  # the one order view
    assert (filled.venue, filled.account, filled.symbol, filled.side) == (
        "tastytrade",
        ACCT,
        "AAPL",
        "buy",
    )
    assert filled.filled_quantity == 1
    assert isinstance(filled.raw, PlacedOrder)
    assert positions[-1].symbol == "AAPL"
    assert watchlists[-1].name == "Movers"
    assert ts.stats.invalid_events == 0


async def test_heartbeats_carry_a_fresh_token_and_keep_the_socket(sim: SimExchange) -> None:
    minted: list[str] = []

    def token() -> str:
        minted.append(sim.tastytrade.mint_token(ACCT))
        return minted[-1]

    ts = streamer(sim, token, accounts=[ACCT])
    ts.on_order_update(lambda d: None)
    async with running(ts):
        # The sim closes a socket idle for 0.5 s: heartbeats every 0.1 s keep it.
        await anyio.sleep(1.2)
        assert ts.stats.reconnects == 0
        assert ts.stats.connections == 1
    assert len(set(minted)) >= 8  # one per connection and per heartbeat


async def test_without_heartbeats_the_server_closes_an_idle_socket(sim: SimExchange) -> None:
    ts = streamer(sim, accounts=[ACCT], heartbeat_interval=30.0)
    ts.on_order_update(lambda d: None)
    async with running(ts):
        await wait_for(lambda: ts.stats.reconnects >= 1, what="the idle socket closed")


async def test_an_expired_token_is_refreshed_from_a_callable() -> None:
    async with SimExchange(**SIM, tastytrade_token_ttl=0.3) as sim:
        count = itertools.count()

        def token() -> str:
            next(count)
            return sim.tastytrade.mint_token(ACCT)

        ts = streamer(sim, token, accounts=[ACCT], heartbeat_interval=10.0)
        got: list[PlacedOrder] = []

        def on_order(o: PlacedOrder) -> None:
            got.append(o)

        ts.on_order_update(on_order)
        async with running(ts):
            await wait_for(lambda: ts.stats.connections == 1)
            await anyio.sleep(0.4)  # the token of this connection expires
            sim.expire_tastytrade_tokens()
            await sim.drop_connections()  # the next connect needs a fresh token
            await wait_for(lambda: ts.stats.reconnects >= 1)
            await buy(sim)
            await wait_for(lambda: any(o.status == "Filled" for o in got))
            assert ts.error is None


async def test_a_refused_fixed_token_is_fatal_at_once(sim: SimExchange) -> None:
    ts = streamer(sim, "Bearer not-a-token-0123456789", accounts=[ACCT])
    ts.on_order_update(lambda d: None)
    with anyio.fail_after(5), pytest.raises(AuthenticationError) as info:
        await ts.connect()
    assert sim.tastytrade.connect_requests == 1
    assert "not-a-token-0123456789" not in str(info.value)
    assert "not-a-token-0123456789" not in repr(ts)


async def test_a_fresh_token_refused_again_is_fatal(sim: SimExchange) -> None:
    sim.fail_tastytrade_connects(2)
    ts = streamer(sim, lambda: sim.tastytrade.mint_token(ACCT), accounts=[ACCT])
    ts.on_order_update(lambda d: None)
    with anyio.fail_after(5), pytest.raises(AuthenticationError):
        await ts.connect()
    assert sim.tastytrade.connect_requests == 2  # the first, and one with a fresh token


async def test_a_token_callable_that_raises_is_fatal_with_its_cause(sim: SimExchange) -> None:
    def token() -> str:
        raise KeyError("no refresh token")

    ts = streamer(sim, token, accounts=[ACCT])
    with anyio.fail_after(5), pytest.raises(AuthenticationError) as info:
        await ts.connect()
    assert isinstance(info.value.__cause__, KeyError)


async def test_after_a_reconnect_connect_subscriptions_then_the_callback(
    sim: SimExchange,
) -> None:
    order: list[str] = []

    async def resubscribe(s: TastytradeStream, tag: str) -> None:
        order.append(tag)
        await s.subscribe_quote_alerts()  # again: neither deadlock nor a second subscribe

    ts = streamer(sim, accounts=[ACCT], reconnect_fn=resubscribe, reconnect_args=("cb",))
    ts.on_order_update(lambda d: None)
    ts.on_quote_alert(lambda d: None)
    async with running(ts):
        await wait_for(lambda: ts.stats.connections == 1)
        await sim.drop_connections()
        await wait_for(lambda: order == ["cb"], what="the callback")
        await anyio.sleep(0.2)
        assert sim.tastytrade.connect_requests == 2
        alerts = sim.push_tastytrade_quote_alert("AAPL")
        assert alerts == 1  # one socket, subscribed once
    assert ts.error is None


async def test_batches_are_unwrapped(sim: SimExchange) -> None:
    sim.batch_tastytrade_messages(True)
    ts = streamer(sim, accounts=[ACCT])
    got: list[PlacedOrder] = []

    def on_order(o: PlacedOrder) -> None:
        got.append(o)

    ts.on_order_update(on_order)
    async with running(ts):
        await wait_for(lambda: ts.stats.connections == 1)
        await anyio.sleep(0.1)
        await buy(sim)
        await wait_for(lambda: any(o.status == "Filled" for o in got))
    assert ts.stats.dropped_frames == 0


async def test_server_errors_reach_on_error_and_the_stream_goes_on(sim: SimExchange) -> None:
    ts = streamer(sim, accounts=[ACCT])
    errors: list[BaseException] = []
    ts.on_error(lambda exc, ctx: errors.append(exc))
    got: list[dict[str, Any]] = []
    ts.on_order_update(got.append)
    async with running(ts):
        await wait_for(lambda: ts.stats.connections == 1)
        sim.send_raw('{"status":"error","action":"x","message":"not-implemented","request-id":99}')
        await wait_for(lambda: any(isinstance(e, ServerError) for e in errors))
        await buy(sim)
        await wait_for(lambda: any(d["status"] == "Filled" for d in got))
    err = next(e for e in errors if isinstance(e, ServerError))
    assert err.code == "not-implemented"
    assert not any(isinstance(e, HandlerError) for e in errors)
