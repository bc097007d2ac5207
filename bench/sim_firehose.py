"""Firehose throughput of the simulated exchange, measured with a bare aiohttp client.

Starts ``agentstream serve --firehose --port 0`` in its own subprocess (so the server and
the client do not share one CPU-bound event loop), then in this process subscribes to
``ticker_all`` with a plain :class:`aiohttp.ClientSession` WebSocket and counts the
messages received for ``--seconds`` after a 1 s warm-up, ``--runs`` times. Prints msgs/s
per run and the median. Everything stays on 127.0.0.1.

    python -m bench.sim_firehose [--seconds 5] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import statistics
import sys
import time
from pathlib import Path

import aiohttp

from agentstream.sim import DEMO_API_KEY

ROOT = Path(__file__).resolve().parent.parent
_URL = re.compile(r"(ws://127\.0\.0\.1:\d+)/ws/v1")
WARMUP = 1.0


async def start_server() -> tuple[asyncio.subprocess.Process, str]:
    """Start ``agentstream serve --firehose --port 0``; return it and its base ``ws://`` URL."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentstream",
        "serve",
        "--firehose",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
    except TimeoutError:
        await stop_server(proc)
        raise RuntimeError("the server printed nothing within 10 s") from None
    match = _URL.search(line.decode())
    if match is None:
        await stop_server(proc)
        raise RuntimeError(f"unexpected first line from the server: {line!r}")
    return proc, match.group(1)


async def stop_server(proc: asyncio.subprocess.Process) -> int:
    """SIGINT (Ctrl-C) the server and wait for it; kill it if it does not exit in 5 s."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    with contextlib.suppress(Exception):
        assert proc.stdout is not None and proc.stderr is not None
        await proc.stdout.read()
        err = (await proc.stderr.read()).decode().strip()
        if err:
            print(f"server stderr:\n{err}", file=sys.stderr)
    assert proc.returncode is not None
    return proc.returncode


async def one_run(url: str, seconds: float) -> float:
    """Subscribe to ``ticker_all``; return the messages per second over ``seconds``."""
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            f"{url}/ws/v1?api_key={DEMO_API_KEY}", max_msg_size=0, autoping=True
        ) as ws,
    ):
        await ws.send_str(json.dumps({"action": "subscribe", "channel": "ticker_all"}))
        first = await ws.receive_json(timeout=5)
        if first != {"type": "subscribed", "channel": "ticker:all"}:
            raise RuntimeError(f"unexpected reply to subscribe: {first!r}")
        loop = asyncio.get_running_loop()
        count = 0
        text = aiohttp.WSMsgType.TEXT
        warm_end = loop.time() + WARMUP
        while loop.time() < warm_end:
            msg = await ws.receive(timeout=5)
            if msg.type is not text:
                raise RuntimeError(f"unexpected frame: {msg!r}")
        start = loop.time()
        end = start + seconds
        while True:
            msg = await ws.receive(timeout=5)
            if msg.type is not text:
                raise RuntimeError(f"unexpected frame: {msg!r}")
            if msg.data[0] != "{":
                raise RuntimeError(f"not a JSON object: {msg.data[:80]!r}")
            count += 1
            if not count & 1023 and loop.time() >= end:
                break
        return count / (loop.time() - start)


async def main_async(seconds: float, runs: int) -> int:
    proc, url = await start_server()
    rates: list[float] = []
    try:
        print(f"firehose server: {url} (pid {proc.pid})", flush=True)
        for i in range(runs):
            t0 = time.perf_counter()
            rate = await one_run(url, seconds)
            rates.append(rate)
            took = time.perf_counter() - t0
            print(f"run {i + 1}/{runs}: {rate:,.0f} msgs/s  ({took:.1f} s)", flush=True)
    finally:
        rc = await stop_server(proc)
    print(f"median: {statistics.median(rates):,.0f} msgs/s over {runs} run(s) of {seconds:g} s")
    if rc != 0:
        print(f"server exited with {rc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sim_firehose", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per run (default 5)")
    parser.add_argument("--runs", type=int, default=3, help="number of runs (default 3)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.runs < 1:
        parser.error("--seconds must be positive and --runs at least 1")
    return asyncio.run(main_async(args.seconds, args.runs))


if __name__ == "__main__":
    sys.exit(main())
