"""The bench server: one client, pre-encoded ticker frames, then a clean close.

    python -m bench.server --mode blast --duration 4 --expect 10 [--port 0] [--cpu 0]
    python -m bench.server --mode rate --rate 20000 --duration 4 --expect 10

A minimal aiohttp WebSocket server on 127.0.0.1 speaking just enough of the AgentExchange
protocol for the benchmark: ``/ws/v1?api_key=...`` (any non-empty key), the ``ticker``
and ``ticker_all`` subscribes (answered ``{"type":"subscribed","channel":"ticker:X"}``
or ``ticker:all``), pongs ignored, and ticker data frames exactly in the platform's shape:

    {"channel":"ticker","symbol":"BTCUSDT","data":{"price":"64521.30","quantity":"0.012",
     "timestamp":"2026-02-23T15:30:45.123Z","is_buyer_maker":false}}

round-robin over the symbols the client subscribed (``ticker_all``: the simulated
market's 620 pairs). The first stdout line is the server's URL (``ws://127.0.0.1:PORT``).

Streaming starts once ``--expect`` subscribes are in (plus ``--settle`` seconds), or
``--max-wait`` seconds after the first subscribe, and lasts ``--duration`` seconds; then
the server closes the socket with 1000, prints one JSON line of what it sent, and exits.

Modes:
    blast   big pre-built chunks of raw frames written straight to the transport, as fast
            as the socket drains (like ``agentstream serve --firehose``), so the server is
            never the bottleneck.
    rate    ``--rate`` frames per second in small bursts paced by the loop clock (every
            ``--tick-ms``, catching up on lag). Each frame carries its send time,
            ``time.monotonic_ns()`` (CLOCK_MONOTONIC, shared by every process on Linux),
            as its ``quantity``: a 19-digit integer string, which is a valid decimal, so a
            dict handler reads ``int(data["quantity"])`` and a typed one
            ``int(ticker.quantity)``. The server never waits for a slow client (it buffers
            up to ``--max-buffer`` bytes), so a client that cannot keep up shows it as
            latency rather than as a lower offered rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import socket
import sys
import time
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from agentstream.sim.market import Market, format_units
from agentstream.sim.server import _frame
from bench._common import ALL_PAIRS, STAMP_DIGITS, pin_to_cpu

FRAMES_PER_CHUNK = 128  # frames per transport.write in blast mode (as the sim's firehose)
VARIANTS = 4  # distinct price/quantity values per symbol in the pre-built frames
TIMESTAMP = "2026-02-23T15:30:45.123Z"

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class Pairs:
    """Prices and quantity formats of the simulated market's pairs, as decimal strings."""

    def __init__(self) -> None:
        market = Market(seed=42, n_pairs=ALL_PAIRS)
        self.all = list(market.pairs)
        rng = random.Random(7)
        self.values: dict[str, list[tuple[str, str]]] = {}
        for sym, pair in market.pairs.items():
            variants = []
            for _ in range(VARIANTS):
                price = max(1, round(pair.price * (1 + rng.gauss(0, 0.001))))
                qty = max(1, round(10 ** rng.uniform(1.0, 3.7) / pair.price * 10**pair.qty_dp))
                variants.append(
                    (format_units(price, pair.price_dp), format_units(qty, pair.qty_dp))
                )
            self.values[sym] = variants

    def price(self, sym: str, variant: int) -> str:
        values = self.values.get(sym)
        return values[variant][0] if values else f"{100 + variant}.25"

    def quantity(self, sym: str, variant: int) -> str:
        values = self.values.get(sym)
        return values[variant][1] if values else "0.012"


def _payload(sym: str, price: str, quantity: str, buyer_maker: bool) -> bytes:
    return _encode(
        {
            "channel": "ticker",
            "symbol": sym,
            "data": {
                "price": price,
                "quantity": quantity,
                "timestamp": TIMESTAMP,
                "is_buyer_maker": buyer_maker,
            },
        }
    )


def blast_chunks(pairs: Pairs, symbols: list[str]) -> list[bytes]:
    """Raw frames round-robin over ``symbols``, joined ``FRAMES_PER_CHUNK`` per chunk."""
    order = [(v, s) for v in range(VARIANTS) for s in symbols]
    n = len(order) * FRAMES_PER_CHUNK // math.gcd(len(order), FRAMES_PER_CHUNK)
    frames = []
    for i in range(n):
        v, sym = order[i % len(order)]
        frames.append(
            _frame(_payload(sym, pairs.price(sym, v), pairs.quantity(sym, v), bool(i & 1)))
        )
    k = FRAMES_PER_CHUNK
    return [b"".join(frames[i : i + k]) for i in range(0, n, k)]


def stamped_templates(pairs: Pairs, symbols: list[str]) -> list[tuple[bytes, bytes]]:
    """(frame header + payload up to the stamp, rest of the payload), round-robin."""
    marker = "9" * STAMP_DIGITS
    out = []
    for i, (v, sym) in enumerate((v, s) for v in range(VARIANTS) for s in symbols):
        frame = _frame(_payload(sym, pairs.price(sym, v), marker, bool(i & 1)))
        head, sep, tail = frame.partition(f'"quantity":"{marker}"'.encode())
        assert sep, "stamp marker not found"
        out.append((head + b'"quantity":"', b'"' + tail))
    return out


class BenchServer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pairs = Pairs()
        self.subs: list[str] = []  # channel keys, in subscribe order
        self.enough = asyncio.Event()
        self.finished = asyncio.Event()
        self.connected = asyncio.Event()
        self.result: dict[str, Any] = {"mode": args.mode, "rate": args.rate}
        self.busy = False

    # -- protocol -------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not request.query.get("api_key") or self.busy:
            return web.Response(status=403 if not request.query.get("api_key") else 409)
        self.busy = True
        self.connected.set()
        ws = web.WebSocketResponse(autoping=True, compress=False, timeout=120.0)
        await ws.prepare(request)
        streamer = asyncio.create_task(self.stream(request))
        try:
            # This task is the socket's only reader, and it closes the socket once the
            # stream is over: a close() next to a pending receive() would make aiohttp
            # drop the TCP connection without waiting for the client's close frame.
            while True:
                if streamer.done():
                    streamer.result()  # raise what went wrong, if anything
                    await ws.close(code=1000, message=b"bench done")
                    break
                try:
                    msg = await ws.receive(timeout=0.05)
                except TimeoutError:
                    continue
                if msg.type is WSMsgType.TEXT:
                    reply = self.on_message(msg.data)
                    if reply is not None:
                        await ws.send_str(reply)
                elif msg.type is not WSMsgType.BINARY:
                    break  # the client closed, or the connection died
        finally:
            if not streamer.done():
                streamer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streamer
            self.finished.set()
        return ws

    def on_message(self, raw: str) -> str | None:
        try:
            msg = _decode(raw)
        except msgspec.DecodeError:
            return None
        if not isinstance(msg, dict) or msg.get("action") != "subscribe":
            return None  # pongs and anything else: ignored
        if msg.get("channel") == "ticker_all":
            key = "ticker:all"
        elif msg.get("channel") == "ticker" and isinstance(msg.get("symbol"), str):
            key = "ticker:" + msg["symbol"].upper()
        else:
            return json.dumps({"type": "error", "code": "INVALID_CHANNEL", "message": "bench"})
        if key not in self.subs:
            self.subs.append(key)
        if len(self.subs) >= self.args.expect:
            self.enough.set()
        return json.dumps({"type": "subscribed", "channel": key}, separators=(",", ":"))

    def symbols(self) -> list[str]:
        if "ticker:all" in self.subs:
            return list(self.pairs.all)
        return [k.split(":", 1)[1] for k in self.subs]

    # -- streaming ------------------------------------------------------------------

    async def stream(self, request: web.Request) -> None:
        args = self.args
        while not self.subs:
            await asyncio.sleep(0.002)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.enough.wait(), args.max_wait)
        await asyncio.sleep(args.settle)
        symbols = self.symbols()
        transport = request.transport
        assert transport is not None
        self.result["subscriptions"] = len(self.subs)
        self.result["symbols"] = len(symbols)
        start_ns = time.monotonic_ns()
        if args.mode == "blast":
            sent = await self.blast(request, blast_chunks(self.pairs, symbols))
        else:
            sent = await self.paced(request, stamped_templates(self.pairs, symbols))
        end_ns = time.monotonic_ns()
        self.result.update(
            sent=sent,
            start_ns=start_ns,
            end_ns=end_ns,
            stream_s=(end_ns - start_ns) / 1e9,
            achieved_rate=sent / max((end_ns - start_ns) / 1e9, 1e-9),
        )
        with contextlib.suppress(ConnectionError):
            await request.writer.drain()

    async def blast(self, request: web.Request, chunks: list[bytes]) -> int:
        transport = request.transport
        writer = request.writer
        assert transport is not None and writer is not None
        loop = asyncio.get_running_loop()
        end = loop.time() + self.args.duration
        sent = 0
        while loop.time() < end:
            for chunk in chunks:
                if transport.is_closing():
                    return sent
                transport.write(chunk)
                sent += FRAMES_PER_CHUNK
                await writer.drain()
                await asyncio.sleep(0)
        return sent

    async def paced(self, request: web.Request, templates: list[tuple[bytes, bytes]]) -> int:
        transport = request.transport
        writer = request.writer
        assert transport is not None and writer is not None
        rate = self.args.rate
        tick = self.args.tick_ms / 1000
        max_buffer = self.args.max_buffer
        monotonic_ns = time.monotonic_ns
        n_templates = len(templates)
        idx = 0
        sent = 0
        start = monotonic_ns()
        end = start + int(self.args.duration * 1e9)
        fmt = b"%0" + str(STAMP_DIGITS).encode() + b"d"
        blocked = 0.0
        while True:
            now = monotonic_ns()
            if now >= end or transport.is_closing():
                break
            due = (now - start) * rate // 1_000_000_000 - sent
            if due > 0:
                stamp = fmt % now
                parts: list[bytes] = []
                for _ in range(due):
                    head, tail = templates[idx]
                    idx += 1
                    if idx == n_templates:
                        idx = 0
                    parts += (head, stamp, tail)
                transport.write(b"".join(parts))
                sent += due
                if transport.get_write_buffer_size() > max_buffer:
                    t0 = time.perf_counter()
                    await writer.drain()
                    blocked += time.perf_counter() - t0
            await asyncio.sleep(tick)
        self.result["server_blocked_s"] = round(blocked, 3)
        return sent


async def serve(args: argparse.Namespace) -> int:
    server = BenchServer(args)
    app = web.Application()
    app.router.add_get("/ws/v1", server.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    site = web.SockSite(runner, sock)
    await site.start()
    print(f"ws://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    rc = 0
    try:
        try:
            await asyncio.wait_for(server.connected.wait(), args.connect_timeout)
        except TimeoutError:
            server.result["error"] = f"no client within {args.connect_timeout:g} s"
            rc = 2
        else:
            await server.finished.wait()
    finally:
        await runner.cleanup()
        sock.close()
    print(json.dumps(server.result), flush=True)
    return rc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--mode", choices=("blast", "rate"), default="blast")
    p.add_argument("--rate", type=int, default=20_000, help="frames per second (rate mode)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds of streaming")
    p.add_argument("--expect", type=int, default=1, help="subscribes to wait for")
    p.add_argument("--settle", type=float, default=0.05, help="seconds after the last one")
    p.add_argument("--max-wait", type=float, default=2.0, help="after the first subscribe")
    p.add_argument("--tick-ms", type=float, default=1.0, help="pacing period (rate mode)")
    p.add_argument("--max-buffer", type=int, default=256 << 20, help="bytes buffered at most")
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument("--cpu", type=int, default=None, help="pin the server to this CPU")
    args = p.parse_args(argv)
    if (args.mode == "rate" and args.rate <= 0) or args.duration <= 0 or args.expect < 1:
        p.error("--rate and --duration must be positive, --expect at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pin_to_cpu(args.cpu)
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
