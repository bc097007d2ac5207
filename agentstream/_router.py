"""The reader's hot path: decode a frame once, hand it to the queues of its handlers
(or, for a sync handler proved fast, straight to the handler).

A data frame is decoded in one pass by a msgspec tagged union whose members are built
for the handlers registered now: a channel kind that only dict handlers want decodes
its ``data`` straight to a ``dict``, one that only typed handlers want straight to its
model (``Ticker``, ...), one that both want (or none) to ``msgspec.Raw``, decoded per
representation afterwards. The union is rebuilt when handlers change, never per frame.

Anything the fast decoder refuses (a control message, a frame of the wrong shape, an
event that fails validation) goes to the slow path, which classifies it exactly:
controls are handled, bad frames and invalid events are counted and reported, and the
valid part of a frame still reaches the handlers that can take it.

The router also keeps what a gap report needs: the last event of each channel, and for
candles the last closed one, so that after a reconnect the application learns which
channels were down, between which exchange timestamps, and which candles it missed.
"""

from __future__ import annotations

import logging
import time
import typing
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

import msgspec

from agentstream._dispatch import _SLOW_HANDLER_S
from agentstream.errors import AgentStreamError, DecodeError, ServerError
from agentstream.models import Gap, _as_datetime
from agentstream.protocols.base import (
    Ack,
    AuthFailed,
    BadFrame,
    Batch,
    Data,
    Heartbeat,
    Inbound,
    Noise,
    Ping,
    Reconnect,
    Refused,
)

if typing.TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from agentstream._dispatch import Slot
    from agentstream.protocols.base import Kind, VenueProtocol

__all__ = ["DerivedSink", "FeedTarget", "Route", "Router", "RouterHost", "Sink", "SinkBase"]

log = logging.getLogger("agentstream")

_set = msgspec.structs.force_setattr
#: Distinct channel keys kept in ``stats.messages`` for frames nobody subscribed to;
#: beyond this they are counted under one key, so a hostile server cannot grow memory.
_MAX_UNROUTED_KEYS = 1000
_UNROUTED_OVERFLOW = "(other channels)"
_MAX_KEY_LENGTH = 64
#: Symbols of a wildcard channel (``ticker:all``) remembered for per-symbol counts and
#: gap reports.
_MAX_ALL_SYMBOLS = 10_000
#: Missing candles listed in one gap report at most (the count is always exact).
_MAX_MISSING_LISTED = 10_000
#: 8 frames (or a batch's last ones) handled in more than this, 25 µs a frame: a handler
#: called from the reader was not as fast as its drains showed (20 µs a call).
_DIRECT_BUDGET_S = 200e-6
#: Private events remembered to deliver each once when several sockets receive it.
_PRIVATE_SEEN = 4096

dict_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()
_encode = msgspec.json.Encoder().encode


class Sink(Protocol):
    """What a route pushes events to: a handler's :class:`Slot`, or a sink in front of
    handlers (an aggregator's, a venue's stage, a view's)."""

    push: Callable[[Any], None]
    #: Takes every update of events that form (candles), not only final ones.
    partial: bool
    #: A plain sync handler's slot (the reader may call it itself); False for sinks.
    inline: bool
    #: Proven fast: called from the reader (the router turns it off on a slow batch).
    direct: bool


class RouterHost(Protocol):
    """What the router needs from the client: where errors and gaps go, and its logger."""

    @property
    def log(self) -> logging.Logger: ...

    def emit_error(self, exc: AgentStreamError, context: dict[str, Any]) -> None: ...

    def emit_gap(self, gap: Gap) -> None: ...


class FeedTarget(Protocol):
    """What the router needs from the connection it reads for (a supervisor's link)."""

    index: int
    gaps: LinkGaps
    #: Data frames received on the current connection.
    data_frames: int

    def on_control(self, inbound: Ack | Refused | AuthFailed | Reconnect) -> ServerError | None:
        """An ack, refusal or end of the connection; a refusal comes back as an error."""
        ...


class Route:
    """Everything the reader needs for one channel key, computed once per change.

    ``push_all`` takes every event, ``push_closed`` only final ones (closed candles, for
    handlers registered without ``partial=True``); for kinds with no final events it is
    empty.
    ``push`` calls every ``push_all`` (the one handler's own push when there is one).
    """

    __slots__ = (
        "count",
        "dict_slots",
        "key",
        "kind",
        "last",
        "last_closed",
        "private",
        "push",
        "push_all",
        "push_closed",
        "push_dict_all",
        "push_dict_closed",
        "push_typed_all",
        "push_typed_closed",
        "solo",
        "spec",
        "typed_slots",
    )

    def __init__(
        self, key: str, spec: Kind, dict_slots: tuple[Sink, ...], typed_slots: tuple[Sink, ...]
    ) -> None:
        self.key = key
        self.spec = spec
        self.kind = spec.name
        self.private = spec.private
        self.dict_slots = dict_slots
        self.typed_slots = typed_slots
        candles = spec.final is not None  # events that form until a final one

        def pushers(slots: tuple[Sink, ...], closed: bool) -> tuple[Callable[[Any], None], ...]:
            return tuple(s.push for s in slots if not candles or s.partial != closed)

        self.push_dict_all = pushers(dict_slots, False)
        self.push_dict_closed = pushers(dict_slots, True) if candles else ()
        self.push_typed_all = pushers(typed_slots, False)
        self.push_typed_closed = pushers(typed_slots, True) if candles else ()
        # One representation only (the fast path's case): one tuple each.
        self.push_all = self.push_dict_all + self.push_typed_all
        self.push_closed = self.push_dict_closed + self.push_typed_closed
        self.push = _fan_out(self.push_all)
        #: The one handler of the channel when it is a plain sync one: the reader calls it
        #: itself while it is proven fast (``Slot._push_drain`` inlined, one call less).
        slots = dict_slots + typed_slots
        only = slots[0] if len(slots) == 1 else None
        # Only a real handler's slot is inline (sinks in front of handlers never are).
        self.solo = cast("Slot", only) if only is not None and only.inline and not candles else None
        #: Data frames received for this channel.
        self.count = 0
        #: The last event (dict, model or Raw) and, for candles, the last closed one.
        self.last: Any = None
        self.last_closed: Any = None

    def inherit(self, old: Route) -> None:
        """Keep counts and gap bookkeeping across a rebuild of the routing table."""
        self.count = old.count
        self.last = old.last
        self.last_closed = old.last_closed


def _fan_out(pushes: tuple[Callable[[Any], None], ...]) -> Callable[[Any], None]:
    """One callable that pushes an event to every queue in ``pushes``, in order."""
    if len(pushes) == 1:
        return pushes[0]  # the common case: no loop

    def push(ev: Any) -> None:
        for one in pushes:
            one(ev)

    return push


@dataclass
class GapStart:
    """What was known when a channel went down."""

    disconnected_at: datetime
    reason: str
    last: Any
    last_closed: Any


@dataclass
class LinkGaps:
    """Per link: channels down since the last disconnect, waiting for their first event."""

    open: dict[str, GapStart] = field(default_factory=dict)
    reconnected_at: datetime | None = None


def _as_time(value: Any) -> datetime | None:
    """An exchange timestamp (ISO string, epoch int or datetime) as an aware datetime."""
    try:
        if isinstance(value, str):
            value = msgspec.convert(value, datetime | int)
        if isinstance(value, bool) or not isinstance(value, datetime | int):
            return None
        return _as_datetime(value)  # the models' own conversion (epoch s or ms, naive = UTC)
    except (msgspec.ValidationError, ValueError):
        return None


def _unraw(event: Any) -> Any:
    """A Raw event (kept when nobody listens) decoded to a dict; None if it is not one."""
    if not isinstance(event, msgspec.Raw):
        return event
    try:
        plain = dict_decoder.decode(event)
    except Exception:
        return None
    return plain if isinstance(plain, dict) else None


def event_time(spec: Kind, event: Any) -> datetime | None:
    """The exchange timestamp of an event in any representation (the latest of the
    kind's time fields present), or None."""
    event = _unraw(event)
    if event is None or not spec.time_fields:
        return None
    get: Callable[[str], Any]
    if isinstance(event, dict):
        get = event.get
    else:

        def get(name: str) -> Any:
            return getattr(event, name, None)

    times = [t for t in (_as_time(get(name)) for name in spec.time_fields) if t is not None]
    return max(times) if times else None


def is_final(spec: Kind, event: Any) -> bool:
    """Whether ``event`` is the final one of what it updates (a closed candle)."""
    name = spec.final
    if name is None:
        return True
    event = _unraw(event)
    if isinstance(event, dict):
        return bool(event.get(name))
    return bool(getattr(event, name, False))


def missing_candles(
    spec: Kind, interval: str, last: Any, last_closed: Any, first_after: Any
) -> tuple[int, tuple[datetime, ...]]:
    """How many periods of ``interval`` (candles), and which (by open time), no final
    update arrived for.

    They run from the candle that was forming when the channel went down (or, if the
    last candle seen was closed, the one after it) up to, not including, the first
    candle received after the gap. Returns the exact count and the first
    ``_MAX_MISSING_LISTED`` open times.

    Example:
        >>> missing_candles(candles, "1m", forming_at_10_05, closed_at_10_04, first_at_10_08)
        (3, (10:05, 10:06, 10:07))
    """
    step = (spec.intervals or {}).get(interval)
    after = event_time(spec, first_after)
    if step is None or after is None:
        return 0, ()
    last_at = event_time(spec, last)
    closed_at = event_time(spec, last_closed)
    try:
        if last_at is not None and not is_final(spec, last):
            start = last_at
        elif last_at is not None:
            start = last_at + timedelta(seconds=step)
        elif closed_at is not None:
            start = closed_at + timedelta(seconds=step)
        else:
            return 0, ()
        if after <= start:
            return 0, ()
        n = int((after - start).total_seconds() // step)
        listed = tuple(
            start + timedelta(seconds=step * i) for i in range(min(n, _MAX_MISSING_LISTED))
        )
    except OverflowError:  # timestamps at the edge of datetime's range: nothing to list
        return 0, ()
    return n, listed


def complete_dict(spec: Kind, plain: dict[str, Any], symbol: Any, interval: Any) -> None:
    """The flat dict handlers get: symbol and interval merged in, aliases and defaults set."""
    if spec.symbol:
        plain["symbol"] = symbol
    if spec.intervals is not None:
        plain["interval"] = interval
    for a, b in spec.aliases:
        if a not in plain:
            plain[a] = plain.get(b)
        elif b not in plain:
            plain[b] = plain[a]
    for name in spec.defaults:
        plain.setdefault(name, None)
    for name in spec.flags:
        plain.setdefault(name, False)


class Router:
    """Decodes frames and pushes events to handler queues; counts everything it sees.

    It knows the venue only through its protocol object: the kinds, the fast decoder and
    :meth:`~agentstream.protocols.base.VenueProtocol.classify` for everything else.
    """

    def __init__(self, host: RouterHost, protocol: VenueProtocol) -> None:
        self.host = host
        self.protocol = protocol
        self.kinds = protocol.kinds
        self.decoders = {
            name: msgspec.json.Decoder(spec.model)
            for name, spec in self.kinds.items()
            if spec.model is not None
        }
        self.frame_kinds = protocol.frame_kinds()
        #: Per kind that names symbols (and no interval): symbol -> route.
        self.symbols: dict[str, dict[str, Route]] = {}
        #: Per kind: the route of its wildcard channel (``ticker:all``), if wanted.
        self.wild: dict[str, Route] = {}
        self.routes: dict[str, Route] = {}
        self._wild_symbols = 0
        self.decode: Callable[[str | bytes], Any] = self._fast({})
        #: Deliver each private event once: on while more than one socket is open.
        self.dedup_private = False
        #: Gaps of private channels: they reach every socket, so one is down only while
        #: no socket is up (the account's gaps, not a socket's).
        self.private_gaps = LinkGaps()
        #: Private events delivered lately, and the socket each came from.
        self._seen: dict[bytes, int] = {}
        self._seen_order: deque[bytes] = deque()
        # Counters (read by ws.stats).
        self.unrouted: dict[str, int] = {}
        self.retired_counts: dict[str, int] = {}
        self.control = 0
        self.pings = 0
        self.heartbeats = 0
        self.duplicates = 0
        self.dropped = 0
        self.invalid = 0
        self.server_errors = 0
        self.gaps = 0
        self.gaps_by_channel: dict[str, int] = {}
        self.last_frame_at: float | None = None
        #: True while a batch of frames is being routed (handlers may run meanwhile).
        self.feeding = False
        self._warned_slow = False
        self._drop_logged_at = -1e9
        self._drops_unlogged = 0

    def _fast(self, modes: dict[str, str]) -> Callable[[str | bytes], Any]:
        decode = self.protocol.fast_decoder(modes)
        if decode is None:
            return _refuse
        return decode

    # -- the routing table (loop thread, under the client's lock) ---------------------

    def rebuild(self, routes: dict[str, Route]) -> None:
        """Install a new routing table; counts and gap state carry over by key."""
        old = self.routes
        for key, route in old.items():
            new = routes.get(key)
            if new is not None:
                new.inherit(route)
            elif route.count and key not in routes:
                self._retire_count(key, route.count)
        wild: dict[str, Route] = {}
        for route in routes.values():
            spec = route.spec
            if spec.wildcard is not None and route.key == f"{spec.name}:{spec.wildcard}":
                wild[spec.name] = route
        symbols: dict[str, dict[str, Route]] = {
            name: {} for name, spec in self.kinds.items() if spec.symbol and not spec.intervals
        }
        for key, route in routes.items():
            table = symbols.get(route.kind)
            all_route = wild.get(route.kind)
            if table is None or route is all_route:
                continue
            if all_route is not None:
                # Single symbols ride on the wildcard channel (not subscribed on the wire):
                # one route per symbol with both sets of handlers, so an event is decoded once.
                merged = Route(
                    key,
                    route.spec,
                    route.dict_slots + all_route.dict_slots,
                    route.typed_slots + all_route.typed_slots,
                )
                merged.inherit(route)
                route = merged
                routes[key] = route
            table[key.split(":", 1)[1]] = route
        # Symbols first seen on a wildcard channel keep their counts and last events.
        lazily_made = 0
        for name, old_table in self.symbols.items():
            table = symbols.get(name, {})
            all_route = wild.get(name)
            for sym, old_route in old_table.items():
                if old_route.key in old:
                    continue  # configured before: inherited above
                if sym in table:  # first seen on the wildcard, now with handlers of its own
                    table[sym].inherit(old_route)
                    continue
                if all_route is not None and lazily_made < _MAX_ALL_SYMBOLS:
                    kept = Route(
                        old_route.key, old_route.spec, all_route.dict_slots, all_route.typed_slots
                    )
                    kept.inherit(old_route)
                    table[sym] = kept
                    lazily_made += 1
                elif old_route.count:
                    self._retire_count(old_route.key, old_route.count)
        self.routes = routes
        self.symbols = symbols
        self.wild = wild
        self._wild_symbols = lazily_made
        wants: dict[str, set[str]] = {k: set() for k in self.kinds}
        for route in routes.values():
            if route.dict_slots:
                wants[route.kind].add("dict")
            if route.typed_slots:
                wants[route.kind].add("typed")
        self.decode = self._fast(
            {k: next(iter(w)) if len(w) == 1 else "raw" for k, w in wants.items()}
        )

    def note_frame_time(self, at: float) -> None:
        """Remember a link's last frame time when it closes (for ``last_message_age``)."""
        if at and (self.last_frame_at is None or at > self.last_frame_at):
            self.last_frame_at = at

    def _retire_count(self, key: str, count: int) -> None:
        counts = self.retired_counts
        if key not in counts and len(counts) >= _MAX_UNROUTED_KEYS:
            key = _UNROUTED_OVERFLOW
        counts[key] = counts.get(key, 0) + count

    def counts(self) -> dict[str, int]:
        # Copies first: another thread may read ws.stats while the reader adds keys.
        out = dict(self.retired_counts)
        for key, n in list(self.unrouted.items()):
            out[key] = out.get(key, 0) + n
        routes = dict(self.routes)
        live = list(routes.values())
        for table in list(self.symbols.values()):
            live += [r for r in list(table.values()) if r.key not in routes]  # wildcard's
        for route in live:
            if route.count:
                out[route.key] = out.get(route.key, 0) + route.count
        return out

    # -- the hot path -----------------------------------------------------------------

    def feed_for(self, link: FeedTarget) -> Callable[[list[str | bytes]], list[str] | None]:
        """The reader's callback for ``link``: takes a batch of frames, in the order they
        arrived, and returns the replies to send back (pongs), or None."""
        gaps = link.gaps
        hot = self.protocol.hot_kind
        hot_dict, hot_typed = _hot_pair(self.frame_kinds, hot)
        set_attr = _set
        monotonic = time.monotonic

        def feed(frames: list[str | bytes]) -> list[str] | None:
            replies: list[str] | None = None
            # The table is replaced only between batches: handlers change on the loop,
            # and a change made from a handler called below is applied after the batch
            # (``feeding``, see StreamClient._schedule_reconcile). So look it up once.
            decode = self.decode
            tickers = self.symbols.get(hot) if hot is not None else None
            if tickers is None:
                tickers = {}
            others = 0
            # Gaps open only when a link goes down (Link.run, never during a batch) and
            # close in _generic or in _slow (an event it delivers, a channel a control
            # message refuses or moves): read again after each of those.
            gap_free = not gaps.open
            self.feeding = True
            # Sync handlers proven fast are called from here (Slot._push_drain): if 8
            # frames take longer than _DIRECT_BUDGET_S, one of them was not fast after
            # all, and all go back to their queues until their drains prove them again.
            try:
                window = monotonic()
                n = len(frames)
                for start in range(0, n, 8):
                    for data in frames[start : start + 8] if n > 8 else frames:
                        try:
                            try:
                                frame = decode(data)
                            except Exception:
                                others += 1
                                reply = self._slow(link, data)
                                gap_free = not gaps.open
                                if reply is not None:
                                    replies = [reply] if replies is None else [*replies, reply]
                                    # The pong goes out after the batch: no handler runs
                                    # from the reader until then.
                                    self._demote(0.0)
                                continue
                            cls = type(frame)
                            # The firehose's case inlined: an event of the hot kind for a
                            # routed symbol, no gap pending.
                            if (cls is hot_dict or cls is hot_typed) and gap_free:
                                sym = frame.symbol
                                route = tickers.get(sym)
                                if route is not None:
                                    route.count += 1
                                    ev = frame.data
                                    if cls is hot_dict:
                                        ev["symbol"] = sym
                                    else:
                                        set_attr(ev, "symbol", sym)
                                    route.last = ev
                                    solo = route.solo
                                    if (
                                        solo is not None
                                        and solo.direct
                                        and not solo.stopped
                                        and not solo.queue
                                    ):
                                        try:
                                            solo.fn(ev)  # type: ignore[misc]
                                        except BaseException as exc:
                                            solo.direct_failed(exc, ev)
                                    else:
                                        route.push(ev)
                                    continue
                            self._generic(frame, link)
                            gap_free = not gaps.open
                        except Exception:
                            # A safety net: a bug here costs this frame, never the rest of
                            # the batch or the read loop.
                            log.exception("internal error while handling a frame; frame dropped")
                    now = monotonic()
                    if now - window > _DIRECT_BUDGET_S:
                        self._demote(now - window)
                    window = now
            finally:
                self.feeding = False
            link.data_frames += len(frames) - others
            return replies

        return feed

    def _demote(self, took: float) -> None:
        """Every sync handler back to its queue (see Slot._push_drain).

        ``took``: how long the last frames took, for the warning when handlers called
        from the reader blocked the event loop (a drain names the handler next time).
        """
        direct = 0
        for route in list(self.routes.values()):
            for slot in route.dict_slots + route.typed_slots:
                direct += slot.direct
                slot.direct = False
        if direct and took > _SLOW_HANDLER_S and not self._warned_slow:
            self._warned_slow = True
            self.host.log.warning(
                "sync handlers called from the reader blocked the event loop for %.2f s; "
                "they go back to their queues (pass thread=True to a handler that blocks)",
                took,
            )

    def _symbol_route(self, spec: Kind, sym: str) -> Route | None:
        """The route of a symbol with no route yet: one of the wildcard's, or None."""
        if not sym:
            self.bad_frame(f"a {spec.name} frame with an empty symbol", b"")
            return None
        key = f"{spec.name}:{sym}"
        all_route = self.wild.get(spec.name)
        if all_route is None:
            self._count_unrouted(key)
            return None
        if len(key) > _MAX_KEY_LENGTH or self._wild_symbols >= _MAX_ALL_SYMBOLS:
            # No symbol is that long, and no exchange lists that many: deliver the event
            # to the wildcard's handlers but remember nothing per symbol (memory stays
            # bounded).
            self._count_unrouted(key)
            return Route(key, spec, all_route.dict_slots, all_route.typed_slots)
        route = Route(key, spec, all_route.dict_slots, all_route.typed_slots)
        self._wild_symbols += 1
        self.symbols[spec.name][sym] = route
        return route

    def _count_unrouted(self, key: str) -> None:
        counts = self.unrouted
        if len(key) > _MAX_KEY_LENGTH or (key not in counts and len(counts) >= _MAX_UNROUTED_KEYS):
            key = _UNROUTED_OVERFLOW
        counts[key] = counts.get(key, 0) + 1

    def _route(self, spec: Kind, symbol: str | None, interval: str | None) -> Route | None:
        """The route of an event of ``spec`` for ``symbol`` / ``interval``, or None."""
        table = self.symbols.get(spec.name)
        if table is not None:
            return table.get(symbol or "") or self._symbol_route(spec, symbol or "")
        if spec.symbol and (not symbol or (spec.intervals is not None and not interval)):
            self.bad_frame(f"a {spec.name} frame without its symbol or interval", b"")
            return None
        if not spec.symbol:
            key = spec.name
        elif spec.intervals is None:
            key = f"{spec.name}:{symbol}"
        else:
            key = f"{spec.name}:{symbol}:{interval}"
        route = self.routes.get(key)
        if route is None:
            self._count_unrouted(key)
        return route

    def _generic(self, frame: Any, link: FeedTarget) -> None:
        """Every kind and representation not inlined above (candles, orders, ...)."""
        kind, _mode = self.frame_kinds[type(frame)]
        spec = self.kinds[kind]
        symbol = getattr(frame, "symbol", None)
        interval = getattr(frame, "interval", None)
        route = self._route(spec, symbol, interval)
        if route is None:
            return
        data = frame.data
        if isinstance(data, msgspec.Raw):
            self._deliver_raw(route, symbol, interval, data, link)
            return
        if route.private and self.dedup_private and self._duplicate(_encode(data), link):
            return
        route.count += 1
        if isinstance(data, dict):
            complete_dict(spec, data, symbol, interval)
        elif symbol is not None:
            _set(data, "symbol", symbol)
            if interval is not None:
                _set(data, "interval", interval)
        self._push(route, data, link)

    def _duplicate(self, content: bytes, link: FeedTarget) -> bool:
        """Whether another socket delivered this private event already.

        The same content twice on one socket is two events (the server sent it twice);
        only a copy from a different socket is the server's broadcast to every socket.
        """
        seen = self._seen
        first = seen.get(content)
        if first is not None and first != link.index:
            self.duplicates += 1
            return True
        if first is None:
            seen[content] = link.index
            order = self._seen_order
            order.append(content)
            if len(order) > _PRIVATE_SEEN:
                seen.pop(order.popleft(), None)
        return False

    def reset_private(self) -> None:
        """Forget delivered private events and their gaps (a new run)."""
        self._seen.clear()
        self._seen_order.clear()
        self.dedup_private = False
        self.private_gaps = LinkGaps()

    def _push(self, route: Route, ev: Any, link: FeedTarget) -> None:
        gaps = self.private_gaps if route.private else link.gaps
        if gaps.open:
            self._gap_end(gaps, route, ev)
        route.last = ev
        # Decided before any handler runs (one may be called from here and change a dict).
        closed = route.spec.final is not None and is_final(route.spec, ev)
        route.push(ev)
        if closed:
            route.last_closed = ev
            for push in route.push_closed:
                push(ev)

    # -- the slow path: everything the fast decoder refused ---------------------------

    def _slow(self, link: FeedTarget, data: str | bytes) -> str | None:
        inbound: Inbound = self.protocol.classify(data)
        if isinstance(inbound, Batch):
            replies = [r for item in inbound.items if (r := self._one(link, item, data))]
            return replies[0] if replies else None
        return self._one(link, inbound, data)

    def _one(self, link: FeedTarget, inbound: Inbound, data: str | bytes) -> str | None:
        if isinstance(inbound, Data):
            link.data_frames += 1
            spec = self.kinds.get(inbound.kind)
            if spec is None:
                self.bad_frame(f"no kind {inbound.kind!r}", data)
                return None
            route = self._route(spec, inbound.symbol, inbound.interval)
            if route is not None:
                self._deliver_raw(
                    route, inbound.symbol, inbound.interval, inbound.payload, link, data
                )
            return None
        if isinstance(inbound, BadFrame):
            self.bad_frame(inbound.why, data)
            return None
        self.control += 1
        if isinstance(inbound, Ping):
            self.pings += 1
            return inbound.reply
        if isinstance(inbound, Heartbeat):
            self.heartbeats += 1
        elif isinstance(inbound, Noise):
            self.host.log.debug("ignored a control message of type %r", inbound.what)
        elif not isinstance(inbound, Batch):  # (a batch inside a batch: nothing)
            err = link.on_control(inbound)
            if err is not None:
                self.server_errors += 1
                self.host.log.warning("server error on connection %d: %s", link.index + 1, err)
                self.host.emit_error(
                    err, {"channel": err.channel, "code": err.code, "link": link.index}
                )
        return None

    def _deliver_raw(
        self,
        route: Route,
        symbol: str | None,
        interval: str | None,
        raw: msgspec.Raw,
        link: FeedTarget,
        data: str | bytes | None = None,
    ) -> None:
        """Decode ``raw`` once per representation the route's handlers want, then push.

        Counts the frame as the route's message unless it is dropped as malformed.
        """
        spec = route.spec
        kind = spec.name
        if route.private and self.dedup_private and self._duplicate(bytes(raw), link):
            return
        plain: Any = None
        typed: Any = None
        if route.dict_slots:
            try:
                plain = dict_decoder.decode(raw)
            except Exception as exc:
                self.bad_frame(_why(exc, "data is not JSON"), data or bytes(raw))
                return
            if type(plain) is not dict:
                self.bad_frame("data is not an object", data or bytes(raw))
                return
            complete_dict(spec, plain, symbol, interval)
        # A frame is counted once: dropped above, or a message from here on (an event
        # that then fails a typed model is a message and also an invalid event).
        route.count += 1
        if route.typed_slots:
            try:
                typed = self.decoders[kind].decode(raw)
            except Exception as exc:
                self.invalid += 1
                self.log_drop("dropped an invalid %s event: %s", kind, exc)
                self.host.emit_error(
                    DecodeError(f"invalid {kind} event: {exc}", frame=_snippet(data or raw)),
                    {"stage": "decode", "channel": kind},
                )
            else:
                if symbol is not None and spec.symbol:
                    _set(typed, "symbol", symbol)
                    if interval is not None and spec.intervals is not None:
                        _set(typed, "interval", interval)
        event = plain if plain is not None else typed
        if event is None and not (route.dict_slots or route.typed_slots):
            event = raw  # nobody listens: keep it for gap reports only
        if event is None:
            return
        gaps = self.private_gaps if route.private else link.gaps
        if gaps.open:
            self._gap_end(gaps, route, event)
        route.last = event
        closed = is_final(spec, event)
        if spec.final is not None and closed:
            route.last_closed = event
        for ev, pushes_all, pushes_closed in (
            (plain, route.push_dict_all, route.push_dict_closed),
            (typed, route.push_typed_all, route.push_typed_closed),
        ):
            if ev is None:
                continue
            for push in pushes_all:
                push(ev)
            if closed:
                for push in pushes_closed:
                    push(ev)

    # -- drops ------------------------------------------------------------------------

    def bad_frame(self, why: str, data: str | bytes) -> None:
        self.dropped += 1
        snippet = _snippet(data)
        self.log_drop("dropped a frame (%s): %r", why, snippet)
        self.host.emit_error(
            DecodeError(f"dropped a frame: {why}", frame=snippet), {"stage": "decode"}
        )

    def log_drop(self, msg: str, *args: object) -> None:
        """Warn about dropped input at most once a second, counting what was not logged."""
        now = time.monotonic()
        if now - self._drop_logged_at < 1.0:
            self._drops_unlogged += 1
            return
        if self._drops_unlogged:
            msg += f" (and {self._drops_unlogged} more since the last warning)"
        self._drop_logged_at = now
        self._drops_unlogged = 0
        self.host.log.warning(msg, *args)

    # -- gaps -------------------------------------------------------------------------

    def link_down(self, gaps: LinkGaps, keys: Iterable[str], reason: str) -> None:
        """The channels ``keys`` are down from now until their next event."""
        now = datetime.now(UTC)
        opened = gaps.open
        for key in keys:
            if key in opened:
                continue  # still down since an earlier disconnect: keep its start
            route = self.routes.get(key)
            last = route.last if route is not None else None
            last_closed = route.last_closed if route is not None else None
            if route is not None and route is self.wild.get(route.kind):
                last = self._latest(route.spec)
            opened[key] = GapStart(now, reason, last, last_closed)

    def _latest(self, spec: Kind) -> Any:
        """The latest event of any symbol of ``spec`` (for a wildcard channel's gap)."""
        best: Any = None
        best_at: datetime | None = None
        for route in self.symbols.get(spec.name, {}).values():
            at = event_time(spec, route.last)
            if at is not None and (best_at is None or at > best_at):
                best, best_at = route.last, at
        return best

    def _gap_end(self, table: LinkGaps, route: Route, event: Any) -> None:
        gaps = table.open
        key = route.key
        spec = route.spec
        start = gaps.pop(key, None)
        if start is None and spec.wildcard is not None:
            key = f"{spec.name}:{spec.wildcard}"
            start = gaps.pop(key, None)
        if start is None:
            return
        n_missing, missing = 0, cast("tuple[datetime, ...]", ())
        if spec.intervals is not None and spec.final is not None:
            interval = key.rsplit(":", 1)[-1]
            n_missing, missing = missing_candles(
                spec, interval, start.last, start.last_closed, event
            )
        gap = Gap(
            channel=key,
            disconnected_at=start.disconnected_at,
            reconnected_at=table.reconnected_at or datetime.now(UTC),
            last_event_at=event_time(spec, start.last),
            first_event_at=event_time(spec, event),
            missing_candles=missing,
            missing_candle_count=n_missing,
            reason=start.reason,
        )
        self.gaps += 1
        self.gaps_by_channel[key] = self.gaps_by_channel.get(key, 0) + 1
        self.host.emit_gap(gap)


class SinkBase:
    """What every sink in front of handlers is, as a :class:`Sink`: it takes every
    update (``partial``), is never called from the reader directly, has no queue and no
    handler of its own. Subclasses set ``push``."""

    __slots__ = ("direct", "fn", "inline", "model", "partial", "push", "queue", "stopped")

    def __init__(self, partial: bool = True) -> None:
        self.partial = partial
        self.inline = False
        self.direct = False
        self.stopped = False
        self.queue: tuple[()] = ()
        self.fn = None
        self.model = None


class DerivedSink(SinkBase):
    """A sink on a source route: its events go through ``derive`` (an aggregator) and
    what comes out goes to the target route's handlers."""

    __slots__ = ()

    def __init__(self, derive: Callable[[Any], list[Any]], target: Route, typed: bool) -> None:
        super().__init__()
        spec = target.spec
        pushes_all = target.push_typed_all if typed else target.push_dict_all
        pushes_closed = target.push_typed_closed if typed else target.push_dict_closed

        def push(event: Any) -> None:
            for out in derive(event):
                target.count += 1
                target.last = out
                closed = is_final(spec, out)
                if closed:
                    target.last_closed = out
                for one in pushes_all:
                    one(out)
                if closed:
                    for one in pushes_closed:
                        one(out)

        self.push: Callable[[Any], None] = push


def _refuse(data: str | bytes) -> Any:
    """The fast decoder of a protocol that has none: everything takes the slow path."""
    raise ValueError("no fast decoder")


def _hot_pair(
    frame_kinds: dict[type[Any], tuple[str, str]] | Any, hot: str | None
) -> tuple[Any, Any]:
    """The dict and typed frame classes of the hot kind (or two that match nothing)."""
    by_mode = {m: c for c, (k, m) in frame_kinds.items() if k == hot}
    return by_mode.get("dict", _Never), by_mode.get("typed", _Never)


class _Never:
    """A class no decoded frame has."""


def _why(exc: BaseException, default: str) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc) or default


def _snippet(data: str | bytes | msgspec.Raw) -> str:
    if isinstance(data, msgspec.Raw):
        data = bytes(data)
    text = data if isinstance(data, str) else repr(data[:200])
    return text[:200]
