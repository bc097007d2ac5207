"""tastytrade's account streamer: ``TastytradeStream`` and its typed messages.

Example:
    >>> from agentstream.tastytrade import TastytradeStream, PlacedOrder
    >>> async with TastytradeStream(token, reconnect_fn=cb, reconnect_args=(a, b)) as s:
    ...     await s.subscribe_accounts(accounts)
    ...     async for order in s.listen(PlacedOrder):
    ...         print(order.account_number, order.status, order.underlying_symbol)

    Orders and balances over REST beside it: :class:`TastytradeREST` (``s.rest``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentstream.tastytrade.models import (
    AccountBalance,
    CurrentPosition,
    PlacedOrder,
    QuoteAlert,
    Watchlist,
)

if TYPE_CHECKING:
    from agentstream.tastytrade.client import TastytradeStream
    from agentstream.tastytrade.rest import TastytradeREST

__all__ = [
    "AccountBalance",
    "CurrentPosition",
    "PlacedOrder",
    "QuoteAlert",
    "TastytradeREST",
    "TastytradeStream",
    "Watchlist",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: the protocol module imports this package's models, and the
    # client imports the protocol module.
    if name == "TastytradeStream":
        from agentstream.tastytrade.client import TastytradeStream

        return TastytradeStream
    if name == "TastytradeREST":
        from agentstream.tastytrade.rest import TastytradeREST

        return TastytradeREST
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
