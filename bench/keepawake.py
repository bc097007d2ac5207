"""Keep one CPU from going idle, at the lowest priority: a spinner for the rate runs.

    python -m bench.keepawake CPU PARENT_PID

On a virtual machine an idle CPU halts, and waking it for the next frame costs a trip
through the hypervisor: a few % of frames then wait about 300 µs more, a share that
changes from run to run and decides a run's p99 (bench/HISTORY.md shows it). This
process spins on the client's CPU under ``SCHED_IDLE``: next to a busy process it gets
about 0.3 % of the CPU (a weight of 3 against 1,024), and a waking client takes the CPU
from it at once. The client's latency then measures the client, not the idle wake-up.
Not meant for a client that is busy all the time (the blast runs do not use it).

It prints ``ready POLICY`` once pinned and lowered (``POLICY`` is ``SCHED_IDLE``, or
``nice19`` where that policy is missing), and exits by itself within a few ms once
``PARENT_PID`` is no longer its parent, so a killed client never leaves it behind (the
PID is passed, not read at start, for a client killed before the spinner got that far).
"""

from __future__ import annotations

import os
import sys


def lower_priority() -> str:
    """Put this process at the lowest CPU priority there is; return what was used."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "SCHED_IDLE"
        except OSError:
            pass
    os.nice(19)
    return "nice19"


def main(argv: list[str]) -> int:
    cpu, parent = int(argv[0]), int(argv[1])
    os.sched_setaffinity(0, {cpu})
    print("ready", lower_priority(), flush=True)
    while os.getppid() == parent:
        for _ in range(200_000):  # about 5 ms of spinning between checks
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
