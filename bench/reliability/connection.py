"""Connection figures: forced disconnects, black hole, authentication refusals, 5xx backoff.

All against a real in-process :class:`~agentstream.sim.SimExchange` (or, for exact
handshake times, a small recording aiohttp server) on 127.0.0.1, with the public
client API and injected short timers.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections import Counter
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import anyio
from aiohttp import WSMsgType, web

from agentstream import (
    AgentExchangeWS,
    AuthenticationError,
    Backoff,
    Candle,
    OrderUpdate,
    Portfolio,
    StaleConnectionError,
    Ticker,
)
from agentstream.sim import DEMO_API_KEY, OrderError, SimExchange
from bench.reliability.common import Figure, Options, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["run_auth", "run_backoff", "run_blackhole", "run_disconnects"]

#: Eight busy tickers, two candle channels, orders and portfolio: 12 channels, 2 links.
TICKERS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT", "AVAXUSDT")
CANDLES = ("BTCUSDT", "ETHUSDT")
WANTED = (
    {f"ticker:{s}" for s in TICKERS}
    | {f"candles:{s}:1m" for s in CANDLES}
    | {"orders", "portfolio"}
)
#: Close codes cycled through by the disconnect figure; None is a TCP reset.
DROP_CODES: tuple[int | None, ...] = (None, 1000, 1001, 1011, 1012)


# -- 200 forced disconnects -------------------------------------------------------------


class _Seen:
    """Per-handler event counters."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def handler(self, name: str, model: type[Any] | None) -> Callable[[Any], None]:
        def plain(data: Any) -> None:
            self.calls[name] += 1

        def on_ticker(t: Ticker) -> None:
            self.calls[name] += 1

        def on_candle(c: Candle) -> None:
            self.calls[name] += 1

        def on_order(o: OrderUpdate) -> None:
            self.calls[name] += 1

        def on_portfolio(p: Portfolio) -> None:
            self.calls[name] += 1

        typed: dict[type[Any] | None, Callable[[Any], None]] = {
            None: plain,
            Ticker: on_ticker,
            Candle: on_candle,
            OrderUpdate: on_order,
            Portfolio: on_portfolio,
        }
        return typed[model]


def _register_all(ws: AgentExchangeWS, seen: _Seen) -> list[str]:
    """One handler per channel (dict and typed alternately); returns the handler names."""
    names: list[str] = []
    for i, sym in enumerate(TICKERS):
        name = f"ticker:{sym}"
        ws.on_ticker(sym, seen.handler(name, Ticker if i % 2 else None))
        names.append(name)
    for i, sym in enumerate(CANDLES):
        name = f"candles:{sym}:1m"
        ws.on_candles(sym, "1m", seen.handler(name, Candle if i % 2 else None), partial=True)
        names.append(name)
    ws.on_order_update(seen.handler("orders", OrderUpdate))
    ws.on_portfolio(seen.handler("portfolio", Portfolio))
    names += ["orders", "portfolio"]
    return names


async def run_disconnects(opts: Options) -> Figure:
    rounds = opts.disconnects
    seen = _Seen()
    fig = Figure(
        "disconnects",
        "",
        f"{rounds} reconnects x 2 links, all 12 channels every time, 0 duplicates, 0 lost",
        None,
    )
    async with SimExchange(
        tick_rate=3000,
        speed=60,
        ping_interval=5.0,
        order_interval=0.02,
        portfolio_interval=0.25,
        api_keys={DEMO_API_KEY: Decimal("100000000")},
    ) as sim:
        ws = AgentExchangeWS(
            DEMO_API_KEY,
            sim.url,
            stale_timeout=5.0,
            backoff_initial=0.01,
            backoff_max=0.05,
            backoff_jitter=0.0,
            connect_timeout=5.0,
            close_timeout=0.2,
        )
        names = _register_all(ws, seen)
        reasons: list[str] = []
        ws.on_disconnect(reasons.append)
        missing = duplicates = unexpected = lost = extra_conns = failed_rounds = 0
        latencies: list[float] = []
        bad: list[str] = []
        t_start = time.perf_counter()
        async with ws:

            def settled() -> bool:
                recs = sim.open_connections()
                got = Counter(k for r in recs for k in r.subscribe_requests)
                return len(recs) == 2 and ws.stats.connections == 2 and set(got) == WANTED

            if not await wait_until(settled, 10):
                fig.passed = False
                fig.measured = "the client never subscribed all 12 channels"
                return fig
            reconnects0 = ws.stats.reconnects
            for i in range(rounds):
                code = DROP_CODES[i % len(DROP_CODES)]
                old_ids = {r.id for r in sim.open_connections()}
                before = ws.stats.reconnects
                t0 = time.perf_counter()
                await sim.drop_connections(code, "bench")

                def back(old: set[int] = old_ids, n: int = before) -> bool:
                    recs = sim.open_connections()
                    got = Counter(k for r in recs for k in r.subscribe_requests)
                    return (
                        len(recs) == 2
                        and not {r.id for r in recs} & old
                        and set(got) == WANTED
                        and ws.stats.connections == 2
                        and ws.stats.reconnects >= n + 2
                    )

                ok = await wait_until(back, 10)
                latencies.append(time.perf_counter() - t0)
                # Fresh events on every handler after the reconnect: an order (its
                # updates, and the portfolio snapshot after the fill) and the market.
                await wait_until(lambda: ws.stats.queued == 0, 5)  # old events handled
                counts = dict(seen.calls)
                with contextlib.suppress(OrderError):
                    await sim.place_order(
                        DEMO_API_KEY, symbol="XRPUSDT", side="buy", type="market", quantity="1"
                    )

                def fed_all(c: dict[str, int] = counts) -> bool:
                    return all(seen.calls[n] > c.get(n, 0) for n in names)

                fed = await wait_until(fed_all, 10)
                recs = sim.open_connections()
                got = Counter(k for r in recs for k in r.subscribe_requests)
                round_missing = len(WANTED - set(got))
                round_dups = sum(n - 1 for n in got.values() if n > 1)
                round_unexpected = len(set(got) - WANTED)
                round_lost = [n for n in names if seen.calls[n] <= counts.get(n, 0)]
                missing += round_missing
                duplicates += round_dups
                unexpected += round_unexpected
                lost += len(round_lost)
                extra_conns += max(0, len(recs) - 2)
                if not ok or not fed or round_missing or round_dups or round_unexpected:
                    failed_rounds += 1
                    if len(bad) < 5:
                        bad.append(
                            f"round {i} (drop {code or 'reset'}): reconnected={ok} "
                            f"missing={round_missing} duplicates={round_dups} "
                            f"unexpected={round_unexpected} lost={round_lost} "
                            f"connections={len(recs)}"
                        )
            reconnects = ws.stats.reconnects - reconnects0
            final_unsubs = sum(len(r.unsubscribe_requests) for r in sim.connection_log)
    took = time.perf_counter() - t_start
    expected = 2 * rounds
    fig.passed = (
        reconnects == expected
        and failed_rounds == 0
        and missing == duplicates == unexpected == lost == extra_conns == 0
    )
    fig.measured = (
        f"{reconnects} reconnects ({rounds} drops x 2 links), missing {missing}, "
        f"duplicates {duplicates}, handlers lost {lost}"
    )
    fig.seconds = took
    fig.details = [
        f"drops cycled through: reset, close 1000, 1001, 1011, 1012 ({rounds} rounds in "
        f"{took:.1f} s)",
        f"drop -> both links back and all 12 channels subscribed: median "
        f"{statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms",
        f"connections seen by the sim: {len(sim.connection_log)} "
        f"(2 + {rounds} x 2 expected); unsubscribe requests: {final_unsubs}; "
        f"unexpected channels: {unexpected}; extra connections: {extra_conns}",
        f"rounds that failed a check: {failed_rounds}",
        *bad,
    ]
    fig.data = {
        "rounds": rounds,
        "reconnects": reconnects,
        "missing": missing,
        "duplicates": duplicates,
        "handlers_lost": lost,
        "latency_median_s": statistics.median(latencies),
        "latency_max_s": max(latencies),
        "disconnect_reasons": dict(Counter(reasons).most_common(8)),
    }
    return fig


# -- black hole ----------------------------------------------------------------------------


class _StaleLog(logging.Handler):
    """Times of the client's 'closing the stale connection' warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.times: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "stale connection" in record.getMessage():
            self.times.append(time.monotonic())


async def run_blackhole(opts: Options) -> Figure:
    stale = 1.0
    limit = stale * 1.1
    trials = opts.blackhole_trials
    fig = Figure(
        "black hole", "", f"detected within {limit:.2f} s (stale_timeout 1.0 s + 10 %)", None
    )
    detect: list[float] = []
    err_times: list[float] = []
    disc_times: list[float] = []
    log_times: list[float] = []
    problems: list[str] = []
    t_start = time.perf_counter()
    async with SimExchange(tick_rate=500, speed=1, ping_interval=30) as sim:
        ws = AgentExchangeWS(
            DEMO_API_KEY,
            sim.url,
            stale_timeout=stale,
            backoff_initial=0.02,
            backoff_max=0.1,
            backoff_jitter=0.0,
            connect_timeout=2.0,
            close_timeout=0.2,
        )
        ticks: list[float] = []
        ws.on_ticker("BTCUSDT", lambda d: ticks.append(time.monotonic()))
        stale_errors: list[float] = []
        disconnects: list[tuple[float, str]] = []

        @ws.on_error
        def on_error(exc: Exception, context: dict[str, Any]) -> None:
            if isinstance(exc, StaleConnectionError):
                stale_errors.append(time.monotonic())

        @ws.on_disconnect
        def on_disconnect(reason: str) -> None:
            disconnects.append((time.monotonic(), reason))

        watcher = _StaleLog()
        logger = logging.getLogger("agentstream")
        logger.addHandler(watcher)
        try:
            async with ws:
                for i in range(trials):

                    def flowing(n: int = len(ticks)) -> bool:
                        return len(ticks) > n + 5

                    if not await wait_until(flowing, 5):
                        problems.append(f"trial {i}: no data before the silence")
                    nd, ne, nl = len(disconnects), len(stale_errors), len(watcher.times)
                    reconnects = ws.stats.reconnects
                    t0 = time.monotonic()
                    sim.go_silent()

                    def detected(nd: int = nd, ne: int = ne) -> bool:
                        return len(disconnects) > nd and len(stale_errors) > ne

                    ok = await wait_until(detected, stale * 5)
                    if not ok:
                        problems.append(f"trial {i}: no stale detection within {stale * 5} s")
                        sim.resume()
                        continue
                    t_disc, reason = disconnects[nd]
                    disc_times.append(t_disc - t0)
                    err_times.append(stale_errors[ne] - t0)
                    if len(watcher.times) > nl:
                        log_times.append(watcher.times[nl] - t0)
                    detect.append(max(disc_times[-1], err_times[-1]))
                    if not reason.startswith("stale"):
                        problems.append(f"trial {i}: disconnect reason {reason!r}")

                    def back_again(r: int = reconnects) -> bool:
                        return ws.stats.reconnects > r and ws.stats.connections == 1

                    back = await wait_until(back_again, 5)
                    sim.resume()  # lets the sim notice that the old socket is gone
                    if not back:
                        problems.append(f"trial {i}: did not reconnect")
        finally:
            logger.removeHandler(watcher)
    fig.seconds = time.perf_counter() - t_start
    worst = max(detect) if detect else float("inf")
    fig.passed = len(detect) == trials and worst <= limit and not problems
    fig.measured = (
        f"max {worst:.3f} s, median {statistics.median(detect):.3f} s over {len(detect)} trials"
        if detect
        else "no detection"
    )
    if log_times:
        fig.details.append(
            f"client's stale warning (the moment it gives up on the socket): "
            f"{min(log_times):.3f} .. {max(log_times):.3f} s after the silence began"
        )
    if err_times:
        fig.details.append(
            f"on_error(StaleConnectionError): {min(err_times):.3f} .. {max(err_times):.3f} s; "
            f"on_disconnect('stale: ...'): {min(disc_times):.3f} .. {max(disc_times):.3f} s "
            f"(the figure is the later of the two hooks)"
        )
    fig.details.append(
        "silence = sim.go_silent(): no data, no pings, nothing read; TCP stays open; the "
        "client then reconnected every time"
        if not problems
        else "problems: " + "; ".join(problems[:5])
    )
    fig.data = {"stale_timeout": stale, "detect_s": detect, "log_s": log_times}
    return fig


# -- authentication refusals -----------------------------------------------------------------

BAD_KEY = "ak_live_BENCHWRONGKEY0123456789"


async def _auth_case(
    label: str,
    sim: SimExchange,
    key: str,
    *,
    after_connect: Callable[[SimExchange], Any] | None = None,
) -> tuple[bool, str]:
    """Run a client with 12 channels until the key is refused; check it gave up at once."""
    ws = AgentExchangeWS(
        key,
        sim.url,
        stale_timeout=5.0,
        backoff_initial=0.02,
        backoff_max=0.1,
        backoff_jitter=0.0,
        connect_timeout=2.0,
        close_timeout=0.2,
    )
    _register_all(ws, _Seen())
    h0 = sim.stats.handshakes
    raised: BaseException | None = None
    closed_at = h0
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ws.connect)
                if after_connect is not None:
                    await wait_until(lambda: ws.stats.connections == 2, 5)
                    closed_at = sim.stats.handshakes
                    await after_connect(sim)
    except* Exception as group:
        raised = group.exceptions[0]
    await anyio.sleep(0.3)  # a retry, if there were one, would come after 20 ms
    if after_connect is None:
        attempts = sim.stats.handshakes - h0  # the refused handshake and any retry
    else:
        attempts = 1 + sim.stats.handshakes - closed_at  # the refused connection + retries
    err = ws.error
    ok = (
        isinstance(raised, AuthenticationError)
        and err is raised
        and ws.stats.state == "failed"
        and attempts == 1
    )
    code = ""
    if isinstance(raised, AuthenticationError):
        code = f"status {raised.status}" if raised.status else f"close {raised.close_code}"
    text = (
        f"{label}: {attempts} attempt(s), raised {type(raised).__name__} ({code}), "
        f"state {ws.stats.state}, ws.error {'set' if err is raised else repr(err)}"
    )
    return ok, text


async def run_auth(opts: Options) -> Figure:
    fig = Figure("auth", "", "exactly 1 attempt each, AuthenticationError, ws.error set", None)
    t0 = time.perf_counter()
    results: list[tuple[bool, str]] = []
    async with SimExchange(tick_rate=200) as sim:
        results.append(await _auth_case("HTTP 403 (unknown key)", sim, BAD_KEY))
        sim.refuse_handshakes(401)
        results.append(await _auth_case("HTTP 401 (refused handshake)", sim, DEMO_API_KEY))
        sim.accept_handshakes()

        async def drop_1008(s: SimExchange) -> None:
            await s.drop_connections(1008, "policy violation")

        async def revoke(s: SimExchange) -> None:
            await s.revoke_key(DEMO_API_KEY)

        results.append(
            await _auth_case(
                "close 1008 after connecting", sim, DEMO_API_KEY, after_connect=drop_1008
            )
        )
        results.append(
            await _auth_case(
                "close 4401 (key revoked while connected)", sim, DEMO_API_KEY, after_connect=revoke
            )
        )
    async with SimExchange(tick_rate=200, auth_failure="close") as sim:
        results.append(await _auth_case("close 4401 (unknown key, close mode)", sim, BAD_KEY))
    fig.seconds = time.perf_counter() - t0
    passed = sum(ok for ok, _ in results)
    fig.passed = passed == len(results)
    fig.measured = f"{passed}/{len(results)} refusals: 1 attempt, fatal, ws.error set"
    fig.details = [("ok   " if ok else "FAIL ") + text for ok, text in results]
    fig.details.append(
        "every client had 12 channels (2 links); for closes after connecting, the attempt "
        "is the refused connection and retries are handshakes after it"
    )
    return fig


# -- 5xx backoff ---------------------------------------------------------------------------------


class _Recorder:
    """A WebSocket endpoint that refuses the first ``count`` handshakes with ``status``
    and records when each handshake request arrived."""

    def __init__(self, status: int, count: int) -> None:
        self.status = status
        self.left = count
        self.times: list[float] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.times.append(time.monotonic())
        if self.left > 0:
            self.left -= 1
            return web.Response(status=self.status, text="refused")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT and '"subscribe"' in msg.data:
                await ws.send_json({"type": "subscribed", "channel": "orders"})
        return ws


async def _schedule(status: int, count: int, initial: float, jitter: float) -> list[float]:
    rec = _Recorder(status, count)
    app = web.Application()
    app.router.add_get("/ws/v1", rec.handle)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        ws = AgentExchangeWS(
            DEMO_API_KEY,
            f"ws://127.0.0.1:{port}",
            backoff_initial=initial,
            backoff_factor=2.0,
            backoff_jitter=jitter,
            backoff_max=100.0,
            stale_timeout=30.0,
            connect_timeout=5.0,
            close_timeout=0.2,
        )
        ws.on_order_update(lambda d: None)
        with anyio.fail_after(30):
            async with ws:
                await wait_until(lambda: len(rec.times) > count, 10)
    finally:
        await runner.cleanup()
    return [b - a for a, b in zip(rec.times, rec.times[1:], strict=False)]


async def run_backoff(opts: Options) -> Figure:
    initial, jitter, count = 0.05, 0.1, 6
    tol = 0.025
    fig = Figure(
        "5xx backoff",
        "",
        f"each delay in [d, d x {1 + jitter:g}] + {tol * 1000:.0f} ms scheduling tolerance",
        None,
    )
    t0 = time.perf_counter()
    bases = [initial * 2**k for k in range(count)]
    ok_all = True
    worst_over = -1.0
    fractions: list[float] = []
    fractions_ms: list[float] = []
    for status in (503, 500, 502):
        gaps = await _schedule(status, count, initial, jitter)
        row = []
        ok = len(gaps) == count
        for d, g in zip(bases, gaps, strict=False):
            inside = d - 0.001 <= g <= d * (1 + jitter) + tol
            ok = ok and inside
            worst_over = max(worst_over, g - d * (1 + jitter))
            fractions.append((g - d) / d)
            fractions_ms.append((g - d) * 1000)
            row.append(f"{g * 1000:.0f}{'' if inside else '!'}")
        ok_all = ok_all and ok
        fig.details.append(
            f"HTTP {status} x{count}: gaps between handshakes (ms) {' '.join(row)} "
            f"vs d = {' '.join(f'{d * 1000:.0f}' for d in bases)}  {'ok' if ok else 'FAIL'}"
        )
    # The same through the sim's own fault injection: 6 refusals, then connected.
    async with SimExchange(tick_rate=100) as sim:
        sim.refuse_handshakes(503, count=count)
        ws = AgentExchangeWS(
            DEMO_API_KEY,
            sim.url,
            backoff_initial=initial,
            backoff_jitter=jitter,
            backoff_max=100.0,
            connect_timeout=5.0,
            close_timeout=0.2,
        )
        ws.on_order_update(lambda d: None)
        with anyio.fail_after(30):
            async with ws:
                await wait_until(lambda: ws.stats.connections == 1, 10)
        sim_ok = (
            sim.stats.handshakes == count + 1
            and sim.stats.handshakes_refused == count
            and ws.stats.failed_attempts == count
        )
        fig.details.append(
            f"sim.refuse_handshakes(503, count={count}): {sim.stats.handshakes} handshakes, "
            f"{sim.stats.handshakes_refused} refused, client failed_attempts "
            f"{ws.stats.failed_attempts}, then connected  {'ok' if sim_ok else 'FAIL'}"
        )
    fig.details.append(
        f"largest gap beyond d x {1 + jitter:g}: {worst_over * 1000:+.1f} ms (tolerance "
        f"{tol * 1000:.0f} ms); smallest gap minus d: {min(fractions_ms):+.1f} ms"
    )
    fig.seconds = time.perf_counter() - t0
    fig.passed = ok_all and sim_ok
    fig.measured = (
        f"18/18 delays in bounds (gap/d - 1: {min(fractions) * 100:.1f} .. "
        f"{max(fractions) * 100:.1f} %)"
        if ok_all
        else f"delays out of bounds (worst {worst_over * 1000:+.0f} ms over d x 1.1)"
    )
    b = Backoff()
    schedule = [b.base(k) for k in range(9)]
    fig.details.append(
        "default schedule (agentstream.backoff.Backoff()): "
        + ", ".join(f"{s:g}" for s in schedule)
        + f" s, each plus up to {b.jitter * 100:g} % jitter"
    )
    fig.details.append(
        f"measured: backoff_initial={initial}, factor 2, jitter {jitter}; a gap is the time "
        "between two handshake requests arriving at a recording server, so it includes "
        "the client's TCP connect and HTTP request on 127.0.0.1"
    )
    fig.data = {"bases": bases, "jitter_fractions": fractions, "default_schedule": schedule}
    return fig
