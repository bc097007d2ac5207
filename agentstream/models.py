"""Typed events: frozen msgspec Structs with ``Decimal`` amounts and aware ``datetime``s.

A handler whose first parameter is annotated with one of these gets that type, decoded
straight from the frame; an unannotated handler gets a plain ``dict``.

Example:
    >>> @ws.on_ticker("BTCUSDT")
    ... def on_btc(t: Ticker) -> None:
    ...     print(t.symbol, t.price + 1)      # Decimal arithmetic, no float error

Models hold only strings, numbers, ``Decimal``s and ``datetime``s, so they cannot be part
of a reference cycle: they are declared ``gc=False`` (the garbage collector does not track
them, which makes decoding cheaper). A subclass inherits that; one that adds a field able
to hold a container must pass ``gc=True`` (``class Tagged(Ticker, gc=True): ...``).

Every model validates what it decodes: a NaN or negative price, a timestamp that is
neither ISO-8601 nor epoch milliseconds, a missing field: the frame is dropped and
counted in ``ws.stats``, and no handler sees it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

import msgspec

__all__ = ["Candle", "Event", "Gap", "OrderUpdate", "Portfolio", "Ticker"]

if TYPE_CHECKING:
    _Time = datetime
    _OptTime = datetime | None
else:
    # On the wire a timestamp is an ISO-8601 string or (seen from some servers) an epoch
    # integer; __post_init__ turns integers into datetimes, so users only ever see datetime.
    _Time = datetime | int
    _OptTime = datetime | int | None

_EPOCH_MS_THRESHOLD = 100_000_000_000  # integers above this are milliseconds, not seconds
_UNSET = datetime.min.replace(tzinfo=UTC)
_set = msgspec.structs.force_setattr


def _as_datetime(value: datetime | int) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    try:
        if value > _EPOCH_MS_THRESHOLD:
            return datetime.fromtimestamp(value / 1000, UTC)
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        # msgspec turns ValueError into a ValidationError; the others would escape it.
        raise ValueError(f"timestamp {value} is out of range") from None


def _fix_time(obj: msgspec.Struct, name: str) -> None:
    """Make field ``name`` an aware datetime: epoch integers converted, naive taken as UTC."""
    value = getattr(obj, name)
    if isinstance(value, int) or (isinstance(value, datetime) and value.tzinfo is None):
        _set(obj, name, _as_datetime(value))


#: Amounts beyond 10**_MAX_EXPONENT are refused: no price or quantity is that large, but a
#: JSON number like 1e999 (infinite as a double) decodes to a finite Decimal.
_MAX_EXPONENT = 30
_ZERO = Decimal(0)
_TOO_BIG = Decimal(10) ** (_MAX_EXPONENT + 1)


def _check_amount(name: str, value: Decimal | None, *, positive: bool = False) -> None:
    if value is None:
        return
    if not value.is_finite() or value.adjusted() > _MAX_EXPONENT:
        raise ValueError(f"{name} must be finite, got {value}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'positive' if positive else 'non-negative'}")


class Ticker(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One trade of a pair (the ``ticker`` channel)."""

    symbol: str = ""
    price: Decimal
    quantity: Decimal | None = None
    timestamp: _Time
    is_buyer_maker: bool | None = None

    def __post_init__(self) -> None:
        # The firehose's model: checks written out inline (about 3x cheaper than the
        # generic helpers).
        p = self.price
        if not (p.is_finite() and _ZERO < p < _TOO_BIG):
            raise ValueError(f"price must be positive and finite, got {p}")
        q = self.quantity
        if q is not None and not (q.is_finite() and _ZERO <= q < _TOO_BIG):
            raise ValueError(f"quantity must be non-negative and finite, got {q}")
        ts = self.timestamp
        if type(ts) is not datetime or ts.tzinfo is None:
            _fix_time(self, "timestamp")


class Candle(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An OHLCV candle (the ``candles`` channel).

    ``open_time`` is the start of the candle (the server sends it as ``time``; both
    names are accepted and both attributes are set). ``is_closed`` is true on the
    final update of the candle.
    """

    symbol: str = ""
    interval: str = ""
    open_time: _Time = _UNSET
    time: _Time = _UNSET
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    is_closed: bool = False

    def __post_init__(self) -> None:
        for name in ("open", "high", "low", "close"):
            _check_amount(name, getattr(self, name), positive=True)
        _check_amount("volume", self.volume)
        if self.low > self.high:
            raise ValueError("low is above high")
        open_time = self.open_time if self.open_time is not _UNSET else self.time
        if open_time is _UNSET:
            raise ValueError("a candle needs `time` (or `open_time`)")
        open_time = _as_datetime(open_time)
        _set(self, "open_time", open_time)
        _set(self, "time", open_time)


class OrderUpdate(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A status change of one of the account's orders (the ``orders`` channel).

    Optional fields are None unless they apply (``executed_price`` once filled, ...).
    ``status`` is one of ``pending``, ``open``, ``partially_filled``, ``filled``,
    ``cancelled``, ``rejected``, ``expired``.

    The platform's server sends ``quantity`` ``0`` and an empty ``symbol``, ``side`` and
    ``type`` when its serializer lacks them: such an event is still delivered (an order
    event is never dropped for what the real server sends). A negative, infinite or
    non-numeric amount is still refused.
    """

    order_id: str
    status: str
    symbol: str
    side: str
    type: str
    quantity: Decimal
    price: Decimal | None = None
    executed_price: Decimal | None = None
    executed_quantity: Decimal | None = None
    fee: Decimal | None = None
    filled_at: _OptTime = None
    cancelled_at: _OptTime = None
    rejected_reason: str | None = None
    #: When the order was placed (the platform's REST answers say; stream events do not).
    created_at: _OptTime = None
    #: Delivered by agentstream's recovery after a reconnect (read over REST).
    recovered: bool = False

    def __post_init__(self) -> None:
        if not self.order_id:
            raise ValueError("order_id is empty")
        _check_amount("quantity", self.quantity)
        for name in ("price", "executed_price", "executed_quantity", "fee"):
            _check_amount(name, getattr(self, name))
        _fix_time(self, "filled_at")
        _fix_time(self, "cancelled_at")
        _fix_time(self, "created_at")


class Portfolio(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A snapshot of the account (the ``portfolio`` channel).

    ``roi_pct`` is None when the server does not send it (the platform's own server
    does not; the simulated exchange does).
    """

    total_equity: Decimal
    available_cash: Decimal
    unrealized_pnl: Decimal
    realized_pnl: Decimal
    roi_pct: Decimal | None = None
    timestamp: _OptTime = None

    def __post_init__(self) -> None:
        for name in ("total_equity", "available_cash", "unrealized_pnl", "realized_pnl"):
            value = getattr(self, name)
            if not value.is_finite() or value.adjusted() > _MAX_EXPONENT:
                raise ValueError(f"{name} must be finite")
        roi = self.roi_pct
        if roi is not None and (not roi.is_finite() or roi.adjusted() > _MAX_EXPONENT):
            raise ValueError("roi_pct must be finite")
        _fix_time(self, "timestamp")


#: Any typed event.
Event = Ticker | Candle | OrderUpdate | Portfolio


class Gap(msgspec.Struct, frozen=True, kw_only=True):
    """A channel was down: what an ``on_gap`` hook receives after a reconnect.

    Reported once per channel, when its first event after the reconnect arrives (so
    ``first_event_at`` is known); a bot re-syncs what it may have missed over REST.

    Attributes:
        channel: the channel key (``ticker:BTCUSDT``, ``candles:ETHUSDT:1m``, ``orders``).
        disconnected_at: local time the client saw the connection carrying the channel
            end (for a silent connection, when the stale timeout ran out).
        reconnected_at: local time the connection was open again.
        last_event_at: exchange timestamp of the last event before the gap (None if no
            event had arrived, or the event carries no timestamp, as most order updates).
        first_event_at: exchange timestamp of the first event after the gap.
        missing_candles: for candle channels, the open times of the candles whose
            closed update never arrived (the first 10,000, oldest first).
        missing_candle_count: how many candles that is, always exact.
        reason: why the connection was lost.

    Example:
        >>> @ws.on_gap
        ... async def resync(gap: Gap) -> None:
        ...     print(gap.channel, gap.duration, len(gap.missing_candles))
        ...     if gap.channel == "orders":
        ...         await refresh_open_orders_over_rest()
    """

    channel: str
    disconnected_at: datetime
    reconnected_at: datetime
    last_event_at: datetime | None = None
    first_event_at: datetime | None = None
    missing_candles: tuple[datetime, ...] = ()
    missing_candle_count: int = 0
    reason: str = ""

    @property
    def duration(self) -> timedelta:
        """How long the connection was down (local clock)."""
        return self.reconnected_at - self.disconnected_at
