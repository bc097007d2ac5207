"""AgentExchangeREST against the simulated exchange: typed orders, errors, the key masked."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from agentstream import AuthenticationError, OrderUpdate, Portfolio, RestError
from agentstream.rest import AgentExchangeREST
from agentstream.sim import DEMO_API_KEY, SimExchange

pytestmark = pytest.mark.anyio


async def test_place_read_list_cancel() -> None:
    async with (
        SimExchange(tick_rate=100, order_interval=0.02) as sim,
        AgentExchangeREST(DEMO_API_KEY, sim.url) as rest,  # the stream's ws:// URL works
    ):
        limit = await rest.place_order("ethusdt", "buy", "0.1", type="limit", price="100")
        assert isinstance(limit, OrderUpdate)
        assert (limit.symbol, limit.side, limit.type, limit.quantity) == (
            "ETHUSDT",
            "buy",
            "limit",
            Decimal("0.1"),
        )
        assert limit.price == Decimal("100")
        assert (await rest.get_order(limit.order_id)).order_id == limit.order_id
        assert limit.order_id in {o.order_id for o in await rest.open_orders()}
        assert limit.order_id in {o.order_id for o in await rest.all_orders()}
        cancelled = await rest.cancel_order(limit.order_id)
        assert cancelled.status == "cancelled"  # (the platform's detail has no cancelled_at)
        assert limit.order_id not in {o.order_id for o in await rest.open_orders()}
        assert isinstance(await rest.portfolio(), Portfolio)


async def test_errors_are_typed_and_the_key_is_masked(caplog: pytest.LogCaptureFixture) -> None:
    secret = "ak_live_0123456789abcdef_secret"
    async with SimExchange(tick_rate=0) as sim:
        async with AgentExchangeREST(DEMO_API_KEY, sim.http_url) as rest:
            with pytest.raises(RestError) as info:
                await rest.cancel_order("6f1f1a30-0000-4000-8000-000000000000")
            assert (info.value.status, info.value.code) == (404, "ORDER_NOT_FOUND")
            with pytest.raises(RestError) as info:
                await rest.cancel_order("no-such-order")  # not a UUID: FastAPI's 422
            assert info.value.status == 422
            with pytest.raises(RestError) as info:
                await rest.place_order("BTCUSDT", "buy", "-1")
            assert info.value.status == 422  # FastAPI's validation, as on the platform
        with caplog.at_level(logging.DEBUG):
            async with AgentExchangeREST(secret, sim.http_url) as rest:
                with pytest.raises(AuthenticationError) as auth:
                    await rest.open_orders()
        assert secret not in str(auth.value)
        assert secret not in repr(rest)
        assert all(secret not in r.getMessage() for r in caplog.records)
