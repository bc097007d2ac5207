"""Smoke test of the benchmark harness (``python -m bench``), so that it never rots.

A tiny run (one run, a fraction of a second per mode, two clients, blast plus a low fixed
rate) must complete and produce numbers. It asserts that the harness ran, never a
timing: this machine's speed is not what is tested here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

import bench.client as bench_client
from bench.__main__ import main as bench_main
from bench._common import LATENCY_BUCKETS, process_stat, process_ticks
from bench.client import percentile
from bench.compare import ROOT, Row, checks
from bench.reliability import Options
from bench.reliability import orders as recovery_figure

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.slow
def test_tiny_comparison_runs_and_reports_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "bench.json"
    argv = [
        *("--runs", "1", "--warmup", "0.2", "--seconds", "0.3"),
        *("--modes", "blast,2000", "--clients", "bare,bare-model,as-dict", "--json", str(out_file)),
    ]
    assert bench_main(argv) == 0
    printed = capsys.readouterr().out
    assert "nproc=" in printed and "python " in printed  # the machine header
    assert "== blast: handler calls/s" in printed
    assert "== rate 2,000 msg/s" in printed
    assert "targets (ratios of medians" in printed
    assert "blast: as-dict >= 0.85x bare" in printed  # the check ran (PASS or FAIL)
    assert "bare-model" in printed

    report = json.loads(out_file.read_text())
    assert report["meta"]["nproc"] >= 1
    jobs = report["jobs"]
    assert {(j["client"], j["mode"]) for j in jobs} == {
        ("bare", "blast"),
        ("bare-model", "blast"),
        ("as-dict", "blast"),
        ("bare", "2000"),
        ("bare-model", "2000"),
        ("as-dict", "2000"),
    }
    for job in jobs:
        assert "error" not in job, job
        res, srv = job["client_result"], job["server_result"]
        assert srv["sent"] > 0 and res["calls"] > 0
        assert res["peak_rss_kib"] > 0
        assert res["symbols_seen"] == 10
        if job["mode"] == "blast":
            assert res["throughput"] > 0 and res["window_calls"] > 0
        else:
            lat = res["latency"]
            assert lat["n"] > 0 and lat["p50_us"] is not None and lat["p99_us"] is not None
            assert lat["p95_us"] is not None and lat["p999_us"] is not None
            assert lat["over_slow_pct"] is not None
        if report["meta"]["pinning"] != "off":
            # Rate runs keep the client's CPU awake (the default); blast runs never do.
            awake = job["mode"] != "blast"
            assert (res["keep_awake"] in ("SCHED_IDLE", "nice19")) is awake
            assert (res["spinner_share"] is not None) is awake
            # The spinner's time is not counted as another process competing.
            assert res["cpu_other"] is not None and res["cpu_other"] < 0.5
        if job["client"] == "as-dict":
            stats = res["agentstream"]
            assert stats["messages_total"] > 0 and stats["dropped_frames"] == 0
    summary = report["summary"]
    assert summary["blast"]["bare"]["throughput_median"] > 0
    assert summary["2000"]["as-dict"]["p99_us_median"] is not None


def test_unknown_client_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_main(["--clients", "bare,nope"])
    assert exc.value.code == 2
    assert "nope" in capsys.readouterr().err


def test_percentile_of_an_empty_histogram_is_none() -> None:
    assert percentile(0.99, 0) is None


def test_latency_summary_reports_the_share_of_slow_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    hist = [0] * LATENCY_BUCKETS
    hist[100] = 970
    hist[300] = 10  # not slower than SLOW_US
    hist[400] = 19
    monkeypatch.setattr(bench_client, "HIST", hist)
    monkeypatch.setattr(bench_client, "OVERFLOW", 1)
    monkeypatch.setattr(bench_client, "OVERFLOW_MAX", 200_000)
    lat = bench_client.latency_summary()
    assert bench_client.SLOW_US == 300
    assert lat["n"] == 1000
    assert lat["over_slow_pct"] == 2.0  # 19 at 400 µs and 1 in the overflow
    assert (lat["p50_us"], lat["p95_us"], lat["p99_us"], lat["p999_us"]) == (100, 100, 400, 400)
    assert lat["max_us"] == 200_000


def test_p99_checks_give_the_slow_share_and_flag_a_baseline_noisier_than_the_bar() -> None:
    def rows(bare_p99: list[float]) -> dict[str, dict[str, Row]]:
        bare = Row("bare", 5, 0, p99=bare_p99, slow=[0.3, 0.4, 0.5, 3.0, 3.5])
        mine = Row("as-dict", 5, 0, p99=[390, 400, 410, 420, 430], slow=[1.0] * 5)
        return {"20000": {"bare": bare, "as-dict": mine}}

    noisy = dict(checks(rows([200, 210, 220, 400, 420]), runs=5))
    assert noisy["FAIL"] == (
        "rate 20,000: as-dict p99 <= 1.25x bare p99: 410 vs 220 µs = 1.86x "
        "(frames over 300 µs: 1.00 % vs 0.50 %)"
    )
    assert "bare's own middle runs' p99s ranged 210-400 µs (1.9x)" in noisy["NOTE"]

    # One odd run out of five cannot move the median: no NOTE for it.
    one_odd = checks(rows([140, 150, 153, 155, 310]), runs=5)
    assert not any("own" in text for _, text in one_odd)

    steady = checks(rows([380, 390, 400, 410, 420]), runs=5)
    assert (
        "PASS",
        "rate 20,000: as-dict p99 <= 1.25x bare p99: 410 vs 400 µs = 1.02x "
        "(frames over 300 µs: 1.00 % vs 0.50 %)",
    ) in steady
    assert not any("own" in text for _, text in steady)


def _state(pid: int) -> str | None:
    """A process's state letter (``R``, ``S``, ``Z``...), or None once it is gone."""
    fields = process_stat(pid)
    return fields[0] if fields else None


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_keep_awake_spinner_is_lowest_priority_and_dies_with_its_client() -> None:
    # A stand-in client starts the spinner the way bench.client does, then is killed
    # outright (no finally runs): the spinner must notice and exit by itself.
    code = (
        "import os, time; from bench.client import start_keep_awake\n"
        "p, policy = start_keep_awake(min(os.sched_getaffinity(0)))\n"
        "print(p.pid, policy, flush=True); time.sleep(60)"
    )
    client = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert client.stdout is not None
    pid_text, policy = client.stdout.readline().split()
    spinner = int(pid_text)
    try:
        # SCHED_IDLE where the system allows it, else the lowest nice value.
        if policy == "SCHED_IDLE":
            assert os.sched_getscheduler(spinner) == os.SCHED_IDLE
        else:
            assert policy == "nice19" and os.getpriority(os.PRIO_PROCESS, spinner) == 19
        ticks = process_ticks(spinner)
        assert ticks is not None
        time.sleep(0.3)
        spun = process_ticks(spinner)
        assert spun is not None and spun > ticks  # it does spin
        client.send_signal(signal.SIGKILL)
        client.wait()
        deadline = time.monotonic() + 5
        while _state(spinner) not in (None, "Z") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _state(spinner) in (None, "Z")
    finally:
        client.kill()
        client.wait()
        client.stdout.close()
        if _state(spinner) not in (None, "Z"):
            os.kill(spinner, signal.SIGKILL)


def test_process_ticks_of_a_missing_process_is_none() -> None:
    assert process_ticks(os.getpid()) is not None
    assert process_ticks(2**22 + 12345) is None


@pytest.mark.anyio
async def test_tiny_order_recovery_figure_runs_and_reports_numbers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Three drops and fifteen orders per venue, the REST API failing through the second
    # drop: the harness must measure every venue and report each figure (PASS or FAIL:
    # what the client achieves is the benchmark's business, not this smoke test's).
    monkeypatch.setattr(recovery_figure, "QUIET", 0.3)
    fig = await recovery_figure.run_recovery_5xx(Options(disconnects=3, orders=15))
    assert fig.verdict in ("PASS", "FAIL"), fig.details
    names = [v.name for v in recovery_figure.venues()]
    assert names[:2] == ["AgentExchange", "Tradier"]
    assert all(f"{name}: " in fig.measured for name in names)
    for name in names:
        venue = fig.data[name]
        assert venue["placed"] == 15 and venue["reconnects"] == 3, fig.details
        for view in (venue["dict"], venue["typed"]):
            assert view["orders"] == 15 and view["unknown_to_rest"] == 0
            assert view["deliveries"] > 0
        assert venue["recovery_errors"] > 0  # the REST outage was hit, and reported
        assert set(venue["latency_ms"]) == {"median", "p99", "max"}
    assert "order recovery, REST 5xx" in fig.name


@pytest.mark.slow
def test_tiny_bus_bench_runs_and_reports_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bus", "--seconds", "0.5", "--sustain", "2000", "--rates", "500"]
    assert bench_main([*argv, "--latency-seconds", "1"]) == 0
    printed = capsys.readouterr().out
    assert "== throughput: sim firehose" in printed and "entries/s" in printed
    assert "== sustained: 2,000 events/s" in printed
    assert "== latency at 500 events/s" in printed and "p99" in printed
    [lat] = [json.loads(x)["latency"] for x in printed.splitlines() if x.startswith('{"latency"')]
    assert lat["measured"] > 0 and lat["bridge_written"] > 0  # it ran; no timing asserted
