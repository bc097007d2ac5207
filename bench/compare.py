"""agentstream against a bare aiohttp + msgspec loop and the websockets + json peer pattern.

    python -m bench                       # the full comparison (about 11 minutes)
    python -m bench compare --runs 1 --seconds 1 --modes blast,20000
    python -m bench compare --clients bare,as-dict --json /tmp/bench.json --check

For each mode, for each run, for each client (the order rotates from run to run, so any
drift of the machine hits every client alike), this starts a fresh bench server process
(``bench/server.py``) and then the client's own process (``bench/client.py``), both on
127.0.0.1, the server pinned to CPU 0 and the client to CPU 1 when the machine has two
or more (in rate modes the client also starts ``bench/keepawake.py``, a ``SCHED_IDLE``
spinner that keeps its CPU from idling: ``--keep-awake``). It then prints one table per
mode (medians, best runs, spread, ratios against the bare loop and the peer pattern, peak
RSS) and checks the targets of the performance issue, as PASS / FAIL lines.

Modes (``--modes``, comma-separated):
    blast      the server writes as fast as the socket drains; the score is handler
               calls per second over ``--seconds`` after ``--warmup``
    <N>        a fixed offered rate of N frames per second (e.g. 20000); the score is
               the latency from the server's send stamp to the handler call, p50 / p99

Clients (``--clients``): bare, bare-model, websockets-json, as-dict, as-typed, as-async,
as-thread (10 symbols, one ticker subscription each), and bare-all, websockets-json-all, as-all
(``ticker_all``, 620 pairs). Each row is compared with the baseline of its own scope:
as-all with bare-all and websockets-json-all, the others with bare and websockets-json.

The command exits 0 when every run completed (whatever the numbers), 1 when a run
crashed, and with ``--check`` also 1 when a target failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from bench._common import (
    AGENTSTREAM_CLIENTS,
    BASELINE,
    CLIENTS,
    LATENCY_BUCKETS,
    PEER,
    SYMBOLS,
    cpu_count,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLIENTS = (
    "bare",
    "bare-model",
    "websockets-json",
    "as-dict",
    "as-typed",
    "as-async",
    "as-thread",
    "bare-all",
    "websockets-json-all",
    "as-all",
)
DEFAULT_MODES = "blast,20000,100000"
TAIL = 0.5  # seconds the server streams beyond warm-up + window, so the window is full
JOB_SLACK = 90.0  # seconds a job may take beyond its stream (a slow client's backlog)


@dataclass(frozen=True)
class Mode:
    name: str  # "blast" or the rate as a string
    rate: int  # 0 for blast

    @property
    def label(self) -> str:
        return "blast" if not self.rate else f"{self.rate:,} msg/s"

    @classmethod
    def parse(cls, text: str) -> Mode:
        text = text.strip().lower().replace("_", "")
        if text == "blast":
            return cls("blast", 0)
        rate = int(float(text[:-1]) * 1000) if text.endswith("k") else int(text)
        if rate <= 0:
            raise ValueError(f"a rate must be positive: {text!r}")
        return cls(str(rate), rate)


# -- the machine --------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("agentstream", "aiohttp", "msgspec", "anyio", "websockets"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def cpu_busy(seconds: float = 0.5) -> list[float]:
    """Share of each CPU that was busy over ``seconds`` (from /proc/stat); [] if unknown."""

    def snap() -> list[tuple[int, int]]:
        out = []
        with contextlib.suppress(OSError):
            for line in Path("/proc/stat").read_text().splitlines():
                if line.startswith("cpu") and line[3:4].isdigit():
                    v = [int(x) for x in line.split()[1:]]
                    idle = v[3] + (v[4] if len(v) > 4 else 0)
                    out.append((sum(v), idle))
        return out

    a = snap()
    time.sleep(seconds)
    b = snap()
    if not a or len(a) != len(b):
        return []
    return [
        round(1 - (bi - ai) / max(1, bt - at), 3) for (at, ai), (bt, bi) in zip(a, b, strict=True)
    ]


def machine(args: argparse.Namespace) -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "versions": versions(),
        "pinning": (
            f"server on CPU {args.server_cpu}, client on CPU {args.client_cpu}"
            if args.pin
            else "off"
        ),
        "keep_awake": (
            f"rate runs: CPU {args.client_cpu} kept from idling by a SCHED_IDLE spinner"
            if args.pin and args.keep_awake
            else "off"
        ),
        "loadavg_start": [round(x, 2) for x in load],
        "cpu_busy_before": cpu_busy(),
    }


def header_lines(meta: dict[str, Any], args: argparse.Namespace) -> list[str]:
    v = meta["versions"]
    libs = ", ".join(f"{k} {v[k]}" for k in ("agentstream", "aiohttp", "msgspec", "anyio"))
    return [
        f"agentstream bench: {meta['date']}",
        f"machine: nproc={meta['nproc']}, {meta['cpu']}, {meta['platform']}",
        f"python {v['python']}; {libs}, websockets {v['websockets']}",
        f"pinning: {meta['pinning']}; load average at start: "
        + " ".join(f"{x:g}" for x in meta["loadavg_start"])
        + "; CPUs busy before start: "
        + (", ".join(f"cpu{i} {b:.0%}" for i, b in enumerate(meta["cpu_busy_before"])) or "?"),
        *(
            f"WARNING: cpu{i} was {b:.0%} busy before the start: another process competes "
            "with the bench, its numbers will be low and noisy"
            for i, b in enumerate(meta["cpu_busy_before"])
            if b > 0.2
        ),
        f"keep-awake: {meta['keep_awake']}",
        f"runs: {args.runs} per mode and client; warm-up {args.warmup:g} s, window "
        f"{args.seconds:g} s; per-symbol clients: {len(SYMBOLS)} ticker channels, "
        "*-all clients: ticker_all (620 pairs)",
    ]


# -- one job: a fresh server and one client -----------------------------------------


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    return value
    return None


async def run_job(client: str, mode: Mode, args: argparse.Namespace) -> dict[str, Any]:
    """Start a bench server and the client; return both results (or an ``error``)."""
    py = sys.executable
    duration = args.warmup + args.seconds + TAIL
    expect = 1 if CLIENTS[client] == "all" else len(SYMBOLS)
    server_cmd = [
        *(py, "-m", "bench.server", "--port", "0", "--duration", f"{duration:g}"),
        *("--expect", str(expect)),
        *(("--mode", "rate", "--rate", str(mode.rate)) if mode.rate else ("--mode", "blast")),
    ]
    client_cmd = [
        *(py, "-m", "bench.client", client, "--mode", "rate" if mode.rate else "blast"),
        *("--warmup", f"{args.warmup:g}", "--seconds", f"{args.seconds:g}"),
    ]
    if args.pin:
        server_cmd += ["--cpu", str(args.server_cpu)]
        client_cmd += ["--cpu", str(args.client_cpu)]
        if mode.rate and args.keep_awake:
            client_cmd.append("--keep-awake")
    job: dict[str, Any] = {"client": client, "mode": mode.name, "rate": mode.rate}
    pipe = asyncio.subprocess.PIPE
    server = await asyncio.create_subprocess_exec(
        *server_cmd, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=pipe, stderr=pipe
    )
    client_proc: asyncio.subprocess.Process | None = None
    try:
        assert server.stdout is not None
        try:
            first = (await asyncio.wait_for(server.stdout.readline(), 20)).decode().strip()
        except TimeoutError:
            first = ""
        if not first.startswith("ws://"):
            await _kill(server)
            err = (await server.stderr.read()).decode() if server.stderr else ""
            job["error"] = f"the server did not start: {first!r} {err[-2000:]}"
            return job
        client_cmd += ["--url", first]
        client_proc = await asyncio.create_subprocess_exec(
            *client_cmd, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=pipe, stderr=pipe
        )
        t0 = time.perf_counter()
        try:
            (c_out, c_err), (s_out, s_err) = await asyncio.wait_for(
                asyncio.gather(client_proc.communicate(), server.communicate()),
                duration + JOB_SLACK,
            )
        except TimeoutError:
            job["error"] = f"timed out after {duration + JOB_SLACK:g} s"
            return job
        job["wall_s"] = round(time.perf_counter() - t0, 2)
        job["client_result"] = _last_json(c_out.decode())
        job["server_result"] = _last_json(s_out.decode())
        job["client_stderr"] = c_err.decode()[-4000:]
        job["server_stderr"] = s_err.decode()[-4000:]
        job["client_rc"] = client_proc.returncode
        job["server_rc"] = server.returncode
        res = job["client_result"]
        if client_proc.returncode != 0 or res is None or "error" in res:
            why = res.get("error") if res else c_err.decode()[-600:]
            job["error"] = f"client exited {client_proc.returncode}: {why}"
        elif server.returncode != 0 or job["server_result"] is None:
            job["error"] = f"server exited {server.returncode}: {s_err.decode()[-600:]}"
        elif mode.rate == 0 and res.get("window_incomplete", True):
            job["error"] = "the stream ended before the measurement window did"
        return job
    finally:
        for proc in (client_proc, server):
            if proc is not None:
                await _kill(proc)


# -- aggregation --------------------------------------------------------------------


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _top(xs: list[int]) -> int:
    return max(xs) if xs else 0


@dataclass
class Row:
    """One client in one mode, aggregated over its successful runs."""

    client: str
    runs: int
    failed: int
    throughput: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    max_us: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    delivered: list[float] = field(default_factory=list)
    conflated: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    overflow: list[int] = field(default_factory=list)
    cpu_share: list[float] = field(default_factory=list)
    preempted: list[float] = field(default_factory=list)
    cpu_other: list[float] = field(default_factory=list)
    #: Per run: % of frames slower than bench.client.SLOW_US (rate modes).
    slow: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        def med(xs: list[Any]) -> Any:
            return _median(xs)

        return {
            "runs": self.runs,
            "failed": self.failed,
            "throughput_median": med(self.throughput),
            "throughput_best": max(self.throughput, default=None),
            "throughput_worst": min(self.throughput, default=None),
            "p50_us_median": med(self.p50),
            "p99_us_median": med(self.p99),
            "p99_us_best": min(self.p99, default=None),
            "max_us_worst": max(self.max_us, default=None),
            "rss_mb_median": med(self.rss_mb),
            "delivered_median": med(self.delivered),
            "conflated_max": max(self.conflated, default=None),
            "dropped_max": max(self.dropped, default=None),
            "overflow_max": max(self.overflow, default=None),
            "cpu_share_median": med(self.cpu_share),
            "preempted_median": med(self.preempted),
            "cpu_other_median": med(self.cpu_other),
            "over_slow_pct_median": med(self.slow),
        }


def aggregate(jobs: list[dict[str, Any]], client: str, mode: Mode) -> Row:
    mine = [j for j in jobs if j["client"] == client and j["mode"] == mode.name]
    ok = [j for j in mine if "error" not in j]
    row = Row(client, len(ok), len(mine) - len(ok))
    for j in ok:
        res, srv = j["client_result"], j["server_result"]
        if "throughput" in res:
            row.throughput.append(res["throughput"])
        if "cpu_share" in res:
            row.cpu_share.append(res["cpu_share"])
        if "preempted" in res:
            row.preempted.append(res["preempted"])
        if res.get("cpu_other") is not None:
            row.cpu_other.append(res["cpu_other"])
        lat = res.get("latency")
        if lat and lat.get("n"):
            row.p50.append(lat["p50_us"])
            row.p99.append(lat["p99_us"])
            row.max_us.append(lat["max_us"])
            row.overflow.append(lat["overflow"])
            if lat.get("over_slow_pct") is not None:
                row.slow.append(lat["over_slow_pct"])
        row.rss_mb.append(res["peak_rss_kib"] / 1024)
        if srv.get("sent"):
            row.delivered.append(res["calls"] / srv["sent"])
        st = res.get("agentstream")
        if st is not None:
            row.conflated.append(st["conflated"])
            row.dropped.append(st["dropped_frames"] + st["invalid_events"])
    return row


# -- the table ----------------------------------------------------------------------


def _num(x: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "-"
    return f"{a / b:.2f}x"


def _lat(x: float | None) -> str:
    if x is None:
        return "-"
    return ">100ms" if x >= LATENCY_BUCKETS else f"{x:,.0f}"


def render(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def table(mode: Mode, rows: dict[str, Row], args: argparse.Namespace) -> list[str]:
    def base(name: str, attr: str) -> float | None:
        other = rows.get(name)
        return _median(getattr(other, attr)) if other is not None else None

    lines: list[str] = []
    if not mode.rate:
        lines.append(
            f"== blast: handler calls/s, {args.seconds:g} s window after {args.warmup:g} s "
            f"warm-up; median of {args.runs} run(s) =="
        )
        out = [
            [
                "client",
                "median/s",
                "best/s",
                "spread (min-max)",
                "vs bare",
                "vs ws-json",
                "delivered",
                "conflated",
                "client CPU",
                "CPU other",
                "RSS MB",
                "dRSS MB",
            ]
        ]
        for name, r in rows.items():
            med = _median(r.throughput)
            rss = _median(r.rss_mb)
            b_rss = base(BASELINE[name], "rss_mb")
            out.append(
                [
                    name + (f" ({r.failed} failed)" if r.failed else ""),
                    _num(med),
                    _num(max(r.throughput, default=None)),
                    _num(min(r.throughput, default=None))
                    + "-"
                    + _num(max(r.throughput, default=None)),
                    _ratio(med, base(BASELINE[name], "throughput")),
                    _ratio(med, base(PEER[name], "throughput")),
                    _num(_median(r.delivered), "{:.1%}"),
                    _num(max(r.conflated), "{:,}") if r.conflated else "-",
                    _num(_median(r.cpu_share), "{:.0%}"),
                    _num(_median(r.cpu_other), "{:.0%}"),
                    _num(rss, "{:.1f}"),
                    "-" if rss is None or b_rss is None else f"{rss - b_rss:+.1f}",
                ]
            )
        lines += render(out, right=set(range(1, 12)))
    else:
        lines.append(
            f"== rate {mode.rate:,} msg/s: latency server send -> handler call (µs), "
            f"stamps after {args.warmup:g} s warm-up; median of {args.runs} run(s) =="
        )
        out = [
            [
                "client",
                "p50 µs",
                "p99 µs",
                "p99 best",
                "p99 range",
                "p99 vs bare",
                ">300µs",
                "max µs",
                "delivered",
                "conflated",
                "CPU other",
                "RSS MB",
                "dRSS MB",
            ]
        ]
        for name, r in rows.items():
            p99 = _median(r.p99)
            rss = _median(r.rss_mb)
            b_rss = base(BASELINE[name], "rss_mb")
            out.append(
                [
                    name + (f" ({r.failed} failed)" if r.failed else ""),
                    _lat(_median(r.p50)),
                    _lat(p99),
                    _lat(min(r.p99, default=None)),
                    f"{_lat(min(r.p99, default=None))}-{_lat(max(r.p99, default=None))}",
                    _ratio(p99, base(BASELINE[name], "p99")),
                    _num(_median(r.slow), "{:.2f}%"),
                    _lat(max(r.max_us, default=None)),
                    _num(_median(r.delivered), "{:.1%}"),
                    _num(max(r.conflated), "{:,}") if r.conflated else "-",
                    _num(_median(r.cpu_other), "{:.0%}"),
                    _num(rss, "{:.1f}"),
                    "-" if rss is None or b_rss is None else f"{rss - b_rss:+.1f}",
                ]
            )
        lines += render(out, right=set(range(1, 13)))
    return lines


# -- the targets --------------------------------------------------------------------


def checks(summary: dict[str, dict[str, Row]], runs: int) -> list[tuple[str, str]]:
    """(PASS / FAIL / SKIP, text) for every target of the issue."""
    out: list[tuple[str, str]] = []
    blast = summary.get("blast", {})

    def thr(name: str) -> float | None:
        r = blast.get(name)
        return _median(r.throughput) if r is not None else None

    def ratio_check(name: str, other: str, floor: float, what: str) -> None:
        a, b = thr(name), thr(other)
        text = f"blast: {name} >= {floor:g}x {other} ({what})"
        if a is None or b is None:
            out.append(("SKIP", f"{text}: not measured"))
        else:
            out.append(("PASS" if a >= floor * b else "FAIL", f"{text}: {a / b:.2f}x"))

    for name in ("as-dict", "as-typed"):
        ratio_check(name, "bare", 0.85, "sync handler vs the bare loop")
        ratio_check(name, "websockets-json", 4.0, "sync handler vs the peer pattern")
    ratio_check("as-async", "bare", 0.8, "async handler vs the bare loop")
    for name in ("as-thread", "as-all"):
        if name in blast:
            ratio_check(name, BASELINE[name], 0.85, "informative, same bar as sync")
    typed, model = thr("as-typed"), thr("bare-model")
    if typed is not None and model is not None:
        # Not a target: what the typed path costs beyond the model's own decoding.
        out.append(
            (
                "INFO",
                f"blast: as-typed = {typed / model:.2f}x bare-model (the bare loop decoding "
                "the same Ticker model, Decimals and datetime)",
            )
        )

    r20 = summary.get("20000", {})
    for name in AGENTSTREAM_CLIENTS:
        if name not in r20:
            continue
        a = _median(r20[name].p99)
        base = r20.get(BASELINE[name])
        b = _median(base.p99) if base is not None else None
        text = f"rate 20,000: {name} p99 <= 1.25x {BASELINE[name]} p99"
        if a is None or not b:
            out.append(("SKIP", f"{text}: not measured"))
        else:
            verdict = "PASS" if a <= 1.25 * b else "FAIL"
            slow = ""
            sa, sb = _median(r20[name].slow), _median(base.slow) if base is not None else None
            if sa is not None and sb is not None:
                slow = f" (frames over 300 µs: {sa:.2f} % vs {sb:.2f} %)"
            out.append((verdict, f"{text}: {_lat(a)} vs {_lat(b)} µs = {a / b:.2f}x{slow}"))
    for name in sorted({BASELINE[n] for n in AGENTSTREAM_CLIENTS} & set(r20)):
        # The baseline's own runs disagree by more than the tolerance: which side of it a
        # client's median lands on is then the machine's doing as much as the client's.
        # One odd run cannot move a median of 4 or more, so the extremes are left out then.
        runs_p99 = sorted(r20[name].p99)
        middle = runs_p99[1:-1] if len(runs_p99) >= 4 else runs_p99
        lo, hi = (middle[0], middle[-1]) if middle else (None, None)
        if lo and hi and hi > 1.25 * lo:
            span = "middle runs' p99s" if len(runs_p99) >= 4 else "p99s"
            out.append(
                (
                    "NOTE",
                    f"rate 20,000: {name}'s own {span} ranged {_lat(lo)}-{_lat(hi)} µs "
                    f"({hi / lo:.1f}x): the p99 comparisons above are within the "
                    "machine's noise (see the >300µs column and docs/performance.md)",
                )
            )
    if not r20:
        out.append(("SKIP", "rate 20,000: latency p99 targets: mode not run"))

    for name in AGENTSTREAM_CLIENTS:
        worst: tuple[float, str] | None = None
        for mode, rows in summary.items():
            if name not in rows or BASELINE[name] not in rows:
                continue
            a, b = _median(rows[name].rss_mb), _median(rows[BASELINE[name]].rss_mb)
            if a is None or b is None:
                continue
            if worst is None or a - b > worst[0]:
                worst = (a - b, mode)
        if worst is not None:
            verdict = "PASS" if worst[0] <= 15.0 else "FAIL"
            out.append(
                (
                    verdict,
                    f"peak RSS: {name} within 15 MB of {BASELINE[name]}: "
                    f"{worst[0]:+.1f} MB (worst mode: {worst[1]})",
                )
            )

    ran = [r for rows in summary.values() for n, r in rows.items() if n in AGENTSTREAM_CLIENTS]
    if ran:
        out.append(
            (
                "PASS",
                "supervisor: every agentstream client ran AgentExchangeWS with default "
                "options (stale watchdog, stats, conflation, hooks on)",
            )
        )
    if runs < 5:
        out.append(("NOTE", f"only {runs} run(s): the targets call for medians of at least 5"))
    busy = sum(
        1 for rows in summary.values() for r in rows.values() for x in r.cpu_other if x > 0.2
    )
    if busy:
        out.append(
            (
                "NOTE",
                f"{busy} run(s) shared the client's CPU with other processes (CPU other > 20%): "
                "their throughput is low and their latency tail long",
            )
        )
    for mode, rows in summary.items():
        for name, r in rows.items():
            if _top(r.conflated):
                out.append(
                    (
                        "NOTE",
                        f"{mode}: {name} conflated up to {_top(r.conflated):,} events "
                        "(counted as not delivered)",
                    )
                )
            if _top(r.dropped):
                out.append(("NOTE", f"{mode}: {name} dropped up to {_top(r.dropped):,} frames"))
            if r.failed:
                out.append(("NOTE", f"{mode}: {name}: {r.failed} run(s) failed"))
    return out


# -- main ---------------------------------------------------------------------------


async def run_all(
    args: argparse.Namespace, modes: list[Mode], clients: list[str]
) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    total = len(modes) * args.runs * len(clients)
    n = 0
    for mode in modes:
        for run in range(args.runs):
            k = run % len(clients)
            for client in clients[k:] + clients[:k]:
                n += 1
                failures: list[str] = []
                while True:
                    job = await run_job(client, mode, args)
                    if "error" not in job or len(failures) >= args.retries:
                        break
                    # A run that crashed (say, a module caught half-edited) is run
                    # again; the failure stays in the report.
                    failures.append(job["error"])
                    if not args.quiet:
                        print(f"  retrying {client} after: {job['error'][:300]}", flush=True)
                    await asyncio.sleep(1.0)
                job["run"] = run + 1
                job["failed_attempts"] = failures
                jobs.append(job)
                if not args.quiet:
                    print(
                        f"[{n}/{total}] {mode.label:>14} run {run + 1}: {client:<20} {_brief(job)}",
                        flush=True,
                    )
    return jobs


def _brief(job: dict[str, Any]) -> str:
    if "error" in job:
        return f"ERROR: {job['error'][:300]}"
    res, srv = job["client_result"], job["server_result"]
    parts = []
    if job["rate"] == 0:
        parts.append(f"{res['throughput']:>10,.0f} msg/s, CPU {res.get('cpu_share', 0):.0%}")
    else:
        lat = res["latency"]
        parts.append(f"p50 {_lat(lat['p50_us'])} µs, p99 {_lat(lat['p99_us'])} µs")
    if res.get("cpu_other") is not None:
        parts.append(f"CPU other {res['cpu_other']:.0%}")
    if srv.get("sent"):
        parts.append(f"delivered {res['calls'] / srv['sent']:.1%}")
    parts.append(f"RSS {res['peak_rss_kib'] / 1024:.1f} MB")
    st = res.get("agentstream")
    if st and st["conflated"]:
        parts.append(f"conflated {st['conflated']:,}")
    return ", ".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=int, default=5, help="runs per mode and client (default 5)")
    p.add_argument("--seconds", type=float, default=3.0, help="measurement window (default 3)")
    p.add_argument("--warmup", type=float, default=0.5, help="warm-up before it (default 0.5)")
    p.add_argument("--modes", default=DEFAULT_MODES, help=f"default {DEFAULT_MODES}")
    p.add_argument("--clients", default=",".join(DEFAULT_CLIENTS), help="default: all")
    p.add_argument("--json", metavar="FILE", help="also write every raw result to FILE")
    p.add_argument("--check", action="store_true", help="exit 1 when a target fails")
    p.add_argument("--quiet", action="store_true", help="no progress line per run")
    p.add_argument(
        "--retries", type=int, default=1, help="times a crashed run is run again (default 1)"
    )
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pin the server and the clients to CPUs (default when nproc >= 2)",
    )
    p.add_argument(
        "--keep-awake",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="rate runs: keep the client's CPU from idling with a SCHED_IDLE spinner, so "
        "latency measures the client, not an idle virtual CPU waking (default, with --pin)",
    )
    p.add_argument("--server-cpu", type=int, default=0, help="CPU of the server (default 0)")
    p.add_argument("--client-cpu", type=int, default=1, help="CPU of the clients (default 1)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.seconds <= 0 or args.warmup < 0 or args.retries < 0:
        p.error("--runs must be at least 1, --seconds positive, --warmup, --retries >= 0")
    try:
        args.mode_list = [Mode.parse(m) for m in args.modes.split(",") if m.strip()]
    except ValueError as exc:
        p.error(f"--modes: {exc}")
    args.client_list = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = [c for c in args.client_list if c not in CLIENTS]
    if unknown or not args.client_list or not args.mode_list:
        p.error(f"--clients: choose from {', '.join(CLIENTS)} (unknown: {', '.join(unknown)})")
    if args.pin is None:
        args.pin = cpu_count() >= 2 and hasattr(os, "sched_setaffinity")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modes, clients = args.mode_list, args.client_list
    meta = machine(args)
    header = header_lines(meta, args)
    for line in header:
        print(line)
    print(flush=True)
    started = time.perf_counter()
    jobs = asyncio.run(run_all(args, modes, clients))
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    if hasattr(os, "getloadavg"):
        meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    summary = {m.name: {c: aggregate(jobs, c, m) for c in clients} for m in modes}
    print()
    for line in header:
        print(line)
    for mode in modes:
        print()
        for line in table(mode, summary[mode.name], args):
            print(line)
    results = checks(summary, args.runs)
    print()
    print("targets (ratios of medians measured in this run):")
    for verdict, text in results:
        print(f"  {verdict:<4}  {text}")
    print(f"\ntook {meta['wall_s']:.0f} s", flush=True)
    crashed = [j for j in jobs if "error" in j]
    retried = [j for j in jobs if j.get("failed_attempts")]
    if retried:
        print(f"{len(retried)} run(s) crashed at first and were run again (see --json)")
    if args.json:
        payload = {
            "meta": meta,
            "config": {
                "runs": args.runs,
                "seconds": args.seconds,
                "warmup": args.warmup,
                "modes": [m.name for m in modes],
                "clients": clients,
                "pin": args.pin,
                "server_cpu": args.server_cpu,
                "client_cpu": args.client_cpu,
            },
            "summary": {
                m: {c: r.as_dict() for c, r in rows.items()} for m, rows in summary.items()
            },
            "checks": [{"verdict": v, "text": t} for v, t in results],
            "jobs": jobs,
        }
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"raw results: {args.json}")
    if crashed:
        print(f"{len(crashed)} run(s) crashed; see the ERROR lines above", file=sys.stderr)
        return 1
    if args.check and any(v == "FAIL" for v, _ in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
