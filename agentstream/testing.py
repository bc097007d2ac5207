"""Test a bot: a simulated exchange on its own thread, and a feed that runs handlers offline.

:class:`RunningSim` runs a :class:`~agentstream.sim.SimExchange` (every venue: AgentExchange,
Tradier, tastytrade) on a free 127.0.0.1 port, in a background thread with its own event
loop, so sync tests, anyio tests, pytest-asyncio tests and a bot's ``run_forever()``
thread can all use it. :class:`Feed` pushes frames, as the venue sends them, through a
client's real registration and dispatch path with no network, and returns once the
handlers have run.

The pytest plugin (loaded by pytest by itself once agentstream is installed) hands these
out as fixtures: ``agentstream_sim``, ``agentstream_sim_config``, ``agentstream_feed``
and ``agentstream_client_options``; see ``docs/testing.md``.

Example:
    >>> from agentstream import AgentExchangeWS
    >>> from agentstream.testing import RunningSim
    >>> with RunningSim() as sim:
    ...     ws = AgentExchangeWS(sim.api_key, sim.url)
    ...     order = sim.call(sim.rest.place_order, "BTCUSDT", "buy", "0.01")
    ...     sim.call(sim.exchange.drop_connections)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ParamSpec, Self, TypeVar, overload

import anyio
import anyio.from_thread
import anyio.to_thread
import msgspec

from agentstream._dispatch import is_async_callable
from agentstream._supervisor import Link
from agentstream.client import AgentExchangeWS
from agentstream.errors import ConfigurationError
from agentstream.rest import AgentExchangeREST
from agentstream.sim import (
    DEMO_API_KEY,
    TASTYTRADE_DEMO_ACCOUNT,
    TASTYTRADE_DEMO_TOKEN,
    TRADIER_DEMO_ACCOUNT,
    TRADIER_DEMO_TOKEN,
    SimConfig,
    SimExchange,
)
from agentstream.tastytrade.rest import TastytradeREST
from agentstream.tradier.rest import TradierREST

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Mapping
    from types import TracebackType

    from agentstream._client import StreamClient
    from agentstream._router import Router
    from agentstream._supervisor import LinkConfig, LinkHost

__all__ = ["FAST_CLIENT", "FAST_SIM", "Feed", "RunningSim", "fast_sim_config"]

P = ParamSpec("P")
T = TypeVar("T")

#: Simulated exchange settings for tests: a fast market (a 1m candle closes every
#: second), orders filled within tens of milliseconds, frequent pings, heartbeats and
#: portfolio snapshots.
FAST_SIM: Mapping[str, Any] = MappingProxyType(
    {
        "tick_rate": 500.0,
        "speed": 60.0,
        "ping_interval": 1.0,
        "pong_timeout": 2.0,
        "order_interval": 0.02,
        "portfolio_interval": 0.5,
        "tradier_heartbeat_interval": 1.0,
    }
)

#: Client options for tests: reconnect within tens of milliseconds, no jitter, short
#: connect and close timeouts. Pass them to any venue's client: ``AgentExchangeWS(key,
#: url, **FAST_CLIENT)``.
FAST_CLIENT: Mapping[str, Any] = MappingProxyType(
    {
        "backoff_initial": 0.02,
        "backoff_max": 0.2,
        "backoff_jitter": 0.0,
        "connect_timeout": 2.0,
        "close_timeout": 0.2,
    }
)


def fast_sim_config(**overrides: Any) -> SimConfig:
    """A :class:`~agentstream.sim.SimConfig` with :data:`FAST_SIM`, then ``overrides``.

    Example:
        >>> fast_sim_config(speed=600).speed
        600
    """
    return SimConfig(**{**FAST_SIM, **overrides})


def _in_async_context() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class RunningSim:
    """A simulated exchange with every venue, in a background thread with its own loop.

    Touch the exchange only through :meth:`call` (from sync code) or :meth:`acall` (from
    async code): they run a function or coroutine function on the sim's loop and return
    its result, e.g. the fault injections of :class:`~agentstream.sim.SimExchange`.

    Args:
        config: the settings (default :func:`fast_sim_config`); the host must stay
            127.0.0.1 or localhost.
        overrides: single :class:`~agentstream.sim.SimConfig` fields.

    Example:
        >>> with RunningSim(speed=600) as sim:
        ...     sim.call(sim.exchange.refuse_handshakes, 503, count=2)
        ...     order = sim.call(sim.rest.place_order, "ETHUSDT", "buy", "0.1")
    """

    def __init__(self, config: SimConfig | None = None, **overrides: Any) -> None:
        self.config = replace(config or fast_sim_config(), **overrides)
        if self.config.host not in ("127.0.0.1", "localhost"):
            raise ConfigurationError(f"a test sim listens on 127.0.0.1, not {self.config.host}")
        self._stack = contextlib.ExitStack()
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._exchange: SimExchange | None = None
        #: The demo credentials (valid unless ``config`` replaced them).
        self.api_key = DEMO_API_KEY
        self.tradier_token = TRADIER_DEMO_TOKEN
        self.tradier_account = TRADIER_DEMO_ACCOUNT
        self.tastytrade_token = TASTYTRADE_DEMO_TOKEN
        self.tastytrade_account = TASTYTRADE_DEMO_ACCOUNT
        self._rest: list[AgentExchangeREST | TradierREST | TastytradeREST] = []

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> Self:
        """Start the exchange (returns once it listens); idempotent."""
        if self._portal is not None:
            return self
        portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal("asyncio"))
        self._portal = portal
        try:
            self._exchange = portal.call(self._start)
        except BaseException:
            self._portal = None
            self._stack.close()
            raise
        base = self._exchange.http_url
        #: Ready REST clients for the demo accounts (see :meth:`call`).
        self.rest = AgentExchangeREST(self.api_key, base)
        self.tradier_rest = TradierREST(
            self.tradier_token, base_url=base, account=self.tradier_account
        )
        self.tastytrade_rest = TastytradeREST(self.tastytrade_token, base_url=base)
        self._rest = [self.rest, self.tradier_rest, self.tastytrade_rest]
        return self

    async def _start(self) -> SimExchange:
        sim = SimExchange(self.config)
        await sim.start()
        return sim

    def close(self) -> None:
        """Stop the exchange and its thread (REST clients used through :meth:`call` are
        closed); idempotent."""
        portal, self._portal = self._portal, None
        if portal is None:
            return
        try:
            portal.call(self._close)
        finally:
            self._stack.close()

    async def _close(self) -> None:
        for client in self._rest:
            await client.aclose_on_this_loop()
        if self._exchange is not None:
            await self._exchange.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self._exchange.url if self._exchange is not None else "not started"
        return f"<RunningSim {where}>"

    # -- where it is ------------------------------------------------------------------

    @property
    def exchange(self) -> SimExchange:
        """The :class:`~agentstream.sim.SimExchange` (call its methods with :meth:`call`)."""
        if self._exchange is None or self._portal is None:
            raise RuntimeError("the simulated exchange is not running")
        return self._exchange

    @property
    def url(self) -> str:
        """The WebSocket base URL, for ``AgentExchangeWS(key, url)``."""
        return self.exchange.url

    @property
    def http_url(self) -> str:
        """The REST root, for ``TradierStream(token, base_url=...)`` and REST clients."""
        return self.exchange.http_url

    @property
    def tastytrade_url(self) -> str:
        """The tastytrade streamer URL, for ``TastytradeStream(token, url=...)``."""
        return f"{self.exchange.url}/tastytrade"

    def ws_url(self, api_key: str = DEMO_API_KEY) -> str:
        """The full AgentExchange endpoint with ``api_key`` (for plain WebSocket clients)."""
        return self.exchange.ws_url(api_key)

    # -- calling into it --------------------------------------------------------------

    @overload
    def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T: ...
    @overload
    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...
    def call(self, fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run ``fn(*args, **kwargs)`` on the sim's loop and return its result (a
        coroutine function is awaited there). Blocks the calling thread meanwhile.

        Raises:
            RuntimeError: the sim is not running, or ``fn`` is a coroutine function and
                the caller is async code (its loop would be blocked while the sim waits
                for it, e.g. for a close handshake): use :meth:`acall` there.

        Example:
            >>> sim.call(sim.exchange.drop_connections, 1012)
            1
            >>> sim.call(sim.tradier_rest.place_order, "AAPL", "buy", 2)
        """
        portal = self._running()
        if is_async_callable(fn) and _in_async_context():
            raise RuntimeError(
                "RunningSim.call() would block this event loop while the sim awaits; "
                "in async code use `await sim.acall(...)`"
            )
        return portal.call(functools.partial(fn, *args, **kwargs))

    @overload
    async def acall(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...
    @overload
    async def acall(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...
    async def acall(self, fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Any:
        """:meth:`call` for async tests: waits without blocking the caller's loop.

        Example:
            >>> await sim.acall(sim.exchange.drop_connections)
        """
        portal = self._running()
        job = functools.partial(portal.call, functools.partial(fn, *args, **kwargs))
        return await anyio.to_thread.run_sync(job)

    def _running(self) -> anyio.from_thread.BlockingPortal:
        if self._portal is None:
            raise RuntimeError("the simulated exchange is not running")
        return self._portal


class _OfflineLink(Link):
    """A link with no socket: up, proven and subscribed at once, until cancelled."""

    def __init__(
        self,
        host: LinkHost,
        router: Router,
        config: LinkConfig,
        index: int,
        online: threading.Event,
    ) -> None:
        super().__init__(host, router, config, index)
        self._online = online

    async def run(self) -> None:
        self.host.link_up(self, False)
        self.host.link_proven(self)
        self.host.link_ready(self, False)
        self._online.set()
        await anyio.sleep_forever()


class Feed:
    """Runs a client with no network and pushes frames through its real dispatch.

    Frames go where a socket's frames go: the venue's decoder, the routes of the
    registered handlers, typed models or dicts, sync, async and ``thread=True`` handlers,
    ``on_error`` for a handler that raises, ``ws.stats``. The client runs as with
    ``run_forever()``, in a thread of its own; ``on_connect`` hooks run once at
    :meth:`start`. :meth:`send` returns once every handler and hook has finished.

    Tradier clients look orders up over REST when ``enrich`` is on: give them
    ``enrich=False`` (or a ``base_url`` at a running sim).

    Args:
        ws: a client of any venue with its handlers registered, not running.
        timeout: seconds :meth:`start` and :meth:`send` may take.

    Raises:
        ConfigurationError: ``ws`` is running already.

    Example:
        >>> ws = AgentExchangeWS("ak_test_key")
        >>> seen = []
        >>> ws.on_ticker("BTCUSDT")(seen.append)
        >>> with Feed(ws) as feed:
        ...     feed.event("ticker:BTCUSDT", {"price": "64000.5", "volume": "0.1",
        ...                                   "timestamp": "2026-01-01T00:00:00Z"})
        >>> seen[0]["price"]
        '64000.5'
    """

    def __init__(self, ws: StreamClient, *, timeout: float = 5.0) -> None:
        self.ws = ws
        self.timeout = timeout
        self._online = threading.Event()
        self._thread: threading.Thread | None = None
        self._link: _OfflineLink | None = None
        self._feed: Callable[[list[str | bytes]], list[str] | None] | None = None
        self._calls = 0
        self._calls_lock = threading.Lock()
        self._error: BaseException | None = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> Self:
        """Start the client offline; returns once its handlers are ready for frames."""
        ws = self.ws
        if self._thread is not None:
            return self
        if ws.stats.state in ("connecting", "connected", "reconnecting"):
            raise ConfigurationError("the client is running; a Feed runs it itself")
        ws._link_factory = self._make_link
        ws._wrap_calls(self._counted)
        self._thread = threading.Thread(target=self._run, name="agentstream-feed", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.timeout
        while not self._online.wait(0.01):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise self._error or TimeoutError("the client did not start")
        while ws.portal is None and self._thread.is_alive():
            time.sleep(0.001)  # set just before the run starts the links
        assert self._link is not None
        self._feed = self._link.router.feed_for(self._link)
        self._portal_call(self._settle)
        return self

    def _run(self) -> None:
        try:
            self.ws.run_forever()
        except BaseException as exc:
            self._error = exc

    def _make_link(self, host: LinkHost, router: Router, config: LinkConfig, index: int) -> Link:
        link = _OfflineLink(host, router, config, index, self._online)
        if self._link is None:
            self._link = link
        return link

    def stop(self) -> None:
        """Stop the client and take the feed's seams off it (it can run for real then)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self.ws.stop(self.timeout)
        thread.join(self.timeout)
        self.ws._wrap_calls(None)
        self.ws._link_factory = Link

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- feeding ----------------------------------------------------------------------

    def send(self, *frames: Mapping[str, Any] | str | bytes) -> None:
        """Deliver ``frames`` as if one socket read them, in order; return once the
        handlers (and the hooks they caused, such as ``on_error``) have finished.

        A frame is the whole message as the venue sends it: a dict (sent as JSON), or
        the text itself (malformed frames too: they are dropped and counted, as live).

        Raises:
            TimeoutError: the handlers did not finish within ``timeout`` seconds.

        Example:
            >>> feed.send({"channel": "orders", "data": {"order_id": "o1", "status": "filled",
            ...            "symbol": "BTCUSDT", "side": "buy", "type": "market",
            ...            "quantity": "0.01"}})
        """
        texts = [_text(f) for f in frames]
        self._portal_call(self._deliver, texts)

    async def asend(self, *frames: Mapping[str, Any] | str | bytes) -> None:
        """:meth:`send` for async tests (the caller's loop keeps running meanwhile)."""
        await anyio.to_thread.run_sync(functools.partial(self.send, *frames))

    def event(self, channel: str, data: Mapping[str, Any]) -> None:
        """An AgentExchange event: ``data`` on ``channel`` (``ticker:BTCUSDT``,
        ``candles:BTCUSDT:1m``, ``orders``, ``portfolio``), framed as the server does.

        Raises:
            ConfigurationError: the client is not an ``AgentExchangeWS`` (use :meth:`send`
                with the venue's whole message).

        Example:
            >>> feed.event("portfolio", {"total_equity": "10000", "available_cash": "10000",
            ...                          "unrealized_pnl": "0", "realized_pnl": "0"})
        """
        if not isinstance(self.ws, AgentExchangeWS):
            raise ConfigurationError(
                f"event() frames AgentExchange messages; send {type(self.ws).__name__} "
                "frames whole with send()"
            )
        kind, _, rest = channel.partition(":")
        symbol, _, interval = rest.partition(":")
        frame: dict[str, Any] = {"channel": kind}
        if symbol:
            frame["symbol"] = symbol
        if interval:
            frame["interval"] = interval
        frame["data"] = dict(data)
        self.send(frame)

    def wait(self) -> None:
        """Return once every handler and hook is idle (e.g. after a handler subscribed
        or a hook was queued from another thread)."""
        self._portal_call(self._settle)

    # -- on the client's loop ---------------------------------------------------------

    async def _deliver(self, frames: list[str | bytes]) -> None:
        assert self._feed is not None
        self._feed(frames)
        await self._settle()

    async def _settle(self) -> None:
        """Until nothing is queued or running: no event in a handler's queue, no call in
        progress, no worker thread busy, and every task of the loop waiting."""
        limiter = anyio.to_thread.current_default_thread_limiter()
        with anyio.fail_after(self.timeout):
            quiet = 0
            while quiet < 2:  # twice in a row: a task woken by the last check ran too
                await _all_tasks_waiting()
                if self._calls or self.ws.stats.queued or limiter.borrowed_tokens:
                    quiet = 0
                    await anyio.sleep(0.001)
                else:
                    quiet += 1

    def _portal_call(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        portal = self.ws.portal
        if self._thread is None or portal is None:
            raise RuntimeError("the feed is not running (use `with Feed(ws) as feed:`)")
        portal.call(fn, *args)

    # -- counting handler calls -------------------------------------------------------

    def _counted(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if is_async_callable(fn):

            async def acounted(*args: Any) -> Any:
                self._enter()
                try:
                    return await fn(*args)
                finally:
                    self._exit()

            return acounted

        def counted(*args: Any) -> Any:
            self._enter()
            try:
                return fn(*args)
            finally:
                self._exit()

        return counted

    def _enter(self) -> None:
        with self._calls_lock:
            self._calls += 1

    def _exit(self) -> None:
        with self._calls_lock:
            self._calls -= 1


def _text(frame: Mapping[str, Any] | str | bytes) -> str | bytes:
    if isinstance(frame, str | bytes):
        return frame
    return msgspec.json.encode(frame).decode()


async def _all_tasks_waiting() -> None:
    """Return once every other task of the loop waits on a future (anyio's
    ``wait_all_tasks_blocked``, polling every millisecond instead of 100)."""
    await asyncio.sleep(0)
    me = asyncio.current_task()
    while True:
        for task in asyncio.all_tasks():
            if task is me:
                continue
            waiter = getattr(task, "_fut_waiter", None)
            if waiter is None or waiter.done():
                await asyncio.sleep(0.001)
                break
        else:
            return


def _marker_overrides(markers: Iterator[Any]) -> dict[str, Any]:
    """The keyword arguments of ``agentstream_sim`` markers, the closest winning."""
    out: dict[str, Any] = {}
    for marker in reversed(list(markers)):
        if marker.args:
            raise ConfigurationError(
                "@pytest.mark.agentstream_sim takes SimConfig fields as keywords only"
            )
        out.update(marker.kwargs)
    return out
