"""Smoke test of ``python -m bench.bus_consumer``, so that it never rots: a tiny run must
produce numbers. It asserts that the harness ran, never a timing."""

from __future__ import annotations

import pytest

from bench.bus_consumer import latency, throughput

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.mark.timeout(120)
async def test_the_consumer_bench_runs_and_reports_numbers(redis_url: str) -> None:
    row = await throughput(redis_url, 300, 1)
    assert row["per_consumer"] == [301]
    assert row["entries_per_s"] > 0
    lat = await latency(redis_url, 1000, 0.2)
    assert lat["handled"] == lat["entries"] > 0
    assert lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]
