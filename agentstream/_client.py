"""The shared client: registration, hooks, run modes, ``listen``, stats, link placement.

Every venue's client class (``AgentExchangeWS``, ...) is a thin subclass of
:class:`StreamClient` that names its decorators and builds its protocol object; all the
behaviour lives here and in the core modules it drives, which know no venue.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import msgspec

from agentstream._dispatch import (
    HookRunner,
    SharedWorker,
    Slot,
    callable_name,
    conflation_key_for,
    first_param_model,
)
from agentstream._recovery import Ledger, RecoverySink
from agentstream._redact import mask_secret
from agentstream._router import (
    DerivedSink,
    Route,
    Router,
    SinkBase,
    complete_dict,
    event_time,
)
from agentstream._supervisor import Link, LinkConfig
from agentstream.backoff import Backoff
from agentstream.channels import Channel
from agentstream.errors import (
    AgentStreamError,
    AuthenticationError,
    ConfigurationError,
    HandlerError,
    StreamConnectionError,
)
from agentstream.orders import OrderEvent, OrderStatus
from agentstream.transport import Connection, Transport

if TYPE_CHECKING:
    import ssl as _ssl

    from agentstream.models import Gap
    from agentstream.protocols.base import VenueProtocol

__all__ = ["Credential", "Stats", "StreamClient"]

H = TypeVar("H", bound=Callable[..., Any])
E = TypeVar("E")
#: A credential: the string itself, or a sync or async callable returning the current one.
Credential = str | Callable[[], str] | Callable[[], Awaitable[str]]


@dataclass(frozen=True)
class Stats:
    """A snapshot of the client's counters (``ws.stats``).

    Example:
        >>> s = ws.stats
        >>> s.state, s.messages_total, s.reconnects, s.last_message_age
        ('connected', 1532, 0, 0.004)
    """

    #: ``idle``, ``connecting``, ``connected``, ``reconnecting``, ``stopped`` or ``failed``.
    state: str
    #: Connections open now (more than one when a socket's channel limit is reached).
    connections: int
    #: Successful reconnects since the client started.
    reconnects: int
    #: Failed connection attempts (refused, timed out, HTTP 5xx, ...).
    failed_attempts: int
    #: Data messages received, per channel key (``ticker:BTCUSDT``, ``orders``, ...).
    messages: dict[str, int] = field(default_factory=dict)
    messages_total: int = 0
    #: Control messages (pings, acks, errors) received.
    control_messages: int = 0
    pings: int = 0
    #: Frames dropped because they were not JSON or not of a known shape.
    dropped_frames: int = 0
    #: Events dropped because they failed the typed model's validation.
    invalid_events: int = 0
    #: Exceptions raised by handlers (each also reported to ``on_error``).
    handler_errors: int = 0
    #: Older ticker / in-progress candle events replaced by newer ones for slow handlers.
    conflated: int = 0
    #: ``error`` messages from the server.
    server_errors: int = 0
    #: Gaps reported to ``on_gap`` (a channel down across a reconnect).
    gaps: int = 0
    #: Events waiting in handler queues.
    queued: int = 0
    #: Seconds since the last frame of any kind; None before the first.
    last_message_age: float | None = None
    #: Heartbeat messages from the server (venues that send them instead of pings).
    heartbeats: int = 0
    #: Private events (orders, portfolio) received again on a second socket, and order
    #: states delivered already (by recovery, or a replay), that were not delivered twice.
    duplicate_events: int = 0
    #: Order updates delivered by recovery after a reconnect (read over REST).
    recovered_orders: int = 0
    #: Events waiting in handler queues, per channel key (a ``listen(Model)`` without a
    #: symbol counts under its kind's name); only channels with a handler.
    queued_by_channel: dict[str, int] = field(default_factory=dict)
    #: ``conflated`` per channel key (kept after the handler is removed).
    conflated_by_channel: dict[str, int] = field(default_factory=dict)
    #: ``handler_errors`` per channel key.
    handler_errors_by_channel: dict[str, int] = field(default_factory=dict)
    #: ``gaps`` per channel key (the key the gap was reported for).
    gaps_by_channel: dict[str, int] = field(default_factory=dict)


class StreamClient:
    """A supervised stream with decorator-registered handlers, for any venue.

    Venue classes subclass it (see :class:`~agentstream.AgentExchangeWS`): they build the
    venue's protocol object and name its decorators; everything else is here.

    Args:
        protocol: the venue's protocol object (sans I/O).
        credential: the API key or token, or a sync or async callable returning the
            current one (read for every connection and every message that carries it).
            Never logged or shown in reprs.
        stale_timeout: seconds without any frame before the socket is declared dead
            (default: the venue's).
        connect_timeout: seconds a connection attempt (TCP, TLS, handshake) may take.
        close_timeout: seconds to wait for the server's close answer when stopping.
        backoff_initial, backoff_max, backoff_factor, backoff_jitter: the reconnect
            schedule (default 1 s doubling to 60 s plus up to 10 % jitter); each can
            also be set by ``AGENTSTREAM_BACKOFF_INITIAL`` / ``_MAX`` / ``_FACTOR`` /
            ``_JITTER``.
        healthy_after: seconds a connection must live (if no data flowed) before the
            backoff resets; defaults to the stale timeout.
        queue_size: events a ticker or forming-candle handler registered with
            ``every=True`` may fall behind before older events of the same symbol are
            conflated (by default such a handler keeps only the newest event per symbol
            pending). Private events (orders, portfolio) are never dropped.
        max_subscriptions_per_connection: channels per socket (default: the venue's);
            more channels open more sockets.
        max_message_size: frames larger than this end the connection (it is re-opened).
        ssl: an ``ssl.SSLContext`` for ``wss://``; by default certificates are verified
            against the system's trust store.
        logger: logger to use instead of ``logging.getLogger("agentstream")``.
        max_attempts, give_up_after: stop for good (``connect()`` raises the last
            ``StreamConnectionError``) after this many failed connection attempts in a
            row, or this many seconds of them; default: retry for ever (the SDK page's
            rule).
        recover_orders: after a reconnect (when no socket was up for a while), read the
            orders over REST and deliver, once and marked ``recovered``, every order
            update the stream missed, before the live ones (venues with a REST client).
    """

    def __init__(
        self,
        protocol: VenueProtocol,
        credential: Credential,
        *,
        stale_timeout: float | None = None,
        connect_timeout: float = 10.0,
        close_timeout: float = 0.5,
        backoff_initial: float | None = None,
        backoff_max: float | None = None,
        backoff_factor: float | None = None,
        backoff_jitter: float | None = None,
        healthy_after: float | None = None,
        queue_size: int = 10_000,
        max_subscriptions_per_connection: int | None = None,
        max_message_size: int = 1 << 20,
        ssl: _ssl.SSLContext | None = None,
        logger: logging.Logger | None = None,
        recover_orders: bool = True,
        max_attempts: int | None = None,
        give_up_after: float | None = None,
    ) -> None:
        if callable(credential):
            self.__credential: Credential = credential
        elif isinstance(credential, str) and credential.strip():
            self.__credential = credential
        else:
            raise ConfigurationError("the credential must be a non-empty string or a callable")
        if stale_timeout is None:
            stale_timeout = protocol.stale_timeout
        if max_subscriptions_per_connection is None:
            max_subscriptions_per_connection = protocol.max_subscriptions
        for name, value in (
            ("stale_timeout", stale_timeout),
            ("connect_timeout", connect_timeout),
            ("queue_size", queue_size),
            ("max_subscriptions_per_connection", max_subscriptions_per_connection),
            ("max_message_size", max_message_size),
        ):
            if value <= 0:
                raise ConfigurationError(f"{name} must be positive, got {value}")
        self._protocol = protocol
        self._kinds = protocol.kinds
        self._models = {spec.model: name for name, spec in self._kinds.items() if spec.model}
        if protocol.orders_kind is not None:
            # The cross-venue view: its handlers get the venue's events converted.
            self._models[OrderEvent] = protocol.orders_kind
        self._stale_timeout = float(stale_timeout)
        self._connect_timeout = float(connect_timeout)
        self._close_timeout = float(close_timeout)
        self._healthy_after = float(healthy_after if healthy_after is not None else stale_timeout)
        self._backoff_args = {
            "initial": backoff_initial,
            "maximum": backoff_max,
            "factor": backoff_factor,
            "jitter": backoff_jitter,
        }
        Backoff.from_env(**self._backoff_args)  # validate now, not at the first reconnect
        self._queue_size = queue_size
        self._limit = max_subscriptions_per_connection
        self._max_message_size = max_message_size
        self._ssl = ssl
        self.log = logger or logging.getLogger("agentstream")
        self._link_config = LinkConfig(
            protocol=protocol,
            stale_timeout=self._stale_timeout,
            close_timeout=self._close_timeout,
            healthy_after=self._healthy_after,
            new_backoff=lambda: Backoff.from_env(**self._backoff_args),
        )

        self._lock = threading.RLock()
        self._slots: dict[str, list[Slot]] = {}
        self._kind_listeners: dict[str, list[Slot]] = {}
        self._explicit: dict[str, Channel] = {}
        self._channels: dict[str, Channel] = {}
        self._host = _Host(self)
        self._router = Router(self._host, protocol)
        self._links: list[Link] = []
        self._placement: dict[str, Link] = {}
        self._running_slots: set[Slot] = set()
        #: Every listen() iterator's slot, to wake them when they must end.
        self._listen_slots: set[Slot] = set()
        #: Channels the server refused that are built from a finer one: target -> source.
        self._derived: dict[str, Channel] = {}
        #: Order recovery: what each representation's handlers saw, and the sinks in front
        #: of them now.
        self._recover = recover_orders and protocol.orders_kind is not None
        self._ledgers: dict[bool, Ledger] = {False: Ledger(), True: Ledger()}
        self._order_sinks: dict[bool, RecoverySink] = {}
        self._recovery_due = False
        self._recovering = False
        self._recovered = 0
        self._started_at: datetime | None = None
        #: (target key, typed) -> (partial, the venue's aggregator for it).
        self._aggregators: dict[tuple[str, bool], tuple[bool, Callable[[Any], list[Any]]]] = {}

        self._hooks_connect: list[Callable[..., Any]] = []
        self._hooks_disconnect: list[Callable[..., Any]] = []
        self._hooks_reconnect: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._hooks_error: list[Callable[..., Any]] = []
        self._hooks_gap: list[Callable[..., Any]] = []
        self._hook_runner: HookRunner | None = None
        self._shared_worker: SharedWorker | None = None
        #: agentstream.testing's seams (see _wrap_calls): how links are made, and a
        #: wrapper put around every handler and hook (wrapper -> the user's callable).
        self._link_factory: Callable[[_Host, Router, LinkConfig, int], Link] = Link
        self._call_wrap: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None
        self._unwrapped: dict[Callable[..., Any], Callable[..., Any]] = {}

        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._ctx_tg: anyio.abc.TaskGroup | None = None
        self._transport: Transport | None = None
        self._stop_event: asyncio.Event | None = None
        self._done: asyncio.Event | None = None
        self._ready: asyncio.Event | None = None
        self._first_connected = asyncio.Event()
        self._stop_requested = False
        self._active = False
        #: Set while no run (connect(), run_forever(), async with) has claimed the client;
        #: cleared and checked under _lock so that two runs starting at once cannot both
        #: go on, and set again only once the run has finished all it does (for
        #: run_forever(), its event loop too): stop() waits for it, so that the client
        #: can run again as soon as stop() returned True.
        self._idle = threading.Event()
        self._idle.set()
        self._finished = threading.Event()
        self._finished.set()
        self._portal: anyio.from_thread.BlockingPortal | None = None
        self._fatal: BaseException | None = None
        #: The fatal error that ended the client (e.g. ``AuthenticationError``), else None.
        #: Kept after ``run_forever`` returns so the thread that started it can read it.
        self.error: BaseException | None = None
        self._state = "idle"

        self._handler_errors = 0
        self._handler_errors_by_channel: dict[str, int] = {}
        #: Events conflated by handlers since removed, per channel key (see Slot.retire).
        self._conflated: dict[str, int] = {}
        self._reconnects = 0
        self._failed_attempts = 0
        if max_attempts is not None and max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be at least 1, got {max_attempts}")
        if give_up_after is not None and give_up_after <= 0:
            raise ConfigurationError(f"give_up_after must be positive, got {give_up_after}")
        self._max_attempts = max_attempts
        self._give_up_after = give_up_after
        self._failing_since: float | None = None
        self._failing_count = 0

    @property
    def venue(self) -> str:
        """The venue's short name, as used in logs and metrics labels.

        Example:
            >>> AgentExchangeWS("ak_live_...").venue
            'agentexchange'
        """
        return self._protocol.venue

    def __repr__(self) -> str:
        cred = self.__credential
        shown = mask_secret(cred) if isinstance(cred, str) else "<callable>"
        return f"<{type(self).__name__} {self._protocol.venue} key={shown} state={self._state}>"

    # -- registration -----------------------------------------------------------------

    def _register(
        self,
        channel: Channel,
        handler: H | None,
        *,
        thread: bool,
        partial: bool = False,
        every: bool = False,
    ) -> H | Callable[[H], H]:
        def add(fn: H) -> H:
            if not callable(fn):
                raise ConfigurationError(f"a handler must be callable, not {type(fn).__name__}")
            _check_params(fn, 1, "a handler (it gets the event)")
            model = first_param_model(fn, self._models)
            if model is not None and self._models[model] != channel.kind:
                raise ConfigurationError(
                    f"{callable_name(fn)} takes a {model.__name__} but is registered for "
                    f"{channel.key}"
                )
            slot = self._new_slot(
                channel, fn, model=model, thread=thread, partial=partial, every=every
            )
            if slot.is_async and thread:
                raise ConfigurationError(
                    f"{slot.name} is async; thread=True is for blocking sync handlers"
                )
            with self._lock:
                if self._call_wrap is not None:
                    slot.fn = self._wrapped(fn)
                self._slots.setdefault(channel.key, []).append(slot)
                self._channels.setdefault(channel.key, channel)
            self._schedule_reconcile()
            return fn

        return add(handler) if handler is not None else add

    def _new_slot(
        self,
        channel: Channel,
        fn: Callable[[Any], Any],
        *,
        model: type[Any] | None,
        thread: bool,
        partial: bool,
        every: bool = False,
    ) -> Slot:
        """The slot of a handler being registered (its checks passed).

        A hook for clients that call handlers differently (the bus wraps each to
        acknowledge the entry once the handler returned).
        """
        return Slot(
            channel,
            fn,
            model=model,
            conflate=conflation_key_for(self._kinds[channel.kind]),
            thread=thread,
            partial=partial,
            max_queue=self._queue_size,
            every=every,
            report=self._handler_failed,
            conflated_into=self._conflated,
        )

    def _parse(self, channel: Channel | str) -> Channel:
        if isinstance(channel, Channel):
            return channel
        return self._protocol.channel_for(channel)

    def subscribe(self, *channels: Channel | str) -> None:
        """Subscribe channels without a handler (their events go to ``listen()``).

        Safe from any thread and from inside a handler; returns at once.

        Example:
            >>> ws.subscribe(Channel.ticker("BTCUSDT"), "candles:ETHUSDT:1m")
        """
        parsed = [self._parse(c) for c in channels]
        with self._lock:
            for ch in parsed:
                self._explicit[ch.key] = ch
                self._channels.setdefault(ch.key, ch)
        self._schedule_reconcile()

    def unsubscribe(self, *channels: Channel | str) -> None:
        """Stop channels: their handlers are removed and the server is told.

        Safe from any thread and from inside a handler; returns at once.

        Example:
            >>> ws.unsubscribe("ticker:BTCUSDT")
        """
        parsed = [self._parse(c) for c in channels]
        with self._lock:
            for ch in parsed:
                self._explicit.pop(ch.key, None)
                for slot in self._slots.pop(ch.key, []):
                    slot.stopped = True  # its worker is cancelled by _sync, on the loop
                    slot.retire()
        self._schedule_reconcile()

    def remove_handler(self, handler: Callable[..., Any]) -> int:
        """Remove every registration of ``handler``; return how many there were.

        A channel left with no handler is unsubscribed. Safe from any thread.

        Example:
            >>> ws.remove_handler(on_btc)
            1
        """
        removed = 0
        with self._lock:
            for key in list(self._slots):
                keep = []
                for slot in self._slots[key]:
                    fn = slot.fn
                    if fn is not None and (
                        self._unwrapped.get(fn, fn) is handler
                        or getattr(fn, "__wrapped__", None) is handler
                    ):
                        slot.stopped = True  # its worker is cancelled by _sync, on the loop
                        slot.retire()
                        removed += 1
                    else:
                        keep.append(slot)
                if keep:
                    self._slots[key] = keep
                else:
                    del self._slots[key]
        if removed:
            self._schedule_reconcile()
        return removed

    @property
    def channels(self) -> list[Channel]:
        """The channels wanted now (with a handler, a listener or an explicit subscribe)."""
        with self._lock:
            return [self._channels[k] for k in sorted(self._wanted_keys())]

    def _wanted_keys(self) -> set[str]:
        return {k for k, v in self._slots.items() if v} | set(self._explicit)

    # -- hooks ------------------------------------------------------------------------

    def on_connect(self, fn: H | None = None) -> Any:
        """Call ``fn()`` after each successful connection (first and reconnects).

        Example:
            >>> @ws.on_connect
            ... def connected():
            ...     print("connected")
        """
        return self._add_hook(self._hooks_connect, fn, 0)

    def on_disconnect(self, fn: H | None = None) -> Any:
        """Call ``fn(reason)`` each time a connection is lost (before reconnecting).

        Example:
            >>> @ws.on_disconnect
            ... def lost(reason: str):
            ...     print("lost:", reason)
        """
        return self._add_hook(self._hooks_disconnect, fn, 1)

    def on_reconnect(self, fn: Callable[..., Any], *args: Any) -> Callable[..., Any]:
        """Call ``fn(ws, *args)`` after every reconnect, sync or async (tastytrade style).

        The channels are already subscribed again when it runs.

        Example:
            >>> async def resync(ws, orders_api):
            ...     await orders_api.refresh()
            >>> ws.on_reconnect(resync, orders_api)
        """
        if not callable(fn):
            raise ConfigurationError("on_reconnect needs a callable")
        _check_params(fn, 1 + len(args), "on_reconnect's callback (it gets the client first)")
        with self._lock:
            self._hooks_reconnect.append((fn, args))
        return fn

    def on_error(self, fn: H | None = None) -> Any:
        """Call ``fn(exc, context)`` for every error the stream survives.

        ``exc`` is an :class:`~agentstream.errors.AgentStreamError` (``HandlerError``,
        ``ServerError``, ``StreamConnectionError``, ``DecodeError``); ``context`` is a
        dict with ``channel``, ``handler``, ``link`` or ``stage`` where they apply.

        Example:
            >>> @ws.on_error
            ... def oops(exc, context):
            ...     print("error:", exc, context)
        """
        return self._add_hook(self._hooks_error, fn, 2)

    def on_gap(self, fn: H | None = None) -> Any:
        """Call ``fn(gap)`` for each channel that was down across a reconnect.

        Called once per channel when its first event after the reconnect arrives, with
        a :class:`~agentstream.Gap`: when the connection was lost and back, the exchange timestamps
        of the last event before and the first after, and for candles exactly which
        candles were missed. Use it to re-sync orders or candles over REST.

        Example:
            >>> @ws.on_gap
            ... def gap(g):
            ...     print(f"{g.channel} down {g.duration}; missed {g.missing_candle_count}")
        """
        return self._add_hook(self._hooks_gap, fn, 1)

    def _add_hook(self, hooks: list[Callable[..., Any]], fn: H | None, nargs: int) -> Any:
        def add(f: H) -> H:
            if not callable(f):
                raise ConfigurationError("a hook must be callable")
            _check_params(f, nargs, "a hook")
            with self._lock:
                hooks.append(self._wrapped(f) if self._call_wrap is not None else f)
            return f

        return add(fn) if fn is not None else add

    # -- running ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, subscribe, and run until :meth:`disconnect` / :meth:`stop`.

        Reconnects by itself; returns normally when stopped.

        Raises:
            AuthenticationError: the API key was rejected (no retry).

        Example:
            >>> asyncio.run(ws.connect())
        """
        await self._run()

    async def disconnect(self) -> None:
        """Stop the client and wait until it has closed its connections.

        Example:
            >>> await ws.disconnect()
        """
        self._request_stop()
        done = self._done
        if (
            done is not None
            and self._loop is not None
            and threading.get_ident() == self._loop_thread
        ):
            await done.wait()

    def stop(self, timeout: float | None = 5.0) -> bool:
        """Stop the client from any thread; idempotent.

        From another thread, waits up to ``timeout`` seconds for the client to finish
        and returns whether it did; once it returned True the client can run again
        (``run_forever()`` has returned, or is about to, with nothing left to do). From
        the client's own thread it only requests the stop (use ``await ws.disconnect()``
        there) and returns False.

        Example:
            >>> thread = threading.Thread(target=ws.run_forever, daemon=True)
            >>> thread.start()
            >>> ws.stop()
            True
        """
        if self._idle.is_set():
            return True  # not running: nothing to stop, and nothing to remember
        if not self._active:
            # The run has ended and its thread is finishing (run_forever()'s event loop):
            # nothing to request, only to wait for.
            return self._idle.wait(timeout)
        self._stop_requested = True
        loop = self._loop
        if loop is None:  # run_forever() is starting: _run sees the request and returns
            return self._idle.wait(timeout)
        if threading.get_ident() == self._loop_thread:
            self._request_stop()
            return False
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._request_stop)
        return self._idle.wait(timeout)

    def run_forever(self) -> None:
        """Run the client in the calling thread until :meth:`stop`, with its own event loop.

        Meant for a daemon thread; the handlers run in that thread. Other threads can
        call the client's async methods through :attr:`portal`.

        Raises:
            AuthenticationError: the API key was rejected; also kept in :attr:`error`.
            RuntimeError: the client is already running (one run at a time), or this
                thread already runs an event loop.

        Example:
            >>> threading.Thread(target=ws.run_forever, daemon=True).start()
        """

        async def main() -> None:
            ctrl_c = _on_ctrl_c(self)
            async with anyio.from_thread.BlockingPortal() as portal:
                self._portal = portal
                try:
                    await self._run(raise_fatal=False, claimed=True)
                except AgentStreamError:
                    pass  # kept in self._fatal, raised below outside the portal's task group
                finally:
                    self._portal = None
                    ctrl_c()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # no loop here: run_forever brings its own
        else:
            raise RuntimeError(
                "run_forever() runs its own event loop and cannot run inside one; in async "
                "code use `await ws.connect()` (or `async with ws:`), or call run_forever() "
                "in a thread"
            )
        # Claimed here, before _active is touched: a second run_forever() must not mark
        # the running client inactive when it ends (stop() would then return True at
        # once and leave the first run going).
        self._claim()
        self._active = True  # so that a stop() from another thread is not lost meanwhile
        try:
            anyio.run(main)
        finally:
            self._active = False
            fatal = self._fatal  # read before the release: a next run resets it
            self._release_claim()
        if fatal is not None:
            raise fatal

    @property
    def portal(self) -> anyio.from_thread.BlockingPortal | None:
        """In :meth:`run_forever` mode, a portal other threads use to call async methods.

        Example:
            >>> ws.portal.call(ws.disconnect)
        """
        return self._portal

    async def __aenter__(self) -> Self:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            await tg.start(self._run_ctx)
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                await tg.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._ctx_tg = tg
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._request_stop()
        tg, self._ctx_tg = self._ctx_tg, None
        if tg is not None:
            if exc[0] is not None and issubclass(exc[0], Exception):
                # The block's own error: close the client's task group without it, so it
                # propagates as itself (an exception group around it would not match
                # the caller's `except`).
                await tg.__aexit__(None, None, None)
            else:
                await tg.__aexit__(*exc)
        if self._fatal is not None and exc[0] is None:
            raise self._fatal

    async def _run_ctx(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        # A fatal error before the first connection is raised here, so `async with`
        # raises it; a later one is kept and raised by __aexit__.
        await self._run(task_status=task_status, raise_fatal=False, warn_empty=False)

    async def listen(
        self, model: type[E], symbol: str | None = None, interval: str | None = None
    ) -> AsyncIterator[E]:
        """Iterate over typed events of one kind, as tastytrade's ``listen()`` does.

        A kind without symbols (``listen(OrderUpdate)``) subscribes its channel; with a
        symbol (``listen(Ticker, "BTCUSDT")``, ``listen(Candle, "BTCUSDT", "1m")``) that
        channel; without one (``listen(Ticker)``) it yields from every subscribed channel
        of the kind.

        Example:
            >>> async with ws:
            ...     async for order in ws.listen(OrderUpdate):
            ...         print(order.order_id, order.status)

        Raises:
            ConfigurationError: ``model`` is not one of this venue's models, or a symbol
                or interval is missing or invalid.
        """
        kind = self._models.get(model)
        if kind is None:
            names = ", ".join(m.__name__ for m in self._models)
            raise ConfigurationError(f"listen() takes one of {names}")
        spec = self._kinds[kind]
        channel: Channel | None
        if not spec.symbol:
            channel = Channel.of(spec)
        elif symbol is not None:
            if spec.intervals is not None and interval is None:
                raise ConfigurationError(f"listen({model.__name__}, symbol) needs an interval")
            channel = Channel.of(spec, symbol, interval)
        else:
            channel = None
        slot = self._new_listen_slot(channel or kind, model, conflation_key_for(spec))
        with self._lock:
            self._listen_slots.add(slot)
            if channel is not None:
                self._slots.setdefault(channel.key, []).append(slot)
                self._channels.setdefault(channel.key, channel)
            else:
                self._kind_listeners.setdefault(kind, []).append(slot)
        self._schedule_reconcile()
        try:
            while True:
                if self._finished.is_set() and not slot.queue:
                    return
                event = await self._next_or_end(slot)
                if event is _END:
                    if self._fatal is not None:
                        raise self._fatal
                    return
                yield event
        finally:
            self._listen_ended(slot)
            with self._lock:
                slot.retire()
                self._listen_slots.discard(slot)
                if channel is not None:
                    slots = self._slots.get(channel.key, [])
                    if slot in slots:
                        slots.remove(slot)
                    if not slots:
                        self._slots.pop(channel.key, None)
                else:
                    self._kind_listeners.get(kind, []).remove(slot)
            self._schedule_reconcile()

    def _new_listen_slot(
        self, channel: Channel | str, model: type[Any], conflate: Callable[[Any], object] | None
    ) -> Slot:
        """The slot of a ``listen()`` iterator (``conflate``: its kind's conflation key).

        A hook, as :meth:`_new_slot`: the bus never conflates what a loop gets.
        """
        return Slot(
            channel,
            None,
            model=model,
            conflate=conflate,
            partial=True,
            max_queue=self._queue_size,
            conflated_into=self._conflated,
        )

    def _listen_ended(self, slot: Slot) -> None:
        """A ``listen()`` loop ended (before its slot is unregistered); a hook for clients
        that must release what the loop held (the bus leaves its entries for a retry)."""

    async def _next_or_end(self, slot: Slot) -> Any:
        while not slot.queue:
            if (
                slot.stopped  # its channel was unsubscribed
                or self._finished.is_set()
                or (self._stop_event is not None and self._stop_event.is_set())
            ):
                return _END
            slot.wake.clear()
            await slot.wake.wait()  # set by a push, or by _wake_listeners when stopping
        return slot.queue.popleft()

    def _wake_listeners(self, *, stopped_only: bool = False) -> None:
        """Let ``listen()`` iterators see that the client is stopping or stopped (or, with
        ``stopped_only``, that their channel was unsubscribed). On the loop thread."""
        with self._lock:
            slots = list(self._listen_slots)
        for slot in slots:
            if slot.stopped or not stopped_only:
                slot.wake.set()

    # -- the run ----------------------------------------------------------------------

    async def _run(
        self,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
        raise_fatal: bool = True,
        warn_empty: bool = True,
        claimed: bool = False,
    ) -> None:
        if not claimed:
            self._claim()
        self._active = True
        self._finished.clear()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop_event = asyncio.Event()
        self._done = asyncio.Event()
        self._ready = asyncio.Event()
        self._first_connected = asyncio.Event()
        self._fatal = None
        self.error = None
        self._hook_runner = HookRunner()
        with self._lock:
            for slot in [s for v in self._slots.values() for s in v] + [
                s for v in self._kind_listeners.values() for s in v
            ]:
                slot.bind_loop()
        self._links = []
        self._placement = {}
        self._derived = {}
        self._aggregators = {}
        self._router.reset_private()
        self._recovery_due = self._recovering = False
        self._started_at = datetime.now(UTC)
        self._failing_since = None
        self._running_slots = set()
        self._state = "connecting"
        started = False
        try:
            if self._stop_requested:
                return
            started = await self._serve(task_status, warn_empty=warn_empty)
        finally:
            with anyio.CancelScope(shield=True):
                await self._close_extras()
            if self._shared_worker is not None:
                # Undelivered events stay in their handlers' own queues for a next run.
                self._shared_worker.release_all()
                self._shared_worker = None
            for slot in self._running_slots:
                if slot.inline:
                    slot.cancel()  # no more drains once stopped (tasks ended with the group)
            self._state = "failed" if self._fatal is not None else "stopped"
            self._tg = None
            self._transport = None
            self._links = []
            self._placement = {}
            self._running_slots = set()
            self._loop = None
            self._loop_thread = None
            self._stop_requested = False
            self._active = False
            self._finished.set()
            if not claimed:
                self._release_claim()
            self._done.set()
            self._wake_listeners()
        fatal = self._fatal_error()
        if fatal is not None and (raise_fatal or not started):
            raise fatal

    async def _serve(self, task_status: anyio.abc.TaskStatus[None], *, warn_empty: bool) -> bool:
        """The run's work, until stopped: the links and the handlers' workers.

        Calls ``task_status.started()`` once ready and returns whether it did. A client
        reading another source (the bus) overrides it; ``_run`` does the bookkeeping
        around it.
        """
        assert self._hook_runner is not None
        assert self._stop_event is not None
        assert self._ready is not None
        async with (
            Transport(
                ssl=self._ssl,
                connect_timeout=self._connect_timeout,
                close_timeout=self._close_timeout,
                max_message_size=self._max_message_size,
                auth_statuses=self._protocol.auth_http_statuses,
            ) as transport,
            anyio.create_task_group() as tg,
        ):
            self._transport = transport
            self._tg = tg
            tg.start_soon(self._hook_runner.run)
            self._shared_worker = SharedWorker(tg.start_soon)
            tg.start_soon(self._shared_worker.run)
            self._reconcile()
            if not self._links:
                if warn_empty:  # (`async with` then subscribe_* is a normal start)
                    self.log.warning(
                        "connecting with no channel: register a handler or subscribe "
                        "first; nothing will arrive until then"
                    )
                self._new_link()
            started = False
            await _first_of(self._ready, self._stop_event)
            if not self._stop_event.is_set():
                task_status.started()
                started = True
                await self._stop_event.wait()
            tg.cancel_scope.cancel()
        return started

    def _claim(self) -> None:
        with self._lock:
            if not self._idle.is_set() or not self._finished.is_set():
                raise RuntimeError("this client is already running")
            self._idle.clear()

    def _release_claim(self) -> None:
        with self._lock:
            self._idle.set()

    def _fatal_error(self) -> BaseException | None:
        return self._fatal  # set by a link task while _run awaited

    def _request_stop(self) -> None:
        if not self._active:
            return
        self._stop_requested = True
        if self._stop_event is not None:
            self._stop_event.set()
            self._wake_listeners()

    def _fail(self, exc: BaseException) -> None:
        self._fatal = exc
        self.error = exc
        self.log.error("agentstream stopped: %s", exc)
        self._request_stop()

    # -- links and channel placement (loop thread only) -------------------------------

    def _schedule_reconcile(self) -> None:
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread and not self._router.feeding:
            self._reconcile()
        elif threading.get_ident() == self._loop_thread:
            # From a handler the reader is calling: change the routes after its batch,
            # not under the frames it is routing.
            loop.call_soon(self._reconcile)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._reconcile)

    def _reconcile(self) -> None:
        """Make routes, workers and link assignments match the registry."""
        if self._tg is None:
            return
        with self._lock:
            wanted = self._wanted_keys()
            routes: dict[str, Route] = {}
            for key in wanted:
                ch = self._channels[key]
                spec = self._kinds[ch.kind]
                slots = self._slots.get(key, [])
                listeners = self._kind_listeners.get(ch.kind, [])
                wild = spec.wildcard is not None and f"{spec.name}:{spec.wildcard}" in wanted
                if wild and ch.symbol != spec.wildcard:
                    listeners = []  # they get every symbol from the wildcard's route
                typed = tuple(
                    _ViewSink(self._protocol.order_event, s) if s.model is OrderEvent else s
                    for s in (*(s for s in slots if s.model is not None), *listeners)
                )
                plain = tuple(s for s in slots if s.model is None)
                route = Route(key, spec, plain, typed)
                if self._recover and ch.kind == self._protocol.orders_kind:
                    route = self._guard_orders(route)
                routes[key] = self._stage(route)
            derived = {t: src for t, src in self._derived.items() if t in wanted}
            # An aggregator whose channel is gone would resume from a stale window.
            for gone in [k for k in self._aggregators if k[0] not in derived]:
                del self._aggregators[gone]
            for target, source in derived.items():
                self._feed_derived(routes, routes[target], source)
            self._router.rebuild(routes)
            changes = self._worker_changes(wanted)
        self._swap_workers(*changes)
        # With a wildcard channel (ticker:all) the server already sends every symbol
        # once; subscribing single ones too would deliver their events twice. Routes
        # still serve their handlers. A channel built from a finer one is not sent; the
        # finer one is.
        on_wire = set(wanted) - set(derived)
        for key in wanted:
            ch = self._channels[key]
            spec = self._kinds[ch.kind]
            every = spec.wildcard
            if every is not None and ch.symbol != every and f"{spec.name}:{every}" in wanted:
                on_wire.discard(key)
        sources = {src.key: src for src in derived.values()}
        on_wire |= set(sources)
        for key in list(self._placement):
            if key not in on_wire:
                self._placement.pop(key).release(key)
        for key in sorted(on_wire):
            if key not in self._placement:
                self._place(self._channels.get(key) or sources[key])

    def _guard_orders(self, route: Route) -> Route:
        """The orders route behind recovery sinks (dedup, and hold during a recovery)."""
        state_of = self._protocol.order_state
        sinks: dict[bool, RecoverySink] = {}
        for typed, slots, pushes in (
            (False, route.dict_slots, route.push_dict_all),
            (True, route.typed_slots, route.push_typed_all),
        ):
            if slots:
                sinks[typed] = RecoverySink(self._ledgers[typed], pushes, state_of, typed=typed)
        self._order_sinks = sinks
        return Route(
            route.key,
            route.spec,
            (sinks[False],) if False in sinks else (),
            (sinks[True],) if True in sinks else (),
        )

    def _stage(self, route: Route) -> Route:
        """A venue's hook: the route the router uses for ``route`` (default: itself).

        A venue that must do something between decoding and the handlers (Tradier looks
        orders up) returns a route whose slots are its own sinks, which push to
        ``route``'s handlers.
        """
        return route

    def _spawn(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run ``fn(*args)`` as a task of the running client (a no-op when stopped)."""
        if self._tg is not None:
            self._tg.start_soon(fn, *args)

    def _feed_derived(self, routes: dict[str, Route], target: Route, source: Channel) -> None:
        """Route ``source``'s events through the venue's aggregator into ``target``'s."""
        spec = self._kinds[source.kind]
        src = routes.get(source.key) or Route(source.key, spec, (), ())
        channel = self._channels[target.key]
        sinks: dict[bool, tuple[Any, ...]] = {}
        for typed, slots in ((False, target.dict_slots), (True, target.typed_slots)):
            if not slots:
                sinks[typed] = ()
                continue
            # One aggregator per representation, kept across rebuilds (it holds the
            # candles of the forming window); a new one when forming updates are now
            # wanted or no longer.
            partial = any(s.partial for s in slots)
            kept = self._aggregators.get((target.key, typed))
            if kept is not None and kept[0] == partial:
                derive = kept[1]
            else:
                derive = self._protocol.derive(channel, source, partial=partial)
                self._aggregators[target.key, typed] = (partial, derive)
            sinks[typed] = (DerivedSink(derive, target, typed),)
        routes[source.key] = Route(
            source.key, spec, src.dict_slots + sinks[False], src.typed_slots + sinks[True]
        )

    def _worker_changes(self, wanted: Collection[str]) -> tuple[list[Slot], list[Slot]]:
        """Under the lock: the slots of ``wanted`` to start, and the running ones removed."""
        new = [
            s
            for key in wanted
            for s in self._slots.get(key, [])
            if s.fn is not None and s not in self._running_slots
        ]
        registered = {s for v in self._slots.values() for s in v}
        return new, [s for s in self._running_slots if s not in registered]

    def _swap_workers(self, new: list[Slot], gone: list[Slot]) -> None:
        """Stop the workers of removed handlers, then start those of new ones (loop)."""
        assert self._tg is not None
        for slot in gone:
            slot.cancel()
            with self._lock:
                slot.retire()  # what it conflated since it was removed
            self._running_slots.discard(slot)
            self._slot_removed(slot)
        self._wake_listeners(stopped_only=True)  # an unsubscribed listen() ends
        for slot in new:
            self._running_slots.add(slot)
            slot.start(self._tg.start_soon, self._shared_worker)

    def _slot_removed(self, slot: Slot) -> None:
        """A removed handler's worker was just stopped; a hook for clients that must
        release what it held (the bus leaves its entries for a retry)."""

    def _place(self, channel: Channel, exclude: Link | None = None) -> None:
        for link in self._links:
            if link is not exclude and not link.retired and len(link.channels) < self._limit:
                break
        else:
            link = self._new_link()
        link.assign(channel)
        self._placement[channel.key] = link

    def _new_link(self) -> Link:
        assert self._tg is not None
        link = self._link_factory(self._host, self._router, self._link_config, len(self._links))
        self._links.append(link)
        # Private events reach every socket of the account: deliver each once.
        self._router.dedup_private = len(self._links) > 1
        self._tg.start_soon(self._run_link, link)
        return link

    async def _run_link(self, link: Link) -> None:
        try:
            await link.run()
        except Exception as exc:
            # Errors raised in a connection's tasks (a credential callable failing in
            # a heartbeat) come wrapped in an exception group: ours is inside.
            ours = _ours(exc)
            if ours is not None:
                self._fail(ours)
                return
            # A bug of ours: the client stops loudly (connect() raises it) instead of
            # retrying in silence.
            self.log.exception("%s failed unexpectedly; stopping", link.label)
            self._fail(exc)

    # -- what the links and the router ask of the client (through _Host) -------------

    async def _token(self, *, fresh: bool = False) -> str:
        """The current credential (``fresh`` is a hint; a callable is called every time).

        Raises:
            AuthenticationError: the credential callable raised or returned no string.
        """
        cred = self.__credential
        if isinstance(cred, str):
            return cred
        try:
            value = cred()
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            raise AuthenticationError(
                f"the credential callable {callable_name(cred)} raised {type(exc).__name__}"
            ) from exc
        if not isinstance(value, str) or not value.strip():
            raise AuthenticationError(
                f"the credential callable {callable_name(cred)} returned no credential"
            )
        return value

    async def _open_socket(self, token: str) -> Connection:
        """The venue's pre-connect step (if any), then the socket."""
        transport = self._transport
        assert transport is not None
        protocol = self._protocol
        request = protocol.pre_connect(token)
        answer = await transport.request(request) if request is not None else None
        return await transport.connect(protocol.handshake(token, answer))

    def _channel_of(self, key: str) -> Channel | None:
        return self._channels.get(key) or next(
            (s for s in self._derived.values() if s.key == key), None
        )

    def _refused(self, link: Link, key: str, effect: str, reason: str) -> bool:
        if effect == "limit":
            return self._learn_limit(link, key)
        channel = self._channels.get(key)
        source = self._protocol.fallback(channel, reason) if channel is not None else None
        if source is None or key in self._derived:
            return False
        self.log.info(
            "the server does not serve %s; building it from %s (closed candles, aligned "
            "to UTC interval boundaries)",
            key,
            source.key,
        )
        self._derived[key] = source
        link.gaps.open.pop(key, None)
        self._schedule_reconcile()
        return True

    def _learn_limit(self, link: Link, key: str) -> bool:
        # The server answers in order: what it accepted before refusing is acked by now.
        accepted = len(link.acked)
        if accepted == 0:
            # Refused on an otherwise empty connection: another connection would be
            # refused too (a per-account limit). Keep it off the wire instead of opening
            # socket after socket; it is reported to on_error.
            self.log.warning("the server refused %s with no other subscription open", key)
            return False
        if accepted < self._limit:
            self.log.warning(
                "the server allows %d subscriptions per connection; opening another for %s",
                max(accepted, 1),
                key,
            )
            self._limit = max(accepted, 1)
        link.release(key)
        self._placement.pop(key, None)
        self._place(self._channel_of(key) or Channel.parse(key, self._kinds), exclude=link)
        return True

    def _connect_failed(self, link: Link, exc: StreamConnectionError) -> bool:
        self._failed_attempts += 1
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            self._failing_count = 0
        self._failing_count += 1
        unreachable = "cannot connect" in str(exc) or "timed out" in str(exc)
        if self._failed_attempts == 1 and unreachable:
            self.log.warning(
                "nothing answered the first connection: check the URL and that the server "
                "is running (for the simulated exchange: `agentstream serve`, on "
                "127.0.0.1:8000 by default); retrying with backoff%s",
                "" if self._max_attempts or self._give_up_after else " for as long as it takes",
            )
        if (self._max_attempts is not None and self._failing_count >= self._max_attempts) or (
            self._give_up_after is not None and now - self._failing_since >= self._give_up_after
        ):
            self.log.error(
                "giving up after %d failed connection attempt(s) in %.1f s",
                self._failing_count,
                now - self._failing_since,
            )
            return True
        return False

    # -- order recovery ---------------------------------------------------------------

    def _start_recovery(self) -> None:
        """Hold live order events back and read the orders over REST (in a task)."""
        key = self._protocol.orders_kind
        start = self._router.private_gaps.open.get(key or "")
        route = self._router.routes.get(key or "")
        since = (
            event_time(route.spec, start.last) if start is not None and route is not None else None
        )
        self._recovering = True
        for ledger in self._ledgers.values():
            ledger.holding = True
        self._spawn(self._recovery, since or self._started_at)

    async def _recovery(self, since: datetime | None) -> None:
        backoff = Backoff.from_env(**self._backoff_args)
        try:
            while True:
                try:
                    events = await self._recover_orders(since)
                    break
                except AgentStreamError as exc:
                    delay = backoff.next()
                    self.log.warning(
                        "order recovery failed (%s); live order events go on, retrying in %.2f s",
                        exc,
                        delay,
                    )
                    self._emit_error(exc, {"stage": "recovery", "channel": "orders"})
                    self._release_orders()  # never hold live events behind a failing REST
                    await anyio.sleep(delay)
            n = self._deliver_recovered(events, since)
            if n:
                self.log.info("recovered %d order update(s) missed while disconnected", n)
        finally:
            self._release_orders()
            self._recovering = False

    def _release_orders(self) -> None:
        for typed, ledger in self._ledgers.items():
            sink = self._order_sinks.get(typed)
            if sink is not None:
                sink.release()
            else:
                ledger.holding = False
                ledger.held.clear()

    def _deliver_recovered(self, events: list[Any], since: datetime | None) -> int:
        """Each order whose state the handlers have not seen, once, marked recovered."""
        protocol = self._protocol
        spec = self._kinds[protocol.orders_kind or ""]
        delivered = 0
        for event in events:
            state = protocol.order_state(event)
            if state is None:
                continue
            view = protocol.order_event(event)
            known = any(lg.known(state[0]) for lg in self._ledgers.values())
            live = view.status in (
                OrderStatus.PENDING,
                OrderStatus.OPEN,
                OrderStatus.PARTIALLY_FILLED,
            )
            recent = since is None or (view.updated_at is not None and view.updated_at >= since)
            if not (known or live or recent):
                continue  # an order that ended before the gap, and handlers never saw it
            typed = msgspec.structs.replace(event, recovered=True)
            # Held live events behind this state are dropped when they are released.
            mark = (Decimal(state[2]), protocol.order_final(state[1]), state[1])
            for ledger in self._ledgers.values():
                ledger.mark(state[0], mark)
            sent = False
            sink = self._order_sinks.get(True)
            if sink is not None:
                sent = sink.deliver(typed, recovered=True) or sent
            sink = self._order_sinks.get(False)
            if sink is not None:
                plain = msgspec.to_builtins(typed)
                complete_dict(spec, plain, None, None)
                sent = sink.deliver(plain, recovered=True) or sent
            delivered += sent
        self._recovered += delivered
        return delivered

    async def _recover_orders(self, since: datetime | None) -> list[Any]:
        """The venue's orders that may have changed since ``since``, typed (a venue
        client with a REST API overrides this; the default recovers nothing)."""
        return []

    async def _close_extras(self) -> None:
        """Close what a venue client opened beside the stream (its REST client)."""

    def _channel_private(self, key: str) -> bool:
        ch = self._channels.get(key)
        return ch is not None and self._kinds[ch.kind].private

    def _link_up(self, link: Link, reconnect: bool) -> None:
        self._state = "connected"
        self._failing_since = None  # connected: give-up counts start over
        gaps = self._router.private_gaps
        if gaps.open and gaps.reconnected_at is None:
            gaps.reconnected_at = datetime.now(UTC)  # the first socket back
        if self._recovery_due and not self._recovering:
            self._recovery_due = False
            self._start_recovery()
        runner = self._hook_runner
        assert runner is not None
        if reconnect:
            self._reconnects += 1
            self.log.info("%s: reconnected", link.label)
        else:
            self.log.info("%s: connected", link.label)
        with self._lock:
            connect_hooks = list(self._hooks_connect)
        for fn in connect_hooks:
            runner.submit(fn)

    def _link_ready(self, link: Link, reconnect: bool) -> None:
        if link.index == 0 and self._ready is not None:
            self._ready.set()
        if reconnect:
            # After the subscriptions went out again (tastytrade's reconnect callback).
            with self._lock:
                hooks = list(self._hooks_reconnect)
            runner = self._hook_runner
            if runner is not None:
                for fn, args in hooks:
                    runner.submit(fn, self, *args)

    def _can_refresh(self) -> bool:
        return callable(self.__credential)

    def _link_proven(self, link: Link) -> None:
        """``link``'s server accepted the credentials for real (an ack, data, or time open).

        Only then do extra links connect: a server that accepts the upgrade and then
        closes with 4401 costs exactly one handshake, however many channels are wanted.
        """
        self._first_connected.set()

    def _link_down(self, link: Link, reason: str) -> None:
        router = self._router
        carried = link.sent & set(link.channels)
        private = {k for k, lk in self._placement.items() if self._channel_private(k)}
        router.link_down(link.gaps, carried - private, reason)
        if not any(lk.conn is not None for lk in self._links if lk is not link):
            # No socket left up: the account's private events are missed from now on.
            router.private_gaps.reconnected_at = None
            router.link_down(router.private_gaps, private, reason)
            self._recovery_due = self._recover
        # Channels built from this socket's channels start from a fresh window: the
        # one forming now misses the candles sent while it was down.
        lost = {t for t, src in self._derived.items() if src.key in link.channels}
        if lost:
            for key in [k for k in self._aggregators if k[0] in lost]:
                del self._aggregators[key]
            self._schedule_reconcile()
        if not any(lk.conn is not None for lk in self._links):
            self._state = "reconnecting"
        self._call_hooks(self._hooks_disconnect, reason)

    # -- errors -----------------------------------------------------------------------

    def _call_hooks(self, hooks: list[Callable[..., Any]], *args: Any) -> None:
        """Queue ``fn(*args)`` for each hook on the hook runner (a no-op when not running)."""
        runner = self._hook_runner
        if runner is None:
            return
        with self._lock:
            snapshot = list(hooks)
        for fn in snapshot:
            runner.submit(fn, *args)

    def _emit_error(self, exc: AgentStreamError, context: dict[str, Any]) -> None:
        self._call_hooks(self._hooks_error, exc, context)

    def _handler_failed(self, slot: Slot, exc: BaseException, event: Any) -> None:
        self._handler_errors += 1
        channel = slot.key
        by_channel = self._handler_errors_by_channel
        by_channel[channel] = by_channel.get(channel, 0) + 1
        try:
            text = str(exc)
        except Exception:  # a user exception whose __str__ raises
            text = "<unprintable>"
        if self._handler_errors <= 10 or self._handler_errors % 1000 == 0:
            self.log.error(
                "handler %s raised on %s: %s: %s (%d handler errors so far)",
                slot.name,
                channel,
                type(exc).__name__,
                text,
                self._handler_errors,
                exc_info=exc if self._handler_errors <= 10 else None,
            )
        err = HandlerError(
            f"handler {slot.name} raised {type(exc).__name__}: {text}",
            handler=slot.name,
            channel=channel,
        )
        err.__cause__ = exc
        self._emit_error(err, {"channel": channel, "handler": slot.name})

    def _emit_gap(self, gap: Gap) -> None:
        self.log.warning(
            "gap on %s: down %.1f s (%s)%s",
            gap.channel,
            gap.duration.total_seconds(),
            gap.reason,
            f", {gap.missing_candle_count} candle(s) missed" if gap.missing_candle_count else "",
        )
        self._call_hooks(self._hooks_gap, gap)

    # -- agentstream.testing's seams ----------------------------------------------------

    def _wrapped(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        assert self._call_wrap is not None
        wrapper = self._call_wrap(fn)
        self._unwrapped[wrapper] = fn
        return wrapper

    def _wrap_calls(self, wrap: Callable[[Callable[..., Any]], Callable[..., Any]] | None) -> None:
        """Put ``wrap(fn)`` around every handler and hook, now and as they are added;
        None takes the wrappers off. For :class:`agentstream.testing.Feed`, which counts
        the calls in progress to know when the handlers are done. ``wrap`` must keep a
        sync callable sync and an async one async; ``remove_handler`` still takes the
        user's callable. Only while the client is not running (a worker reads its
        handler once, when it starts)."""
        with self._lock:
            if self._call_wrap is not None:  # back to the user's callables first
                orig = self._unwrapped
                for slots in self._slots.values():
                    for slot in slots:
                        if slot.fn is not None:
                            slot.fn = orig.get(slot.fn, slot.fn)
                for hooks in self._wrappable_hooks():
                    hooks[:] = [orig.get(f, f) for f in hooks]
                self._unwrapped = {}
            self._call_wrap = wrap
            if wrap is None:
                return
            for slots in self._slots.values():
                for slot in slots:
                    if slot.fn is not None:
                        slot.fn = self._wrapped(slot.fn)
            for hooks in self._wrappable_hooks():
                hooks[:] = [self._wrapped(f) for f in hooks]

    def _wrappable_hooks(self) -> list[list[Callable[..., Any]]]:
        return [self._hooks_connect, self._hooks_disconnect, self._hooks_error, self._hooks_gap]

    # -- stats ------------------------------------------------------------------------

    @property
    def stats(self) -> Stats:
        """Counters and state (a snapshot; read it as often as you like).

        Example:
            >>> print(ws.stats.messages_total, ws.stats.reconnects)
        """
        with self._lock:
            slots = [s for v in self._slots.values() for s in v] + [
                s for v in self._kind_listeners.values() for s in v
            ]
            # Under the lock, as Slot.retire: a removed handler's count is read either
            # in its slot or in the client's dict, never in both nor in neither.
            conflated = dict(self._conflated)  # of removed handlers
            for slot in slots:
                n = slot.conflated
                if n:
                    conflated[slot.key] = conflated.get(slot.key, 0) + n
        router = self._router
        times = [lk.last_frame_at for lk in self._links if lk.last_frame_at]
        if router.last_frame_at is not None:
            times.append(router.last_frame_at)
        last = max(times) if times else None
        counts = router.counts()
        queued: dict[str, int] = {}
        for slot in slots:
            queued[slot.key] = queued.get(slot.key, 0) + len(slot.queue)
        return Stats(
            state=self._state,
            connections=sum(1 for lk in self._links if lk.conn is not None),
            reconnects=self._reconnects,
            failed_attempts=self._failed_attempts,
            messages=counts,
            messages_total=sum(counts.values()),
            control_messages=router.control,
            pings=router.pings,
            dropped_frames=router.dropped,
            invalid_events=router.invalid,
            handler_errors=self._handler_errors,
            conflated=sum(conflated.values()),
            server_errors=router.server_errors,
            gaps=router.gaps,
            queued=sum(queued.values()),
            last_message_age=None if last is None else time.monotonic() - last,
            heartbeats=router.heartbeats,
            duplicate_events=router.duplicates + sum(lg.repeats for lg in self._ledgers.values()),
            recovered_orders=self._recovered,
            queued_by_channel=queued,
            conflated_by_channel=conflated,
            handler_errors_by_channel=dict(self._handler_errors_by_channel),
            gaps_by_channel=dict(router.gaps_by_channel),
        )


_END: Any = object()


class _ViewSink(SinkBase):
    """In front of a handler that wants the venue's typed events in another shape
    (:class:`OrderEvent`): converts each, then pushes it to the handler's own queue."""

    __slots__ = ()

    def __init__(self, convert: Callable[[Any], Any], slot: Slot) -> None:
        super().__init__(slot.partial)
        target = slot.push

        def push(event: Any) -> None:
            target(convert(event))

        self.push: Callable[[Any], None] = push


class _Host:
    """The client as its links (``LinkHost``) and router (``RouterHost``) see it.

    A narrow, private view: the client's public API stays what users call.
    """

    __slots__ = ("_c",)

    def __init__(self, client: StreamClient) -> None:
        self._c = client

    @property
    def first_connected(self) -> asyncio.Event:
        return self._c._first_connected

    @property
    def can_refresh(self) -> bool:
        return self._c._can_refresh()

    @property
    def log(self) -> logging.Logger:
        return self._c.log

    async def token(self, *, fresh: bool = False) -> str:
        return await self._c._token(fresh=fresh)

    async def open_socket(self, token: str) -> Connection:
        return await self._c._open_socket(token)

    def channel(self, key: str) -> Channel | None:
        return self._c._channel_of(key)

    def link_up(self, link: Link, reconnect: bool) -> None:
        self._c._link_up(link, reconnect)

    def link_ready(self, link: Link, reconnect: bool) -> None:
        self._c._link_ready(link, reconnect)

    def link_down(self, link: Link, reason: str) -> None:
        self._c._link_down(link, reason)

    def link_proven(self, link: Link) -> None:
        self._c._link_proven(link)

    def refused(self, link: Link, key: str, effect: str, reason: str) -> bool:
        return self._c._refused(link, key, effect, reason)

    def connect_failed(self, link: Link, exc: StreamConnectionError) -> bool:
        return self._c._connect_failed(link, exc)

    def emit_error(self, exc: AgentStreamError, context: dict[str, Any]) -> None:
        self._c._emit_error(exc, context)

    def emit_gap(self, gap: Gap) -> None:
        self._c._emit_gap(gap)


def _on_ctrl_c(client: StreamClient) -> Callable[[], None]:
    """In the main thread, make Ctrl-C stop ``client`` cleanly (one line, no traceback;
    ``run_forever()`` returns); a second Ctrl-C interrupts as usual. Returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signals reach the main thread only
    loop = asyncio.get_running_loop()

    def stop() -> None:
        loop.remove_signal_handler(signal.SIGINT)  # the next Ctrl-C interrupts
        client.log.warning("Ctrl-C: stopping")
        client._request_stop()

    try:
        loop.add_signal_handler(signal.SIGINT, stop)
    except (NotImplementedError, RuntimeError, ValueError):  # no signals here (Windows)
        return lambda: None

    def undo() -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)

    return undo


def _check_params(fn: Callable[..., Any], n: int, what: str) -> None:
    """Refuse ``fn`` now if it cannot be called with ``n`` positional arguments (rather
    than let it raise on every event later)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # no signature to read (some builtins): it will tell when called
    try:
        sig.bind(*([None] * n))
    except TypeError:
        raise ConfigurationError(
            f"{callable_name(fn)}{sig} cannot be {what}: it must take {n} argument"
            f"{'' if n == 1 else 's'}"
        ) from None


def _ours(exc: BaseException) -> AgentStreamError | None:
    """The first AgentStreamError in ``exc`` (itself, or inside exception groups)."""
    if isinstance(exc, AgentStreamError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _ours(inner)) is not None:
                return found
    return None


async def _first_of(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    async with anyio.create_task_group() as tg:

        async def wait(event: asyncio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        for event in events:
            tg.start_soon(wait, event)
