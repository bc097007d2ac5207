"""The supervisor rules, each shown against the real simulated exchange."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections import Counter
from decimal import Decimal
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from agentstream import (
    AgentExchangeWS,
    AuthenticationError,
    Candle,
    HandlerError,
    OrderUpdate,
    ServerError,
    StaleConnectionError,
    StreamConnectionError,
    Ticker,
)
from agentstream.sim import DEMO_API_KEY, SimExchange
from tests.client.conftest import FAST, make_client, running, wait_for

pytestmark = pytest.mark.anyio

CHANNELS = {"ticker:BTCUSDT", "ticker:ETHUSDT", "candles:BTCUSDT:1m", "orders", "portfolio"}


def _register_five(ws: AgentExchangeWS, sink: list[Any]) -> None:
    ws.on_ticker("BTCUSDT", sink.append)
    ws.on_ticker("ETHUSDT", sink.append)
    ws.on_candles("BTCUSDT", "1m", sink.append)
    ws.on_order_update(sink.append)
    ws.on_portfolio(sink.append)


async def test_resubscribes_exactly_after_every_drop(sim: SimExchange) -> None:
    ws = make_client(sim)
    got: list[Any] = []
    _register_five(ws, got)
    async with running(ws):
        for i in range(5):
            await wait_for(lambda: sim.subscriptions() == [CHANNELS], what="full subscription")
            opened = sim.stats.connections_opened
            await sim.drop_connections(code=None if i % 2 else 1012)
            await wait_for(
                lambda n=opened: sim.stats.connections_opened == n + 1,  # type: ignore[misc]
                what="reconnect",
            )
        await wait_for(lambda: sim.subscriptions() == [CHANNELS])
        assert ws.stats.reconnects == 5
    records = list(sim.connection_log)
    assert len(records) == 6
    for rec in records:
        # Exactly the current set on every connection: nothing missing, nothing twice.
        assert Counter(rec.subscribe_requests) == Counter(CHANNELS), rec


async def test_channel_added_while_disconnected_is_subscribed_once(sim: SimExchange) -> None:
    ws = make_client(sim, backoff_initial=0.05)
    ws.on_ticker("BTCUSDT", lambda d: None)
    async with running(ws):
        await wait_for(lambda: sim.subscriptions() == [{"ticker:BTCUSDT"}])
        sim.refuse_handshakes(503)
        await sim.drop_connections()
        await wait_for(lambda: ws.stats.failed_attempts >= 1, what="a refused attempt")
        ws.on_ticker("SOLUSDT", lambda d: None)
        ws.on_order_update(lambda d: None)
        sim.accept_handshakes()
        want = {"ticker:BTCUSDT", "ticker:SOLUSDT", "orders"}
        await wait_for(lambda: sim.subscriptions() == [want], what="resubscription")
    last = list(sim.connection_log)[-1]
    assert Counter(last.subscribe_requests) == Counter(want)


async def test_handler_added_and_removed_while_connected(sim: SimExchange) -> None:
    ws = make_client(sim)
    ws.on_ticker("BTCUSDT", lambda d: None)
    async with running(ws):
        await wait_for(lambda: sim.subscriptions() == [{"ticker:BTCUSDT"}])

        def on_eth(d: dict[str, Any]) -> None:
            pass

        ws.on_ticker("ETHUSDT", on_eth)
        await wait_for(lambda: sim.subscriptions() == [{"ticker:BTCUSDT", "ticker:ETHUSDT"}])
        assert ws.remove_handler(on_eth) == 1
        await wait_for(lambda: sim.subscriptions() == [{"ticker:BTCUSDT"}])
        ws.unsubscribe("ticker:BTCUSDT")
        await wait_for(lambda: sim.subscriptions() == [set()])
    rec = next(iter(sim.connection_log))
    assert sorted(rec.unsubscribe_requests) == ["ticker:BTCUSDT", "ticker:ETHUSDT"]


async def test_silent_server_is_detected_and_left(sim: SimExchange) -> None:
    stale = 0.4
    ws = make_client(sim, stale_timeout=stale)
    errors: list[BaseException] = []
    ws.on_error(lambda exc, ctx: errors.append(exc))
    ws.on_ticker("BTCUSDT", lambda d: None)
    async with running(ws):
        await wait_for(lambda: ws.stats.messages_total > 10)
        silenced_at = time.monotonic()
        assert sim.go_silent() == 1
        await wait_for(lambda: sim.stats.connections_opened == 2, timeout=3, what="reconnect")
        detected = time.monotonic() - silenced_at
        await wait_for(lambda: any(isinstance(e, StaleConnectionError) for e in errors))
        before = ws.stats.messages_total
        await wait_for(lambda: ws.stats.messages_total > before + 10, what="data again")
    # Not before the stale timeout. (How soon after it is not asserted: a wall-clock
    # bound fails on a loaded machine; the wait above bounds it at 3 s.)
    assert stale <= detected


async def test_pings_without_data_are_not_stale() -> None:
    async with SimExchange(tick_rate=0, ping_interval=0.05, pong_timeout=0.2) as quiet:
        ws = AgentExchangeWS(DEMO_API_KEY, quiet.url, **{**FAST, "stale_timeout": 0.3})
        ws.on_order_update(lambda d: None)
        async with running(ws):
            await anyio.sleep(1.2)
            assert ws.stats.messages_total == 0
            assert ws.stats.pings >= 10
        assert quiet.stats.connections_opened == 1
        assert ws.stats.reconnects == 0


@pytest.mark.parametrize("mode", ["http", "close"])
async def test_auth_refused_once_and_fatal(mode: str) -> None:
    async with SimExchange(auth_failure=mode) as s:
        ws = AgentExchangeWS("ak_live_wrongwrongwrong", s.url, **FAST)
        ws.on_ticker("BTCUSDT", lambda d: None)
        with anyio.fail_after(5), pytest.raises(AuthenticationError) as info:
            await ws.connect()
        await anyio.sleep(0.3)  # any retry would have happened by now
        assert s.stats.handshakes == 1
        assert ws.error is info.value
        assert ws.stats.state == "failed"
        if mode == "http":
            assert info.value.status == 403
        else:
            assert info.value.close_code == 4401


async def test_key_revoked_mid_stream_stops_for_good(sim: SimExchange) -> None:
    ws = make_client(sim)
    ws.on_ticker("BTCUSDT", lambda d: None)

    async def revoke() -> None:
        await wait_for(lambda: ws.stats.messages_total > 0)
        await sim.revoke_key(DEMO_API_KEY)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(revoke)
            with pytest.raises(AuthenticationError) as info:
                await ws.connect()
    assert info.value.close_code == 4401
    assert sim.stats.connections_opened == 1


async def test_5xx_retried_on_the_backoff_schedule(sim: SimExchange) -> None:
    ws = make_client(sim, backoff_initial=0.05, backoff_max=0.4, backoff_jitter=0.0)
    ws.on_ticker("BTCUSDT", lambda d: None)
    sim.refuse_handshakes(503, count=4)
    started = time.monotonic()
    async with running(ws):
        await wait_for(lambda: sim.stats.connections_opened == 1, timeout=5)
        took = time.monotonic() - started
    assert sim.stats.handshakes_refused == 4
    assert ws.stats.failed_attempts == 4
    # 0.05 + 0.1 + 0.2 + 0.4 before the fifth attempt
    assert 0.75 <= took < 2.0


async def test_raising_handler_is_reported_and_stream_goes_on(sim: SimExchange) -> None:
    ws = make_client(sim)
    good: list[Any] = []
    errors: list[tuple[BaseException, dict[str, Any]]] = []

    def bad(data: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    ws.on_ticker("BTCUSDT", bad)
    ws.on_ticker("BTCUSDT", good.append)
    ws.on_error(lambda exc, ctx: errors.append((exc, ctx)))
    async with running(ws):
        await wait_for(lambda: len(good) > 50 and len(errors) > 50)
    assert ws.stats.handler_errors >= 50
    exc, ctx = errors[0]
    assert isinstance(exc, HandlerError)
    assert isinstance(exc.__cause__, RuntimeError)
    assert ctx["channel"] == "ticker:BTCUSDT"
    assert sim.stats.connections_opened == 1


@pytest.mark.parametrize("kind", ["async", "thread"])
async def test_slow_handler_delays_neither_pongs_nor_orders(kind: str) -> None:
    # Pings every 50 ms with 150 ms of grace: a delayed pong would get us dropped.
    async with SimExchange(
        tick_rate=3000, ping_interval=0.05, pong_timeout=0.15, order_interval=0.02
    ) as s:
        ws = AgentExchangeWS(DEMO_API_KEY, s.url, **FAST, queue_size=200)
        order_times: dict[str, float] = {}
        slow_calls: list[int] = []
        busy = threading.Event()  # the slow handler is inside a 2 s call
        busy_at_fill: list[bool] = []
        if kind == "async":

            async def slow(data: dict[str, Any]) -> None:
                slow_calls.append(1)
                busy.set()
                await asyncio.sleep(2)
                busy.clear()

            ws.on_ticker("all", slow)
        else:

            def blocking(data: dict[str, Any]) -> None:
                slow_calls.append(1)
                busy.set()
                time.sleep(2)
                busy.clear()

            ws.on_ticker("all", blocking, thread=True)

        def on_order(o: OrderUpdate) -> None:
            if o.status not in order_times and o.status == "filled":
                busy_at_fill.append(busy.is_set())
            order_times.setdefault(o.status, time.monotonic())

        ws.on_order_update(on_order)
        async with running(ws):
            await wait_for(lambda: slow_calls, what="the slow handler to start")
            await s.place_order(
                DEMO_API_KEY, symbol="BTCUSDT", side="buy", type="market", quantity="0.001"
            )
            await wait_for(lambda: "filled" in order_times, timeout=2, what="the fill")
            await anyio.sleep(0.5)  # several ping periods while the handler is still busy
            pongs = s.open_connections()[0].pongs
        # A market order fills in the POST, as on the platform: one `filled` event. It
        # reached its handler while the slow handler was still inside its 2 s call: not
        # queued behind ticks (causal, not a wall-clock bound).
        assert busy_at_fill == [True]
        assert s.stats.connections_opened == 1, "a late pong got the client dropped"
        assert pongs >= 8
        assert ws.stats.conflated > 0  # the slow tick handler's queue conflated


async def test_typed_handlers_and_candles_closed_only_by_default(sim: SimExchange) -> None:
    ws = make_client(sim)
    ticks: list[Ticker] = []
    closed: list[Candle] = []
    partial: list[Candle] = []

    def on_tick(t: Ticker) -> None:
        ticks.append(t)

    def on_closed(c: Candle) -> None:
        closed.append(c)

    def on_partial(c: Candle) -> None:
        partial.append(c)

    ws.on_ticker("ETHUSDT", on_tick)
    ws.on_candles("BTCUSDT", "1m", on_closed)
    ws.on_candles("BTCUSDT", "1m", on_partial, partial=True)
    async with running(ws):
        await wait_for(lambda: len(closed) >= 2 and len(ticks) > 5, timeout=5)
    t = ticks[0]
    assert t.symbol == "ETHUSDT"
    assert isinstance(t.price, Decimal)
    assert t.timestamp.tzinfo is not None
    assert all(c.is_closed for c in closed)
    assert any(not c.is_closed for c in partial)
    assert closed[1].open_time - closed[0].open_time == (closed[1].time - closed[0].time)
    assert (closed[1].open_time - closed[0].open_time).total_seconds() == 60
    assert closed[0].symbol == "BTCUSDT"
    assert closed[0].interval == "1m"


async def test_dict_payloads_have_the_seed_fields(sim: SimExchange) -> None:
    ws = make_client(sim)
    seen: dict[str, dict[str, Any]] = {}
    ws.on_ticker("SOLUSDT", lambda d: seen.setdefault("ticker", d))
    ws.on_candles("BTCUSDT", "1m", lambda d: seen.setdefault("candle", d))
    ws.on_order_update(lambda d: seen.setdefault("order", d))
    ws.on_portfolio(lambda d: seen.setdefault("portfolio", d))
    async with running(ws):
        await wait_for(lambda: "ticker" in seen)
        # A limit order far below the market rests: its event is `pending`.
        await sim.place_order(
            DEMO_API_KEY, symbol="ETHUSDT", side="buy", type="limit", quantity="2", price="1"
        )
        await wait_for(lambda: len(seen) == 4, timeout=5)
    assert seen["ticker"]["symbol"] == "SOLUSDT"
    assert isinstance(seen["ticker"]["price"], str)
    c = seen["candle"]
    assert c["symbol"] == "BTCUSDT"
    assert c["interval"] == "1m"
    assert c["open_time"] == c["time"]
    assert {"open", "high", "low", "close", "volume"} <= set(c)
    o = seen["order"]
    assert o["status"] == "pending"
    assert o["executed_price"] is None  # present even before it applies
    assert "roi_pct" in seen["portfolio"]


async def test_all_wildcard_gets_many_symbols(sim: SimExchange) -> None:
    ws = make_client(sim)
    symbols: set[str] = set()
    ws.on_ticker("all", lambda d: symbols.add(d["symbol"]))
    async with running(ws):
        await wait_for(lambda: len(symbols) > 50)
    assert next(iter(sim.connection_log)).subscribe_requests == ["ticker:all"]


async def test_more_than_ten_channels_use_more_connections(sim: SimExchange) -> None:
    ws = make_client(sim)
    symbols = list(sim.market.pairs)[:23]
    for sym in symbols:
        ws.on_ticker(sym, lambda d: None)
    async with running(ws):
        await wait_for(lambda: sum(len(s) for s in sim.subscriptions()) == 23)
        subs = sim.subscriptions()
    assert sorted(len(s) for s in subs) == [3, 10, 10]
    assert set().union(*subs) == {f"ticker:{s}" for s in symbols}


async def test_lower_server_limit_is_learned_without_losing_channels() -> None:
    async with SimExchange(subscription_limit=3, tick_rate=500) as s:
        ws = AgentExchangeWS(DEMO_API_KEY, s.url, **FAST)
        errors: list[BaseException] = []
        ws.on_error(lambda exc, ctx: errors.append(exc))
        symbols = list(s.market.pairs)[:8]
        for sym in symbols:
            ws.on_ticker(sym, lambda d: None)
        async with running(ws):
            await wait_for(
                lambda: set().union(*s.subscriptions()) == {f"ticker:{x}" for x in symbols},
                what="every channel subscribed somewhere",
            )
            subs = s.subscriptions()
        assert all(len(x) <= 3 for x in subs)
        assert sum(len(x) for x in subs) == 8
        limit_errors = [e for e in errors if isinstance(e, ServerError)]
        assert limit_errors
        assert limit_errors[0].code == "SUBSCRIPTION_LIMIT"


async def test_invalid_channel_is_reported_and_the_rest_streams() -> None:
    # A symbol the server does not list: it answers INVALID_CHANNEL, for good.
    async with SimExchange(tick_rate=500) as s:
        ws = AgentExchangeWS(DEMO_API_KEY, s.url, **FAST)
        errors: list[tuple[BaseException, dict[str, Any]]] = []
        ws.on_error(lambda exc, ctx: errors.append((exc, ctx)))
        ws.on_candles("NOPEUSDT", "15m", lambda d: None)
        got: list[Any] = []
        ws.on_ticker("BTCUSDT", got.append)
        async with running(ws):
            await wait_for(lambda: errors and len(got) > 5)
            opened = s.stats.connections_opened
            await s.drop_connections()
            await wait_for(lambda: s.stats.connections_opened == opened + 1)
            await wait_for(lambda: s.subscriptions() == [{"ticker:BTCUSDT"}])
        exc, _ = errors[0]
        assert isinstance(exc, ServerError)
        assert exc.code == "INVALID_CHANNEL"
        assert exc.channel == "candles:NOPEUSDT:15m"
        # An unknown symbol is no reason to build 15m from 5m: nothing else was tried.
        assert [type(e) for e, _ in errors] == [ServerError]
        assert all("5m" not in key for rec in s.connection_log for key in rec.subscribe_requests)
        # Not sent again after the reconnect: it would only fail again.
        assert list(s.connection_log)[-1].subscribe_requests == ["ticker:BTCUSDT"]


async def test_malformed_frames_are_counted_and_dropped(sim: SimExchange) -> None:
    ws = make_client(sim)
    typed: list[Ticker] = []

    def on_btc(t: Ticker) -> None:
        typed.append(t)

    ws.on_ticker("BTCUSDT", on_btc)
    async with running(ws):
        await wait_for(lambda: len(typed) > 3)
        sim.send_raw("{not json")
        sim.send_raw(b"\x00\x01binary", binary=True)
        sim.send_raw(
            '{"channel":"ticker","symbol":"BTCUSDT","data":{"price":"NaN",'
            '"timestamp":"2026-01-01T00:00:00Z"}}'
        )
        sim.send_raw('{"channel":"ticker","symbol":"BTCUSDT","data":[1,2]}')
        await wait_for(lambda: ws.stats.dropped_frames >= 2 and ws.stats.invalid_events >= 2)
        n = len(typed)
        await wait_for(lambda: len(typed) > n + 3, what="the stream to go on")
    assert all(t.price.is_finite() for t in typed)
    assert sim.stats.connections_opened == 1


async def test_subscribe_from_a_handler_and_from_another_thread(sim: SimExchange) -> None:
    ws = make_client(sim)
    added = threading.Event()

    def on_btc(data: dict[str, Any]) -> None:
        if not added.is_set():
            added.set()
            ws.on_ticker("ETHUSDT", lambda d: None)  # from inside a handler

    ws.on_ticker("BTCUSDT", on_btc)
    async with running(ws):
        await wait_for(lambda: sim.subscriptions() == [{"ticker:BTCUSDT", "ticker:ETHUSDT"}])
        t = threading.Thread(target=lambda: ws.subscribe("ticker:SOLUSDT"))
        t.start()
        t.join()
        await wait_for(
            lambda: sim.subscriptions() == [{"ticker:BTCUSDT", "ticker:ETHUSDT", "ticker:SOLUSDT"}]
        )


async def test_listen_yields_typed_events(sim: SimExchange) -> None:
    ws = make_client(sim)
    got: list[Ticker] = []
    with anyio.fail_after(5):
        async with ws:
            async for t in ws.listen(Ticker, "BTCUSDT"):
                got.append(t)
                if len(got) == 5:
                    break
    assert all(t.symbol == "BTCUSDT" for t in got)
    assert next(iter(sim.connection_log)).subscribe_requests == ["ticker:BTCUSDT"]


@pytest.mark.parametrize("then_stop", [False, True], ids=["running", "then-stopped"])
async def test_a_listen_whose_channel_is_unsubscribed_ends(
    sim: SimExchange, then_stop: bool
) -> None:
    """Nothing polls: the iterator must be woken when its channel goes (and on stop)."""
    ws = make_client(sim)
    ws.on_ticker("ETHUSDT", lambda d: None)  # keeps the client streaming meanwhile
    got: list[Ticker] = []
    ended = anyio.Event()

    async def consume() -> None:
        async for t in ws.listen(Ticker, "BTCUSDT"):
            got.append(t)
        ended.set()

    with anyio.fail_after(5):
        async with ws, anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await wait_for(lambda: len(got) >= 2)
            ws.unsubscribe("ticker:BTCUSDT")
            if then_stop:
                await ws.disconnect()
            await ended.wait()
    await wait_for(lambda: sim.subscriptions() in ([], [{"ticker:ETHUSDT"}]))


async def test_hooks_connect_disconnect_reconnect(sim: SimExchange) -> None:
    ws = make_client(sim)
    events: list[Any] = []
    ws.on_connect(lambda: events.append("connect"))
    ws.on_disconnect(lambda reason: events.append(("disconnect", reason)))

    async def resync(client: AgentExchangeWS, tag: str) -> None:
        events.append(("reconnect", client is ws, tag))

    ws.on_reconnect(resync, "tag")
    ws.on_ticker("BTCUSDT", lambda d: None)
    async with running(ws):
        await wait_for(lambda: events == ["connect"])
        await sim.drop_connections(code=1001)
        await wait_for(lambda: len(events) == 4)
    assert events[1][0] == "disconnect"
    assert "1001" in events[1][1]
    assert events[2:] == ["connect", ("reconnect", True, "tag")]


async def test_no_task_left_after_disconnect(sim: SimExchange) -> None:
    before = {t for t in asyncio.all_tasks() if not t.done()}
    ws = make_client(sim)
    ws.on_ticker("BTCUSDT", lambda d: None)
    ws.on_order_update(lambda d: None, thread=True)
    async with running(ws):
        await wait_for(lambda: ws.stats.messages_total > 5)
    await anyio.sleep(0.05)
    after = {t for t in asyncio.all_tasks() if not t.done()}
    assert after - before == set()
    assert ws.stats.state == "stopped"


def test_run_forever_and_stop_from_another_thread(threaded_sim: str) -> None:
    threads_before = set(threading.enumerate())
    ws = AgentExchangeWS(DEMO_API_KEY, threaded_sim, **FAST)
    prices: list[str] = []
    ws.on_ticker("BTCUSDT", lambda d: prices.append(d["price"]))
    t = threading.Thread(target=ws.run_forever, daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    while len(prices) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(prices) >= 5
    started = time.monotonic()
    assert ws.stop() is True
    assert time.monotonic() - started < 1.0
    t.join(1)
    assert not t.is_alive()
    assert ws.stop() is True  # idempotent
    assert ws.error is None
    time.sleep(0.1)
    leftover = {th for th in threading.enumerate() if th.is_alive()} - threads_before
    assert leftover == set(), leftover


def test_run_forever_keeps_the_fatal_error(threaded_sim: str) -> None:
    ws = AgentExchangeWS("ak_live_not_a_valid_key", threaded_sim, **FAST)
    raised: list[BaseException] = []

    def target() -> None:
        try:
            ws.run_forever()
        except AuthenticationError as exc:
            raised.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive()
    assert isinstance(ws.error, AuthenticationError)
    assert raised == [ws.error]


async def test_all_plus_one_symbol_delivers_each_trade_once(sim: SimExchange) -> None:
    ws = make_client(sim)
    from_all: list[str] = []
    from_btc: list[str] = []
    ws.on_ticker("all", lambda d: from_all.append(d["symbol"]), every=True)
    ws.on_ticker("BTCUSDT", lambda d: from_btc.append(d["symbol"]), every=True)
    async with running(ws):
        await wait_for(lambda: len(from_btc) > 20)
        # ticker:all already carries BTCUSDT: subscribing it too would send it twice.
        assert sim.subscriptions() == [{"ticker:all"}]
    assert from_all.count("BTCUSDT") == len(from_btc)


def test_stop_when_idle_is_harmless_and_a_client_runs_again_on_a_new_loop(
    threaded_sim: str,
) -> None:
    ws = AgentExchangeWS(DEMO_API_KEY, threaded_sim, **FAST)
    assert ws.stop() is True  # not running: nothing happens, nothing is remembered
    ticks: list[Any] = []
    ws.on_ticker("BTCUSDT", ticks.append)
    for _ in range(2):  # each run_forever() has its own event loop
        n = len(ticks)
        t = threading.Thread(target=ws.run_forever, daemon=True)
        t.start()
        deadline = time.monotonic() + 5
        while len(ticks) < n + 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(ticks) >= n + 3
        assert ws.stop() is True
        t.join(1)
        assert not t.is_alive()


async def test_a_stopped_client_runs_again_on_the_same_loop_with_its_handlers_and_counts(
    sim: SimExchange,
) -> None:
    # docs/lifecycle.md "restarting" and docs/threads.md promise this; both pages once
    # disagreed about it.
    ws = make_client(sim)
    ticks: list[Any] = []
    ws.on_ticker("BTCUSDT", ticks.append)
    for run in (1, 2):
        before = len(ticks)
        async with ws:
            with pytest.raises(RuntimeError, match="already running"):
                await ws.connect()  # one run at a time

            def three_more(n: int = before + 3) -> bool:
                return len(ticks) >= n

            await wait_for(three_more, what="three ticks in this run")
        assert ws.stats.state == "stopped"
        assert ws.error is None
        assert sim.stats.connections_opened == run  # each run opens a fresh socket
        # The same handler got this run's ticks, and the counters are totals since the
        # client was created: a reset would leave fewer messages than ticks delivered.
        assert ws.stats.messages.get("ticker:BTCUSDT", 0) >= len(ticks)
    assert len(ticks) >= 6


def test_a_second_run_forever_while_running_raises_and_stop_still_stops_the_first(
    threaded_sim: str,
) -> None:
    ws = AgentExchangeWS(DEMO_API_KEY, threaded_sim, **FAST)
    ticks: list[Any] = []
    ws.on_ticker("BTCUSDT", ticks.append)
    first = threading.Thread(target=ws.run_forever, daemon=True)
    first.start()
    deadline = time.monotonic() + 5
    while not ticks and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ticks
    with pytest.raises(RuntimeError, match="already running"):
        ws.run_forever()
    assert ws.stats.state == "connected"  # the first run goes on
    assert ws.stop() is True  # and a stop() still reaches it
    first.join(1)
    assert not first.is_alive()


def test_once_stop_returned_true_the_client_can_run_again_at_once(threaded_sim: str) -> None:
    # A new user's script: run_forever() in a thread, stop(), then at once `async with
    # ws`. stop() returned True when the run ended but run_forever()'s own event loop
    # was still closing, and the restart raised "already running" about half the time.
    ws = AgentExchangeWS(DEMO_API_KEY, threaded_sim, **FAST)
    ticks: list[Any] = []
    ws.on_ticker("BTCUSDT", ticks.append)

    async def briefly() -> None:
        async with ws:
            n = len(ticks)
            with anyio.fail_after(5):
                while len(ticks) <= n:
                    await anyio.sleep(0.005)

    for _ in range(10):
        thread = threading.Thread(target=ws.run_forever, daemon=True)
        thread.start()
        deadline = time.monotonic() + 5
        n = len(ticks)
        while len(ticks) <= n and time.monotonic() < deadline:
            time.sleep(0.005)
        assert ws.stop() is True
        anyio.run(briefly)  # raised RuntimeError("this client is already running")
        thread.join(2)
        assert not thread.is_alive()


def test_two_run_forever_started_at_once_one_runs_the_other_raises(threaded_sim: str) -> None:
    # Both calls pass the "is it running?" check together unless claiming is atomic: the
    # loser then failed inside its loop (an exception group) and, on its way out, marked
    # the live client inactive, so stop() returned True while the first run went on.
    for _ in range(20):
        ws = AgentExchangeWS(DEMO_API_KEY, threaded_sim, **FAST)
        ws.on_ticker("BTCUSDT", lambda d: None)
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def run(ws: AgentExchangeWS, start: threading.Barrier, errors: list[BaseException]) -> None:
            start.wait()
            try:
                ws.run_forever()
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=run, args=(ws, start, errors), daemon=True) for _ in range(2)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 5
        while not errors and time.monotonic() < deadline:
            time.sleep(0.005)
        assert [type(e) for e in errors] == [RuntimeError], errors
        assert ws.stop() is True
        for t in threads:
            t.join(2)
        assert not any(t.is_alive() for t in threads), "stop() left a run going"


async def test_listen_all_tickers_gets_each_trade_once(sim: SimExchange) -> None:
    ws = make_client(sim)
    ws.on_ticker("all", lambda d: None)
    ws.on_ticker("BTCUSDT", lambda d: None)
    btc_seen = 0
    btc_frames = 0
    with anyio.fail_after(5):
        async with ws:
            async for t in ws.listen(Ticker):
                btc_seen += t.symbol == "BTCUSDT"
                if btc_seen >= 100:
                    btc_frames = ws.stats.messages.get("ticker:BTCUSDT", 0)
                    break
    # Every BTCUSDT frame reaches the listener once: a duplicate through both the
    # ticker:all and the ticker:BTCUSDT routes would make it see more than arrived.
    assert btc_seen <= btc_frames


async def test_bad_key_with_many_channels_costs_one_handshake() -> None:
    async with SimExchange() as s:
        ws = AgentExchangeWS("ak_live_wrongwrongwrong", s.url, **FAST)
        for sym in list(s.market.pairs)[:25]:  # three connections' worth
            ws.on_ticker(sym, lambda d: None)
        with anyio.fail_after(5), pytest.raises(AuthenticationError):
            await ws.connect()
        await anyio.sleep(0.2)
        assert s.stats.handshakes == 1


async def test_accept_then_drop_server_backs_off(sim: SimExchange) -> None:
    # A connection that carried no data and went down at once is not healthy: the delays
    # keep growing instead of resetting to the first step (no reconnect storm).
    ws = make_client(sim, backoff_initial=0.02, backoff_max=0.32, healthy_after=5.0)
    ws.on_order_update(lambda d: None)  # a quiet channel: no data flows
    async with running(ws):
        await wait_for(lambda: sim.stats.connections_opened == 1)
        started = time.monotonic()
        for n in range(1, 5):
            await sim.drop_connections()
            await wait_for(
                lambda k=n: sim.stats.connections_opened == k + 1,  # type: ignore[misc]
                timeout=5,
            )
        took = time.monotonic() - started
    # 0.02 + 0.04 + 0.08 + 0.16 at least; a reset each time would be 4 x 0.02.
    assert took >= 0.28


#: 4,000 ticks/s (a handler taking 1 ms a tick handles ~1,000), pings to answer within
#: 0.15 s, and an order engine stepping every 20 ms.
_BUSY_SIM: dict[str, Any] = {
    "tick_rate": 4000,
    "ping_interval": 0.05,
    "pong_timeout": 0.15,
    "order_interval": 0.02,
}


async def _time_a_fill(
    s: SimExchange, ws: AgentExchangeWS, order_times: dict[str, float], settle: float
) -> tuple[float, int]:
    """Place a market order; (seconds to its fill, messages read ``settle`` s later)."""
    placed = time.monotonic()
    await s.place_order(DEMO_API_KEY, symbol="BTCUSDT", side="buy", type="market", quantity="0.001")
    await wait_for(lambda: "filled" in order_times, timeout=2, what="the fill")
    await anyio.sleep(settle)
    return order_times["filled"] - placed, ws.stats.messages_total


async def test_slow_sync_handler_is_conflated_not_backpressured() -> None:
    # A sync handler runs on the loop: at 1 ms per tick it handles ~1,000 ticks/s of the
    # 4,000 offered. The reader must keep reading (answering pings, taking orders) and
    # conflate the ticks, not slow down to the handler's pace.
    async with SimExchange(**_BUSY_SIM) as s:
        ws = AgentExchangeWS(DEMO_API_KEY, s.url, **FAST, queue_size=200)
        calls: list[int] = []
        order_times: dict[str, float] = {}

        def slow(data: dict[str, Any]) -> None:
            calls.append(1)
            time.sleep(0.001)

        def on_order(o: OrderUpdate) -> None:
            order_times.setdefault(o.status, time.monotonic())

        ws.on_ticker("all", slow)
        ws.on_order_update(on_order)
        async with running(ws):
            await wait_for(lambda: len(calls) > 100, what="the slow handler to run")
            _, received = await _time_a_fill(s, ws, order_times, settle=1.0)
        assert s.stats.connections_opened == 1, "a late pong got the client dropped"
        assert ws.stats.conflated > 0
        assert received > 1.5 * len(calls)  # the reader outran the handler


@pytest.mark.parametrize("mode", ["async", "thread", "every"])
async def test_a_slow_ticker_handler_gets_the_newest_price_not_a_backlog(mode: str) -> None:
    # The issue a new user hit: a slow BTCUSDT handler (thread=True) saw prices seconds old
    # because its queue conflated only past 10,000 events. Now, once behind, it finds
    # just the newest tick waiting; every=True keeps the old backlog on purpose.
    async with SimExchange(tick_rate=4000) as s:
        ws = AgentExchangeWS(DEMO_API_KEY, s.url, **FAST)
        seen: list[dict[str, Any]] = []
        received: list[dict[str, Any]] = []  # every BTCUSDT tick, in arrival order

        def blocking(data: dict[str, Any]) -> None:
            seen.append(data)
            time.sleep(0.02)

        async def slow(data: dict[str, Any]) -> None:
            seen.append(data)
            await anyio.sleep(0.02)

        if mode == "async":
            ws.on_ticker("BTCUSDT", slow)
        else:
            ws.on_ticker("BTCUSDT", blocking, thread=True, every=mode == "every")
        ws.on_ticker("BTCUSDT", received.append, every=True)
        backlog: list[int] = []
        async with running(ws):
            await wait_for(lambda: len(seen) > 5, what="the slow handler to run")
            for _ in range(20):
                await anyio.sleep(0.02)
                backlog.append(ws.stats.queued)
            newest_seen = seen[-1]
        # The event the slow handler got last: how many ticks had arrived after it when
        # the test looked, against how many it would be behind with a backlog.
        behind = (
            len(received)
            - 1
            - next(i for i in range(len(received) - 1, -1, -1) if received[i] is newest_seen)
        )
        if mode == "every":
            assert backlog[-1] >= backlog[0] + 50  # the backlog grows: every tick waits
            assert ws.stats.conflated == 0
        else:
            # At most what one burst from the server holds (the handler is not "behind"
            # until its queue has waited 5 ms), never a growing backlog.
            assert max(backlog) <= 60
            assert ws.stats.conflated > 0
            assert behind <= 60  # what it got last was among the newest ticks


async def test_sync_handler_added_and_readded_mid_run_gets_events(sim: SimExchange) -> None:
    ws = make_client(sim)
    ws.on_ticker("BTCUSDT", lambda d: None)
    got: list[dict[str, Any]] = []

    def on_eth(d: dict[str, Any]) -> None:
        got.append(d)

    async with running(ws):
        await anyio.sleep(0.1)
        ws.on_ticker("ETHUSDT", on_eth)  # registered while running
        await wait_for(lambda: len(got) >= 3, what="events for a handler added mid-run")
        assert ws.remove_handler(on_eth) == 1
        await anyio.sleep(0.05)
        got.clear()
        ws.on_ticker("ETHUSDT", on_eth)  # the same function again
        await wait_for(lambda: len(got) >= 3, what="events after re-adding")
    assert all(d["symbol"] == "ETHUSDT" for d in got)


async def test_a_fast_handler_is_called_from_the_reader_until_it_turns_slow() -> None:
    # A sync handler whose drains prove it fast is called straight from the reader (no
    # queue hop). When it turns slow, the reader must notice within a few events and
    # queue for it again: keep reading, answer pings, take orders, conflate the ticks.
    async with SimExchange(**_BUSY_SIM) as s:
        ws = AgentExchangeWS(DEMO_API_KEY, s.url, **FAST, queue_size=200)
        calls: list[float] = []
        slow_from: list[int] = []
        order_times: dict[str, float] = {}

        def tick(data: dict[str, Any]) -> None:
            calls.append(time.monotonic())
            if slow_from and len(calls) > slow_from[0]:
                time.sleep(0.001)

        def on_order(o: OrderUpdate) -> None:
            order_times.setdefault(o.status, time.monotonic())

        ws.on_ticker("all", tick)
        ws.on_order_update(on_order)

        def tick_slot() -> Any:
            return ws._slots["ticker:all"][0]

        async with running(ws):
            await wait_for(lambda: tick_slot().direct, what="the handler proven fast")
            fast_calls = len(calls)
            slow_from.append(len(calls))
            await wait_for(lambda: not tick_slot().direct, what="the handler put back")
            # At most 8 frames (the reader's check) plus a batch's tail went past
            # before the reader noticed.
            demoted_after = len(calls) - slow_from[0]
            _, received = await _time_a_fill(s, ws, order_times, settle=0.5)
            slow_calls = len(calls) - slow_from[0]
        assert fast_calls > 0
        assert demoted_after <= 40, demoted_after
        assert s.stats.connections_opened == 1, "a late pong got the client dropped"
        assert ws.stats.conflated > 0
        assert received > fast_calls + 1.5 * slow_calls  # the reader outran the handler


async def test_a_handler_registered_from_a_handler_gets_only_its_own_representation() -> None:
    # Handlers proven fast run inside the reader's batch. One that registers a typed
    # handler on the same channel changes how frames decode; the rest of the batch must
    # not reach the new typed handler as dicts (the routes change after the batch).
    async with SimExchange(firehose=True) as s:
        ws = AgentExchangeWS(DEMO_API_KEY, s.url, **FAST)
        typed: list[Any] = []
        added: list[bool] = []

        def on_typed(t: Ticker) -> None:
            typed.append(t)

        def plain(data: dict[str, Any]) -> None:
            if not added and ws._slots["ticker:all"][0].direct:
                added.append(True)
                ws.on_ticker("all", on_typed)

        ws.on_ticker("all", plain)
        async with running(ws):
            await wait_for(lambda: len(typed) > 1000, what="typed events")
        assert added
        assert {type(t) for t in typed} == {Ticker}


class _Boom(BaseException):
    """Not an Exception: what a handler must not be able to kill the stream with."""


async def _promoted(ws: AgentExchangeWS, key: str = "ticker:all") -> None:
    await wait_for(lambda: ws._slots[key][0].direct, what="the handler proven fast")


async def test_a_base_exception_from_a_handler_called_by_the_reader_spares_the_stream(
    sim: SimExchange,
) -> None:
    # As from a drain: the event loop gets it (and logs it); the reader goes on.
    ws = make_client(sim)
    calls: list[int] = []
    raised: list[bool] = []
    loop_errors: list[dict[str, Any]] = []

    def tick(data: dict[str, Any]) -> None:
        calls.append(1)
        if ws._slots["ticker:all"][0].direct and not raised:
            raised.append(True)
            raise _Boom

    ws.on_ticker("all", tick)
    async with running(ws):
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: loop_errors.append(ctx))
        await _promoted(ws)
        await wait_for(lambda: raised, what="the handler to raise")
        after = len(calls)
        await wait_for(lambda: len(calls) > after + 100, what="events after the exception")
        state = ws.stats.state
    assert state == "connected"
    assert ws.stats.reconnects == 0
    assert any(isinstance(c.get("exception"), _Boom) for c in loop_errors)


async def test_a_handler_a_little_slower_than_it_proved_goes_back_to_its_queue() -> None:
    # Proven under 20 µs a call, then 35 µs: not slow enough to stall the stream, but
    # too slow to be called from the reader (it would pace it, and nothing conflates).
    # No pings: a ping also sends handlers back to their queues, and this test is about
    # the reader's clock.
    async with SimExchange(ping_interval=60) as sim:
        await _check_put_back_when_slower(sim)


async def _check_put_back_when_slower(sim: SimExchange) -> None:
    ws = make_client(sim)
    slow: list[bool] = []

    def tick(data: dict[str, Any]) -> None:
        if slow:
            end = time.perf_counter() + 35e-6
            while time.perf_counter() < end:
                pass

    ws.on_ticker("all", tick)
    async with running(ws):
        await _promoted(ws)
        slow.append(True)
        await wait_for(lambda: not ws._slots["ticker:all"][0].direct, what="the handler put back")


async def test_a_handler_called_by_the_reader_that_blocks_is_reported(
    sim: SimExchange, caplog: pytest.LogCaptureFixture
) -> None:
    ws = make_client(sim)
    blocked: list[bool] = []

    def tick(data: dict[str, Any]) -> None:
        if ws._slots["ticker:all"][0].direct and not blocked:
            blocked.append(True)
            time.sleep(0.3)

    ws.on_ticker("all", tick)
    async with running(ws):
        await _promoted(ws)
        await wait_for(lambda: blocked, what="the blocking call")
        await wait_for(
            lambda: "called from the reader blocked the event loop for" in caplog.text,
            what="the warning",
        )


_MARK = "0.123456789"  # the quantity of the frames a test sends itself (the sim's differ)


def _seq_frame(seq: int, symbol: str = "BTCUSDT") -> str:
    return (
        f'{{"channel":"ticker","symbol":"{symbol}","data":{{"price":"{seq}",'
        f'"quantity":"{_MARK}","timestamp":"2026-01-01T00:00:00Z","is_buyer_maker":false}}}}'
    )


def _quiet_sim() -> SimExchange:
    """A market with next to no trades of its own: the test sends the frames."""
    return SimExchange(tick_rate=0.01, ping_interval=60)


async def _subscribed(sim: SimExchange, key: str) -> None:
    await wait_for(
        lambda: any(key in r.subscribe_requests for r in sim.connection_log),
        what=f"the subscribe to {key}",
    )


async def _proven_on_marked_frames(sim: SimExchange, ws: AgentExchangeWS) -> None:
    """Once subscribed, frames 0 to 99: the ``ticker:BTCUSDT`` handler proves fast."""
    await _subscribed(sim, "ticker:BTCUSDT")
    for seq in range(100):
        sim.send_raw(_seq_frame(seq))
    await _promoted(ws, "ticker:BTCUSDT")


async def test_a_handler_proven_fast_with_a_backlog_gets_its_events_in_order() -> None:
    # A drain that proves a handler fast can stop at the end of its time slice with
    # events still queued (direct, with a backlog). Until that backlog is drained, new
    # events must queue behind it, not be called from the reader ahead of it. The state
    # is set up by hand: whether the stream produces it depends on how frames arrive.
    async with _quiet_sim() as sim:
        ws = make_client(sim, stale_timeout=30)
        seqs: list[int] = []

        def tick(data: dict[str, Any]) -> None:
            if data["quantity"] == _MARK:
                seqs.append(int(data["price"]))

        ws.on_ticker("BTCUSDT", tick, every=True)
        slot = ws._slots["ticker:BTCUSDT"][0]
        async with running(ws):
            await _proven_on_marked_frames(sim, ws)
            await wait_for(lambda: len(seqs) == 100, what="the first 100 events")
            feed = ws._router.feed_for(ws._links[0])
            slot.direct = False
            feed([_seq_frame(seq) for seq in range(100, 110)])  # queued, a drain is due
            assert len(slot.queue) == 10
            slot.direct = True  # what a drain that stopped mid-backlog leaves behind
            feed([_seq_frame(110)])
            assert seqs == list(range(100)), "called ahead of its backlog"
            await wait_for(lambda: len(seqs) == 111, what="the backlog and the new event")
        assert seqs == list(range(111))


async def test_a_handler_that_removes_itself_from_the_reader_is_not_called_again() -> None:
    # Called from the reader, a handler removes itself: the rest of the reader's batch
    # (the routes change only after it) must not reach it.
    async with _quiet_sim() as sim:
        ws = make_client(sim, stale_timeout=30)
        late: list[int] = []
        removed: list[int] = []

        def tick(data: dict[str, Any]) -> None:
            if data["quantity"] != _MARK:
                return
            seq = int(data["price"])
            if removed:
                late.append(seq)
            elif seq >= 100 and slot.direct:
                removed.append(seq)
                ws.remove_handler(tick)

        ws.on_ticker("BTCUSDT", tick, every=True)
        slot = ws._slots["ticker:BTCUSDT"][0]
        async with running(ws):
            await _proven_on_marked_frames(sim, ws)
            for seq in range(100, 400):  # one write: the client reads them in batches
                sim.send_raw(_seq_frame(seq))
            await wait_for(lambda: removed, what="the handler to remove itself")
            await anyio.sleep(0.1)
        assert removed == [100]
        assert late == []


async def test_nothing_listening_gives_a_hint_and_gives_up_when_asked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ws = AgentExchangeWS(DEMO_API_KEY, f"ws://127.0.0.1:{port}", max_attempts=3, **FAST)
    ws.on_ticker("BTCUSDT", lambda d: None)
    with anyio.fail_after(5), pytest.raises(StreamConnectionError):
        await ws.connect()
    assert ws.stats.failed_attempts == 3
    hints = [r.getMessage() for r in caplog.records if "agentstream serve" in r.getMessage()]
    assert len(hints) == 1  # said once, on the first failure
    assert any("giving up after 3" in r.getMessage() for r in caplog.records)


async def test_give_up_after_seconds() -> None:
    ws = AgentExchangeWS(DEMO_API_KEY, "ws://127.0.0.1:9", give_up_after=0.2, **FAST)
    ws.on_ticker("BTCUSDT", lambda d: None)
    with anyio.fail_after(5), pytest.raises(StreamConnectionError):
        await ws.connect()
    assert ws.stats.failed_attempts >= 2


async def test_connecting_with_no_channel_warns(
    sim: SimExchange, caplog: pytest.LogCaptureFixture
) -> None:
    ws = make_client(sim)
    async with running(ws):
        await wait_for(lambda: ws.stats.connections == 1)
    assert any("connecting with no channel" in r.getMessage() for r in caplog.records)


async def test_an_error_in_an_async_with_block_propagates_as_itself(sim: SimExchange) -> None:
    ws = make_client(sim)
    ws.on_ticker("BTCUSDT", lambda d: None)
    with anyio.fail_after(5), pytest.raises(KeyError):  # not an ExceptionGroup around it
        async with ws:
            raise KeyError("mine")
    assert ws.stats.state == "stopped"


async def test_conflated_never_goes_down_for_a_reader_in_another_thread() -> None:
    # ws.stats.conflated is a counter (Prometheus reads a decrease as a reset): a handler
    # removed while another thread reads the stats must move its count to the client's
    # total atomically, not after the reader stopped seeing it in its slot.
    async with SimExchange(tick_rate=2000, speed=120) as s:
        ws = AgentExchangeWS(DEMO_API_KEY, s.url, **FAST)
        release = anyio.Event()

        async def keep(data: dict[str, Any]) -> None:
            await release.wait()

        ws.on_ticker("BTCUSDT", keep)
        done = threading.Event()
        drops: list[tuple[int, int]] = []

        def reader() -> None:
            last = 0
            while not done.is_set():
                value = ws.stats.conflated
                if value < last:
                    drops.append((last, value))
                last = max(last, value)

        async with running(ws):
            await wait_for(lambda: ws.stats.conflated >= 5, what="conflation")
            thread = threading.Thread(target=reader, daemon=True)
            switch = sys.getswitchinterval()
            sys.setswitchinterval(1e-6)  # let the reader run between any two bytecodes
            thread.start()
            try:
                for _ in range(80):

                    async def stuck(data: dict[str, Any]) -> None:
                        await release.wait()

                    ws.on_ticker("BTCUSDT", stuck)
                    await anyio.sleep(0.03)  # a few of the sim's bursts: some conflated
                    ws.remove_handler(stuck)
                    await anyio.lowlevel.checkpoint()
            finally:
                done.set()
                thread.join(5)
                sys.setswitchinterval(switch)
                release.set()
        assert drops == []
