"""Tradier's typed order event.

Example:
    >>> @ws.on_order_update()
    ... def on_fill(o: TradierOrder) -> None:
    ...     if o.status == "filled":
    ...         print(o.id, o.symbol, o.exec_quantity, o.avg_fill_price)
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import msgspec

from agentstream.models import _check_amount, _fix_time

__all__ = ["TradierOrder"]


class TradierOrder(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One status change of an order on Tradier's account stream.

    Amounts are ``Decimal`` taken from the JSON number's own text (never through a
    float); dates are aware datetimes (nine fractional digits are accepted, kept to the
    microsecond). ``status`` is as Tradier sent it: ``open``, ``partially_filled``,
    ``filled``, ``expired``, ``canceled``, ``pending``, ``rejected``, ``calculated``,
    ``accepted_for_bidding``, ``error`` or ``held``; statuses do not always arrive in
    lifecycle order, and agentstream never reorders them.

    The stream carries no ``symbol``, ``side`` or ``quantity``: unless the stream was
    created with ``enrich=False``, agentstream looks each new order up once over REST and
    fills them in (None when the look-up failed or took longer than a second).
    """

    id: int
    event: str = "order"
    status: str
    type: str | None = None
    account: str | None = None
    parent_id: int | None = None
    tag: str | None = None
    price: Decimal | None = None
    stop_price: Decimal | None = None
    avg_fill_price: Decimal | None = None
    exec_quantity: Decimal | None = None
    last_fill_quantity: Decimal | None = None
    remaining_quantity: Decimal | None = None
    create_date: datetime | None = None
    transaction_date: datetime | None = None
    #: From the order's REST look-up (None without enrichment).
    symbol: str | None = None
    side: str | None = None
    quantity: Decimal | None = None
    #: Delivered by agentstream's recovery after a reconnect (read over REST).
    recovered: bool = False

    def __post_init__(self) -> None:
        for name in (
            "price",
            "stop_price",
            "avg_fill_price",
            "exec_quantity",
            "last_fill_quantity",
            "remaining_quantity",
            "quantity",
        ):
            _check_amount(name, getattr(self, name))
        _fix_time(self, "create_date")
        _fix_time(self, "transaction_date")
