"""The bridge against the real simulated exchange and a real Redis server.

Every venue's events land in their streams, decodable; ``ticker:all`` is split per
symbol; MAXLEN trims; a Redis outage conflates tickers and keeps every order, in order;
the memory bound is counted, logged and reported; a Redis restart that lost the data is
told; an upstream drop becomes a gap entry; refused credentials stop the bridge.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import msgspec
import pytest
import redis.asyncio as aioredis

from agentstream import AgentExchangeWS
from agentstream.bus import decode_entry, stream_key
from agentstream.bus._outbox import Item, Outbox
from agentstream.bus._redis_writer import RedisWriter, mask_redis_url
from agentstream.bus.bridge import Bridge
from agentstream.bus.testing import LocalRedis
from agentstream.errors import AuthenticationError, ConfigurationError
from agentstream.models import Gap
from agentstream.sim import (
    DEMO_API_KEY,
    TASTYTRADE_DEMO_ACCOUNT,
    TASTYTRADE_DEMO_TOKEN,
    TRADIER_DEMO_ACCOUNT,
    TRADIER_DEMO_TOKEN,
    SimExchange,
)
from agentstream.tastytrade import TastytradeStream
from agentstream.tradier import TradierStream
from tests.client.conftest import FAST, wait_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from agentstream.bus import Entry

pytestmark = pytest.mark.anyio

#: Bridge options for tests: short timers, a quick reconnect to Redis.
QUICK: dict[str, Any] = {
    "health_interval": 0.1,
    "health_ttl": 0.5,
    "backoff_initial": 0.01,
    "backoff_max": 0.05,
    "socket_timeout": 1.0,
    "connect_timeout": 0.5,
    "flush_timeout": 3.0,
}
P = "agentstream"


@pytest.fixture
async def sim() -> AsyncIterator[SimExchange]:
    async with SimExchange(
        tick_rate=2000,
        speed=120,
        ping_interval=0.1,
        pong_timeout=0.3,
        order_interval=0.02,
        portfolio_interval=0.2,
        tradier_heartbeat_interval=0.1,
        tastytrade_idle_timeout=0.5,
    ) as s:
        yield s


@contextlib.asynccontextmanager
async def bridging(bridge: Bridge) -> AsyncIterator[Bridge]:
    """Run ``bridge`` for the block; stop it (and let it flush) afterwards."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(bridge.run)
        try:
            yield bridge
        finally:
            with anyio.fail_after(5):
                await bridge.stop()


async def entries(r: aioredis.Redis, key: str) -> list[tuple[bytes, Entry]]:
    got: Any = await r.xrange(key)
    return [(eid, decode_entry(fields)) for eid, fields in got]


async def buy(sim: SimExchange, symbol: str = "BTCUSDT") -> str:
    placed = await sim.place_order(
        DEMO_API_KEY, symbol=symbol, side="buy", type="market", quantity="0.001"
    )
    return str(placed["order_id"])


def ae(sim: SimExchange, key: str = DEMO_API_KEY, **options: Any) -> AgentExchangeWS:
    return AgentExchangeWS(key, sim.url, **{**FAST, **options})


# -- every venue ----------------------------------------------------------------------


async def test_agentexchange_events_land_in_their_streams(
    sim: SimExchange, redis_url: str, redis_client: aioredis.Redis
) -> None:
    ws = ae(sim)
    bridge = Bridge(
        ws,
        redis_url,
        channels=["ticker:all", "ticker:BTCUSDT", "orders", "portfolio", "candles:BTCUSDT:1m"],
        **QUICK,
    )
    # BTCUSDT's ticker rides on ticker:all: bridged once, to its own stream.
    assert [c.key for c in bridge.channels] == [
        "ticker:all",
        "orders",
        "portfolio",
        "candles:BTCUSDT:1m",
    ]
    async with bridging(bridge):
        await wait_for(lambda: bridge.stats.upstream == "connected", what="connected")
        oid = await buy(sim)
        await wait_for(
            lambda: (
                bridge.stats.written_by_channel.get("orders", 0) >= 1
                and bridge.stats.written_by_channel.get("portfolio", 0) >= 1
                and bridge.stats.written_by_channel.get("candles:BTCUSDT:1m", 0) >= 1
            ),
            what="orders, portfolio and candles written",
        )
        with anyio.fail_after(5):  # the hash is written every 0.1 s here
            while (await redis_client.hget(f"{P}:agentexchange:bridge", "upstream")) != (
                b"connected"
            ):
                await anyio.sleep(0.02)
        health: Any = await redis_client.hgetall(f"{P}:agentexchange:bridge")
        assert health[b"state"] == b"running"
        ttl = await redis_client.pttl(f"{P}:agentexchange:bridge")
        assert 0 < ttl <= 500  # a dead bridge's hash expires
    stats = bridge.stats
    assert stats.state == "stopped"
    assert stats.pending == 0 and stats.lost == 0 and stats.invalid == 0
    assert stats.received == stats.written  # every event received was written

    members: Any = await redis_client.smembers(f"{P}:agentexchange:channels")
    channels = {m.decode() for m in members}
    assert channels == set(stats.written_by_channel)
    assert "ticker:all" not in channels and "ticker:BTCUSDT" in channels
    total = 0
    for ch in channels:
        got = await entries(redis_client, stream_key(P, "agentexchange", ch))
        assert len(got) == stats.written_by_channel[ch]
        total += len(got)
        kinds = {e.type for _, e in got}
        assert kinds == {ch.split(":")[0]}
        assert all(e.channel == ch for _, e in got)
        times = [e.received_ns for _, e in got]
        assert times == sorted(times) and len(set(times)) == len(times)
        if ch.startswith("ticker:"):
            assert {e.payload["symbol"] for _, e in got} == {ch.split(":")[1]}
    assert total == stats.written
    orders = await entries(redis_client, f"{P}:agentexchange:orders")
    assert any(e.payload["order_id"] == oid and e.payload["status"] == "filled" for _, e in orders)
    candles = await entries(redis_client, f"{P}:agentexchange:candles:BTCUSDT:1m")
    assert all(e.payload["interval"] == "1m" for _, e in candles)
    health = await redis_client.hgetall(f"{P}:agentexchange:bridge")
    assert health[b"state"] == b"stopped"


async def test_tradier_orders_land_in_order(
    sim: SimExchange, redis_url: str, redis_client: aioredis.Redis
) -> None:
    ws = TradierStream(TRADIER_DEMO_TOKEN, base_url=sim.http_url, **FAST)
    seen: list[tuple[Any, Any]] = []
    ws.on_order_update(lambda d: seen.append((d["id"], d["status"])))
    bridge = Bridge(ws, redis_url, channels=["orders"], prefix="bots", **QUICK)
    async with bridging(bridge):
        await wait_for(lambda: bridge.stats.upstream == "connected")
        form = {"class": "equity", "duration": "day", "symbol": "AAPL", "side": "buy"}
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.post(
                    f"{sim.http_url}/v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders",
                    data={**form, "quantity": "1", "type": "market"},
                    headers={"Authorization": f"Bearer {TRADIER_DEMO_TOKEN}"},
                ) as resp:
                    assert resp.status == 200
        await wait_for(lambda: sum(s == "filled" for _, s in seen) == 2, what="two fills")
        await wait_for(lambda: bridge.stats.written == len(seen), what="all written")
    got = await entries(redis_client, "bots:tradier:orders")
    assert [(e.payload["id"], e.payload["status"]) for _, e in got] == seen
    assert {e.type for _, e in got} == {"orders"}
    assert await redis_client.smembers("bots:tradier:channels") == {b"orders"}


async def test_tastytrade_account_events_land_in_their_streams(
    sim: SimExchange, redis_url: str, redis_client: aioredis.Redis
) -> None:
    ws = TastytradeStream(
        TASTYTRADE_DEMO_TOKEN,
        [TASTYTRADE_DEMO_ACCOUNT],
        url=sim.url + "/tastytrade",
        heartbeat_interval=0.1,
        **FAST,
    )
    bridge = Bridge(ws, redis_url, channels=["orders", "balances", "positions"], **QUICK)
    async with bridging(bridge):
        await wait_for(lambda: sim.tastytrade.connect_requests >= 1)
        await anyio.sleep(0.1)  # the account subscription is acknowledged
        await sim.tastytrade.place_order(
            TASTYTRADE_DEMO_ACCOUNT, symbol="AAPL", action="Buy to Open"
        )
        await wait_for(
            lambda: all(
                bridge.stats.written_by_channel.get(ch, 0) >= 1
                for ch in ("orders", "balances", "positions")
            ),
            what="orders, balances and positions",
        )
    orders = await entries(redis_client, f"{P}:tastytrade:orders")
    assert orders[-1][1].payload["account-number"] == TASTYTRADE_DEMO_ACCOUNT  # as sent
    positions = await entries(redis_client, f"{P}:tastytrade:positions")
    assert positions[-1][1].payload["symbol"] == "AAPL"
    assert (await entries(redis_client, f"{P}:tastytrade:balances"))[-1][1].type == "balances"


async def test_maxlen_trims_each_stream(
    sim: SimExchange, redis_url: str, redis_client: aioredis.Redis
) -> None:
    bridge = Bridge(ae(sim), redis_url, channels=["ticker:BTCUSDT"], maxlen=10, **QUICK)
    async with bridging(bridge):
        # Approximate trimming removes whole nodes (100 entries): write well past them.
        await wait_for(lambda: bridge.stats.written >= 400, timeout=15, what="400 BTCUSDT tickers")
    key = f"{P}:agentexchange:ticker:BTCUSDT"
    assert await redis_client.xlen(key) < bridge.stats.written - 100


# -- Redis slow, down, restarted --------------------------------------------------------


async def test_redis_down_conflates_tickers_and_keeps_every_order_in_order(
    sim: SimExchange,
) -> None:
    with LocalRedis(persistent=True) as server:
        ws = ae(sim)
        seen: list[tuple[str, str]] = []
        ws.on_order_update(lambda d: seen.append((d["order_id"], d["status"])))
        bridge = Bridge(ws, server.url, channels=["ticker:all", "orders"], max_pending=200, **QUICK)
        async with bridging(bridge):
            await wait_for(lambda: bridge.stats.written > 0, what="first writes")
            server.stop()
            await wait_for(lambda: bridge.stats.state == "redis_down", what="redis down")
            for _ in range(5):
                await buy(sim)
            await wait_for(lambda: len(seen) >= 5, what="the orders upstream")
            await wait_for(lambda: bridge.stats.conflated > 0, what="conflation")
            assert bridge.stats.pending > 0 and bridge.stats.lost == 0
            server.start()
            await wait_for(lambda: bridge.stats.state == "running", what="redis back")
            await wait_for(lambda: bridge.stats.loss_reports >= 1, what="the loss report")
        stats = bridge.stats
        assert stats.lost == 0 and stats.redis_errors > 0 and stats.redis_restarts == 1
        assert stats.redis_data_lost == 0  # persistent: the restart kept the data
        async with aioredis.Redis.from_url(server.url) as r:
            orders = await entries(r, f"{P}:agentexchange:orders")
            assert [(e.payload["order_id"], e.payload["status"]) for _, e in orders] == seen
            reports = [e for _, e in await entries(r, f"{P}:agentexchange:gaps")]
        losses = [e.payload for e in reports if e.type == "loss"]
        conflated = sum(sum(p["reasons"].get("conflated", {}).values()) for p in losses)
        assert conflated == stats.conflated
        assert all("orders" not in p["channels"] for p in losses)


async def test_the_memory_bound_is_counted_logged_and_reported(
    sim: SimExchange, caplog: pytest.LogCaptureFixture
) -> None:
    with LocalRedis(persistent=True) as server:
        ws = ae(sim)
        seen: list[str] = []
        ws.on_order_update(lambda d: seen.append(d["order_id"]))
        bridge = Bridge(ws, server.url, channels=["orders"], max_buffer_bytes=1500, **QUICK)
        async with bridging(bridge):
            await wait_for(lambda: bridge.stats.upstream == "connected")
            await anyio.sleep(0.2)
            server.stop()
            await wait_for(lambda: bridge.stats.state == "redis_down", what="redis down")
            for _ in range(6):
                await buy(sim)
            await wait_for(lambda: len(seen) >= 6 and bridge.stats.lost > 0, what="loss")
            assert bridge.stats.pending_bytes <= 1500
            server.start()
            await wait_for(lambda: bridge.stats.loss_reports >= 1, what="the loss report")
        stats = bridge.stats
        assert "bridge buffer full" in caplog.text
        async with aioredis.Redis.from_url(server.url) as r:
            orders = await entries(r, f"{P}:agentexchange:orders")
            gaps = await entries(r, f"{P}:agentexchange:gaps")
        assert len(orders) + stats.lost_by_channel["orders"] == len(seen)
        [loss] = [e.payload for _, e in gaps if e.type == "loss"]
        assert loss["reasons"]["buffer_full"] == {"orders": stats.lost_by_channel["orders"]}
        # The oldest were kept: the orders written are the first ones, in order.
        assert [e.payload["order_id"] for _, e in orders] == seen[: len(orders)]


async def test_a_restart_that_lost_the_data_is_told(
    sim: SimExchange, caplog: pytest.LogCaptureFixture
) -> None:
    with LocalRedis() as server:  # not persistent: a restart empties it
        bridge = Bridge(ae(sim), server.url, channels=["ticker:BTCUSDT", "orders"], **QUICK)
        async with bridging(bridge):
            await wait_for(lambda: bridge.stats.written >= 20, what="some writes")
            server.restart()
            await wait_for(lambda: bridge.stats.redis_data_lost == 1, what="the loss told")
            await wait_for(lambda: bridge.stats.redis_restarts == 1, what="the restart seen")
            await wait_for(lambda: bridge.stats.loss_reports >= 1, what="the loss report")
            before = bridge.stats.written
            await wait_for(lambda: bridge.stats.written > before + 10, what="writing again")
        assert "Redis lost its data" in caplog.text and "restarted (run_id" in caplog.text
        async with aioredis.Redis.from_url(server.url) as r:
            gaps = await entries(r, f"{P}:agentexchange:gaps")
            assert await r.sismember(f"{P}:agentexchange:channels", "ticker:BTCUSDT")
        [loss] = [e.payload for _, e in gaps if e.type == "loss"]
        lost = loss["reasons"]["redis_restart"]["ticker:BTCUSDT"]
        assert lost >= 20  # what had been written before the restart
        async with aioredis.Redis.from_url(server.url) as r:
            now = await r.xlen(f"{P}:agentexchange:ticker:BTCUSDT")
        # Exactly: what was written before the restart is reported, what after is there.
        assert lost + now == bridge.stats.written_by_channel["ticker:BTCUSDT"]


async def fill(r: aioredis.Redis) -> None:
    """Fill the server past its maxmemory (a value at a time, until it refuses)."""
    import redis.exceptions

    for i in range(1000):
        try:
            await r.set(f"filler:{i}", b"x" * (32 << 10))
        except redis.exceptions.OutOfMemoryError:
            return
    pytest.fail("the server never ran out of memory")


async def test_out_of_memory_is_waited_out_and_a_wrong_key_type_is_reported(
    sim: SimExchange, caplog: pytest.LogCaptureFixture
) -> None:
    with LocalRedis(args=["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]) as server:
        async with aioredis.Redis.from_url(server.url) as r:
            # Someone else's key where a stream should be: its entries are refused for good.
            await r.set(f"{P}:agentexchange:portfolio", "not a stream")
            ws = ae(sim)
            seen: list[str] = []
            ws.on_order_update(lambda d: seen.append(d["order_id"]))
            bridge = Bridge(ws, server.url, channels=["orders", "portfolio"], **QUICK)
            async with bridging(bridge):
                await wait_for(lambda: bridge.stats.upstream == "connected")
                await fill(r)  # now over maxmemory: writes get OOM replies
                for _ in range(3):
                    await buy(sim)
                await wait_for(lambda: len(seen) >= 3, what="the orders upstream")
                await wait_for(lambda: bridge.stats.state == "redis_down", what="OOM seen")
                assert bridge.stats.pending > 0
                await r.delete(*[k async for k in r.scan_iter("filler:*")])
                await wait_for(
                    lambda: bridge.stats.written_by_channel.get("orders", 0) == len(seen),
                    what="the orders written",
                )
                await wait_for(lambda: bridge.stats.loss_reports >= 1, what="loss report")
            orders = await entries(r, f"{P}:agentexchange:orders")
            gaps = await entries(r, f"{P}:agentexchange:gaps")
    assert [e.payload["order_id"] for _, e in orders] == seen
    stats = bridge.stats
    assert stats.lost_by_channel.get("portfolio", 0) >= 1
    assert "WRONGTYPE" in caplog.text
    refused = sum(
        e.payload["reasons"].get("refused_by_redis", {}).get("portfolio", 0)
        for _, e in gaps
        if e.type == "loss"
    )
    assert refused >= 1


async def test_redis_down_at_the_start_is_waited_for() -> None:
    async with SimExchange(tick_rate=500, speed=120) as sim:
        server = LocalRedis()
        try:
            bridge = Bridge(ae(sim), server.url, channels=["ticker:BTCUSDT"], **QUICK)
            async with bridging(bridge):
                await wait_for(
                    lambda: bridge.stats.redis_errors >= 3 and bridge.stats.received > 0,
                    what="retries while events arrive",
                )
                assert bridge.stats.written == 0 and bridge.stats.state == "redis_down"
                server.start()
                await wait_for(lambda: bridge.stats.written > 0, what="writes")
        finally:
            server.close()


# -- upstream ---------------------------------------------------------------------------


async def test_an_upstream_drop_becomes_a_gap_entry(
    sim: SimExchange, redis_url: str, redis_client: aioredis.Redis
) -> None:
    bridge = Bridge(ae(sim), redis_url, channels=["ticker:all", "orders"], **QUICK)
    async with bridging(bridge):
        await wait_for(lambda: bridge.stats.written > 0)
        assert await sim.drop_connections() == 1
        await wait_for(lambda: bridge.stats.gaps >= 1, what="a gap entry")
    gaps = await entries(redis_client, f"{P}:agentexchange:gaps")
    reports = [e for _, e in gaps if e.type == "gap"]
    assert {e.channel for e in reports} <= {"ticker:all", "orders"}
    gap = msgspec.convert(reports[0].payload, Gap)
    assert gap.channel == reports[0].channel
    assert gap.reconnected_at >= gap.disconnected_at


async def test_refused_credentials_stop_the_bridge_without_the_secret(
    sim: SimExchange, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "ak_live_wrong_0123456789abcdef"
    bridge = Bridge(ae(sim, secret), redis_url, channels=["orders"], **QUICK)
    caplog.set_level(logging.DEBUG)
    with anyio.fail_after(5), pytest.raises(AuthenticationError) as err:
        await bridge.run()
    assert bridge.stats.state == "failed"
    assert secret not in caplog.text and secret not in str(err.value)
    assert secret not in repr(bridge)


def test_bad_settings_are_refused() -> None:
    ws = AgentExchangeWS(DEMO_API_KEY, "ws://127.0.0.1:9")
    with pytest.raises(ConfigurationError, match="at least one channel"):
        Bridge(ws, "redis://127.0.0.1:1/0", channels=[])
    with pytest.raises(ConfigurationError, match="unknown channel"):
        Bridge(ws, "redis://127.0.0.1:1/0", channels=["trades:BTCUSDT"])
    with pytest.raises(ConfigurationError, match="maxlen"):
        Bridge(ws, "redis://127.0.0.1:1/0", channels=["orders"], maxlen=0)
    with pytest.raises(ConfigurationError, match="Redis URL"):
        Bridge(ws, "127.0.0.1:6379", channels=["orders"])


async def test_hostile_wildcard_events_are_refused_and_counted(
    sim: SimExchange, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A ticker:all event must name a usable symbol: it becomes a stream key.
    import agentstream.bus.bridge as bridge_module

    monkeypatch.setattr(bridge_module, "_MAX_SYMBOLS", 2)
    bridge = Bridge(ae(sim), redis_url, channels=["ticker:all"], **QUICK)
    handler = bridge._handler(bridge.channels[0])
    for bad in ({"symbol": ["x"]}, {"symbol": "A:B"}, {"symbol": "X" * 100}, {}):
        handler(bad)
    handler({"symbol": "btcusdt", "price": "1"})
    assert bridge.stats.invalid == 4 and bridge.stats.received == 1
    [item] = bridge._outbox.take(10)
    assert item.stream == f"{P}:agentexchange:ticker:BTCUSDT"
    # A server inventing symbols: streams for the first ones only.
    for sym in ("ETHUSDT", "NEW1", "NEW2", "BTCUSDT"):
        handler({"symbol": sym, "price": "1"})
    assert [i.channel for i in bridge._outbox.take(10)] == ["ticker:ETHUSDT", "ticker:BTCUSDT"]
    assert bridge.stats.invalid == 6


async def test_a_payload_msgpack_cannot_carry_is_refused_not_fatal(
    sim: SimExchange, redis_url: str
) -> None:
    # JSON allows integers of any size; MessagePack stops at 64 bits.
    bridge = Bridge(ae(sim), redis_url, channels=["ticker:all", "orders"], **QUICK)
    async with bridging(bridge):
        await wait_for(lambda: bridge.stats.written > 0)
        ticker, orders = (bridge._handler(c) for c in bridge.channels)
        ticker({"symbol": "BTCUSDT", "price": 2**70})  # encoded by the writer
        orders({"order_id": "x", "quantity": -(2**70)})  # encoded when queued
        await wait_for(lambda: bridge.stats.invalid == 2, what="both refused")
        before = bridge.stats.written
        await wait_for(lambda: bridge.stats.written > before, what="writing on")
    assert bridge.stats.state == "stopped" and bridge.stats.lost == 0


async def test_async_with_runs_the_bridge_for_the_block(
    sim: SimExchange, redis_url: str, redis_client: aioredis.Redis
) -> None:
    async with Bridge(ae(sim), redis_url, channels=["ticker:BTCUSDT"], **QUICK) as bridge:
        await wait_for(lambda: bridge.stats.written >= 5, what="writes")
    assert bridge.stats.state == "stopped" and bridge.stats.pending == 0
    assert await redis_client.xlen(f"{P}:agentexchange:ticker:BTCUSDT") == bridge.stats.written


async def test_async_with_raises_the_fatal_error(sim: SimExchange, redis_url: str) -> None:
    bridge = Bridge(ae(sim, "ak_live_wrong_0123456789abcdef"), redis_url, channels=["orders"])
    with anyio.fail_after(5), pytest.raises(AuthenticationError):
        async with bridge:
            await anyio.sleep(3)


async def test_an_interrupted_batch_is_checked_entry_by_entry(redis_url: str) -> None:
    # A batch whose answers were lost: which of its entries reached the stream?
    writer = RedisWriter(redis_url, prefix=P, venue="v", maxlen=100)
    items = [Item(f"{P}:v:orders", "orders", "orders", {"n": n}, 1000 + n) for n in range(6)]
    other = [Item(f"{P}:v:portfolio", "portfolio", "portfolio", {"n": 9}, 2000)]
    try:
        result = await writer.write([*items[:4], *other])
        assert len(result.written) == 5
        found = await writer.written_already([*items, *other])
    finally:
        await writer.aclose()
    assert found == [*items[:4], *other]


def test_closed_candles_stay_in_line_with_the_forming_ones() -> None:
    ws = AgentExchangeWS(DEMO_API_KEY, "ws://127.0.0.1:9")
    bridge = Bridge(ws, "redis://127.0.0.1:1/0", channels=["candles:BTCUSDT:1m", "orders"])
    candles, orders = (bridge._handler(c) for c in bridge.channels)
    sent = [
        {"symbol": "BTCUSDT", "interval": "1m", "close": "1", "is_closed": False},
        {"symbol": "BTCUSDT", "interval": "1m", "close": "2", "is_closed": True},
        {"symbol": "BTCUSDT", "interval": "1m", "close": "3", "is_closed": False},
    ]
    for n, candle in enumerate(sent):
        candles(candle)
        orders({"order_id": str(n)})
    taken = bridge._outbox.take(100)
    assert [i.payload for i in taken if i.channel.startswith("candles")] == sent
    assert [i.payload["order_id"] for i in taken if i.channel == "orders"] == ["0", "1", "2"]


# -- the buffer, alone ------------------------------------------------------------------


def test_the_outbox_conflates_per_symbol_and_keeps_closed_candles() -> None:
    box = Outbox(max_pending=6, max_bytes=1 << 20)
    for i in range(4):
        box.put(Item("s", "ticker", "ticker:A", {"i": i}, i), key=("ticker:A", "A"))
        box.put(Item("s", "ticker", "ticker:B", {"i": i}, i), key=("ticker:B", "B"))
    closed = Item("s", "candles", "candles:A:1m", {"is_closed": True}, 9)
    box.put(closed, key=None)
    got = box.take(100)
    # The 7th put conflated the six before: A and B kept their newest; later ones queued.
    assert box.conflated == {"ticker:A": 2, "ticker:B": 2}
    assert [(i.channel, i.payload) for i in got] == [
        ("ticker:A", {"i": 2}),
        ("ticker:B", {"i": 2}),
        ("ticker:A", {"i": 3}),
        ("ticker:B", {"i": 3}),
        ("candles:A:1m", {"is_closed": True}),
    ]


def test_the_outbox_keeps_private_events_up_to_its_bound_and_gives_back_in_order() -> None:
    box = Outbox(max_pending=10, max_bytes=1000)
    items = [Item("o", "orders", "orders", {"n": n, "pad": "x" * 100}, n) for n in range(10)]
    kept = [box.keep(i) for i in items]
    assert kept.count(True) >= 2 and not all(kept)
    assert kept == sorted(kept, reverse=True)  # the oldest are kept, the newest refused
    assert box.dropped == {"orders": kept.count(False)}
    assert box.kept_bytes <= 1000
    taken = box.take(1)
    box.give_back(taken)
    assert [i.payload["n"] for i in box.take(100)] == list(range(kept.count(True)))
    assert box.kept_bytes == 0


def test_redis_urls_are_shown_without_their_password() -> None:
    assert mask_redis_url("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert mask_redis_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


# -- the command ------------------------------------------------------------------------


async def test_the_command_bridges_and_stops_on_ctrl_c(
    sim: SimExchange, redis_url: str, redis_client: aioredis.Redis
) -> None:
    env = {**os.environ, "AGENTEXCHANGE_API_KEY": DEMO_API_KEY}
    cmd = [
        *(sys.executable, "-m", "agentstream", "bridge", "--venue", "agentexchange"),
        *("--url", sim.url, "--to", redis_url, "--channel", "ticker:BTCUSDT"),
        *("--channel", "orders", "--maxlen", "1000", "--stats-every", "0.2"),
    ]
    proc = await anyio.open_process(cmd, env=env)
    try:
        with anyio.fail_after(15):
            while await redis_client.xlen(f"{P}:agentexchange:ticker:BTCUSDT") < 5:
                assert proc.returncode is None, "the bridge exited"
                await anyio.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        with anyio.fail_after(10):
            await proc.wait()
        out, err = await read_all(proc.stdout), await read_all(proc.stderr)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert err.strip().splitlines() == ["stopping (writing what waits)"]
    assert "bridge agentexchange -> " in out and "stopped: written=" in out
    assert DEMO_API_KEY not in out + err


async def read_all(stream: Any) -> str:
    chunks: list[bytes] = []
    with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
        while True:
            chunks.append(await stream.receive())
    return b"".join(chunks).decode()


def test_the_command_refuses_a_missing_credential() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRADIER_TOKEN"}
    proc = subprocess.run(
        [sys.executable, "-m", "agentstream", "bridge", "--venue", "tradier"],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert proc.returncode == 1
    assert "TRADIER_TOKEN" in proc.stderr and "Traceback" not in proc.stderr


async def test_the_command_exits_1_on_a_refused_key_without_showing_it(
    sim: SimExchange, redis_url: str
) -> None:
    secret = "ak_live_wrong_0123456789abcdef"
    env = {**os.environ, "AGENTEXCHANGE_API_KEY": secret}
    cmd = [
        *(sys.executable, "-m", "agentstream", "bridge", "--venue", "agentexchange"),
        *("--url", sim.url, "--to", redis_url, "--channel", "orders"),
    ]
    with anyio.fail_after(20):
        done = await anyio.run_process(cmd, env=env, check=False)
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "AuthenticationError" in err and "Traceback" not in err
    assert secret not in err + done.stdout.decode()
