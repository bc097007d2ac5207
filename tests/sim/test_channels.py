"""Client-to-server messages: subscribe / unsubscribe in every form, acks and errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from tests.sim.helpers import (
    collect_for,
    expect_quiet,
    fast_sim,
    is_control,
    on,
    recv_until,
    send,
    subscribe,
    unsubscribe,
    wait_for,
)

if TYPE_CHECKING:
    from agentstream.sim import SimExchange

pytestmark = pytest.mark.anyio

WS = aiohttp.ClientWebSocketResponse

# Every subscribe message of the protocol's table (platform form), with the server key the
# acknowledgement must name. Symbols are given in lower case: the server upper-cases them.
PLATFORM_FORM: list[tuple[dict[str, Any], str]] = [
    ({"channel": "ticker", "symbol": "btcusdt"}, "ticker:BTCUSDT"),
    ({"channel": "ticker", "symbol": "ETHUSDT"}, "ticker:ETHUSDT"),
    ({"channel": "ticker_all"}, "ticker:all"),
    ({"channel": "candles", "symbol": "BtcUsdt", "interval": "1m"}, "candles:BTCUSDT:1m"),
    ({"channel": "orders"}, "orders"),
    ({"channel": "portfolio"}, "portfolio"),
]

# The older SDK's combined form, accepted leniently.
COMBINED_FORM: list[tuple[dict[str, Any], str]] = [
    ({"channel": "ticker:BTCUSDT"}, "ticker:BTCUSDT"),
    ({"channel": "ticker:solusdt"}, "ticker:SOLUSDT"),
    ({"channel": "candles:BTCUSDT:1m"}, "candles:BTCUSDT:1m"),
    ({"channel": "candles:ethusdt:5m"}, "candles:ETHUSDT:5m"),
]


@pytest.mark.parametrize(("fields", "key"), PLATFORM_FORM + COMBINED_FORM)
async def test_subscribe_and_unsubscribe_are_acknowledged_with_the_server_key(
    sim: SimExchange, ws: WS, fields: dict[str, Any], key: str
) -> None:
    assert await subscribe(ws, **fields) == {"type": "subscribed", "channel": key}
    await wait_for(lambda: sim.subscriptions() == [{key}])
    assert await unsubscribe(ws, **fields) == {"type": "unsubscribed", "channel": key}
    await wait_for(lambda: sim.subscriptions() == [set()])


@pytest.mark.parametrize("interval", ["1m", "5m", "15m", "1h", "4h", "1d"])
async def test_every_candle_interval_can_be_subscribed(ws: WS, interval: str) -> None:
    reply = await subscribe(ws, channel="candles", symbol="SOLUSDT", interval=interval)
    assert reply == {"type": "subscribed", "channel": f"candles:SOLUSDT:{interval}"}


async def test_subscribing_starts_data_and_unsubscribing_stops_it(ws: WS) -> None:
    await subscribe(ws, channel="ticker", symbol="btcusdt")
    first = await recv_until(ws, on("ticker"))
    assert first["symbol"] == "BTCUSDT"  # upper-cased by the server
    await send(ws, {"action": "unsubscribe", "channel": "ticker", "symbol": "btcusdt"})
    await recv_until(ws, lambda m: m.get("type") == "unsubscribed")
    # Frames already on the wire before the ack are fine; none may follow it.
    assert [m for m in await collect_for(ws, 0.3) if m.get("channel") == "ticker"] == []


async def test_ticker_subscription_carries_only_its_symbol(ws: WS) -> None:
    await subscribe(ws, channel="ticker", symbol="ETHUSDT")
    msgs = [m for m in await collect_for(ws, 0.5) if m.get("channel") == "ticker"]
    assert msgs, "no ticker for ETHUSDT within 0.5 s"
    assert {m["symbol"] for m in msgs} == {"ETHUSDT"}


@pytest.mark.parametrize(
    "fields",
    [
        {"channel": "trades", "symbol": "BTCUSDT"},  # unknown channel
        {"channel": "ticker", "symbol": "NOPEUSDT"},  # unknown symbol
        {"channel": "ticker"},  # symbol missing
        {"channel": "ticker", "symbol": 42},  # symbol not a string
        {"channel": "candles", "symbol": "BTCUSDT", "interval": "2m"},  # bad interval
        {"channel": "candles", "symbol": "BTCUSDT"},  # interval missing
        {"channel": "candles", "interval": "1m"},  # symbol missing
        {"channel": "candles:NOPEUSDT:1m"},  # combined form, unknown symbol
        {"channel": "candles:BTCUSDT:7m"},  # combined form, bad interval
        {"channel": ""},
        {},  # no channel at all
    ],
)
async def test_bad_channel_symbol_or_interval_is_invalid_channel(
    sim: SimExchange, ws: WS, fields: dict[str, Any]
) -> None:
    for action in ("subscribe", "unsubscribe"):
        await send(ws, {"action": action, **fields})
        reply = await recv_until(ws, is_control)
        assert reply["type"] == "error"
        assert reply["code"] == "INVALID_CHANNEL"
        assert isinstance(reply["message"], str) and reply["message"]
    assert sim.subscriptions() == [set()]
    # the connection is still up and usable
    assert (await subscribe(ws, channel="orders"))["type"] == "subscribed"


@pytest.mark.parametrize(
    "msg",
    [
        {"action": "dance"},
        {"action": "SUBSCRIBE", "channel": "orders"},
        {"channel": "orders"},  # no action
        {"action": None, "channel": "orders"},
        {"action": "ping"},
    ],
)
async def test_unknown_action_is_answered_with_unknown_action(
    sim: SimExchange, ws: WS, msg: dict[str, Any]
) -> None:
    await send(ws, msg)
    reply = await recv_until(ws, is_control)
    assert reply["type"] == "error"
    assert reply["code"] == "UNKNOWN_ACTION"
    assert isinstance(reply["message"], str) and reply["message"]
    assert sim.subscriptions() == [set()]
    assert (await subscribe(ws, channel="portfolio"))["type"] == "subscribed"


@pytest.mark.parametrize("raw", ["{not json", "", '{"action":"subscribe"', "[1, 2]", "42", "null"])
async def test_malformed_json_gets_an_error_and_the_connection_stays_up(ws: WS, raw: str) -> None:
    await ws.send_str(raw)
    reply = await recv_until(ws, is_control)
    assert reply["type"] == "error"
    assert reply["code"] == "UNKNOWN_ACTION"
    assert isinstance(reply["message"], str) and reply["message"]
    assert not ws.closed
    assert await subscribe(ws, channel="ticker", symbol="BTCUSDT") == {
        "type": "subscribed",
        "channel": "ticker:BTCUSDT",
    }
    assert (await recv_until(ws, on("ticker")))["symbol"] == "BTCUSDT"


async def test_json_in_a_binary_frame_is_understood(ws: WS) -> None:
    await ws.send_bytes(b'{"action":"subscribe","channel":"orders"}')
    assert await recv_until(ws, is_control) == {"type": "subscribed", "channel": "orders"}


async def test_the_eleventh_subscription_gets_subscription_limit(sim: SimExchange, ws: WS) -> None:
    symbols = list(sim.market.pairs)[:11]
    for sym in symbols[:10]:
        assert (await subscribe(ws, channel="ticker", symbol=sym))["type"] == "subscribed"
    reply = await subscribe(ws, channel="ticker", symbol=symbols[10])
    assert reply["type"] == "error"
    assert reply["code"] == "SUBSCRIPTION_LIMIT"
    assert isinstance(reply["message"], str) and reply["message"]
    assert sim.subscriptions() == [{f"ticker:{s}" for s in symbols[:10]}]
    # private channels count too
    assert (await subscribe(ws, channel="orders"))["code"] == "SUBSCRIPTION_LIMIT"


async def test_a_configured_subscription_limit_is_enforced_and_frees_up(
    session: aiohttp.ClientSession,
) -> None:
    async with fast_sim(subscription_limit=2) as sim, session.ws_connect(sim.ws_url()) as ws:
        assert (await subscribe(ws, channel="orders"))["type"] == "subscribed"
        assert (await subscribe(ws, channel="ticker_all"))["type"] == "subscribed"
        reply = await subscribe(ws, channel="portfolio")
        assert (reply["type"], reply["code"]) == ("error", "SUBSCRIPTION_LIMIT")
        assert sim.subscriptions() == [{"orders", "ticker:all"}]
        await unsubscribe(ws, channel="orders")
        assert await subscribe(ws, channel="portfolio") == {
            "type": "subscribed",
            "channel": "portfolio",
        }
        # The limit is per connection: a second connection has its own.
        async with session.ws_connect(sim.ws_url()) as other:
            assert (await subscribe(other, channel="orders"))["type"] == "subscribed"
            assert (await subscribe(other, channel="portfolio"))["type"] == "subscribed"


async def test_subscriptions_are_per_connection(
    sim: SimExchange, ws: WS, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(sim.ws_url()) as other:
        await subscribe(ws, channel="ticker", symbol="BTCUSDT")
        await subscribe(other, channel="candles", symbol="ETHUSDT", interval="1h")
        assert sorted(sim.subscriptions(), key=sorted) == [
            {"candles:ETHUSDT:1h"},
            {"ticker:BTCUSDT"},
        ]
        await expect_quiet_of(other, "ticker", 0.3)


async def expect_quiet_of(ws: WS, channel: str, seconds: float) -> None:
    """No message of ``channel`` arrives on ``ws`` for ``seconds``."""
    msgs = await collect_for(ws, seconds)
    assert [m for m in msgs if m.get("channel") == channel] == []


async def test_nothing_is_sent_before_a_subscription_but_pings(
    session: aiohttp.ClientSession,
) -> None:
    # Only with private events kept to subscribers: by default (as on the real server)
    # the account's portfolio snapshots reach every socket (tests/sim/test_real_server.py).
    async with (
        fast_sim(private_to_all_sockets=False) as sim,
        session.ws_connect(sim.ws_url()) as ws,
    ):
        await expect_quiet(ws, 0.5)


@pytest.mark.parametrize(
    ("fields", "channel"),
    [
        ({"channel": "ticker", "symbol": "nopeusdt"}, "ticker:NOPEUSDT"),
        ({"channel": "ticker:nopeusdt"}, "ticker:NOPEUSDT"),
        ({"channel": "candles", "symbol": "btcusdt", "interval": "2m"}, "candles:BTCUSDT:2m"),
        ({"channel": "candles:ethusdt:7m"}, "candles:ETHUSDT:7m"),
    ],
)
async def test_errors_name_the_channel_in_the_server_form(
    ws: WS, fields: dict[str, Any], channel: str
) -> None:
    reply = await subscribe(ws, **fields)
    assert reply["code"] == "INVALID_CHANNEL"
    # The error table shows no channel field; when the server adds one, it is the key.
    assert reply.get("channel", channel) == channel


async def test_subscription_limit_error_names_the_refused_channel(
    session: aiohttp.ClientSession,
) -> None:
    async with fast_sim(subscription_limit=1) as sim, session.ws_connect(sim.ws_url()) as ws:
        await subscribe(ws, channel="orders")
        reply = await subscribe(ws, channel="candles", symbol="solusdt", interval="4h")
        assert reply["code"] == "SUBSCRIPTION_LIMIT"
        assert reply.get("channel", "candles:SOLUSDT:4h") == "candles:SOLUSDT:4h"
