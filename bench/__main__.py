"""``python -m bench [NAME] [ARGS]`` (or ``python3 dev.py bench``): run a benchmark.

Benchmarks:
    compare        agentstream (sync, typed, async, ticker_all, run_forever thread)
                   against a bare aiohttp + msgspec loop and the websockets + json peer
                   pattern: throughput, latency at fixed rates, peak RSS, and the
                   performance targets (the default; see docs/performance.md)
    reliability    the reliability figures: forced disconnects, black hole, auth refusals,
                   5xx backoff, 1M fuzzed frames, orders under a firehose, a 10-minute
                   soak, the secret audit (see docs/reliability.md)
    sim_firehose   messages per second the simulated exchange's firehose delivers to a
                   bare aiohttp client
    staleness      the age of the price a slow ticker handler sees: newest-per-symbol
                   (the default) against every=True
    bus            the Redis bridge: events/s sustained into Redis from the firehose,
                   CPU, conflation; latency send -> Redis -> a reader at fixed rates
                   (see docs/scale-out.md)
    bus_consumer   the RedisBus consumer: entries/s handled and acknowledged by 1 and 3
                   processes, and XADD -> handler latency (see docs/scale-out-consumers.md)

Examples:
    python -m bench                                    # the full comparison
    python -m bench --runs 3 --seconds 2 --modes blast,20000 --clients bare,as-dict
    python -m bench --json /tmp/bench.json --check     # save raw results; exit 1 on a miss
    python -m bench reliability --quick                # every figure, shorter
    python -m bench sim_firehose --seconds 5
    python -m bench bus --seconds 10 --rates 1000,10000

``python -m bench compare --help`` lists every option.
"""

from __future__ import annotations

import runpy
import sys

BENCHMARKS = ("compare", "reliability", "sim_firehose", "staleness", "bus", "bus_consumer")


def main(argv: list[str]) -> int:
    name = argv[0] if argv and not argv[0].startswith("-") else BENCHMARKS[0]
    if name == "help" or (not argv[1:] and argv[:1] in (["-h"], ["--help"])):
        print(__doc__)
        return 0
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    rest = argv[1:] if argv and argv[0] == name else argv
    if name == "compare":
        from bench.compare import main as compare

        return compare(rest)
    sys.argv = [f"bench.{name}", *rest]
    try:
        runpy.run_module(f"bench.{name}", run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
