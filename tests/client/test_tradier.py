"""TradierStream against the simulated exchange's Tradier front-end: every supervisor rule.

A fresh session before every socket; "session not found" and dropped sockets are not
authentication failures; 401 stops after one request; 5xx and black holes are retried;
statuses arrive as sent; orders are looked up once, and a slow or failing look-up never
holds events back for long.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import pytest

from agentstream import AuthenticationError
from agentstream.sim import TRADIER_DEMO_ACCOUNT, TRADIER_DEMO_TOKEN, SimExchange
from agentstream.tradier import TradierOrder, TradierStream

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
}
SIM: dict[str, Any] = {
    "tick_rate": 200,
    "order_interval": 0.02,
    "tradier_heartbeat_interval": 0.1,
}


@pytest.fixture
async def sim() -> AsyncIterator[SimExchange]:
    async with SimExchange(**SIM) as s:
        yield s


def stream(sim: SimExchange, **options: Any) -> TradierStream:
    return TradierStream(token=TRADIER_DEMO_TOKEN, base_url=sim.http_url, **{**FAST, **options})


async def place(sim: SimExchange, **form: str) -> int:
    """An order over the sim's Tradier REST API (form-encoded, as Tradier's)."""
    data = {"class": "equity", "duration": "day", **form}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{sim.http_url}/v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders",
            data=data,
            headers={"Authorization": f"Bearer {TRADIER_DEMO_TOKEN}", "Accept": "application/json"},
        ) as resp,
    ):
        body = await resp.json()
        assert resp.status == 200, body
        oid = body["order"]["id"]
        assert isinstance(oid, int)
        return oid


def market(symbol: str = "AAPL", side: str = "buy", quantity: str = "2") -> dict[str, str]:
    return {"symbol": symbol, "side": side, "quantity": quantity, "type": "market"}


async def test_order_events_reach_dict_and_typed_handlers_enriched(sim: SimExchange) -> None:
    ws = stream(sim)
    plain: list[dict[str, Any]] = []
    typed: list[TradierOrder] = []

    def on_typed(o: TradierOrder) -> None:
        typed.append(o)

    ws.on_order_update(plain.append)
    ws.on_order_update(on_typed)
    async with running(ws):
        await wait_for(lambda: ws.stats.connections == 1)
        oid = await place(sim, **market("AAPL", "buy", "2"))
        await wait_for(lambda: any(o.status == "filled" for o in typed), what="the fill")
        await wait_for(lambda: ws.stats.heartbeats >= 2, what="heartbeats")
        assert len(plain) == len(typed)
    assert {o.id for o in typed} == {oid}
    filled = next(o for o in typed if o.status == "filled")
    assert (filled.symbol, filled.side, filled.quantity) == ("AAPL", "buy", Decimal("2"))
    assert filled.exec_quantity == Decimal("2")
    assert filled.account == TRADIER_DEMO_ACCOUNT
    assert filled.transaction_date is not None and filled.transaction_date.tzinfo is not None
    d = next(d for d in plain if d["status"] == "filled")
    assert (d["id"], d["symbol"], d["side"], d["quantity"]) == (oid, "AAPL", "buy", 2.0)
    assert isinstance(d["exec_quantity"], float)  # the event's own JSON numbers
    # Heartbeats never reach the order handlers; each event once.
    assert all(d.get("event") == "order" for d in plain)
    assert len({(o.id, o.status) for o in typed}) == len(typed)
    assert ws.enrichment["lookups"] == 1  # one look-up for every event of the order


async def test_statuses_are_delivered_as_received_never_reordered(sim: SimExchange) -> None:
    # The sim sends `open` before `pending`, as Tradier's own documentation shows.
    ws = stream(sim, enrich=False)
    got: list[str] = []
    ws.on_order_update(lambda d: got.append(d["status"]))
    async with running(ws):
        await wait_for(lambda: ws.stats.connections == 1)
        await place(sim, **market())
        await wait_for(lambda: "filled" in got)
    assert got[:2] == ["open", "pending"]
    assert ws.enrichment["lookups"] == 0


async def test_a_dropped_socket_gets_a_fresh_session(sim: SimExchange) -> None:
    ws = stream(sim)
    got: list[dict[str, Any]] = []
    ws.on_order_update(got.append)
    async with running(ws):
        await wait_for(lambda: ws.stats.connections == 1)
        assert await sim.drop_connections() == 1
        await wait_for(lambda: ws.stats.reconnects == 1 and ws.stats.connections == 1)
        await place(sim, **market())
        await wait_for(lambda: any(d["status"] == "filled" for d in got))
    assert ws.error is None
    # A fresh session for the new socket: the sim refuses a used session id.
    assert sim.tradier.session_requests == 2


async def test_session_not_found_is_not_an_authentication_failure() -> None:
    # Sessions expire before any socket can use them: every socket is told
    # "session not found"; the stream makes a new session each time and goes on.
    async with SimExchange(**SIM, tradier_session_ttl=0.0) as sim:
        ws = stream(sim)
        reasons: list[str] = []
        ws.on_disconnect(reasons.append)
        ws.on_order_update(lambda d: None)
        async with running(ws):
            await wait_for(lambda: len(reasons) >= 3, what="three sessions refused")
            assert ws.error is None
        assert set(reasons) == {"session not found"}


async def test_a_refused_token_stops_after_one_request(
    sim: SimExchange, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "not-a-real-token-0123456789"
    ws = TradierStream(token=secret, base_url=sim.http_url, **FAST)
    ws.on_order_update(lambda d: None)
    with caplog.at_level(logging.DEBUG), pytest.raises(AuthenticationError) as info:
        await ws.connect()
    assert info.value.status == 401
    assert sim.tradier.session_requests == 1
    text = " ".join(r.getMessage() for r in caplog.records)
    assert secret not in str(info.value)
    assert secret not in text
    assert secret not in repr(ws)


async def test_5xx_on_the_session_request_is_retried(sim: SimExchange) -> None:
    sim.fail_tradier_sessions(503, count=2)
    ws = stream(sim)
    errors: list[BaseException] = []
    ws.on_error(lambda exc, ctx: errors.append(exc))
    ws.on_order_update(lambda d: None)
    async with running(ws):
        await wait_for(lambda: ws.stats.connections == 1)
    assert ws.stats.failed_attempts == 2
    assert len(errors) == 2


async def test_a_black_hole_is_replaced(sim: SimExchange) -> None:
    ws = stream(sim, stale_timeout=0.4)
    ws.on_order_update(lambda d: None)
    async with running(ws):
        await wait_for(lambda: ws.stats.heartbeats >= 1)
        assert sim.go_silent() == 1
        await wait_for(lambda: ws.stats.reconnects >= 1, what="the silent socket replaced")
        before = ws.stats.heartbeats
        await wait_for(lambda: ws.stats.heartbeats > before, what="heartbeats again")


async def test_a_slow_look_up_holds_its_order_for_a_second_at_most(sim: SimExchange) -> None:
    sim.slow_tradier_lookups(3.0)
    ws = stream(sim)
    got: list[dict[str, Any]] = []
    ws.on_order_update(got.append)
    async with running(ws):
        await wait_for(lambda: ws.stats.connections == 1)
        oid = await place(sim, **market())
        # Delivered without the fields long before the 3 s look-up could answer.
        await wait_for(lambda: any(d["status"] == "filled" for d in got), timeout=2.5)
        assert ws.enrichment["late"] >= 1
    mine = [d for d in got if d["id"] == oid]
    assert all(d["symbol"] is None for d in mine)
    assert [d["status"] for d in mine][-1] == "filled"


async def test_a_failing_look_up_delivers_without_the_fields_and_is_counted(
    sim: SimExchange,
) -> None:
    sim.fail_tradier_lookups(503)
    ws = stream(sim)
    got: list[dict[str, Any]] = []
    errors: list[tuple[BaseException, dict[str, Any]]] = []
    ws.on_error(lambda exc, ctx: errors.append((exc, ctx)))
    ws.on_order_update(got.append)
    async with running(ws):
        await wait_for(lambda: ws.stats.connections == 1)
        oid = await place(sim, **market())
        await wait_for(lambda: any(d["status"] == "filled" for d in got))
        assert ws.enrichment["failed"] >= 1
    assert all(d["symbol"] is None and d["quantity"] is None for d in got)
    assert any(ctx == {"stage": "enrich", "order": oid} for _, ctx in errors)


async def test_listen_and_async_with(sim: SimExchange) -> None:
    ws = stream(sim)
    got: list[TradierOrder] = []
    with anyio.fail_after(10):
        async with ws:
            oid = await place(sim, **market("MSFT", "sell", "1"))  # not held: rejected
            async for o in ws.listen(TradierOrder):
                got.append(o)
                if o.status in ("filled", "rejected"):
                    break
    assert {o.id for o in got} == {oid}
    assert got[-1].status == "rejected"
    assert (got[-1].symbol, got[-1].side) == ("MSFT", "sell")


async def test_order_updates_missed_while_disconnected_are_recovered(sim: SimExchange) -> None:
    ws = stream(sim)
    got: list[TradierOrder] = []

    def on_order(o: TradierOrder) -> None:
        got.append(o)

    ws.on_order_update(on_order)
    async with running(ws):
        await wait_for(lambda: ws.stats.connections == 1)
        sim.refuse_handshakes(503)
        await sim.drop_connections()
        await wait_for(lambda: ws.stats.failed_attempts >= 1, what="kept out")
        oid = await place(sim, **market("NVDA", "buy", "1"))
        await anyio.sleep(0.3)  # filled while nobody listens
        sim.accept_handshakes()
        await wait_for(lambda: any(o.id == oid and o.status == "filled" for o in got))
    final = [o for o in got if o.id == oid and o.status == "filled"]
    assert len(final) == 1
    assert final[0].recovered is True
    assert (final[0].symbol, final[0].side) == ("NVDA", "buy")  # read over REST
    assert ws.stats.recovered_orders >= 1
