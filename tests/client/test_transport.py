"""The read loop against a real aiohttp server: batches, order, control frames, fallback.

The server writes a whole burst with one ``transport.write``, so aiohttp parses it in
one go and the reader finds it queued: the case the fast path exists for.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import TYPE_CHECKING

import anyio
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
    async with Transport(
        ssl=None, connect_timeout=2, close_timeout=1, max_message_size=1 << 20
    ) as tr:
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
    async with Transport(
        ssl=None, connect_timeout=2, close_timeout=1, max_message_size=1 << 20
    ) as tr:
        conn = await tr.connect(server.url)
        assert transport._buffered_messages(conn._ws) is not None
        await conn.close()
