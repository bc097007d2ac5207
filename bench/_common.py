"""What the bench server, its clients and the runner share: names, symbols, CPU pinning.

Nothing here imports aiohttp, websockets or agentstream, so every process can import it
without paying for (or measuring) more than it uses.
"""

from __future__ import annotations

import os
import resource
from typing import Final, Literal

#: The key every client sends; the bench server accepts any non-empty key.
API_KEY: Final = "ak_bench_0000000000000000"

#: The 10 pairs the per-symbol clients subscribe (10 channels fit one connection).
SYMBOLS: Final = (
    "BTCUSDT",
    "ETHUSDT",
    "SOLUSDT",
    "BNBUSDT",
    "XRPUSDT",
    "DOGEUSDT",
    "ADAUSDT",
    "AVAXUSDT",
    "TRXUSDT",
    "DOTUSDT",
)
#: Pairs on ``ticker_all`` (the simulated market's 620 pairs).
ALL_PAIRS: Final = 620

Scope = Literal["symbols", "all"]

#: Every client the bench knows, with what it subscribes.
#: ``symbols``: the 10 :data:`SYMBOLS`, one ``ticker`` subscription each;
#: ``all``: one ``ticker_all`` subscription (620 pairs, round-robin).
CLIENTS: Final[dict[str, Scope]] = {
    "bare": "symbols",
    "bare-model": "symbols",
    "websockets-json": "symbols",
    "as-dict": "symbols",
    "as-typed": "symbols",
    "as-async": "symbols",
    "as-thread": "symbols",
    "bare-all": "all",
    "websockets-json-all": "all",
    "as-all": "all",
}
#: The like-for-like baseline (bare aiohttp + msgspec loop) of each client.
BASELINE: Final = {
    name: "bare-all" if scope == "all" else "bare" for name, scope in CLIENTS.items()
}
#: The like-for-like peer pattern (websockets + json.loads) of each client.
PEER: Final = {
    name: "websockets-json-all" if scope == "all" else "websockets-json"
    for name, scope in CLIENTS.items()
}
AGENTSTREAM_CLIENTS: Final = tuple(n for n in CLIENTS if n.startswith("as-"))

#: Latency histogram: 1 µs buckets up to 100 ms, then one overflow counter.
LATENCY_BUCKETS: Final = 100_000

#: Digits of the send stamp (``time.monotonic_ns()``, zero-padded) in rate mode.
STAMP_DIGITS: Final = 19


def pin_to_cpu(cpu: int | None) -> int | None:
    """Pin the calling process (all its threads) to ``cpu``; return it, or None if not done."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        return None
    return cpu


def peak_rss_kib() -> int:
    """Peak resident set size of this process so far, in KiB (Linux ``ru_maxrss``)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def cpu_ticks(cpu: int) -> tuple[int, int] | None:
    """(busy, total) clock ticks of one CPU so far, from /proc/stat; None if unknown."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{cpu} "):
                    v = [int(x) for x in line.split()[1:]]
                    idle = v[3] + (v[4] if len(v) > 4 else 0)
                    total = sum(v[:8])  # guest time is already counted in user time
                    return total - idle, total
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_stat(pid: int) -> list[str] | None:
    """Fields 3 on of ``/proc/PID/stat`` (state first); None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may hold spaces: count from its closing paren.
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def process_ticks(pid: int) -> int | None:
    """User + system clock ticks a process has used so far, from /proc; None if unknown."""
    fields = process_stat(pid)
    try:
        return int(fields[11]) + int(fields[12]) if fields else None  # utime, stime
    except (ValueError, IndexError):
        return None


def cpu_count() -> int:
    """CPUs this process may run on (``nproc``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
