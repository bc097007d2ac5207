"""Connecting: the endpoint, the API keys and both ways of refusing a bad key."""

from __future__ import annotations

from decimal import Decimal

import aiohttp
import pytest

from agentstream.sim import CLOSE_AUTH_FAILED, DEMO_API_KEY, PLACEHOLDER_API_KEY, SimExchange
from tests.sim.helpers import expect_end, fast_sim, recv_until, subscribe

pytestmark = pytest.mark.anyio


async def test_demo_key_works_out_of_the_box(session: aiohttp.ClientSession) -> None:
    async with SimExchange() as sim:  # default configuration
        assert sim.port > 0
        assert sim.url == f"ws://127.0.0.1:{sim.port}"
        url = f"{sim.url}/ws/v1?api_key={DEMO_API_KEY}"
        assert sim.ws_url() == url
        async with session.ws_connect(url) as ws:
            assert await subscribe(ws, channel="portfolio") == {
                "type": "subscribed",
                "channel": "portfolio",
            }


@pytest.mark.parametrize("query", ["?api_key=wrong", "?api_key=", "", "?key=" + DEMO_API_KEY])
async def test_bad_or_missing_key_is_refused_with_403(
    sim: SimExchange, session: aiohttp.ClientSession, query: str
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await session.ws_connect(f"{sim.url}/ws/v1{query}")
    assert info.value.status == 403
    assert sim.open_connections() == []


@pytest.mark.parametrize("query", ["?api_key=wrong", ""])
async def test_bad_key_in_close_mode_is_accepted_then_closed_with_4401(
    session: aiohttp.ClientSession, query: str
) -> None:
    async with (
        fast_sim(auth_failure="close") as sim,
        session.ws_connect(f"{sim.url}/ws/v1{query}") as ws,
    ):
        end = await expect_end(ws)
        assert end.type is aiohttp.WSMsgType.CLOSE
        assert end.data == CLOSE_AUTH_FAILED == 4401
        assert ws.close_code == 4401
        # and a good key still works in this mode
        async with session.ws_connect(sim.ws_url()) as good:
            assert (await subscribe(good, channel="orders"))["type"] == "subscribed"


async def test_configured_keys_each_have_their_own_account(
    session: aiohttp.ClientSession,
) -> None:
    keys = {"ak_alice": Decimal("5000"), "ak_bob": Decimal("250")}
    async with fast_sim(api_keys=keys) as sim:
        for key, cash in keys.items():
            async with session.get(
                f"{sim.http_url}/api/v1/account/portfolio", headers={"X-API-Key": key}
            ) as r:
                assert r.status == 200
                assert Decimal((await r.json())["available_cash"]) == cash
            async with session.ws_connect(sim.ws_url(key)) as ws:
                assert (await subscribe(ws, channel="portfolio"))["type"] == "subscribed"
        # the demo key is not accepted when the keys are configured without it
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(sim.ws_url(DEMO_API_KEY))
        assert info.value.status == 403


async def test_the_sdk_pages_placeholder_key_is_the_demo_account(
    session: aiohttp.ClientSession,
) -> None:
    """``ak_live_...`` as the page prints it reaches the demo key's account: its orders
    stream to the demo key's sockets, and the demo key's to its sockets."""
    assert PLACEHOLDER_API_KEY == "ak_live_..."
    async with (
        fast_sim() as sim,
        session.ws_connect(sim.ws_url(PLACEHOLDER_API_KEY)) as page,
        session.ws_connect(sim.ws_url(DEMO_API_KEY)) as demo,
    ):
        for ws in (page, demo):
            assert (await subscribe(ws, channel="orders"))["type"] == "subscribed"
        async with session.post(
            f"{sim.http_url}/api/v1/trade/order",
            headers={"X-API-Key": PLACEHOLDER_API_KEY},
            json={"symbol": "BTCUSDT", "side": "buy", "type": "market", "quantity": "0.01"},
        ) as r:
            assert r.status == 201, await r.text()
            order_id = (await r.json())["order_id"]
        for ws in (page, demo):
            await recv_until(
                ws, lambda m: m.get("channel") == "orders" and m["data"]["order_id"] == order_id
            )
        cash = sim.portfolio(DEMO_API_KEY)["available_cash"]
        assert Decimal(cash) < 10000
        assert sim.portfolio(PLACEHOLDER_API_KEY)["available_cash"] == cash
        assert list(sim.accounts) == [DEMO_API_KEY]  # one account, two names
        # Revoking the demo key refuses its other name too.
        await sim.revoke_key(DEMO_API_KEY)
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await session.ws_connect(sim.ws_url(PLACEHOLDER_API_KEY))


async def test_the_placeholder_key_is_refused_when_keys_are_configured(
    session: aiohttp.ClientSession,
) -> None:
    async with fast_sim(api_keys={"ak_alice": Decimal("5000")}) as sim:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(sim.ws_url(PLACEHOLDER_API_KEY))
        assert info.value.status == 403
    async with fast_sim(api_key_aliases={}) as sim:
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await session.ws_connect(sim.ws_url(PLACEHOLDER_API_KEY))


async def test_url_paths_other_than_ws_v1_are_not_the_endpoint(
    sim: SimExchange, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await session.ws_connect(f"{sim.url}/ws?api_key={DEMO_API_KEY}")
    assert info.value.status == 404
