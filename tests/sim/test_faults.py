"""Fault injection, as methods of SimExchange and over the loopback-only admin endpoint."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any, cast

import aiohttp
import anyio
import pytest

from agentstream.sim import CLOSE_AUTH_FAILED, DEMO_API_KEY, SimExchange
from agentstream.sim.server import is_loopback_address
from tests.sim.helpers import (
    ENDED,
    collect_for,
    expect_end,
    expect_quiet,
    fast_sim,
    is_control,
    on,
    recv_frame,
    recv_until,
    send,
    subscribe,
    wait_for,
)

pytestmark = pytest.mark.anyio

WS = aiohttp.ClientWebSocketResponse


async def ticking(session: aiohttp.ClientSession, sim: SimExchange, key: str = DEMO_API_KEY) -> WS:
    """A new WebSocket subscribed to ``ticker_all`` that has seen data flow."""
    ws = await session.ws_connect(sim.ws_url(key))
    await subscribe(ws, channel="ticker_all")
    await recv_until(ws, on("ticker"))
    return ws


async def admin(
    session: aiohttp.ClientSession, sim: SimExchange, fault: str, body: Any = None
) -> tuple[int, Any]:
    async with session.post(f"{sim.http_url}/admin/fault/{fault}", json=body) as r:
        return r.status, await r.json()


async def handshake_status(session: aiohttp.ClientSession, sim: SimExchange, key: str) -> int:
    """101 when the handshake succeeds (the socket is closed again), else the HTTP status."""
    try:
        ws = await session.ws_connect(sim.ws_url(key))
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


# -- drop_connections ------------------------------------------------------------------


async def test_drop_with_reset_sends_no_close_frame(
    sim: SimExchange, session: aiohttp.ClientSession
) -> None:
    ws = await ticking(session, sim)
    other = await ticking(session, sim)
    assert await sim.drop_connections() == 2
    for w in (ws, other):
        end = await expect_end(w)
        assert end.type is not aiohttp.WSMsgType.CLOSE  # no close frame: the TCP just died
        assert w.close_code == 1006
    await wait_for(lambda: sim.open_connections() == [])
    assert sim.connection_log[-1].close_reason == "dropped (reset)"
    # the server itself is fine: a new connection works
    ws3 = await ticking(session, sim)
    await ws3.close()


@pytest.mark.parametrize("code", [1000, 1001, 1011, 1012, 4000])
async def test_drop_with_a_close_code(
    sim: SimExchange, session: aiohttp.ClientSession, code: int
) -> None:
    ws = await ticking(session, sim)
    assert await sim.drop_connections(code, "bye") == 1
    end = await expect_end(ws)
    assert (end.type, end.data, end.extra) == (aiohttp.WSMsgType.CLOSE, code, "bye")
    assert ws.close_code == code
    await wait_for(lambda: sim.open_connections() == [])
    ws2 = await ticking(session, sim)
    await ws2.close()


async def test_drop_reaches_silent_connections_too(
    sim: SimExchange, session: aiohttp.ClientSession
) -> None:
    ws = await ticking(session, sim)
    assert sim.go_silent() == 1
    assert await sim.drop_connections(1012) == 1
    assert (await expect_end(ws)).data == 1012
    # Regression: the dropped silent connection stayed listed as open until resume().
    await wait_for(lambda: sim.open_connections() == [], 1.0)


# -- go_silent / resume ----------------------------------------------------------------


async def test_go_silent_stops_both_directions_but_keeps_tcp_open(
    session: aiohttp.ClientSession,
) -> None:
    async with fast_sim(ping_interval=0.1, pong_timeout=0.2) as sim:
        ws = await ticking(session, sim)
        assert sim.go_silent() == 1
        # Drain what was already on the wire (answering a ping, as a live client would),
        # then: nothing, not even pings.
        await collect_for(ws, 0.1)
        await expect_quiet(ws, 0.4)
        # The server does not read either: a subscribe is not processed.
        await send(ws, {"action": "subscribe", "channel": "orders"})
        await anyio.sleep(0.2)
        assert sim.subscriptions() == [{"ticker:all"}]
        (record,) = sim.open_connections()
        assert record.open and not ws.closed
        state = await admin_state(session, sim)
        assert [c["silent"] for c in state["connections"]] == [True]

        # New connections are served normally meanwhile.
        fresh = await ticking(session, sim)
        await subscribe(fresh, channel="portfolio")
        await fresh.close()

        sim.resume()
        # The same TCP connection comes back: the queued subscribe is read and acked,
        # data flows again, and the heartbeat does not drop the client.
        assert await recv_until(ws, is_control) == {"type": "subscribed", "channel": "orders"}
        await recv_until(ws, on("ticker"))
        assert sim.subscriptions() == [{"ticker:all", "orders"}]
        await recv_until(ws, lambda m: m.get("type") == "ping")  # answered by recv_until
        await recv_until(ws, lambda m: m.get("type") == "ping")
        assert not ws.closed
        await ws.close()


async def test_go_silent_for_some_seconds_resumes_by_itself(
    sim: SimExchange, session: aiohttp.ClientSession
) -> None:
    ws = await ticking(session, sim)
    t0 = time.monotonic()
    assert sim.go_silent(0.5) == 1
    await collect_for(ws, 0.05)
    await expect_quiet(ws, 0.2)
    await recv_until(ws, on("ticker"), timeout=2.0)
    assert 0.45 <= time.monotonic() - t0 <= 2.0
    await ws.close()


async def test_a_silent_client_that_leaves_is_forgotten_after_resume(
    sim: SimExchange, session: aiohttp.ClientSession
) -> None:
    ws = await session.ws_connect(sim.ws_url(), timeout=aiohttp.ClientWSTimeout(ws_close=0.1))
    await subscribe(ws, channel="ticker_all")
    sim.go_silent()
    await ws.close()  # its close frame is not read by the silent server: gives up after 0.1 s
    await anyio.sleep(0.1)
    assert len(sim.open_connections()) == 1
    sim.resume()
    await wait_for(lambda: sim.open_connections() == [])


# -- send_raw ----------------------------------------------------------------------------


async def test_send_raw_text_frame_as_is(sim: SimExchange, session: aiohttp.ClientSession) -> None:
    ws = await session.ws_connect(sim.ws_url())
    assert sim.send_raw('{"channel":"ticker","data":') == 1
    msg = await recv_frame(ws)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, '{"channel":"ticker","data":')
    sim.send_raw(b'{"channel":"nope"}')
    msg = await recv_frame(ws)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, '{"channel":"nope"}')
    # the connection carries on afterwards
    assert (await subscribe(ws, channel="orders"))["type"] == "subscribed"
    await ws.close()


async def test_send_raw_binary_frame(sim: SimExchange, session: aiohttp.ClientSession) -> None:
    ws = await session.ws_connect(sim.ws_url())
    payload = b"\x00\x01\xffbinary\x80"
    assert sim.send_raw(payload, binary=True) == 1
    msg = await recv_frame(ws)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, payload)
    assert (await subscribe(ws, channel="orders"))["type"] == "subscribed"
    await ws.close()


async def test_send_raw_invalid_utf8_text_frame(
    sim: SimExchange, session: aiohttp.ClientSession
) -> None:
    ws = await session.ws_connect(sim.ws_url())
    sim.send_raw(b'{"type":"\xff\xfe"}', binary=False)
    msg = await recv_frame(ws)
    # A conforming client must refuse it: aiohttp reports an error and closes with 1007.
    assert msg.type in ENDED
    assert ws.close_code == 1007
    await wait_for(lambda: sim.open_connections() == [])


# -- refuse_handshakes / accept_handshakes ----------------------------------------------


async def test_refuse_handshakes_until_accepted(
    sim: SimExchange, session: aiohttp.ClientSession
) -> None:
    sim.refuse_handshakes(503)
    for _ in range(3):
        assert await handshake_status(session, sim, DEMO_API_KEY) == 503
    sim.accept_handshakes()
    assert await handshake_status(session, sim, DEMO_API_KEY) == 101
    assert sim.stats.handshakes_refused == 3


async def test_refuse_handshakes_with_count(
    sim: SimExchange, session: aiohttp.ClientSession
) -> None:
    existing = await ticking(session, sim)
    sim.refuse_handshakes(429, count=2)
    statuses = [await handshake_status(session, sim, DEMO_API_KEY) for _ in range(4)]
    assert statuses == [429, 429, 101, 101]
    await recv_until(existing, on("ticker"))  # open connections are unaffected
    await existing.close()


async def test_refuse_handshakes_for_seconds(
    sim: SimExchange, session: aiohttp.ClientSession
) -> None:
    sim.refuse_handshakes(502, seconds=0.3)
    t0 = time.monotonic()
    assert await handshake_status(session, sim, DEMO_API_KEY) == 502
    assert await handshake_status(session, sim, DEMO_API_KEY) == 502
    await anyio.sleep(max(0.0, 0.35 - (time.monotonic() - t0)))
    assert await handshake_status(session, sim, DEMO_API_KEY) == 101


# -- fail_rest / heal_rest ---------------------------------------------------------------


async def rest_status(session: aiohttp.ClientSession, sim: SimExchange, path: str) -> int:
    async with session.get(f"{sim.http_url}{path}", headers={"X-API-Key": DEMO_API_KEY}) as r:
        await r.read()
        return r.status


async def test_fail_rest_until_healed(sim: SimExchange, session: aiohttp.ClientSession) -> None:
    existing = await ticking(session, sim)
    sim.fail_rest(503)
    async with session.get(
        f"{sim.http_url}/api/v1/trade/orders", headers={"X-API-Key": DEMO_API_KEY}
    ) as r:
        assert r.status == 503
        body = await r.json()
    assert body["error"]["code"] == "SERVICE_UNAVAILABLE"
    for path in ("/api/v1/trade/orders/open", "/api/v1/market/price/BTCUSDT"):
        assert await rest_status(session, sim, path) == 503
    # The socket, the health check, the admin and in-process calls are not affected.
    assert await handshake_status(session, sim, DEMO_API_KEY) == 101
    await recv_until(existing, on("ticker"))
    assert await rest_status(session, sim, "/health") == 200
    placed = await sim.place_order(
        DEMO_API_KEY, symbol="BTCUSDT", side="buy", type="market", quantity="0.001"
    )
    assert placed["status"] == "filled"
    sim.heal_rest()
    assert await rest_status(session, sim, f"/api/v1/trade/order/{placed['order_id']}") == 200
    await existing.close()


async def test_fail_rest_for_a_count_or_seconds(
    sim: SimExchange, session: aiohttp.ClientSession
) -> None:
    path = "/api/v1/trade/orders"
    sim.fail_rest(502, count=2)
    assert [await rest_status(session, sim, path) for _ in range(3)] == [502, 502, 200]
    sim.fail_rest(500, seconds=0.3)
    t0 = time.monotonic()
    assert await rest_status(session, sim, path) == 500
    await anyio.sleep(max(0.0, 0.35 - (time.monotonic() - t0)))
    assert await rest_status(session, sim, path) == 200
    for bad in ({"status": 200}, {"seconds": 0}, {"count": 0}):
        with pytest.raises(ValueError, match="must"):
            sim.fail_rest(**bad)
    assert await rest_status(session, sim, path) == 200  # a refused call changed nothing


async def test_admin_rest_fail_and_ok(sim: SimExchange, session: aiohttp.ClientSession) -> None:
    path = "/api/v1/account/balance"
    assert await admin(session, sim, "rest_fail", {"status": 504, "count": 5}) == (
        200,
        {"fault": "rest_fail", "result": None},
    )
    assert (await admin_state(session, sim))["rest_failing"] == {
        "status": 504,
        "seconds_left": None,
        "count_left": 5,
    }
    assert await rest_status(session, sim, path) == 504
    assert (await admin(session, sim, "rest_ok"))[0] == 200
    assert (await admin_state(session, sim))["rest_failing"] is None
    assert await rest_status(session, sim, path) == 200
    assert (await admin(session, sim, "rest_fail", {"status": 200}))[0] == 400
    assert (await admin(session, sim, "rest_fail", {"seconds": "x"}))[0] == 400
    assert await rest_status(session, sim, path) == 200


# -- revoke_key / add_key ----------------------------------------------------------------


async def test_revoke_key_closes_with_4401_then_refuses_with_403(
    sim: SimExchange, session: aiohttp.ClientSession
) -> None:
    sim.add_key("ak_other")
    mine = await ticking(session, sim)
    other = await ticking(session, sim, "ak_other")
    assert await sim.revoke_key(DEMO_API_KEY) == 1
    end = await expect_end(mine)
    assert (end.type, end.data) == (aiohttp.WSMsgType.CLOSE, CLOSE_AUTH_FAILED)
    assert mine.close_code == 4401
    assert await handshake_status(session, sim, DEMO_API_KEY) == 403
    async with session.get(
        f"{sim.http_url}/api/v1/account/portfolio", headers={"X-API-Key": DEMO_API_KEY}
    ) as r:
        assert r.status == 401
    # other keys are untouched
    await recv_until(other, on("ticker"))
    await other.close()
    # add_key restores it
    sim.add_key(DEMO_API_KEY)
    assert await handshake_status(session, sim, DEMO_API_KEY) == 101


async def test_revoked_key_in_close_mode_is_accepted_then_closed(
    session: aiohttp.ClientSession,
) -> None:
    async with fast_sim(auth_failure="close") as sim:
        await sim.revoke_key(DEMO_API_KEY)
        async with session.ws_connect(sim.ws_url()) as ws:
            end = await expect_end(ws)
            assert (end.type, end.data) == (aiohttp.WSMsgType.CLOSE, 4401)


async def test_add_key_gives_a_new_account(
    sim: SimExchange, session: aiohttp.ClientSession
) -> None:
    assert await handshake_status(session, sim, "ak_new") == 403
    sim.add_key("ak_new", cash="1234.5")
    ws = await session.ws_connect(sim.ws_url("ak_new"))
    await subscribe(ws, channel="portfolio")
    async with session.get(
        f"{sim.http_url}/api/v1/account/portfolio", headers={"X-API-Key": "ak_new"}
    ) as r:
        assert Decimal((await r.json())["available_cash"]) == Decimal("1234.5")
    await ws.close()


# -- stop / start / restart --------------------------------------------------------------


async def test_stop_and_start_on_the_same_port_keeps_the_state(
    sim: SimExchange, session: aiohttp.ClientSession
) -> None:
    port = sim.port
    headers = {"X-API-Key": DEMO_API_KEY}
    async with session.post(
        f"{sim.http_url}/api/v1/trade/order",
        json={"symbol": "BTCUSDT", "side": "buy", "type": "market", "quantity": "0.01"},
        headers=headers,
    ) as r:
        assert r.status == 201
        oid = (await r.json())["order_id"]
    ws = await ticking(session, sim)
    await sim.stop()
    await wait_for(lambda: not sim.running, 0.1)
    await expect_end(ws)
    with pytest.raises(aiohttp.ClientConnectorError):
        await session.ws_connect(sim.ws_url())
    await sim.start()
    assert sim.running and sim.port == port
    ws2 = await ticking(session, sim)
    async with session.get(f"{sim.http_url}/api/v1/trade/order/{oid}", headers=headers) as r:
        assert r.status == 200
    await ws2.close()


async def test_restart_with_downtime(sim: SimExchange, session: aiohttp.ClientSession) -> None:
    port = sim.port
    ws = await ticking(session, sim)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sim.restart, 0.4)
        await expect_end(ws)
        await anyio.sleep(0.1)
        with pytest.raises(aiohttp.ClientConnectorError):  # down
            await session.ws_connect(sim.ws_url())
    assert sim.port == port
    ws2 = await ticking(session, sim)  # up again, same port
    await ws2.close()


# -- the admin endpoint ------------------------------------------------------------------


async def admin_state(session: aiohttp.ClientSession, sim: SimExchange) -> dict[str, Any]:
    async with session.get(f"{sim.http_url}/admin/state") as r:
        assert r.status == 200
        return cast("dict[str, Any]", await r.json())


async def test_admin_state(sim: SimExchange, session: aiohttp.ClientSession) -> None:
    ws = await ticking(session, sim)
    state = await admin_state(session, sim)
    assert state["refusing"] is None
    assert state["stats"]["connections_opened"] == 1
    assert state["stats"]["ticks"] > 0
    assert state["connections"] == [
        {"id": sim.open_connections()[0].id, "subscriptions": ["ticker:all"], "silent": False}
    ]
    await ws.close()


@pytest.mark.parametrize("code", [1001, 1012])
async def test_admin_drop_with_code(
    sim: SimExchange, session: aiohttp.ClientSession, code: int
) -> None:
    ws = await ticking(session, sim)
    assert await admin(session, sim, "drop", {"code": code}) == (
        200,
        {"fault": "drop", "result": 1},
    )
    assert (await expect_end(ws)).data == code


async def test_admin_drop_with_reset(sim: SimExchange, session: aiohttp.ClientSession) -> None:
    ws = await ticking(session, sim)
    assert (await admin(session, sim, "drop"))[0] == 200
    assert (await expect_end(ws)).type is not aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1006


async def test_admin_silence_and_resume(sim: SimExchange, session: aiohttp.ClientSession) -> None:
    ws = await ticking(session, sim)
    assert await admin(session, sim, "silence", {}) == (200, {"fault": "silence", "result": 1})
    await collect_for(ws, 0.1)
    await expect_quiet(ws, 0.3)
    assert (await admin(session, sim, "resume"))[0] == 200
    await recv_until(ws, on("ticker"))
    # with seconds: resumes by itself
    assert (await admin(session, sim, "silence", {"seconds": 0.2}))[0] == 200
    await collect_for(ws, 0.05)
    await recv_until(ws, on("ticker"), timeout=2.0)
    await ws.close()


async def test_admin_malformed(sim: SimExchange, session: aiohttp.ClientSession) -> None:
    ws = await session.ws_connect(sim.ws_url())
    assert await admin(session, sim, "malformed", {}) == (200, {"fault": "malformed", "result": 1})
    msg = await recv_frame(ws)
    assert msg.type is aiohttp.WSMsgType.TEXT
    with pytest.raises(json.JSONDecodeError):
        json.loads(msg.data)
    await admin(session, sim, "malformed", {"payload": "hello", "binary": True})
    msg = await recv_frame(ws)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, b"hello")
    await ws.close()


async def test_admin_refuse_and_accept(sim: SimExchange, session: aiohttp.ClientSession) -> None:
    assert (await admin(session, sim, "refuse", {"status": 503}))[0] == 200
    assert (await admin_state(session, sim))["refusing"] == 503
    assert await handshake_status(session, sim, DEMO_API_KEY) == 503
    assert (await admin(session, sim, "accept"))[0] == 200
    assert await handshake_status(session, sim, DEMO_API_KEY) == 101
    assert (await admin(session, sim, "refuse", {"status": 500, "count": 1}))[0] == 200
    assert await handshake_status(session, sim, DEMO_API_KEY) == 500
    assert await handshake_status(session, sim, DEMO_API_KEY) == 101
    assert (await admin(session, sim, "refuse", {"seconds": 0.2}))[0] == 200
    assert await handshake_status(session, sim, DEMO_API_KEY) == 503  # the default status
    await anyio.sleep(0.25)
    assert await handshake_status(session, sim, DEMO_API_KEY) == 101


async def test_admin_revoke_and_restore(sim: SimExchange, session: aiohttp.ClientSession) -> None:
    ws = await ticking(session, sim)
    assert await admin(session, sim, "revoke", {"api_key": DEMO_API_KEY}) == (
        200,
        {"fault": "revoke", "result": 1},
    )
    assert (await expect_end(ws)).data == 4401
    assert await handshake_status(session, sim, DEMO_API_KEY) == 403
    assert (await admin(session, sim, "restore", {"api_key": DEMO_API_KEY}))[0] == 200
    assert await handshake_status(session, sim, DEMO_API_KEY) == 101
    assert sim.accounts[DEMO_API_KEY].starting_cash == Decimal(10000)


async def test_admin_restart(sim: SimExchange, session: aiohttp.ClientSession) -> None:
    port = sim.port
    ws = await ticking(session, sim)
    assert (await admin(session, sim, "restart", {"downtime": 0.3}))[0] == 200
    await expect_end(ws)
    await wait_for(lambda: not sim.running, 1.0)
    with pytest.raises(aiohttp.ClientConnectorError):
        await session.ws_connect(sim.ws_url())
    await wait_for(lambda: sim.running, 2.0)
    assert sim.port == port
    ws2 = await ticking(session, sim)
    await ws2.close()


@pytest.mark.parametrize(
    ("fault", "body", "status"),
    [
        ("explode", {}, 404),
        ("revoke", {}, 400),  # api_key missing
        ("refuse", {"status": "x"}, 400),
        ("drop", [1012], 400),  # not an object
    ],
)
async def test_admin_bad_requests(
    sim: SimExchange, session: aiohttp.ClientSession, fault: str, body: Any, status: int
) -> None:
    ws = await ticking(session, sim)
    code, reply = await admin(session, sim, fault, body)
    assert code == status
    assert isinstance(reply["error"], str) and reply["error"]
    await recv_until(ws, on("ticker"))  # nothing happened
    assert (await admin_state(session, sim))["refusing"] is None
    await ws.close()


@pytest.mark.parametrize(
    ("remote", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.5", False),
        ("192.168.1.2", False),
        ("203.0.113.7", False),
        ("::ffff:10.0.0.5", False),
        ("fe80::1%eth0", False),
        ("", False),
        (None, False),
        ("localhost", False),  # a peer address is never a name
        ("not an address", False),
    ],
)
def test_admin_loopback_check(remote: str | None, allowed: bool) -> None:
    # Only loopback traffic is allowed on this machine, so the refusal path is shown on
    # the pure check rather than by connecting from a non-loopback address.
    assert is_loopback_address(remote) is allowed


async def test_admin_answers_loopback_clients(session: aiohttp.ClientSession) -> None:
    async with fast_sim() as sim, session.get(f"http://127.0.0.1:{sim.port}/admin/state") as r:
        assert r.status == 200


async def test_a_pending_restart_does_not_revive_a_closed_sim(
    session: aiohttp.ClientSession,
) -> None:
    # Regression: closing the sim during an admin restart's downtime brought it back up.
    sim = fast_sim()
    await sim.start()
    try:
        assert (await admin(session, sim, "restart", {"downtime": 0.2}))[0] == 200
        await wait_for(lambda: not sim.running, 1.0)
        await sim.close()
        await anyio.sleep(0.4)
        assert not sim.running
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.ws_connect(sim.ws_url())
    finally:
        await sim.close()
