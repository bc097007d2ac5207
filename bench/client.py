"""One bench client, in its own process: consume the bench server's stream, print JSON.

    python -m bench.client NAME --url ws://127.0.0.1:PORT --mode blast|rate
                           [--warmup 0.5] [--seconds 3] [--cpu 1 [--keep-awake]]

Every client's handler does the same work: it stores the latest price of the symbol in a
dict (and counts the call); in rate mode it also reads the send stamp the server wrote
into ``quantity`` and adds ``monotonic_ns() - stamp`` to a latency histogram with fixed
memory (1 µs buckets up to 100 ms plus an overflow counter, the same in every client).

Clients (see ``bench._common.CLIENTS``):
    bare                 aiohttp ``ws_connect`` + ``receive()`` loop, msgspec decode of the
                         whole frame into a typed Struct, dict lookup symbol -> handler, a
                         sync handler: the baseline, an ordinary hand-written loop
    bare-model           the bare loop decoding ``data`` into agentstream's own ``Ticker``
                         model (Decimal amounts, aware datetime, its checks) instead of
                         strings: not a target, it shows what the model itself costs
    bare-all             the same on ``ticker_all`` (one handler for every pair)
    websockets-json      ``websockets`` client + ``json.loads`` + dict dispatch to the same
                         handler: the pattern most peer SDKs use
    websockets-json-all  the same on ``ticker_all``
    as-dict              agentstream, ``@ws.on_ticker(sym)`` sync handlers taking a dict
    as-typed             agentstream, sync handlers taking a typed ``Ticker``
    as-async             agentstream, ``async def`` handlers taking a dict
    as-all               agentstream, one ``@ws.on_ticker("all")`` sync dict handler
    as-thread            agentstream in ``ws.run_forever()`` on a daemon thread, sync dict
                         handlers; the main thread waits and calls ``ws.stop()``

agentstream clients use the public API with default options: the full supervisor (stale
watchdog, stats, conflation, hooks) is on. They learn that the stream ended from an
``on_disconnect`` hook, wait until their queues are empty, and stop.

Measurements:
    blast  handler calls per second between ``--warmup`` and ``--warmup + --seconds``
           after the first call (a sampler thread reads the call counter twice)
    rate   latency from the server's send stamp to the handler call (p50 / p99 / max),
           for frames stamped after the warm-up; calls over the whole run.
           With ``--keep-awake`` a ``SCHED_IDLE`` spinner (``bench.keepawake``) keeps the
           pinned CPU from idling, so that a frame does not also wait for an idle
           virtual CPU to wake; its CPU time is left out of ``cpu_other``
    both   peak RSS (``ru_maxrss``), and for agentstream ``ws.stats`` (conflated, dropped
           frames, invalid events, handler errors): a conflated event is not delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import select
import subprocess
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

import msgspec

from bench._common import (
    API_KEY,
    CLIENTS,
    LATENCY_BUCKETS,
    SYMBOLS,
    cpu_ticks,
    peak_rss_kib,
    pin_to_cpu,
    process_ticks,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    # Imported for real only by the agentstream clients (see _agentstream_client), so the
    # baselines' memory holds aiohttp and msgspec, not agentstream and anyio.
    from agentstream import AgentExchangeWS, Ticker

monotonic_ns = time.monotonic_ns


class TickerData(msgspec.Struct):
    """The ``data`` object of a ticker frame, as the bare loop decodes it."""

    price: str
    quantity: str
    timestamp: str
    is_buyer_maker: bool


class Frame(msgspec.Struct):
    """A whole server frame, as the bare loop decodes it (``data`` None on control frames)."""

    channel: str | None = None
    symbol: str | None = None
    data: TickerData | None = None
    type: str | None = None


# -- what every handler updates (module globals: the cheapest state a handler can touch) --

PRICES: dict[str, Any] = {}
COUNT = 0
#: Frames stamped before this (monotonic ns) are warm-up: not added to the histogram.
LATENCY_FROM = 1 << 62
HIST = [0] * LATENCY_BUCKETS
OVERFLOW = 0
OVERFLOW_MAX = 0


def _latency(stamp: int, now: int) -> None:
    global OVERFLOW, OVERFLOW_MAX
    if stamp < LATENCY_FROM:
        return
    us = (now - stamp) // 1000
    if us < LATENCY_BUCKETS:
        HIST[us if us > 0 else 0] += 1
    else:
        OVERFLOW += 1
        if us > OVERFLOW_MAX:
            OVERFLOW_MAX = us


# Blast-mode handlers: store the latest price, count.


def on_dict(data: dict[str, Any]) -> None:  # agentstream: a dict with "symbol" merged in
    global COUNT
    PRICES[data["symbol"]] = data["price"]
    COUNT += 1


async def on_dict_async(data: dict[str, Any]) -> None:
    global COUNT
    PRICES[data["symbol"]] = data["price"]
    COUNT += 1


def on_ticker(t: Ticker) -> None:  # agentstream: a typed Ticker
    global COUNT
    PRICES[t.symbol] = t.price
    COUNT += 1


def on_frame(f: Frame) -> None:  # bare loop: the decoded Struct
    global COUNT
    PRICES[f.symbol] = f.data.price  # type: ignore[index, union-attr]
    COUNT += 1


def on_model(f: Any) -> None:  # bare-model: a frame whose data is a Ticker
    global COUNT
    PRICES[f.symbol] = f.data.price
    COUNT += 1


def on_json(m: dict[str, Any]) -> None:  # websockets + json: the whole message
    global COUNT
    PRICES[m["symbol"]] = m["data"]["price"]
    COUNT += 1


# Rate-mode handlers: the same, plus the latency of the frame.


def on_dict_rate(data: dict[str, Any]) -> None:
    global COUNT
    now = monotonic_ns()
    PRICES[data["symbol"]] = data["price"]
    COUNT += 1
    _latency(int(data["quantity"]), now)


async def on_dict_async_rate(data: dict[str, Any]) -> None:
    global COUNT
    now = monotonic_ns()
    PRICES[data["symbol"]] = data["price"]
    COUNT += 1
    _latency(int(data["quantity"]), now)


def on_ticker_rate(t: Ticker) -> None:
    global COUNT
    now = monotonic_ns()
    PRICES[t.symbol] = t.price
    COUNT += 1
    _latency(int(t.quantity), now)  # type: ignore[arg-type]


def on_frame_rate(f: Frame) -> None:
    global COUNT
    now = monotonic_ns()
    PRICES[f.symbol] = f.data.price  # type: ignore[index, union-attr]
    COUNT += 1
    _latency(int(f.data.quantity), now)  # type: ignore[union-attr]


def on_model_rate(f: Any) -> None:
    global COUNT
    now = monotonic_ns()
    PRICES[f.symbol] = f.data.price
    COUNT += 1
    _latency(int(f.data.quantity), now)


def on_json_rate(m: dict[str, Any]) -> None:
    global COUNT
    now = monotonic_ns()
    data = m["data"]
    PRICES[m["symbol"]] = data["price"]
    COUNT += 1
    _latency(int(data["quantity"]), now)


# -- the measurement window ---------------------------------------------------------


class Sampler(threading.Thread):
    """Reads the call counter at ``warmup`` and ``warmup + seconds`` after the first call.

    It wakes every 5 ms only until the first call, then twice, so it costs every
    client the same, next to nothing.
    """

    def __init__(
        self, warmup: float, seconds: float, cpu: int | None, spinner: int | None = None
    ) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.cpu = cpu
        self.spinner = spinner  # pid of the keep-awake spinner on the same CPU, if any
        self.warmup = warmup
        self.seconds = seconds
        self.stream_ended = threading.Event()
        self.window: tuple[int, int, int, int] | None = None  # t0, c0, t1, c1
        self.cpu_s = 0.0  # CPU time of this process (every thread) during the window
        self.preempted = 0  # involuntary context switches during the window
        #: Share of the pinned CPU busy with anything but this process (and the spinner)
        #: during the window.
        self.cpu_other: float | None = None
        #: Share of the pinned CPU the keep-awake spinner had during the window.
        self.spinner_share: float | None = None
        self.first_call_ns: int | None = None
        self.incomplete = False

    def run(self) -> None:
        global LATENCY_FROM
        while COUNT == 0:
            if self.stream_ended.wait(0.005):
                return
        first = monotonic_ns()
        self.first_call_ns = first
        if self.stream_ended.wait(self.warmup):
            return
        t0, c0 = monotonic_ns(), COUNT
        cpu0 = time.process_time()
        ivcsw0 = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
        ticks0 = cpu_ticks(self.cpu) if self.cpu is not None else None
        spun0 = process_ticks(self.spinner) if self.spinner is not None else None
        LATENCY_FROM = t0
        self.stream_ended.wait(self.seconds)
        t1, c1 = monotonic_ns(), COUNT
        self.cpu_s = time.process_time() - cpu0
        self.preempted = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - ivcsw0
        ticks1 = cpu_ticks(self.cpu) if self.cpu is not None else None
        spun1 = process_ticks(self.spinner) if self.spinner is not None else None
        if ticks0 is not None and ticks1 is not None and ticks1[1] > ticks0[1]:
            total = ticks1[1] - ticks0[1]
            busy = (ticks1[0] - ticks0[0]) / total
            if spun0 is not None and spun1 is not None:
                self.spinner_share = min(1.0, (spun1 - spun0) / total)
                busy -= self.spinner_share
            self.cpu_other = max(0.0, busy - self.cpu_s / ((t1 - t0) / 1e9))
        self.incomplete = self.stream_ended.is_set()
        self.window = (t0, c0, t1, c1)


# -- the clients --------------------------------------------------------------------


def _url(base: str) -> str:
    return f"{base}/ws/v1?api_key={API_KEY}"


def _subscribes(scope: str) -> list[str]:
    if scope == "all":
        return ['{"action":"subscribe","channel":"ticker_all"}']
    return [f'{{"action":"subscribe","channel":"ticker","symbol":"{s}"}}' for s in SYMBOLS]


async def run_bare(args: argparse.Namespace, scope: str) -> dict[str, Any]:
    import aiohttp

    rate = args.mode == "rate"
    decode: Callable[[bytes | str], Any]
    handler: Callable[[Any], None]
    if args.client == "bare-model":
        from agentstream.models import Ticker as Model  # only this client needs it

        # Frame with data: Ticker (built here: this module's annotations are strings).
        model_frame = msgspec.defstruct(
            "ModelFrame",
            [
                (name, Model | None if name == "data" else str | None, None)
                for name in Frame.__struct_fields__
            ],
        )
        decode = msgspec.json.Decoder(model_frame).decode
        handler = on_model_rate if rate else on_model
    else:
        decode = msgspec.json.Decoder(Frame).decode
        handler = on_frame_rate if rate else on_frame
    handlers: dict[str, Callable[[Any], None]] = {}
    all_handler: Callable[[Any], None] | None = None
    if scope == "all":
        all_handler = handler
    else:
        handlers = dict.fromkeys(SYMBOLS, handler)
    async with aiohttp.ClientSession() as session, session.ws_connect(_url(args.url)) as ws:
        for sub in _subscribes(scope):
            await ws.send_str(sub)
        while True:
            msg = await ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break  # the server closed the stream (CLOSE), or the socket died
            frame: Any = decode(msg.data)
            if frame.data is None:
                continue  # a control message: subscribed, ping, ...
            h = handlers.get(frame.symbol, all_handler)
            if h is not None:
                h(frame)
    return {}


async def run_websockets_json(args: argparse.Namespace, scope: str) -> dict[str, Any]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    handler = on_json_rate if args.mode == "rate" else on_json
    handlers: dict[str, Callable[[dict[str, Any]], None]] = {}
    all_handler: Callable[[dict[str, Any]], None] | None = None
    if scope == "all":
        all_handler = handler
    else:
        handlers = dict.fromkeys(SYMBOLS, handler)
    async with connect(_url(args.url)) as ws:
        for sub in _subscribes(scope):
            await ws.send(sub)
        try:
            async for raw in ws:
                msg = json.loads(raw)
                if "type" in msg:
                    continue  # a control message
                h = handlers.get(msg.get("symbol"), all_handler)
                if h is not None:
                    h(msg)
        except ConnectionClosed:
            pass
    return {}


def _agentstream_client(args: argparse.Namespace, name: str) -> AgentExchangeWS:
    # A global `Ticker`, so the typed handler's annotation resolves as in a user's module.
    global Ticker
    from agentstream import AgentExchangeWS, Ticker

    ws = AgentExchangeWS(api_key=API_KEY, base_url=args.url)  # default options
    rate = args.mode == "rate"
    handler: Callable[..., Any]
    if name == "as-typed":
        handler = on_ticker_rate if rate else on_ticker
    elif name == "as-async":
        handler = on_dict_async_rate if rate else on_dict_async
    else:
        handler = on_dict_rate if rate else on_dict
    # every=True: the comparison is of delivering every event, as the bare loops do. By
    # default a handler that falls behind gets the newest event per symbol instead
    # (python -m bench staleness measures that).
    for sym in ["all"] if name == "as-all" else SYMBOLS:
        ws.on_ticker(sym, handler, every=not args.newest)
    return ws


def _stats(ws: AgentExchangeWS) -> dict[str, Any]:
    s = ws.stats
    return {
        "messages_total": s.messages_total,
        "conflated": s.conflated,
        "dropped_frames": s.dropped_frames,
        "invalid_events": s.invalid_events,
        "handler_errors": s.handler_errors,
        "queued": s.queued,
        "reconnects": s.reconnects,
    }


async def _drain(ws: AgentExchangeWS, timeout: float = 30.0) -> None:
    """Wait until every queued event reached its handler."""
    end = time.monotonic() + timeout
    while ws.stats.queued and time.monotonic() < end:
        await asyncio.sleep(0.005)


async def run_agentstream(args: argparse.Namespace, name: str) -> dict[str, Any]:
    ws = _agentstream_client(args, name)
    ended = asyncio.Event()
    ws.on_disconnect(lambda reason: ended.set())
    async with ws:
        await ended.wait()
        await _drain(ws)
        stats = _stats(ws)
    return {"agentstream": stats}


def run_agentstream_thread(args: argparse.Namespace) -> dict[str, Any]:
    ws = _agentstream_client(args, "as-thread")
    ended = threading.Event()
    ws.on_disconnect(lambda reason: ended.set())
    thread = threading.Thread(target=ws.run_forever, name="agentstream", daemon=True)
    thread.start()
    ended.wait(timeout=args.warmup + args.seconds + 120)
    end = time.monotonic() + 30
    while ws.stats.queued and time.monotonic() < end:
        time.sleep(0.005)
    stats = _stats(ws)
    stopped = ws.stop()
    thread.join(10)
    stats["stopped_cleanly"] = stopped and not thread.is_alive()
    return {"agentstream": stats}


# -- results ------------------------------------------------------------------------


def percentile(q: float, total: int) -> int | None:
    """The ``q`` quantile of the histogram in µs (bucket floor); None if empty."""
    if total == 0:
        return None
    rank = max(1, round(q * total))
    acc = 0
    for us, n in enumerate(HIST):
        acc += n
        if acc >= rank:
            return us
    return LATENCY_BUCKETS  # in the overflow


#: The JSON's ``over_slow_pct``: the share of frames slower than this (µs). On a virtual
#: machine a few % of frames wait this long for an idle CPU to wake (bench/HISTORY.md).
SLOW_US = 300


def latency_summary() -> dict[str, Any]:
    n = sum(HIST) + OVERFLOW
    top = OVERFLOW_MAX if OVERFLOW else max((i for i, c in enumerate(HIST) if c), default=None)
    slow = sum(HIST[SLOW_US + 1 :]) + OVERFLOW
    return {
        "n": n,
        "p50_us": percentile(0.50, n),
        "p90_us": percentile(0.90, n),
        "p95_us": percentile(0.95, n),
        "p99_us": percentile(0.99, n),
        "p999_us": percentile(0.999, n),
        "max_us": top,
        "overflow": OVERFLOW,
        "over_slow_pct": round(100 * slow / n, 2) if n else None,
    }


def start_keep_awake(cpu: int) -> tuple[subprocess.Popen[str], str]:
    """Start ``bench.keepawake`` on ``cpu``; return it and its policy once it is ready."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.keepawake", str(cpu), str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    word, _, policy = (proc.stdout.readline() if ready else "").strip().partition(" ")
    if word != "ready":
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise RuntimeError(f"the keep-awake spinner did not start (exit {proc.returncode})")
    return proc, policy


def run(args: argparse.Namespace, spinner: int | None = None) -> dict[str, Any]:
    name = args.client
    scope = CLIENTS[name]
    sampler = Sampler(args.warmup, args.seconds, args.cpu_pinned, spinner)
    sampler.start()
    started = time.perf_counter()
    extra: dict[str, Any]
    if name in ("bare", "bare-model", "bare-all"):
        extra = asyncio.run(run_bare(args, scope))
    elif name in ("websockets-json", "websockets-json-all"):
        extra = asyncio.run(run_websockets_json(args, scope))
    elif name == "as-thread":
        extra = run_agentstream_thread(args)
    else:
        extra = asyncio.run(run_agentstream(args, name))
    elapsed = time.perf_counter() - started
    sampler.stream_ended.set()
    sampler.join(5)
    out: dict[str, Any] = {
        "client": name,
        "mode": args.mode,
        "calls": COUNT,
        "symbols_seen": len(PRICES),
        "elapsed_s": round(elapsed, 3),
        "peak_rss_kib": peak_rss_kib(),
        "cpu": args.cpu_pinned,
    }
    if sampler.window is not None:
        t0, c0, t1, c1 = sampler.window
        out["window_s"] = (t1 - t0) / 1e9
        out["window_calls"] = c1 - c0
        out["throughput"] = (c1 - c0) / ((t1 - t0) / 1e9)
        out["window_incomplete"] = sampler.incomplete
        # Near 1.0 in blast mode when the client had its CPU to itself; well below it
        # when something else ran on the same CPU (the numbers are then not comparable).
        out["cpu_share"] = sampler.cpu_s / out["window_s"]
        # The kernel took the CPU away this many times during the window: near 0 on an
        # idle machine; each one can delay a handler call by a scheduler time slice.
        out["preempted"] = sampler.preempted
        # Share of the client's CPU that other processes (and the kernel's network
        # processing) used during the window: a few % on an idle machine. More means
        # the client competed for its CPU; its latency tail then says little.
        out["cpu_other"] = sampler.cpu_other
        out["spinner_share"] = sampler.spinner_share
    else:
        out["window_incomplete"] = True
    if args.mode == "rate":
        out["latency"] = latency_summary()
    out.update(extra)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("client", choices=tuple(CLIENTS))
    p.add_argument("--url", required=True, help="the bench server's ws://127.0.0.1:PORT")
    p.add_argument("--mode", choices=("blast", "rate"), default="blast")
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--cpu", type=int, default=None, help="pin the client to this CPU")
    p.add_argument(
        "--newest",
        action="store_true",
        help="agentstream: register handlers as by default (newest per symbol once behind) "
        "instead of every=True",
    )
    p.add_argument(
        "--keep-awake",
        action="store_true",
        help="with --cpu: keep that CPU from idling with a SCHED_IDLE spinner (bench.keepawake)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.cpu_pinned = pin_to_cpu(args.cpu)
    spinner: subprocess.Popen[str] | None = None
    try:
        policy = None
        if args.keep_awake and args.cpu_pinned is not None:
            spinner, policy = start_keep_awake(args.cpu_pinned)
        out = run(args, spinner.pid if spinner is not None else None)
        if spinner is not None and spinner.poll() is not None:
            raise RuntimeError("the keep-awake spinner exited during the run")
        out["keep_awake"] = policy
    except Exception as exc:
        traceback.print_exc()
        print(json.dumps({"client": args.client, "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
            if spinner.stdout is not None:
                spinner.stdout.close()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
