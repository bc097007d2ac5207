"""``AgentExchangeREST``: the AgentExchange trading API a stream user needs beside the stream.

Place, cancel, read and list orders, and read the portfolio, with the same API key as
the stream (``X-API-Key``). Orders come back as the stream's own :class:`OrderUpdate`, so
one handler can treat both alike.

Example:
    >>> async with AgentExchangeREST("ak_demo_agentstream", "http://127.0.0.1:8000") as rest:
    ...     order = await rest.place_order("BTCUSDT", "buy", quantity="0.01")
    ...     print(order.order_id, order.status, order.executed_price)
    ...     print([o.order_id for o in await rest.open_orders()])
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import msgspec

from agentstream._rest import RestClient
from agentstream.errors import ConfigurationError, RestError
from agentstream.models import OrderUpdate, Portfolio

if TYPE_CHECKING:
    import ssl as _ssl
    from decimal import Decimal

__all__ = ["AgentExchangeREST"]

#: The platform's page size limits (GET /orders: 1-500; GET /orders/open: 1-200).
_PAGE = 500
_OPEN_PAGE = 200
#: The platform's names for order fields, and the stream's.
_RENAMES = {"executed_qty": "executed_quantity", "requested_quantity": "quantity"}


def _order(data: Any) -> OrderUpdate:
    """A REST order (any of the platform's shapes) as the stream's ``OrderUpdate``."""
    if not isinstance(data, dict):
        raise RestError(f"expected an order object, got {type(data).__name__}", status=200)
    # The platform's answers carry both names (a filled order's `quantity` is null
    # beside `requested_quantity`): a null never replaces a value.
    fields: dict[str, Any] = {}
    for k, v in data.items():
        name = _RENAMES.get(str(k), str(k))
        if v is not None or name not in fields:
            fields[name] = v
    fields.setdefault("quantity", fields.get("executed_quantity") or "0")
    for name in ("symbol", "side", "type"):
        fields.setdefault(name, "")
    known = set(OrderUpdate.__struct_fields__)
    try:
        return msgspec.convert({k: v for k, v in fields.items() if k in known}, OrderUpdate)
    except msgspec.ValidationError as exc:
        raise RestError(f"an order the stream's model refuses: {exc}", status=200) from None


def _orders(body: Any) -> list[OrderUpdate]:
    items = body.get("orders") if isinstance(body, dict) else body
    if not isinstance(items, list):
        raise RestError("expected a list of orders", status=200)
    return [_order(o) for o in items]


class AgentExchangeREST(RestClient):
    """The AgentExchange trading REST API, typed.

    Args:
        api_key: the account's API key (never logged or shown).
        base_url: the platform's URL (``http(s)://`` or the stream's ``ws(s)://`` one);
            default ``$AGENTSTREAM_BASE_URL``, else ``http://localhost:8000``.
        timeout: seconds a request may take.
        ssl: an ``ssl.SSLContext`` for ``https://``.

    Every method can raise the errors below.

    Raises:
        AuthenticationError: the API key was refused.
        RestError: the platform refused the request (``status``, ``code``, ``detail``).
        StreamConnectionError: the request could not be made.
    """

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        *,
        timeout: float = 10.0,
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ConfigurationError("api_key must be a non-empty string")
        base = base_url or os.environ.get("AGENTSTREAM_BASE_URL") or "http://localhost:8000"
        base = base.strip().rstrip("/")
        if base.endswith("/ws/v1"):
            base = base[: -len("/ws/v1")]
        super().__init__(base, api_key, timeout=timeout, ssl=ssl)

    def _headers(self, token: str) -> dict[str, str]:
        return {"X-API-Key": token, "Accept": "application/json"}

    async def place_order(
        self,
        symbol: str,
        side: str,
        quantity: Decimal | str,
        type: str = "market",
        price: Decimal | str | None = None,
    ) -> OrderUpdate:
        """Place an order; its state right after (a market order is usually filled).

        Example:
            >>> await rest.place_order("ETHUSDT", "buy", "0.1", type="limit", price="3000")
        """
        body: dict[str, str] = {
            "symbol": symbol.upper(),
            "side": side,
            "type": type,
            "quantity": str(quantity),
        }
        if price is not None:
            body["price"] = str(price)
        return _order(await self._call("POST", "/api/v1/trade/order", json=body))

    async def get_order(self, order_id: str) -> OrderUpdate:
        """One order's current state."""
        return _order(await self._call("GET", f"/api/v1/trade/order/{order_id}"))

    async def list_orders(
        self,
        *,
        status: str | None = None,
        symbol: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[OrderUpdate]:
        """One page of the account's orders (``limit`` 1 to 500)."""
        query = {"status": status, "symbol": symbol, "limit": limit, "offset": offset}
        return _orders(await self._call("GET", "/api/v1/trade/orders", query=query))

    async def all_orders(
        self, *, status: str | None = None, symbol: str | None = None
    ) -> list[OrderUpdate]:
        """Every order (page by page), optionally of one status or symbol."""
        out: list[OrderUpdate] = []
        while True:
            page = await self.list_orders(
                status=status, symbol=symbol, limit=_PAGE, offset=len(out)
            )
            out += page
            if len(page) < _PAGE:
                return out

    async def open_orders(self) -> list[OrderUpdate]:
        """Every open order (pending or partially filled)."""
        out: list[OrderUpdate] = []
        while True:
            body = await self._call(
                "GET", "/api/v1/trade/orders/open", query={"limit": _OPEN_PAGE, "offset": len(out)}
            )
            page = _orders(body)
            out += page
            if len(page) < _OPEN_PAGE:
                return out

    async def cancel_order(self, order_id: str) -> OrderUpdate:
        """Cancel an open order; its state after (``cancelled``).

        Raises:
            RestError: 404 for an unknown order, 409 (or 400) for one no longer open.
        """
        await self._call("DELETE", f"/api/v1/trade/order/{order_id}")
        return await self.get_order(order_id)

    async def portfolio(self) -> Portfolio:
        """The account's portfolio now."""
        body = await self._call("GET", "/api/v1/account/portfolio")
        try:
            return msgspec.convert(body, Portfolio)
        except msgspec.ValidationError as exc:
            raise RestError(f"a portfolio the stream's model refuses: {exc}", status=200) from None
