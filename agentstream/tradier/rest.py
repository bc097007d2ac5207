"""``TradierREST``: the Tradier order API a stream user needs beside the account stream.

Place, read, list and cancel orders, and read the token's account numbers, with the
same bearer token as :class:`~agentstream.tradier.TradierStream`. Orders come back as
the stream's own :class:`~agentstream.tradier.TradierOrder` (with ``symbol``, ``side``
and ``quantity`` filled in), so one handler can treat both alike. Amounts are
``Decimal`` decoded from the JSON number's own text, never through a float.

Example:
    >>> async with TradierREST(os.environ["TRADIER_TOKEN"], sandbox=True) as rest:
    ...     account = (await rest.profile())[0]
    ...     oid = await rest.place_order("AAPL", "buy", 10, account=account)
    ...     order = await rest.get_order(oid, account=account)
    ...     print(order.id, order.status, order.exec_quantity, order.avg_fill_price)

A running stream has one ready: ``ws.rest`` (see :attr:`TradierStream.rest`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote

import msgspec

from agentstream._rest import RestClient, amount_text, decode_answer, order_id_int
from agentstream.errors import ConfigurationError, RestError
from agentstream.protocols.tradier import LIVE_URL, SANDBOX_URL
from agentstream.tradier.models import TradierOrder

if TYPE_CHECKING:
    import ssl as _ssl

    from agentstream._client import Credential

__all__ = ["TradierREST"]

T = TypeVar("T")

#: What an amount may be given as: exact types only (a float is refused).
Amount = Decimal | int | str


# -- Tradier's answers, decoded straight into typed structs (numbers as Decimal) --------


class _Placed(msgspec.Struct, frozen=True):
    id: int
    status: str = "ok"


class _PlaceAnswer(msgspec.Struct, frozen=True):
    order: _Placed


class _OrderAnswer(msgspec.Struct, frozen=True):
    order: TradierOrder


class _OrderList(msgspec.Struct, frozen=True):
    #: Tradier's quirk: a plain object when there is exactly one order.
    order: TradierOrder | list[TradierOrder] | None = None


class _OrdersAnswer(msgspec.Struct, frozen=True):
    #: Tradier's quirk: the string ``"null"`` when there are no orders.
    orders: _OrderList | str | None = None


class _Account(msgspec.Struct, frozen=True):
    account_number: str


class _Profile(msgspec.Struct, frozen=True):
    #: A plain object for one account, a list for several.
    account: _Account | list[_Account] | None = None


class _ProfileAnswer(msgspec.Struct, frozen=True):
    profile: _Profile


def _as_list(value: T | list[T] | None) -> list[T]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


class TradierREST(RestClient):
    """Tradier's order REST API, typed.

    Args:
        token: the API access token, or a sync or async callable returning it (read for
            every request). Never logged or shown.
        sandbox: use ``https://sandbox.tradier.com`` instead of ``https://api.tradier.com``.
        base_url: any other REST root (the simulated exchange: ``http://127.0.0.1:8000``);
            it wins over ``sandbox``.
        account: the account number methods use when not given one (also settable later
            as ``rest.account``); :meth:`profile` lists the token's.
        timeout: seconds a request may take.
        ssl: an ``ssl.SSLContext`` for ``https://`` (default: the system's trust store).

    Every method can raise the errors below.

    Raises:
        AuthenticationError: the token was refused (HTTP 401/403).
        RestError: Tradier refused the request (``status``; ``detail`` joins Tradier's
            ``errors.error`` messages), or answered something that is not its documented
            shape.
        StreamConnectionError: the request could not be made.
        ConfigurationError: no account number (neither ``account=`` nor the client's).

    Example:
        >>> rest = TradierREST(token, base_url=sim.http_url, account="VA000001")
        >>> oid = await rest.place_order("AAPL", "buy", 2, type="limit", price="180.50")
        >>> (await rest.cancel_order(oid)).status
        'canceled'
        >>> await rest.aclose()
    """

    def __init__(
        self,
        token: Credential,
        *,
        sandbox: bool = False,
        base_url: str | None = None,
        account: str | None = None,
        timeout: float = 10.0,
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(
            base_url or (SANDBOX_URL if sandbox else LIVE_URL), token, timeout=timeout, ssl=ssl
        )
        #: The account number used when a method is given none.
        self.account = account

    def _headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    # -- the API ------------------------------------------------------------------------

    async def place_order(
        self,
        symbol: str,
        side: str,
        quantity: Amount,
        type: str = "market",
        duration: str = "day",
        price: Amount | None = None,
        stop: Amount | None = None,
        tag: str | None = None,
        order_class: str = "equity",
        account: str | None = None,
    ) -> int:
        """Place an order; its id (``POST /v1/accounts/{account}/orders``).

        Tradier answers only the id (and ``"status": "ok"``): the order's state comes
        from :meth:`get_order` or the stream. ``side``: ``buy``, ``sell``, ``sell_short``,
        ``buy_to_cover``; ``type``: ``market``, ``limit`` (needs ``price``), ``stop``
        (needs ``stop``), ``stop_limit``; ``duration``: ``day``, ``gtc``, ``pre``,
        ``post``; ``tag``: at most 255 letters, digits and ``-``. Amounts are a
        ``Decimal``, an ``int`` or a ``str``, never a float.

        Raises:
            RestError: HTTP 400 with Tradier's reasons (``exc.detail``) for a refused order.

        Example:
            >>> oid = await rest.place_order("AAPL", "buy", 10)
            >>> oid = await rest.place_order("MSFT", "sell", "5", type="limit", price="420.10",
            ...                              duration="gtc", tag="rebalance-7")
        """
        form = {
            "class": order_class,
            "symbol": symbol.strip().upper(),
            "side": side,
            "quantity": amount_text("quantity", quantity),
            "type": type,
            "duration": duration,
        }
        if price is not None:
            form["price"] = amount_text("price", price)
        if stop is not None:
            form["stop"] = amount_text("stop", stop)
        if tag is not None:
            form["tag"] = tag
        path = self._orders_path(account)
        body = await self._call("POST", path, form=form, raw=True)
        return decode_answer(body, _PlaceAnswer, f"POST {path}").order.id

    async def get_order(self, order_id: int, account: str | None = None) -> TradierOrder:
        """One order's current state (``GET /v1/accounts/{account}/orders/{id}``).

        The stream's :class:`TradierOrder`, with ``account``, ``symbol``, ``side``,
        ``quantity`` and ``tag`` set (Tradier's ``class``, ``duration`` and
        ``last_fill_price`` have no field there and are left out).

        Raises:
            RestError: HTTP 404 for an order the account does not have.

        Example:
            >>> o = await rest.get_order(oid)
            >>> o.status, o.symbol, o.exec_quantity, o.avg_fill_price
            ('filled', 'AAPL', Decimal('10.00000000'), Decimal('227.51000000'))
        """
        acct = self._account(account)
        path = f"{self._orders_path(acct)}/{order_id_int(order_id)}"
        body = await self._call("GET", path, raw=True)
        order = decode_answer(body, _OrderAnswer, f"GET {path}").order
        return msgspec.structs.replace(order, account=acct)

    async def list_orders(
        self, account: str | None = None, include_tags: bool = False
    ) -> list[TradierOrder]:
        """The account's orders (``GET /v1/accounts/{account}/orders``), as Tradier keeps
        them (open and recent ones); ``[]`` when there are none.

        Tradier lists tags only when asked: ``include_tags=True``.

        Example:
            >>> [o.id for o in await rest.list_orders() if o.status == "open"]
            [1000002, 1000005]
        """
        acct = self._account(account)
        path = self._orders_path(acct)
        query = {"includeTags": "true"} if include_tags else None
        body = await self._call("GET", path, query=query, raw=True)
        orders = decode_answer(body, _OrdersAnswer, f"GET {path}").orders
        if isinstance(orders, str):
            if orders.strip().lower() not in ("null", ""):
                raise RestError(
                    f"GET {path}: expected orders, got the string {orders[:40]!r}", status=200
                )
            return []
        found = _as_list(orders.order if orders is not None else None)
        return [msgspec.structs.replace(o, account=acct) for o in found]

    async def cancel_order(self, order_id: int, account: str | None = None) -> TradierOrder:
        """Cancel an open order (``DELETE .../orders/{id}``); its state read back after.

        Read back at once, the status is usually ``canceled`` already; the stream reports
        the change too.

        Raises:
            RestError: 404 for an unknown order; 400 for one that is no longer open.

        Example:
            >>> (await rest.cancel_order(oid)).status
            'canceled'
        """
        acct = self._account(account)
        await self._call("DELETE", f"{self._orders_path(acct)}/{order_id_int(order_id)}", raw=True)
        return await self.get_order(order_id, account=acct)

    async def profile(self) -> list[str]:
        """The account numbers the token may trade (``GET /v1/user/profile``).

        Example:
            >>> await rest.profile()
            ['VA000001', 'VA000002']
        """
        path = "/v1/user/profile"
        body = await self._call("GET", path, raw=True)
        accounts = decode_answer(body, _ProfileAnswer, f"GET {path}").profile.account
        return [a.account_number for a in _as_list(accounts)]

    # -- helpers ------------------------------------------------------------------------

    def _account(self, account: str | None) -> str:
        acct = account or self.account
        if not acct or not acct.strip():
            raise ConfigurationError(
                "no account number: pass account=..., or set it on the client "
                "(TradierREST(..., account=...) or rest.account = ...); "
                "rest.profile() lists the token's"
            )
        return acct.strip()

    def _orders_path(self, account: str | None) -> str:
        return f"/v1/accounts/{quote(self._account(account), safe='')}/orders"
