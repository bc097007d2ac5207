"""The sim's tastytrade front-end, driven as tastytrade documents it, with a plain aiohttp client.

The account streamer at ``/tastytrade`` (``connect`` first, acks with the session id and
the request id, ``failed`` for a bad or expired token, ``connect-not-completed``,
``not-implemented``, client heartbeats, idle sockets closed), expiring tokens and fresh
ones, the order REST API and the ``Order`` / ``AccountBalance`` / ``CurrentPosition``
messages it causes (each decoded with the client's models), quote alerts, watchlists,
batches and the faults. Never agentstream's client.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import anyio
import msgspec
import pytest

from agentstream.protocols.base import Ack, AuthFailed, Batch, Data, Refused
from agentstream.protocols.tastytrade import TastytradeProtocol
from agentstream.sim import (
    DEMO_API_KEY,
    TASTYTRADE_DEMO_ACCOUNT,
    TASTYTRADE_DEMO_TOKEN,
    TRADIER_DEMO_ACCOUNT,
    SimExchange,
)
from agentstream.tastytrade.models import (
    AccountBalance,
    CurrentPosition,
    PlacedOrder,
    QuoteAlert,
    Watchlist,
)
from tests.sim.helpers import ENDED, expect_end, expect_quiet, fast_sim

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

pytestmark = pytest.mark.anyio

WS = aiohttp.ClientWebSocketResponse
JSON = dict[str, Any]
M = TypeVar("M", bound=msgspec.Struct)
TOKEN = TASTYTRADE_DEMO_TOKEN
ACCOUNT = TASTYTRADE_DEMO_ACCOUNT
SECOND = "5WT00001"
SESSION_ID = re.compile(r"^[0-9a-f]{8}$")
ISO_OFFSET = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
LIFECYCLE = ["Received", "Routed", "In Flight", "Live", "Filled"]


@pytest.fixture
async def tsim() -> AsyncIterator[SimExchange]:
    """A fast sim whose demo token holds two accounts."""
    async with fast_sim(tastytrade_tokens={TOKEN: (ACCOUNT, SECOND)}) as s:
        yield s


#: The sockets each session opened, closed when the test ends (none is left to the GC).
_OPENED: dict[int, list[WS]] = {}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        _OPENED[id(s)] = []
        try:
            yield s
        finally:
            for ws in _OPENED.pop(id(s)):
                await ws.close()


# -- helpers ---------------------------------------------------------------------------


async def open_ws(http: aiohttp.ClientSession, sim: SimExchange) -> WS:
    ws = await http.ws_connect(f"{sim.url}/tastytrade")
    _OPENED[id(http)].append(ws)
    return ws


async def send(
    ws: WS, action: str, *, token: str | None = TOKEN, value: Any = None, rid: int | None = None
) -> None:
    """One client message, as the SDKs write it (``value``, ``request-id`` when given)."""
    msg: JSON = {"action": action}
    if token is not None:
        msg["auth-token"] = token
    if value is not None:
        msg["value"] = value
    if rid is not None:
        msg["request-id"] = rid
    await ws.send_str(json.dumps(msg))


async def frame(ws: WS, timeout: float = 2.0) -> JSON:
    """The next text frame, parsed; fails when the socket ends or nothing comes."""
    with anyio.fail_after(timeout):
        msg = await ws.receive()
    if msg.type in ENDED:
        raise AssertionError(f"socket ended ({msg!r}, code {ws.close_code})")
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    data = json.loads(msg.data)
    assert isinstance(data, dict), data
    return data


async def reply(ws: WS, timeout: float = 2.0) -> JSON:
    """The next ack or error (data messages are skipped)."""
    with anyio.fail_after(timeout):
        while True:
            m = await frame(ws, timeout)
            if "status" in m:
                return m


async def connect(ws: WS, accounts: Any = (ACCOUNT,), token: str = TOKEN, rid: int = 1) -> JSON:
    value = accounts if isinstance(accounts, str) else list(accounts)
    await send(ws, "connect", token=token, value=value, rid=rid)
    ack = await reply(ws)
    assert ack["status"] == "ok", ack
    return ack


async def data_until(ws: WS, pred: Callable[[JSON], bool], timeout: float = 3.0) -> list[JSON]:
    """Data messages (batches unwrapped) until one matches ``pred`` (inclusive)."""
    out: list[JSON] = []
    with anyio.fail_after(timeout):
        while not out or not pred(out[-1]):
            m = await frame(ws, timeout)
            if "results" in m:
                items = m["results"]
                for i, item in enumerate(items):
                    out.append(item)
                    if pred(item):
                        # The rest of the batch is not lost: keep it after the match.
                        out.extend(items[i + 1 :])
                        return out
            elif "type" in m:
                out.append(m)
    return out


def is_order(status: str, order_id: int | None = None) -> Callable[[JSON], bool]:
    return lambda m: (
        m["type"] == "Order"
        and m["data"]["status"] == status
        and (order_id is None or m["data"]["id"] == order_id)
    )


def decode(m: JSON, model: type[M]) -> M:
    """A data message's ``data`` through the client's model, as the client decodes it."""
    return msgspec.json.decode(json.dumps(m["data"]).encode(), type=model)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": token}


def market(symbol: str = "AAPL", quantity: Any = 5, action: str = "Buy to Open") -> JSON:
    return {
        "time-in-force": "Day",
        "order-type": "Market",
        "legs": [
            {"instrument-type": "Equity", "symbol": symbol, "quantity": quantity, "action": action}
        ],
    }


async def rest(
    http: aiohttp.ClientSession,
    sim: SimExchange,
    method: str,
    path: str,
    body: JSON | None = None,
    token: str = TOKEN,
) -> tuple[int, JSON]:
    async with http.request(method, f"{sim.http_url}{path}", json=body, headers=auth(token)) as r:
        assert r.content_type == "application/json", await r.text()
        return r.status, await r.json()


async def place(
    http: aiohttp.ClientSession,
    sim: SimExchange,
    body: JSON,
    account: str = ACCOUNT,
    token: str = TOKEN,
) -> JSON:
    status, answer = await rest(http, sim, "POST", f"/accounts/{account}/orders", body, token)
    assert status == 201, answer
    order: JSON = answer["data"]["order"]
    return order


# -- the socket ------------------------------------------------------------------------


async def test_connect_ack_carries_request_id_session_id_and_accounts(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws = await open_ws(http, tsim)
    ack = await connect(ws, [ACCOUNT, SECOND], rid=7)
    assert set(ack) == {"status", "action", "web-socket-session-id", "value", "request-id"}
    assert ack["action"] == "connect"
    assert ack["value"] == [ACCOUNT, SECOND]
    assert ack["request-id"] == 7
    sid = ack["web-socket-session-id"]
    assert SESSION_ID.match(sid), sid
    # A bare string is one account; a new connect replaces the list; same session id.
    again = await connect(ws, SECOND, rid=8)
    assert again["value"] == [SECOND]
    assert again["web-socket-session-id"] == sid
    # Another socket, another session id.
    other = await open_ws(http, tsim)
    assert (await connect(other))["web-socket-session-id"] != sid


async def test_bad_token_fails_without_request_id_and_the_socket_stays(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws = await open_ws(http, tsim)
    for token in ("Bearer nope", TOKEN.removeprefix("Bearer "), None):
        await send(ws, "connect", token=token, value=[ACCOUNT], rid=3)
        err = await reply(ws)
        assert err["status"] == "error"
        assert err["action"] == "connect"
        assert err["message"] == "failed"
        assert SESSION_ID.match(err["web-socket-session-id"])
        assert "request-id" not in err
    # An account the token does not hold fails the whole connect (the sim's choice).
    await send(ws, "connect", value=[ACCOUNT, "5WT99999"], rid=4)
    assert (await reply(ws))["message"] == "failed"
    # Still open: a good connect on the same socket works.
    assert (await connect(ws, rid=5))["request-id"] == 5


async def test_close_on_failed(http: aiohttp.ClientSession) -> None:
    async with fast_sim(tastytrade_close_on_failed=True) as sim:
        ws = await open_ws(http, sim)
        await send(ws, "connect", token="Bearer nope", value=[ACCOUNT], rid=1)
        assert (await reply(ws))["message"] == "failed"
        end = await expect_end(ws)
        assert end.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1000
        assert sim.connection_log[-1].close_reason == "failed"


async def test_subscriptions_before_connect_are_refused(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws = await open_ws(http, tsim)
    actions = ("public-watchlists-subscribe", "quote-alerts-subscribe", "user-message-subscribe")
    for rid, action in enumerate(actions, 10):
        await send(ws, action, rid=rid, value="U-1" if action.startswith("user") else None)
        err = await reply(ws)
        assert err == {
            "status": "error",
            "action": action,
            "web-socket-session-id": err["web-socket-session-id"],
            "message": "connect-not-completed",
            "request-id": rid,
        }
    await connect(ws)
    for rid, action in enumerate(actions, 20):
        await send(ws, action, rid=rid)
        ack = await reply(ws)
        assert (ack["status"], ack["action"], ack["request-id"]) == ("ok", action, rid)


async def test_unknown_action_and_garbage_are_not_implemented(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws = await open_ws(http, tsim)
    await connect(ws)
    await send(ws, "subscribe-everything", rid=9)
    err = await reply(ws)
    assert (err["status"], err["action"], err["message"], err["request-id"]) == (
        "error",
        "subscribe-everything",
        "not-implemented",
        9,
    )
    await ws.send_str("not json")
    err = await reply(ws)
    assert (err["status"], err["message"]) == ("error", "not-implemented")
    assert "action" not in err
    assert SESSION_ID.match(err["web-socket-session-id"])


async def test_heartbeat_acks(tsim: SimExchange, http: aiohttp.ClientSession) -> None:
    ws = await open_ws(http, tsim)
    ack = await connect(ws)
    await send(ws, "heartbeat", rid=2)
    hb = await reply(ws)
    assert hb == {
        "status": "ok",
        "action": "heartbeat",
        "web-socket-session-id": ack["web-socket-session-id"],
        "request-id": 2,
    }
    await send(ws, "heartbeat")  # no request-id: none in the ack
    hb = await reply(ws)
    assert hb["status"] == "ok"
    assert "request-id" not in hb
    # The client protocol reads these as acks matched by request id.
    proto = TastytradeProtocol(f"{tsim.url}/tastytrade")
    assert proto.classify(json.dumps(ack)) == Ack(request_id=1)


async def test_idle_socket_is_closed(http: aiohttp.ClientSession) -> None:
    async with fast_sim(tastytrade_idle_timeout=0.2) as sim:
        idle = await open_ws(http, sim)
        busy = await open_ws(http, sim)
        await connect(idle)
        await connect(busy)
        t0 = time.monotonic()

        async def keep_busy() -> None:
            while True:
                await send(busy, "heartbeat")
                await reply(busy)
                await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_busy)
            await expect_end(idle, 2.0)
            elapsed = time.monotonic() - t0
            await anyio.sleep(max(0.0, 0.6 - elapsed))
            tg.cancel_scope.cancel()
        assert idle.close_code == 1000
        assert 0.15 <= elapsed < 1.5
        assert not busy.closed  # heartbeats every 50 ms kept it open
        reasons = [r.close_reason for r in sim.connection_log]
        assert reasons.count("idle timeout") == 1


async def test_a_silent_socket_is_not_closed_as_idle(http: aiohttp.ClientSession) -> None:
    async with fast_sim(tastytrade_idle_timeout=0.2) as sim:
        ws = await open_ws(http, sim)
        await connect(ws)
        sim.go_silent()
        await expect_quiet(ws, 0.5)
        sim.resume()
        await expect_end(ws)  # idle again once it reads, 0.2 s later
        assert ws.close_code == 1000


async def test_tokens_expire_and_fresh_ones_work(http: aiohttp.ClientSession) -> None:
    async with fast_sim(tastytrade_token_ttl=0.5) as sim:
        first = sim.tastytrade.mint_token(ACCOUNT)
        assert first.startswith("Bearer ")
        ws = await open_ws(http, sim)
        await connect(ws, token=first)
        await anyio.sleep(0.6)
        for action in ("heartbeat", "connect"):
            await send(ws, action, token=first, value=[ACCOUNT] if action == "connect" else None)
            err = await reply(ws)
            assert (err["action"], err["message"]) == (action, "failed")
        # The configured demo token expired too (0.5 s after the sim was made).
        await send(ws, "connect", token=TOKEN, value=[ACCOUNT], rid=2)
        assert (await reply(ws))["message"] == "failed"
        status, body = await rest(http, sim, "GET", f"/accounts/{ACCOUNT}/orders/live", token=first)
        assert status == 401
        assert body["error"]["code"] == "token_invalid"
        fresh = sim.tastytrade.mint_token(ACCOUNT)
        assert fresh != first
        ack = await connect(ws, token=fresh, rid=3)
        assert ack["request-id"] == 3
        status, body = await rest(http, sim, "GET", f"/accounts/{ACCOUNT}/orders/live", token=fresh)
        assert (status, body["data"]["items"]) == (200, [])


async def test_the_client_protocol_reads_failed_as_refreshable(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws = await open_ws(http, tsim)
    await send(ws, "connect", token="Bearer nope", value=[ACCOUNT], rid=1)
    failed = await reply(ws)
    await send(ws, "quote-alerts-subscribe", rid=2)
    not_completed = await reply(ws)
    proto = TastytradeProtocol(f"{tsim.url}/tastytrade")
    classified = proto.classify(json.dumps(failed))
    assert isinstance(classified, AuthFailed)
    assert classified.refreshable
    refused = proto.classify(json.dumps(not_completed))
    assert isinstance(refused, Refused)
    assert refused.request_id == 2


# -- orders and the messages they cause ---------------------------------------------------


async def test_market_order_lifecycle_then_balance_and_position(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws = await open_ws(http, tsim)
    await connect(ws)
    placed = await place(http, tsim, market("AAPL", 5))
    assert placed["status"] == "Received"
    oid = placed["id"]
    msgs = await data_until(ws, is_order("Filled", oid))
    orders = [m for m in msgs if m["type"] == "Order"]
    assert [m["data"]["status"] for m in orders] == LIFECYCLE
    for m in msgs:
        assert set(m) == {"type", "data", "timestamp"}
        assert isinstance(m["timestamp"], int)
    decoded = [decode(m, PlacedOrder) for m in orders]
    for raw, order in zip(orders, decoded, strict=True):
        assert isinstance(raw["data"]["updated-at"], int)  # epoch ms
        assert ISO_OFFSET.match(raw["data"]["received-at"])
        assert order.id == oid
        assert order.account_number == ACCOUNT
        assert (order.underlying_symbol, order.underlying_instrument_type) == ("AAPL", "Equity")
        assert (order.order_type, order.time_in_force) == ("Market", "Day")
        assert order.size == 5
        assert order.price is None
        assert isinstance(order.updated_at, datetime)
        (leg,) = order.legs
        assert (leg.instrument_type, leg.symbol, leg.action, leg.quantity) == (
            "Equity",
            "AAPL",
            "Buy to Open",
            Decimal(5),
        )
    assert [o.cancellable for o in decoded] == [True, True, True, True, False]
    assert decoded[-1].terminal_at is not None and decoded[-1].is_terminal
    assert [o.updated_at for o in decoded] == sorted(o.updated_at for o in decoded)
    (fill,) = decoded[-1].legs[0].fills
    assert fill.quantity == 5
    assert decoded[-1].legs[0].remaining_quantity == 0
    assert all(not o.legs[0].fills for o in decoded[:-1])
    # The same step then sends the balance and the position.
    after = await data_until(ws, lambda m: m["type"] == "CurrentPosition")
    types = [m["type"] for m in after]
    assert types == ["AccountBalance", "CurrentPosition"]
    balance = decode(after[0], AccountBalance)
    cost = fill.quantity * fill.fill_price
    assert balance.account_number == ACCOUNT
    assert balance.cash_balance == Decimal("100000") - cost
    assert balance.long_equity_value is not None and balance.long_equity_value > 0
    position = decode(after[1], CurrentPosition)
    assert (position.symbol, position.quantity, position.quantity_direction) == (
        "AAPL",
        Decimal(5),
        "Long",
    )
    assert position.average_open_price == fill.fill_price
    assert position.signed_quantity == 5
    # REST agrees with the stream.
    status, body = await rest(http, tsim, "GET", f"/accounts/{ACCOUNT}/orders/{oid}")
    assert status == 200
    assert body["data"] == orders[-1]["data"]
    status, body = await rest(http, tsim, "GET", f"/accounts/{ACCOUNT}/orders/live")
    assert [o["id"] for o in body["data"]["items"]] == [oid]
    status, body = await rest(http, tsim, "GET", f"/accounts/{ACCOUNT}/balances")
    assert Decimal(body["data"]["cash-balance"]) == balance.cash_balance
    status, body = await rest(http, tsim, "GET", f"/accounts/{ACCOUNT}/positions")
    assert [p["symbol"] for p in body["data"]["items"]] == ["AAPL"]


async def test_a_large_order_fills_in_two_and_selling_realizes(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws = await open_ws(http, tsim)
    await connect(ws)
    oid = (await place(http, tsim, market("MSFT", 20)))["id"]  # ~8,300 USD: two fills
    msgs = await data_until(ws, is_order("Filled", oid))
    orders = [decode(m, PlacedOrder) for m in msgs if m["type"] == "Order"]
    assert [o.status for o in orders] == [
        "Received",
        "Routed",
        "In Flight",
        "Live",
        "Live",
        "Filled",
    ]
    partial, filled = orders[-2], orders[-1]
    assert len(partial.legs[0].fills) == 1
    assert partial.legs[0].remaining_quantity == 10
    assert len(filled.legs[0].fills) == 2
    assert filled.legs[0].fills[0] == partial.legs[0].fills[0]
    assert sum(f.quantity for f in filled.legs[0].fills) == 20
    assert len({f.fill_id for f in filled.legs[0].fills}) == 2
    sell = (await place(http, tsim, market("MSFT", 20, "Sell to Close")))["id"]
    msgs = await data_until(ws, is_order("Filled", sell))
    msgs += await data_until(ws, lambda m: m["type"] == "CurrentPosition")
    position = decode([m for m in msgs if m["type"] == "CurrentPosition"][-1], CurrentPosition)
    assert (position.quantity, position.quantity_direction) == (Decimal(0), "Zero")
    buys = filled.legs[0].fills
    sells = decode(next(m for m in msgs if is_order("Filled", sell)(m)), PlacedOrder).legs[0].fills
    gain = sum((f.quantity * f.fill_price for f in sells), Decimal(0)) - sum(
        (f.quantity * f.fill_price for f in buys), Decimal(0)
    )
    signed = (
        position.realized_today
        if position.realized_today_effect != "Debit"
        else -position.realized_today
    )
    assert signed == gain.quantize(Decimal("0.01"))


async def test_limit_order_cancel(tsim: SimExchange, http: aiohttp.ClientSession) -> None:
    ws = await open_ws(http, tsim)
    await connect(ws)
    body = {**market("NVDA", 10), "order-type": "Limit", "price": "1.00", "price-effect": "Debit"}
    placed = await place(http, tsim, body)
    oid = placed["id"]
    assert (placed["price"], placed["price-effect"]) == ("1", "Debit")
    await data_until(ws, is_order("Live", oid))
    live_balance = decode(
        (await data_until(ws, lambda m: m["type"] == "AccountBalance"))[-1], AccountBalance
    )
    assert live_balance.equity_buying_power == Decimal("99990.00")  # 10 x 1.00 reserved
    status, answer = await rest(http, tsim, "DELETE", f"/accounts/{ACCOUNT}/orders/{oid}")
    assert (status, answer["data"]["status"]) == (200, "Cancel Requested")
    msgs = await data_until(ws, is_order("Cancelled", oid))
    statuses = [m["data"]["status"] for m in msgs if m["type"] == "Order"]
    assert statuses == ["Cancel Requested", "Cancelled"]
    cancelled = decode(msgs[-1], PlacedOrder)
    assert cancelled.cancelled_at is not None and not cancelled.cancellable
    assert cancelled.legs[0].fills == ()
    balance = decode(
        (await data_until(ws, lambda m: m["type"] == "AccountBalance"))[-1], AccountBalance
    )
    assert balance.equity_buying_power == Decimal("100000.00")
    status, answer = await rest(http, tsim, "DELETE", f"/accounts/{ACCOUNT}/orders/{oid}")
    assert (status, answer["error"]["code"]) == (422, "order_not_cancellable")


async def test_selling_what_is_not_held_is_rejected(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws = await open_ws(http, tsim)
    await connect(ws)
    oid = (await place(http, tsim, market("TSLA", 3, "Sell to Close")))["id"]
    msgs = await data_until(ws, is_order("Rejected", oid))
    assert [m["data"]["status"] for m in msgs] == ["Received", "Rejected"]
    rejected = decode(msgs[-1], PlacedOrder)
    assert rejected.reject_reason
    assert rejected.is_terminal
    await expect_quiet(ws, 0.2)  # nothing moved: no balance, no position


async def test_order_messages_go_to_sockets_of_the_account_only(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    mine, other, unconnected = [await open_ws(http, tsim) for _ in range(3)]
    await connect(mine, [ACCOUNT])
    await connect(other, [SECOND])
    oid = (await place(http, tsim, market("SPY", 1)))["id"]
    await data_until(mine, is_order("Filled", oid))
    await expect_quiet(other, 0.1)
    await expect_quiet(unconnected, 0.01)
    oid2 = (await place(http, tsim, market("SPY", 1), account=SECOND))["id"]
    msgs = await data_until(other, is_order("Filled", oid2))
    assert {decode(m, PlacedOrder).account_number for m in msgs if m["type"] == "Order"} == {SECOND}


async def test_rest_refusals(tsim: SimExchange, http: aiohttp.ClientSession) -> None:
    path = f"/accounts/{ACCOUNT}/orders"
    status, body = await rest(http, tsim, "POST", path, market(), token="Bearer nope")
    assert (status, body["error"]["code"]) == (401, "token_invalid")
    other = tsim.tastytrade.mint_token("5WT12345")
    status, body = await rest(http, tsim, "POST", path, market(), token=other)
    assert (status, body["error"]["code"]) == (403, "not_permitted")
    bad = {
        "time-in-force": "Forever",
        "order-type": "Limit",
        "price": "-1",
        "legs": [{"instrument-type": "Future", "symbol": "ZZZZ", "quantity": 1.5, "action": "Buy"}],
    }
    status, body = await rest(http, tsim, "POST", path, bad)
    assert (status, body["error"]["code"]) == (400, "validation_error")
    domains = {e["domain"] for e in body["error"]["errors"]}
    assert domains >= {
        "time-in-force",
        "price",
        "legs[0].instrument-type",
        "legs[0].symbol",
        "legs[0].quantity",
        "legs[0].action",
    }
    wrong_effect = {**market(), "order-type": "Limit", "price": "10", "price-effect": "Credit"}
    status, body = await rest(http, tsim, "POST", path, wrong_effect)
    assert status == 400
    assert [e["domain"] for e in body["error"]["errors"]] == ["price-effect"]
    status, body = await rest(http, tsim, "POST", path, {**market(), "price": "10"})
    assert status == 400
    for oid in ("999", "abc"):
        status, body = await rest(http, tsim, "GET", f"{path}/{oid}")
        assert (status, body["error"]["code"]) == (404, "record_not_found")
    assert tsim.tastytrade.accounts[ACCOUNT].orders == {}


async def test_tastytrade_and_other_venues_are_apart(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    status, _ = await rest(http, tsim, "GET", f"/accounts/{TRADIER_DEMO_ACCOUNT}/orders")
    assert status == 403
    async with http.get(
        f"{tsim.http_url}/api/v1/trade/orders", headers={"Authorization": TOKEN}
    ) as r:
        assert r.status == 401
    async with http.get(
        f"{tsim.http_url}/accounts/{ACCOUNT}/orders", headers={"X-API-Key": DEMO_API_KEY}
    ) as r:
        assert r.status == 401


# -- quote alerts, watchlists, batches ---------------------------------------------------


async def test_quote_alert_and_watchlist_pushes(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    alerts, lists, plain = [await open_ws(http, tsim) for _ in range(3)]
    for ws in (alerts, lists, plain):
        await connect(ws)
    await send(alerts, "quote-alerts-subscribe", rid=2)
    await send(lists, "public-watchlists-subscribe", rid=2)
    assert (await reply(alerts))["status"] == (await reply(lists))["status"] == "ok"
    assert tsim.push_tastytrade_quote_alert("NVDA", threshold="120") == 1
    (m,) = await data_until(alerts, lambda m: True)
    assert m["type"] == "QuoteAlert"
    alert = decode(m, QuoteAlert)
    assert (alert.symbol, alert.threshold, alert.threshold_numeric) == ("NVDA", "120", Decimal(120))
    assert alert.triggered_at is not None
    assert tsim.push_tastytrade_watchlist("Tech", ["AAPL", "MSFT"]) == 1
    (m,) = await data_until(lists, lambda m: True)
    assert m["type"] == "PublicWatchlists"
    wl = decode(m, Watchlist)
    assert wl.name == "Tech"
    assert [e.symbol for e in wl.watchlist_entries] == ["AAPL", "MSFT"]
    await expect_quiet(plain, 0.1)
    # An alert for another user's token reaches no socket of this user.
    stranger = tsim.tastytrade.mint_token("5WT77777")
    assert tsim.push_tastytrade_quote_alert("AAPL", token=stranger) == 0
    assert tsim.push_tastytrade_quote_alert("AAPL", token=TOKEN) == 1
    await expect_quiet(lists, 0.05)


async def test_batched_messages(http: aiohttp.ClientSession) -> None:
    async with fast_sim(tastytrade_batch=True) as sim:
        ws = await open_ws(http, sim)
        await connect(ws)
        oid = (await place(http, sim, market("AMZN", 2)))["id"]
        batches: list[JSON] = []
        with anyio.fail_after(3):
            while not any(is_order("Filled", oid)(i) for b in batches for i in b["results"]):
                m = await frame(ws)
                assert set(m) == {"results"}, m  # nothing unbatched
                batches.append(m)
        # The fill's step is one batch: the order, the balance, the position.
        assert [i["type"] for i in batches[-1]["results"]] == [
            "Order",
            "AccountBalance",
            "CurrentPosition",
        ]
        accepted = [i["data"]["status"] for i in batches[1]["results"] if i["type"] == "Order"]
        assert accepted == ["Routed", "In Flight", "Live"]
        proto = TastytradeProtocol(f"{sim.url}/tastytrade")
        batch = proto.classify(json.dumps(batches[-1]))
        assert isinstance(batch, Batch)
        assert [i.kind for i in batch.items if isinstance(i, Data)] == [
            "orders",
            "balances",
            "positions",
        ]
        decode(batches[-1]["results"][0], PlacedOrder)
        # Switched off at run time: one message per frame again.
        sim.batch_tastytrade_messages(False)
        await send(ws, "public-watchlists-subscribe", rid=5)
        await reply(ws)
        sim.push_tastytrade_watchlist()
        assert (await frame(ws))["type"] == "PublicWatchlists"


# -- faults ----------------------------------------------------------------------------


async def test_expire_all_tokens(tsim: SimExchange, http: aiohttp.ClientSession) -> None:
    ws = await open_ws(http, tsim)
    await connect(ws)
    assert tsim.expire_tastytrade_tokens() == 1
    await send(ws, "heartbeat", rid=2)
    assert (await reply(ws))["message"] == "failed"
    # Still connected: order messages keep coming (the sim's choice).
    oid = (await place(http, tsim, market(), token=tsim.tastytrade.mint_token(ACCOUNT)))["id"]
    await data_until(ws, is_order("Live", oid))
    fresh = tsim.tastytrade.mint_token([ACCOUNT, SECOND])
    await connect(ws, [ACCOUNT, SECOND], token=fresh, rid=3)


async def test_revoke_and_restore_a_token(tsim: SimExchange, http: aiohttp.ClientSession) -> None:
    ws = await open_ws(http, tsim)
    await connect(ws)
    assert tsim.revoke_tastytrade_token(TOKEN) == 1
    await send(ws, "heartbeat", rid=2)
    assert (await reply(ws))["message"] == "failed"
    status, _ = await rest(http, tsim, "GET", f"/accounts/{ACCOUNT}/orders/live")
    assert status == 401
    tsim.add_tastytrade_token(TOKEN)  # its own accounts back
    await connect(ws, [ACCOUNT, SECOND], rid=3)


async def test_fail_the_next_connects(tsim: SimExchange, http: aiohttp.ClientSession) -> None:
    ws = await open_ws(http, tsim)
    tsim.fail_tastytrade_connects(2)
    for rid in (1, 2):
        await send(ws, "connect", value=[ACCOUNT], rid=rid)
        assert (await reply(ws))["message"] == "failed"
    await send(ws, "heartbeat", rid=3)  # heartbeats are not connects
    assert (await reply(ws))["status"] == "ok"
    await connect(ws, rid=4)
    assert tsim.tastytrade.connect_requests == 3


async def test_failing_rest_api(tsim: SimExchange, http: aiohttp.ClientSession) -> None:
    ws = await open_ws(http, tsim)
    await connect(ws)
    order = await place(http, tsim, market())
    paths = [
        f"/accounts/{ACCOUNT}/orders",
        f"/accounts/{ACCOUNT}/orders/live",
        f"/accounts/{ACCOUNT}/orders/{order['id']}",
        f"/accounts/{ACCOUNT}/balances",
        f"/accounts/{ACCOUNT}/positions",
    ]
    tsim.fail_tastytrade_rest(503)
    for path in paths:
        status, body = await rest(http, tsim, "GET", path)
        assert (status, body["error"]["code"]) == (503, "service_unavailable")
    assert (await rest(http, tsim, "POST", f"/accounts/{ACCOUNT}/orders", market()))[0] == 503
    await send(ws, "heartbeat", rid=2)  # the streamer is not affected
    assert (await reply(ws))["status"] == "ok"
    tsim.heal_tastytrade_rest()
    assert [(await rest(http, tsim, "GET", p))[0] for p in paths] == [200] * 5
    tsim.fail_tastytrade_rest(502, count=1)
    assert [(await rest(http, tsim, "GET", paths[1]))[0] for _ in range(2)] == [502, 200]
    async with http.post(
        f"{tsim.http_url}/admin/fault/tastytrade_rest_fail", json={"status": 500}
    ) as r:
        assert r.status == 200
    async with http.get(f"{tsim.http_url}/admin/state") as r:
        assert (await r.json())["tastytrade"]["rest_fail"]["status"] == 500
    assert (await rest(http, tsim, "GET", paths[0]))[0] == 500
    async with http.post(f"{tsim.http_url}/admin/fault/tastytrade_rest_ok", json={}) as r:
        assert r.status == 200
    assert (await rest(http, tsim, "GET", paths[0]))[0] == 200
    with pytest.raises(ValueError, match="count"):
        tsim.fail_tastytrade_rest(503, count=0)


async def test_generic_faults_reach_tastytrade_sockets(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws = await open_ws(http, tsim)
    await connect(ws)
    assert tsim.send_raw('{"results": [') == 1
    msg = await ws.receive(timeout=2)
    assert msg.data == '{"results": ['
    assert tsim.go_silent() == 1
    await send(ws, "heartbeat", rid=2)
    await expect_quiet(ws, 0.2)
    tsim.resume()
    assert (await reply(ws))["request-id"] == 2  # read once resumed
    assert await tsim.drop_connections(1012) == 1
    await expect_end(ws)
    assert ws.close_code == 1012
    tsim.refuse_handshakes(503, count=1)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await open_ws(http, tsim)
    assert info.value.status == 503
    ws = await open_ws(http, tsim)
    await connect(ws)


async def test_admin_faults(tsim: SimExchange, http: aiohttp.ClientSession) -> None:
    async def admin(fault: str, body: JSON | None = None) -> tuple[int, Any]:
        async with http.post(f"{tsim.http_url}/admin/fault/{fault}", json=body or {}) as r:
            return r.status, await r.json()

    status, body = await admin("tastytrade_mint", {"accounts": [ACCOUNT]})
    assert status == 200
    token = body["result"]
    assert token.startswith("Bearer ")
    ws = await open_ws(http, tsim)
    await connect(ws, token=token)
    assert (await admin("tastytrade_connect_fail", {"count": 1}))[0] == 200
    await send(ws, "connect", token=token, value=[ACCOUNT], rid=2)
    assert (await reply(ws))["message"] == "failed"
    await connect(ws, token=token, rid=3)
    await send(ws, "quote-alerts-subscribe", token=token, rid=4)
    await send(ws, "public-watchlists-subscribe", token=token, rid=5)
    await reply(ws)
    await reply(ws)
    assert (await admin("tastytrade_batch", {"enabled": True}))[0] == 200
    assert (await admin("tastytrade_quote_alert", {"symbol": "QQQ"}))[1]["result"] == 1
    m = await frame(ws)
    assert [i["type"] for i in m["results"]] == ["QuoteAlert"]
    assert (await admin("tastytrade_watchlist", {"name": "X", "symbols": ["SPY"]}))[1][
        "result"
    ] == 1
    m = await frame(ws)
    assert decode(m["results"][0], Watchlist).name == "X"
    async with http.get(f"{tsim.http_url}/admin/state") as r:
        state = (await r.json())["tastytrade"]
    assert state["sockets"] == state["connected"] == 1
    assert state["batch"] is True
    assert (await admin("tastytrade_expire"))[1]["result"] == 2
    await send(ws, "heartbeat", token=token, rid=6)
    assert (await reply(ws))["message"] == "failed"
    assert (await admin("tastytrade_revoke", {"token": TOKEN}))[0] == 200
    assert (await admin("tastytrade_restore", {"token": TOKEN}))[0] == 200
    await connect(ws, token=TOKEN, rid=7)
    assert (await admin("tastytrade_nope"))[0] == 404
    assert (await admin("tastytrade_revoke", {}))[0] == 400
