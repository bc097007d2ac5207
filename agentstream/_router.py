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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import msgspec

from agentstream._dispatch import (
    _ORDER_OPTIONAL,
    _SLOW_HANDLER_S,
    DECODERS,
    MODEL_OF_KIND,
    dict_decoder,
)
from agentstream.errors import DecodeError
from agentstream.models import Candle, Gap, _as_datetime
from agentstream.protocols.agentexchange import PONG, data_key, envelope_decoder, normalize_key

if typing.TYPE_CHECKING:
    from collections.abc import Callable

    from agentstream._dispatch import Slot
    from agentstream._supervisor import Link
    from agentstream.client import AgentExchangeWS

__all__ = ["Route", "Router"]

log = logging.getLogger("agentstream")

_set = msgspec.structs.force_setattr
_KINDS = ("ticker", "candles", "orders", "portfolio")
#: Distinct channel keys kept in ``stats.messages`` for frames nobody subscribed to;
#: beyond this they are counted under one key, so a hostile server cannot grow memory.
_MAX_UNROUTED_KEYS = 1000
_UNROUTED_OVERFLOW = "(other channels)"
_MAX_KEY_LENGTH = 64
#: Symbols of ``ticker:all`` remembered for per-symbol counts and gap reports.
_MAX_ALL_SYMBOLS = 10_000
#: Missing candles listed in one gap report at most (the count is always exact).
_MAX_MISSING_LISTED = 10_000
#: 8 frames (or a batch's last ones) handled in more than this, 25 µs a frame: a handler
#: called from the reader was not as fast as its drains showed (20 µs a call).
_DIRECT_BUDGET_S = 200e-6
INTERVAL_SECONDS = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "4h": 14400, "1d": 86400}


class Route:
    """Everything the reader needs for one channel key, computed once per change.

    ``push_all`` takes every event, ``push_closed`` only closed candles (for candle
    handlers registered without ``partial=True``); for other kinds it is empty.
    ``push`` calls every ``push_all`` (the one handler's own push when there is one).
    """

    __slots__ = (
        "count",
        "dict_slots",
        "key",
        "kind",
        "last",
        "last_closed",
        "push",
        "push_all",
        "push_closed",
        "push_dict_all",
        "push_dict_closed",
        "push_typed_all",
        "push_typed_closed",
        "solo",
        "typed_slots",
    )

    def __init__(
        self, key: str, kind: str, dict_slots: tuple[Slot, ...], typed_slots: tuple[Slot, ...]
    ) -> None:
        self.key = key
        self.kind = kind
        self.dict_slots = dict_slots
        self.typed_slots = typed_slots
        candles = kind == "candles"

        def pushers(slots: tuple[Slot, ...], closed: bool) -> tuple[Callable[[Any], None], ...]:
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
        self.solo = slots[0] if len(slots) == 1 and slots[0].inline and not candles else None
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


def _frame_type(kind: str, mode: str) -> type[msgspec.Struct]:
    data: Any = {"dict": dict[str, Any], "typed": MODEL_OF_KIND[kind], "raw": msgspec.Raw}[mode]
    fields: list[Any] = []
    if kind in ("ticker", "candles"):
        fields.append(("symbol", str))
    if kind == "candles":
        fields.append(("interval", str))
    # A frame that also carries a non-null `type` is a control message: refused here, the
    # slow path handles it.
    fields += [("data", data), ("type", None, None)]
    # gc=False: a frame is dropped as soon as its event is taken out, so it is never part
    # of a reference cycle; not tracking it saves the collector's work (about 20 ns).
    return msgspec.defstruct(
        f"_{kind}_{mode}_frame", fields, tag_field="channel", tag=kind, gc=False
    )


_FRAME_TYPES = {(k, m): _frame_type(k, m) for k in _KINDS for m in ("dict", "typed", "raw")}
_DECODER_CACHE: dict[tuple[str, ...], msgspec.json.Decoder[Any]] = {}


def _decoder(modes: tuple[str, ...]) -> msgspec.json.Decoder[Any]:
    dec = _DECODER_CACHE.get(modes)
    if dec is None:
        members = tuple(_FRAME_TYPES[k, m] for k, m in zip(_KINDS, modes, strict=True))
        dec = _DECODER_CACHE[modes] = msgspec.json.Decoder(typing.Union[members])  # noqa: UP007
    return dec


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


def event_time(kind: str, event: Any) -> datetime | None:
    """The exchange timestamp of an event in any representation, or None."""
    event = _unraw(event)
    if event is None:
        return None
    get: Callable[[str], Any]
    if isinstance(event, dict):
        get = event.get
    else:

        def get(name: str) -> Any:
            return getattr(event, name, None)

    if kind == "candles":
        return _as_time(get("open_time") if get("open_time") is not None else get("time"))
    if kind == "orders":
        times = [t for t in (_as_time(get("filled_at")), _as_time(get("cancelled_at"))) if t]
        return max(times) if times else None
    return _as_time(get("timestamp"))


def _candle_closed(event: Any) -> bool:
    event = _unraw(event)
    if isinstance(event, dict):
        return bool(event.get("is_closed"))
    if isinstance(event, Candle):
        return event.is_closed
    return False


def missing_candles(
    interval: str, last: Any, last_closed: Any, first_after: Any
) -> tuple[int, tuple[datetime, ...]]:
    """How many candles, and which (by open time), no closed update arrived for.

    They run from the candle that was forming when the channel went down (or, if the
    last candle seen was closed, the one after it) up to, not including, the first
    candle received after the gap. Returns the exact count and the first
    ``_MAX_MISSING_LISTED`` open times.

    Example:
        >>> missing_candles("1m", last_forming_at_10_05, closed_at_10_04, first_at_10_08)
        (3, (10:05, 10:06, 10:07))
    """
    step = INTERVAL_SECONDS.get(interval)
    after = event_time("candles", first_after)
    if step is None or after is None:
        return 0, ()
    last_at = event_time("candles", last)
    closed_at = event_time("candles", last_closed)
    try:
        if last_at is not None and not _candle_closed(last):
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


class Router:
    """Decodes frames and pushes events to handler queues; counts everything it sees."""

    def __init__(self, client: AgentExchangeWS) -> None:
        self.client = client
        self.tickers: dict[str, Route] = {}
        self.candles: dict[str, Route] = {}
        self.orders: Route | None = None
        self.portfolio: Route | None = None
        self.ticker_all: Route | None = None
        self.routes: dict[str, Route] = {}
        self._all_symbols = 0
        self.decode: Callable[[str | bytes], Any] = _decoder(("raw",) * 4).decode
        # Counters (read by ws.stats).
        self.unrouted: dict[str, int] = {}
        self.retired_counts: dict[str, int] = {}
        self.control = 0
        self.pings = 0
        self.dropped = 0
        self.invalid = 0
        self.server_errors = 0
        self.gaps = 0
        self.last_frame_at: float | None = None
        #: True while a batch of frames is being routed (handlers may run meanwhile).
        self.feeding = False
        self._warned_slow = False
        self._drop_logged_at = -1e9
        self._drops_unlogged = 0

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
        all_route = routes.get("ticker:all")
        tickers: dict[str, Route] = {}
        candles: dict[str, Route] = {}
        for key, route in routes.items():
            if route.kind == "ticker" and key != "ticker:all":
                if all_route is not None:
                    # Single tickers ride on ticker:all (not subscribed on the wire): one
                    # route per symbol with both sets of handlers, so a trade is decoded once.
                    merged = Route(
                        key,
                        "ticker",
                        route.dict_slots + all_route.dict_slots,
                        route.typed_slots + all_route.typed_slots,
                    )
                    merged.inherit(route)
                    route = merged
                    routes[key] = route
                tickers[key.split(":", 1)[1]] = route
            elif route.kind == "candles":
                candles[key] = route
        # Symbols first seen on ticker:all keep their counts and last events.
        lazily_made = 0
        for sym, old_route in self.tickers.items():
            if old_route.key in old:
                continue  # configured before: inherited above
            if sym in tickers:  # first seen on ticker:all, now with handlers of its own
                tickers[sym].inherit(old_route)
                continue
            if all_route is not None and lazily_made < _MAX_ALL_SYMBOLS:
                kept = Route(old_route.key, "ticker", all_route.dict_slots, all_route.typed_slots)
                kept.inherit(old_route)
                tickers[sym] = kept
                lazily_made += 1
            elif old_route.count:
                self._retire_count(old_route.key, old_route.count)
        self.routes = routes
        self.tickers = tickers
        self.candles = candles
        self.ticker_all = all_route
        self._all_symbols = lazily_made
        self.orders = routes.get("orders")
        self.portfolio = routes.get("portfolio")
        wants: dict[str, set[str]] = {k: set() for k in _KINDS}
        for route in routes.values():
            if route.dict_slots:
                wants[route.kind].add("dict")
            if route.typed_slots:
                wants[route.kind].add("typed")
        modes = tuple(next(iter(w)) if len(w) == 1 else "raw" for w in wants.values())
        self.decode = _decoder(modes).decode

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
        live += [r for r in list(self.tickers.values()) if r.key not in routes]  # ticker:all's
        for route in live:
            if route.count:
                out[route.key] = out.get(route.key, 0) + route.count
        return out

    # -- the hot path -----------------------------------------------------------------

    def feed_for(self, link: Link) -> Callable[[list[str | bytes]], list[str] | None]:
        """The reader's callback for ``link``: takes a batch of frames, in the order they
        arrived, and returns the replies to send back (pongs), or None."""
        gaps = link.gaps
        ticker_dict = _FRAME_TYPES["ticker", "dict"]
        ticker_typed = _FRAME_TYPES["ticker", "typed"]
        set_attr = _set
        monotonic = time.monotonic

        def feed(frames: list[str | bytes]) -> list[str] | None:
            replies: list[str] | None = None
            # The table is replaced only between batches: handlers change on the loop,
            # and a change made from a handler called below is applied after the batch
            # (``feeding``, see AgentExchangeWS._schedule_sync). So look it up once.
            decode = self.decode
            tickers = self.tickers
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
                            # The firehose's case inlined: a ticker of a routed symbol, no
                            # gap pending.
                            if (cls is ticker_dict or cls is ticker_typed) and gap_free:
                                sym = frame.symbol
                                route = tickers.get(sym)
                                if route is not None:
                                    route.count += 1
                                    ev = frame.data
                                    if cls is ticker_dict:
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
            self.client.log.warning(
                "sync handlers called from the reader blocked the event loop for %.2f s; "
                "they go back to their queues (pass thread=True to a handler that blocks)",
                took,
            )

    def _ticker_route(self, sym: str) -> Route | None:
        """The route of a symbol with no route yet: one of ticker:all's, or None."""
        if not sym:
            self.bad_frame("a ticker frame with an empty symbol", '{"channel":"ticker",...}')
            return None
        key = f"ticker:{sym}"
        all_route = self.ticker_all
        if all_route is None:
            self._count_unrouted(key)
            return None
        if len(key) > _MAX_KEY_LENGTH or self._all_symbols >= _MAX_ALL_SYMBOLS:
            # No symbol is that long, and no exchange lists that many: deliver the event
            # to ticker:all's handlers but remember nothing per symbol (memory stays bounded).
            self._count_unrouted(key)
            return Route(key, "ticker", all_route.dict_slots, all_route.typed_slots)
        route = Route(key, "ticker", all_route.dict_slots, all_route.typed_slots)
        self._all_symbols += 1
        self.tickers[sym] = route
        return route

    def _count_unrouted(self, key: str) -> None:
        counts = self.unrouted
        if len(key) > _MAX_KEY_LENGTH or (key not in counts and len(counts) >= _MAX_UNROUTED_KEYS):
            key = _UNROUTED_OVERFLOW
        counts[key] = counts.get(key, 0) + 1

    def _generic(self, frame: Any, link: Link) -> None:
        """Every kind and representation not specialised above (candles, orders, ...)."""
        kind: str = frame.__struct_config__.tag
        symbol = getattr(frame, "symbol", None)
        interval = getattr(frame, "interval", None)
        if kind == "ticker":
            route = self.tickers.get(symbol or "") or self._ticker_route(symbol or "")
        elif kind == "candles":
            if not symbol or not interval:
                self.bad_frame("a candle frame without symbol or interval", b"")
                return
            key = f"candles:{symbol}:{interval}"
            route = self.candles.get(key)
            if route is None:
                self._count_unrouted(key)
        else:
            route = self.orders if kind == "orders" else self.portfolio
            if route is None:
                self._count_unrouted(kind)
        if route is None:
            return
        data = frame.data
        if isinstance(data, msgspec.Raw):
            self._deliver_raw(route, symbol, interval, data, link)
            return
        route.count += 1
        if isinstance(data, dict):
            self._complete_dict(kind, data, symbol, interval)
        elif symbol is not None:
            _set(data, "symbol", symbol)
            if interval is not None:
                _set(data, "interval", interval)
        self._push(route, data, link)

    def _push(self, route: Route, ev: Any, link: Link) -> None:
        if link.gaps.open:
            self._gap_end(link, route, ev)
        route.last = ev
        # Decided before any handler runs (one may be called from here and change a dict).
        closed = route.kind == "candles" and _candle_closed(ev)
        route.push(ev)
        if closed:
            route.last_closed = ev
            for push in route.push_closed:
                push(ev)

    @staticmethod
    def _complete_dict(kind: str, plain: dict[str, Any], symbol: Any, interval: Any) -> None:
        """The seed page's flat dict: symbol and interval merged in, both spellings set."""
        if kind == "ticker":
            plain["symbol"] = symbol
        elif kind == "candles":
            plain["symbol"] = symbol
            plain["interval"] = interval
            if "open_time" not in plain:
                plain["open_time"] = plain.get("time")
            elif "time" not in plain:
                plain["time"] = plain["open_time"]
        elif kind == "orders":
            for name in _ORDER_OPTIONAL:
                plain.setdefault(name, None)
        else:
            plain.setdefault("roi_pct", None)

    # -- the slow path: everything the fast decoder refused ---------------------------

    def _slow(self, link: Link, data: str | bytes) -> str | None:
        try:
            env = envelope_decoder.decode(data)
        except Exception as exc:  # not JSON, wrong shape, too deep, not UTF-8, ...
            self.bad_frame(_why(exc, "not a JSON object"), data)
            return None
        if env.type is not None:
            return self._control(link, env)
        key = data_key(env)
        raw = env.data
        if key is None or not raw:
            self.bad_frame("no known channel or no data", data)
            return None
        link.data_frames += 1
        kind = env.channel
        route: Route | None
        if kind == "ticker":
            route = self.tickers.get(env.symbol or "")
            if route is None:
                route = self._ticker_route(env.symbol or "")
        else:
            route = self.routes.get(key)
            if route is None:
                self._count_unrouted(key)
        if route is None:
            return None
        self._deliver_raw(route, env.symbol, env.interval, raw, link, data)
        return None

    def _deliver_raw(
        self,
        route: Route,
        symbol: str | None,
        interval: str | None,
        raw: msgspec.Raw,
        link: Link,
        data: str | bytes | None = None,
    ) -> None:
        """Decode ``raw`` once per representation the route's handlers want, then push.

        Counts the frame as the route's message unless it is dropped as malformed.
        """
        kind = route.kind
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
            self._complete_dict(kind, plain, symbol, interval)
        # A frame is counted once: dropped above, or a message from here on (an event
        # that then fails a typed model is a message and also an invalid event).
        route.count += 1
        if route.typed_slots:
            try:
                typed = DECODERS[kind].decode(raw)
            except Exception as exc:
                self.invalid += 1
                self.log_drop("dropped an invalid %s event: %s", kind, exc)
                self.client._emit_error(
                    DecodeError(f"invalid {kind} event: {exc}", frame=_snippet(data or raw)),
                    {"stage": "decode", "channel": kind},
                )
            else:
                if symbol is not None and kind in ("ticker", "candles"):
                    _set(typed, "symbol", symbol)
                    if kind == "candles":
                        _set(typed, "interval", interval)
        event = plain if plain is not None else typed
        if event is None and not (route.dict_slots or route.typed_slots):
            event = raw  # nobody listens: keep it for gap reports only
        if event is None:
            return
        if link.gaps.open:
            self._gap_end(link, route, event)
        route.last = event
        closed = kind != "candles" or _candle_closed(event)
        if kind == "candles" and closed:
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

    def _control(self, link: Link, env: Any) -> str | None:
        self.control += 1
        kind = env.type
        if kind == "ping":
            self.pings += 1
            return PONG
        if kind in ("subscribed", "unsubscribed"):
            link.on_ack(kind, normalize_key(env.channel))
        elif kind == "error":
            self.server_errors += 1
            err = link.on_error(
                str(env.code or "UNKNOWN"), str(env.message or ""), normalize_key(env.channel)
            )
            self.client.log.warning("server error on link %d: %s", link.index, err)
            self.client._emit_error(
                err, {"channel": err.channel, "code": err.code, "link": link.index}
            )
        elif kind != "pong":
            self.client.log.debug("ignored a control message of type %r", kind)
        return None

    # -- drops ------------------------------------------------------------------------

    def bad_frame(self, why: str, data: str | bytes) -> None:
        self.dropped += 1
        snippet = _snippet(data)
        self.log_drop("dropped a frame (%s): %r", why, snippet)
        self.client._emit_error(
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
        self.client.log.warning(msg, *args)

    # -- gaps -------------------------------------------------------------------------

    def link_down(self, link: Link, reason: str) -> None:
        """The channels ``link`` carried are down from now until their next event."""
        now = datetime.now(UTC)
        gaps = link.gaps.open
        for key in link.sent & set(link.channels):
            if key in gaps:
                continue  # still down since an earlier disconnect: keep its start
            route = self.routes.get(key)
            last = route.last if route is not None else None
            last_closed = route.last_closed if route is not None else None
            if key == "ticker:all":
                last = self._latest_ticker()
            gaps[key] = GapStart(now, reason, last, last_closed)

    def link_up(self, link: Link) -> None:
        link.gaps.reconnected_at = datetime.now(UTC)

    def _latest_ticker(self) -> Any:
        best: Any = None
        best_at: datetime | None = None
        for route in self.tickers.values():
            at = event_time("ticker", route.last)
            if at is not None and (best_at is None or at > best_at):
                best, best_at = route.last, at
        return best

    def _gap_end(self, link: Link, route: Route, event: Any) -> None:
        gaps = link.gaps.open
        key = route.key
        start = gaps.pop(key, None)
        if start is None and route.kind == "ticker":
            key = "ticker:all"
            start = gaps.pop(key, None)
        if start is None:
            return
        kind = route.kind
        n_missing, missing = 0, cast("tuple[datetime, ...]", ())
        if kind == "candles":
            interval = key.rsplit(":", 1)[-1]
            n_missing, missing = missing_candles(interval, start.last, start.last_closed, event)
        gap = Gap(
            channel=key,
            disconnected_at=start.disconnected_at,
            reconnected_at=link.gaps.reconnected_at or datetime.now(UTC),
            last_event_at=event_time(kind, start.last),
            first_event_at=event_time(kind, event),
            missing_candles=missing,
            missing_candle_count=n_missing,
            reason=start.reason,
        )
        self.gaps += 1
        self.client._emit_gap(gap)


def _why(exc: BaseException, default: str) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc) or default


def _snippet(data: str | bytes | msgspec.Raw) -> str:
    if isinstance(data, msgspec.Raw):
        data = bytes(data)
    text = data if isinstance(data, str) else repr(data[:200])
    return text[:200]
