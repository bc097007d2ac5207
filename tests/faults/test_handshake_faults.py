"""Handshake faults: refused with 401/403 (fatal) or 5xx (retried), never answered, and
accepted-then-closed with 4401/1008 (fatal), at the first connection or mid-stream.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING

import anyio
import pytest

from agentstream import AuthenticationError, HandshakeError, StreamConnectionError
from tests.client.conftest import running, wait_for
from tests.faults.conftest import Hooks, watched
from tests.faults.servers import ScriptedServer

if TYPE_CHECKING:
    from agentstream import AgentExchangeWS

pytestmark = pytest.mark.anyio

#: A distinctive key: the secret audit (tests/conftest.py) fails the test if it is logged.
KEY = "ak_live_FAULTSUITE0123456789abcdefABCD"
#: Twelve channels: two connections' worth, yet a rejected key must cost one handshake.
_BASES = ["BTC", "ETH", "SOL", "XRP", "ADA", "DOGE", "DOT", "LTC", "BNB", "TRX", "AVAX", "LINK"]
MANY = [f"ticker:{base}USDT" for base in _BASES]
WANTED = ["ticker:BTCUSDT", "ticker:ETHUSDT", "orders"]


def _assert_fatal_and_quiet(ws: AgentExchangeWS, hooks: Hooks, exc: AuthenticationError) -> None:
    assert ws.error is exc
    assert ws.stats.state == "failed"
    assert hooks.errors == []  # a fatal error is raised, not passed to on_error
    assert hooks.disconnects == []
    assert KEY not in str(exc)
    assert KEY not in repr(ws)


@pytest.mark.parametrize("status", [401, 403])
async def test_handshake_refused_as_unauthorized_is_fatal_after_one_attempt(status: int) -> None:
    async with ScriptedServer(status=status) as server:
        ws, _, hooks = watched(server.url, MANY, KEY)
        with anyio.fail_after(5), pytest.raises(AuthenticationError) as info:
            await ws.connect()
        await anyio.sleep(0.3)  # a retry (first backoff step: 0.02 s) would have come by now
        assert len(server.handshakes) == 1
    assert (info.value.status, info.value.close_code) == (status, None)
    assert "api_key=***" in str(info.value)
    assert hooks.connects == 0
    _assert_fatal_and_quiet(ws, hooks, info.value)


async def _refused_after_accepting(code: int, channels: list[str]) -> int:
    """Run a client against a server that accepts, then closes with ``code``: handshakes."""
    async with ScriptedServer(close_code=code) as server:
        ws, _, hooks = watched(server.url, channels, KEY)
        with anyio.fail_after(5), pytest.raises(AuthenticationError) as info:
            await ws.connect()
        await anyio.sleep(0.3)
        handshakes = len(server.handshakes)
    assert (info.value.status, info.value.close_code) == (None, code)
    _assert_fatal_and_quiet(ws, hooks, info.value)
    return handshakes


@pytest.mark.parametrize("code", [4401, 1008])
async def test_close_after_accepting_as_unauthorized_is_fatal_after_one_attempt(code: int) -> None:
    assert await _refused_after_accepting(code, WANTED) == 1


@pytest.mark.parametrize("code", [4401, 1008])
async def test_close_after_accepting_costs_one_handshake_with_many_channels(code: int) -> None:
    assert await _refused_after_accepting(code, MANY) == 1


async def test_policy_violation_close_mid_stream_is_fatal() -> None:
    async with ScriptedServer(data_every=0.02) as server:
        ws, got, hooks = watched(server.url, WANTED, KEY)

        async def close_later() -> None:
            await wait_for(lambda: len(got) > 3, what="data before the close")
            await server.close_all(1008, "policy violation")

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(close_later)
                with pytest.raises(AuthenticationError) as info:
                    await ws.connect()
        await anyio.sleep(0.3)
        assert len(server.handshakes) == 1
    assert info.value.close_code == 1008
    assert hooks.connects == 1
    _assert_fatal_and_quiet(ws, hooks, info.value)


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_handshakes_are_retried_on_the_backoff_schedule(status: int) -> None:
    async with ScriptedServer(status=status, refusals=3, data_every=0.02) as server:
        ws, got, hooks = watched(server.url, WANTED, backoff_initial=0.05, backoff_max=0.4)
        async with running(ws):
            await wait_for(lambda: len(got) > 3, what="data after the refusals")
            stats = ws.stats
        [conn] = server.connections
    assert [h.status for h in server.handshakes] == [status, status, status, 101]
    for gap, delay in zip(server.gaps(), [0.05, 0.1, 0.2], strict=True):
        assert delay * 0.9 <= gap <= delay + 0.25, server.gaps()
    refused = hooks.of(HandshakeError)
    assert [e.status for e, _ in refused] == [status] * 3
    assert all(ctx == {"link": 0, "stage": "connect"} for _, ctx in refused)
    assert len(hooks.errors) == 3
    assert (stats.failed_attempts, stats.reconnects, hooks.connects) == (3, 0, 1)
    assert hooks.disconnects == []
    assert Counter(conn.subscribes) == Counter(WANTED)


async def test_handshake_that_never_completes_times_out_and_is_retried() -> None:
    timeout = 0.3
    async with ScriptedServer(hang=True) as server:
        ws, got, hooks = watched(
            server.url, WANTED, connect_timeout=timeout, backoff_initial=0.02, backoff_max=0.04
        )
        async with running(ws):
            await wait_for(lambda: len(server.handshakes) >= 3, timeout=3)
            server.script = replace(server.script, hang=False, data_every=0.02)
            await wait_for(lambda: len(got) > 3, timeout=3, what="data once answered")
            stats = ws.stats
        [conn] = server.connections
    hung = [h for h in server.handshakes if h.status is None]
    assert len(hung) >= 3
    assert server.handshakes[len(hung)].status == 101  # then the first answered one
    for gap, delay in zip(server.gaps()[:2], [0.02, 0.04], strict=True):
        assert timeout + delay - 0.02 <= gap <= timeout + delay + 0.25, server.gaps()
    timed_out = hooks.of(StreamConnectionError)
    assert len(timed_out) == stats.failed_attempts == len(hung)
    assert all(f"timed out after {timeout:g} s" in str(e) for e, _ in timed_out)
    assert all(ctx == {"link": 0, "stage": "connect"} for _, ctx in timed_out)
    assert len(hooks.errors) == len(hung)
    assert Counter(conn.subscribes) == Counter(WANTED)
