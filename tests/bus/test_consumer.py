"""RedisBus against a real Redis server: entries written as the bridge writes them
(``encode_entry`` + ``XADD`` to ``{prefix}:{venue}:{channel}``), read in consumer groups
with the venue clients' decorators."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from agentstream import AgentExchangeWS, OrderEvent, OrderStatus
from agentstream.bus import DataLossReported, DeadLettered, RedisBus, encode_entry, stream_key
from agentstream.bus.testing import LocalRedis
from agentstream.errors import AuthenticationError, ConfigurationError, HandlerError
from agentstream.models import Candle, Gap, OrderUpdate, Ticker
from agentstream.sim import DEMO_API_KEY, TRADIER_DEMO_TOKEN, SimExchange
from agentstream.tastytrade import PlacedOrder  # noqa: TC001 - read by the bus at run time
from agentstream.tradier import TradierOrder, TradierStream

from ..client.conftest import FAST, running, wait_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import redis.asyncio as aioredis

pytestmark = pytest.mark.anyio

#: Bus options for tests: short timers.
QUICK: dict[str, Any] = {
    "block_ms": 50,
    "claim_idle": 0.2,
    "discover_every": 0.05,
    "backoff_initial": 0.02,
    "backoff_max": 0.1,
}
HERE = Path(__file__).parent


async def add(
    r: aioredis.Redis,
    channel: str,
    payload: Any,
    *,
    venue: str = "agentexchange",
    kind: str | None = None,
    prefix: str = "agentstream",
) -> str:
    """Write one event entry as the bridge does (and note its channel in the set)."""
    t = kind or channel.split(":", 1)[0]
    fields = encode_entry(t, channel, payload, received_ns=time.time_ns())
    await r.sadd(f"{prefix}:{venue}:channels", channel)
    entry_id: Any = await r.xadd(stream_key(prefix, venue, channel), fields)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def order(n: int, status: str = "filled", symbol: str = "BTCUSDT") -> dict[str, Any]:
    """An AgentExchange order update as a dict handler of AgentExchangeWS gets it."""
    return {
        "order_id": f"o-{n}",
        "status": status,
        "symbol": symbol,
        "side": "buy",
        "type": "market",
        "quantity": "0.01",
        "price": None,
        "executed_price": "64000.5",
        "executed_quantity": "0.01" if status == "filled" else "0",
        "fee": "0.01",
        "filled_at": "2026-12-02T12:00:00Z",
        "cancelled_at": None,
        "rejected_reason": None,
        "recovered": False,
    }


def tick(symbol: str, price: str = "100.5") -> dict[str, Any]:
    return {
        "symbol": symbol,
        "price": price,
        "quantity": "0.5",
        "timestamp": 1_764_676_800_000,
        "is_buyer_maker": False,
    }


async def pending(r: aioredis.Redis, stream: str, group: str) -> int:
    info: Any = await r.xpending(stream, group)
    return int(info["pending"])


@pytest.fixture
def bus_factory(redis_url: str) -> Any:
    def make(**options: Any) -> RedisBus:
        return RedisBus(redis_url, **{"group": "g", "consumer": "c1", **QUICK, **options})

    return make


# -- payloads, decorators, typed conversion ---------------------------------------------


async def test_dict_typed_and_order_event_handlers_get_what_a_venue_client_gets(
    redis_client: aioredis.Redis, bus_factory: Any
) -> None:
    """Events captured from AgentExchangeWS's dict handlers on the sim, through Redis,
    reach the bus's typed handlers equal to what AgentExchangeWS's typed handlers got."""
    ws_dicts: list[tuple[str, dict[str, Any]]] = []
    ws_typed: list[Any] = []
    async with SimExchange(tick_rate=200, order_interval=0.02) as sim:
        ws = AgentExchangeWS(DEMO_API_KEY, sim.url, **FAST)
        ws.on_ticker("BTCUSDT", lambda d: ws_dicts.append(("ticker:BTCUSDT", dict(d))))
        ws.on_order_update(lambda d: ws_dicts.append(("orders", dict(d))))

        def typed_tick(t: Ticker) -> None:
            ws_typed.append(t)

        def typed_order(o: OrderUpdate) -> None:
            ws_typed.append(o)

        ws.on_ticker("BTCUSDT", typed_tick)
        ws.on_order_update(typed_order)
        async with running(ws):
            await wait_for(lambda: ws.stats.connections == 1)
            await sim.place_order(
                DEMO_API_KEY, symbol="BTCUSDT", side="buy", type="market", quantity="0.01"
            )
            await wait_for(
                lambda: any(k == "orders" and d["status"] == "filled" for k, d in ws_dicts)
            )
    for key, d in ws_dicts:
        await add(redis_client, key, d)

    bus = bus_factory(start="0")
    dicts: list[dict[str, Any]] = []
    typed: list[Any] = []
    views: list[OrderEvent] = []

    @bus.on_ticker("BTCUSDT")
    def on_tick(d: dict[str, Any]) -> None:
        dicts.append(d)

    @bus.on_ticker("BTCUSDT")
    async def on_typed_tick(t: Ticker) -> None:
        typed.append(t)

    @bus.on_order_update()
    def on_typed_order(o: OrderUpdate) -> None:
        typed.append(o)

    @bus.on_order_update(thread=True)
    def on_view(o: OrderEvent) -> None:
        views.append(o)

    async with bus:
        await wait_for(lambda: len(typed) == len(ws_typed) and len(views) >= 1)
        await wait_for(lambda: bus.stats.acked == len(ws_dicts))
    assert sorted(map(repr, typed)) == sorted(map(repr, ws_typed))
    assert [d for k, d in ws_dicts if k != "orders"] == dicts
    filled = [v for v in views if v.status is OrderStatus.FILLED]
    assert filled and filled[0].venue == "agentexchange"
    assert filled[0].filled_quantity == Decimal("0.01")
    assert (
        await pending(redis_client, stream_key("agentstream", "agentexchange", "orders"), "g") == 0
    )
    s = bus.stats
    assert s.read == s.handled == len(ws_dicts)
    assert s.dead_lettered == 0
    assert s.messages["orders"] == sum(1 for k, _ in ws_dicts if k == "orders")


async def test_tradier_events_through_the_bus(redis_url: str, redis_client: aioredis.Redis) -> None:
    import aiohttp

    from agentstream.sim import TRADIER_DEMO_ACCOUNT

    captured: list[dict[str, Any]] = []
    ws_typed: list[TradierOrder] = []
    async with SimExchange(tick_rate=100, order_interval=0.02) as sim:
        ws = TradierStream(token=TRADIER_DEMO_TOKEN, base_url=sim.http_url, **FAST)
        ws.on_order_update(lambda d: captured.append(dict(d)))

        def typed_order(o: TradierOrder) -> None:
            ws_typed.append(o)

        ws.on_order_update(typed_order)
        async with running(ws):
            await wait_for(lambda: ws.stats.connections == 1)
            form = {"class": "equity", "symbol": "SPY", "side": "buy", "quantity": "3"}
            form |= {"type": "market", "duration": "day"}
            headers = {
                "Authorization": f"Bearer {TRADIER_DEMO_TOKEN}",
                "Accept": "application/json",
            }
            url = f"{sim.http_url}/v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders"
            async with aiohttp.ClientSession() as http, http.post(url, data=form, headers=headers):
                pass
            await wait_for(lambda: any(o.status == "filled" for o in ws_typed))
    for d in captured:
        await add(redis_client, "orders", d, venue="tradier")

    bus = RedisBus(redis_url, venue="tradier", group="g", start="0", **QUICK)
    typed: list[TradierOrder] = []
    views: list[OrderEvent] = []
    bus.on_order_update(typed.append)  # a plain dict handler too: both representations

    @bus.on_order_update()
    async def on_typed(o: TradierOrder) -> None:
        typed.append(o)

    @bus.on_order_update()
    def on_view(o: OrderEvent) -> None:
        views.append(o)

    with pytest.raises(ConfigurationError, match="tradier has no ticker channel"):
        bus.on_ticker("BTCUSDT", print)
    async with bus:
        await wait_for(lambda: len(views) == len(captured))
    assert [o for o in typed if isinstance(o, TradierOrder)] == ws_typed
    filled = next(v for v in views if v.status is OrderStatus.FILLED)
    assert (filled.venue, filled.symbol, filled.side) == ("tradier", "SPY", "buy")


async def test_tastytrade_decorators(redis_url: str, redis_client: aioredis.Redis) -> None:
    placed = {
        "account-number": "5WT00000",
        "time-in-force": "Day",
        "order-type": "Limit",
        "underlying-symbol": "AAPL",
        "underlying-instrument-type": "Equity",
        "status": "Filled",
        "cancellable": False,
        "editable": False,
        "edited": False,
        "updated-at": "2026-12-02T12:00:00Z",
        "legs": [],
        "id": 7,
        "size": "5",
        "price": "187.5",
    }
    await add(redis_client, "orders", placed, venue="tastytrade")
    bus = RedisBus(redis_url, venue="tastytrade", group="g", start="0", **QUICK)
    got: list[PlacedOrder] = []
    balances: list[Any] = []

    @bus.on_order_update()
    def on_order(o: PlacedOrder) -> None:
        got.append(o)

    bus.on_balance(balances.append)
    with pytest.raises(ConfigurationError, match="tastytrade has no portfolio channel"):
        bus.on_portfolio(print)
    async with bus:
        await wait_for(lambda: len(got) == 1)
    assert (got[0].id, got[0].underlying_symbol, got[0].size) == (7, "AAPL", Decimal(5))


async def test_candles_closed_only_unless_partial_and_all_finds_new_streams(
    redis_client: aioredis.Redis, bus_factory: Any
) -> None:
    bus = bus_factory()
    closed: list[Candle] = []
    every: list[dict[str, Any]] = []
    symbols: list[str] = []

    @bus.on_candles("BTCUSDT", "1m")
    def on_closed(c: Candle) -> None:
        closed.append(c)

    bus.on_candles("BTCUSDT", "1m", every.append, partial=True)
    bus.on_ticker("all", lambda d: symbols.append(d["symbol"]))
    async with bus:
        base: dict[str, Any] = {"symbol": "BTCUSDT", "interval": "1m", "open": "1", "high": "2"}
        base |= {"low": "1"}
        base |= {"close": "2", "volume": "3", "open_time": 1_764_676_800_000}
        for is_closed in (False, False, True):
            await add(redis_client, "candles:BTCUSDT:1m", {**base, "is_closed": is_closed})
        await wait_for(lambda: len(every) == 3 and len(closed) == 1)
        # Streams the bridge starts writing after the bus started: found by discovery.
        for sym in ("ETHUSDT", "SOLUSDT", "BTCUSDT"):
            await add(redis_client, f"ticker:{sym}", tick(sym))
        await wait_for(lambda: sorted(symbols) == ["BTCUSDT", "ETHUSDT", "SOLUSDT"])
    assert closed[0].is_closed is True
    assert bus.remove_handler(on_closed) == 1  # found through the bus's wrapper
    assert [c.key for c in bus.channels] == ["candles:BTCUSDT:1m", "ticker:all"]


# -- gaps, losses, listen, run modes ------------------------------------------------------


async def test_gaps_that_concern_the_subscriptions_reach_on_gap_and_losses_on_error(
    redis_client: aioredis.Redis, bus_factory: Any
) -> None:
    bus = bus_factory()
    gaps: list[Gap] = []
    errors: list[tuple[Exception, dict[str, Any]]] = []
    bus.on_ticker("BTCUSDT", lambda d: None)
    bus.on_gap(gaps.append)
    bus.on_error(lambda exc, ctx: errors.append((exc, ctx)))
    gaps_stream = stream_key("agentstream", "agentexchange", "gaps")
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    async with bus:
        for channel in ("ticker:all", "orders", "ticker:ETHUSDT", "ticker:BTCUSDT"):
            gap = Gap(channel=channel, disconnected_at=now, reconnected_at=now, reason="drop")
            fields = encode_entry("gap", channel, msgspec.to_builtins(gap), received_ns=1)
            await redis_client.xadd(gaps_stream, fields)
        loss = {"reason": "redis down", "dropped": {"ticker:BTCUSDT": 12}}
        await redis_client.xadd(gaps_stream, encode_entry("loss", "", loss, received_ns=1))
        await wait_for(lambda: len(errors) == 1 and bus.stats.acked == 5)
    assert [g.channel for g in gaps] == ["ticker:all", "ticker:BTCUSDT"]
    exc, context = errors[0]
    assert context["stage"] == "bridge"
    assert isinstance(exc, DataLossReported)
    assert exc.report == loss
    assert bus.stats.losses == 1
    assert bus.stats.gaps == 2
    assert await pending(redis_client, gaps_stream, "g") == 0


async def test_listen_acknowledges_each_entry_when_the_next_is_asked_for(
    redis_client: aioredis.Redis, bus_factory: Any
) -> None:
    bus = bus_factory(start="0")
    for n in range(3):
        await add(redis_client, "orders", order(n))
    stream = stream_key("agentstream", "agentexchange", "orders")
    seen: list[str] = []
    async with bus:
        async for o in bus.listen(OrderUpdate):
            seen.append(o.order_id)
            if len(seen) == 3:
                # The first two are acknowledged (the loop asked for the next one).
                await wait_for(lambda: bus.stats.acked == 2)
                break
        assert await pending(redis_client, stream, "g") == 1
    assert seen == ["o-0", "o-1", "o-2"]


async def test_run_forever_in_a_thread_and_stop(
    redis_client: aioredis.Redis, bus_factory: Any
) -> None:
    bus = bus_factory()
    got: list[str] = []
    connected = threading.Event()
    bus.on_order_update(lambda d: got.append(d["order_id"]))
    bus.on_connect(connected.set)
    thread = threading.Thread(target=bus.run_forever, daemon=True)
    thread.start()
    assert await anyio.to_thread.run_sync(connected.wait, 5)
    await add(redis_client, "orders", order(1))
    await wait_for(lambda: got == ["o-1"])
    assert await anyio.to_thread.run_sync(bus.stop) is True
    thread.join(5)
    assert not thread.is_alive()
    assert bus.stats.state == "stopped"


# -- start positions ------------------------------------------------------------------


async def test_start_positions(redis_client: aioredis.Redis, bus_factory: Any) -> None:
    await add(redis_client, "orders", order(1))
    await anyio.sleep(0.01)
    middle = datetime.now(UTC)
    await anyio.sleep(0.01)
    await add(redis_client, "orders", order(2))

    async def ids(start: Any, group: str, after: int | None = None) -> list[str]:
        got: list[str] = []
        bus = bus_factory(start=start, group=group)
        bus.on_order_update(lambda d: got.append(d["order_id"]))
        async with bus:
            if after is not None:
                await add(redis_client, "orders", order(after))
            expected = 1 if start == "$" or after else 2
            await wait_for(lambda: len(got) >= expected)
            await anyio.sleep(0.1)  # nothing more comes
        return got

    assert await ids("0", "replay") == ["o-1", "o-2"]
    assert await ids("$", "new", after=3) == ["o-3"]
    assert await ids(middle, "since") == ["o-2", "o-3"]
    # An existing group keeps its position: start applies to new groups only.
    assert await ids("0", "new", after=4) == ["o-4"]
    with pytest.raises(ConfigurationError):
        bus_factory(start="yesterday")
    with pytest.raises(ConfigurationError, match="below socket_timeout"):
        bus_factory(block_ms=5000, socket_timeout=2)


# -- groups, failures, dead letters -----------------------------------------------------


async def test_two_groups_each_get_every_entry(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    got: dict[str, list[str]] = {"a": [], "b": []}
    buses = []
    for group in got:
        bus = RedisBus(redis_url, group=group, **QUICK)
        bus.on_order_update(lambda d, g=group: got[g].append(d["order_id"]))
        buses.append(bus)
    async with buses[0], buses[1]:
        for n in range(50):
            await add(redis_client, "orders", order(n))
        await wait_for(lambda: len(got["a"]) == len(got["b"]) == 50)
    assert got["a"] == got["b"] == [f"o-{n}" for n in range(50)]  # each in order


async def test_a_handler_that_always_fails_is_dead_lettered_after_max_deliveries(
    redis_client: aioredis.Redis, bus_factory: Any
) -> None:
    bus = bus_factory(max_deliveries=3)
    calls: list[str] = []
    good: list[str] = []
    errors: list[Exception] = []

    @bus.on_order_update()
    async def fussy(d: dict[str, Any]) -> None:
        calls.append(d["order_id"])
        if d["order_id"] == "o-1":
            raise RuntimeError("cannot handle o-1")
        good.append(d["order_id"])

    bus.on_error(lambda exc, ctx: errors.append(exc))
    dead = stream_key("agentstream", "agentexchange", "dead")
    async with bus:
        for n in range(3):
            await add(redis_client, "orders", order(n))
        await wait_for(lambda: bus.stats.dead_lettered == 1)
    assert calls.count("o-1") == 3
    assert good == ["o-0", "o-2"]
    assert sum(isinstance(e, HandlerError) for e in errors) == 3
    [lettered] = [e for e in errors if isinstance(e, DeadLettered)]
    assert lettered.deliveries == 3
    read: Any = await redis_client.xrange(dead)
    [(_, fields)] = read
    assert fields[b"error"] == b"RuntimeError: cannot handle o-1"
    assert fields[b"deliveries"] == b"3"
    assert fields[b"group"] == b"g"
    assert fields[b"stream"] == b"agentstream:agentexchange:orders"
    assert fields[b"t"] == b"orders"  # the original fields are kept
    assert await pending(redis_client, "agentstream:agentexchange:orders", "g") == 0


async def test_a_garbage_entry_is_dead_lettered_at_once_and_the_stream_goes_on(
    redis_client: aioredis.Redis, bus_factory: Any
) -> None:
    bus = bus_factory()
    got: list[str] = []
    bus.on_order_update(lambda d: got.append(d["order_id"]))
    stream = stream_key("agentstream", "agentexchange", "orders")
    async with bus:
        await redis_client.xadd(
            stream, {"v": b"1", "t": b"orders", "c": b"orders", "r": b"1", "d": b"\xc1"}
        )
        await redis_client.xadd(stream, {"hello": "world"})
        await add(redis_client, "orders", [1, 2], kind="orders")  # not a map
        await add(redis_client, "orders", order(9))
        await wait_for(lambda: got == ["o-9"] and bus.stats.dead_lettered == 3)
    assert bus.stats.dropped_frames == 3
    assert await redis_client.xlen(stream_key("agentstream", "agentexchange", "dead")) == 3
    assert await pending(redis_client, stream, "g") == 0


# -- processes ---------------------------------------------------------------------------


def _spawn(url: str, group: str, name: str, out: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "consumer_proc.py"), url, group, name, str(out), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.fixture
async def procs() -> AsyncIterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in started:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


@pytest.mark.timeout(120)
async def test_three_processes_in_one_group_handle_each_order_exactly_once(
    redis_url: str, redis_client: aioredis.Redis, tmp_path: Path, procs: list[Any]
) -> None:
    outs = [tmp_path / f"c{i}.txt" for i in range(3)]
    for i, out in enumerate(outs):
        procs.append(
            await anyio.to_thread.run_sync(_spawn, redis_url, "team", f"c{i}", out, "0.002")
        )
    n = 300
    for k in range(n):
        await add(redis_client, "orders", order(k))
    await wait_for(lambda: sum(len(_lines(o)) for o in outs) >= n, timeout=60)
    await anyio.sleep(0.2)  # a duplicate would show up by now
    per = [_lines(o) for o in outs]
    handled = [x for p in per for x in p]
    assert sorted(handled) == sorted(f"o-{k}" for k in range(n))  # each once, none lost
    assert all(p for p in per), [len(p) for p in per]  # the work was shared


@pytest.mark.timeout(120)
async def test_a_consumer_killed_mid_stream_leaves_its_entries_to_another(
    redis_url: str, redis_client: aioredis.Redis, tmp_path: Path, procs: list[Any]
) -> None:
    out = tmp_path / "victim.txt"
    n = 200
    for k in range(n):
        await add(redis_client, "orders", order(k))
    # A slow consumer that holds up to 50 entries (max_in_flight) and handles ~100/s.
    victim = await anyio.to_thread.run_sync(_spawn, redis_url, "team", "victim", out, "0.01", "0.3")
    procs.append(victim)
    await wait_for(lambda: len(_lines(out)) >= 20, timeout=30)
    victim.kill()  # SIGKILL: no ack, no goodbye
    victim.wait(5)
    held = await pending(redis_client, "agentstream:agentexchange:orders", "team")
    assert held > 0  # it died holding entries

    survivor = RedisBus(redis_url, group="team", consumer="survivor", start="0", **QUICK)
    got: list[str] = []
    survivor.on_order_update(lambda d: got.append(d["order_id"]))
    async with survivor:
        await wait_for(lambda: len(set(got) | set(_lines(out))) == n, timeout=30)
        await wait_for(lambda: survivor.stats.in_flight == 0)
    assert survivor.stats.claimed >= held - 1  # (one may have been acked as it died)
    assert set(got) | set(_lines(out)) == {f"o-{k}" for k in range(n)}
    # At least once: only the entries the victim handled and had not acknowledged twice.
    assert len(set(got) & set(_lines(out))) <= held
    assert await pending(redis_client, "agentstream:agentexchange:orders", "team") == 0


async def test_entries_handled_before_a_stop_are_acknowledged_by_it(
    redis_client: aioredis.Redis, bus_factory: Any
) -> None:
    bus = bus_factory(start="0")
    release = anyio.Event()
    got: list[str] = []

    @bus.on_order_update()
    async def slow(d: dict[str, Any]) -> None:
        if d["order_id"] == "o-3":
            await release.wait()  # still running when the bus stops
        got.append(d["order_id"])

    @bus.on_order_update()
    def stopper(d: dict[str, Any]) -> None:
        if d["order_id"] == "o-2":
            bus.stop()  # the stop comes before the acknowledgements of o-2 went out

    for n in range(4):
        await add(redis_client, "orders", order(n))
    async with bus:
        await wait_for(lambda: len(got) >= 2 and bus.stats.state == "stopped")
    stream = stream_key("agentstream", "agentexchange", "orders")
    handled = set(got)
    # Each entry both handlers returned for is acknowledged; the others stay pending.
    assert await pending(redis_client, stream, "g") == 4 - bus.stats.acked
    assert bus.stats.acked == bus.stats.handled == len(handled - {"o-3"}) >= 2
    assert bus.stats.in_flight == 0  # o-3 was abandoned: pending for the group
    # The same consumer name, started again, first takes what it left pending (no
    # claim_idle to wait: its own pending entries).
    again = bus_factory(claim_idle=60)
    seen: list[str] = []
    again.on_order_update(lambda d: seen.append(d["order_id"]))
    async with again:
        await wait_for(lambda: "o-3" in seen and again.stats.acked == len(seen))
    assert set(seen) == {f"o-{n}" for n in range(4)} - handled | {"o-3"}
    assert await pending(redis_client, stream, "g") == 0


# -- Redis down ---------------------------------------------------------------------------


async def test_a_consumer_started_before_redis_waits_with_backoff() -> None:
    server = LocalRedis()
    try:
        bus = RedisBus(server.url, group="g", **QUICK)
        bus.on_order_update(lambda d: None)
        async with anyio.create_task_group() as tg:
            tg.start_soon(bus.connect)
            await wait_for(lambda: bus.stats.failed_attempts >= 2)
            await anyio.sleep(0.3)
            # Backoff (20 ms doubling to 100 ms), not a busy loop: a handful of attempts.
            assert bus.stats.failed_attempts < 15
            assert bus.stats.state == "reconnecting"
            await anyio.to_thread.run_sync(server.start)
            await wait_for(lambda: bus.stats.state == "connected", timeout=10)
            await bus.disconnect()
    finally:
        server.close()


@pytest.mark.timeout(60)
async def test_the_consumer_survives_a_redis_restart() -> None:
    import redis.asyncio as aioredis

    with LocalRedis() as server:
        bus = RedisBus(server.url, group="g", start="0", **QUICK)
        got: list[str] = []
        downs: list[str] = []
        bus.on_order_update(lambda d: got.append(d["order_id"]))
        bus.on_disconnect(downs.append)
        async with bus:
            r = aioredis.Redis.from_url(server.url)
            try:
                await add(r, "orders", order(1))
                await wait_for(lambda: got == ["o-1"])
            finally:
                await r.aclose()
            await anyio.to_thread.run_sync(server.restart)  # not persistent: emptied
            await wait_for(lambda: bus.stats.state == "connected" and bus.stats.reconnects == 1)
            r = aioredis.Redis.from_url(server.url)
            try:
                await add(r, "orders", order(2))  # a new stream: the group is made again
                await wait_for(lambda: got == ["o-1", "o-2"], timeout=10)
            finally:
                await r.aclose()
        assert downs
        assert bus.stats.reconnects == 1


# -- handlers removed, loops left: what they held is delivered again ----------------------


async def test_a_handler_removed_mid_entry_leaves_the_entry_to_the_next_handler(
    redis_client: aioredis.Redis, bus_factory: Any
) -> None:
    bus = bus_factory(start="0")
    stream = stream_key("agentstream", "agentexchange", "orders")
    started = anyio.Event()

    async def slow(d: dict[str, Any]) -> None:
        started.set()
        await anyio.sleep(60)

    bus.on_order_update(slow)
    await add(redis_client, "orders", order(1))
    got: list[str] = []
    async with bus:
        await started.wait()
        assert bus.stats.in_flight == 1
        bus.remove_handler(slow)  # cancelled in the middle of the entry
        assert bus.stats.in_flight == 0
        bus.on_order_update(lambda d: got.append(d["order_id"]))
        # Not acknowledged: claimed back after claim_idle, for the new handler.
        await wait_for(lambda: got == ["o-1"] and bus.stats.acked == 1)
        assert await pending(redis_client, stream, "g") == 0
        assert bus.stats.in_flight == 0


async def test_a_thread_handler_removed_mid_batch_leaves_every_entry_of_it(
    redis_client: aioredis.Redis, bus_factory: Any
) -> None:
    """thread=True takes several entries to its worker thread at once: removing it
    leaves all of them (not only those still queued) to be delivered again."""
    bus = bus_factory(start="0")
    stream = stream_key("agentstream", "agentexchange", "orders")
    release = threading.Event()
    entered = threading.Event()

    def blocking(d: dict[str, Any]) -> None:
        entered.set()
        release.wait(10)

    for n in range(3):
        await add(redis_client, "orders", order(n))
    bus.on_order_update(blocking, thread=True)
    got: list[str] = []
    try:
        async with bus:
            await wait_for(lambda: entered.is_set() and bus.stats.in_flight == 3)
            bus.remove_handler(blocking)
            assert bus.stats.in_flight == 0
            release.set()  # its thread returns: ignored, the entry was left
            bus.on_order_update(lambda d: got.append(d["order_id"]))
            await wait_for(lambda: len(got) == 3 and bus.stats.acked == 3)
            assert await pending(redis_client, stream, "g") == 0
    finally:
        release.set()
    assert sorted(got) == ["o-0", "o-1", "o-2"]


async def test_a_removed_handler_does_not_take_back_an_entry_another_handled(
    redis_client: aioredis.Redis, bus_factory: Any
) -> None:
    """Entries that went to two handlers: removing the stuck one settles them with the
    other one's result (acknowledged once, not delivered again)."""
    bus = bus_factory(start="0")
    stream = stream_key("agentstream", "agentexchange", "orders")
    started = anyio.Event()

    async def stuck(d: dict[str, Any]) -> None:
        started.set()
        await anyio.sleep(60)

    fast: list[str] = []
    bus.on_order_update(stuck)
    bus.on_order_update(lambda d: fast.append(d["order_id"]))
    for n in range(3):
        await add(redis_client, "orders", order(n))
    async with bus:
        await started.wait()
        await wait_for(lambda: len(fast) == 3)
        assert bus.stats.acked == 0 and bus.stats.in_flight == 3
        bus.remove_handler(stuck)  # one entry in its call, two queued for it
        await wait_for(lambda: bus.stats.acked == 3)
        assert await pending(redis_client, stream, "g") == 0
        assert bus.stats.in_flight == 0
        assert bus.stats.handled == 3
    assert fast == ["o-0", "o-1", "o-2"]


async def test_leaving_a_listen_loop_leaves_its_entries_for_a_retry(
    redis_client: aioredis.Redis, bus_factory: Any
) -> None:
    """A break: the entry the loop had and those queued for it are not acknowledged;
    they are delivered again (claim_idle), and reading goes on past max_in_flight."""
    bus = bus_factory(start="0", max_in_flight=3)
    stream = stream_key("agentstream", "agentexchange", "orders")
    for n in range(5):
        await add(redis_client, "orders", order(n))
    first: list[str] = []
    later: list[str] = []
    async with bus:
        loop = bus.listen(OrderUpdate)
        async for o in loop:
            first.append(o.order_id)
            break
        await loop.aclose()  # (what the event loop does soon after a break)
        assert bus.stats.in_flight == 0
        assert bus.stats.acked == 0
        bus.on_order_update(lambda d: later.append(d["order_id"]))
        for n in range(5, 8):
            await add(redis_client, "orders", order(n))
        await wait_for(lambda: len(later) == 8 and bus.stats.acked == 8)
        assert await pending(redis_client, stream, "g") == 0
    assert first == ["o-0"]
    assert sorted(later) == [f"o-{n}" for n in range(8)]


async def test_a_slow_candle_loop_gets_every_entry(
    redis_client: aioredis.Redis, bus_factory: Any
) -> None:
    """listen(Candle, symbol, interval) on the bus: never conflated, each acknowledged."""
    bus = bus_factory(start="0")
    base: dict[str, Any] = {"symbol": "BTCUSDT", "interval": "1m", "open": "1"}
    base |= {"high": "2", "low": "1", "close": "2", "volume": "3", "is_closed": True}
    for i in range(4):
        at = 1_764_676_800_000 + i * 60_000  # ms
        await add(redis_client, "candles:BTCUSDT:1m", {**base, "open_time": at})
    got: list[int] = []
    async with bus:
        async for c in bus.listen(Candle, "BTCUSDT", "1m"):
            got.append(int(c.open_time.timestamp()))
            if len(got) == 1:
                # The loop body is slow: the other three wait in its queue, all kept.
                await wait_for(lambda: bus.stats.in_flight == 4)
            if len(got) == 4:
                break
        assert bus.stats.conflated == 0
        assert bus.stats.handled == 3  # the last one: the loop was left with it
        await wait_for(lambda: bus.stats.acked == 3)
    assert got == [1_764_676_800 + i * 60 for i in range(4)]


# -- Redis with a password ----------------------------------------------------------------


async def test_a_password_stays_out_of_repr_logs_and_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    password = "hunter2-redis-password"
    with LocalRedis(args=["--requirepass", password]) as server:
        url = f"redis://:{password}@127.0.0.1:{server.port}/0"
        bus = RedisBus(url, group="g", **QUICK)
        errors: list[BaseException] = []
        got: list[str] = []
        bus.on_error(lambda e, ctx: errors.append(e))
        bus.on_order_update(lambda d: got.append(d["order_id"]))
        assert password not in repr(bus)
        assert ":***@" in repr(bus)
        async with bus:
            import redis.asyncio as aioredis

            r = aioredis.Redis.from_url(url)
            try:
                await add(r, "orders", order(1))
            finally:
                await r.aclose()
            await wait_for(lambda: got == ["o-1"])
            await anyio.to_thread.run_sync(server.stop)  # warnings and errors, with the URL
            await wait_for(lambda: bus.stats.failed_attempts >= 2)
            await anyio.to_thread.run_sync(server.start)
            await wait_for(lambda: bus.stats.state == "connected")
    assert errors
    texts = [caplog.text, repr(bus)] + [f"{e} {e!r}" for e in errors]
    assert any(":***@127.0.0.1" in t for t in texts)
    assert not any(password in t for t in texts)


async def test_a_wrong_redis_password_stops_the_consumer_for_good() -> None:
    with LocalRedis(args=["--requirepass", "right-password"]) as server:
        url = f"redis://:wrong-password@127.0.0.1:{server.port}/0"
        bus = RedisBus(url, group="g", **QUICK)
        bus.on_order_update(lambda d: None)
        with pytest.raises(AuthenticationError) as info:
            await bus.connect()
        assert "wrong-password" not in str(info.value)
        assert bus.stats.state == "failed"
        assert bus.stats.failed_attempts == 0  # not retried
        assert bus.error is info.value
        with pytest.raises(AuthenticationError):
            await anyio.to_thread.run_sync(bus.run_forever)


# -- an entry handled, its XACK lost with the connection -----------------------------------


@pytest.mark.timeout(60)
async def test_an_entry_whose_ack_was_lost_is_not_handled_again_after_a_reconnect() -> None:
    import redis.asyncio as aioredis

    with LocalRedis(persistent=True) as server:
        r = aioredis.Redis.from_url(server.url)
        try:
            await add(r, "orders", order(1))
        finally:
            await r.aclose()
        # claim_idle long: only the reconnect's read of our own pending entries counts.
        bus = RedisBus(server.url, group="g", start="0", **{**QUICK, "claim_idle": 60})
        calls: list[str] = []

        def handler(d: dict[str, Any]) -> None:
            calls.append(d["order_id"])
            server.kill()  # Redis dies after the handler, before the XACK

        bus.on_order_update(handler)
        async with bus:
            await wait_for(lambda: calls == ["o-1"] and bus.stats.failed_attempts >= 1)
            await anyio.to_thread.run_sync(server.start)
            await wait_for(lambda: bus.stats.reconnects == 1 and bus.stats.acked == 1, timeout=10)
            r = aioredis.Redis.from_url(server.url)
            try:
                stream = stream_key("agentstream", "agentexchange", "orders")
                assert await pending(r, stream, "g") == 0
            finally:
                await r.aclose()
        assert calls == ["o-1"]
        assert bus.stats.read == 1
