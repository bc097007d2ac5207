"""``python -m bench [NAME] [ARGS]`` (or ``python3 dev.py bench``): run a benchmark.

Benchmarks:
    sim_firehose   messages per second the simulated exchange's firehose delivers to a
                   bare aiohttp client (the default)
"""

from __future__ import annotations

import runpy
import sys

BENCHMARKS = ("sim_firehose",)


def main(argv: list[str]) -> None:
    name = argv[0] if argv and not argv[0].startswith("-") else BENCHMARKS[0]
    if name in ("-h", "--help", "help"):
        print(__doc__)
        return
    if name not in BENCHMARKS:
        sys.exit(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    rest = argv[1:] if argv and argv[0] == name else argv
    sys.argv = [f"bench.{name}", *rest]
    runpy.run_module(f"bench.{name}", run_name="__main__")


main(sys.argv[1:])
