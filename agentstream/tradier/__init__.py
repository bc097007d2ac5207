"""Tradier's account events stream: ``TradierStream`` and its ``TradierOrder``; the
order REST API beside it: ``TradierREST`` (also ``ws.rest``).

Example:
    >>> from agentstream.tradier import TradierStream, TradierOrder
    >>> ws = TradierStream(token=os.environ["TRADIER_TOKEN"])
    >>> @ws.on_order_update()
    ... def on_order(data):
    ...     print(data["id"], data["status"], data["exec_quantity"])
    >>> ws.run_forever()
    >>> async with TradierREST(os.environ["TRADIER_TOKEN"], account="6YA") as rest:
    ...     oid = await rest.place_order("AAPL", "buy", 10)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentstream.tradier.models import TradierOrder

if TYPE_CHECKING:
    from agentstream.tradier.client import TradierStream
    from agentstream.tradier.rest import TradierREST

__all__ = ["TradierOrder", "TradierREST", "TradierStream"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the protocol module imports this package's models, and the
    # client imports the protocol module.
    if name == "TradierStream":
        from agentstream.tradier.client import TradierStream

        return TradierStream
    if name == "TradierREST":
        from agentstream.tradier.rest import TradierREST

        return TradierREST
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
