"""Where the real platform server is harsher than its SDK page, the sim is too.

- Private events (``orders``, ``portfolio``) reach every open socket of the key, whether
  or not that socket subscribed (the server's ``broadcast_to_agent`` ignores
  subscriptions); ``private_to_all_sockets=False`` restores the kinder behaviour.
- Candle intervals: the server serves ``1m 5m 1h 1d`` and answers the SDK page's others
  with ``INVALID_CHANNEL`` and the message ``Channel 'candles' requires .``.
- Sparse order events: when its order serializer lacks a field, ``quantity`` is ``"0"``
  and ``symbol``, ``side``, ``type`` are ``""``.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from decimal import ROUND_DOWN, Decimal
from typing import Any

import aiohttp
import pytest

from agentstream.sim import DEMO_API_KEY, INTERVAL_MS, REAL_SERVER_INTERVALS, SimExchange
from tests.sim.helpers import (
    ISO_MS,
    ISO_S,
    collect,
    collect_for,
    dec,
    fast_sim,
    on,
    parse_iso,
    recv_until,
    subscribe,
)
from tests.sim.test_candles import check_candle, check_consecutive, closed
from tests.sim.test_orders import Rest, check_order, check_portfolio, order_update

pytestmark = pytest.mark.anyio

WS = aiohttp.ClientWebSocketResponse
JSON = dict[str, Any]
FINAL = ("filled", "cancelled", "rejected", "expired")


async def order_events(ws: WS, order_id: str, until: str = "filled") -> list[JSON]:
    """The ``data`` of every ``orders`` event of ``order_id`` up to status ``until``."""
    out: list[JSON] = []
    while not out or out[-1]["status"] != until:
        msg = await recv_until(ws, order_update(order_id))
        assert set(msg) == {"channel", "data"}, msg
        out.append(msg["data"])
        assert out[-1]["status"] == until or out[-1]["status"] not in FINAL, out
    return out


async def sockets(
    stack: AsyncExitStack, session: aiohttp.ClientSession, sim: SimExchange, n: int
) -> list[WS]:
    return [await stack.enter_async_context(session.ws_connect(sim.ws_url())) for _ in range(n)]


# -- private events go to every socket of the key ------------------------------------


@pytest.mark.parametrize(
    "subscribed",
    [("orders", ""), ("", ""), ("portfolio", "orders")],
    ids=["one-subscribed", "neither-subscribed", "other-channels"],
)
async def test_order_updates_and_portfolio_reach_every_socket_of_the_key(
    session: aiohttp.ClientSession, subscribed: tuple[str, str]
) -> None:
    # No periodic snapshot during the test: the one that comes follows the trade.
    async with fast_sim(portfolio_interval=60) as sim, AsyncExitStack() as stack:
        pair = await sockets(stack, session, sim, 2)
        for ws, channel in zip(pair, subscribed, strict=True):
            if channel:
                assert (await subscribe(ws, channel=channel))["type"] == "subscribed"
        placed = await Rest(session, sim, DEMO_API_KEY).order(
            symbol="BTCUSDT", side="buy", type="market", quantity="0.01"
        )
        oid = placed["order_id"]
        seen = [await order_events(ws, oid) for ws in pair]
        assert seen[0] == seen[1]  # the same events, once per socket
        # A market order fills when placed (the POST answers it filled): one event.
        assert [d["status"] for d in seen[0]] == ["filled"]
        assert seen[0][0] == sim.accounts[DEMO_API_KEY].orders[oid].event()
        assert seen[0][0]["executed_price"] == placed["executed_price"]
        check_order(seen[0][0], fills=True)
        # ... and so does the portfolio snapshot that follows the fill.
        snaps = [(await recv_until(ws, on("portfolio")))["data"] for ws in pair]
        for snap in snaps:
            check_portfolio(snap)
            assert dec(snap["available_cash"]) < 10000
        assert snaps[0]["available_cash"] == snaps[1]["available_cash"]


async def test_periodic_portfolio_snapshots_reach_an_unsubscribed_socket(
    session: aiohttp.ClientSession,
) -> None:
    async with fast_sim(portfolio_interval=0.1) as sim, session.ws_connect(sim.ws_url()) as ws:
        snaps = await collect(ws, on("portfolio"), 3, timeout=1.5)
        for m in snaps:
            assert set(m) == {"channel", "data"}
            check_portfolio(m["data"])
        assert sim.subscriptions() == [set()]


async def test_private_events_stay_with_their_key(session: aiohttp.ClientSession) -> None:
    keys = {"ak_a": Decimal(10000), "ak_b": Decimal(10000)}
    async with (
        fast_sim(api_keys=keys, portfolio_interval=60) as sim,
        session.ws_connect(sim.ws_url("ak_a")) as ws_a,
        session.ws_connect(sim.ws_url("ak_b")) as ws_b,
    ):
        placed = await Rest(session, sim, "ak_a").order(
            symbol="BTCUSDT", side="buy", type="market", quantity="0.01"
        )
        await order_events(ws_a, placed["order_id"])
        await recv_until(ws_a, on("portfolio"))
        msgs = await collect_for(ws_b, 0.3)
        assert [m for m in msgs if m.get("channel") in ("orders", "portfolio")] == []


async def test_private_to_all_sockets_off_sends_only_to_subscribers(
    session: aiohttp.ClientSession,
) -> None:
    async with (
        fast_sim(private_to_all_sockets=False, portfolio_interval=0.1) as sim,
        AsyncExitStack() as stack,
    ):
        subscribed, bare = await sockets(stack, session, sim, 2)
        await subscribe(subscribed, channel="orders")
        await subscribe(subscribed, channel="portfolio")
        placed = await Rest(session, sim, DEMO_API_KEY).order(
            symbol="BTCUSDT", side="buy", type="market", quantity="0.01"
        )
        await order_events(subscribed, placed["order_id"])
        await collect(subscribed, on("portfolio"), 2)
        msgs = await collect_for(bare, 0.3)
        assert [m for m in msgs if m.get("channel") in ("orders", "portfolio")] == []


# -- candle intervals ------------------------------------------------------------------


def test_real_server_intervals() -> None:
    assert REAL_SERVER_INTERVALS == ("1m", "5m", "1h", "1d")
    assert set(REAL_SERVER_INTERVALS) < set(INTERVAL_MS)


def test_unknown_configured_intervals_are_refused() -> None:
    with pytest.raises(ValueError, match="candle_intervals"):
        SimExchange(candle_intervals=("1m", "2h"))
    with pytest.raises(ValueError, match="candle_intervals"):
        SimExchange(candle_intervals=())


@pytest.mark.parametrize(
    "fields",
    [
        {"channel": "candles", "symbol": "BTCUSDT", "interval": "15m"},
        {"channel": "candles", "symbol": "btcusdt", "interval": "4h"},
        {"channel": "candles:ETHUSDT:15m"},
    ],
    ids=["15m", "4h", "combined-form"],
)
async def test_intervals_the_real_server_does_not_serve_get_its_error(
    session: aiohttp.ClientSession, fields: JSON
) -> None:
    async with (
        fast_sim(candle_intervals=REAL_SERVER_INTERVALS) as sim,
        session.ws_connect(sim.ws_url()) as ws,
    ):
        reply = await subscribe(ws, **fields)
        # The server's message word for word, empty detail and all, and like the
        # server's no channel named: the client must pin it on its pending subscribe.
        assert reply == {
            "type": "error",
            "code": "INVALID_CHANNEL",
            "message": "Channel 'candles' requires .",
        }
        assert sim.subscriptions() == [set()]
        # The served ones work on the same connection.
        for iv in REAL_SERVER_INTERVALS:
            reply = await subscribe(ws, channel="candles", symbol="BTCUSDT", interval=iv)
            assert reply == {"type": "subscribed", "channel": f"candles:BTCUSDT:{iv}"}


async def test_the_default_serves_what_the_sdk_page_promises(sim: SimExchange, ws: WS) -> None:
    reply = await subscribe(ws, channel="candles", symbol="BTCUSDT", interval="15m")
    assert reply == {"type": "subscribed", "channel": "candles:BTCUSDT:15m"}
    reply = await subscribe(ws, channel="candles", symbol="BTCUSDT", interval="2h")
    assert (reply["code"], reply["message"]) == ("INVALID_CHANNEL", "Channel 'candles' requires .")


async def test_the_served_intervals_close_aligned_consecutive_candles(
    session: aiohttp.ClientSession,
) -> None:
    # 5m and 1h are what a client aggregates 15m and 4h from. At 100,000x an hour lasts
    # 36 ms.
    async with (
        fast_sim(candle_intervals=REAL_SERVER_INTERVALS, speed=100_000) as sim,
        session.ws_connect(sim.ws_url()) as ws,
    ):
        assert sim.market.candles.keys() == set(REAL_SERVER_INTERVALS)
        for iv in ("5m", "1h"):
            await subscribe(ws, channel="candles", symbol="BTCUSDT", interval=iv)
        msgs = [m for m in await collect_for(ws, 0.8) if m.get("channel") == "candles"]
        for iv in ("5m", "1h"):
            finals = [m for m in msgs if closed("BTCUSDT", iv)(m)]
            assert len(finals) >= 4, iv
            for m in finals:
                check_candle(m, sim, "BTCUSDT", iv)  # aligned to the interval, UTC
                assert ISO_S.match(m["data"]["time"])
            check_consecutive(finals, iv)
        hours = [parse_iso(m["data"]["time"]) for m in msgs if m["interval"] == "1h"]
        assert all(h.minute == h.second == 0 for h in hours)


# -- sparse order events ---------------------------------------------------------------

SPARSE = {"symbol": "", "side": "", "type": "", "quantity": "0"}


def check_sparse(d: JSON, full: JSON) -> None:
    """``d`` is the full event ``full`` with the four fields blanked, everything else intact."""
    assert {k: d[k] for k in SPARSE} == SPARSE, d
    assert {k: v for k, v in d.items() if k not in SPARSE} == {
        k: v for k, v in full.items() if k not in SPARSE
    }


async def test_sparse_order_events_blank_exactly_four_fields(
    session: aiohttp.ClientSession,
) -> None:
    async with (
        fast_sim(sparse_order_events=True) as sim,
        session.ws_connect(sim.ws_url()) as ws,
    ):
        rest = Rest(session, sim, DEMO_API_KEY)
        await subscribe(ws, channel="orders")
        placed = await rest.order(symbol="BTCUSDT", side="buy", type="market", quantity="0.01")
        # REST answers are the full order.
        assert (placed["symbol"], placed["side"], placed["type"]) == ("BTCUSDT", "buy", "market")
        oid = placed["order_id"]
        [filled] = await order_events(ws, oid)
        assert filled["status"] == "filled"
        status, got = await rest.call("GET", f"/trade/order/{oid}")
        assert status == 200 and got["symbol"] == "BTCUSDT"
        full = sim.accounts[DEMO_API_KEY].orders[oid].event()
        check_order(full, fills=True)
        check_sparse(filled, full)
        assert filled["executed_quantity"] == "0.01"
        assert dec(filled["executed_price"]) > 0 and dec(filled["fee"]) > 0
        assert ISO_MS.match(filled["filled_at"])

        # A limit order keeps its price; a cancel keeps cancelled_at.
        limit = (await rest.price("ETHUSDT") / 2).quantize(Decimal("0.01"), ROUND_DOWN)
        placed = await rest.order(
            symbol="ETHUSDT", side="buy", type="limit", quantity="0.1", price=str(limit)
        )
        [pending] = await order_events(ws, placed["order_id"], until="pending")
        order = sim.accounts[DEMO_API_KEY].orders[placed["order_id"]]
        check_sparse(pending, order.event())
        assert set(pending) == {"order_id", "status", "price", *SPARSE}
        status, _ = await rest.call("DELETE", f"/trade/order/{placed['order_id']}")
        assert status == 200
        pushed = (await order_events(ws, placed["order_id"], until="cancelled"))[-1]
        check_sparse(pushed, order.event())
        assert dec(pushed["price"]) == limit and ISO_MS.match(pushed["cancelled_at"])


async def test_sparse_order_events_switch_at_run_time(
    sim: SimExchange, ws: WS, session: aiohttp.ClientSession
) -> None:
    rest = Rest(session, sim, DEMO_API_KEY)

    async def first_event() -> JSON:
        placed = await rest.order(symbol="BTCUSDT", side="buy", type="market", quantity="0.01")
        return (await order_events(ws, placed["order_id"]))[0]

    assert (await first_event())["symbol"] == "BTCUSDT"  # off by default
    sim.sparse_order_events()
    assert {k: (await first_event())[k] for k in SPARSE} == SPARSE
    sim.sparse_order_events(enabled=False)
    assert (await first_event())["symbol"] == "BTCUSDT"

    async def admin(body: Any) -> tuple[int, Any]:
        async with session.post(f"{sim.http_url}/admin/fault/sparse", json=body) as r:
            return r.status, await r.json()

    assert await admin({}) == (200, {"fault": "sparse", "result": None})
    assert {k: (await first_event())[k] for k in SPARSE} == SPARSE
    async with session.get(f"{sim.http_url}/admin/state") as r:
        assert (await r.json())["sparse_order_events"] is True
    assert (await admin({"enabled": False}))[0] == 200
    assert (await first_event())["side"] == "buy"
    assert (await admin({"enabled": "yes"}))[0] == 400
