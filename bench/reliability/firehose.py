"""Firehose figures: order updates under a ``ticker_all`` firehose, and a memory soak.

The sim runs in its own process (``agentstream serve --firehose``), so the client in
this process gets a whole core's worth of ticker frames, as fast as it can read them.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import statistics
import sys
import threading
import time
from collections import defaultdict
from decimal import Decimal
from typing import Any

import anyio

from agentstream import AgentExchangeWS, OrderUpdate, Portfolio, Stats
from agentstream.sim import DEMO_API_KEY
from bench.reliability.common import (
    Figure,
    Options,
    all_tasks,
    firehose_server,
    rest,
    rss_bytes,
    session,
    wait_until,
    watchdog,
)

__all__ = ["ALLOWED", "run_orders", "run_soak"]

#: Orders placed per second (after the first three), so they span ~10 s of firehose.
ORDER_RATE = 100.0
FINAL = frozenset({"filled", "cancelled", "rejected", "expired"})
#: The sim's order lifecycle (docs/sim.md#the-order-lifecycle): allowed next statuses.
ALLOWED: dict[str, frozenset[str]] = {
    "pending": frozenset({"open", "partially_filled", "filled", "rejected", "cancelled"}),
    "open": frozenset({"filled", "partially_filled", "cancelled"}),
    "partially_filled": frozenset({"filled", "cancelled"}),
}
#: What each kind of order placed here must go through, exactly.
EXPECTED: dict[str, tuple[tuple[str, ...], ...]] = {
    "market": (("pending", "filled"),),
    "large": (("pending", "partially_filled", "filled"),),
    "limit-cross": (("pending", "open", "filled"),),
    "limit-cancel": (("pending", "cancelled"), ("pending", "open", "cancelled")),
}


def lifecycle_ok(statuses: list[str]) -> bool:
    """True if ``statuses`` is a path through the order lifecycle ending in a final one."""
    if not statuses or statuses[0] != "pending" or statuses[-1] not in FINAL:
        return False
    return all(b in ALLOWED.get(a, frozenset()) for a, b in itertools.pairwise(statuses))


class _SlowTicks:
    """A deliberately slow ``ticker:all`` handler: 1 ms of blocking work per tick."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, data: dict[str, Any]) -> None:
        self.calls += 1
        time.sleep(0.001)


class _OrderRun:
    """State of the orders figure, filled in as it goes (so a stall still reports)."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.slow = _SlowTicks()
        self.seq_typed: dict[str, list[str]] = defaultdict(list)
        self.seq_dict: dict[str, list[str]] = defaultdict(list)
        self.portfolios = 0
        self.kinds: dict[str, str] = {}
        self.refused: list[str] = []
        self.final_rest: dict[str, str] = {}
        self.placing = self.settle = self.rate = 0.0
        self.done = False
        self.conflated = 0
        #: When each order was sent (before its POST) and when its final update arrived.
        self.sent_at: dict[str, float] = {}
        self.final_at: dict[str, float] = {}

    def on_order(self, o: OrderUpdate) -> None:
        self.seq_typed[o.order_id].append(o.status)
        if o.status in FINAL:
            self.final_at[o.order_id] = time.monotonic()

    def on_order_dict(self, d: dict[str, Any]) -> None:
        self.seq_dict[d["order_id"]].append(d["status"])

    def on_portfolio(self, p: Portfolio) -> None:
        self.portfolios += 1

    def final(self, seqs: dict[str, list[str]], oid: str) -> bool:
        seq = seqs.get(oid)
        return bool(seq) and seq[-1] in FINAL  # type: ignore[index]

    async def run(self) -> None:
        async with firehose_server() as (url, http), session() as client:
            ws = AgentExchangeWS(DEMO_API_KEY, url, stale_timeout=40.0, backoff_initial=0.1)
            ws.on_ticker("all", self.slow, thread=True)
            ws.on_order_update(self.on_order)
            ws.on_order_update(self.on_order_dict)
            ws.on_portfolio(self.on_portfolio)
            order_url = f"{http}/api/v1/trade/order"
            _, body = await rest(client, "GET", f"{http}/api/v1/market/price/ETHUSDT", DEMO_API_KEY)
            price = Decimal(body["price"])

            async def place(kind: str, side: str, qty: str, limit: Decimal | None) -> None:
                order: dict[str, Any] = {
                    "symbol": "ETHUSDT",
                    "side": side,
                    "type": "market" if limit is None else "limit",
                    "quantity": qty,
                }
                if limit is not None:
                    order["price"] = str(limit.quantize(Decimal("0.01")))
                t_sent = time.monotonic()
                st, placed = await rest(client, "POST", order_url, DEMO_API_KEY, order)
                if st != 201:
                    self.refused.append(f"{kind} {side}: HTTP {st} {placed}")
                    return
                oid = placed["order_id"]
                self.kinds[oid] = kind
                self.sent_at[oid] = t_sent
                if kind == "limit-cancel":
                    st, _ = await rest(client, "DELETE", f"{order_url}/{oid}", DEMO_API_KEY)
                    if st != 200:
                        self.refused.append(f"cancel {oid}: HTTP {st}")

            async with ws:
                await wait_until(lambda: ws.stats.messages_total > 50_000, 30)
                t_rate, n_rate = time.perf_counter(), ws.stats.messages_total
                # First buy what the sells will sell (two orders big enough to fill in two
                # steps among them), then the rest, shuffled, eight at a time.
                first: list[tuple[str, str, str, Decimal | None]] = [
                    ("market", "buy", "0.2000", None),
                    ("large", "buy", "0.8000", None),
                    ("large", "buy", "0.8000", None),
                ]
                for args in first:
                    await place(*args)
                await wait_until(
                    lambda: all(self.seq_typed[o][-1:] == ["filled"] for o in self.kinds), 20
                )
                n_rest = self.opts.orders - len(first)
                plan: list[tuple[str, str, str, Decimal | None]] = []
                shares: tuple[tuple[str, str, float, Decimal | None], ...] = (
                    ("market", "buy", 0.35, None),
                    ("limit-cross", "buy", 0.2, price * Decimal("1.02")),
                    ("limit-cancel", "buy", 0.15, price * Decimal("0.5")),
                    ("market", "sell", 0.15, None),
                    ("limit-cross", "sell", 0.05, price * Decimal("0.98")),
                )
                for kind, side, share, limit in shares:
                    plan += [(kind, side, "0.0010", limit)] * int(n_rest * share)
                plan += [("limit-cancel", "sell", "0.0010", price * 2)] * (n_rest - len(plan))
                random.Random(self.opts.seed).shuffle(plan)
                sem = anyio.Semaphore(8)

                async def limited(args: tuple[str, str, str, Decimal | None]) -> None:
                    async with sem:
                        await place(*args)

                # Paced at ORDER_RATE a second, so the orders meet the firehose for a while.
                t_place = time.perf_counter()
                async with anyio.create_task_group() as tg:
                    for i, args in enumerate(plan):
                        await anyio.sleep(max(0.0, t_place + i / ORDER_RATE - time.perf_counter()))
                        tg.start_soon(limited, args)
                self.placing = time.perf_counter() - t_place
                self.done = await wait_until(
                    lambda: all(
                        self.final(self.seq_typed, o) and self.final(self.seq_dict, o)
                        for o in self.kinds
                    ),
                    60,
                )
                self.settle = time.perf_counter() - t_place
                self.rate = (ws.stats.messages_total - n_rate) / (time.perf_counter() - t_rate)
                self.conflated = ws.stats.conflated
                for oid in self.kinds:
                    st, body = await rest(client, "GET", f"{order_url}/{oid}", DEMO_API_KEY)
                    self.final_rest[oid] = str(body.get("status")) if st == 200 else f"HTTP {st}"


async def run_orders(opts: Options) -> Figure:
    n_orders = opts.orders
    fig = Figure(
        "orders under firehose",
        "",
        f"{n_orders:,} orders: 100 % of updates delivered, in lifecycle order per order",
        None,
    )
    t_start = time.perf_counter()
    r = _OrderRun(opts)
    stall: list[str] = []
    async with watchdog(120 + n_orders / 5, stall) as guard:
        await r.run()
    fig.seconds = time.perf_counter() - t_start
    kinds, seq = r.kinds, r.seq_typed
    placed = len(kinds)
    delivered = sum(1 for o in kinds if r.final(seq, o))
    updates = sum(len(seq[o]) for o in kinds)
    not_lifecycle = [o for o in kinds if not lifecycle_ok(seq[o])]
    not_expected = [o for o in kinds if tuple(seq[o]) not in EXPECTED[kinds[o]]]
    dict_mismatch = [o for o in kinds if r.seq_dict[o] != seq[o]]
    rest_mismatch = [o for o in kinds if r.final_rest.get(o) != (seq[o] or ["?"])[-1]]
    fig.passed = (
        not guard.cancelled_caught
        and placed == n_orders
        and r.done
        and delivered == placed
        and not not_lifecycle
        and not not_expected
        and not dict_mismatch
        and not rest_mismatch
    )
    pct = 100.0 * delivered / placed if placed else 0.0
    fig.measured = (
        f"{delivered:,}/{placed:,} orders complete ({pct:.1f} %), {updates:,} updates, "
        f"{len(set(not_lifecycle) | set(not_expected))} out of order"
    )
    by_path: dict[str, int] = defaultdict(int)
    for o in kinds:
        by_path[" > ".join(seq[o])] += 1
    fig.details = [
        f"client read {r.rate:,.0f} ticker msgs/s meanwhile; the slow handler (1 ms per tick, "
        f"thread=True) ran {r.slow.calls:,} times, {r.conflated:,} ticks conflated for it",
        f"placed {placed:,} orders over REST in {r.placing:.1f} s ({ORDER_RATE:g}/s, at most 8 "
        f"in flight); all final "
        f"{r.settle:.1f} s after the first ({'yes' if r.done else 'NO, timed out'})",
        "status sequences received: "
        + ", ".join(f"{p} x{n}" for p, n in sorted(by_path.items(), key=lambda kv: -kv[1])),
        f"each sequence a path of the sim's lifecycle: {placed - len(not_lifecycle)}/{placed}; "
        f"exactly the one expected for its order kind: {placed - len(not_expected)}/{placed}; "
        f"dict handler saw the same sequence: {placed - len(dict_mismatch)}/{placed}; "
        f"last status = REST status: {placed - len(rest_mismatch)}/{placed}",
        f"portfolio snapshots received: {r.portfolios}",
    ]
    lat = sorted(r.final_at[o] - r.sent_at[o] for o in kinds if o in r.final_at and o in r.sent_at)
    if lat:
        p99 = lat[max(0, int(len(lat) * 0.99) - 1)]
        fig.details.insert(
            2,
            f"from sending an order to its final update in the handler: median "
            f"{statistics.median(lat) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max "
            f"{lat[-1] * 1000:.0f} ms (the sim's engine steps every 200 ms)",
        )
        fig.data["final_latency_ms"] = {
            "median": statistics.median(lat) * 1000,
            "p99": p99 * 1000,
            "max": lat[-1] * 1000,
        }
    if r.refused:
        fig.details.append(f"REST refusals ({len(r.refused)}): {r.refused[:3]}")
    for label, bad in (("not a lifecycle path", not_lifecycle), ("unexpected", not_expected)):
        for o in bad[:3]:
            fig.details.append(f"{label}: {kinds[o]} {o}: {seq[o]}")
    fig.details.extend(stall[:60])
    fig.data = {
        **fig.data,
        "placed": placed,
        "complete": delivered,
        "updates": updates,
        "paths": dict(by_path),
        "ticker_msgs_per_s": r.rate,
        "conflated": r.conflated,
        "stalled": guard.cancelled_caught,
    }
    return fig


# -- soak --------------------------------------------------------------------------------------


async def run_soak(opts: Options) -> Figure:
    seconds = opts.soak_seconds
    warmup = min(30.0, seconds / 4)
    interval = 10.0 if seconds >= 120 else max(2.0, seconds / 10)
    limit_mb = 10.0
    fig = Figure(
        "soak",
        "",
        f"{seconds / 60:.3g} min firehose: RSS growth < {limit_mb:g} MB, tasks and threads flat",
        None,
    )
    ticks = 0
    orders = portfolios = 0

    def on_tick(data: dict[str, Any]) -> None:
        nonlocal ticks
        ticks += 1

    def on_order(o: OrderUpdate) -> None:
        nonlocal orders
        orders += 1

    def on_portfolio(p: Portfolio) -> None:
        nonlocal portfolios
        portfolios += 1

    samples: list[tuple[float, int, int, int, int, int, int]] = []
    placed = 0
    t_start = time.perf_counter()
    final: dict[str, Stats] = {}
    stall: list[str] = []
    async with (
        watchdog(seconds + 120, stall) as guard,
        firehose_server() as (url, http),
        session() as client,
    ):
        ws = AgentExchangeWS(DEMO_API_KEY, url)
        ws.on_ticker("all", on_tick)
        ws.on_order_update(on_order)
        ws.on_portfolio(on_portfolio)
        stop = asyncio.Event()

        async def trade() -> None:
            # A market buy and sell of 0.001 ETH every 5 s keeps orders and portfolio busy.
            nonlocal placed
            side = "buy"
            while not stop.is_set():
                body = {
                    "symbol": "ETHUSDT",
                    "side": side,
                    "type": "market",
                    "quantity": "0.001",
                }
                st, _ = await rest(client, "POST", f"{http}/api/v1/trade/order", DEMO_API_KEY, body)
                placed += st == 201
                side = "sell" if side == "buy" else "buy"
                with anyio.move_on_after(5):
                    await stop.wait()

        def take_sample() -> None:
            gc.collect()
            samples.append(
                (
                    time.monotonic() - t0,
                    rss_bytes(),
                    all_tasks(),
                    threading.active_count(),
                    ws.stats.messages_total,
                    ws.stats.queued,
                    sys.getallocatedblocks(),
                )
            )

        async with ws, anyio.create_task_group() as tg:
            tg.start_soon(trade)
            t0 = time.monotonic()
            next_at = t0 + warmup
            while True:
                now = time.monotonic()
                if now >= t0 + seconds:
                    break
                await anyio.sleep(max(0.0, min(next_at, t0 + seconds) - now))
                if time.monotonic() >= next_at:
                    take_sample()
                    next_at += interval
            take_sample()
            stop.set()
            final["stats"] = ws.stats
    if guard.cancelled_caught or len(samples) < 2:
        fig.seconds = time.perf_counter() - t_start
        fig.passed = False
        fig.measured = f"stalled after {len(samples)} samples"
        fig.details = stall[:60]
        return fig
    stats = final["stats"]
    fig.seconds = time.perf_counter() - t_start
    mb = 1024 * 1024
    first, last = samples[0], samples[-1]
    growth = (last[1] - first[1]) / mb
    peak = (max(s[1] for s in samples) - first[1]) / mb
    tasks = [s[2] for s in samples]
    threads = [s[3] for s in samples]
    rate = (last[4] - first[4]) / (last[0] - first[0]) if last[0] > first[0] else 0.0
    fig.passed = (
        growth < limit_mb
        and peak < limit_mb
        and tasks[0] == tasks[-1]
        and threads[0] == threads[-1]
        and stats.reconnects == 0
        and stats.state == "connected"
    )
    fig.measured = (
        f"RSS {growth:+.1f} MB (peak {peak:+.1f} MB), tasks {tasks[0]}->{tasks[-1]}, "
        f"threads {threads[0]}->{threads[-1]}"
    )
    fig.details = [
        f"{seconds:g} s: {len(samples)} samples every {interval:g} s after a {warmup:g} s "
        f"warm-up (gc.collect() before each); RSS first {first[1] / mb:.1f} MB, last "
        f"{last[1] / mb:.1f} MB, max {max(s[1] for s in samples) / mb:.1f} MB",
        f"tasks min/max {min(tasks)}/{max(tasks)}, threads min/max {min(threads)}/{max(threads)}; "
        f"handler queue at samples: max {max(s[5] for s in samples):,}",
        f"client: {stats.messages_total:,} messages ({rate:,.0f}/s while sampled), "
        f"{stats.conflated:,} conflated, reconnects {stats.reconnects}, state {stats.state}; "
        f"sync ticker:all handler ran {ticks:,} times; {placed} orders placed, "
        f"{orders} order updates, {portfolios} portfolio snapshots",
        "RSS MB by sample: " + " ".join(f"{s[1] / mb:.1f}" for s in samples),
        f"Python objects allocated (sys.getallocatedblocks()): first {first[6]:,}, last "
        f"{last[6]:,}, max {max(s[6] for s in samples):,}",
    ]
    fig.data = {
        "seconds": seconds,
        "samples": [
            {
                "t": s[0],
                "rss": s[1],
                "tasks": s[2],
                "threads": s[3],
                "messages": s[4],
                "blocks": s[6],
            }
            for s in samples
        ],
        "rss_growth_mb": growth,
        "rss_peak_growth_mb": peak,
        "msgs_per_s": rate,
        "median_rss_mb": statistics.median(s[1] for s in samples) / mb,
    }
    return fig
