"""``python -m bench.reliability``: measure the client's reliability figures.

Runs each figure against the simulated exchange on 127.0.0.1 and prints one line per
figure (name, measured value, target, PASS/FAIL) with its details, then a summary.
Exits 1 if any figure fails. A figure that cannot be measured (N/A) does not fail.

    python -m bench.reliability                      # everything (about 20 minutes)
    python -m bench.reliability --quick              # soak 30 s, fuzz 100k, 20 disconnects
    python -m bench.reliability --only fuzz,auth     # some figures
    python -m bench.reliability --skip secrets --json results.json

Figures: disconnects, blackhole, auth, backoff, fuzz, orders, recovery, recovery-5xx, soak,
secrets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.reliability.audit import run_secrets
from bench.reliability.common import Figure, Options, load_average
from bench.reliability.connection import run_auth, run_backoff, run_blackhole, run_disconnects
from bench.reliability.firehose import run_orders, run_soak
from bench.reliability.fuzz import run_fuzz
from bench.reliability.orders import run_recovery, run_recovery_5xx

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

FIGURES: dict[str, Callable[[Options], Coroutine[Any, Any, Figure]]] = {
    "disconnects": run_disconnects,
    "blackhole": run_blackhole,
    "auth": run_auth,
    "backoff": run_backoff,
    "fuzz": run_fuzz,
    "orders": run_orders,
    "recovery": run_recovery,
    "recovery-5xx": run_recovery_5xx,
    "soak": run_soak,
    "secrets": run_secrets,
}


def _names(text: str, parser: argparse.ArgumentParser) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    return names


@dataclass
class Run:
    """The parsed command line."""

    opts: Options
    names: list[str]
    json_path: str | None
    log_path: str | None
    in_process: bool
    child: str | None


def parse(argv: list[str] | None) -> Run:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reliability",
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((__doc__ or "").splitlines()[1:]),
    )
    parser.add_argument("--only", default="", help="comma-separated figures to run")
    parser.add_argument("--skip", default="", help="comma-separated figures not to run")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="soak 30 s, fuzz 100k (5k Hypothesis), 20 drops, 200 orders",
    )
    parser.add_argument("--soak-seconds", type=float, help="soak duration (default 600)")
    parser.add_argument("--fuzz-frames", type=int, help="fuzzed frames (default 1,000,000)")
    parser.add_argument(
        "--hypothesis-frames", type=int, help="of which drawn by Hypothesis (default 20,000)"
    )
    parser.add_argument("--disconnects", type=int, help="forced disconnects (default 200)")
    parser.add_argument("--orders", type=int, help="orders under the firehose (default 1000)")
    parser.add_argument("--seed", type=int, help="seed of the fuzzers and the order plan")
    parser.add_argument(
        "--suite-args",
        help="pytest arguments for the secrets figure (default: -q -p no:cacheprovider)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--log", metavar="FILE", help="write the client's log (WARNING+) here")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every figure in this process (default: each in a fresh child process, "
        "so memory, tasks and threads of one figure do not carry into the next)",
    )
    # A child process runs one figure: the options as JSON, and where to write the result.
    parser.add_argument("--child", metavar="RESULT", help=argparse.SUPPRESS)
    parser.add_argument("--options-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    opts = Options()
    if args.quick:
        opts.soak_seconds, opts.fuzz_frames, opts.disconnects = 30.0, 100_000, 20
        opts.hypothesis_frames, opts.orders = 5_000, 200
    for name in ("soak_seconds", "fuzz_frames", "hypothesis_frames", "disconnects", "orders"):
        value = getattr(args, name)
        if value is not None:
            if value <= 0:
                parser.error(f"--{name.replace('_', '-')} must be positive")
            setattr(opts, name, value)
    if args.seed is not None:
        opts.seed = args.seed
    if args.suite_args is not None:
        opts.suite_args = tuple(args.suite_args.split())
    if args.options_json:
        fields = json.loads(args.options_json)
        fields["suite_args"] = tuple(fields["suite_args"])
        opts = Options(**fields)
    selected = _names(args.only, parser) if args.only else list(FIGURES)
    skipped = set(_names(args.skip, parser)) if args.skip else set()
    names = [n for n in selected if n not in skipped]
    return Run(opts, names, args.json, args.log, args.in_process, args.child)


def _line(fig: Figure) -> str:
    return f"{fig.name:<22} {fig.measured}  |  target: {fig.target}  |  {fig.verdict}"


def _print(fig: Figure) -> None:
    print(_line(fig), flush=True)
    for d in fig.details:
        print(f"    {d}", flush=True)
    print(f"    ({fig.seconds:.1f} s)\n", flush=True)


def run_here(name: str, opts: Options) -> Figure:
    """Run one figure in this process; an exception is a failed figure, not a crash."""
    t0 = time.perf_counter()
    try:
        fig = asyncio.run(FIGURES[name](opts))
    except Exception as exc:  # a broken figure must not hide the others
        fig = Figure(name, f"error: {type(exc).__name__}: {exc}", "", False)
        fig.details = traceback.format_exc().rstrip().splitlines()[-12:]
    fig.seconds = fig.seconds or time.perf_counter() - t0
    return fig


def run_child(name: str, opts: Options, log_path: str | None) -> Figure:
    """Run one figure in a fresh process; it prints its own lines, we read its result."""
    limit = 1800.0 + opts.soak_seconds
    with tempfile.TemporaryDirectory(prefix="agentstream-figure-") as tmp:
        result = Path(tmp) / "figure.json"
        cmd = [sys.executable, "-m", "bench.reliability", "--only", name, "--child", str(result)]
        cmd += ["--options-json", json.dumps(asdict(opts))]
        if log_path:
            cmd += ["--log", log_path]
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(cmd, timeout=limit, check=False).returncode
        except subprocess.TimeoutExpired:
            rc = None
        if not result.exists():
            why = "timed out" if rc is None else f"exited with {rc} and no result"
            fig = Figure(name, f"the figure's process {why}", "", False)
            fig.seconds = time.perf_counter() - t0
            _print(fig)
            return fig
        d = json.loads(result.read_text())
    verdict = {"PASS": True, "FAIL": False}.get(d["verdict"])
    return Figure(
        d["name"], d["measured"], d["target"], verdict, d["seconds"], d["details"], d["data"]
    )


def _setup_logging(log_path: str | None) -> None:
    logger = logging.getLogger("agentstream")
    if log_path:
        handler: logging.Handler = logging.FileHandler(log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.WARNING)
    else:
        handler = logging.NullHandler()  # figures provoke warnings on purpose
    logger.addHandler(handler)
    sim_logger = logging.getLogger("agentstream.sim")
    sim_logger.addHandler(handler)
    sim_logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    run = parse(argv)
    opts, names = run.opts, run.names
    _setup_logging(run.log_path)
    if run.child:
        fig = run_here(names[0], opts)
        _print(fig)
        Path(run.child).write_text(json.dumps(fig.as_dict(), default=str))
        return 0
    started = time.time()
    print(
        f"agentstream reliability figures: {', '.join(names)}\n"
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, load {load_average()}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n",
        flush=True,
    )
    results: list[Figure] = []
    for name in names:
        if run.in_process:
            fig = run_here(name, opts)
            _print(fig)
        else:
            fig = run_child(name, opts, run.log_path)
        results.append(fig)
    took = time.time() - started
    print("summary")
    for fig in results:
        print(f"  {fig.verdict:<4}  {fig.name:<22} {fig.measured}")
    failed = [f.name for f in results if f.passed is False]
    na = [f.name for f in results if f.passed is None]
    print(
        f"{len(results) - len(failed) - len(na)} passed, {len(failed)} failed, {len(na)} not "
        f"measured, in {took / 60:.1f} min (load at the end {load_average()})"
    )
    if run.json_path:
        with open(run.json_path, "w") as f:
            json.dump(
                {
                    "command": " ".join(["python -m bench.reliability", *(argv or sys.argv[1:])]),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                    "seconds": took,
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "options": asdict(opts),
                    "figures": [fig.as_dict() for fig in results],
                },
                f,
                indent=2,
                default=str,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
