"""The sim's Tradier front-end, driven as Tradier documents it, with a plain aiohttp client.

Session over REST, then the socket; single-use, expiring session ids, one per user;
heartbeats with nine fractional digits; order events with Tradier's exact field set and
JSON numbers; the order REST API and its quirks; the faults. Never agentstream's client.
"""

from __future__ import annotations

import calendar
import itertools
import json
import re
import ssl
import sys
import time
import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import pytest
import trustme

from agentstream.sim import (
    DEMO_API_KEY,
    TRADIER_DEMO_ACCOUNT,
    TRADIER_DEMO_TOKEN,
    Market,
    SimExchange,
)
from tests.sim.helpers import ENDED, ISO_MS, expect_quiet, fast_sim, subscribe, wait_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

pytestmark = pytest.mark.anyio

WS = aiohttp.ClientWebSocketResponse
JSON_ACCEPT = {"Accept": "application/json"}
ISO_NS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
#: Every field of a single-leg order event (``tag`` only when the order has one).
EVENT_FIELDS = {
    "id",
    "event",
    "status",
    "type",
    "price",
    "stop_price",
    "avg_fill_price",
    "exec_quantity",
    "last_fill_quantity",
    "remaining_quantity",
    "transaction_date",
    "create_date",
    "account",
}
NUMBER_FIELDS = (
    "price",
    "stop_price",
    "avg_fill_price",
    "exec_quantity",
    "last_fill_quantity",
    "remaining_quantity",
)
#: Tradier-side settings of these tests: quick heartbeats, and the sim's FAST ones.
TRADIER_FAST: dict[str, Any] = {"tradier_heartbeat_interval": 0.05}
SECOND_ACCOUNT = "VA000002"
ROOT = Path(__file__).resolve().parents[2]


def auth(token: str = TRADIER_DEMO_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **JSON_ACCEPT}


@pytest.fixture
async def tsim() -> AsyncIterator[SimExchange]:
    """A fast sim whose demo token holds two accounts."""
    tokens = {TRADIER_DEMO_TOKEN: (TRADIER_DEMO_ACCOUNT, SECOND_ACCOUNT)}
    async with fast_sim(**TRADIER_FAST, tradier_tokens=tokens) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


# -- helpers ---------------------------------------------------------------------------


async def new_session(
    http: aiohttp.ClientSession, sim: SimExchange, token: str = TRADIER_DEMO_TOKEN
) -> tuple[str, str]:
    """POST a streaming session; return (socket URL, session id)."""
    async with http.post(f"{sim.http_url}/v1/accounts/events/session", headers=auth(token)) as r:
        assert r.status == 200, await r.text()
        assert r.content_type == "application/json"
        body = await r.json()
    assert set(body) == {"stream"}
    assert set(body["stream"]) == {"url", "sessionid"}
    return body["stream"]["url"], body["stream"]["sessionid"]


async def payload(
    ws: WS, sid: str, events: tuple[str, ...] = ("order",), exclude: tuple[str, ...] = ()
) -> None:
    await ws.send_str(
        json.dumps({"events": list(events), "sessionid": sid, "excludeAccounts": list(exclude)})
    )


async def stream(
    http: aiohttp.ClientSession,
    sim: SimExchange,
    *,
    events: tuple[str, ...] = ("order",),
    exclude: tuple[str, ...] = (),
) -> tuple[WS, str]:
    """A socket subscribed with a fresh session, once the server has taken the payload."""
    url, sid = await new_session(http, sim)
    ws = await http.ws_connect(url)
    await payload(ws, sid, events, exclude)
    await wait_for(lambda: bool(sim.connection_log[-1].subscribe_requests))
    return ws, sid


async def next_msg(
    ws: WS, pred: Callable[[dict[str, Any]], bool], timeout: float = 2.0
) -> tuple[str, dict[str, Any]]:
    """The next text message matching ``pred``: its raw text and its JSON (floats as
    Decimal, so a number is a Decimal and a string stays a str)."""
    with anyio.fail_after(timeout):
        while True:
            msg = await ws.receive()
            if msg.type in ENDED:
                raise AssertionError(f"socket ended ({msg!r}, code {ws.close_code})")
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            data = json.loads(msg.data, parse_float=Decimal)
            if pred(data):
                return msg.data, data


def is_order(order_id: int | None = None) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m.get("event") == "order" and (order_id is None or m["id"] == order_id)


async def order_events(ws: WS, order_id: int, last: str, timeout: float = 3.0) -> list[Any]:
    """Order events of ``order_id`` until one with status ``last`` (inclusive)."""
    out: list[dict[str, Any]] = []
    with anyio.fail_after(timeout):
        while not out or out[-1]["status"] != last:
            out.append((await next_msg(ws, is_order(order_id), timeout))[1])
    return out


def is_heartbeat(m: dict[str, Any]) -> bool:
    return m.get("event") == "heartbeat"


def iso_to_ns(ts: str) -> int:
    """Nanoseconds since the epoch of a heartbeat timestamp."""
    whole, frac = ts.rstrip("Z").split(".")
    sec = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return sec * 10**9 + int(frac)


async def order_stream(ws: WS, until: int, last: str, timeout: float = 3.0) -> list[Any]:
    """Every order event (of any order) until order ``until`` reaches status ``last``."""
    out: list[dict[str, Any]] = []
    with anyio.fail_after(timeout):
        while not out or (out[-1]["id"], out[-1]["status"]) != (until, last):
            out.append((await next_msg(ws, is_order(), timeout))[1])
    return out


async def place(
    http: aiohttp.ClientSession,
    sim: SimExchange,
    account: str = TRADIER_DEMO_ACCOUNT,
    token: str = TRADIER_DEMO_TOKEN,
    **form: str,
) -> tuple[int, Any]:
    fields = {"class": "equity", "duration": "day", **form}
    async with http.post(
        f"{sim.http_url}/v1/accounts/{account}/orders", data=fields, headers=auth(token)
    ) as r:
        return r.status, (
            await r.json() if r.content_type == "application/json" else await r.text()
        )


async def get(
    http: aiohttp.ClientSession, sim: SimExchange, path: str, token: str = TRADIER_DEMO_TOKEN
) -> tuple[int, Any]:
    async with http.get(f"{sim.http_url}{path}", headers=auth(token)) as r:
        text = await r.text()
        return r.status, (json.loads(text, parse_float=Decimal) if r.status == 200 else text)


def price(sim: SimExchange, symbol: str) -> Decimal:
    return sim.market.equities[symbol].price_decimal()


def above(sim: SimExchange, symbol: str) -> str:
    """A buy limit that fills on the step after it opens: 10 % over the market, in cents."""
    return str((price(sim, symbol) * Decimal("1.1")).quantize(Decimal("0.01")))


async def limit_buy(
    http: aiohttp.ClientSession, sim: SimExchange, qty: str = "4", **extra: str
) -> tuple[int, str]:
    """A filling AAPL buy limit; returns its id and limit price."""
    limit = above(sim, "AAPL")
    status, body = await place(
        http, sim, symbol="AAPL", side="buy", quantity=qty, type="limit", price=limit, **extra
    )
    assert status == 200, body
    return body["order"]["id"], limit


async def admin(
    http: aiohttp.ClientSession, sim: SimExchange, fault: str, body: Any = None
) -> tuple[int, Any]:
    async with http.post(f"{sim.http_url}/admin/fault/{fault}", json=body) as r:
        return r.status, await r.json()


async def refused_with_not_found(ws: WS) -> None:
    """The socket gets ``{"error": "session not found"}`` and then a normal close."""
    msg = await ws.receive(timeout=2)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    assert json.loads(msg.data) == {"error": "session not found"}
    end = await ws.receive(timeout=2)
    assert end.type is aiohttp.WSMsgType.CLOSE, end
    assert end.data == 1000  # a normal close: not an authentication failure


# -- the market ------------------------------------------------------------------------


async def test_equities_trade_apart_from_the_crypto_pairs(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    assert {"AAPL", "MSFT", "SPY", "TSLA", "NVDA"} <= set(tsim.market.equities)
    assert len(tsim.market.pairs) == tsim.config.pairs  # the crypto list is unchanged
    assert not set(tsim.market.equities) & set(tsim.market.pairs)
    for eq in tsim.market.equities.values():
        assert eq.price_dp == 2
        assert eq.qty_dp == 0
        assert Decimal(50) < eq.price_decimal() < Decimal(1000)  # realistic US share prices
    async with http.get(f"{tsim.http_url}/api/v1/market/pairs") as r:
        symbols = {p["symbol"] for p in (await r.json())["pairs"]}
    assert "AAPL" not in symbols
    before = price(tsim, "SPY")
    await wait_for(lambda: price(tsim, "SPY") != before)  # equities walk with the order loop


def test_equities_do_not_change_a_seeds_crypto_market() -> None:
    a, b = Market(seed=5), Market(seed=5)
    for _ in range(20):
        a.walk_equities()  # b never walks its equities
    ta, tb = a.ticks(500, 0), b.ticks(500, 0)
    assert [(t.pair.symbol, t.price) for t in ta] == [(t.pair.symbol, t.price) for t in tb]


# -- sessions --------------------------------------------------------------------------


async def test_session_answers_json_with_this_servers_socket_url(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    url, sid = await new_session(http, tsim)
    assert url == f"ws://127.0.0.1:{tsim.port}/v1/accounts/events"
    assert re.fullmatch(r"[0-9a-f-]{36}", sid)
    _, sid2 = await new_session(http, tsim)
    assert sid2 != sid


async def test_session_answers_xml_without_accept_json(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{tsim.http_url}/v1/accounts/events/session",
        headers={"Authorization": f"Bearer {TRADIER_DEMO_TOKEN}"},
    ) as r:
        assert r.status == 200
        assert r.content_type == "application/xml"
        root = ET.fromstring(await r.text())
    assert root.tag == "stream"
    assert [c.tag for c in root] == ["url", "sessionid"]
    assert root.findtext("url") == f"ws://127.0.0.1:{tsim.port}/v1/accounts/events"
    ws = await http.ws_connect(root.findtext("url") or "")
    await payload(ws, root.findtext("sessionid") or "")
    await next_msg(ws, is_heartbeat)  # the XML session id is as good as a JSON one
    await ws.close()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {TRADIER_DEMO_TOKEN}"},
        {"Authorization": "Bearer "},
    ],
)
async def test_session_with_a_bad_token_is_401(
    tsim: SimExchange, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    async with http.post(
        f"{tsim.http_url}/v1/accounts/events/session", headers={**headers, **JSON_ACCEPT}
    ) as r:
        assert r.status == 401
        assert await r.text() == "Invalid Access Token"


async def test_session_url_is_wss_when_the_sim_serves_tls(http: aiohttp.ClientSession) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with fast_sim(ssl_context=server_ctx, **TRADIER_FAST) as sim:
        async with http.post(
            f"{sim.http_url}/v1/accounts/events/session", headers=auth(), ssl=client_ctx
        ) as r:
            stream_ = (await r.json())["stream"]
        assert stream_["url"] == f"wss://127.0.0.1:{sim.port}/v1/accounts/events"
        async with http.ws_connect(stream_["url"], ssl=client_ctx) as ws:
            await payload(ws, stream_["sessionid"])
            await next_msg(ws, is_heartbeat)


async def test_a_session_id_serves_one_socket_only(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    url, sid = await new_session(http, tsim)
    first = await http.ws_connect(url)
    await payload(first, sid)
    await next_msg(first, is_heartbeat)
    second = await http.ws_connect(url)
    await payload(second, sid)
    await refused_with_not_found(second)
    assert tsim.connection_log[-1].close_reason == "session not found"
    await next_msg(first, is_heartbeat)  # the first socket is unaffected
    await first.close()
    # Used, even after its socket is gone.
    third = await http.ws_connect(url)
    await payload(third, sid)
    await refused_with_not_found(third)


@pytest.mark.parametrize("sid", ["no-such-session", "", None, 42])
async def test_an_unknown_session_id_is_refused(
    tsim: SimExchange, http: aiohttp.ClientSession, sid: Any
) -> None:
    url, _ = await new_session(http, tsim)
    ws = await http.ws_connect(url)
    await ws.send_str(json.dumps({"events": ["order"], "sessionid": sid, "excludeAccounts": []}))
    await refused_with_not_found(ws)


async def test_a_session_id_expires_after_its_ttl(http: aiohttp.ClientSession) -> None:
    async with fast_sim(**TRADIER_FAST, tradier_session_ttl=0.2) as sim:
        url, fresh = await new_session(http, sim)
        async with http.ws_connect(url) as ws:
            await payload(ws, fresh)  # used within the TTL: it streams past it
            await anyio.sleep(0.3)
            await next_msg(ws, is_heartbeat)
        url, stale = await new_session(http, sim)
        await anyio.sleep(0.3)
        async with http.ws_connect(url) as ws:
            await payload(ws, stale)
            await refused_with_not_found(ws)


async def test_one_session_per_user_a_new_one_invalidates_the_unused_one(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    url, old = await new_session(http, tsim)
    _, new = await new_session(http, tsim)
    ws = await http.ws_connect(url)
    await payload(ws, old)
    await refused_with_not_found(ws)
    ws = await http.ws_connect(url)
    await payload(ws, new)
    await next_msg(ws, is_heartbeat)
    await ws.close()


async def test_a_new_session_ends_the_users_streaming_socket(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws, _ = await stream(http, tsim)
    await new_session(http, tsim)
    with anyio.fail_after(2):
        while (msg := await ws.receive()).type not in ENDED:
            assert is_heartbeat(json.loads(msg.data))
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert msg.data == 1000


async def test_a_new_session_can_leave_the_streaming_socket_open(
    http: aiohttp.ClientSession,
) -> None:
    async with fast_sim(**TRADIER_FAST, tradier_new_session_ends_stream=False) as sim:
        ws, _ = await stream(http, sim)
        await new_session(http, sim)
        await next_msg(ws, is_heartbeat)
        await next_msg(ws, is_heartbeat)
        assert not ws.closed
        await ws.close()


async def test_sessions_of_another_token_are_independent(http: aiohttp.ClientSession) -> None:
    tokens = {TRADIER_DEMO_TOKEN: TRADIER_DEMO_ACCOUNT, "other-token-0123": "VB000009"}
    async with fast_sim(**TRADIER_FAST, tradier_tokens=tokens) as sim:
        url, mine = await new_session(http, sim)
        await new_session(http, sim, "other-token-0123")
        async with http.ws_connect(url) as ws:
            await payload(ws, mine)
            await next_msg(ws, is_heartbeat)


# -- heartbeats ------------------------------------------------------------------------


async def test_heartbeats_at_the_interval_with_nine_fractional_digits(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws, _ = await stream(http, tsim)
    raws = []
    for _ in range(4):
        raw, hb = await next_msg(ws, is_heartbeat)
        raws.append(raw)
        assert hb.keys() == {"event", "status", "timestamp"}
        assert hb["status"] == "active"
        assert ISO_NS.match(hb["timestamp"]), hb
    # Compact JSON, as the documentation shows it.
    assert raws[0].startswith('{"event":"heartbeat","status":"active","timestamp":"')
    stamps = [json.loads(r)["timestamp"] for r in raws]
    assert len({s[-10:] for s in stamps}) == 4  # real nanoseconds, not padded milliseconds
    # On the sim clock (speed 60), one 0.05 s interval apart: 3 simulated seconds.
    ns = [iso_to_ns(s) for s in stamps]
    assert abs(ns[-1] - tsim.now_ns()) < 10 * 10**9
    for a, b in itertools.pairwise(ns):
        assert 0.045 * 60 * 10**9 <= b - a < 120 * 10**9, (a, b)
    await ws.close()


async def test_no_heartbeat_before_the_interval(http: aiohttp.ClientSession) -> None:
    async with fast_sim(tradier_heartbeat_interval=60.0) as sim:
        ws, _ = await stream(http, sim)
        await expect_quiet(ws, 0.4)
        await ws.close()


async def test_no_heartbeats_before_a_payload(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    url, _ = await new_session(http, tsim)
    async with http.ws_connect(url) as ws:
        await expect_quiet(ws, 0.3)


# -- order events ----------------------------------------------------------------------


async def test_order_events_have_tradiers_exact_fields_and_json_numbers(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws, _ = await stream(http, tsim)
    oid, limit = await limit_buy(http, tsim, "4", tag="my-bot-1")
    raws: list[str] = []
    with anyio.fail_after(3):
        while True:
            raw, ev = await next_msg(ws, is_order(oid))
            raws.append(raw)
            if ev["status"] == "filled":
                break
    events = [json.loads(r, parse_float=Decimal) for r in raws]
    # Out of order by default, as the documentation's sample: open before pending.
    assert [e["status"] for e in events] == ["open", "pending", "filled"]
    for raw, ev in zip(raws, events, strict=True):
        assert set(ev) == EVENT_FIELDS | {"tag"}, ev
        assert type(ev["id"]) is int
        assert ev["id"] == oid
        for name in NUMBER_FIELDS:
            assert isinstance(ev[name], Decimal), (name, raw)  # a JSON number, not a string
            assert re.search(rf'"{name}":\d+\.\d+[,}}]', raw), (name, raw)
        assert ISO_MS.match(ev["create_date"])
        assert ISO_MS.match(ev["transaction_date"])
        assert ev["account"] == TRADIER_DEMO_ACCOUNT
        assert ev["tag"] == "my-bot-1"
        assert ev["type"] == "limit"
        assert ev["price"] == Decimal(limit)
        assert ev["stop_price"] == 0
        assert ev["event"] == "order"
    opened, pending, filled = events
    assert opened["remaining_quantity"] == pending["remaining_quantity"] == Decimal(4)
    assert opened["exec_quantity"] == pending["exec_quantity"] == 0
    assert pending["transaction_date"] == pending["create_date"]
    assert filled["exec_quantity"] == Decimal(4)
    assert '"exec_quantity":4.0' in raws[2]
    assert filled["remaining_quantity"] == 0
    assert filled["avg_fill_price"] == Decimal(limit)  # a limit fills at its limit
    assert filled["last_fill_quantity"] == 0  # as the documentation's sample
    assert filled["transaction_date"] >= filled["create_date"]
    # The cash is exact.
    acct = tsim.tradier.accounts[TRADIER_DEMO_ACCOUNT]
    assert acct.cash == tsim.config.tradier_cash - 4 * Decimal(limit)
    assert acct.holdings["AAPL"].quantity == 4
    await ws.close()


async def test_order_events_in_lifecycle_order_when_configured(
    http: aiohttp.ClientSession,
) -> None:
    async with fast_sim(
        **TRADIER_FAST, tradier_out_of_order=False, tradier_zero_last_fill=False
    ) as sim:
        ws, _ = await stream(http, sim)
        oid, _ = await limit_buy(http, sim, "3")
        events = await order_events(ws, oid, "filled")
        assert [e["status"] for e in events] == ["pending", "open", "filled"]
        assert "tag" not in events[0]  # no tag: no field
        assert set(events[0]) == EVENT_FIELDS
        assert events[-1]["last_fill_quantity"] == Decimal(3)
        await ws.close()


async def test_a_large_order_fills_in_two_parts(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws, _ = await stream(http, tsim)
    status, body = await place(
        http, tsim, symbol="SPY", side="buy", quantity="10", type="market"
    )  # about 5,600 USD: over partial_fill_notional
    assert status == 200, body
    oid = body["order"]["id"]
    events = await order_events(ws, oid, "filled")
    assert [e["status"] for e in events] == ["open", "pending", "partially_filled", "filled"]
    part, done = events[2], events[3]
    assert (part["exec_quantity"], part["last_fill_quantity"]) == (5, 5)
    assert part["remaining_quantity"] == 5
    assert done["exec_quantity"] == 10
    assert done["remaining_quantity"] == 0
    assert done["price"] == 0  # a market order has no limit
    status, got = await get(http, tsim, f"/v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders/{oid}")
    assert got["order"]["last_fill_quantity"] == 5  # REST keeps the real last fill
    await ws.close()


async def test_stop_orders_short_sales_and_covers(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws, _ = await stream(http, tsim)
    # A buy stop under the market triggers at once and fills at the market.
    stop = str((price(tsim, "MSFT") * Decimal("0.5")).quantize(Decimal("0.01")))
    status, body = await place(
        http, tsim, symbol="MSFT", side="buy", quantity="2", type="stop", stop=stop
    )
    assert status == 200, body
    events = await order_events(ws, body["order"]["id"], "filled")
    assert events[-1]["type"] == "stop"
    assert events[-1]["stop_price"] == Decimal(stop)
    assert events[-1]["avg_fill_price"] > Decimal(stop)
    # Short 3, cover 3, then a cover with nothing short is rejected.
    for side in ("sell_short", "buy_to_cover"):
        status, body = await place(
            http, tsim, symbol="TSLA", side=side, quantity="3", type="market"
        )
        assert status == 200, body
        await order_events(ws, body["order"]["id"], "filled")
    assert tsim.tradier.accounts[TRADIER_DEMO_ACCOUNT].holdings["TSLA"].quantity == 0
    status, body = await place(
        http, tsim, symbol="TSLA", side="buy_to_cover", quantity="1", type="market"
    )
    events = await order_events(ws, body["order"]["id"], "rejected")
    assert [e["status"] for e in events] == ["pending", "rejected"]
    await ws.close()


async def test_selling_shares_not_held_is_rejected_on_the_stream(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws, _ = await stream(http, tsim)
    status, body = await place(http, tsim, symbol="NVDA", side="sell", quantity="1", type="market")
    assert status == 200, body  # accepted over REST...
    oid = body["order"]["id"]
    events = await order_events(ws, oid, "rejected")  # ...then rejected
    assert [e["status"] for e in events] == ["pending", "rejected"]
    assert events[-1]["remaining_quantity"] == 0
    await ws.close()


async def test_a_resent_payload_changes_the_subscription(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws, sid = await stream(http, tsim, events=())
    oid, _ = await limit_buy(http, tsim, "1")
    orders = tsim.tradier.accounts[TRADIER_DEMO_ACCOUNT].orders
    await wait_for(lambda: orders[oid].status == "filled")
    await anyio.sleep(0.1)
    await payload(ws, sid)  # same session id, now with orders
    await wait_for(lambda: len(tsim.connection_log[-1].subscribe_requests) == 2)
    oid2, _ = await limit_buy(http, tsim, "1")
    events = await order_stream(ws, oid2, "filled")
    assert {e["id"] for e in events} == {oid2}  # none of the order traded unsubscribed
    # Heartbeats came all along (only order events were off).
    await next_msg(ws, is_heartbeat)
    await ws.close()


async def test_excluded_accounts_get_no_events(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws, _ = await stream(http, tsim, exclude=(TRADIER_DEMO_ACCOUNT,))
    status, excluded = await place(
        http, tsim, symbol="AAPL", side="buy", quantity="1", type="market"
    )
    assert status == 200
    status, included = await place(
        http, tsim, SECOND_ACCOUNT, symbol="AAPL", side="buy", quantity="1", type="market"
    )
    assert status == 200
    events = await order_stream(ws, included["order"]["id"], "filled")
    assert {e["account"] for e in events} == {SECOND_ACCOUNT}
    _, got = await get(
        http, tsim, f"/v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders/{excluded['order']['id']}"
    )
    assert got["order"]["status"] == "filled"  # it traded; the stream just left it out
    with anyio.move_on_after(0.2):
        while True:
            _, m = await next_msg(ws, lambda m: True)
            assert m.get("account") != TRADIER_DEMO_ACCOUNT, m
    await ws.close()


async def test_other_users_accounts_never_reach_the_stream(http: aiohttp.ClientSession) -> None:
    tokens = {TRADIER_DEMO_TOKEN: TRADIER_DEMO_ACCOUNT, "other-token-0123": "VB000009"}
    async with fast_sim(**TRADIER_FAST, tradier_tokens=tokens) as sim:
        ws, _ = await stream(http, sim)
        status, theirs = await place(
            http,
            sim,
            "VB000009",
            "other-token-0123",
            symbol="AAPL",
            side="buy",
            quantity="1",
            type="market",
        )
        assert status == 200, theirs
        oid, _ = await limit_buy(http, sim, "1")
        events = await order_stream(ws, oid, "filled")
        assert {e["account"] for e in events} == {TRADIER_DEMO_ACCOUNT}
        assert theirs["order"]["id"] not in {e["id"] for e in events}
        await ws.close()


async def test_a_malformed_payload_gets_an_error_and_the_socket_stays(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    url, sid = await new_session(http, tsim)
    async with http.ws_connect(url) as ws:
        await ws.send_str("{not json")
        assert json.loads((await ws.receive(timeout=2)).data) == {"error": "invalid payload"}
        await ws.send_str(json.dumps({"events": "order", "sessionid": sid}))
        assert json.loads((await ws.receive(timeout=2)).data) == {"error": "invalid payload"}
        await payload(ws, sid)
        await next_msg(ws, is_heartbeat)


# -- REST ------------------------------------------------------------------------------


async def test_place_answers_id_status_ok_and_partner_id(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    status, body = await place(http, tsim, symbol="aapl", side="buy", quantity="1", type="market")
    assert status == 200
    assert set(body) == {"order"}
    assert set(body["order"]) == {"id", "status", "partner_id"}
    assert type(body["order"]["id"]) is int
    assert body["order"]["status"] == "ok"
    assert isinstance(body["order"]["partner_id"], str)
    assert body["order"]["partner_id"]


async def test_orders_list_quirks_null_one_object_then_a_list(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    path = f"/v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders"
    assert await get(http, tsim, path) == (200, {"orders": "null"})
    oid, _ = await limit_buy(http, tsim, "1", tag="t-1")
    status, body = await get(http, tsim, path)
    assert status == 200
    one = body["orders"]["order"]
    assert isinstance(one, dict)  # one order: a plain object
    assert one["id"] == oid
    assert "tag" not in one  # tags only with includeTags=true
    _, tagged = await get(http, tsim, path + "?includeTags=true")
    assert tagged["orders"]["order"]["tag"] == "t-1"
    oid2, _ = await limit_buy(http, tsim, "1")
    _, body = await get(http, tsim, path)
    assert [o["id"] for o in body["orders"]["order"]] == [oid, oid2]
    # The other account of the token has none.
    assert await get(http, tsim, f"/v1/accounts/{SECOND_ACCOUNT}/orders") == (
        200,
        {"orders": "null"},
    )


async def test_get_one_order_has_every_field_as_numbers(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    oid, limit = await limit_buy(http, tsim, "2", tag="abc-9")
    path = f"/v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders/{oid}"

    async def status_now() -> bool:
        return bool((await get(http, tsim, path))[1]["order"]["status"] == "filled")

    await wait_for(status_now)
    async with http.get(f"{tsim.http_url}{path}", headers=auth()) as r:
        raw = await r.text()
    order = json.loads(raw, parse_float=Decimal)["order"]
    for name in (
        "symbol",
        "side",
        "quantity",
        "class",
        "duration",
        "status",
        "type",
        "price",
        "avg_fill_price",
        "exec_quantity",
        "last_fill_quantity",
        "remaining_quantity",
        "create_date",
        "transaction_date",
        "tag",
    ):
        assert name in order, name
    assert (order["symbol"], order["side"], order["class"], order["duration"]) == (
        "AAPL",
        "buy",
        "equity",
        "day",
    )
    assert (order["type"], order["status"], order["tag"]) == ("limit", "filled", "abc-9")
    for name in ("quantity", "price", "avg_fill_price", "exec_quantity", "remaining_quantity"):
        assert isinstance(order[name], Decimal), name
        assert re.search(rf'"{name}":\d+\.\d{{8}}[,}}]', raw), (name, raw)
    assert order["quantity"] == order["exec_quantity"] == 2
    assert order["price"] == order["avg_fill_price"] == Decimal(limit)
    assert order["remaining_quantity"] == 0
    assert ISO_MS.match(order["create_date"])
    assert ISO_MS.match(order["transaction_date"])
    assert type(order["id"]) is int


async def test_rest_answers_xml_without_accept_json(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    oid, _ = await limit_buy(http, tsim, "1")
    async with http.get(
        f"{tsim.http_url}/v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders/{oid}",
        headers={"Authorization": f"Bearer {TRADIER_DEMO_TOKEN}"},
    ) as r:
        assert r.content_type == "application/xml"
        root = ET.fromstring(await r.text())
    assert root.tag == "order"
    assert root.findtext("id") == str(oid)
    assert root.findtext("symbol") == "AAPL"


async def test_cancel_answers_ok_and_streams_canceled(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws, _ = await stream(http, tsim)
    low = str((price(tsim, "AAPL") * Decimal("0.5")).quantize(Decimal("0.01")))
    status, body = await place(
        http,
        tsim,
        symbol="AAPL",
        side="buy",
        quantity="1",
        type="limit",
        price=low,
        duration="gtc",
    )
    assert status == 200, body
    oid = body["order"]["id"]
    await order_events(ws, oid, "pending")  # open, then the late pending
    url = f"{tsim.http_url}/v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders/{oid}"
    async with http.delete(url, headers=auth()) as r:
        assert r.status == 200
        assert await r.json() == {"order": {"id": oid, "status": "ok"}}
    (canceled,) = await order_events(ws, oid, "canceled")
    assert canceled["remaining_quantity"] == 0
    assert canceled["exec_quantity"] == 0
    _, got = await get(http, tsim, f"/v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders/{oid}")
    assert got["order"]["status"] == "canceled"
    acct = tsim.tradier.accounts[TRADIER_DEMO_ACCOUNT]
    assert acct.reserved_cash == 0  # the reservation is released
    async with http.delete(url, headers=auth()) as r:
        assert r.status == 400
        assert len((await r.json())["errors"]["error"]) == 1
    async with http.delete(url.replace(str(oid), "999999999"), headers=auth()) as r:
        assert r.status == 404
    await ws.close()


@pytest.mark.parametrize(
    ("form", "problems"),
    [
        ({"side": "hold"}, ["side"]),
        ({"type": "trailing"}, ["type"]),
        ({"duration": "week"}, ["duration"]),
        ({"quantity": "1.5"}, ["quantity"]),
        ({"quantity": "0"}, ["quantity"]),
        ({"quantity": "abc"}, ["quantity"]),
        ({"symbol": "ZZZZ"}, ["symbol"]),
        ({"class": "bond"}, ["class"]),
        ({"class": "option"}, ["equity only"]),
        ({"type": "limit"}, ["price"]),
        ({"type": "limit", "price": "-1"}, ["price"]),
        ({"type": "limit", "price": "10.001"}, ["price"]),
        ({"type": "stop"}, ["stop"]),
        ({"type": "stop_limit", "price": "10"}, ["stop"]),
        ({"tag": "has_underscore"}, ["tag"]),
        ({"tag": "x" * 256}, ["tag"]),
        ({"side": "hold", "quantity": "-2", "tag": "no spaces"}, ["side", "quantity", "tag"]),
    ],
)
async def test_a_refused_order_is_400_with_every_error(
    tsim: SimExchange, http: aiohttp.ClientSession, form: dict[str, str], problems: list[str]
) -> None:
    fields = {"symbol": "AAPL", "side": "buy", "quantity": "1", "type": "market", **form}
    status, body = await place(http, tsim, **fields)
    assert status == 400
    assert set(body) == {"errors"}
    errors = body["errors"]["error"]
    assert isinstance(errors, list)
    assert len(errors) == len(problems), errors
    for problem, message in zip(problems, errors, strict=True):
        assert problem in message, (problem, message)
    assert tsim.tradier.accounts[TRADIER_DEMO_ACCOUNT].orders == {}


async def test_a_tag_of_255_letters_digits_and_dashes_is_accepted(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    tag = ("a-Z9" * 64)[:255]
    status, body = await place(
        http, tsim, symbol="AAPL", side="buy", quantity="1", type="market", tag=tag
    )
    assert status == 200, body


async def test_rest_refuses_bad_tokens_and_other_accounts(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    status, body = await place(
        http, tsim, token="bad", symbol="AAPL", side="buy", quantity="1", type="market"
    )
    assert (status, body) == (401, "Invalid Access Token")
    status, body = await place(
        http, tsim, "VA999999", symbol="AAPL", side="buy", quantity="1", type="market"
    )
    assert status == 401
    assert "VA999999" in body
    assert (await get(http, tsim, "/v1/accounts/VA000001/orders", token="bad"))[0] == 401
    assert (await get(http, tsim, "/v1/accounts/VA000001/orders/1", token="bad"))[0] == 401
    async with http.delete(f"{tsim.http_url}/v1/accounts/VA000001/orders/1") as r:
        assert r.status == 401
    assert (await get(http, tsim, "/v1/accounts/VA000001/orders/abc"))[0] == 400


async def test_in_process_orders_stream_like_rest_ones(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws, _ = await stream(http, tsim)
    order = await tsim.tradier.place_order(
        TRADIER_DEMO_ACCOUNT,
        symbol="AAPL",
        side="buy",
        quantity="1",
        type="market",
        duration="day",
    )
    await order_events(ws, order.id, "filled")
    assert order.status == "filled"
    await ws.close()


# -- faults ----------------------------------------------------------------------------


async def test_session_requests_fail_for_the_next_n(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    tsim.fail_tradier_sessions(503, count=2)
    before = tsim.tradier.session_requests
    for _ in range(2):
        async with http.post(f"{tsim.http_url}/v1/accounts/events/session", headers=auth()) as r:
            assert r.status == 503
    await new_session(http, tsim)  # the third works
    assert tsim.tradier.session_requests == before + 3


async def test_expire_sessions_now(tsim: SimExchange, http: aiohttp.ClientSession) -> None:
    streaming, _ = await stream(http, tsim)
    url, sid = await new_session(http, tsim)  # (ends the first socket: one per user)
    assert tsim.expire_tradier_sessions() == 1
    async with http.ws_connect(url) as ws:
        await payload(ws, sid)
        await refused_with_not_found(ws)
    await streaming.close()


async def test_expire_sessions_leaves_streaming_sockets(http: aiohttp.ClientSession) -> None:
    async with fast_sim(**TRADIER_FAST, tradier_new_session_ends_stream=False) as sim:
        ws, _ = await stream(http, sim)
        assert sim.expire_tradier_sessions() == 0
        await next_msg(ws, is_heartbeat)
        await ws.close()


async def test_slow_order_lookups(tsim: SimExchange, http: aiohttp.ClientSession) -> None:
    oid, _ = await limit_buy(http, tsim, "1")
    path = f"/v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders/{oid}"
    tsim.slow_tradier_lookups(0.3)
    t0 = time.monotonic()
    assert (await get(http, tsim, path))[0] == 200
    assert time.monotonic() - t0 >= 0.3
    t0 = time.monotonic()
    assert (await get(http, tsim, f"/v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders"))[0] == 200
    assert time.monotonic() - t0 < 0.3  # only the one order's look-up is slow
    tsim.heal_tradier_lookups()
    t0 = time.monotonic()
    assert (await get(http, tsim, path))[0] == 200
    assert time.monotonic() - t0 < 0.3


async def test_failing_order_lookups(tsim: SimExchange, http: aiohttp.ClientSession) -> None:
    oid, _ = await limit_buy(http, tsim, "1")
    path = f"/v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders/{oid}"
    tsim.fail_tradier_lookups(502, count=2)
    assert [(await get(http, tsim, path))[0] for _ in range(3)] == [502, 502, 200]
    tsim.fail_tradier_lookups(500)  # until healed
    assert [(await get(http, tsim, path))[0] for _ in range(3)] == [500, 500, 500]
    tsim.heal_tradier_lookups()
    assert (await get(http, tsim, path))[0] == 200
    with pytest.raises(ValueError, match="status"):
        tsim.fail_tradier_lookups(200)


async def test_failing_account_api(tsim: SimExchange, http: aiohttp.ClientSession) -> None:
    oid, _ = await limit_buy(http, tsim, "1")
    paths = (
        "/v1/user/profile",
        f"/v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders",
        f"/v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders/{oid}",
    )
    tsim.fail_tradier_rest(503)
    assert [(await get(http, tsim, p))[0] for p in paths] == [503, 503, 503]
    status, _ = await place(http, tsim, symbol="AAPL", side="buy", quantity="1", type="market")
    assert status == 503
    async with http.delete(
        f"{tsim.http_url}/v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders/{oid}", headers=auth()
    ) as r:
        assert r.status == 503
    await new_session(http, tsim)  # the stream's session requests still work
    tsim.heal_tradier_rest()
    assert [(await get(http, tsim, p))[0] for p in paths] == [200, 200, 200]
    tsim.fail_tradier_rest(502, count=2)
    assert [(await get(http, tsim, paths[1]))[0] for _ in range(3)] == [502, 502, 200]
    tsim.fail_tradier_rest(500, seconds=0.2)
    assert (await get(http, tsim, paths[0]))[0] == 500
    await anyio.sleep(0.25)
    assert (await get(http, tsim, paths[0]))[0] == 200
    with pytest.raises(ValueError, match="status"):
        tsim.fail_tradier_rest(302)


async def test_end_of_day_expires_day_orders_not_gtc(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws, _ = await stream(http, tsim)
    low = str((price(tsim, "AAPL") * Decimal("0.5")).quantize(Decimal("0.01")))
    ids = {}
    for duration in ("day", "gtc"):
        status, body = await place(
            http,
            tsim,
            symbol="AAPL",
            side="buy",
            quantity="1",
            type="limit",
            price=low,
            duration=duration,
        )
        assert status == 200, body
        ids[duration] = body["order"]["id"]
        await order_events(ws, ids[duration], "pending")
    assert tsim.tradier_end_of_day() == 1
    (expired,) = await order_events(ws, ids["day"], "expired")
    assert expired["remaining_quantity"] == 0
    _, gtc = await get(http, tsim, f"/v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders/{ids['gtc']}")
    assert gtc["order"]["status"] == "open"
    await ws.close()


async def test_generic_faults_reach_tradier_sockets(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    ws, _ = await stream(http, tsim)
    await next_msg(ws, is_heartbeat)
    # go silent, then resume
    assert tsim.go_silent() == 1
    await expect_quiet(ws, 0.3)
    tsim.resume()
    await next_msg(ws, is_heartbeat)
    # a malformed frame
    assert tsim.send_raw('{"event":') == 1
    with anyio.fail_after(2):
        while (await ws.receive()).data != '{"event":':
            pass
    # drop with a close code
    assert await tsim.drop_connections(1012) == 1
    with anyio.fail_after(2):
        while (end := await ws.receive()).type not in ENDED:
            pass
    assert ws.close_code == 1012
    await wait_for(lambda: tsim.open_connections() == [])
    # refused handshakes
    url, sid = await new_session(http, tsim)
    tsim.refuse_handshakes(503, count=1)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(url)
    assert info.value.status == 503
    async with http.ws_connect(url) as ws2:  # the session id was not used by the refusal
        await payload(ws2, sid)
        await next_msg(ws2, is_heartbeat)
        # a reset: no close frame
        assert await tsim.drop_connections() == 1
        end = await ws2.receive(timeout=2)
        assert end.type is not aiohttp.WSMsgType.CLOSE
    assert tsim.stats.handshakes_refused == 1


async def test_revoked_token_is_refused_and_restored(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    url, sid = await new_session(http, tsim)
    assert tsim.revoke_tradier_token(TRADIER_DEMO_TOKEN) == 1
    async with http.post(f"{tsim.http_url}/v1/accounts/events/session", headers=auth()) as r:
        assert r.status == 401
    async with http.ws_connect(url) as ws:
        await payload(ws, sid)
        await refused_with_not_found(ws)
    tsim.add_tradier_token(TRADIER_DEMO_TOKEN)
    ws, _ = await stream(http, tsim)
    oid, _ = await limit_buy(http, tsim, "1")
    await order_events(ws, oid, "filled")
    await ws.close()


async def test_admin_tradier_faults(tsim: SimExchange, http: aiohttp.ClientSession) -> None:
    session_url = f"{tsim.http_url}/v1/accounts/events/session"
    assert await admin(http, tsim, "tradier_session_fail", {"status": 500, "count": 1}) == (
        200,
        {"fault": "tradier_session_fail", "result": None},
    )
    async with http.post(session_url, headers=auth()) as r:
        assert r.status == 500
    await new_session(http, tsim)
    assert await admin(http, tsim, "tradier_expire") == (
        200,
        {"fault": "tradier_expire", "result": 1},
    )
    oid, _ = await limit_buy(http, tsim, "1")
    path = f"/v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders/{oid}"
    assert (await admin(http, tsim, "tradier_lookup_fail", {"status": 503}))[0] == 200
    assert (await get(http, tsim, path))[0] == 503
    assert (await admin(http, tsim, "tradier_lookup_ok"))[0] == 200
    assert (await admin(http, tsim, "tradier_lookup_slow", {"seconds": 0.2}))[0] == 200
    t0 = time.monotonic()
    assert (await get(http, tsim, path))[0] == 200
    assert time.monotonic() - t0 >= 0.2
    async with http.get(f"{tsim.http_url}/admin/state") as r:
        state = (await r.json())["tradier"]
    assert state["lookup_delay"] == 0.2
    assert (await admin(http, tsim, "tradier_lookup_ok"))[0] == 200
    assert (await admin(http, tsim, "tradier_rest_fail", {"status": 502, "count": 1}))[0] == 200
    async with http.get(f"{tsim.http_url}/admin/state") as r:
        assert (await r.json())["tradier"]["rest_fail"]["count_left"] == 1
    assert (await get(http, tsim, path))[0] == 502
    assert (await admin(http, tsim, "tradier_rest_fail", {"status": 503}))[0] == 200
    assert (await admin(http, tsim, "tradier_rest_ok"))[0] == 200
    assert (await get(http, tsim, path))[0] == 200
    assert (await admin(http, tsim, "tradier_end_of_day"))[1]["result"] in (0, 1)
    assert (await admin(http, tsim, "tradier_revoke", {"token": TRADIER_DEMO_TOKEN}))[0] == 200
    async with http.post(session_url, headers=auth()) as r:
        assert r.status == 401
    assert (await admin(http, tsim, "tradier_restore", {"token": TRADIER_DEMO_TOKEN}))[0] == 200
    await new_session(http, tsim)
    assert (await admin(http, tsim, "tradier_dance"))[0] == 404
    assert (await admin(http, tsim, "tradier_revoke", {}))[0] == 400
    assert (await admin(http, tsim, "tradier_session_fail", {"status": 200}))[0] == 400
    assert (await admin(http, tsim, "tradier_lookup_slow", {"seconds": -1}))[0] == 400


async def test_the_agentexchange_side_is_untouched(
    tsim: SimExchange, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(tsim.ws_url(DEMO_API_KEY)) as ws:
        assert await subscribe(ws, channel="orders") == {"type": "subscribed", "channel": "orders"}
    # A Tradier token is no AgentExchange key, and the reverse.
    async with http.get(
        f"{tsim.http_url}/api/v1/account/portfolio", headers={"X-API-Key": TRADIER_DEMO_TOKEN}
    ) as r:
        assert r.status == 401
    async with http.post(
        f"{tsim.http_url}/v1/accounts/events/session", headers=auth(DEMO_API_KEY)
    ) as r:
        assert r.status == 401


# -- agentstream serve -----------------------------------------------------------------


async def test_serve_has_the_tradier_routes_and_prints_the_demo_token(
    http: aiohttp.ClientSession,
) -> None:
    proc = await anyio.open_process(
        [sys.executable, "-m", "agentstream", "serve", "--port", "0"], cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        buf = ""
        with anyio.fail_after(5):
            async for chunk in proc.stdout:
                buf += chunk.decode()
                if buf.count("\n") >= 3:
                    break
        lines = buf.splitlines()
        assert TRADIER_DEMO_TOKEN in lines[2], lines
        assert TRADIER_DEMO_ACCOUNT in lines[2], lines
        match = re.search(r"base_url (http://127\.0\.0\.1:\d+)\s", lines[2])
        assert match, lines
        async with http.post(f"{match.group(1)}/v1/accounts/events/session", headers=auth()) as r:
            assert r.status == 200
            url = (await r.json())["stream"]["url"]
        assert url.startswith(match.group(1).replace("http://", "ws://"))
    finally:
        proc.terminate()
        with anyio.fail_after(5):
            await proc.wait()
        await proc.aclose()


async def test_the_user_profile_lists_the_tokens_accounts() -> None:
    """Third-party clients read the account numbers from ``GET /v1/user/profile``."""
    async with SimExchange(tick_rate=0) as sim, aiohttp.ClientSession() as http:
        url = f"{sim.http_url}/v1/user/profile"
        headers = {"Authorization": f"Bearer {TRADIER_DEMO_TOKEN}", "Accept": "application/json"}
        async with http.get(url, headers=headers) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["profile"]["account"]["account_number"] == TRADIER_DEMO_ACCOUNT
        async with http.get(url, headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 401
