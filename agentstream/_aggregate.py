"""Coarser candles built from finer ones: a sans-I/O engine (no clock, no I/O, no asyncio).

The platform's server serves candles of 1m, 5m, 1h and 1d only; the SDK page also
promises 15m and 4h. For those the client subscribes the largest finer interval the
server serves (5m for 15m, 1h for 4h) and feeds each update of it to a
:class:`CandleAggregator`, which returns the updates of the coarser candle to deliver.

A coarser window is ``[start, start + interval_seconds)`` with ``start`` a multiple of
``interval_seconds`` since the Unix epoch (so windows are aligned to UTC boundaries:
15m windows start at :00, :15, :30, :45; 4h windows at 00:00, 04:00, ... UTC). This
alignment is right for every interval that divides a day; it is not a calendar week
or month.

Example:
    >>> agg = CandleAggregator("BTCUSDT", "15m", 900, 300)
    >>> def five(t, o, h, l, c, v):
    ...     return {"symbol": "BTCUSDT", "interval": "5m", "time": t, "open_time": t,
    ...             "open": o, "high": h, "low": l, "close": c, "volume": v,
    ...             "is_closed": True}
    >>> agg.feed(five("2026-02-23T10:00:00Z", "10", "12", "9", "11", "1.5"))[0]["is_closed"]
    False
    >>> agg.feed(five("2026-02-23T10:05:00Z", "11", "13", "10", "12", "2"))[0]["high"]
    '13'
    >>> [c] = agg.feed(five("2026-02-23T10:10:00Z", "12", "12.5", "8", "9", "0.5"))
    >>> c["time"], c["open"], c["high"], c["low"], c["close"], c["volume"], c["is_closed"]
    ('2026-02-23T10:00:00Z', '10', '13', '8', '9', '4.0', True)
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, DecimalException, Inexact, InvalidOperation, Overflow
from typing import Any, Final, overload

import msgspec

from agentstream.models import Candle, _as_datetime

__all__ = ["CandleAggregator"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND: Final = timedelta(seconds=1)
#: Integers above this are epoch milliseconds, not seconds (as in the models).
_EPOCH_MS_THRESHOLD: Final = 100_000_000_000
#: Amounts beyond 10**_MAX_EXPONENT are refused, as the models refuse them.
_MAX_EXPONENT: Final = 30
_ZERO: Final = Decimal(0)
#: Sums are exact or refused: 100 digits hold any two amounts the models accept with up
#: to ~70 decimal places; a sum needing more raises Inexact and the candle is invalid.
_CTX: Final = Context(prec=100, traps=[InvalidOperation, Inexact, Overflow])
#: A decimal amount as the server writes it: plain ASCII digits, optional exponent.
_AMOUNT_RE: Final = re.compile(r"\+?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
#: An amount an output may carry as written (anything else is rewritten plainly).
_PLAIN_RE: Final = re.compile(r"\d+(?:\.\d+)?", re.ASCII)
#: "No time parsed yet" (None is not a time, so it cannot stand for one).
_NOTHING: Final = object()

# How an input carried its open time; an output dict uses the same.
_ISO: Final = 0
_MS: Final = 1
_SECONDS: Final = 2
_DATETIME: Final = 3


class _Invalid(Exception):
    """An input that is not a candle of the source interval."""


class _Src:
    """One parsed source-candle update. Strings are the input's own (None for Candles)."""

    __slots__ = (
        "close",
        "close_s",
        "closed",
        "fmt",
        "high",
        "high_s",
        "key",
        "low",
        "low_s",
        "open",
        "open_s",
        "symbol",
        "typed",
        "volume",
    )

    def __init__(
        self,
        key: int,
        fmt: int,
        typed: bool,
        symbol: str,
        closed: bool,
        amounts: tuple[Decimal, Decimal, Decimal, Decimal, Decimal],
        strings: tuple[str | None, str | None, str | None, str | None],
    ) -> None:
        self.key = key
        self.fmt = fmt
        self.typed = typed
        self.symbol = symbol
        self.closed = closed
        self.open, self.high, self.low, self.close, self.volume = amounts
        self.open_s, self.high_s, self.low_s, self.close_s = strings


class _Window:
    """The closed source candles of one coarser window, folded, plus the forming one."""

    __slots__ = (
        "close",
        "close_s",
        "first_key",
        "forming",
        "high",
        "high_s",
        "keys",
        "last_key",
        "low",
        "low_s",
        "open",
        "open_s",
        "start",
        "volume",
    )

    def __init__(self, start: int) -> None:
        self.start = start
        self.keys: set[int] = set()  # open times (epoch s) of the closed source candles
        self.first_key = 0
        self.last_key = 0
        self.open = self.high = self.low = self.close = self.volume = _ZERO
        self.open_s: str | None = None
        self.high_s: str | None = None
        self.low_s: str | None = None
        self.close_s: str | None = None
        self.forming: _Src | None = None

    def add(self, src: _Src, volume: Decimal) -> None:
        """Fold in a closed source candle (``volume`` is the window's new total)."""
        k = src.key
        if not self.keys:
            self.first_key = self.last_key = k
            self.open, self.open_s = src.open, src.open_s
            self.close, self.close_s = src.close, src.close_s
            self.high, self.high_s = src.high, src.high_s
            self.low, self.low_s = src.low, src.low_s
        else:
            if k < self.first_key:
                self.first_key, self.open, self.open_s = k, src.open, src.open_s
            if k > self.last_key:
                self.last_key, self.close, self.close_s = k, src.close, src.close_s
            if src.high > self.high:
                self.high, self.high_s = src.high, src.high_s
            if src.low < self.low:
                self.low, self.low_s = src.low, src.low_s
        self.keys.add(k)
        self.volume = volume


def _sum(a: Decimal, b: Decimal) -> Decimal | None:
    """``a + b`` exactly, or None if it is not exact or beyond what a model accepts."""
    try:
        total = _CTX.add(a, b)
    except DecimalException:
        return None
    return total if total.adjusted() <= _MAX_EXPONENT else None


def _amount(value: Decimal, *, positive: bool) -> Decimal:
    if not value.is_finite() or value.adjusted() > _MAX_EXPONENT:
        raise _Invalid
    if value < 0 or (positive and value == 0):
        raise _Invalid
    return value


def _plain(value: Decimal) -> str:
    """A Decimal as a plain string: ``Decimal("1E-8")`` -> ``"0.00000001"``."""
    return format(value, "f")


class CandleAggregator:
    """Builds candles of ``interval`` from the updates of a finer source interval.

    Feed it every update (forming and closed) of the source candles of one symbol, in
    the order received, in ONE representation: the plain ``dict`` a dict handler gets,
    or a typed :class:`~agentstream.models.Candle`. :meth:`feed` returns the updates of
    the coarser candle to deliver, in order, in the same representation.

    Rules:
        * The window of a source candle opening at ``t`` (epoch seconds) starts at
          ``t - t % interval_seconds`` (UTC-aligned).
        * open is the open of the window's first closed source candle, close the close
          of its last, high the max, low the min, volume the exact sum. A source
          candle's closed update is final; its forming updates replace each other.
        * A window is delivered closed (``is_closed`` true) exactly once: when the
          source candle ending it closes, or, if that one never comes (a gap), when
          the first update of a source candle of a later window arrives (the window
          then holds what it had; a window with no closed source candle is not
          delivered). Windows are delivered oldest first, never twice. So the first
          window after a start (or a reconnect) may lack its first source candles:
          such windows are counted in ``incomplete``. A source update of a later
          window arriving before the closed update of a window's last source candle
          ends that window without it: this relies on a candle's closed update
          coming before the next candle's first update.
        * With ``partial`` true, each accepted source update that does not close the
          window yields one forming update (``is_closed`` false) of it: its closed
          source candles plus the source candle forming now.
        * A source update for a delivered or passed window, a repeated closed update,
          or a forming update older than what the window already has is dropped and
          counted in ``ignored``. Anything that is not a valid candle of the source
          interval (missing or garbage fields, a time not on a ``source_seconds``
          boundary, another symbol) is dropped and counted in ``invalid``; nothing
          :meth:`feed` is given makes it raise.

    Output dicts have exactly the keys ``symbol``, ``interval``, ``time``,
    ``open_time``, ``open``, ``high``, ``low``, ``close``, ``volume``, ``is_closed``:
    times are the window's start in the form the triggering input used (ISO-8601 with
    ``Z``, epoch ms or s, or a datetime), amounts are plain decimal strings (the
    input's own string where a value is one candle's). Output Candles are new
    ``Candle`` objects with ``interval`` set.

    Args:
        symbol: the pair; used for outputs whose input has no symbol, and inputs of
            another symbol (compared case-insensitively) are invalid.
        interval: name of the coarser interval (``"15m"``), put in the outputs.
        interval_seconds: its length in seconds (900).
        source_seconds: the source interval's length in seconds (300); it must divide
            ``interval_seconds``.
        partial: build forming updates; pass False when no handler wants them.
        complete_only: deliver only exact candles: a window that misses any source
            candle (the first one after a start or reconnect, or one across a gap) is
            withheld and counted in ``withheld``, and forming updates are built only
            while every source candle of the window so far has arrived.

    Attributes:
        delivered: closed windows delivered.
        incomplete: windows that missed some source candle when they closed.
        withheld: of those, windows not delivered (``complete_only``).
        ignored: late, duplicate or stale source updates dropped.
        invalid: invalid inputs dropped.

    Example:
        >>> agg = CandleAggregator("BTCUSDT", "4h", 4 * 3600, 3600, partial=False)
        >>> for hourly in candles_1h:          # dicts or Candles, as received
        ...     for four_hourly in agg.feed(hourly):
        ...         deliver(four_hourly)
    """

    __slots__ = (
        "_floor",
        "_last_raw",
        "_last_time",
        "_per_window",
        "_symbol_key",
        "_win",
        "complete_only",
        "delivered",
        "ignored",
        "incomplete",
        "interval",
        "interval_seconds",
        "invalid",
        "partial",
        "source_seconds",
        "symbol",
        "withheld",
    )

    def __init__(
        self,
        symbol: str,
        interval: str,
        interval_seconds: int,
        source_seconds: int,
        *,
        partial: bool = True,
        complete_only: bool = False,
    ) -> None:
        for name, value in (
            ("interval_seconds", interval_seconds),
            ("source_seconds", source_seconds),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if interval_seconds % source_seconds:
            raise ValueError(
                f"source_seconds ({source_seconds}) must divide interval_seconds "
                f"({interval_seconds})"
            )
        self.symbol = symbol
        self.interval = interval
        self.interval_seconds = interval_seconds
        self.source_seconds = source_seconds
        self.partial = partial
        self.complete_only = complete_only
        self.delivered = 0
        self.withheld = 0
        self.incomplete = 0
        self.ignored = 0
        self.invalid = 0
        self._symbol_key = symbol.upper()
        self._per_window = interval_seconds // source_seconds
        self._win: _Window | None = None
        # Windows starting before this are over (delivered or passed): None at first.
        self._floor: int | None = None
        # The last time value parsed and its result: forming updates repeat it.
        self._last_raw: object = _NOTHING
        self._last_time: tuple[int, int] = (0, 0)

    # -- the one entry point --------------------------------------------------------------

    @overload
    def feed(self, event: Candle) -> list[Candle]: ...
    @overload
    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]: ...
    @overload
    def feed(self, event: object) -> list[Any]: ...

    def feed(self, event: object) -> list[Any]:
        """Take one update of a source candle; return the coarser updates to deliver."""
        try:
            src = self._parse(event)
        except _Invalid:
            self.invalid += 1
            return []
        k = src.key
        w = k - k % self.interval_seconds
        if self._floor is not None and w < self._floor:
            self.ignored += 1
            return []
        win = self._win
        same = win is not None and win.start == w
        if same:
            assert win is not None
            if k in win.keys or (
                not src.closed
                and (
                    (win.forming is not None and k < win.forming.key)
                    or (win.keys and k < win.last_key)
                )
            ):
                self.ignored += 1
                return []
        total = src.volume
        if src.closed and same:
            assert win is not None
            if (summed := _sum(win.volume, src.volume)) is None:
                self.invalid += 1
                return []
            total = summed

        out: list[Any] = []
        if win is not None and not same:  # a later window: the current one is over (a gap)
            if win.keys:
                self._close(win, src, out)
            win = None
        if win is None:
            win = self._win = _Window(w)
            self._floor = w

        if not src.closed:
            win.forming = src
            if (
                self.partial
                and self._whole(win, k)
                and (ev := self._render(win, src, src, closed=False)) is not None
            ):
                out.append(ev)
            return out

        win.add(src, total)
        if win.forming is not None and win.forming.key <= k:
            win.forming = None
        if k + self.source_seconds == w + self.interval_seconds:
            self._close(win, src, out)
            self._win = None
            self._floor = w + self.interval_seconds
        elif (
            self.partial
            and self._whole(win, win.forming.key if win.forming is not None else k + 1)
            and (ev := self._render(win, win.forming, src, closed=False)) is not None
        ):
            out.append(ev)
        return out

    def _close(self, win: _Window, src: _Src, out: list[Any]) -> None:
        """Deliver ``win`` closed (or, ``complete_only`` and not whole, withhold it)."""
        if len(win.keys) < self._per_window:
            self.incomplete += 1
            if self.complete_only:
                self.withheld += 1
                return
        out.append(self._render(win, None, src, closed=True))
        self.delivered += 1

    def _whole(self, win: _Window, upto: int) -> bool:
        """Whether every source candle of ``win`` before ``upto`` has closed (always
        True unless ``complete_only``)."""
        if not self.complete_only:
            return True
        n = sum(1 for key in win.keys if key < upto)
        return n == -(-(upto - win.start) // self.source_seconds)

    # -- input ----------------------------------------------------------------------------

    def _parse(self, event: object) -> _Src:
        if isinstance(event, Candle):
            return self._parse_typed(event)
        if isinstance(event, dict):
            return self._parse_dict(event)
        raise _Invalid

    def _parse_typed(self, c: Candle) -> _Src:
        symbol = c.symbol
        if not isinstance(symbol, str) or (symbol and symbol.upper() != self._symbol_key):
            raise _Invalid
        when: object = c.open_time
        if not isinstance(when, datetime):
            raise _Invalid
        key, _ = self._time(when)
        try:
            amounts = (
                _amount(c.open, positive=True),
                _amount(c.high, positive=True),
                _amount(c.low, positive=True),
                _amount(c.close, positive=True),
                _amount(c.volume, positive=False),
            )
        except (AttributeError, TypeError, DecimalException) as exc:
            raise _Invalid from exc
        if amounts[2] > amounts[1] or not isinstance(c.is_closed, bool):
            raise _Invalid
        return _Src(key, _DATETIME, True, symbol or self.symbol, c.is_closed, amounts, (None,) * 4)

    def _parse_dict(self, d: dict[Any, Any]) -> _Src:
        get = d.get
        symbol = get("symbol")
        if symbol is None or symbol == "":
            symbol = self.symbol
        elif not isinstance(symbol, str) or symbol.upper() != self._symbol_key:
            raise _Invalid
        when = get("open_time")
        other = get("time")
        if when is None:
            when = other
        key, fmt = self._time(when)
        # Both spellings set but written differently: they must name the same instant.
        if other is not None and other != when and self._parse_time(other)[0] != key:
            raise _Invalid
        closed = get("is_closed")
        if type(closed) is not bool:
            raise _Invalid
        texts: list[str] = []
        amounts: list[Decimal] = []
        for name in ("open", "high", "low", "close", "volume"):
            s = get(name)
            if type(s) is not str or _AMOUNT_RE.fullmatch(s) is None:
                raise _Invalid
            try:
                amounts.append(_amount(Decimal(s), positive=name != "volume"))
            except DecimalException as exc:
                raise _Invalid from exc
            texts.append(s)
        o, h, lo, c, v = amounts
        if lo > h:
            raise _Invalid
        o_s, h_s, lo_s, c_s, _ = (s if _PLAIN_RE.fullmatch(s) else None for s in texts)
        return _Src(key, fmt, False, symbol, closed, (o, h, lo, c, v), (o_s, h_s, lo_s, c_s))

    def _time(self, value: object) -> tuple[int, int]:
        """(open time in epoch seconds, how it was written); a source-interval boundary."""
        if value is self._last_raw or (
            type(value) is str and type(self._last_raw) is str and value == self._last_raw
        ):
            return self._last_time
        result = self._parse_time(value)
        self._last_raw, self._last_time = value, result
        return result

    def _parse_time(self, value: object) -> tuple[int, int]:
        if type(value) is int:
            if value > _EPOCH_MS_THRESHOLD:
                if value % 1000:
                    raise _Invalid
                key, fmt = value // 1000, _MS
            else:
                key, fmt = value, _SECONDS
            try:
                _as_datetime(value)  # in the range a model accepts
            except ValueError as exc:
                raise _Invalid from exc
        else:
            if type(value) is str:
                try:
                    dt = _as_datetime(msgspec.convert(value, datetime))
                except (msgspec.ValidationError, ValueError) as exc:
                    raise _Invalid from exc
                fmt = _ISO
            elif isinstance(value, datetime):
                dt = _as_datetime(value)
                fmt = _DATETIME
            else:
                raise _Invalid
            if dt.microsecond:
                raise _Invalid
            key = (dt - _EPOCH) // _SECOND
        if key % self.source_seconds:
            raise _Invalid  # not the open time of a candle of the source interval
        return key, fmt

    # -- output ---------------------------------------------------------------------------

    def _render(self, win: _Window, forming: _Src | None, like: _Src, *, closed: bool) -> Any:
        """The window's candle (with ``forming`` folded in), shaped like ``like``.

        None only if the forming candle's volume makes the sum unrepresentable.
        """
        if not win.keys:
            assert forming is not None
            o, o_s, h, h_s = forming.open, forming.open_s, forming.high, forming.high_s
            lo, lo_s, c, c_s = forming.low, forming.low_s, forming.close, forming.close_s
            volume = forming.volume
        else:
            o, o_s, h, h_s = win.open, win.open_s, win.high, win.high_s
            lo, lo_s, c, c_s = win.low, win.low_s, win.close, win.close_s
            volume = win.volume
            if forming is not None:
                if forming.key < win.first_key:
                    o, o_s = forming.open, forming.open_s
                if forming.key > win.last_key:
                    c, c_s = forming.close, forming.close_s
                if forming.high > h:
                    h, h_s = forming.high, forming.high_s
                if forming.low < lo:
                    lo, lo_s = forming.low, forming.low_s
                summed = _sum(volume, forming.volume)
                if summed is None:
                    return None
                volume = summed
        start = win.start
        if like.typed:
            when = _EPOCH + timedelta(seconds=start)
            return Candle(
                symbol=like.symbol,
                interval=self.interval,
                open_time=when,
                time=when,
                open=o,
                high=h,
                low=lo,
                close=c,
                volume=volume,
                is_closed=closed,
            )
        fmt = like.fmt
        t: object
        if fmt == _ISO:
            t = (_EPOCH + timedelta(seconds=start)).strftime("%Y-%m-%dT%H:%M:%SZ")
        elif fmt == _MS:
            t = start * 1000
        elif fmt == _SECONDS:
            t = start
        else:
            t = _EPOCH + timedelta(seconds=start)
        return {
            "symbol": like.symbol,
            "interval": self.interval,
            "time": t,
            "open_time": t,
            "open": o_s if o_s is not None else _plain(o),
            "high": h_s if h_s is not None else _plain(h),
            "low": lo_s if lo_s is not None else _plain(lo),
            "close": c_s if c_s is not None else _plain(c),
            "volume": _plain(volume),
            "is_closed": closed,
        }
