"""What the test helpers cost: ``python -m bench.testing_figures``.

A RunningSim's start and close (the ``agentstream_sim`` fixture's setup and teardown),
and a Feed's start and one ``send`` (until the handlers have run) for a sync, an async
and a ``thread=True`` handler. Medians and maxima, in milliseconds.
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import TYPE_CHECKING, Any

from agentstream import AgentExchangeWS, Ticker
from agentstream.testing import Feed, RunningSim

if TYPE_CHECKING:
    from collections.abc import Callable

TICK = {"price": "1.5", "volume": "1", "timestamp": "2026-01-01T00:00:00Z"}


def timed(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    took = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        took.append(time.perf_counter() - t)
    return statistics.median(took) * 1000, max(took) * 1000


def sim_cycle() -> None:
    with RunningSim():
        pass


async def on_async(t: Ticker) -> None:
    pass


def main() -> None:
    sim_cycle()  # imports and first-use costs out of the figures
    median, worst = timed(sim_cycle, 10)
    print(f"RunningSim start + close: median {median:.1f} ms, max {worst:.1f} ms (10 runs)")
    for kind in ("sync", "async", "thread"):
        ws = AgentExchangeWS("ak_test_figures1")
        if kind == "async":
            ws.on_ticker("BTCUSDT", on_async)
        else:
            ws.on_ticker("BTCUSDT", lambda data: None, thread=kind == "thread")
        t = time.perf_counter()
        feed = Feed(ws).start()
        started = (time.perf_counter() - t) * 1000
        median, worst = timed(functools.partial(feed.event, "ticker:BTCUSDT", TICK), 300)
        feed.stop()
        print(
            f"Feed, {kind} handler: start {started:.1f} ms; send median {median:.2f} ms, "
            f"max {worst:.2f} ms (300 sends)"
        )


if __name__ == "__main__":
    main()
