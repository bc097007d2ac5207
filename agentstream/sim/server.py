"""The simulated exchange: an aiohttp server that speaks the AgentExchange protocol.

It is the embedded default of the demo, the examples, the test suite and the benchmarks,
and a product feature in its own right: users point their bots at it before risking
money, and use its fault injection to see how their bots behave when things go wrong.

Layout of one connection: the handler task reads frames and answers control messages;
a writer task owns everything sent (frames queued by the market, the order engine and
the handler go out in order, many frames per socket write); a heartbeat task pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import struct
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from aiohttp import WSMsgType, web

from agentstream._redact import mask_secret
from agentstream.sim.accounts import (
    FEE_RATE,
    Account,
    Order,
    OrderError,
    OrderRequest,
    RequestValidationError,
    iso_us,
    parse_order_body,
)
from agentstream.sim.market import INTERVAL_MS, Market, Tick, format_units, iso_ms

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable, Iterable, Mapping

    from agentstream.sim.tastytrade import TastytradeVenue
    from agentstream.sim.tradier import TradierVenue

log = logging.getLogger("agentstream.sim")

#: An API key that every simulated exchange accepts unless configured otherwise.
DEMO_API_KEY = "ak_demo_agentstream"
#: The SDK page's placeholder key, ``ak_live_...`` as printed: by default another name
#: for :data:`DEMO_API_KEY` (the same account), so the page's examples run unchanged.
PLACEHOLDER_API_KEY = "ak_live_..."

# -- Tradier front-end (agentstream/sim/tradier.py) -------------------------------------
#: A Tradier bearer token every simulated exchange accepts unless configured otherwise.
TRADIER_DEMO_TOKEN = "tradier_demo_agentstream"
#: The Tradier account number :data:`TRADIER_DEMO_TOKEN` trades.
TRADIER_DEMO_ACCOUNT = "VA000001"
# -- end Tradier ------------------------------------------------------------------------

# -- tastytrade front-end (agentstream/sim/tastytrade.py) -------------------------------
#: A tastytrade token every simulated exchange accepts unless configured otherwise: the
#: whole ``auth-token`` / ``Authorization`` value, ``"Bearer ..."`` included.
TASTYTRADE_DEMO_TOKEN = "Bearer tasty_demo_agentstream"
#: The tastytrade account number :data:`TASTYTRADE_DEMO_TOKEN` holds.
TASTYTRADE_DEMO_ACCOUNT = "5WT00000"
# -- end tastytrade ---------------------------------------------------------------------

ERROR_INVALID_CHANNEL = "INVALID_CHANNEL"
ERROR_SUBSCRIPTION_LIMIT = "SUBSCRIPTION_LIMIT"
ERROR_UNKNOWN_ACTION = "UNKNOWN_ACTION"

#: Close code the platform uses for a rejected API key after accepting the socket.
CLOSE_AUTH_FAILED = 4401
#: Close code the sim uses when a client's pong is late (the platform's is unspecified).
CLOSE_PONG_TIMEOUT = 4408

_PING = b'{"type":"ping"}'
_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """Settings of a :class:`SimExchange`. All times are real seconds.

    Example:
        >>> SimConfig(tick_rate=1000, speed=60).speed
        60
    """

    host: str = "127.0.0.1"
    port: int = 0
    #: Valid API keys and each key's starting cash in USDT.
    api_keys: Mapping[str, Decimal] = field(
        default_factory=lambda: {DEMO_API_KEY: Decimal("10000")}
    )
    #: Other names of keys of ``api_keys``: an alias reaches its target's account (the
    #: same orders and portfolio, the same sockets for private events), and is refused
    #: when the target is not one of ``api_keys`` or is revoked. By default the SDK
    #: page's placeholder ``ak_live_...`` is the demo key.
    api_key_aliases: Mapping[str, str] = field(
        default_factory=lambda: {PLACEHOLDER_API_KEY: DEMO_API_KEY}
    )
    #: Trades per second across all pairs.
    tick_rate: float = 200.0
    #: Simulated seconds per real second (60 closes a 1m candle every second).
    speed: float = 1.0
    seed: int = 42
    pairs: int = 620
    ping_interval: float = 30.0
    pong_timeout: float = 10.0
    subscription_limit: int = 10
    #: How a bad key is refused, ``"http"`` (HTTP 403 at the handshake) or ``"close"``
    #: (accept, then close with 4401).
    auth_failure: Literal["http", "close"] = "http"
    #: Candle intervals built and accepted; others are refused with ``INVALID_CHANNEL``.
    #: The default is all six the SDK page promises; the real server serves only
    #: :data:`~agentstream.sim.REAL_SERVER_INTERVALS` (``1m 5m 1h 1d``).
    candle_intervals: tuple[str, ...] = tuple(INTERVAL_MS)
    #: Seconds between the periodic portfolio snapshots of each account.
    portfolio_interval: float = 5.0
    #: Private events (``orders``, ``portfolio``) go to every open connection of the key,
    #: subscribed to the channel or not, as the real server sends them. False restores
    #: a kinder server that sends them only to connections subscribed to the channel.
    private_to_all_sockets: bool = True
    #: Send ``orders`` events as the real server does when its order serializer lacks a
    #: field: ``quantity`` ``"0"`` and ``symbol``, ``side``, ``type`` ``""`` (the rest
    #: intact). REST answers are not affected. :meth:`SimExchange.sparse_order_events`
    #: switches it at run time.
    sparse_order_events: bool = False
    #: How often the order engine advances each open order by one step.
    order_interval: float = 0.2
    #: Tradier and tastytrade orders above this notional fill in two steps, the first
    #: ``partially_filled``. (AgentExchange orders fill in full, as on the platform.)
    partial_fill_notional: Decimal = Decimal("2500")
    #: How often the market steps (generates ticks and closes candles).
    step_interval: float = 0.02
    #: Benchmark mode. ``ticker_all`` subscribers get pre-encoded frames as fast as their
    #: socket takes them, instead of the market's rate.
    firehose: bool = False
    #: Frames a connection may have queued before it is dropped as a slow consumer.
    max_queue: int = 500_000
    max_client_message: int = 64 * 1024
    #: Serve ``wss://`` and ``https://`` with this context (e.g. a self-signed test CA's).
    ssl_context: ssl.SSLContext | None = None
    # -- Tradier front-end (agentstream/sim/tradier.py; docs/sim.md "Tradier") ---------
    #: Valid Tradier bearer tokens, each with the account number it trades (or a tuple
    #: of several: one Tradier user may hold many accounts, and its stream covers them all).
    tradier_tokens: Mapping[str, str | tuple[str, ...]] = field(
        default_factory=lambda: {TRADIER_DEMO_TOKEN: TRADIER_DEMO_ACCOUNT}
    )
    #: Starting cash (USD) of each Tradier account.
    tradier_cash: Decimal = Decimal("100000")
    #: Seconds a streaming session id stays valid before a socket uses it (about 5 min
    #: on Tradier).
    tradier_session_ttl: float = 300.0
    #: Seconds between the stream's heartbeats (about a minute on Tradier).
    tradier_heartbeat_interval: float = 60.0
    #: Send each order's ``pending`` event after its ``open`` event, as the sample in
    #: Tradier's documentation shows (statuses do not arrive in lifecycle order).
    tradier_out_of_order: bool = True
    #: ``last_fill_quantity`` 0.0 on ``filled`` stream events, as the documentation's
    #: sample shows (REST answers keep the real last fill).
    tradier_zero_last_fill: bool = True
    #: One streaming session per user. A new session request also closes the socket of
    #: the user's previous session (its unused session id is invalidated either way).
    tradier_new_session_ends_stream: bool = True
    # -- end Tradier --------------------------------------------------------------------
    # -- tastytrade front-end (agentstream/sim/tastytrade.py; docs/sim.md "tastytrade") -
    #: Valid tastytrade tokens (the whole ``"Bearer ..."`` string), each with the account
    #: number it holds or a tuple of several.
    tastytrade_tokens: Mapping[str, str | tuple[str, ...]] = field(
        default_factory=lambda: {TASTYTRADE_DEMO_TOKEN: (TASTYTRADE_DEMO_ACCOUNT,)}
    )
    #: Starting cash (USD) of each tastytrade account.
    tastytrade_cash: Decimal = Decimal("100000")
    #: Seconds a token works after it is minted (a configured token, after the sim is
    #: made), or None for ever. tastytrade's access tokens last about 15 minutes.
    tastytrade_token_ttl: float | None = None
    #: Seconds without a client message after which the streamer closes a socket
    #: (tastytrade: about a minute); None: never.
    tastytrade_idle_timeout: float | None = 60.0
    #: Send data messages batched as ``{"results": [...]}``, as some servers do.
    tastytrade_batch: bool = False
    #: Close the socket (code 1000) after answering ``"failed"``; False keeps it open.
    tastytrade_close_on_failed: bool = False
    # -- end tastytrade -----------------------------------------------------------------


@dataclass
class ConnectionRecord:
    """What the sim saw of one WebSocket connection (for tests and the admin endpoint)."""

    id: int
    opened_at: float
    api_key: str
    subscribe_requests: list[str] = field(default_factory=list)
    unsubscribe_requests: list[str] = field(default_factory=list)
    pongs: int = 0
    closed_at: float | None = None
    close_reason: str | None = None

    @property
    def open(self) -> bool:
        return self.closed_at is None


@dataclass
class SimStats:
    """Counters of a running :class:`SimExchange`."""

    handshakes: int = 0
    handshakes_refused: int = 0
    auth_failures: int = 0
    connections_opened: int = 0
    frames_sent: int = 0
    ticks: int = 0


class RestOutage:
    """A REST API that fails on demand: every request answered with an HTTP error status,
    for some seconds, for the next few requests, or until healed.

    The state behind :meth:`SimExchange.fail_rest` (and the Tradier front-end's
    :meth:`SimExchange.fail_tradier_rest`).
    """

    def __init__(self) -> None:
        self.status: int | None = None
        self._until: float | None = None
        self._left: int | None = None
        #: Requests answered with the fault's status so far.
        self.failed = 0

    def start(self, status: int, seconds: float | None, count: int | None) -> None:
        """Fail from now on: for ``seconds``, or the next ``count`` requests, or until
        :meth:`heal` when neither is given (the first limit reached ends it)."""
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {status}")
        if seconds is not None and seconds <= 0:
            raise ValueError(f"seconds must be positive, got {seconds}")
        if count is not None and count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        self.status = status
        now = asyncio.get_running_loop().time()
        self._until = now + seconds if seconds is not None else None
        self._left = count

    def heal(self) -> None:
        """Answer normally again."""
        self.status = self._until = self._left = None

    def hit(self) -> int | None:
        """The status to answer the request arriving now with, or None to serve it."""
        status = self.status
        if status is None:
            return None
        if self._until is not None and asyncio.get_running_loop().time() >= self._until:
            self.heal()
            return None
        if self._left is not None:
            self._left -= 1
            if self._left <= 0:
                self.heal()
        self.failed += 1
        return status

    def state(self) -> dict[str, Any] | None:
        """What ``GET /admin/state`` shows: None when healthy."""
        if self.status is None:
            return None
        left = None
        if self._until is not None:
            left = max(0.0, self._until - asyncio.get_running_loop().time())
        return {"status": self.status, "seconds_left": left, "count_left": self._left}


def _frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """An unmasked, final WebSocket frame (server to client)."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


class _Conn:
    __slots__ = (
        "account",
        "outq",
        "pong",
        "record",
        "request",
        "resumed",
        "silent",
        "sim",
        "subs",
        "tasks",
        "wake",
        "ws",
    )

    def __init__(
        self,
        sim: SimExchange,
        ws: web.WebSocketResponse,
        request: web.Request,
        account: Account,
        record: ConnectionRecord,
    ) -> None:
        self.sim = sim
        self.ws = ws
        self.request = request
        self.account = account
        self.record = record
        self.subs: set[str] = set()
        self.outq: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.resumed = asyncio.Event()
        self.resumed.set()
        self.pong = asyncio.Event()
        self.silent = False
        self.tasks: list[asyncio.Task[None]] = []

    def send(self, payload: bytes) -> None:
        """Queue a text frame; the writer task sends it. Never blocks."""
        if self.silent or self.ws.closed:
            return
        if len(self.outq) >= self.sim.config.max_queue:
            log.warning(
                "connection %d: slow consumer, %d frames queued; dropping it",
                self.record.id,
                len(self.outq),
            )
            self.abort()
            return
        self.outq.append(_frame(payload))
        self.wake.set()

    def send_frame(self, frame: bytes) -> None:
        self.outq.append(frame)
        self.wake.set()

    def silence(self) -> None:
        self.silent = True
        self.resumed.clear()
        self.outq.clear()
        transport = self.request.transport
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.pause_reading()

    def is_silent(self) -> bool:
        return self.silent

    def resume(self) -> None:
        self.silent = False
        transport = self.request.transport
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.resume_reading()
        self.resumed.set()

    def abort(self, reset: bool = True) -> None:
        """Close the TCP connection at once, with a RST when ``reset``."""
        transport = self.request.transport
        if transport is None:
            return
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    async def writer(self) -> None:
        transport = self.request.transport
        stats = self.sim.stats
        outq = self.outq
        while True:
            if not outq:
                self.wake.clear()
                await self.wake.wait()
            if self.silent:
                await self.resumed.wait()
                continue
            if transport is None or transport.is_closing():
                return
            n = len(outq)
            data = b"".join([outq.popleft() for _ in range(n)])
            stats.frames_sent += n
            transport.write(data)
            with contextlib.suppress(ConnectionError):
                await self.request.writer.drain()

    async def heartbeat(self) -> None:
        cfg = self.sim.config
        while True:
            await asyncio.sleep(cfg.ping_interval)
            if self.silent:
                continue
            self.pong.clear()
            self.send(_PING)
            try:
                # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that
                # arrives as the pong does, which left this task (and the connection's
                # handler waiting for it) running after the client had gone.
                async with asyncio.timeout(cfg.pong_timeout):
                    await self.pong.wait()
            except TimeoutError:
                if self.is_silent():  # it may have gone silent while we waited
                    continue
                log.info("connection %d: pong late, dropping it", self.record.id)
                self.record.close_reason = "pong timeout"
                await self.ws.close(code=CLOSE_PONG_TIMEOUT, message=b"pong timeout")
                return

    async def firehose(self, chunks: list[bytes]) -> None:
        """Benchmark mode: write pre-encoded ticker frames as fast as the socket drains."""
        transport = self.request.transport
        writer = self.request.writer
        stats = self.sim.stats
        per_chunk = self.sim._firehose_per_chunk
        subs = self.subs
        ws = self.ws
        while transport is not None and not transport.is_closing():
            for chunk in chunks:
                if self.silent:
                    await self.resumed.wait()
                # Stop on unsubscribe, and never write after a close frame.
                if "ticker:all" not in subs or ws.closed or transport.is_closing():
                    return
                transport.write(chunk)
                stats.frames_sent += per_chunk
                await writer.drain()
                await asyncio.sleep(0)


class SimExchange:
    """The simulated AgentExchange server, in-process.

    Use it as an async context manager; it listens on ``config.host`` and ``config.port``
    (port 0 picks a free one) and exposes the URL to give a client.

    Example:
        >>> async def main() -> None:
        ...     async with SimExchange(speed=60) as sim:
        ...         print(sim.url)  # ws://127.0.0.1:<port>
        ...         order = await sim.place_order(DEMO_API_KEY, symbol="BTCUSDT",
        ...                                       side="buy", type="market", quantity="0.01")

    Args:
        config: a full :class:`SimConfig`; keyword arguments override single fields.
    """

    def __init__(self, config: SimConfig | None = None, **overrides: Any) -> None:
        self.config = replace(config or SimConfig(), **overrides)
        unknown = [iv for iv in self.config.candle_intervals if iv not in INTERVAL_MS]
        if unknown or not self.config.candle_intervals:
            raise ValueError(
                f"candle_intervals must be some of {', '.join(INTERVAL_MS)}; "
                f"got {', '.join(self.config.candle_intervals) or 'none'}"
            )
        self.market = Market(
            seed=self.config.seed, n_pairs=self.config.pairs, intervals=self.config.candle_intervals
        )
        self.accounts: dict[str, Account] = {
            k: Account(k, Decimal(v)) for k, v in self.config.api_keys.items()
        }
        self.stats = SimStats()
        self.connection_log: deque[ConnectionRecord] = deque(maxlen=10_000)
        self._revoked: set[str] = set()
        self._conns: set[_Conn] = set()
        self._subs: dict[str, set[_Conn]] = {}
        #: Open connections per API key: where private events go (see _private_targets).
        self._key_conns: dict[str, set[_Conn]] = {}
        self._sparse_orders = self.config.sparse_order_events
        self._runner: web.AppRunner | None = None
        self._port = self.config.port
        self._tasks: list[asyncio.Task[None]] = []
        self._refuse_status: int | None = None
        self._refuse_until: float | None = None
        self._refuse_count: int | None = None
        #: ``fail_rest``: the AgentExchange REST API (``/api/v1/...``) failing on demand.
        self._rest_outage = RestOutage()
        self._silence_handle: asyncio.TimerHandle | None = None
        self._closed = False  # set by close(): a pending restart must not revive the server
        self._t0 = 0.0
        self._sim0_ms = int(time.time() * 1000)
        self._buckets: dict[str, int] = {}
        self._firehose_chunks: list[bytes] = []
        self._firehose_per_chunk = 128
        self._next_conn_id = 0
        self._candle_keys: dict[str, list[tuple[str, str]]] = {
            sym: [(iv, f"candles:{sym}:{iv}") for iv in self.config.candle_intervals]
            for sym in self.market.pairs
        }
        # Tradier front-end: its sessions, stream sockets, equity accounts and order REST
        # API, on this market, order loop and port. (Imported here: it subclasses _Conn.)
        from agentstream.sim.tradier import TradierVenue

        #: The Tradier front-end (sessions, equity accounts, in-process order API).
        self.tradier: TradierVenue = TradierVenue(self)
        # tastytrade front-end: its tokens, streamer sockets, equity accounts and order
        # REST API, on this market, order loop and port.
        from agentstream.sim.tastytrade import TastytradeVenue

        #: The tastytrade front-end (tokens, equity accounts, in-process order API).
        self.tastytrade: TastytradeVenue = TastytradeVenue(self)

    # -- lifecycle --------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the server listens on (known once started)."""
        return self._port

    @property
    def url(self) -> str:
        """Base WebSocket URL to give a client, e.g. ``ws://127.0.0.1:8000``."""
        scheme = "wss" if self.config.ssl_context is not None else "ws"
        return f"{scheme}://{self.config.host}:{self._port}"

    @property
    def http_url(self) -> str:
        """Base URL of the REST API, e.g. ``http://127.0.0.1:8000``."""
        scheme = "https" if self.config.ssl_context is not None else "http"
        return f"{scheme}://{self.config.host}:{self._port}"

    def ws_url(self, api_key: str = DEMO_API_KEY) -> str:
        """The full endpoint URL with ``api_key`` (for plain WebSocket clients)."""
        return f"{self.url}/ws/v1?api_key={api_key}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def __aenter__(self) -> SimExchange:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start listening (again, on the same port after :meth:`stop`)."""
        self._closed = False
        if self._runner is not None:
            return
        loop = asyncio.get_running_loop()
        if not self._t0:
            self._t0 = loop.time()
            now = self.now_ms()
            self._buckets = {iv: now - now % INTERVAL_MS[iv] for iv in self.config.candle_intervals}
        if self.config.firehose and not self._firehose_chunks:
            self._build_firehose()
        outage = self._rest_outage

        @web.middleware
        async def rest_faults(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            # fail_rest: the platform's REST API (not the socket, the admin or Tradier's).
            if request.path.startswith("/api/v1/"):
                status = outage.hit()
                if status is not None:
                    message = f"refused by fault injection ({status})"
                    return _rest_error(OrderError("SERVICE_UNAVAILABLE", message, status=status))
            return await handler(request)

        app = web.Application(middlewares=[rest_faults])
        app.router.add_get("/ws/v1", self._ws_handler)
        app.router.add_get("/health", self._health)
        app.router.add_post("/api/v1/trade/order", self._rest_place)
        app.router.add_get("/api/v1/trade/orders", self._rest_orders)
        app.router.add_get("/api/v1/trade/orders/open", self._rest_open_orders)
        app.router.add_delete("/api/v1/trade/orders/open", self._rest_cancel_all)
        app.router.add_get("/api/v1/trade/order/{order_id}", self._rest_order)
        app.router.add_delete("/api/v1/trade/order/{order_id}", self._rest_cancel)
        app.router.add_get("/api/v1/account/portfolio", self._rest_portfolio)
        app.router.add_get("/api/v1/account/balance", self._rest_balance)
        app.router.add_get("/api/v1/account/positions", self._rest_positions)
        app.router.add_get("/api/v1/market/pairs", self._rest_pairs)
        app.router.add_get("/api/v1/market/price/{symbol}", self._rest_price)
        app.router.add_get("/admin/state", self._admin_state)
        self.tradier.add_routes(app)  # Tradier front-end: /v1/...
        self.tastytrade.add_routes(app)  # tastytrade front-end: /tastytrade, /accounts/...
        app.router.add_post("/admin/fault/{fault}", self._admin_fault)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(
            runner,
            self.config.host,
            self._port,
            reuse_address=True,
            ssl_context=self.config.ssl_context,
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        server = site._server
        if self._port == 0 and server is not None:
            sockets = getattr(server, "sockets", None) or []
            self._port = sockets[0].getsockname()[1]
        self._runner = runner
        self._tasks = [
            asyncio.create_task(self._market_loop(), name="sim-market"),
            asyncio.create_task(self._order_loop(), name="sim-orders"),
            asyncio.create_task(self._portfolio_loop(), name="sim-portfolio"),
        ]
        log.info("simulated exchange listening on %s", self.url)

    async def stop(self) -> None:
        """Stop listening and drop every connection (TCP closed, no close frame).

        The market, accounts and orders are kept; :meth:`start` resumes on the same port.
        """
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for t in self._tasks:
            t.cancel()
        for conn in list(self._conns):
            conn.record.close_reason = "server stopped"
            conn.abort(reset=False)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await runner.cleanup()

    async def close(self) -> None:
        """Stop for good (same as :meth:`stop`, plus cancelling pending fault timers)."""
        self._closed = True
        if self._silence_handle is not None:
            self._silence_handle.cancel()
        await self.stop()

    async def restart(self, downtime: float = 0.0) -> None:
        """Fault: stop the server, stay down ``downtime`` seconds, start on the same port."""
        await self.stop()
        if downtime:
            await asyncio.sleep(downtime)
        if self._closed:  # closed for good meanwhile (e.g. the test ended during downtime)
            return
        await self.start()

    def now_ms(self) -> int:
        """Simulated time in milliseconds since the epoch."""
        elapsed = asyncio.get_running_loop().time() - self._t0
        return self._sim0_ms + int(elapsed * self.config.speed * 1000)

    def now_ns(self) -> int:
        """Simulated time in nanoseconds since the epoch (Tradier's heartbeat timestamps)."""
        elapsed = asyncio.get_running_loop().time() - self._t0
        return self._sim0_ms * 1_000_000 + int(elapsed * self.config.speed * 1e9)

    # -- accounts ---------------------------------------------------------------------

    def add_key(self, api_key: str, cash: Decimal | str = "10000") -> Account:
        """Accept a new API key with its own paper account."""
        acct = self.accounts.get(api_key)
        if acct is None:
            acct = self.accounts[api_key] = Account(api_key, Decimal(cash))
        self._revoked.discard(api_key)
        return acct

    async def place_order(self, api_key: str, **order: str) -> dict[str, Any]:
        """Place an order for ``api_key`` in-process (as the REST API does).

        A market order is filled when this returns (as on the platform); the others are
        ``pending``. Returns the order as the ``orders`` channel sends it.

        Raises:
            OrderError: the order is refused; nothing changed (``RequestValidationError``
                for a body the platform's schema refuses).
        """
        acct = self._account_or_raise(api_key)
        placed = acct.place(self.market, self.now_ms(), **order)
        self._push_orders(acct, [placed])
        return placed.event()

    async def cancel_order(self, api_key: str, order_id: str) -> dict[str, Any]:
        """Cancel an open order in-process (as the REST API does)."""
        acct = self._account_or_raise(api_key)
        order = acct.cancel(order_id, self.now_ms())
        self._push_orders(acct, [order])
        return order.event()

    def portfolio(self, api_key: str) -> dict[str, str]:
        """The current portfolio snapshot of ``api_key``."""
        return self._snapshot(self._account_or_raise(api_key))

    def _account_or_raise(self, api_key: str) -> Account:
        acct = self._account_of(api_key)
        if acct is None:
            raise OrderError("INVALID_API_KEY", "Invalid API key.", status=401)
        return acct

    def _account_of(self, api_key: str) -> Account | None:
        """The account ``api_key`` (or the key it is an alias of) reaches, if valid."""
        if api_key not in self.accounts:
            if api_key in self._revoked:
                return None
            api_key = self.config.api_key_aliases.get(api_key, api_key)
        if api_key in self._revoked:
            return None
        return self.accounts.get(api_key)

    # -- faults -----------------------------------------------------------------------

    async def drop_connections(self, code: int | None = None, reason: str = "") -> int:
        """Fault: drop every WebSocket connection; return how many were dropped.

        Args:
            code: close with this WebSocket close code (1000, 1001, 1011, 1012, ...), or,
                when None, reset the TCP connection with no close frame at all.
        """
        conns = list(self._conns)
        for conn in conns:
            conn.record.close_reason = f"dropped ({code if code is not None else 'reset'})"
            if code is None:
                conn.abort()
        if code is not None:
            await asyncio.gather(
                *(c.ws.close(code=code, message=reason.encode()) for c in conns),
                return_exceptions=True,
            )
        return len(conns)

    def go_silent(self, seconds: float | None = None) -> int:
        """Fault: the current connections stop sending and reading, TCP stays open.

        A black hole, as a dead NAT entry or a hung server looks to a client. New
        connections are served normally, so a client that gives up on the silent socket
        and reconnects gets data again. Returns how many connections went silent.

        Args:
            seconds: resume them after this long; None keeps them silent until
                :meth:`resume` or until the client leaves.
        """
        conns = [c for c in self._conns if not c.silent]
        for conn in conns:
            conn.silence()
        if seconds is not None:
            if self._silence_handle is not None:
                self._silence_handle.cancel()
            self._silence_handle = asyncio.get_running_loop().call_later(seconds, self.resume)
        return len(conns)

    def resume(self) -> None:
        """End :meth:`go_silent`."""
        for conn in self._conns:
            if conn.silent:
                conn.resume()

    def send_raw(self, payload: bytes | str, *, binary: bool = False) -> int:
        """Fault: send ``payload`` as one frame to every connection, as is.

        Use it for malformed frames: invalid JSON, JSON of the wrong shape, a binary frame
        (``binary=True``), or invalid UTF-8 in a text frame (``bytes`` with ``binary=False``).
        """
        data = payload.encode() if isinstance(payload, str) else payload
        frame = _frame(data, 0x2 if binary else 0x1)
        for conn in self._conns:
            conn.send_frame(frame)
        return len(self._conns)

    def refuse_handshakes(
        self, status: int = 503, *, seconds: float | None = None, count: int | None = None
    ) -> None:
        """Fault: answer WebSocket handshakes with HTTP ``status``.

        For ``seconds``, or for the next ``count`` attempts, or until
        :meth:`accept_handshakes` when neither is given.
        """
        self._refuse_status = status
        loop = asyncio.get_running_loop()
        self._refuse_until = loop.time() + seconds if seconds is not None else None
        self._refuse_count = count

    def accept_handshakes(self) -> None:
        """End :meth:`refuse_handshakes`."""
        self._refuse_status = None
        self._refuse_until = None
        self._refuse_count = None

    def fail_rest(
        self, status: int = 503, *, seconds: float | None = None, count: int | None = None
    ) -> None:
        """Fault: the REST API (``/api/v1/...``) answers every request with HTTP ``status``.

        For ``seconds``, or for the next ``count`` requests, or until :meth:`heal_rest`
        when neither is given. The WebSocket endpoint is not affected (see
        :meth:`refuse_handshakes`), nor are in-process calls such as :meth:`place_order`.

        Raises:
            ValueError: ``status`` is not 400-599, ``seconds`` not positive, ``count`` < 1.
        """
        self._rest_outage.start(status, seconds, count)

    def heal_rest(self) -> None:
        """End :meth:`fail_rest`."""
        self._rest_outage.heal()

    async def revoke_key(self, api_key: str) -> int:
        """Fault: reject ``api_key`` from now on; its open connections are closed with 4401.

        Returns how many connections were closed. :meth:`add_key` restores the key.
        """
        self._revoked.add(api_key)
        conns = [c for c in self._conns if c.account.api_key == api_key]
        for c in conns:
            c.record.close_reason = "key revoked"
        await asyncio.gather(
            *(c.ws.close(code=CLOSE_AUTH_FAILED, message=b"API key revoked") for c in conns),
            return_exceptions=True,
        )
        return len(conns)

    def sparse_order_events(self, enabled: bool = True) -> None:
        """Fault: send ``orders`` events as the real server's serializer does when it lacks
        a field: ``quantity`` ``"0"``, ``symbol``, ``side`` and ``type`` ``""``.

        ``order_id``, ``status`` and the optional fields (``price``, ``executed_*``,
        ``fee``, ``filled_at``, ...) stay intact; REST answers are not affected.
        ``enabled=False`` goes back to full events. The initial state is
        ``config.sparse_order_events``.
        """
        self._sparse_orders = enabled

    # -- Tradier faults (agentstream/sim/tradier.py) ------------------------------------

    def fail_tradier_sessions(self, status: int = 503, count: int = 1) -> None:
        """Fault: answer the next ``count`` Tradier session requests with HTTP ``status``."""
        self.tradier.fail_sessions(status, count)

    def expire_tradier_sessions(self) -> int:
        """Fault: every Tradier session id not yet used by a socket expires now.

        Returns how many expired; sockets already streaming are not affected.
        """
        return self.tradier.expire_sessions()

    def slow_tradier_lookups(self, seconds: float) -> None:
        """Fault: Tradier's ``GET /v1/accounts/{account}/orders/{id}`` answers ``seconds``
        late (0 ends it)."""
        self.tradier.slow_lookups(seconds)

    def fail_tradier_lookups(self, status: int = 503, count: int | None = None) -> None:
        """Fault: Tradier's order look-up answers HTTP ``status``, for the next ``count``
        requests or until :meth:`heal_tradier_lookups`."""
        self.tradier.fail_lookups(status, count)

    def heal_tradier_lookups(self) -> None:
        """End :meth:`slow_tradier_lookups` and :meth:`fail_tradier_lookups`."""
        self.tradier.heal_lookups()

    def fail_tradier_rest(
        self, status: int = 503, *, seconds: float | None = None, count: int | None = None
    ) -> None:
        """Fault: Tradier's account API answers HTTP ``status``: ``GET /v1/user/profile``
        and every ``/v1/accounts/{account}/orders...`` request (list, look-up, place,
        cancel). For ``seconds``, or the next ``count`` requests, or until
        :meth:`heal_tradier_rest`. The stream's session requests are not affected (see
        :meth:`fail_tradier_sessions`).

        Raises:
            ValueError: ``status`` is not 400-599, ``seconds`` not positive, ``count`` < 1.
        """
        self.tradier.fail_rest(status, seconds=seconds, count=count)

    def heal_tradier_rest(self) -> None:
        """End :meth:`fail_tradier_rest`."""
        self.tradier.heal_rest()

    def tradier_end_of_day(self) -> int:
        """Fault: the trading day ends: open ``day``/``pre``/``post`` Tradier orders expire.

        Returns how many expired (``gtc`` orders stay open).
        """
        return self.tradier.end_of_day()

    def revoke_tradier_token(self, token: str) -> int:
        """Fault: Tradier token ``token`` is refused from now on (401 on every request);
        its unused session ids are invalidated. Returns how many. Streaming sockets stay."""
        return self.tradier.revoke_token(token)

    def add_tradier_token(self, token: str, *accounts: str) -> None:
        """Accept Tradier token ``token`` (again), for ``accounts`` (new accounts get
        ``config.tradier_cash``); with no accounts, a revoked token gets its own back."""
        self.tradier.add_token(token, *accounts)

    # -- end Tradier faults -------------------------------------------------------------

    # -- tastytrade faults (agentstream/sim/tastytrade.py) ------------------------------

    def expire_tastytrade_tokens(self) -> int:
        """Fault: every tastytrade token expires now (``"failed"`` on the next message,
        401 over REST); :meth:`TastytradeVenue.mint_token` still gives fresh ones.
        Returns how many were valid. Connected sockets keep streaming."""
        return self.tastytrade.expire_tokens()

    def revoke_tastytrade_token(self, token: str) -> int:
        """Fault: tastytrade token ``token`` is refused from now on. Returns how many open
        sockets connected with it (they get ``"failed"`` on their next message)."""
        return self.tastytrade.revoke_token(token)

    def add_tastytrade_token(self, token: str, *accounts: str) -> None:
        """Accept tastytrade token ``token`` (again, with a fresh TTL) for ``accounts``;
        with no accounts, a revoked or expired token gets its own back."""
        self.tastytrade.add_token(token, *accounts)

    def fail_tastytrade_connects(self, count: int = 1) -> None:
        """Fault: the next ``count`` tastytrade ``connect`` messages get ``"failed"``."""
        self.tastytrade.fail_connects(count)

    def fail_tastytrade_rest(
        self, status: int = 503, *, seconds: float | None = None, count: int | None = None
    ) -> None:
        """Fault: tastytrade's REST API (every ``/accounts/{account}/...`` request: orders,
        balances, positions) answers HTTP ``status``. For ``seconds``, or the next
        ``count`` requests, or until :meth:`heal_tastytrade_rest`. The streamer socket is
        not affected.

        Raises:
            ValueError: ``status`` is not 400-599, ``seconds`` not positive, ``count`` < 1.
        """
        self.tastytrade.fail_rest(status, seconds=seconds, count=count)

    def heal_tastytrade_rest(self) -> None:
        """End :meth:`fail_tastytrade_rest`."""
        self.tastytrade.heal_rest()

    def batch_tastytrade_messages(self, enabled: bool = True) -> None:
        """Send tastytrade data messages as ``{"results": [...]}`` batches (or not)."""
        self.tastytrade.batch(enabled)

    def push_tastytrade_quote_alert(self, symbol: str = "AAPL", **kwargs: Any) -> int:
        """Send a triggered ``QuoteAlert`` to subscribed sockets (see
        :meth:`TastytradeVenue.push_quote_alert`); returns how many got it."""
        return self.tastytrade.push_quote_alert(symbol, **kwargs)

    def push_tastytrade_watchlist(
        self, name: str = "Sim Movers", symbols: Iterable[str] = ("AAPL", "MSFT", "NVDA")
    ) -> int:
        """Send a ``PublicWatchlists`` message to subscribed sockets; returns how many."""
        return self.tastytrade.push_watchlist(name, tuple(symbols))

    # -- end tastytrade faults ----------------------------------------------------------

    # -- introspection ----------------------------------------------------------------

    def open_connections(self) -> list[ConnectionRecord]:
        """Records of the connections open now."""
        return [c.record for c in self._conns]

    def subscriptions(self) -> list[set[str]]:
        """The channel keys each open connection is subscribed to."""
        return [set(c.subs) for c in self._conns]

    # -- WebSocket endpoint -----------------------------------------------------------

    def _refusing(self) -> int | None:
        status = self._refuse_status
        if status is None:
            return None
        if (
            self._refuse_until is not None
            and asyncio.get_running_loop().time() >= self._refuse_until
        ):
            self.accept_handshakes()
            return None
        if self._refuse_count is not None:
            if self._refuse_count <= 0:
                self.accept_handshakes()
                return None
            self._refuse_count -= 1
        return status

    # -- what every venue's socket shares --------------------------------------------

    def _refused_handshake(self) -> web.Response | None:
        """Count a handshake; the refusal to answer it with while that fault is on."""
        self.stats.handshakes += 1
        status = self._refusing()
        if status is None:
            return None
        self.stats.handshakes_refused += 1
        return web.Response(status=status, text=f"refused by fault injection ({status})")

    async def _accept_socket(
        self, request: web.Request, secret: str = ""
    ) -> tuple[web.WebSocketResponse, ConnectionRecord]:
        """Upgrade ``request`` and log the connection (``secret`` already masked)."""
        ws = web.WebSocketResponse(
            autoping=True, max_msg_size=self.config.max_client_message, compress=False
        )
        await ws.prepare(request)
        self._next_conn_id += 1
        self.stats.connections_opened += 1
        record = ConnectionRecord(self._next_conn_id, time.monotonic(), secret)
        self.connection_log.append(record)
        return ws, record

    @staticmethod
    async def _read_socket(
        ws: web.WebSocketResponse,
        conn: _Conn,
        record: ConnectionRecord,
        on_text: Callable[[str | bytes], Awaitable[bool] | bool],
    ) -> None:
        """Read ``ws`` until it ends; each text or binary frame to ``on_text`` (which
        returns False to end the socket). A silenced connection reads nothing meanwhile,
        but the end of the socket still ends it."""
        while True:
            msg = await ws.receive()
            if conn.silent and msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await conn.resumed.wait()
            if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                go_on = on_text(msg.data)
                if not isinstance(go_on, bool):
                    go_on = await go_on
                if not go_on:
                    return
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            elif msg.type is WSMsgType.ERROR:
                record.close_reason = record.close_reason or f"error: {ws.exception()!r}"
                return

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        refused = self._refused_handshake()
        if refused is not None:
            return refused
        key = request.query.get("api_key", "")
        account = self._account_of(key)
        if account is None:
            self.stats.auth_failures += 1
            if self.config.auth_failure == "http":
                return web.Response(status=403, text="invalid API key")
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.close(code=CLOSE_AUTH_FAILED, message=b"invalid API key")
            return ws
        ws, record = await self._accept_socket(request, mask_secret(key))
        conn = _Conn(self, ws, request, account, record)
        self._conns.add(conn)
        self._key_conns.setdefault(account.api_key, set()).add(conn)
        conn.tasks = [
            asyncio.create_task(conn.writer(), name=f"sim-writer-{record.id}"),
            asyncio.create_task(conn.heartbeat(), name=f"sim-heartbeat-{record.id}"),
        ]

        def on_text(data: str | bytes) -> bool:
            self._on_client_message(conn, data)
            return True

        try:
            await self._read_socket(ws, conn, record, on_text)
        finally:
            record.closed_at = time.monotonic()
            self._conns.discard(conn)
            key_conns = self._key_conns.get(account.api_key)
            if key_conns is not None:
                key_conns.discard(conn)
                if not key_conns:
                    del self._key_conns[account.api_key]
            for key_ in conn.subs:
                subs = self._subs.get(key_)
                if subs is not None:
                    subs.discard(conn)
            for t in conn.tasks:
                t.cancel()
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        return ws

    def _on_client_message(self, conn: _Conn, raw: str | bytes) -> None:
        try:
            msg = _json_decode(raw)
        except msgspec.DecodeError:
            conn.send(_error(ERROR_UNKNOWN_ACTION, "malformed JSON: expected one JSON object"))
            return
        if not isinstance(msg, dict):
            conn.send(_error(ERROR_UNKNOWN_ACTION, "a message must be a JSON object"))
            return
        action = msg.get("action")
        if action == "pong" or (action is None and msg.get("type") == "pong"):
            conn.record.pongs += 1
            conn.pong.set()
            return
        if action not in ("subscribe", "unsubscribe"):
            conn.send(_error(ERROR_UNKNOWN_ACTION, f"unknown action {action!r}"))
            return
        key, problem = self._channel_key(msg)
        if key is None:
            conn.send(_error(ERROR_INVALID_CHANNEL, problem))
            return
        if action == "subscribe":
            conn.record.subscribe_requests.append(key)
            added = key not in conn.subs
            if added:
                if len(conn.subs) >= self.config.subscription_limit:
                    conn.send(
                        _error(
                            ERROR_SUBSCRIPTION_LIMIT,
                            # The platform's own words (its limit is 10).
                            f"Maximum of {self.config.subscription_limit} subscriptions per "
                            "connection reached.",
                        )
                    )
                    return
                conn.subs.add(key)
                self._subs.setdefault(key, set()).add(conn)
            conn.send(_json_encode({"type": "subscribed", "channel": key}))
            # One firehose per connection: a repeated subscribe must not start a second one.
            if added and key == "ticker:all" and self.config.firehose:
                running = [t for t in conn.tasks if t.get_name().startswith("sim-firehose-")]
                if not any(not t.done() for t in running):
                    conn.tasks.append(
                        asyncio.create_task(
                            conn.firehose(self._firehose_chunks),
                            name=f"sim-firehose-{conn.record.id}",
                        )
                    )
        else:
            conn.record.unsubscribe_requests.append(key)
            if key in conn.subs:
                conn.subs.discard(key)
                self._subs.get(key, set()).discard(conn)
            conn.send(_json_encode({"type": "unsubscribed", "channel": key}))

    def _channel_key(self, msg: dict[str, Any]) -> tuple[str | None, str]:
        """The server's key for the channel ``msg`` names, or None and the reason."""
        channel = msg.get("channel")
        if not isinstance(channel, str) or not channel:
            return None, "missing channel"
        symbol = msg.get("symbol")
        interval = msg.get("interval")
        if ":" in channel:  # the older SDK's combined form: "ticker:BTCUSDT", "candles:X:1m"
            parts = channel.split(":")
            channel = parts[0]
            if len(parts) > 1:
                symbol = parts[1]
            if len(parts) > 2:
                interval = parts[2]
        if channel in ("orders", "portfolio"):
            return channel, ""
        if channel == "ticker_all":
            return "ticker:all", ""
        if channel not in ("ticker", "candles"):
            return None, f"unknown channel {channel!r}"
        if not isinstance(symbol, str) or not symbol:
            return None, f"channel {channel!r} needs a symbol"
        sym = symbol.upper()
        if channel == "ticker":
            if sym == "ALL":
                return "ticker:all", ""
            if sym not in self.market.pairs:
                return None, f"unknown symbol {symbol!r}"
            return f"ticker:{sym}", ""
        if sym not in self.market.pairs:
            return None, f"unknown symbol {symbol!r}"
        if not isinstance(interval, str) or not interval:
            return None, (
                "channel 'candles' needs an interval, one of "
                + ", ".join(self.config.candle_intervals)
            )
        if interval not in self.config.candle_intervals:
            # The real server's answer to an interval it does not serve, word for word
            # (its detail comes out empty).
            return None, "Channel 'candles' requires ."
        return f"candles:{sym}:{interval}", ""

    # -- the market, orders and portfolios ---------------------------------------------

    async def _market_loop(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        carry = 0.0
        last = loop.time()
        while True:
            await asyncio.sleep(cfg.step_interval)
            now = loop.time()
            dt, last = now - last, now
            ts = self.now_ms()
            self._close_candles(ts)
            if cfg.firehose:
                continue
            carry += cfg.tick_rate * dt
            n = int(carry)
            carry -= n
            if n:
                ticks = self.market.ticks(min(n, 1_000_000), ts)
                self.stats.ticks += len(ticks)
                self._broadcast_ticks(ticks)

    def _broadcast_ticks(self, ticks: Iterable[Tick]) -> None:
        subs = self._subs
        all_subs = subs.get("ticker:all")
        touched: set[str] = set()
        for t in ticks:
            pair = t.pair
            sym = pair.symbol
            touched.add(sym)
            one = subs.get("ticker:" + sym)
            if one or all_subs:
                frame = _json_encode(
                    {
                        "channel": "ticker",
                        "symbol": sym,
                        "data": {
                            "price": format_units(t.price, pair.price_dp),
                            "quantity": format_units(t.qty, pair.qty_dp),
                            "timestamp": iso_ms(t.ts_ms),
                            "is_buyer_maker": t.is_buyer_maker,
                        },
                    }
                )
                if one:
                    for c in one:
                        c.send(frame)
                if all_subs:
                    for c in all_subs:
                        c.send(frame)
        # One in-progress candle update per subscribed candle and market step, as real
        # venues throttle them, carrying the state after the step's last trade.
        for sym in touched:
            for iv, key in self._candle_keys[sym]:
                csubs = subs.get(key)
                if csubs:
                    st = self.market.candles[iv][sym]
                    frame = self._candle_frame(
                        sym, iv, st.data(self.market.pairs[sym], closed=False)
                    )
                    for c in csubs:
                        c.send(frame)

    @staticmethod
    def _candle_frame(sym: str, iv: str, data: dict[str, object]) -> bytes:
        return _json_encode({"channel": "candles", "symbol": sym, "interval": iv, "data": data})

    def _close_candles(self, ts: int) -> None:
        """Send the final candle of every bucket that ended before ``ts``, to subscribers."""
        for iv, old in self._buckets.items():
            length = INTERVAL_MS[iv]
            start = ts - ts % length
            if start == old:
                continue
            self._buckets[iv] = start
            suffix = ":" + iv
            keys = [
                k
                for k, s in self._subs.items()
                if s and k.startswith("candles:") and k.endswith(suffix)
            ]
            # At extreme speeds many buckets end in one step; send at most the last 1000.
            first = max(old, start - 1000 * length)
            for key in keys:
                sym = key.split(":")[1]
                pair = self.market.pairs[sym]
                for b in range(first, start, length):
                    frame = self._candle_frame(
                        sym, iv, self.market.candle(sym, iv, b).data(pair, closed=True)
                    )
                    for c in self._subs.get(key, ()):
                        c.send(frame)

    async def _order_loop(self) -> None:
        cfg = self.config
        while True:
            await asyncio.sleep(cfg.order_interval)
            ts = self.now_ms()
            for acct in self.accounts.values():
                if not acct.orders:
                    continue
                changed = acct.step(self.market, ts)
                if changed:
                    self._push_orders(acct, changed)
                # Fully settled orders are kept (GET /orders), but at most 10,000.
                if len(acct.orders) > 10_000:
                    for oid in [o.order_id for o in acct.orders.values() if not o.open][:1000]:
                        del acct.orders[oid]
            self.tradier.step(ts)  # Tradier front-end: its equity orders, same clock and loop
            self.tastytrade.step(ts)  # tastytrade front-end: after Tradier's equity walk

    async def _portfolio_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.portfolio_interval)
            for acct in self.accounts.values():
                self._push_portfolio(acct)

    def _private_targets(self, acct: Account, channel: str) -> list[_Conn]:
        """The connections a private event of ``acct`` on ``channel`` goes to.

        The real server sends private events to every connection of the key, subscribed
        or not (``broadcast_to_agent``); ``private_to_all_sockets=False`` keeps them to
        the connections subscribed to ``channel``.
        """
        if self.config.private_to_all_sockets:
            return list(self._key_conns.get(acct.api_key, ()))
        return [c for c in self._subs.get(channel, ()) if c.account is acct]

    def _order_event(self, order: Order) -> dict[str, Any]:
        event = order.event()
        if self._sparse_orders:
            # What the real server sends when its order serializer lacks these fields.
            event.update(symbol="", side="", type="", quantity="0")
        return event

    def _push_orders(self, acct: Account, orders: list[Order]) -> None:
        traded = False
        subs = self._private_targets(acct, "orders")
        for order in orders:
            traded = traded or (
                order.executed_quantity > 0
                and order.status
                in (
                    "partially_filled",
                    "filled",
                )
            )
            if subs:
                frame = _json_encode({"channel": "orders", "data": self._order_event(order)})
                for c in subs:
                    c.send(frame)
        if traded:
            self._push_portfolio(acct)

    def _push_portfolio(self, acct: Account) -> None:
        subs = self._private_targets(acct, "portfolio")
        if subs:
            frame = _json_encode({"channel": "portfolio", "data": self._snapshot(acct)})
            for c in subs:
                c.send(frame)

    def _snapshot(self, acct: Account) -> dict[str, str]:
        prices = {s: self.market.pairs[s].price_decimal() for s in acct.positions}
        return acct.snapshot(prices, iso_ms(self.now_ms()))

    def _build_firehose(self) -> None:
        """Pre-encode ticker frames for benchmark mode, 128 frames per socket write."""
        ts = self.now_ms()
        frames: list[bytes] = []
        for t in self.market.ticks(16_384, ts):
            pair = t.pair
            frames.append(
                _frame(
                    _json_encode(
                        {
                            "channel": "ticker",
                            "symbol": pair.symbol,
                            "data": {
                                "price": format_units(t.price, pair.price_dp),
                                "quantity": format_units(t.qty, pair.qty_dp),
                                "timestamp": iso_ms(t.ts_ms),
                                "is_buyer_maker": t.is_buyer_maker,
                            },
                        }
                    )
                )
            )
        n = self._firehose_per_chunk
        self._firehose_chunks = [b"".join(frames[i : i + n]) for i in range(0, len(frames), n)]

    # -- REST -------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "connections": len(self._conns)})

    def _rest_account(self, request: web.Request) -> Account:
        """The account of the request's ``X-API-Key``, as the platform's auth middleware.

        ``Authorization: Bearer`` carries a JWT on the platform, never an API key.
        """
        key = request.headers.get("X-API-Key", "").strip()
        if key:
            return self._account_or_raise(key)
        auth = request.headers.get("Authorization", "").strip()
        if auth.lower().startswith("bearer ") and auth[7:].strip():
            raise OrderError("INVALID_TOKEN", "JWT token is invalid: Not enough segments", 401)
        raise OrderError("INVALID_API_KEY", "Authentication credentials are required.", 401)

    def _prices(self, acct: Account) -> dict[str, Decimal]:
        return {s: self.market.pairs[s].price_decimal() for s in acct.positions}

    async def _rest_place(self, request: web.Request) -> web.Response:
        try:
            acct = self._rest_account(request)
            req = parse_order_body(await _json_body(request))
            order = acct.place_request(self.market, req, self.now_ms())
        except OrderError as exc:
            return _rest_error(exc)
        self._push_orders(acct, [order])
        return web.json_response(_order_response(order, req), status=201)

    async def _rest_cancel(self, request: web.Request) -> web.Response:
        try:
            acct = self._rest_account(request)
            oid = _order_id(request)
            unlocked = _unlocked(acct.get(oid))
            order = acct.cancel(oid, self.now_ms())
        except OrderError as exc:
            return _rest_error(exc)
        self._push_orders(acct, [order])
        return web.json_response(
            {
                "order_id": oid,
                "status": "cancelled",
                "unlocked_amount": str(unlocked),
                "cancelled_at": iso_us(self.now_ms()),
            }
        )

    async def _rest_cancel_all(self, request: web.Request) -> web.Response:
        try:
            acct = self._rest_account(request)
        except OrderError as exc:
            return _rest_error(exc)
        open_orders = [o for o in acct.newest_first() if o.open]
        # The platform sums what it unlocks over (at most) 500 open orders, then its
        # engine cancels (at most) 200 of them.
        total = sum((_unlocked(o) for o in open_orders[:500]), Decimal("0"))
        now = self.now_ms()
        cancelled = [acct.cancel(o.order_id, now) for o in open_orders[:200]]
        if cancelled:
            self._push_orders(acct, cancelled)
        return web.json_response({"cancelled_count": len(cancelled), "total_unlocked": str(total)})

    async def _rest_order(self, request: web.Request) -> web.Response:
        try:
            acct = self._rest_account(request)
            order = acct.get(_order_id(request))
        except OrderError as exc:
            return _rest_error(exc)
        return web.json_response(order.detail())

    async def _rest_orders(self, request: web.Request) -> web.Response:
        try:
            acct = self._rest_account(request)
            limit, offset = _page(request, 500)
        except OrderError as exc:
            return _rest_error(exc)
        status = request.query.get("status") or None
        symbol = (request.query.get("symbol") or "").upper() or None
        rows = [
            o
            for o in acct.newest_first()
            if (status is None or o.status == status) and (symbol is None or o.symbol == symbol)
        ]
        return _order_list(rows[offset : offset + limit], limit, offset)

    async def _rest_open_orders(self, request: web.Request) -> web.Response:
        try:
            acct = self._rest_account(request)
            limit, offset = _page(request, 200)
        except OrderError as exc:
            return _rest_error(exc)
        rows = [o for o in acct.newest_first() if o.open]
        return _order_list(rows[offset : offset + limit], limit, offset)

    async def _rest_portfolio(self, request: web.Request) -> web.Response:
        try:
            acct = self._rest_account(request)
        except OrderError as exc:
            return _rest_error(exc)
        return web.json_response(acct.portfolio(self._prices(acct), self.now_ms()))

    async def _rest_balance(self, request: web.Request) -> web.Response:
        try:
            acct = self._rest_account(request)
        except OrderError as exc:
            return _rest_error(exc)
        return web.json_response(acct.balances(self._prices(acct)))

    async def _rest_positions(self, request: web.Request) -> web.Response:
        try:
            acct = self._rest_account(request)
        except OrderError as exc:
            return _rest_error(exc)
        items = acct.position_items(self._prices(acct))
        total = sum((Decimal(p["unrealized_pnl"]) for p in items), Decimal("0"))
        return web.json_response({"positions": items, "total_unrealized_pnl": str(total)})

    async def _rest_pairs(self, request: web.Request) -> web.Response:
        pairs = [
            {"symbol": p.symbol, "price_decimals": p.price_dp, "quantity_decimals": p.qty_dp}
            for p in self.market.pairs.values()
        ]
        return web.json_response({"pairs": pairs})

    async def _rest_price(self, request: web.Request) -> web.Response:
        sym = request.match_info["symbol"].upper()
        pair = self.market.pairs.get(sym)
        if pair is None:
            return _rest_error(OrderError("INVALID_SYMBOL", f"unknown symbol {sym!r}", 404))
        return web.json_response(
            {"symbol": sym, "price": pair.price_str(), "timestamp": iso_ms(self.now_ms())}
        )

    # -- admin (fault injection over HTTP, loopback only) -----------------------------

    @staticmethod
    def _loopback_only(request: web.Request) -> None:
        if not is_loopback_address(request.remote):
            raise web.HTTPForbidden(text="the admin endpoint answers loopback clients only")

    async def _admin_state(self, request: web.Request) -> web.Response:
        self._loopback_only(request)
        return web.json_response(
            {
                "stats": msgspec.to_builtins(self.stats),
                "connections": [
                    {"id": r.id, "subscriptions": sorted(c.subs), "silent": c.silent}
                    for c in self._conns
                    for r in (c.record,)
                ],
                "refusing": self._refuse_status,
                "rest_failing": self._rest_outage.state(),
                "sparse_order_events": self._sparse_orders,
                "tradier": self.tradier.state(),  # Tradier front-end
                "tastytrade": self.tastytrade.state(),  # tastytrade front-end
            }
        )

    async def _admin_fault(self, request: web.Request) -> web.Response:
        self._loopback_only(request)
        fault = request.match_info["fault"]
        try:
            raw = await request.read()
            params = _json_decode(raw) if raw else {}
            if not isinstance(params, dict):
                raise TypeError("parameters must be a JSON object")
            result: object
            if fault == "drop":
                result = await self.drop_connections(params.get("code"), params.get("reason", ""))
            elif fault == "silence":
                result = self.go_silent(params.get("seconds"))
            elif fault == "resume":
                self.resume()
                result = None
            elif fault == "malformed":
                payload = params.get("payload", '{"channel":"ticker","data":')
                result = self.send_raw(payload, binary=bool(params.get("binary", False)))
            elif fault == "refuse":
                self.refuse_handshakes(
                    int(params.get("status", 503)),
                    seconds=params.get("seconds"),
                    count=params.get("count"),
                )
                result = None
            elif fault == "accept":
                self.accept_handshakes()
                result = None
            elif fault == "rest_fail":
                seconds, count = params.get("seconds"), params.get("count")
                self.fail_rest(
                    int(params.get("status", 503)),
                    seconds=None if seconds is None else float(seconds),
                    count=None if count is None else int(count),
                )
                result = None
            elif fault == "rest_ok":
                self.heal_rest()
                result = None
            elif fault == "revoke":
                result = await self.revoke_key(str(params["api_key"]))
            elif fault == "restore":
                self.add_key(str(params["api_key"]))
                result = None
            elif fault == "sparse":
                enabled = params.get("enabled", True)
                if not isinstance(enabled, bool):
                    raise TypeError("enabled must be true or false")
                self.sparse_order_events(enabled)
                result = None
            elif fault.startswith("tradier_"):  # Tradier front-end faults
                known, result = self.tradier.admin_fault(fault, params)
                if not known:
                    return web.json_response({"error": f"unknown fault {fault!r}"}, status=404)
            elif fault.startswith("tastytrade_"):  # tastytrade front-end faults
                known, result = self.tastytrade.admin_fault(fault, params)
                if not known:
                    return web.json_response({"error": f"unknown fault {fault!r}"}, status=404)
            elif fault == "restart":
                downtime = float(params.get("downtime", 1.0))
                # Answer first: the restart drops this very server.
                asyncio.get_running_loop().call_later(
                    0.05, lambda: asyncio.ensure_future(self.restart(downtime))
                )
                result = None
            else:
                return web.json_response({"error": f"unknown fault {fault!r}"}, status=404)
        except (KeyError, TypeError, ValueError, msgspec.DecodeError) as exc:
            return web.json_response({"error": f"bad parameters: {exc}"}, status=400)
        return web.json_response({"fault": fault, "result": result})


def is_loopback_address(remote: str | None) -> bool:
    """True for a loopback peer address (127.0.0.0/8, ::1, IPv4-mapped loopback).

    Example:
        >>> is_loopback_address("127.0.0.1"), is_loopback_address("10.0.0.5")
        (True, False)
    """
    if not remote:
        return False
    try:
        addr = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool(addr.is_loopback or (mapped is not None and mapped.is_loopback))


def _error(code: str, message: str) -> bytes:
    # The platform's error frames name no channel (its handler sends type, code and
    # message only): a client must pin a refusal on its oldest pending subscribe.
    return _json_encode({"type": "error", "code": code, "message": message})


def _rest_error(exc: OrderError) -> web.Response:
    """The platform's error answer: ``{"error": {...}}``, or FastAPI's 422 ``{"detail": [...]}``."""
    return web.json_response(exc.body(), status=exc.status)


async def _json_body(request: web.Request) -> Any:
    """The request body as FastAPI reads it for a JSON body parameter.

    JSON when the content type is JSON or absent; the raw text otherwise (which the
    schema then refuses); None when empty.

    Raises:
        RequestValidationError: JSON that does not parse (``json_invalid``).
    """
    raw = await request.read()
    if not raw:
        raise RequestValidationError(
            [{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}]
        )
    ctype = request.headers.get("Content-Type")
    if ctype:
        main, _, sub = ctype.split(";")[0].strip().lower().partition("/")
        if main != "application" or not (sub == "json" or sub.endswith("+json")):
            return raw.decode("utf-8", "replace")
    try:
        return json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        pos, msg = getattr(exc, "pos", 0), getattr(exc, "msg", str(exc))
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ["body", pos],
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": msg},
                }
            ]
        ) from None


def _order_response(order: Order, req: OrderRequest) -> dict[str, Any]:
    """``OrderResponse`` (the 201 of POST /trade/order): every field, the unused ones null.

    Filled (market): ``requested_quantity`` ... ``filled_at``; pending: ``quantity``,
    ``price``, ``locked_amount``, ``created_at``. Amounts as the request gave them.
    """
    out: dict[str, Any] = {
        "order_id": order.order_id,
        "status": order.status,
        "symbol": order.symbol,
        "side": order.side,
        "type": order.type,
    }
    filled = dict.fromkeys(
        (
            "requested_quantity",
            "executed_quantity",
            "executed_price",
            "slippage_pct",
            "fee",
            "total_cost",
            "filled_at",
        )
    )
    pending = dict.fromkeys(("quantity", "price", "locked_amount", "created_at"))
    if order.status == "filled" and order.executed_price is not None:
        cost = order.executed_price * order.executed_quantity
        filled.update(
            requested_quantity=str(req.quantity),
            executed_quantity=str(req.quantity),
            executed_price=str(order.executed_price),
            slippage_pct=str(order.slippage_pct),
            fee=str(order.fee),
            total_cost=str(cost + order.fee if order.side == "buy" else cost - order.fee),
            filled_at=iso_us(order.filled_ms or order.created_ms),
        )
        out["status"] = "filled"
    else:
        locked: Decimal | None = None
        if req.price is not None:
            gross = req.quantity * req.price
            locked = gross + gross * FEE_RATE if req.side == "buy" else req.quantity
        pending.update(
            quantity=str(req.quantity),
            price=None if req.price is None else str(req.price),
            locked_amount=None if locked is None else str(locked),
            created_at=iso_us(order.created_ms),
        )
        out["status"] = "pending"
    return out | filled | pending


def _unlocked(order: Order) -> Decimal:
    """What the platform reports it unlocks when ``order`` is cancelled (from its columns)."""
    if order.price is None:
        return Decimal("0")
    q8 = order.quantity.quantize(Decimal("0.00000001"))
    if order.side == "buy":
        gross = q8 * order.price.quantize(Decimal("0.00000001"))
        return gross + gross * FEE_RATE
    return q8


def _order_list(rows: list[Order], limit: int, offset: int) -> web.Response:
    """``OrderListResponse``. ``total`` is the length of this page, as the platform counts."""
    return web.json_response(
        {"orders": [o.detail() for o in rows], "total": len(rows), "limit": limit, "offset": offset}
    )


def _query_int(
    request: web.Request, name: str, default: int, ge: int, le: int | None
) -> tuple[int, dict[str, Any] | None]:
    """A bounded integer query parameter, or pydantic's error for it."""
    raw = request.query.get(name)
    if raw is None:
        return default, None
    loc = ["query", name]
    try:
        value = int(raw.strip())
    except ValueError:
        msg = "Input should be a valid integer, unable to parse string as an integer"
        return default, {"type": "int_parsing", "loc": loc, "msg": msg, "input": raw}
    if value < ge:
        return default, {
            "type": "greater_than_equal",
            "loc": loc,
            "msg": f"Input should be greater than or equal to {ge}",
            "input": raw,
            "ctx": {"ge": ge},
        }
    if le is not None and value > le:
        return default, {
            "type": "less_than_equal",
            "loc": loc,
            "msg": f"Input should be less than or equal to {le}",
            "input": raw,
            "ctx": {"le": le},
        }
    return value, None


def _page(request: web.Request, max_limit: int) -> tuple[int, int]:
    """``limit`` (1 to ``max_limit``, default 100) and ``offset`` (0 or more).

    Raises:
        RequestValidationError: either is not such an integer (HTTP 422).
    """
    limit, e1 = _query_int(request, "limit", 100, 1, max_limit)
    offset, e2 = _query_int(request, "offset", 0, 0, None)
    errors = [e for e in (e1, e2) if e is not None]
    if errors:
        raise RequestValidationError(errors)
    return limit, offset


_UUID_CHARS = frozenset("0123456789abcdefABCDEF-")


def _order_id(request: web.Request) -> str:
    """The ``{order_id}`` path parameter as a canonical UUID string.

    Raises:
        RequestValidationError: it is not a UUID (HTTP 422, as FastAPI answers).
    """
    raw = request.match_info["order_id"]
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        bad = next((i for i, c in enumerate(raw) if c not in _UUID_CHARS), None)
        if bad is not None:
            why = (
                "invalid character: expected an optional prefix of `urn:uuid:` followed by "
                f"[0-9a-fA-F-], found `{raw[bad]}` at {bad + 1}"
            )
        else:
            why = f"invalid length: expected length 32 for simple format, found {len(raw)}"
        raise RequestValidationError(
            [
                {
                    "type": "uuid_parsing",
                    "loc": ["path", "order_id"],
                    "msg": f"Input should be a valid UUID, {why}",
                    "input": raw,
                    "ctx": {"error": why},
                }
            ]
        ) from None
