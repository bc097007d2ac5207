"""The read loop against a real aiohttp server: batches, order, control frames, fallback.

The server writes a whole burst with one ``transport.write``, so aiohttp parses it in
one go and the reader finds it queued: the case the fast path exists for.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import time
from typing import TYPE_CHECKING

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from aiohttp import WSMsgType, web

from agentstream import transport
from agentstream.sim.server import _frame
from agentstream.transport import Transport

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio

_PING, _CLOSE = 0x9, 0x8


def _text(obj: object) -> bytes:
    return _frame(json.dumps(obj).encode())


def _burst() -> tuple[bytes, list[str]]:
    """100 data frames, a WebSocket ping, a JSON ping and a close, in one chunk."""
    parts: list[bytes] = []
    texts: list[str] = []
    for i in range(100):
        if i == 40:
            parts.append(_frame(b"ws-ping", _PING))
        if i == 70:
            parts.append(_text({"type": "ping"}))
            texts.append('{"type": "ping"}')
        parts.append(_text({"n": i}))
        texts.append(json.dumps({"n": i}))
    parts.append(_frame(struct.pack("!H", 1000) + b"bye", _CLOSE))
    return b"".join(parts), texts


class _Server:
    """Sends one burst to each client, records what the client sends back."""

    def __init__(self) -> None:
        self.burst, self.texts = _burst()
        self.received: list[tuple[WSMsgType, object]] = []
        self.done = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False, autoclose=False)
        await ws.prepare(request)
        assert request.transport is not None
        request.transport.write(self.burst)
        try:
            while True:
                msg = await ws.receive()
                self.received.append((msg.type, msg.data))
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
            await ws.close()
        finally:
            self.done.set()
        return ws


@pytest.fixture
async def server() -> AsyncIterator[_Server]:
    srv = _Server()
    app = web.Application()
    app.router.add_get("/ws", srv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    srv.url = f"ws://127.0.0.1:{port}/ws"
    try:
        yield srv
    finally:
        await runner.cleanup()


def _transport(close_timeout: float = 1.0) -> Transport:
    return Transport(
        ssl=None, connect_timeout=2, close_timeout=close_timeout, max_message_size=1 << 20
    )


class _Clock:
    last_frame_at = 0.0


@pytest.mark.parametrize("fast_read", [True, False], ids=["fast-read", "receive-only"])
async def test_a_burst_arrives_whole_in_order_with_control_frames_handled(
    server: _Server, fast_read: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "FAST_READ", fast_read)
    batches: list[list[str]] = []

    def feed(frames: list[str | bytes]) -> list[str] | None:
        batch = [f if isinstance(f, str) else f.decode() for f in frames]
        batches.append(batch)
        return ["json-pong"] if '{"type": "ping"}' in batch else None

    clock = _Clock()
    async with _transport() as tr:
        conn = await tr.connect(server.url)
        info = await conn.pump(feed, clock)
        with anyio.fail_after(5):
            await server.done.wait()

    # Every text frame, once, in the order sent; the ping frame went to neither list.
    assert [f for b in batches for f in b] == server.texts
    assert info.code == 1000
    assert info.reason == "closed by server (1000: bye)"
    assert conn.frames == 1  # the WebSocket ping
    assert clock.last_frame_at > 0
    # The client answered the WebSocket ping with its payload and the JSON ping with
    # the feed's reply, and closed.
    assert (WSMsgType.PONG, b"ws-ping") in server.received
    assert (WSMsgType.TEXT, "json-pong") in server.received
    assert server.received[-1][0] is WSMsgType.CLOSE
    if fast_read:
        # The fast path handed queued frames over together (at most 32 at once).
        assert max(len(b) for b in batches) > 1
        assert max(len(b) for b in batches) <= 32
    else:
        assert all(len(b) == 1 for b in batches)


async def test_the_fast_path_is_available_with_the_installed_aiohttp(server: _Server) -> None:
    # If an aiohttp upgrade moves its message queue, the client still works (every frame
    # through receive()), but slower: this test says so.
    async with _transport() as tr:
        conn = await tr.connect(server.url)
        version = aiohttp.__version__
        assert transport._buffered_messages(conn._ws) is not None, (
            f"aiohttp {version}: outside transport._FAST_READ_VERSIONS or its message queue "
            "moved; check its receive() and WebSocketDataQueue, then extend the range"
        )
        await conn.close()


@pytest.mark.parametrize("fast_read", [True, False], ids=["fast-read", "receive-only"])
async def test_a_backlog_past_aiohttps_limit_arrives_whole_and_in_order(
    server: _Server, fast_read: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow feed lets aiohttp's queue outgrow its limit: it pauses the socket and
    stops parsing, and resumes both as the reader drains it. Nothing may be lost."""
    monkeypatch.setattr(transport, "FAST_READ", fast_read)
    n = 20_000
    pad = "x" * 60
    server.burst = b"".join(_text({"n": i, "pad": pad}) for i in range(n)) + _frame(
        struct.pack("!H", 1000) + b"done", _CLOSE
    )
    seen: list[int] = []
    paused = 0
    conns: list[transport.Connection] = []

    def feed(frames: list[str | bytes]) -> list[str] | None:
        nonlocal paused
        # aiohttp's own flag: reading paused because its queue is over the limit.
        paused += conns[0]._ws._reader._protocol._reading_paused
        seen.extend(json.loads(f)["n"] for f in frames)
        end = time.perf_counter() + 10e-6 * len(frames)  # 10 µs a frame: too slow
        while time.perf_counter() < end:
            pass
        return None

    async with _transport() as tr:
        conns.append(await tr.connect(server.url))
        info = await conns[0].pump(feed, _Clock())
    assert seen == list(range(n))
    assert info.code == 1000
    assert paused > 0, "the backlog never reached aiohttp's limit: the test proves nothing"


_PONG_FLOOD = """
import asyncio, sys
from aiohttp import web
FRAME = bytes((0x8A, 1)) + b"p"
async def handle(request):
    ws = web.WebSocketResponse(autoping=False)
    await ws.prepare(request)
    tr = request.transport
    chunk = FRAME * 512
    while not tr.is_closing():
        if tr.get_write_buffer_size() < 1 << 20:
            tr.write(chunk)
        await asyncio.sleep(0)
    return ws
async def main():
    app = web.Application()
    app.router.add_get("/ws", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


@pytest.mark.parametrize("fast_read", [True, False], ids=["fast-read", "receive-only"])
async def test_a_flood_of_control_frames_cannot_make_the_reader_uncancellable(
    fast_read: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pongs from another process, faster than the client reads them: receive() never
    # suspends, so the reader must yield by time on control frames too.
    monkeypatch.setattr(transport, "FAST_READ", fast_read)
    proc = await anyio.open_process([sys.executable, "-c", _PONG_FLOOD])
    try:
        assert proc.stdout is not None
        with anyio.fail_after(10):
            port = int((await proc.stdout.receive()).decode().split()[0])
        gaps: list[int] = []

        async def observer() -> None:
            # Another task on the loop: the frames read between two of its turns say how
            # long the reader held the loop, in work done rather than in wall-clock time
            # (a loaded machine reads fewer frames per slice, never more).
            last = conn.frames
            while True:
                await anyio.lowlevel.checkpoint()
                gaps.append(conn.frames - last)
                last = conn.frames

        async with _transport(close_timeout=0.2) as tr:
            conn = await tr.connect(f"ws://127.0.0.1:{port}/ws")
            with anyio.fail_after(10):  # a reader that never yields is never cancelled
                async with anyio.create_task_group() as tg:
                    tg.start_soon(observer)
                    with anyio.move_on_after(0.3):
                        await conn.pump(lambda frames: None, _Clock())
                    tg.cancel_scope.cancel()
            conn.abort()
        assert conn.frames > 10_000  # the flood reached the reader
        # The reader yields every slice (1 ms of reading): other tasks and a
        # cancellation get through. Without the yield on control frames the longest
        # gap was over a quarter of all frames read (on the development machine).
        assert len(gaps) > 10, gaps
        assert max(gaps) < conn.frames // 10, (max(gaps), conn.frames)
    finally:
        proc.kill()
        await proc.aclose()


@pytest.mark.parametrize("private", [True, False], ids=["private-abort", "public-api-only"])
async def test_a_silent_socket_is_replaced_with_or_without_aiohttps_internals(
    private: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp's private attributes are a fast path only: with them switched off (as on an
    aiohttp version outside the checked range), the reader uses receive() and a stale
    socket is dropped through the public socket (shutdown), and the client recovers."""
    from agentstream.sim import SimExchange

    from .conftest import make_client, running, wait_for

    monkeypatch.setattr(transport, "FAST_READ", private)
    monkeypatch.setattr(transport, "PRIVATE_ABORT", private)
    async with SimExchange(tick_rate=200, ping_interval=60) as sim:
        ws = make_client(sim, stale_timeout=0.3)
        got: list[object] = []
        ws.on_ticker("BTCUSDT", got.append)
        async with running(ws):
            await wait_for(lambda: len(got) > 2)
            assert sim.go_silent() == 1
            await wait_for(lambda: ws.stats.reconnects >= 1, what="the stale socket replaced")
            n = len(got)
            await wait_for(lambda: len(got) > n + 2, what="data again")
