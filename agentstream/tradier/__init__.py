"""Tradier's account events stream: ``TradierStream`` and its ``TradierOrder``.

Example:
    >>> from agentstream.tradier import TradierStream, TradierOrder
    >>> ws = TradierStream(token=os.environ["TRADIER_TOKEN"])
    >>> @ws.on_order_update()
    ... def on_order(data):
    ...     print(data["id"], data["status"], data["exec_quantity"])
    >>> ws.run_forever()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentstream.tradier.models import TradierOrder

if TYPE_CHECKING:
    from agentstream.tradier.client import TradierStream

__all__ = ["TradierOrder", "TradierStream"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the protocol module imports this package's models, and the
    # client imports the protocol module.
    if name == "TradierStream":
        from agentstream.tradier.client import TradierStream

        return TradierStream
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
