"""``RedisBus``: a venue's events from Redis Streams, with the venue client's decorators.

The bridge (``agentstream bridge``) writes each event of a venue stream to the Redis
stream ``{prefix}:{venue}:{channel}``; a :class:`RedisBus` reads the streams of the
channels its handlers want in a consumer group: processes of one group share the work
(each entry goes to one of them), each group sees every entry.

* ``XGROUP CREATE ... MKSTREAM`` when a stream is first read (an existing group keeps
  its position: ``start`` only applies to a new group);
* ``XREADGROUP`` over every stream, ``BLOCK block_ms``, at most ``max_in_flight``
  entries delivered and not yet settled;
* ``XACK`` once every handler the entry went to has returned (an async handler: its
  coroutine finished); an entry whose handler raised is not acknowledged: it is
  delivered again after ``claim_idle`` seconds (to this consumer or another);
* ``XAUTOCLAIM`` every ``claim_idle / 2`` seconds takes over entries any consumer of
  the group (a crashed one) has held longer than ``claim_idle``; an entry delivered more
  than ``max_deliveries`` times goes to the dead-letter stream ``{prefix}:{venue}:dead``
  (and is acknowledged), as does an entry that cannot be decoded, at once;
* the gaps stream ``{prefix}:{venue}:gaps`` is read too: gap reports that concern the
  subscribed channels go to ``on_gap``, the bridge's loss reports to ``on_error``;
* Redis down or restarted: reconnect with backoff, groups re-created (from the start of
  a stream that was lost).

Needs the ``redis`` extra (``pip install agentstream[redis]``).
"""

from __future__ import annotations

import os
import socket
import time
from collections import OrderedDict
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc

from agentstream._client import _first_of
from agentstream._dispatch import SharedWorker
from agentstream.backoff import Backoff
from agentstream.bus._codec import decode_entry, stream_key
from agentstream.bus._consumer import BusClient, BusStats, DeadLettered
from agentstream.client import AgentExchangeHandlers
from agentstream.errors import (
    AuthenticationError,
    ConfigurationError,
    DecodeError,
    StreamConnectionError,
)
from agentstream.tastytrade.client import TastytradeHandlers
from agentstream.tradier.client import TradierHandlers

if TYPE_CHECKING:
    import logging
    from collections.abc import Hashable

    import redis.asyncio as aioredis

    from agentstream._dispatch import Slot
    from agentstream.protocols.base import VenueProtocol

__all__ = ["RedisBus"]

Venue = Literal["agentexchange", "tradier", "tastytrade"]
#: Error texts of failed entries kept for their dead-letter record.
_ERRORS_KEPT = 10_000


def _protocol(venue: str) -> VenueProtocol:
    """The venue's protocol object: its channel kinds, models and order view (no I/O)."""
    if venue == "agentexchange":
        from agentstream.protocols.agentexchange import AgentExchangeProtocol

        return AgentExchangeProtocol("ws://127.0.0.1")
    if venue == "tradier":
        from agentstream.protocols.tradier import TradierProtocol

        return TradierProtocol("http://127.0.0.1")
    if venue == "tastytrade":
        from agentstream.protocols.tastytrade import TastytradeProtocol

        return TastytradeProtocol("ws://127.0.0.1")
    raise ConfigurationError(f"unknown venue {venue!r}: one of agentexchange, tradier, tastytrade")


def _refused(exc: BaseException, rex: Any) -> Exception | None:
    """The error (itself or inside exception groups) if Redis refused our credentials or
    their rights: retrying cannot help."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _refused(inner, rex)
            if found is not None:
                return found
        return None
    refused = (
        rex.AuthenticationError,
        rex.AuthenticationWrongNumberOfArgsError,
        rex.NoPermissionError,
    )
    return exc if isinstance(exc, refused) else None


def _lost(exc: BaseException, rex: Any) -> Exception | None:
    """The error that ended a Redis session (itself or inside exception groups), if it
    is one to reconnect after: the connection failed, or the server lost our groups."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _lost(inner, rex)
            if found is not None:
                return found
        return None
    lost = (rex.ConnectionError, rex.TimeoutError, rex.BusyLoadingError, OSError)
    if isinstance(exc, lost) or (isinstance(exc, rex.ResponseError) and "NOGROUP" in str(exc)):
        return exc
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _start_id(start: str | datetime) -> str:
    if isinstance(start, datetime):
        if start.tzinfo is None:
            raise ConfigurationError("start: a datetime needs a timezone (e.g. UTC)")
        at = int(start.timestamp() * 1000)
        # Entries at or after that millisecond: the group's position is just before it.
        return f"{at - 1}-18446744073709551615" if at > 0 else "0"
    if not isinstance(start, str) or not start:
        raise ConfigurationError("start must be '$', '0', an entry id or a datetime")
    if start in ("$", "0"):
        return start
    ms, _, seq = start.partition("-")
    if not ms.isdigit() or (seq and not seq.isdigit()):
        raise ConfigurationError(
            f"start {start!r} is not '$', '0' or an entry id (1700000000000-0)"
        )
    return start


class RedisBus(BusClient, AgentExchangeHandlers, TradierHandlers, TastytradeHandlers):
    """A consumer of the bridge's Redis streams, with the venue client's decorators.

    Handlers, hooks, typed or dict payloads (``OrderEvent`` too), ``listen()``,
    ``await bus.connect()``, ``bus.run_forever()``, ``stop()``, ``async with``: as on the
    venue's client. The decorators are those of ``venue``'s client (AgentExchange:
    ``on_ticker(symbol | "all")``, ``on_candles``, ``on_order_update``, ``on_portfolio``;
    Tradier: ``on_order_update``; tastytrade: ``on_order_update``, ``on_balance``,
    ``on_position``, ``on_quote_alert``, ``on_watchlist``); another venue's raises
    :class:`~agentstream.ConfigurationError`.

    Delivery is at least once: an entry is acknowledged after its handlers returned, so
    a consumer that dies before that leaves it to another (after ``claim_idle``), and a
    handler may see an entry again. Order updates carry ids: make handlers idempotent.

    Args:
        url: ``redis://HOST:PORT/DB`` (``rediss://`` for TLS).
        venue: whose events: ``agentexchange``, ``tradier`` or ``tastytrade``.
        group: the consumer group; processes of one group share the entries, each group
            gets all of them.
        consumer: this consumer's name in the group, unique per process (default
            ``{hostname}-{pid}``). A consumer restarted under its old name first
            handles the entries it had received and not acknowledged.
        start: where a new group starts: ``"$"`` (new entries only, the default),
            ``"0"`` (everything kept), an entry id, or an aware ``datetime``.
        prefix: the bridge's stream prefix.
        block_ms: how long one read waits for entries (must be below ``socket_timeout``).
        batch: entries asked for per read (and per claim).
        max_in_flight: entries delivered and not yet settled at most (reads wait).
        claim_idle: seconds an entry may stay unacknowledged before another consumer (or
            this one, for an entry whose handler raised) takes it over. Longer than your
            slowest handler.
        max_deliveries: deliveries of an entry before it goes to the dead-letter stream.
        discover_every: seconds between looks for new streams of an ``"all"`` subscription
            (and of ``listen(Model)`` without a symbol).
        socket_timeout, connect_timeout: Redis client timeouts in seconds.
        backoff_initial, backoff_max: the reconnect schedule when Redis is down.
        dead_maxlen: the dead-letter stream is trimmed to about this many entries.
        queue_size, logger: as for a venue client.

    Raises:
        ConfigurationError: an unknown venue, a bad ``start``, or a timing option out
            of range.

    Example:
        >>> bus = RedisBus("redis://127.0.0.1:6379/0", group="bots")
        >>> @bus.on_order_update()
        ... async def on_order(o: OrderEvent):
        ...     print(o.order_id, o.status)
        >>> bus.run_forever()
    """

    def __init__(
        self,
        url: str,
        *,
        venue: Venue | str = "agentexchange",
        group: str = "agentstream",
        consumer: str | None = None,
        start: str | datetime = "$",
        prefix: str = "agentstream",
        block_ms: int = 1000,
        batch: int = 100,
        max_in_flight: int = 1000,
        claim_idle: float = 30.0,
        max_deliveries: int = 5,
        discover_every: float = 2.0,
        socket_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        dead_maxlen: int = 100_000,
        queue_size: int = 10_000,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(_protocol(venue), queue_size=queue_size, logger=logger)
        for name, value in (
            ("block_ms", block_ms),
            ("batch", batch),
            ("max_in_flight", max_in_flight),
            ("claim_idle", claim_idle),
            ("max_deliveries", max_deliveries),
            ("discover_every", discover_every),
            ("socket_timeout", socket_timeout),
            ("dead_maxlen", dead_maxlen),
        ):
            if value <= 0:
                raise ConfigurationError(f"{name} must be positive, got {value}")
        if block_ms >= socket_timeout * 1000:
            raise ConfigurationError(
                f"block_ms ({block_ms}) must be below socket_timeout ({socket_timeout} s): "
                "a blocked read would otherwise time out and reconnect"
            )
        if not group or not prefix:
            raise ConfigurationError("group and prefix must be non-empty")
        try:
            import redis.asyncio  # noqa: F401
        except ImportError:  # pragma: no cover - the extra is installed in tests
            raise ConfigurationError(
                "RedisBus needs the redis extra: pip install 'agentstream[redis]'"
            ) from None
        self.url = url
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.prefix = prefix
        self._start = _start_id(start)
        self._block_ms = int(block_ms)
        self._batch = int(batch)
        self._max_in_flight = int(max_in_flight)
        self._claim_idle_ms = max(1, int(claim_idle * 1000))
        self._claim_every = claim_idle / 2
        self._max_deliveries = int(max_deliveries)
        self._discover_every = discover_every
        self._socket_timeout = socket_timeout
        self._redis_connect_timeout = connect_timeout
        self._redis_backoff = {"initial": backoff_initial, "maximum": backoff_max}
        self._dead_maxlen = dead_maxlen
        self._gaps_stream = stream_key(prefix, self.venue, "gaps")
        self._dead_stream = stream_key(prefix, self.venue, "dead")
        self._channels_set = stream_key(prefix, self.venue, "channels")
        # Per run (loop thread only):
        self._groups: set[str] = set()
        #: Streams this consumer has read (their groups, if lost, are made from "0").
        self._ever: set[str] = set()
        self._streams: list[str] = []
        self._began_id = "0"
        self._pending: set[tuple[str, str]] = set()
        self._acks: dict[str, list[str]] = {}
        #: Entries settled whose XACK is queued or on its way (not to be delivered again
        #: when a reconnect or a claim reads them back).
        self._acking: set[tuple[str, str]] = set()
        self._errors: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._wake_acker: anyio.Event | None = None
        self._room: anyio.Event | None = None
        self._connected = False
        # Counters.
        self._read = 0
        self._handled = 0
        self._acked = 0
        self._claimed = 0
        self._dead = 0

    def __repr__(self) -> str:
        from agentstream._redact import mask_url

        return (
            f"<RedisBus {mask_url(self.url)} {self.venue} group={self.group} "
            f"consumer={self.consumer} state={self._state}>"
        )

    @property
    def stats(self) -> BusStats:
        """The consumer's counters (a snapshot; read it as often as you like).

        Example:
            >>> s = bus.stats
            >>> print(s.read, s.handled, s.acked, s.claimed, s.dead_lettered, s.in_flight)
        """
        return self._bus_stats(
            connections=int(self._connected),
            read=self._read,
            handled=self._handled,
            acked=self._acked,
            claimed=self._claimed,
            dead_lettered=self._dead,
            streams=len(self._streams),
        )

    # -- what to read -----------------------------------------------------------------

    def _reconcile(self) -> None:
        """Start the workers of new handlers, stop those of removed ones (loop thread)."""
        if self._tg is None:
            return
        with self._lock:
            changes = self._worker_changes(self._wanted_keys())
        self._swap_workers(*changes)

    def _slot_removed(self, slot: Slot) -> None:
        self._abandon(slot)  # queued, and the one being handled: delivered again

    def _wanted_streams(self, known: set[str]) -> tuple[list[str], set[str]]:
        """The streams to read (the gaps stream first) and those found by discovery.

        ``known``: the channel keys the bridge has written to (its channels set).
        """
        with self._lock:
            wanted = self._wanted_keys()
            kinds = {k for k, v in self._kind_listeners.items() if v}
        keys: set[str] = set()
        for key in wanted:
            kind, _, rest = key.partition(":")
            spec = self._kinds.get(kind)
            if spec is not None and spec.wildcard is not None and rest == spec.wildcard:
                kinds.add(kind)
            else:
                keys.add(key)
        found = {k for k in known if k.partition(":")[0] in kinds and k not in keys}
        found = {
            k for k in found if self._kinds[k.partition(":")[0]].wildcard != k.partition(":")[2]
        }
        streams = [stream_key(self.prefix, self.venue, k) for k in sorted(keys | found)]
        discovered = {stream_key(self.prefix, self.venue, k) for k in found}
        return [self._gaps_stream, *streams], discovered

    # -- the run ----------------------------------------------------------------------

    async def _serve(self, task_status: anyio.abc.TaskStatus[None], *, warn_empty: bool) -> bool:
        assert self._hook_runner is not None
        assert self._stop_event is not None
        assert self._ready is not None
        self._groups = set()
        self._streams = []
        self._pending = set()
        self._acks = {}
        self._acking = set()
        self._wake_acker = anyio.Event()
        self._room = anyio.Event()
        started = False
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._hook_runner.run)
                self._shared_worker = SharedWorker(tg.start_soon)
                tg.start_soon(self._shared_worker.run)
                self._reconcile()
                if warn_empty and not self._wanted_keys() and not self._kind_listeners:
                    self.log.warning(
                        "reading with no channel: register a handler or subscribe first"
                    )
                tg.start_soon(self._supervise)
                await _first_of(self._ready, self._stop_event)
                if not self._stop_event.is_set():
                    task_status.started()
                    started = True
                    await self._stop_event.wait()
                tg.cancel_scope.cancel()
        finally:
            self._connected = False
            if self._acks:
                with anyio.CancelScope(shield=True):
                    await self._flush_on_stop()
            self._abandon()
            self._pending.clear()
            self._acking.clear()
        return started

    async def _flush_on_stop(self) -> None:
        """Acknowledge what was handled before the stop (a short try: if Redis is down,
        those entries stay pending and the group delivers them again)."""
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(
            self.url, socket_timeout=2.0, socket_connect_timeout=self._redis_connect_timeout
        )
        try:
            with anyio.move_on_after(3):
                async with client.pipeline(transaction=False) as pipe:
                    for stream, ids in self._acks.items():
                        pipe.xack(stream, self.group, *ids)
                    await pipe.execute()
                self._acked += sum(len(ids) for ids in self._acks.values())
                self._acks = {}
                self._acking.clear()
        except Exception as exc:
            self.log.warning(
                "could not acknowledge %d entries when stopping: %s", len(self._acks), exc
            )
        finally:
            with anyio.move_on_after(1):
                await client.aclose()

    async def _supervise(self) -> None:
        """Connect to Redis and read; on a lost connection, reconnect with backoff."""
        import redis.asyncio as aioredis
        import redis.exceptions as rex

        backoff = Backoff(
            initial=float(self._redis_backoff["initial"]),
            maximum=float(self._redis_backoff["maximum"]),
        )
        failures = 0
        while True:
            client = aioredis.Redis.from_url(
                self.url,
                socket_timeout=self._socket_timeout,
                socket_connect_timeout=self._redis_connect_timeout,
            )
            try:
                await self._session(client, backoff)
            except Exception as exc:
                refused = _refused(exc, rex)
                if refused is not None:
                    # As a venue client refused its key: stop for good (connect() and
                    # run_forever() raise it, state "failed").
                    if self._connected:
                        self._connected = False
                        self._call_hooks(self._hooks_disconnect, "redis: credentials refused")
                    self._fail(
                        AuthenticationError(
                            f"redis {self._where()} refused the credentials: {refused}"
                        )
                    )
                    return
                lost = _lost(exc, rex)
                if lost is None:
                    raise
                exc = lost
                failures += 1
                was = self._connected
                self._connected = False
                if was:
                    self._call_hooks(self._hooks_disconnect, f"redis: {type(exc).__name__}")
                else:
                    self._failed_attempts += 1
                self._state = "reconnecting"
                delay = backoff.next()
                if failures <= 3 or failures % 100 == 0:
                    self.log.warning(
                        "redis %s: %s; reconnecting in %.2f s", self._where(), exc, delay
                    )
                self._emit_error(
                    StreamConnectionError(f"redis {self._where()}: {exc}"), {"stage": "redis"}
                )
                await anyio.sleep(delay)
            else:
                failures = 0
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await client.aclose()

    def _where(self) -> str:
        from agentstream._redact import mask_url

        return mask_url(self.url)

    async def _session(self, client: aioredis.Redis, backoff: Backoff) -> None:
        await client.ping()
        if self._began_id == "0":
            secs, micros = await client.time()
            self._began_id = f"{int(secs) * 1000 + int(micros) // 1000}-0"
        again = bool(self._ever)
        self._groups = set()
        await self._sync_streams(client)
        self._connected = True
        self._state = "connected"
        backoff.reset()
        if again:
            self._reconnects += 1
            self.log.info("redis %s: reconnected", self._where())
        self._call_hooks(self._hooks_connect)
        assert self._ready is not None
        self._ready.set()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._acker, client)
            tg.start_soon(self._claimer, client)
            await self._read_own_pending(client)
            await self._reader(client)

    async def _sync_streams(self, client: aioredis.Redis) -> None:
        """Discover streams, create the groups of streams read for the first time."""
        import redis.exceptions as rex

        known: Any = await client.smembers(self._channels_set)
        streams, discovered = self._wanted_streams({_text(k) for k in known})
        for stream in streams:
            if stream in self._groups:
                continue
            start = self._start
            if stream in self._ever:
                start = "0"  # read before: if the group is gone, so was the stream
            elif start == "$" and stream in discovered:
                start = self._began_id  # a stream found later: its entries since we began
            try:
                await client.xgroup_create(stream, self.group, id=start, mkstream=True)
            except rex.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._groups.add(stream)
            self._ever.add(stream)
        self._streams = streams

    async def _read_own_pending(self, client: aioredis.Redis) -> None:
        """Entries delivered to this consumer before (a restart) and not acknowledged."""
        after = dict.fromkeys(self._streams, "0")
        while after:
            got: Any = await self._xreadgroup(client, after, block=None)
            after = {}
            for raw_stream, entries in got or ():
                stream = _text(raw_stream)
                for raw_id, fields in entries:
                    await self._take(client, stream, _text(raw_id), fields, 0)
                if entries:
                    after[stream] = _text(entries[-1][0])
            await self._wait_room()

    async def _xreadgroup(
        self, client: aioredis.Redis, streams: dict[Any, Any], block: int | None
    ) -> Any:
        # A NOGROUP error (the server lost the groups) ends the session; the next one
        # creates them again.
        return await client.xreadgroup(
            self.group, self.consumer, streams, count=self._batch, block=block
        )

    async def _reader(self, client: aioredis.Redis) -> None:
        next_discovery = time.monotonic() + self._discover_every
        while True:
            await self._wait_room()
            now = time.monotonic()
            if now >= next_discovery:
                next_discovery = now + self._discover_every
                await self._sync_streams(client)
            elif any(s not in self._groups for s in self._wanted_streams(set())[0]):
                await self._sync_streams(client)  # a handler added meanwhile
            got: Any = await self._xreadgroup(
                client, dict.fromkeys(self._streams, ">"), block=self._block_ms
            )
            for raw_stream, entries in got or ():
                stream = _text(raw_stream)
                for raw_id, fields in entries:
                    await self._take(client, stream, _text(raw_id), fields, 1)

    async def _wait_room(self) -> None:
        while self._in_flight >= self._max_in_flight:
            room = self._room = anyio.Event()
            with anyio.move_on_after(0.5):  # (also re-checks after abandoned entries)
                await room.wait()

    async def _take(
        self, client: aioredis.Redis, stream: str, entry_id: str, fields: Any, deliveries: int
    ) -> None:
        """One entry read (``deliveries``: its delivery count if known, else 0 or 1)."""
        token = (stream, entry_id)
        if token in self._pending:
            return  # still with its handlers here (a claim of our own slow entry)
        if token in self._acking:
            # Settled, its XACK not yet done (Redis went away meanwhile): read back from
            # our pending entries, it must not be handled twice. The ack is queued (or
            # on its way, and queued again if it fails).
            return
        self._read += 1
        if fields is None:  # claimed, but trimmed from the stream meanwhile
            self._queue_ack(stream, entry_id)
            return
        try:
            entry = decode_entry(fields)
            if stream == self._gaps_stream:

                def ack() -> None:
                    self._queue_ack(stream, entry_id)

                self._report(entry, ack)
                return
            self._pending.add(token)
            delivered = self._deliver(entry, token)
        except DecodeError as exc:
            self._pending.discard(token)
            self._bad_entries += 1
            self.log.warning("a bad entry %s in %s: %s", entry_id, stream, exc)
            self._emit_error(exc, {"stage": "decode", "stream": stream, "id": entry_id})
            await self._dead_letter(client, stream, entry_id, fields, str(exc), max(deliveries, 1))
            return
        if not delivered:
            self._pending.discard(token)
            self._queue_ack(stream, entry_id)

    def _abandoned(self, token: Hashable) -> None:
        # Pending in Redis for this consumer: the claimer takes it back after claim_idle.
        self._pending.discard(token)  # (stream, entry id): what _take delivers
        if self._room is not None:
            self._room.set()

    def _settle(self, token: Hashable, error: BaseException | None) -> None:
        key: tuple[str, str] = token  # type: ignore[assignment]  # what _take delivers
        if key not in self._pending:
            return  # abandoned meanwhile (its handler was removed, or the run ended)
        self._pending.discard(key)
        if self._room is not None:
            self._room.set()
        if error is None:
            self._handled += 1
            self._queue_ack(*key)
            return
        # Not acknowledged: delivered again after claim_idle (the claimer), up to
        # max_deliveries times. Its error is kept for the dead-letter record.
        errors = self._errors
        errors[key] = f"{type(error).__name__}: {error}"
        if len(errors) > _ERRORS_KEPT:
            errors.popitem(last=False)

    def _queue_ack(self, stream: str, entry_id: str) -> None:
        self._acks.setdefault(stream, []).append(entry_id)
        self._acking.add((stream, entry_id))
        if self._wake_acker is not None:
            self._wake_acker.set()

    async def _acker(self, client: aioredis.Redis) -> None:
        """Acknowledge settled entries, in one round trip per batch."""
        while True:
            if not self._acks:
                event = self._wake_acker = anyio.Event()
                await event.wait()
                continue
            acks, self._acks = self._acks, {}
            try:
                async with client.pipeline(transaction=False) as pipe:
                    for stream, ids in acks.items():
                        pipe.xack(stream, self.group, *ids)
                    await pipe.execute()
            except BaseException:
                for stream, ids in acks.items():  # again on the next connection
                    self._acks.setdefault(stream, [])[:0] = ids
                raise
            self._acked += sum(len(ids) for ids in acks.values())
            acking = self._acking
            for stream, ids in acks.items():
                for entry_id in ids:
                    acking.discard((stream, entry_id))

    async def _claimer(self, client: aioredis.Redis) -> None:
        """Take over entries held longer than ``claim_idle`` (a dead consumer's, and this
        one's whose handler raised); dead-letter those delivered too often."""
        while True:
            await anyio.sleep(self._claim_every)
            for stream in list(self._streams):
                cursor = "0-0"
                while True:
                    got: Any = await client.xautoclaim(
                        stream,
                        self.group,
                        self.consumer,
                        min_idle_time=self._claim_idle_ms,
                        start_id=cursor,
                        count=self._batch,
                    )
                    cursor = _text(got[0])
                    entries = [(_text(i), f) for i, f in got[1]]
                    if entries:
                        await self._reclaimed(client, stream, entries)
                    if cursor in ("0-0", "0"):
                        break

    async def _reclaimed(
        self, client: aioredis.Redis, stream: str, entries: list[tuple[str, Any]]
    ) -> None:
        busy = self._pending
        acking = self._acking
        mine = [(i, f) for i, f in entries if (stream, i) not in busy and (stream, i) not in acking]
        if not mine:
            return
        info: Any = await client.xpending_range(
            stream,
            self.group,
            min=mine[0][0],
            max=mine[-1][0],
            count=len(entries) * 2 + 10,
            consumername=self.consumer,
        )
        counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in info}
        for entry_id, fields in mine:
            n = counts.get(entry_id, 1)
            self._claimed += 1
            if n > self._max_deliveries and fields is not None:
                reason = self._errors.pop((stream, entry_id), "its handlers failed every time")
                await self._dead_letter(client, stream, entry_id, fields, reason, n - 1)
                continue
            await self._take(client, stream, entry_id, fields, n)

    async def _dead_letter(
        self,
        client: aioredis.Redis,
        stream: str,
        entry_id: str,
        fields: Any,
        reason: str,
        deliveries: int,
    ) -> None:
        """Move an entry to the dead-letter stream and acknowledge it, atomically."""
        record: dict[Any, Any] = dict(fields)
        record.update(
            {
                "stream": stream,
                "id": entry_id,
                "group": self.group,
                "error": reason[:1000],
                "deliveries": str(deliveries),
            }
        )
        async with client.pipeline(transaction=True) as pipe:
            pipe.xadd(self._dead_stream, record, maxlen=self._dead_maxlen, approximate=True)
            pipe.xack(stream, self.group, entry_id)
            await pipe.execute()
        self._dead += 1
        self._acked += 1
        self.log.error(
            "entry %s of %s moved to %s after %d deliveries: %s",
            entry_id,
            stream,
            self._dead_stream,
            deliveries,
            reason,
        )
        self._emit_error(
            DeadLettered(
                f"entry {entry_id} of {stream} dead-lettered: {reason}",
                stream=stream,
                entry_id=entry_id,
                deliveries=deliveries,
                reason=reason,
            ),
            {"stage": "dead-letter", "stream": stream, "id": entry_id},
        )
