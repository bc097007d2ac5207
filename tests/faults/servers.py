"""One small scripted WebSocket server that misbehaves on purpose, for what the sim cannot do.

A :class:`ScriptedServer` listens on 127.0.0.1 (a free port) and behaves as its
:class:`Script` says: refuse handshakes with an HTTP status (all of them, or the first
few), never answer a handshake at all, accept and close at once with a code, never
acknowledge a subscribe or acknowledge it twice, acknowledge channels nobody asked
for, refuse channels or enforce a subscription limit with errors that name no
channel (as the platform's own server does), stream ticker events, send JSON pings or
WebSocket ping frames. It records every handshake (with its ``time.monotonic()``
arrival) and everything each connection asked for. The script can be changed while
the server runs: ``server.script = replace(server.script, hang=False)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

__all__ = ["Connection", "Handshake", "Script", "ScriptedServer", "channel_key", "data_frame"]

Acks = Literal["once", "twice", "never"]


@dataclass(frozen=True)
class Script:
    """How a :class:`ScriptedServer` behaves. The default is a well-behaved server."""

    #: Answer handshakes with this HTTP status instead of upgrading ...
    status: int | None = None
    #: ... but only the first ``refusals`` handshakes (None: every one).
    refusals: int | None = None
    #: Never answer a handshake: TCP accepted, the request read, nothing ever written.
    hang: bool = False
    #: Accept the upgrade, then close at once with this code.
    close_code: int | None = None
    #: Acknowledge each accepted subscribe once, twice, or never.
    acks: Acks = "once"
    #: After each subscribe, also acknowledge these channel keys (never asked for).
    unasked_acks: tuple[str, ...] = ()
    #: Channel key -> error code: refuse that subscribe with an ``error`` naming no channel.
    refuse: Mapping[str, str] = field(default_factory=dict)
    #: Refuse subscribes beyond this many channels per connection (SUBSCRIPTION_LIMIT).
    limit: int | None = None
    #: Every ``data_every`` s, one ticker event per ticker channel accepted or unasked-acked.
    data_every: float | None = None
    #: Every ``ping_every`` s a JSON ``{"type":"ping"}``.
    ping_every: float | None = None
    #: Every ``ws_ping_every`` s a WebSocket-level ping frame.
    ws_ping_every: float | None = None


@dataclass
class Handshake:
    """One WebSocket handshake request."""

    at: float
    #: The status answered (101 once upgraded); None while (or if never) answered.
    status: int | None = None


@dataclass
class Connection:
    """What the server saw of one accepted WebSocket."""

    opened_at: float
    ws: web.WebSocketResponse = field(repr=False)
    request: web.Request = field(repr=False)
    #: Every subscribe received, by channel key, in order (refused ones too).
    subscribes: list[str] = field(default_factory=list)
    #: Channels subscribed now (accepted and not unsubscribed).
    accepted: list[str] = field(default_factory=list)
    unsubscribes: list[str] = field(default_factory=list)
    #: JSON pongs, and WebSocket pong frames, received.
    pongs: int = 0
    ws_pongs: int = 0
    closed_at: float | None = None
    #: The close code of the connection once over (the client's, if it closed first).
    close_code: int | None = None


def channel_key(msg: Mapping[str, Any]) -> str:
    """The server's key of the channel a subscribe names (``ticker:BTCUSDT``, ...)."""
    channel = str(msg.get("channel"))
    symbol = str(msg.get("symbol", "")).upper()
    if channel == "ticker_all":
        return "ticker:all"
    if channel == "ticker":
        return f"ticker:{symbol}"
    if channel == "candles":
        return f"candles:{symbol}:{msg.get('interval')}"
    return channel


def data_frame(channel: str, data: object, **envelope: object) -> str:
    """A data message as the server sends it, e.g. ``data_frame("ticker", {...}, symbol=S)``."""
    return json.dumps({"channel": channel, **envelope, "data": data})


def _ticker(symbol: str, price: str = "100.00") -> str:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return data_frame(
        "ticker",
        {"price": price, "quantity": "0.010", "timestamp": now, "is_buyer_maker": False},
        symbol=symbol,
    )


class ScriptedServer:
    """A WebSocket endpoint at ``{url}/ws/v1`` that follows ``script``.

    Example:
        >>> async with ScriptedServer(status=503, refusals=2) as server:
        ...     ws = AgentExchangeWS(KEY, server.url)
    """

    def __init__(self, script: Script | None = None, **fields: Any) -> None:
        self.script = replace(script or Script(), **fields)
        self.handshakes: list[Handshake] = []
        self.connections: list[Connection] = []
        self.port = 0
        self._refused = 0
        self._runner: web.AppRunner | None = None
        self._release: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ScriptedServer:
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_get("/ws/v1", self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        self._runner = runner
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.port = runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._release is not None and self._runner is not None
        self._release.set()  # hung handshakes give up
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in self.open_connections():
            if conn.request.transport is not None:
                conn.request.transport.abort()
        await self._runner.cleanup()

    # -- what the tests look at --------------------------------------------------------

    def open_connections(self) -> list[Connection]:
        return [c for c in self.connections if c.closed_at is None]

    def gaps(self) -> list[float]:
        """Seconds between consecutive handshakes."""
        times = [h.at for h in self.handshakes]
        return [b - a for a, b in itertools.pairwise(times)]

    # -- faults on demand --------------------------------------------------------------

    async def send_all(self, payload: str | bytes) -> int:
        """Send one frame to every open connection: text for ``str``, binary for ``bytes``."""
        conns = self.open_connections()
        for conn in conns:
            with contextlib.suppress(ConnectionError, RuntimeError):
                if isinstance(payload, bytes):
                    await conn.ws.send_bytes(payload)
                else:
                    await conn.ws.send_str(payload)
        return len(conns)

    async def close_all(self, code: int, reason: str = "") -> int:
        """Close every open connection with ``code``."""
        conns = self.open_connections()
        await asyncio.gather(
            *(c.ws.close(code=code, message=reason.encode()) for c in conns),
            return_exceptions=True,
        )
        return len(conns)

    # -- the endpoint ------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        script = self.script
        shake = Handshake(time.monotonic())
        self.handshakes.append(shake)
        if script.hang:
            assert self._release is not None
            await self._release.wait()
            return web.Response(status=503)  # the client left long ago
        if script.status is not None and (
            script.refusals is None or self._refused < script.refusals
        ):
            self._refused += 1
            shake.status = script.status
            return web.Response(status=script.status, text="refused by the script")
        ws = web.WebSocketResponse(autoping=False, timeout=0.5)
        await ws.prepare(request)
        shake.status = 101
        conn = Connection(time.monotonic(), ws, request)
        self.connections.append(conn)
        if script.close_code is not None:
            await ws.close(code=script.close_code, message=b"closed by the script")
            conn.closed_at = time.monotonic()
            return ws
        tasks = [
            self._every(period, action)
            for period, action in (
                (script.data_every, lambda: self._stream(conn)),
                (script.ping_every, lambda: ws.send_str('{"type":"ping"}')),
                (script.ws_ping_every, lambda: ws.ping()),
            )
            if period is not None
        ]
        try:
            while True:
                msg = await ws.receive()
                if msg.type is WSMsgType.TEXT:
                    await self._on_text(conn, msg.data)
                elif msg.type is WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type is WSMsgType.PONG:
                    conn.ws_pongs += 1
                elif msg.type is not WSMsgType.BINARY:
                    break  # CLOSE, CLOSING, CLOSED, ERROR
        finally:
            conn.closed_at = time.monotonic()
            conn.close_code = ws.close_code
            for task in tasks:
                task.cancel()
        return ws

    def _every(self, period: float, action: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        async def loop() -> None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                while True:
                    await asyncio.sleep(period)
                    await action()

        task = asyncio.create_task(loop())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _stream(self, conn: Connection) -> None:
        for key in [*conn.accepted, *self.script.unasked_acks]:
            if key.startswith("ticker:"):
                await conn.ws.send_str(_ticker(key.split(":")[1]))

    async def _on_text(self, conn: Connection, text: str) -> None:
        msg = json.loads(text)
        action = msg.get("action")
        ws = conn.ws
        if action == "pong":
            conn.pongs += 1
        elif action == "subscribe":
            key = channel_key(msg)
            conn.subscribes.append(key)
            await self._subscribe(conn, key)
            for extra in self.script.unasked_acks:
                await ws.send_str(json.dumps({"type": "subscribed", "channel": extra}))
        elif action == "unsubscribe":
            key = channel_key(msg)
            conn.unsubscribes.append(key)
            if key in conn.accepted:
                conn.accepted.remove(key)
            await ws.send_str(json.dumps({"type": "unsubscribed", "channel": key}))

    async def _subscribe(self, conn: Connection, key: str) -> None:
        script = self.script
        code = script.refuse.get(key)
        if code is None and script.limit is not None and key not in conn.accepted:
            code = "SUBSCRIPTION_LIMIT" if len(conn.accepted) >= script.limit else None
        if code is not None:
            # As the platform's own server does: the error does not say which channel.
            error = {"type": "error", "code": code, "message": f"refused ({code})"}
            await conn.ws.send_str(json.dumps(error))
            return
        if key not in conn.accepted:
            conn.accepted.append(key)
        acks = {"once": 1, "twice": 2, "never": 0}[script.acks]
        for _ in range(acks):
            await conn.ws.send_str(json.dumps({"type": "subscribed", "channel": key}))
