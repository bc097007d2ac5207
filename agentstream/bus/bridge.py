"""The bridge: one supervised venue connection, every event appended to Redis Streams.

:class:`Bridge` registers a handler on the venue client for each channel it is given;
the handler only stamps the event and appends it to a bounded buffer (it never waits
for Redis). A writer task appends the buffer to Redis in pipelined batches
(``XADD ... MAXLEN ~ N``), one stream per channel key: ``{prefix}:{venue}:{channel}``.
A wildcard channel (``ticker:all``) is written per symbol (``ticker:BTCUSDT``, ...).

When Redis is slow or down, older ticker and forming-candle events are conflated per
symbol (the newest kept, the others counted); the account's events (orders, portfolio,
balances, ...) and gap reports are never dropped until ``max_buffer_bytes`` is reached,
beyond which they are counted, logged and reported in a ``loss`` entry once Redis is
back. A Redis restart is told from the server's ``run_id``; one that lost the data is
logged and reported with what was lost. See ``docs/scale-out.md``.

Example:
    >>> ws = AgentExchangeWS(api_key, "ws://127.0.0.1:8000")
    >>> bridge = Bridge(ws, "redis://127.0.0.1:6379/0", channels=["ticker:all", "orders"])
    >>> await bridge.run()  # until bridge.stop() (or Ctrl-C in `agentstream bridge`)
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.lowlevel
import msgspec

from agentstream._dispatch import conflation_key_for
from agentstream.backoff import Backoff
from agentstream.bus._codec import GAP, LOSS, stream_key
from agentstream.bus._outbox import Item, Outbox
from agentstream.bus._redis_writer import RedisWriter, Unavailable, mask_redis_url
from agentstream.channels import Channel
from agentstream.errors import AgentStreamError, ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from agentstream._client import StreamClient
    from agentstream.models import Gap
    from agentstream.protocols.base import Kind

__all__ = ["Bridge", "BridgeStats"]

_MAX_SYMBOL = 64  # longer "symbols" in a wildcard event are refused (a stream key each)
#: Distinct symbols one wildcard channel may create streams for (the market has ~620);
#: a server inventing symbols beyond it gets its events refused and counted.
_MAX_SYMBOLS = 20_000


@dataclass(frozen=True)
class BridgeStats:
    """A snapshot of the bridge's counters (``bridge.stats``).

    Example:
        >>> s = bridge.stats
        >>> s.state, s.received, s.written, s.pending, s.conflated
        ('running', 120345, 120301, 44, 0)
    """

    #: ``idle``, ``running``, ``redis_down``, ``stopping``, ``stopped`` or ``failed``.
    state: str
    #: The venue client's state (``connected``, ``reconnecting``, ...).
    upstream: str
    #: Events received from the venue client.
    received: int = 0
    #: Entries appended to Redis (events, gap and loss reports).
    written: int = 0
    #: Events appended, per channel key.
    written_by_channel: dict[str, int] = field(default_factory=dict)
    #: Events waiting to be written, and the bytes the kept (never conflated) ones hold.
    pending: int = 0
    pending_bytes: int = 0
    #: Ticker / forming-candle events conflated while Redis was slow or down.
    conflated: int = 0
    #: Events that could not be kept (``max_buffer_bytes`` reached) or were refused by
    #: Redis, or were still waiting when the bridge stopped.
    lost: int = 0
    #: ``lost``, per channel key.
    lost_by_channel: dict[str, int] = field(default_factory=dict)
    #: Events the bridge refused (a wildcard event without a usable symbol, a payload
    #: that cannot be encoded).
    invalid: int = 0
    #: Gap reports of the upstream stream written (as ``gap`` entries).
    gaps: int = 0
    #: ``loss`` entries written.
    loss_reports: int = 0
    #: Pipelined batches written.
    batches: int = 0
    #: Failed attempts to reach or write Redis.
    redis_errors: int = 0
    #: Redis restarts seen, and how many of them had lost the data.
    redis_restarts: int = 0
    redis_data_lost: int = 0
    #: Seconds since the last successful write; None before the first.
    last_write_age: float | None = None


class Bridge:
    """Runs a venue client and appends every event of ``channels`` to Redis Streams.

    Args:
        client: a venue client (``AgentExchangeWS``, ``TradierStream``,
            ``TastytradeStream``), not running yet; the bridge runs it.
        url: the Redis server, ``redis://HOST:PORT/DB``.
        channels: channel keys (``ticker:all``, ``candles:BTCUSDT:1m``, ``orders``, ...)
            or :class:`~agentstream.Channel` values; at least one.
        maxlen: each stream is trimmed to about this many entries (``MAXLEN ~``).
        prefix: the first part of every key (``{prefix}:{venue}:...``).
        batch: entries per pipelined write, at most.
        max_pending: market events (tickers, forming candles) waiting before older ones
            are conflated per symbol.
        max_buffer_bytes: memory the waiting account events (orders, portfolio, ...) and
            gap reports may hold; beyond it new ones are dropped, counted, logged and
            reported in a ``loss`` entry.
        health_interval, health_ttl: the health hash ``{prefix}:{venue}:bridge`` is
            written this often and expires this long after the last write.
        socket_timeout, connect_timeout: seconds a Redis command / connection may take.
        backoff_initial, backoff_max: the reconnect schedule to Redis (doubling).
        flush_timeout: seconds :meth:`stop` waits for the waiting events to be written.
        logger: logger to use instead of ``logging.getLogger("agentstream.bridge")``.

    Raises:
        ConfigurationError: no channel, a channel the venue does not have, or a bad
            setting.

    Example:
        >>> bridge = Bridge(TradierStream(token), "redis://127.0.0.1:6379/0", channels=["orders"])
        >>> async with bridge:
        ...     await anyio.sleep(60)
        >>> bridge.stats.written
        12
    """

    def __init__(
        self,
        client: StreamClient,
        url: str,
        *,
        channels: Iterable[str | Channel],
        maxlen: int = 100_000,
        prefix: str = "agentstream",
        batch: int = 1000,
        max_pending: int = 50_000,
        max_buffer_bytes: int = 64 << 20,
        health_interval: float = 1.0,
        health_ttl: float = 5.0,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        flush_timeout: float = 5.0,
        logger: logging.Logger | None = None,
    ) -> None:
        for name, value in (
            ("maxlen", maxlen),
            ("batch", batch),
            ("max_buffer_bytes", max_buffer_bytes),
            ("health_interval", health_interval),
            ("socket_timeout", socket_timeout),
            ("connect_timeout", connect_timeout),
        ):
            if value <= 0:
                raise ConfigurationError(f"{name} must be positive, got {value}")
        if max_pending < 2:
            raise ConfigurationError(f"max_pending must be at least 2, got {max_pending}")
        if health_ttl <= health_interval:
            raise ConfigurationError("health_ttl must be longer than health_interval")
        if not prefix or any(c.isspace() for c in prefix):
            raise ConfigurationError(f"invalid prefix {prefix!r}")
        if importlib.util.find_spec("redis") is None:
            raise ConfigurationError("the bridge needs redis-py: pip install 'agentstream[redis]'")
        if not isinstance(url, str) or "://" not in url:
            raise ConfigurationError("url must be a Redis URL such as redis://127.0.0.1:6379/0")
        self.log = logger or logging.getLogger("agentstream.bridge")
        self._client = client
        self._venue: str = client._protocol.venue
        self._kinds: dict[str, Kind] = dict(client._kinds)
        self._prefix = prefix
        self._url = url
        self._gaps_stream = stream_key(prefix, self._venue, "gaps")
        self._maxlen = maxlen
        self._batch = batch
        self._health_interval = health_interval
        self._health_ttl = health_ttl
        self._flush_timeout = flush_timeout
        Backoff(initial=backoff_initial, maximum=backoff_max)  # validate now
        self._backoff = (backoff_initial, backoff_max)
        self._writer = RedisWriter(
            url,
            prefix=prefix,
            venue=self._venue,
            maxlen=maxlen,
            socket_timeout=socket_timeout,
            connect_timeout=connect_timeout,
        )
        self._outbox = Outbox(max_pending=max_pending, max_bytes=max_buffer_bytes)

        self._state = "idle"
        self._received = 0
        self._written = 0
        self._by_channel: dict[str, int] = {}
        #: Events appended since the server (as this bridge knows it) started, per channel.
        self._since_start: dict[str, int] = {}
        self._lost: dict[str, int] = {}  # refused by Redis, or waiting at the stop
        self._invalid = 0
        self._gaps = 0
        self._loss_reports = 0
        self._batches = 0
        self._redis_errors = 0
        self._restarts = 0
        self._data_lost_count = 0
        self._last_write: float | None = None
        self._last_ns = 0
        #: Losses not yet reported in a ``loss`` entry: reason -> channel -> count.
        self._unreported: dict[str, dict[str, int]] = {}
        self._reported_conflated: dict[str, int] = {}
        self._reported_dropped: dict[str, int] = {}
        self._last_loss_report = -1e9
        #: A batch whose answers were lost: some of it may be in Redis already.
        self._unsure: list[Item] = []
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._running = False
        #: The writer reached Redis and its last write did not fail.
        self._up = False

        self.channels = self._register(channels)
        client.on_gap(self._on_gap)

    def __repr__(self) -> str:
        return (
            f"<Bridge {self._venue} -> {mask_redis_url(self._url)} "
            f"{len(self.channels)} channel(s) state={self._state}>"
        )

    # -- events in (on the client's loop, from its reader: cheap, never waits) ---------

    def _register(self, channels: Iterable[str | Channel]) -> list[Channel]:
        parsed: dict[str, Channel] = {}
        for ch in channels:
            channel = ch if isinstance(ch, Channel) else self._client._parse(ch)
            if channel.kind not in self._kinds:
                raise ConfigurationError(f"{self._venue} has no channel {channel.key!r}")
            parsed.setdefault(channel.key, channel)
        if not parsed:
            raise ConfigurationError("the bridge needs at least one channel")
        # A single symbol's channel rides on its kind's wildcard: write it once.
        wild = {
            c.kind
            for c in parsed.values()
            if (w := self._kinds[c.kind].wildcard) is not None and c.symbol == w
        }
        chosen = [
            c
            for c in parsed.values()
            if c.kind not in wild or c.symbol == self._kinds[c.kind].wildcard
        ]
        for channel in chosen:
            self._client._register(channel, self._handler(channel), thread=False, partial=True)
        return chosen

    def _stamp(self) -> int:
        now = time.time_ns()
        if now <= self._last_ns:
            now = self._last_ns + 1  # unique per bridge: it identifies an entry on retry
        self._last_ns = now
        return now

    def _handler(self, channel: Channel) -> Callable[[dict[str, Any]], None]:
        kind = self._kinds[channel.kind]
        wildcard = kind.wildcard is not None and channel.symbol == kind.wildcard
        conflate = conflation_key_for(kind)
        key = channel.key
        name = kind.name
        prefix, venue = self._prefix, self._venue
        stream = stream_key(prefix, venue, key)
        outbox = self._outbox
        streams: dict[str, str] = {}  # a wildcard's symbols: channel key -> stream

        def on_event(event: dict[str, Any]) -> None:
            ch, target = key, stream
            if wildcard:
                symbol = event.get("symbol") if isinstance(event, dict) else None
                if (
                    not isinstance(symbol, str)
                    or not 0 < len(symbol) <= _MAX_SYMBOL
                    or not symbol.isalnum()
                ):
                    self._refuse(key, "an event without a usable symbol")
                    return
                ch = f"{name}:{symbol.upper()}"
                known = streams.get(ch)
                if known is None:
                    if len(streams) >= _MAX_SYMBOLS:
                        self._refuse(key, f"a symbol beyond the first {_MAX_SYMBOLS}")
                        return
                    known = streams[ch] = stream_key(prefix, venue, ch)
                target = known
            self._received += 1
            item = Item(target, name, ch, event, self._stamp())
            if conflate is not None:
                # Market events; a final one (a closed candle) is never conflated, and
                # stays in line with the forming updates of its stream.
                ckey = conflate(event)
                outbox.put(item, key=None if ckey is None else (ch, ckey))
            else:
                self._keep(item)
            wake = self._wake
            if wake is not None:
                wake.set()

        return on_event

    def _keep(self, item: Item) -> None:
        try:
            kept = self._outbox.keep(item)
        except (TypeError, ValueError, OverflowError) as exc:
            self._refuse(item.channel, f"a payload that cannot be encoded ({exc})")
            return
        if not kept:
            n = self._outbox.dropped[item.channel]
            if n == 1 or not n % 1000:
                self.log.error(
                    "bridge buffer full (%d bytes of events waiting for Redis): dropped %d "
                    "%s event(s) so far; they are reported in a loss entry once Redis is back",
                    self._outbox.kept_bytes,
                    n,
                    item.channel,
                )

    def _refuse(self, channel: str, why: str) -> None:
        self._invalid += 1
        if self._invalid <= 10 or not self._invalid % 1000:
            self.log.warning(
                "bridge refused %s on %s (%d refused so far)", why, channel, self._invalid
            )

    def _on_gap(self, gap: Gap) -> None:
        item = Item(self._gaps_stream, GAP, gap.channel, msgspec.to_builtins(gap), self._stamp())
        self._keep(item)
        if self._wake is not None:
            self._wake.set()

    # -- running ------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the venue client and the writer until :meth:`stop`.

        Waiting events are written before it returns (for up to ``flush_timeout``
        seconds; what is left is counted as lost and logged).

        Raises:
            AuthenticationError: the venue refused the credentials (also any other
                fatal error of the venue client).

        Example:
            >>> await bridge.run()
        """
        if self._running:
            raise RuntimeError("this bridge is running already")
        self._running = True
        self._stopping = False
        self._wake = asyncio.Event()
        self._state = "running"
        self.log.info(
            "bridge %s -> %s: %s",
            self._venue,
            mask_redis_url(self._url),
            ", ".join(c.key for c in self.channels),
        )
        fatal: AgentStreamError | None = None
        writer_done = asyncio.Event()
        try:
            async with anyio.create_task_group() as tg:

                async def write() -> None:
                    try:
                        await self._write_loop()
                    finally:
                        writer_done.set()

                tg.start_soon(write)
                tg.start_soon(self._health_loop)
                try:
                    await self._client.connect()
                except AgentStreamError as exc:
                    fatal = exc
                self._stopping = True
                self._state = "stopping"
                self._wake.set()
                if fatal is None:
                    with anyio.move_on_after(self._flush_timeout):
                        await writer_done.wait()
                tg.cancel_scope.cancel()
            self._give_up_waiting()
        finally:
            self._state = "failed" if fatal is not None else "stopped"
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                with contextlib.suppress(Unavailable):
                    await self._writer.health(self._health_fields(), self._health_ttl)
                await self._writer.aclose()
            self._running = False
        if fatal is not None:
            self.log.error("bridge stopped: %s", fatal)
            raise fatal

    async def stop(self) -> None:
        """Stop the venue client; :meth:`run` then writes what waits and returns.

        Example:
            >>> await bridge.stop()
        """
        self._stopping = True
        await self._client.disconnect()

    async def __aenter__(self) -> Self:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        tg.start_soon(self.run)
        self._tg = tg
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        try:
            await self._tg.__aexit__(None, None, None)
        except BaseExceptionGroup as group:
            found = group.subgroup(lambda e: isinstance(e, AgentStreamError))
            if found is None:
                raise
            first: BaseException = found
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None

    def _give_up_waiting(self) -> None:
        """At the stop: what could not be written in time is lost; say so."""
        left = self._outbox.take(len(self._outbox))
        if not left:
            return
        counts: dict[str, int] = {}
        for item in left:
            counts[item.channel] = counts.get(item.channel, 0) + 1
        for ch, n in counts.items():
            self._lost[ch] = self._lost.get(ch, 0) + n
        self.log.error(
            "bridge stopped with %d event(s) not written to Redis (lost): %s",
            len(left),
            ", ".join(f"{ch}={n}" for ch, n in sorted(counts.items())),
        )

    # -- the writer ---------------------------------------------------------------------

    async def _sleep(self, delay: float) -> None:
        """The backoff before the next attempt (a stop's flush is bounded by
        ``flush_timeout``, which cancels it)."""
        await anyio.sleep(delay)

    async def _write_loop(self) -> None:
        wake = self._wake
        assert wake is not None
        backoff = Backoff(initial=self._backoff[0], maximum=self._backoff[1])
        self._up = False
        while True:
            if not self._up:
                try:
                    await self._reconnected()
                    self._up = True
                except Unavailable as exc:
                    self._down(exc)
                    await self._sleep(backoff.next())
                    continue
            batch = self._encodable(self._outbox.take(self._batch))
            report = self._loss_report()
            if report is not None:
                batch.append(report)
            if not batch:
                if self._stopping:
                    return
                wake.clear()
                await wake.wait()
                continue
            try:
                result = await self._writer.write(batch)
            except Unavailable as exc:
                self._outbox.give_back(i for i in batch if i is not report)
                self._unsure = [i for i in batch if i is not report]
                self._unreport(report)
                self._down(exc)
                self._up = False
                await self._sleep(backoff.next())
                continue
            if result.data_lost:
                self._data_lost()
            self._written_ok(result.written, report)
            if result.rejected:
                self._rejected(result.rejected, report)
            if result.retry:
                self._outbox.give_back(i for i in result.retry if i is not report)
                self._unreport(report if report in result.retry else None)
                self._down(Unavailable(f"{len(result.retry)} entries refused for now"))
                self._up = False
                await self._sleep(backoff.next())
                continue
            backoff.reset()
            if self._state == "redis_down":
                self._state = "stopping" if self._stopping else "running"
            await anyio.lowlevel.checkpoint()

    def _encodable(self, batch: list[Item]) -> list[Item]:
        """The batch without events whose payload MessagePack cannot carry (a number
        beyond 64 bits from a hostile server): refused and counted, never a crash."""
        ok: list[Item] = []
        for item in batch:
            try:
                item.encode()  # kept ones are encoded already; market ones are now, once
            except (TypeError, ValueError, OverflowError) as exc:
                self._refuse(item.channel, f"a payload that cannot be encoded ({exc})")
                continue
            ok.append(item)
        return ok

    async def _reconnected(self) -> None:
        """Redis answers (again): tell a restart, and drop what was written after all."""
        run_id = await self._writer.server_id()
        await self._check_restart(run_id)
        if self._unsure:
            found = await self._writer.written_already(self._unsure)
            if found:
                self._outbox.discard(found)
                self._written_ok(found, None)
                self.log.info(
                    "%d entries of the batch interrupted were written after all", len(found)
                )
            self._unsure = []
        self._back()

    def _back(self) -> None:
        if self._state == "redis_down":
            self.log.warning("Redis %s is back", mask_redis_url(self._url))
            self._state = "stopping" if self._stopping else "running"

    async def _check_restart(self, run_id: str) -> None:
        """A new ``run_id``: the server restarted (whether it kept the data, the next
        batch tells: see :meth:`_data_lost`)."""
        before = self._writer.run_id
        self._writer.run_id = run_id
        if before is None or before == run_id:
            return
        self._restarts += 1
        self.log.warning(
            "Redis %s restarted (run_id %s… -> %s…)",
            mask_redis_url(self._url),
            before[:8],
            run_id[:8],
        )

    def _data_lost(self) -> None:
        """The server lost what this bridge had written to it (seen by the batch that
        followed): say exactly what, and report it in a loss entry."""
        self._data_lost_count += 1
        written = sum(self._since_start.values())
        lost = {ch: min(n, self._maxlen) for ch, n in self._since_start.items()}
        self.log.error(
            "Redis lost its data (restarted without persistence, or flushed): the %d "
            "entries this bridge had written to %d stream(s) before are gone (MAXLEN kept "
            "at most ~%d per stream); writing goes on from now",
            written,
            len(self._since_start),
            self._maxlen,
        )
        self._since_start = {}
        reasons = self._unreported.setdefault("redis_restart", {})
        for ch, n in lost.items():
            reasons[ch] = reasons.get(ch, 0) + n
        self._last_loss_report = -1e9  # report it with the next batch

    def _down(self, exc: Unavailable) -> None:
        self._redis_errors += 1
        if self._state != "redis_down":
            self.log.warning(
                "Redis %s unavailable (%s); %d event(s) wait, retrying",
                mask_redis_url(self._url),
                exc,
                len(self._outbox),
            )
        if not self._stopping:
            self._state = "redis_down"

    def _written_ok(self, items: list[Item], report: Item | None) -> None:
        if not items:
            return
        self._batches += 1
        self._written += len(items)
        self._last_write = time.monotonic()
        for item in items:
            if item.type == GAP:
                self._gaps += 1
            elif item.type == LOSS:
                self._loss_reports += 1
            else:
                ch = item.channel
                self._by_channel[ch] = self._by_channel.get(ch, 0) + 1
                self._since_start[ch] = self._since_start.get(ch, 0) + 1

    def _rejected(self, rejected: list[tuple[Item, str]], report: Item | None) -> None:
        for item, why in rejected:
            if item is report:
                self.log.error("Redis refused the loss report: %s", why)
                continue
            self._lost[item.channel] = self._lost.get(item.channel, 0) + 1
            reasons = self._unreported.setdefault("refused_by_redis", {})
            reasons[item.channel] = reasons.get(item.channel, 0) + 1
            self.log.error("Redis refused an entry of %s (lost): %s", item.channel, why)

    def _loss_report(self) -> Item | None:
        """A ``loss`` entry for what was dropped since the last one (at most one a second)."""
        now = time.monotonic()
        conflated = _minus(self._outbox.conflated, self._reported_conflated)
        dropped = _minus(self._outbox.dropped, self._reported_dropped)
        if not (conflated or dropped or self._unreported):
            return None
        if now - self._last_loss_report < 1.0 and not self._stopping:
            return None
        self._last_loss_report = now
        reasons = {k: dict(v) for k, v in self._unreported.items()}
        if conflated:
            reasons["conflated"] = conflated
        if dropped:
            reasons["buffer_full"] = dropped
        self._unreported = {}
        self._reported_conflated = dict(self._outbox.conflated)
        self._reported_dropped = dict(self._outbox.dropped)
        payload: dict[str, Any] = {
            "reasons": reasons,
            "channels": _total(reasons),
            "bridge_lost_total": sum(self._lost.values()) + sum(self._outbox.dropped.values()),
            "bridge_conflated_total": sum(self._outbox.conflated.values()),
        }
        self.log.warning("bridge loss report: %s", _summary(reasons))
        return Item(self._gaps_stream, LOSS, "loss", payload, self._stamp())

    def _unreport(self, report: Item | None) -> None:
        """The loss report did not reach Redis: report the same again later."""
        if report is None:
            return
        reasons = report.payload["reasons"]
        self._reported_conflated = _minus(self._reported_conflated, reasons.get("conflated", {}))
        self._reported_dropped = _minus(self._reported_dropped, reasons.get("buffer_full", {}))
        for reason, chs in reasons.items():
            if reason in ("conflated", "buffer_full"):
                continue
            mine = self._unreported.setdefault(reason, {})
            for ch, n in chs.items():
                mine[ch] = mine.get(ch, 0) + n
        self._last_loss_report = -1e9

    # -- health -------------------------------------------------------------------------

    def _health_fields(self) -> dict[str, str | int | float]:
        s = self.stats
        return {
            "state": s.state,
            "upstream": s.upstream,
            "venue": self._venue,
            "channels": ",".join(c.key for c in self.channels),
            "pid": os.getpid(),
            "received": s.received,
            "written": s.written,
            "pending": s.pending,
            "pending_bytes": s.pending_bytes,
            "conflated": s.conflated,
            "lost": s.lost,
            "invalid": s.invalid,
            "gaps": s.gaps,
            "redis_restarts": s.redis_restarts,
            "last_write_age": -1 if s.last_write_age is None else round(s.last_write_age, 3),
            "updated_ns": time.time_ns(),
        }

    async def _health_loop(self) -> None:
        while True:
            try:
                run_id = await self._writer.health(self._health_fields(), self._health_ttl)
                await self._check_restart(run_id)
                if self._up:
                    self._back()  # else the writer reconnects and says so
            except Unavailable as exc:
                self._down(exc)
            except Exception:  # never let the health hash end the bridge
                self.log.exception("could not write the bridge's health hash")
            await anyio.sleep(self._health_interval)

    @property
    def stats(self) -> BridgeStats:
        """Counters and state (a snapshot).

        Example:
            >>> print(bridge.stats.written, bridge.stats.conflated, bridge.stats.lost)
        """
        outbox = self._outbox
        last = self._last_write
        lost = dict(self._lost)
        for ch, n in outbox.dropped.items():
            lost[ch] = lost.get(ch, 0) + n
        return BridgeStats(
            state=self._state,
            upstream=self._client.stats.state,
            received=self._received,
            written=self._written,
            written_by_channel=dict(self._by_channel),
            pending=len(outbox),
            pending_bytes=outbox.kept_bytes,
            conflated=sum(outbox.conflated.values()),
            lost=sum(lost.values()),
            lost_by_channel=lost,
            invalid=self._invalid,
            gaps=self._gaps,
            loss_reports=self._loss_reports,
            batches=self._batches,
            redis_errors=self._redis_errors,
            redis_restarts=self._restarts,
            redis_data_lost=self._data_lost_count,
            last_write_age=None if last is None else time.monotonic() - last,
        )


def _summary(reasons: dict[str, dict[str, int]], top: int = 3) -> str:
    """``conflated: 5120 on 3 channels (ticker:BTCUSDT=4000, ...)``: short, for a log line."""
    parts = []
    for reason, chs in sorted(reasons.items()):
        worst = sorted(chs.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        more = ", ..." if len(chs) > top else ""
        parts.append(
            f"{reason}: {sum(chs.values())} on {len(chs)} channel(s) ("
            + ", ".join(f"{ch}={n}" for ch, n in worst)
            + f"{more})"
        )
    return "; ".join(parts)


def _minus(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in now.items() if n > before.get(k, 0)}


def _total(reasons: dict[str, dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for chs in reasons.values():
        for ch, n in chs.items():
            out[ch] = out.get(ch, 0) + n
    return out
