"""One order view across venues: ``OrderEvent`` and ``OrderStatus``.

A handler on any venue's ``on_order_update()`` annotated with :class:`OrderEvent` gets
every order event of that venue in this one shape, its status mapped to one enum
(each venue's table is in its protocol module and in ``docs/venues/``).

Example:
    >>> @ws.on_order_update()          # AgentExchangeWS, TradierStream or TastytradeStream
    ... def on_fill(o: OrderEvent) -> None:
    ...     if o.status is OrderStatus.FILLED:
    ...         print(o.venue, o.order_id, o.symbol, o.filled_quantity, o.average_price)
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["OrderEvent", "OrderStatus"]


class OrderStatus(StrEnum):
    """Where an order is, on any venue."""

    PENDING = "pending"
    """Accepted, not yet working (received, routed, in flight, held)."""
    OPEN = "open"
    """Working, nothing filled yet."""
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"
    OTHER = "other"
    """A status the venue's table does not know (the venue's own is in ``raw``)."""


class OrderEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One status change of an order, the same on every venue.

    Attributes:
        venue: ``agentexchange``, ``tradier`` or ``tastytrade``.
        account: the account, when the venue says (AgentExchange's stream does not).
        order_id: the venue's id, as a string.
        symbol: the instrument (the underlying for tastytrade), when known.
        side: ``buy`` or ``sell`` (or the venue's own, e.g. ``sell_short``), when known.
        status: the status, mapped (see the venue's table); the venue's own is in ``raw``.
        filled_quantity: filled so far.
        remaining_quantity: still to fill, when known.
        average_price: the average fill price, when anything filled.
        updated_at: when the venue last changed the order, when it says.
        recovered: delivered by agentstream's recovery after a reconnect (read over
            REST), not by the stream.
        raw: the venue's own typed event (``OrderUpdate``, ``TradierOrder``,
            ``PlacedOrder``).
    """

    venue: str
    account: str | None = None
    order_id: str
    symbol: str | None = None
    side: str | None = None
    status: OrderStatus
    filled_quantity: Decimal | None = None
    remaining_quantity: Decimal | None = None
    average_price: Decimal | None = None
    updated_at: datetime | None = None
    recovered: bool = False
    raw: Any = None


def quantity_key(value: object) -> str:
    """A quantity as one canonical string (``"0.50"``, ``0.5`` and ``None`` -> ``"0.5"``,
    ``"0.5"``, ``"0"``), so states read from different sources compare equal."""
    if value is None or value == "":
        return "0"
    try:
        d = Decimal(str(value))
    except ArithmeticError:
        return str(value)
    if not d.is_finite():
        return str(value)
    return format(d.normalize(), "f") if d else "0"


def map_status(
    table: Mapping[str, OrderStatus], status: str, filled: Decimal | None
) -> OrderStatus:
    """``status`` through a venue's ``table``; an open order with fills is partially
    filled (venues that have no such status of their own)."""
    mapped = table.get(status, OrderStatus.OTHER)
    if mapped is OrderStatus.OPEN and filled:
        return OrderStatus.PARTIALLY_FILLED
    return mapped
