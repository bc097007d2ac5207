"""How old is the price a slow ticker handler sees? Newest-per-symbol against every event.

A slow handler (a blocking one with ``thread=True``, an async one that awaits, a sync one
on the event loop) is registered for ``BTCUSDT`` and for ``all`` on an in-process
simulated exchange, once as by default (it gets the newest event per symbol) and once with
``every=True`` (every event waits its turn: what every handler got before). For each call
the age is the time since the reader received that event (a fast handler registered
first stamps each event as it arrives). Prints p50 / p99 / max age, the calls made and
the events conflated, per case, side by side. It also counts, for each call, how many
newer events of the same symbol had already arrived: 0 means the handler got the newest
price there was (the simulated exchange sends in bursts about every 20 ms, so with a 20 ms
handler the newest price is often that old).

    python -m bench staleness [--seconds 5] [--rate 4000] [--work-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from agentstream import AgentExchangeWS
from agentstream.sim import DEMO_API_KEY, SimExchange


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def one_case(
    url: str, symbol: str, kind: str, every: bool, seconds: float, work_s: float
) -> dict[str, Any]:
    ws = AgentExchangeWS(DEMO_API_KEY, url)
    arrived: dict[int, tuple[float, int]] = {}
    per_symbol: dict[str, int] = {}
    keep: list[Any] = []  # keeps the events alive so their ids are not reused
    ages: list[float] = []
    newer: list[float] = []
    measuring = False

    def stamp(data: Any) -> None:
        sym = data["symbol"]
        n = per_symbol[sym] = per_symbol.get(sym, 0) + 1
        arrived[id(data)] = (time.monotonic(), n)
        keep.append(data)

    def record(data: Any) -> None:
        got = arrived.get(id(data))
        if measuring and got is not None:
            ages.append(time.monotonic() - got[0])
            newer.append(per_symbol[data["symbol"]] - got[1])

    def blocking(data: Any) -> None:
        record(data)
        time.sleep(work_s)

    async def awaiting(data: Any) -> None:
        record(data)
        await asyncio.sleep(work_s)

    def on_loop(data: Any) -> None:
        record(data)
        time.sleep(work_s / 20)  # on the event loop: 20x shorter, or nothing else runs

    ws.on_ticker(symbol, stamp, every=True)
    if kind == "thread":
        ws.on_ticker(symbol, blocking, thread=True, every=every)
    elif kind == "async":
        ws.on_ticker(symbol, awaiting, every=every)
    else:
        ws.on_ticker(symbol, on_loop, every=every)
    task = asyncio.create_task(ws.connect())
    await asyncio.sleep(1.0)  # warm up
    measuring = True
    await asyncio.sleep(seconds)
    measuring = False
    stats = ws.stats
    await ws.disconnect()
    await task
    return {
        "ages": ages,
        "newer": newer,
        "calls": len(ages),
        "received": len(keep),
        "conflated": stats.conflated,
    }


async def run(args: argparse.Namespace) -> None:
    async with SimExchange(port=0, tick_rate=args.rate) as sim:
        print(
            f"tick rate {args.rate}/s, handler work {args.work_ms} ms "
            f"(sync on the loop: {args.work_ms / 20} ms), {args.seconds} s per case\n"
        )
        head = f"{'subscription':<12} {'handler':<8} {'queue':<14}"
        print(
            f"{head} {'p50 age':>9} {'p99 age':>9} {'max age':>9} {'newer p50/p99':>14} "
            f"{'calls':>7} {'conflated':>10}"
        )
        for symbol in ("BTCUSDT", "all"):
            for kind in ("thread", "async", "sync"):
                for every in (True, False):
                    r = await one_case(
                        sim.url, symbol, kind, every, args.seconds, args.work_ms / 1000
                    )
                    ages = r["ages"]
                    label = "every=True" if every else "newest (dflt)"
                    print(
                        f"{symbol:<12} {kind:<8} {label:<14} "
                        f"{_pct(ages, 0.5) * 1000:>7.1f}ms {_pct(ages, 0.99) * 1000:>7.1f}ms "
                        f"{(max(ages) if ages else float('nan')) * 1000:>7.1f}ms "
                        f"{_pct(r['newer'], 0.5):>6.0f} / {_pct(r['newer'], 0.99):<5.0f} "
                        f"{r['calls']:>7} {r['conflated']:>10}",
                        flush=True,
                    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench staleness", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=int, default=4000, help="the sim's ticks per second")
    parser.add_argument("--work-ms", type=float, default=20.0, help="each slow call's work")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
