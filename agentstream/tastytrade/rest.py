"""``TastytradeREST``: the tastytrade order and account API a stream user needs beside the
account streamer.

Place, read, list and cancel equity orders, and read balances and positions, with the
same ``"Bearer ..."`` token as :class:`~agentstream.tastytrade.TastytradeStream`. Answers
come back as the streamer's own models (:class:`~agentstream.tastytrade.PlacedOrder`,
:class:`~agentstream.tastytrade.AccountBalance`,
:class:`~agentstream.tastytrade.CurrentPosition`), so one handler can treat both alike.
Amounts are ``Decimal`` decoded from the wire's own text (string or JSON number), never
through a float.

Example:
    >>> async with TastytradeREST(token, sandbox=True) as rest:
    ...     order = await rest.place_order("5WT00000", "AAPL", "Buy to Open", 10)
    ...     print(order.id, order.status)
    ...     print((await rest.balances("5WT00000")).cash_balance)

A running stream has one ready: ``stream.rest`` (see :attr:`TastytradeStream.rest`).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlencode

import msgspec

from agentstream import __version__
from agentstream._rest import RestClient, amount_text, decode_answer, order_id_int
from agentstream.errors import ConfigurationError
from agentstream.tastytrade.models import AccountBalance, CurrentPosition, PlacedOrder

if TYPE_CHECKING:
    import ssl as _ssl
    from collections.abc import Iterable

    from agentstream._client import Credential

__all__ = ["LIVE_API_URL", "SANDBOX_API_URL", "TastytradeREST"]

#: tastytrade's REST roots (production and the certification sandbox).
LIVE_API_URL: Final = "https://api.tastyworks.com"
SANDBOX_API_URL: Final = "https://api.cert.tastyworks.com"


#: What an amount may be given as: exact types only (a float is refused).
Amount = Decimal | int | str

#: The real API's page size cap for order searches.
_PER_PAGE = 250


# -- tastytrade's answers, decoded straight into the models (amounts as Decimal) --------


class _PlacedData(msgspec.Struct, frozen=True):
    order: PlacedOrder
    warnings: list[Any] | None = None


class _PlaceAnswer(msgspec.Struct, frozen=True):
    data: _PlacedData


class _OrderAnswer(msgspec.Struct, frozen=True):
    data: PlacedOrder


class _OrderItems(msgspec.Struct, frozen=True):
    items: list[PlacedOrder]


class _Pagination(msgspec.Struct, frozen=True, rename="kebab"):
    per_page: int | None = None
    page_offset: int | None = None
    item_offset: int | None = None
    total_items: int | None = None
    total_pages: int | None = None
    current_item_count: int | None = None


class _OrdersAnswer(msgspec.Struct, frozen=True):
    data: _OrderItems
    #: Only on paginated searches (``GET .../orders``); absent from ``/orders/live``.
    pagination: _Pagination | None = None


class _BalanceAnswer(msgspec.Struct, frozen=True):
    data: AccountBalance


class _PositionItems(msgspec.Struct, frozen=True):
    items: list[CurrentPosition]


class _PositionsAnswer(msgspec.Struct, frozen=True):
    data: _PositionItems


def _account(account: object) -> str:
    """An account number, or an object with ``.account_number`` (the SDK's Account)."""
    number = getattr(account, "account_number", account)
    if not isinstance(number, str) or not number.strip():
        raise ConfigurationError(
            f"an account is an account number or has .account_number, not {account!r}"
        )
    return number.strip()


def _timestamp(name: str, value: datetime) -> str:
    """A time as tastytrade's filters take it: UTC, milliseconds, ``Z``."""
    if not isinstance(value, datetime):
        raise ConfigurationError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _date(name: str, value: date) -> str:
    if not isinstance(value, date):
        raise ConfigurationError(f"{name} must be a date, not {type(value).__name__}")
    return (value.date() if isinstance(value, datetime) else value).isoformat()


class TastytradeREST(RestClient):
    """tastytrade's order and account REST API, typed.

    Args:
        token: the whole ``"Bearer <access token>"`` string (sent as the
            ``Authorization`` header as given), or a sync or async callable returning
            the current one (read for every request: access tokens last about 15
            minutes). Never logged or shown.
        sandbox: use ``https://api.cert.tastyworks.com`` instead of
            ``https://api.tastyworks.com``.
        base_url: any other REST root (the simulated exchange: ``http://127.0.0.1:8000``);
            it wins over ``sandbox``.
        timeout: seconds a request may take.
        ssl: an ``ssl.SSLContext`` for ``https://`` (default: the system's trust store).

    An account is an account number or an object with ``.account_number``.

    Every method can raise the errors below.

    Raises:
        AuthenticationError: the token was refused (HTTP 401/403).
        RestError: tastytrade refused the request (``status``; ``code`` and ``detail``
            from its ``{"error": {"code", "message"}}``), or answered something that is
            not its documented shape.
        StreamConnectionError: the request could not be made.
        ConfigurationError: an argument of the wrong type (a float amount, ...).

    Example:
        >>> rest = TastytradeREST(token, base_url=sim.http_url)
        >>> o = await rest.place_order(acct, "AAPL", "Buy to Open", 2, "Limit", price="180.50")
        >>> (await rest.cancel_order(acct, o.id)).status
        'Cancel Requested'
        >>> await rest.aclose()
    """

    def __init__(
        self,
        token: Credential,
        *,
        sandbox: bool = False,
        base_url: str | None = None,
        timeout: float = 10.0,
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(
            base_url or (SANDBOX_API_URL if sandbox else LIVE_API_URL),
            token,
            timeout=timeout,
            ssl=ssl,
        )

    def _headers(self, token: str) -> dict[str, str]:
        return {
            "Authorization": token,
            "Accept": "application/json",
            "User-Agent": f"agentstream/{__version__}",
        }

    # -- orders -------------------------------------------------------------------------

    async def place_order(
        self,
        account: object,
        symbol: str,
        action: str,
        quantity: Amount,
        order_type: str = "Market",
        time_in_force: str = "Day",
        price: Amount | None = None,
        price_effect: str | None = None,
        stop_trigger: Amount | None = None,
    ) -> PlacedOrder:
        """Place a single-leg equity order (``POST /accounts/{account}/orders``); the
        order as tastytrade accepted it (usually ``Received`` or ``Routed``).

        ``action``: ``Buy to Open``, ``Sell to Close``, ``Sell to Open``, ``Buy to
        Close``; ``order_type``: ``Market``, ``Limit`` (needs ``price``), ``Stop`` (needs
        ``stop_trigger``), ``Stop Limit``; ``time_in_force``: ``Day``, ``GTC``, ``Ext``...
        ``price`` is a magnitude: ``price_effect`` defaults to ``Debit`` for a buy and
        ``Credit`` for a sell. Amounts are a ``Decimal``, an ``int`` or a ``str``, never
        a float.

        Raises:
            RestError: the order was refused (``exc.detail`` has tastytrade's reason).

        Example:
            >>> o = await rest.place_order(acct, "AAPL", "Buy to Open", 10)
            >>> o = await rest.place_order(acct, "MSFT", "Sell to Close", "5", "Limit",
            ...                            "GTC", price=Decimal("420.10"))
        """
        leg = {
            "instrument-type": "Equity",
            "symbol": symbol.strip().upper(),
            "quantity": amount_text("quantity", quantity),
            "action": action,
        }
        body: dict[str, Any] = {
            "time-in-force": time_in_force,
            "order-type": order_type,
            "legs": [leg],
        }
        if price is not None:
            body["price"] = amount_text("price", price)
            if price_effect is None:
                price_effect = "Debit" if action.strip().lower().startswith("buy") else "Credit"
        if price_effect is not None:
            body["price-effect"] = price_effect
        if stop_trigger is not None:
            body["stop-trigger"] = amount_text("stop_trigger", stop_trigger)
        path = self._orders_path(account)
        raw = await self._call("POST", path, json=body, raw=True)
        return decode_answer(raw, _PlaceAnswer, f"POST {path}", 201).data.order

    async def get_order(self, account: object, order_id: int) -> PlacedOrder:
        """One order's current state (``GET /accounts/{account}/orders/{id}``).

        Raises:
            RestError: HTTP 404 for an order the account does not have.

        Example:
            >>> o = await rest.get_order(acct, 300000001)
            >>> o.status, o.legs[0].fills
        """
        path = f"{self._orders_path(account)}/{order_id_int(order_id)}"
        raw = await self._call("GET", path, raw=True)
        return decode_answer(raw, _OrderAnswer, f"GET {path}").data

    async def cancel_order(self, account: object, order_id: int) -> PlacedOrder:
        """Cancel an open order (``DELETE /accounts/{account}/orders/{id}``); its state
        as tastytrade answers it (``Cancel Requested`` or already ``Cancelled``; the
        stream reports the final change).

        Raises:
            RestError: 404 for an unknown order; 4xx for one that is no longer open.

        Example:
            >>> (await rest.cancel_order(acct, o.id)).status
            'Cancel Requested'
        """
        oid = order_id_int(order_id)
        path = f"{self._orders_path(account)}/{oid}"
        raw = await self._call("DELETE", path, raw=True)
        if not raw.strip():  # no body: read the order back
            return await self.get_order(account, oid)
        return decode_answer(raw, _OrderAnswer, f"DELETE {path}").data

    async def live_orders(self, account: object) -> list[PlacedOrder]:
        """Today's orders (``GET /accounts/{account}/orders/live``): every order created
        or updated during the current trading day, in any status, plus older GTC orders
        still working.

        Example:
            >>> [o.id for o in await rest.live_orders(acct) if not o.is_terminal]
        """
        path = f"{self._orders_path(account)}/live"
        raw = await self._call("GET", path, raw=True)
        return list(decode_answer(raw, _OrdersAnswer, f"GET {path}").data.items)

    async def orders(
        self,
        account: object,
        *,
        start_date: date | None = None,
        end_date: date | None = None,
        start_at: datetime | None = None,
        end_at: datetime | None = None,
        underlying_symbol: str | None = None,
        underlying_instrument_type: str | None = None,
        statuses: Iterable[str] = (),
        sort: str = "Desc",
        per_page: int = _PER_PAGE,
        page_offset: int | None = None,
        max_pages: int | None = None,
    ) -> list[PlacedOrder]:
        """Search the account's orders (``GET /accounts/{account}/orders``), newest first
        by default (``sort="Asc"`` reverses).

        tastytrade pages the answer (``per-page``, ``page-offset``): with ``page_offset``
        left None every page is read (at most ``max_pages``, if given) and the orders
        joined; with a ``page_offset`` that one page only. Filters: dates
        (``start_date``/``end_date``), times (``start_at``/``end_at``; naive means UTC),
        ``underlying_symbol``, ``underlying_instrument_type`` and ``statuses``
        (``["Filled", "Live"]``).

        Example:
            >>> filled = await rest.orders(acct, statuses=["Filled"], start_date=date.today())
        """
        if isinstance(statuses, str):
            statuses = [statuses]
        if isinstance(per_page, bool) or not isinstance(per_page, int) or per_page <= 0:
            raise ConfigurationError(f"per_page must be a positive int, got {per_page!r}")
        pairs: list[tuple[str, str]] = [("per-page", str(per_page))]
        if start_date is not None:
            pairs.append(("start-date", _date("start_date", start_date)))
        if end_date is not None:
            pairs.append(("end-date", _date("end_date", end_date)))
        if start_at is not None:
            pairs.append(("start-at", _timestamp("start_at", start_at)))
        if end_at is not None:
            pairs.append(("end-at", _timestamp("end_at", end_at)))
        if underlying_symbol is not None:
            pairs.append(("underlying-symbol", underlying_symbol.strip().upper()))
        if underlying_instrument_type is not None:
            pairs.append(("underlying-instrument-type", underlying_instrument_type))
        pairs += [("status[]", s) for s in statuses]
        if sort:
            pairs.append(("sort", sort))

        base = self._orders_path(account)
        offset = 0 if page_offset is None else page_offset
        found: list[PlacedOrder] = []
        pages = 0
        while True:
            path = f"{base}?{urlencode([*pairs, ('page-offset', str(offset))])}"
            raw = await self._call("GET", path, raw=True)
            answer = decode_answer(raw, _OrdersAnswer, f"GET {base}")
            found += answer.data.items
            pages += 1
            if page_offset is not None or (max_pages is not None and pages >= max_pages):
                break
            paging = answer.pagination
            if paging is None or not answer.data.items:
                break  # one page is all there is (an unpaginated answer: the sim's)
            if paging.total_pages is not None:
                if offset + 1 >= paging.total_pages:
                    break
            elif len(answer.data.items) < (paging.per_page or per_page):
                break
            offset += 1
        return found

    # -- the account --------------------------------------------------------------------

    async def balances(self, account: object) -> AccountBalance:
        """The account's balances (``GET /accounts/{account}/balances``).

        Example:
            >>> b = await rest.balances(acct)
            >>> b.cash_balance, b.net_liquidating_value
            (Decimal('99772.50'), Decimal('100000.00'))
        """
        path = f"/accounts/{self._quoted(account)}/balances"
        raw = await self._call("GET", path, raw=True)
        return decode_answer(raw, _BalanceAnswer, f"GET {path}").data

    async def positions(self, account: object) -> list[CurrentPosition]:
        """The account's open positions (``GET /accounts/{account}/positions``).

        Example:
            >>> [(p.symbol, p.signed_quantity) for p in await rest.positions(acct)]
            [('AAPL', Decimal('10'))]
        """
        path = f"/accounts/{self._quoted(account)}/positions"
        raw = await self._call("GET", path, raw=True)
        return list(decode_answer(raw, _PositionsAnswer, f"GET {path}").data.items)

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    def _quoted(account: object) -> str:
        return quote(_account(account), safe="")

    def _orders_path(self, account: object) -> str:
        return f"/accounts/{self._quoted(account)}/orders"
