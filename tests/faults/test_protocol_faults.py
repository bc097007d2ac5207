"""Protocol faults: errors that name no channel (as the platform's server sends them),
acks that never come, come twice, or name channels nobody asked for.

Whatever the server does, each connection subscribes exactly the channels it carries,
once each, again after every reconnect, and nothing is lost.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from agentstream import ServerError
from tests.client.conftest import running, wait_for
from tests.faults.conftest import watched
from tests.faults.servers import ScriptedServer

pytestmark = pytest.mark.anyio

TICKERS = ["ticker:BTCUSDT", "ticker:ETHUSDT", "ticker:SOLUSDT"]
WANTED = [*TICKERS, "orders"]


def _symbols(events: list[dict[str, Any]]) -> set[str]:
    return {e["symbol"] for e in events if "symbol" in e}


@pytest.mark.parametrize("acks", ["never", "twice"])
async def test_missing_or_duplicated_acks_change_nothing(acks: Any) -> None:
    async with ScriptedServer(acks=acks, data_every=0.02) as server:
        ws, got, hooks = watched(server.url, WANTED)
        async with running(ws):
            await wait_for(lambda: _symbols(got) == {"BTCUSDT", "ETHUSDT", "SOLUSDT"})
            assert await server.close_all(1012) == 1
            await wait_for(lambda: len(server.connections) == 2)
            n = len(got)
            await wait_for(lambda: len(got) > n + 6, what="data on the new connection")
            stats = ws.stats
    for conn in server.connections:
        assert Counter(conn.subscribes) == Counter(WANTED)  # never re-sent, never missing
        assert conn.unsubscribes == []
    assert (stats.reconnects, stats.server_errors, stats.dropped_frames) == (1, 0, 0)
    assert hooks.errors == []


async def test_acks_for_channels_never_asked_for_are_ignored() -> None:
    unasked = ("ticker:XRPUSDT", "candles:ETHUSDT:1h")
    async with ScriptedServer(unasked_acks=unasked, data_every=0.02) as server:
        ws, got, hooks = watched(server.url, WANTED)
        async with running(ws):
            await wait_for(lambda: ws.stats.messages.get("ticker:XRPUSDT", 0) > 5)
            await server.close_all(1012)
            await wait_for(lambda: len(server.connections) == 2)
            await wait_for(lambda: ws.stats.messages.get("ticker:XRPUSDT", 0) > 10)
    assert _symbols(got) == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}  # no handler saw XRPUSDT
    for conn in server.connections:
        assert Counter(conn.subscribes) == Counter(WANTED)
        assert conn.unsubscribes == []
    assert [str(c) for c in ws.channels] == sorted(WANTED)
    assert hooks.errors == []


async def test_invalid_channel_error_naming_no_channel_is_pinned_on_the_right_one() -> None:
    # Sent in sorted order: BTC, CCC, ETH, ... The refusal names no channel; it answers
    # the second subscribe while the third is still unacknowledged.
    refused = "ticker:CCCUSDT"
    wanted = [*WANTED, refused]
    async with ScriptedServer(refuse={refused: "INVALID_CHANNEL"}, data_every=0.02) as server:
        ws, got, hooks = watched(server.url, wanted)
        async with running(ws):
            await wait_for(lambda: hooks.errors and len(got) > 6)
            await server.close_all(1012)
            await wait_for(lambda: len(server.connections) == 2)
            n = len(got)
            await wait_for(lambda: len(got) > n + 6, what="data on the new connection")
            stats = ws.stats
    [(exc, ctx)] = hooks.errors
    assert isinstance(exc, ServerError)
    assert (exc.code, exc.channel) == ("INVALID_CHANNEL", refused)
    assert ctx == {"channel": refused, "code": "INVALID_CHANNEL", "link": 0}
    assert stats.server_errors == 1
    first, second = server.connections
    assert Counter(first.subscribes) == Counter(wanted)
    assert Counter(second.subscribes) == Counter(WANTED)  # the refused one is not re-sent
    assert refused in [str(c) for c in ws.channels]  # its handler stays registered


async def test_subscription_limit_naming_no_channel_moves_channels_without_loss() -> None:
    symbols = ["ADA", "BTC", "DOGE", "ETH", "SOL"]
    wanted = [f"ticker:{s}USDT" for s in symbols] + ["orders"]
    async with ScriptedServer(limit=2, data_every=0.02) as server:
        ws, got, hooks = watched(server.url, wanted)
        async with running(ws):
            await wait_for(lambda: _symbols(got) == {f"{s}USDT" for s in symbols})
            before = len(server.connections)
            errors = ws.stats.server_errors
            assert await server.close_all(1012) == before
            await wait_for(lambda: len(server.open_connections()) == before, what="reconnects")
            await wait_for(lambda: sum(len(c.accepted) for c in server.open_connections()) == 6)
            stats = ws.stats
    first, again = server.connections[:before], server.connections[before:]
    # Before: every channel ended up accepted on exactly one connection.
    assert Counter(k for c in first for k in c.accepted) == Counter(wanted)
    limit_errors = [e for e, _ in hooks.errors if isinstance(e, ServerError)]
    assert limit_errors
    assert {e.code for e in limit_errors} == {"SUBSCRIPTION_LIMIT"}
    # Each refusal (naming no channel) is pinned on a channel the first socket did not get.
    assert {e.channel for e in limit_errors} == set(wanted) - set(first[0].accepted)
    assert before >= 3  # six channels, two per socket
    assert errors == len(limit_errors)
    # After the reconnect: the learned limit holds, each channel is sent once, on one socket.
    assert stats.server_errors == errors  # nothing refused any more
    assert Counter(k for c in again for k in c.subscribes) == Counter(wanted)
    assert all(len(c.subscribes) <= 2 for c in again)
    assert len(hooks.errors) == len(limit_errors)
