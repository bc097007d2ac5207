"""The simulated tastytrade: the account streamer and the order REST API that feeds it.

A third front-end of the same :class:`~agentstream.sim.SimExchange` (one market, one
order loop, one port), speaking tastytrade's account ("alert") streamer as
``shared/protocol/tastytrade.md`` describes it:

- the socket at ``/tastytrade`` takes JSON messages carrying ``auth-token`` (the whole
  ``"Bearer <token>"`` string), ``action``, optional ``value`` and ``request-id``;
  ``connect`` comes first, ``public-watchlists-subscribe``, ``quote-alerts-subscribe``
  and ``user-message-subscribe`` after it, ``heartbeat`` from the client; every ack and
  error carries the socket's ``web-socket-session-id``; a bad or expired token gets
  ``"failed"`` (with no ``request-id``); a socket the client leaves idle is closed;
- tokens expire ``tastytrade_token_ttl`` seconds after they are minted
  (:meth:`TastytradeVenue.mint_token` gives fresh ones);
- data messages ``{"type": ..., "data": {...kebab-case...}, "timestamp": ms}`` (or a
  ``{"results": [...]}`` batch): ``Order`` on each status change with its legs and
  fills, then ``AccountBalance`` and ``CurrentPosition``; ``QuoteAlert`` and
  ``PublicWatchlists`` on request (:meth:`TastytradeVenue.push_quote_alert`,
  :meth:`TastytradeVenue.push_watchlist`);
- ``/accounts/{account}/orders`` places, lists, looks up and cancels equity orders on
  the equity engine of :mod:`agentstream.sim.tradier` (its own accounts, same market).

Where the reference is silent the choice is the sim's and says so (docs/sim.md,
"tastytrade").

Example:
    >>> from agentstream.sim import TASTYTRADE_DEMO_ACCOUNT, SimExchange
    >>> async def main() -> None:
    ...     async with SimExchange(tastytrade_token_ttl=900) as sim:
    ...         token = sim.tastytrade.mint_token(TASTYTRADE_DEMO_ACCOUNT)  # "Bearer ..."
    ...         order = await sim.tastytrade.place_order(
    ...             TASTYTRADE_DEMO_ACCOUNT, symbol="AAPL", action="Buy to Open", quantity=10
    ...         )
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import WSCloseCode, web

from agentstream._redact import mask_secret
from agentstream.sim.accounts import Account
from agentstream.sim.server import (
    TASTYTRADE_DEMO_ACCOUNT,
    TASTYTRADE_DEMO_TOKEN,
    ConnectionRecord,
    RestOutage,
    _Conn,
)
from agentstream.sim.tradier import EquityAccount, EquityOrder, Holding

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from agentstream.sim.server import SimExchange

__all__ = [
    "ACTIONS",
    "CONNECT_NOT_COMPLETED",
    "FAILED",
    "NOT_IMPLEMENTED",
    "TASTYTRADE_DEMO_ACCOUNT",
    "TASTYTRADE_DEMO_TOKEN",
    "TastytradeError",
    "TastytradeOrder",
    "TastytradeVenue",
]

#: The streamer's error messages.
FAILED = "failed"
NOT_IMPLEMENTED = "not-implemented"
CONNECT_NOT_COMPLETED = "connect-not-completed"

#: A leg's ``action`` -> the equity engine's side.
ACTIONS = {
    "Buy to Open": "buy",
    "Sell to Close": "sell",
    "Sell to Open": "sell_short",
    "Buy to Close": "buy_to_cover",
}
#: ``order-type`` -> the engine's type.
ORDER_TYPES = {"Market": "market", "Limit": "limit", "Stop": "stop", "Stop Limit": "stop_limit"}
#: ``time-in-force`` -> the engine's duration (``Ext``: today, extended hours).
TIMES_IN_FORCE = {"Day": "day", "GTC": "gtc", "Ext": "post"}
_SUBSCRIPTIONS = ("public-watchlists-subscribe", "quote-alerts-subscribe", "user-message-subscribe")
_OPEN = frozenset({"Received", "Routed", "In Flight", "Live", "Cancel Requested"})
_CENT = Decimal("0.01")
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
#: Stands in for the AgentExchange account a sim connection carries: a tastytrade
#: socket has none (its accounts come with ``connect``).
_NO_ACCOUNT = Account("<tastytrade socket>", Decimal(0))


#: Balance fields tastytrade always sends that an equity-only cash account leaves at zero.
_ZERO_BALANCE_FIELDS = (
    "long-derivative-value",
    "short-derivative-value",
    "long-futures-value",
    "short-futures-value",
    "long-futures-derivative-value",
    "short-futures-derivative-value",
    "long-margineable-value",
    "short-margineable-value",
    "futures-margin-requirement",
    "maintenance-call-value",
    "reg-t-call-value",
    "day-trading-call-value",
    "day-equity-call-value",
    "day-trade-excess",
    "long-cryptocurrency-value",
    "short-cryptocurrency-value",
    "cryptocurrency-margin-requirement",
    "unsettled-cryptocurrency-fiat-amount",
    "closed-loop-available-balance",
    "equity-offering-margin-requirement",
    "long-bond-value",
    "bond-margin-requirement",
    "used-derivative-buying-power",
    "reg-t-margin-requirement",
    "futures-overnight-margin-requirement",
    "futures-intraday-margin-requirement",
    "maintenance-excess",
    "pending-margin-interest",
    "effective-cryptocurrency-buying-power",
)


class TastytradeError(ValueError):
    """A tastytrade REST request the sim refuses; nothing was changed.

    Attributes:
        status: the HTTP status of the answer.
        code: the ``error.code`` of the answer (``token_invalid``, ``validation_error``...).
        errors: the ``error.errors`` list (``{"domain": ..., "reason": ...}``), if any.
    """

    def __init__(
        self, code: str, message: str, status: int = 400, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.errors = errors or []

    def body(self) -> dict[str, Any]:
        """The JSON answer: ``{"error": {"code", "message"[, "errors"]}}``."""
        err: dict[str, Any] = {"code": self.code, "message": str(self)}
        if self.errors:
            err["errors"] = self.errors
        return {"error": err}


# -- formatting ------------------------------------------------------------------------


def iso_offset(ts_ms: int) -> str:
    """ISO-8601 UTC with milliseconds and ``+00:00``, as tastytrade writes its times.

    Example:
        >>> iso_offset(1_688_584_052_750)
        '2023-07-05T19:07:32.750+00:00'
    """
    sec, ms = divmod(ts_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{ms:03d}+00:00"


def _num(d: Decimal) -> str:
    """A plain decimal string (``"227.5"``, ``"10"``, ``"0"``), never an exponent."""
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _money(d: Decimal) -> str:
    """An amount in dollars and cents (``"99772.50"``)."""
    return format(d.quantize(_CENT), "f")


def _effect(d: Decimal) -> str:
    """The ``*-effect`` of a signed amount: Credit above zero, Debit below, else None."""
    return "Credit" if d > 0 else "Debit" if d < 0 else "None"


# -- orders ----------------------------------------------------------------------------


@dataclass
class TastytradeOrder:
    """One tastytrade equity order: the engine's :class:`EquityOrder` and what tastytrade
    adds to it (its status, its leg's action, its fills and its times)."""

    eq: EquityOrder
    action: str
    time_in_force: str
    order_type: str
    price_effect: str | None
    status: str = "Received"
    received_ms: int = 0
    updated_ms: int = 0
    in_flight_ms: int | None = None
    live_ms: int | None = None
    terminal_ms: int | None = None
    cancelled_ms: int | None = None
    reject_reason: str | None = None
    fills: list[dict[str, str]] = field(default_factory=list)
    #: ``DELETE`` was asked: the next engine step cancels it.
    cancel_requested: bool = False

    @property
    def id(self) -> int:
        return self.eq.id

    @property
    def open(self) -> bool:
        return self.status in _OPEN

    def data(self) -> dict[str, Any]:
        """The order as the ``Order`` message and the REST API carry it (kebab-case)."""
        eq = self.eq
        cancellable = self.open and not self.cancel_requested
        d: dict[str, Any] = {
            "id": eq.id,
            "account-number": eq.account,
            "time-in-force": self.time_in_force,
            "order-type": self.order_type,
            "size": _num(eq.quantity),
            "underlying-symbol": eq.symbol,
            "underlying-instrument-type": "Equity",
        }
        if eq.price is not None:
            d["price"] = _num(eq.price)
            d["price-effect"] = self.price_effect
        if eq.stop is not None:
            d["stop-trigger"] = _num(eq.stop)
        d.update(
            {
                "status": self.status,
                "cancellable": cancellable,
                "editable": cancellable,
                "edited": False,
                "received-at": iso_offset(self.received_ms),
                "updated-at": self.updated_ms,  # epoch ms, as the real stream sends it
            }
        )
        for key, ms in (
            ("in-flight-at", self.in_flight_ms),
            ("live-at", self.live_ms),
            ("cancelled-at", self.cancelled_ms),
            ("terminal-at", self.terminal_ms),
        ):
            if ms is not None:
                d[key] = iso_offset(ms)
        if self.reject_reason is not None:
            d["reject-reason"] = self.reject_reason
        d["legs"] = [
            {
                "instrument-type": "Equity",
                "symbol": eq.symbol,
                "quantity": _num(eq.quantity),
                "remaining-quantity": _num(eq.quantity - eq.exec_quantity),
                "action": self.action,
                "fills": list(self.fills),
            }
        ]
        return d


@dataclass
class _PositionBook:
    """What a position message needs beyond the engine's holding."""

    average_open: Decimal = Decimal(0)
    realized_today: Decimal = Decimal(0)
    created_ms: int = 0
    updated_ms: int = 0


@dataclass
class _TastyAccount:
    engine: EquityAccount
    orders: dict[int, TastytradeOrder] = field(default_factory=dict)
    books: dict[str, _PositionBook] = field(default_factory=dict)


@dataclass
class _Token:
    accounts: tuple[str, ...]
    #: ``time.monotonic()`` at which it stops working; None: never.
    expires: float | None


class _TastyConn(_Conn):
    """A streamer socket: the sim's connection, plus its session and subscriptions."""

    __slots__ = (
        "accounts",
        "last_seen",
        "quote_alerts",
        "session_id",
        "token",
        "user",
        "user_messages",
        "watchlists",
    )

    def __init__(
        self,
        sim: SimExchange,
        ws: web.WebSocketResponse,
        request: web.Request,
        record: ConnectionRecord,
    ) -> None:
        super().__init__(sim, ws, request, _NO_ACCOUNT, record)
        self.session_id = secrets.token_hex(4)
        #: The accounts of the last accepted ``connect``; None before one.
        self.accounts: tuple[str, ...] | None = None
        #: The accounts of the token of the last accepted ``connect``: whose user it is.
        self.user: frozenset[str] = frozenset()
        #: The token of the last accepted ``connect``.
        self.token: str | None = None
        self.watchlists = False
        self.quote_alerts = False
        self.user_messages = False
        self.last_seen = 0.0


# -- the front-end ---------------------------------------------------------------------


class TastytradeVenue:
    """The tastytrade front-end of a :class:`~agentstream.sim.SimExchange`
    (``sim.tastytrade``).

    Holds the tokens, the streamer sockets and the equity accounts; its orders are
    stepped by the sim's order loop on the sim's market and clock. Its faults are methods
    of the sim (``expire_tastytrade_tokens`` ...) and admin faults (``tastytrade_*``).

    Args:
        sim: the simulated exchange it is part of.
    """

    def __init__(self, sim: SimExchange) -> None:
        self.sim = sim
        cfg = sim.config
        self.tokens: dict[str, _Token] = {}
        self.accounts: dict[str, _TastyAccount] = {}
        self._revoked: dict[str, tuple[str, ...]] = {}
        for token, accounts in cfg.tastytrade_tokens.items():
            self.add_token(token, *((accounts,) if isinstance(accounts, str) else accounts))
        self._conns: set[_TastyConn] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._next_id = 300_000_000
        self._next_fill = 0
        self._connect_fail = 0
        self._batch = cfg.tastytrade_batch
        #: ``connect`` attempts received (refused or not).
        self.connect_requests = 0
        #: ``fail_rest``: the REST API (``/accounts/...``) failing on demand.
        self._rest_outage = RestOutage()
        #: The ``close-price`` of positions: each equity's price when the sim was made.
        self._close = {s: p.price_decimal() for s, p in sim.market.equities.items()}

    def add_routes(self, app: web.Application) -> None:
        """Register the streamer socket and tastytrade's account REST paths on ``app``."""
        app.router.add_get("/tastytrade", self._ws_handler)
        app.router.add_post("/accounts/{account}/orders", self._rest_place)
        app.router.add_get("/accounts/{account}/orders", self._rest_orders)
        app.router.add_get("/accounts/{account}/orders/live", self._rest_orders)
        app.router.add_get("/accounts/{account}/orders/{order_id}", self._rest_order)
        app.router.add_delete("/accounts/{account}/orders/{order_id}", self._rest_cancel)
        app.router.add_get("/accounts/{account}/balances", self._rest_balances)
        app.router.add_get("/accounts/{account}/positions", self._rest_positions)

    # -- tokens -------------------------------------------------------------------------

    def _expiry(self) -> float | None:
        ttl = self.sim.config.tastytrade_token_ttl
        return None if ttl is None else time.monotonic() + ttl

    def mint_token(self, account: str | Sequence[str] = TASTYTRADE_DEMO_ACCOUNT) -> str:
        """A new valid ``"Bearer ..."`` token for ``account`` (or several), valid for
        ``tastytrade_token_ttl`` seconds from now (for ever when that is None).

        New accounts get ``tastytrade_cash``. Give a stream's token callable this, to
        test refresh: each call is a fresh token.
        """
        accounts = (account,) if isinstance(account, str) else tuple(account)
        token = "Bearer tt_sim_" + secrets.token_urlsafe(24)
        self.add_token(token, *accounts)
        return token

    def add_token(self, token: str, *accounts: str) -> None:
        """Accept ``token`` (the whole ``"Bearer ..."`` string) for ``accounts``, with a
        fresh TTL; a revoked or expired token with no accounts gets its own back."""
        if not accounts:
            old = self.tokens.get(token)
            accounts = self._revoked.get(token, ()) or (old.accounts if old else ())
        if not accounts:
            raise ValueError(f"token {mask_secret(token)} needs at least one account number")
        for number in accounts:
            if number not in self.accounts:
                cash = Decimal(self.sim.config.tastytrade_cash)
                self.accounts[number] = _TastyAccount(EquityAccount(number, cash))
        self._revoked.pop(token, None)
        self.tokens[token] = _Token(tuple(accounts), self._expiry())

    def revoke_token(self, token: str) -> int:
        """Refuse ``token`` from now on (``"failed"``, REST 401); return how many open
        sockets last connected with it (they keep streaming until their next message)."""
        entry = self.tokens.pop(token, None)
        if entry is not None:
            self._revoked[token] = entry.accounts
        return sum(1 for c in self._conns if c.token == token)

    def expire_tokens(self) -> int:
        """Every token expires now (minting still works); return how many were valid."""
        now = time.monotonic()
        n = 0
        for entry in self.tokens.values():
            if entry.expires is None or entry.expires > now:
                n += 1
            entry.expires = now
        return n

    def _valid(self, token: object) -> _Token | None:
        if not isinstance(token, str):
            return None
        entry = self.tokens.get(token)
        if entry is None or (entry.expires is not None and entry.expires <= time.monotonic()):
            return None
        return entry

    # -- orders (in-process) ------------------------------------------------------------

    async def place_order(
        self,
        account: str,
        *,
        symbol: str,
        action: str,
        quantity: int | str = 1,
        order_type: str = "Market",
        time_in_force: str = "Day",
        price: str | None = None,
        price_effect: str | None = None,
        stop_trigger: str | None = None,
    ) -> dict[str, Any]:
        """Place a single-leg equity order in-process, as ``POST .../orders`` does;
        return the order's data (``Received``).

        Raises:
            TastytradeError: the order is refused (unknown account: 404); nothing changed.
        """
        acct = self.accounts.get(account)
        if acct is None:
            raise TastytradeError("record_not_found", f"no account {account}", 404)
        body: dict[str, Any] = {
            "time-in-force": time_in_force,
            "order-type": order_type,
            "legs": [
                {
                    "instrument-type": "Equity",
                    "symbol": symbol,
                    "quantity": quantity,
                    "action": action,
                }
            ],
        }
        for key, value in (
            ("price", price),
            ("price-effect", price_effect),
            ("stop-trigger", stop_trigger),
        ):
            if value is not None:
                body[key] = value
        return self._place(acct, body).data()

    async def cancel_order(self, account: str, order_id: int) -> dict[str, Any]:
        """Ask to cancel an open order in-process, as ``DELETE .../orders/{id}`` does."""
        acct = self.accounts.get(account)
        if acct is None:
            raise TastytradeError("record_not_found", f"no account {account}", 404)
        return self._cancel(acct, order_id).data()

    def _place(self, acct: _TastyAccount, body: object) -> TastytradeOrder:
        order = self._validate(acct.engine.number, body)
        acct.engine.orders[order.id] = order.eq
        acct.orders[order.id] = order
        self._emit(acct.engine.number, [self._message("Order", order.data())])
        return order

    def _cancel(self, acct: _TastyAccount, order_id: int) -> TastytradeOrder:
        order = acct.orders.get(order_id)
        if order is None:
            raise TastytradeError("record_not_found", f"no order {order_id}", 404)
        if not order.open or order.cancel_requested:
            # The sim's code and words: tastytrade's are not documented.
            raise TastytradeError(
                "order_not_cancellable", f"order {order_id} is {order.status}", 422
            )
        order.cancel_requested = True
        order.status = "Cancel Requested"
        order.updated_ms = self.sim.now_ms()
        self._emit(acct.engine.number, [self._message("Order", order.data())])
        return order

    def _validate(self, account: str, body: object) -> TastytradeOrder:
        """An order from a JSON body, or TastytradeError listing every problem found."""
        if not isinstance(body, dict):
            raise TastytradeError("validation_error", "the body must be a JSON object")
        errors: list[dict[str, str]] = []

        def bad(domain: str, reason: str) -> None:
            errors.append({"domain": domain, "reason": reason})

        tif = body.get("time-in-force")
        if tif not in TIMES_IN_FORCE:
            bad("time-in-force", f"must be one of {', '.join(TIMES_IN_FORCE)} in the simulator")
        otype = body.get("order-type")
        if otype not in ORDER_TYPES:
            bad("order-type", f"must be one of {', '.join(ORDER_TYPES)}")
        legs = body.get("legs")
        symbol, action, quantity = "", "", None
        if not isinstance(legs, list) or len(legs) != 1 or not isinstance(legs[0], dict):
            bad("legs", "the simulator takes exactly one equity leg")
        else:
            leg = legs[0]
            if leg.get("instrument-type") != "Equity":
                bad("legs[0].instrument-type", "the simulator trades Equity only")
            raw_symbol = leg.get("symbol")
            symbol = raw_symbol.strip().upper() if isinstance(raw_symbol, str) else ""
            if symbol not in self.sim.market.equities:
                bad("legs[0].symbol", f"unknown symbol {raw_symbol!r}")
            raw_action = leg.get("action")
            action = raw_action if isinstance(raw_action, str) else ""
            if action not in ACTIONS:
                bad("legs[0].action", f"must be one of {', '.join(ACTIONS)}")
            quantity = _decimal(leg.get("quantity"))
            if quantity is None or quantity <= 0 or quantity != quantity.to_integral_value():
                bad("legs[0].quantity", "must be a positive whole number of shares")
                quantity = None
        buys = ACTIONS.get(action) in ("buy", "buy_to_cover")
        price = stop = None
        effect = body.get("price-effect")
        if otype in ("Limit", "Stop Limit"):
            price = _price(body.get("price"), "price", bad)
            want = "Debit" if buys else "Credit"
            if action in ACTIONS and effect != want:
                bad("price-effect", f"must be {want} for {action}")
        elif "price" in body or "price-effect" in body:
            bad("price", f"not allowed for a {otype} order")
        if otype in ("Stop", "Stop Limit"):
            stop = _price(body.get("stop-trigger"), "stop-trigger", bad)
        elif "stop-trigger" in body:
            bad("stop-trigger", f"not allowed for a {otype} order")
        if errors:
            raise TastytradeError(
                "validation_error", "Request validation failed", 400, errors=errors
            )
        assert quantity is not None and isinstance(tif, str) and isinstance(otype, str)
        self._next_id += 1
        now = self.sim.now_ms()
        eq = EquityOrder(
            self._next_id,
            account,
            symbol,
            ACTIONS[action],
            quantity.quantize(Decimal(1)),
            ORDER_TYPES[otype],
            TIMES_IN_FORCE[tif],
            price,
            stop,
            None,
            now,
            now,
        )
        return TastytradeOrder(
            eq,
            action,
            tif,
            otype,
            effect if price is not None else None,
            received_ms=now,
            updated_ms=now,
        )

    # -- the engine ---------------------------------------------------------------------

    def step(self, ts_ms: int) -> None:
        """One step of the order engine (the sim's order loop calls it, after Tradier's,
        which walks the equities)."""
        market = self.sim.market
        partial = self.sim.config.partial_fill_notional
        for number, acct in self.accounts.items():
            if not acct.orders:
                continue
            messages: list[dict[str, Any]] = []
            balance = False
            touched: list[str] = []
            for order in acct.orders.values():
                if order.cancel_requested and order.open:
                    was_live = order.eq.status != "pending"
                    acct.engine.cancel(order.eq, ts_ms)
                    order.status = "Cancelled"
                    order.cancelled_ms = order.terminal_ms = order.updated_ms = ts_ms
                    messages.append(self._message("Order", order.data()))
                    balance = balance or was_live
            for eq in acct.engine.step(market, ts_ms, partial):
                order = acct.orders[eq.id]
                before = order.status
                filled = self._advance(acct, order, ts_ms, messages)
                # Reserving (Live), filling and releasing (a Live order rejected) move
                # the balances; a rejection at the first step does not.
                balance = balance or eq.status != "rejected" or before == "Live"
                if filled:
                    touched.append(eq.symbol)
            if balance:
                messages.append(self._message("AccountBalance", self._balance(acct)))
            for symbol in dict.fromkeys(touched):
                messages.append(self._message("CurrentPosition", self._position(acct, symbol)))
            if messages:
                self._emit(number, messages)
            # Settled orders are kept (GET .../orders), but at most 10,000.
            if len(acct.orders) > 10_000:
                for oid in [o.id for o in acct.orders.values() if not o.open][:1000]:
                    del acct.orders[oid]
                    acct.engine.orders.pop(oid, None)

    def _advance(
        self, acct: _TastyAccount, order: TastytradeOrder, ts_ms: int, out: list[dict[str, Any]]
    ) -> bool:
        """Add to ``out`` the Order messages of one engine change (each status it went
        through); True when it filled some shares."""
        eq = order.eq

        def status(name: str) -> None:
            order.status = name
            order.updated_ms = ts_ms
            out.append(self._message("Order", order.data()))

        if order.status == "Received":
            if eq.status == "rejected":
                order.reject_reason = eq.reason
                order.terminal_ms = ts_ms
                status("Rejected")
                return False
            status("Routed")
            order.in_flight_ms = ts_ms
            status("In Flight")
            order.live_ms = ts_ms
            status("Live")
            return False
        if eq.status == "rejected":
            order.reject_reason = eq.reason
            order.terminal_ms = ts_ms
            status("Rejected")
            return False
        filled = sum((Decimal(f["quantity"]) for f in order.fills), Decimal(0))
        if eq.exec_quantity > filled:
            qty, px = eq.exec_quantity - filled, eq.last_fill_price
            self._next_fill += 1
            fid = f"{eq.id}-{self._next_fill}"
            order.fills.append(
                {
                    "ext-group-fill-id": f"G{fid}",
                    "ext-exec-id": f"X{fid}",
                    "fill-id": f"F{fid}",
                    "quantity": _num(qty),
                    "fill-price": _num(px),
                    "filled-at": iso_offset(ts_ms),
                    "destination-venue": "AGENTSTREAM_SIM",
                }
            )
            self._book(acct, eq, qty, px, ts_ms)
        if eq.status == "filled":
            order.terminal_ms = ts_ms
            status("Filled")
        else:
            status("Live")
        return eq.exec_quantity > filled

    def _book(
        self, acct: _TastyAccount, eq: EquityOrder, qty: Decimal, px: Decimal, ts_ms: int
    ) -> None:
        """Update the position's average open price and realized gain after a fill."""
        hold = acct.engine.holdings.get(eq.symbol, Holding())
        delta = qty if eq.buys else -qty
        new = hold.quantity
        old = new - delta
        book = acct.books.get(eq.symbol)
        if book is None or old == 0:
            created = book.created_ms if book is not None and old else ts_ms
            realized = book.realized_today if book is not None else Decimal(0)
            book = acct.books[eq.symbol] = _PositionBook(Decimal(0), realized, created)
        if old == 0 or (old > 0) == (delta > 0):
            book.average_open = (abs(old) * book.average_open + qty * px) / abs(new)
        else:
            gain = (px - book.average_open) * qty
            book.realized_today += gain if old > 0 else -gain
        book.updated_ms = ts_ms

    def _balance(self, acct: _TastyAccount) -> dict[str, Any]:
        eng = acct.engine
        long_value = short_value = Decimal(0)
        for symbol, hold in eng.holdings.items():
            px = self.sim.market.equities[symbol].price_decimal()
            if hold.quantity > 0:
                long_value += hold.quantity * px
            elif hold.quantity < 0:
                short_value -= hold.quantity * px
        free = eng.available_cash
        now = self.sim.now_ms()
        return {
            "account-number": eng.number,
            "currency": "USD",
            "cash-balance": _money(eng.cash),
            "long-equity-value": _money(long_value),
            "short-equity-value": _money(short_value),
            "net-liquidating-value": _money(eng.cash + long_value - short_value),
            "equity-buying-power": _money(free),
            "derivative-buying-power": _money(free),
            "day-trading-buying-power": _money(free),
            "available-trading-funds": _money(free),
            "cash-available-to-withdraw": _money(free),
            "maintenance-requirement": "0.00",
            "pending-cash": "0.00",
            "pending-cash-effect": "None",
            # The rest of tastytrade's balance: an equity-only cash account has none of
            # these, but they are always sent (the public SDK's model requires them).
            **dict.fromkeys(_ZERO_BALANCE_FIELDS, "0.00"),
            "margin-equity": _money(eng.cash + long_value - short_value),
            "snapshot-date": iso_offset(now)[:10],
            "updated-at": iso_offset(now),
        }

    def _position(self, acct: _TastyAccount, symbol: str) -> dict[str, Any]:
        hold = acct.engine.holdings.get(symbol, Holding())
        book = acct.books.get(symbol) or _PositionBook()
        qty = hold.quantity
        px = self.sim.market.equities[symbol].price_decimal()
        close = self._close[symbol]
        direction = "Long" if qty > 0 else "Short" if qty < 0 else "Zero"
        realized = book.realized_today
        return {
            "account-number": acct.engine.number,
            "symbol": symbol,
            "instrument-type": "Equity",
            "underlying-symbol": symbol,
            "quantity": _num(abs(qty)),
            "quantity-direction": direction,
            "close-price": _num(close),
            "average-open-price": _num(book.average_open.quantize(Decimal("0.0001"))),
            "average-yearly-market-close-price": _num(close),
            "average-daily-market-close-price": _num(close),
            "mark": _money(abs(qty) * px),
            "mark-price": _num(px),
            "multiplier": "1",
            "cost-effect": "Debit" if qty > 0 else "Credit" if qty < 0 else "None",
            "is-suppressed": False,
            "is-frozen": False,
            "restricted-quantity": "0",
            "realized-day-gain": _money(abs(realized)),
            "realized-day-gain-effect": _effect(realized),
            "realized-today": _money(abs(realized)),
            "realized-today-effect": _effect(realized),
            "created-at": iso_offset(book.created_ms),
            "updated-at": iso_offset(book.updated_ms),
        }

    # -- pushes and delivery ------------------------------------------------------------

    def _message(self, type_: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"type": type_, "data": data, "timestamp": self.sim.now_ms()}

    def _deliver(self, targets: Iterable[_TastyConn], messages: list[dict[str, Any]]) -> int:
        """Send ``messages`` to ``targets`` (one ``{"results": [...]}`` frame each in batch
        mode); return how many sockets got them."""
        conns = list(targets)
        if not conns or not messages:
            return 0
        frames = [_encode({"results": messages})] if self._batch else [_encode(m) for m in messages]
        for c in conns:
            for f in frames:
                c.send(f)
        return len(conns)

    def _emit(self, account: str, messages: list[dict[str, Any]]) -> int:
        return self._deliver(
            (c for c in self._conns if c.accounts is not None and account in c.accounts),
            messages,
        )

    def push_quote_alert(
        self,
        symbol: str = "AAPL",
        *,
        token: str | None = None,
        threshold: str | None = None,
        operator: str = ">",
        alert_field: str = "Last",
        **extra: Any,
    ) -> int:
        """Send a triggered ``QuoteAlert`` to the sockets subscribed to quote alerts (only
        those of ``token``'s user when given: sockets whose accepted ``connect`` came with
        a token of the same accounts); return how many got it.

        ``extra`` adds or overrides kebab-case keys of ``data``.
        """
        user = None
        if token is not None:
            entry = self.tokens.get(token)
            user = frozenset(entry.accounts if entry else self._revoked.get(token, ()))
        now = self.sim.now_ms()
        if threshold is None:
            eq = self.sim.market.equities.get(symbol)
            threshold = _num(eq.price_decimal()) if eq is not None else "100"
        self._next_fill += 1
        data: dict[str, Any] = {
            "user-external-id": "U-" + min(user) if user else "U-SIM",
            "alert-external-id": f"A{self._next_fill}",
            "symbol": symbol,
            "dx-symbol": symbol,
            "instrument-type": "Equity",
            "field": alert_field,
            "operator": operator,
            "threshold": threshold,
            "threshold-numeric": threshold,
            "created-at": iso_offset(now),
            "triggered-at": iso_offset(now),
            "completed-at": iso_offset(now),  # a triggered alert is complete
            "expires-at": now + 86_400_000,
            **extra,
        }
        targets = [c for c in self._conns if c.quote_alerts and (user is None or c.user == user)]
        return self._deliver(targets, [self._message("QuoteAlert", data)])

    def push_watchlist(
        self,
        name: str = "Sim Movers",
        symbols: Sequence[str] = ("AAPL", "MSFT", "NVDA"),
        **extra: Any,
    ) -> int:
        """Send a ``PublicWatchlists`` message to the sockets subscribed to public
        watchlists; return how many got it. ``extra`` adds kebab-case keys."""
        data: dict[str, Any] = {
            "name": name,
            "watchlist-entries": [{"symbol": s, "instrument-type": "Equity"} for s in symbols],
            "group-name": "default",
            "order-index": 9999,
            **extra,
        }
        return self._deliver(
            (c for c in self._conns if c.watchlists),
            [self._message("PublicWatchlists", data)],
        )

    # -- faults -------------------------------------------------------------------------

    def fail_connects(self, count: int = 1) -> None:
        """The next ``count`` ``connect`` messages get ``"failed"``, good token or not."""
        if count < 0:
            raise ValueError("count must not be negative")
        self._connect_fail = int(count)

    def fail_rest(
        self, status: int = 503, *, seconds: float | None = None, count: int | None = None
    ) -> None:
        """The REST API (``/accounts/{account}/...``) answers ``status``: for ``seconds``,
        the next ``count`` requests, or until healed."""
        self._rest_outage.start(status, seconds, count)

    def heal_rest(self) -> None:
        """End :meth:`fail_rest`."""
        self._rest_outage.heal()

    def _failing(self) -> web.Response | None:
        """The answer of a request :meth:`fail_rest` refuses, else None."""
        status = self._rest_outage.hit()
        if status is None:
            return None
        message = f"refused by fault injection ({status})"
        return self._refusal(TastytradeError("service_unavailable", message, status))

    def batch(self, enabled: bool = True) -> None:
        """Send data messages as ``{"results": [...]}`` batches (one per socket and
        emission) from now on; False goes back to one message per frame."""
        self._batch = bool(enabled)

    def state(self) -> dict[str, Any]:
        """What ``GET /admin/state`` shows of the tastytrade front-end."""
        now = time.monotonic()
        return {
            "tokens_valid": sum(
                1 for t in self.tokens.values() if t.expires is None or t.expires > now
            ),
            "tokens_revoked": len(self._revoked),
            "sockets": len(self._conns),
            "connected": sum(1 for c in self._conns if c.accounts is not None),
            "connect_requests": self.connect_requests,
            "connect_fail": self._connect_fail,
            "batch": self._batch,
            "rest_fail": self._rest_outage.state(),
        }

    def admin_fault(self, fault: str, params: dict[str, Any]) -> tuple[bool, object]:
        """Run admin fault ``fault`` (``tastytrade_*``); False for an unknown one.

        Raises:
            KeyError, TypeError, ValueError: bad parameters (the admin answers 400).
        """
        sim = self.sim
        result: object = None
        if fault == "tastytrade_expire":
            result = sim.expire_tastytrade_tokens()
        elif fault == "tastytrade_revoke":
            result = sim.revoke_tastytrade_token(str(params["token"]))
        elif fault == "tastytrade_restore":
            accounts = params.get("accounts", [])
            if not isinstance(accounts, list):
                raise TypeError("accounts must be a list of account numbers")
            sim.add_tastytrade_token(str(params["token"]), *map(str, accounts))
        elif fault == "tastytrade_mint":
            accounts = params.get("accounts", [TASTYTRADE_DEMO_ACCOUNT])
            if not isinstance(accounts, list) or not accounts:
                raise TypeError("accounts must be a non-empty list of account numbers")
            result = self.mint_token([str(a) for a in accounts])
        elif fault == "tastytrade_connect_fail":
            sim.fail_tastytrade_connects(int(params.get("count", 1)))
        elif fault == "tastytrade_rest_fail":
            seconds, count = params.get("seconds"), params.get("count")
            sim.fail_tastytrade_rest(
                int(params.get("status", 503)),
                seconds=None if seconds is None else float(seconds),
                count=None if count is None else int(count),
            )
        elif fault == "tastytrade_rest_ok":
            sim.heal_tastytrade_rest()
        elif fault == "tastytrade_batch":
            enabled = params.get("enabled", True)
            if not isinstance(enabled, bool):
                raise TypeError("enabled must be true or false")
            sim.batch_tastytrade_messages(enabled)
        elif fault == "tastytrade_quote_alert":
            token = params.get("token")
            result = sim.push_tastytrade_quote_alert(
                str(params.get("symbol", "AAPL")),
                token=None if token is None else str(token),
            )
        elif fault == "tastytrade_watchlist":
            symbols = params.get("symbols", ["AAPL", "MSFT", "NVDA"])
            if not isinstance(symbols, list):
                raise TypeError("symbols must be a list")
            result = sim.push_tastytrade_watchlist(
                str(params.get("name", "Sim Movers")), [str(s) for s in symbols]
            )
        else:
            return False, None
        return True, result

    # -- REST ---------------------------------------------------------------------------

    def _account(self, request: web.Request) -> _TastyAccount:
        entry = self._valid(request.headers.get("Authorization", "").strip())
        if entry is None:
            raise TastytradeError("token_invalid", "This token is invalid or has expired", 401)
        number = request.match_info["account"]
        if number not in entry.accounts:
            # The sim's choice: the token is good but not for this account.
            raise TastytradeError("not_permitted", f"no access to account {number}", 403)
        return self.accounts[number]

    def _context(self, request: web.Request) -> str:
        return request.path

    def _answer(self, request: web.Request, data: object, status: int = 200) -> web.Response:
        body = _encode({"data": data, "context": self._context(request)})
        return web.Response(body=body, status=status, content_type="application/json")

    @staticmethod
    def _refusal(exc: TastytradeError) -> web.Response:
        return web.Response(
            body=_encode(exc.body()), status=exc.status, content_type="application/json"
        )

    async def _rest_place(self, request: web.Request) -> web.Response:
        if (failed := self._failing()) is not None:
            return failed
        try:
            acct = self._account(request)
            try:
                body = _decode(await request.read())
            except msgspec.DecodeError:
                raise TastytradeError("validation_error", "the body must be JSON") from None
            order = self._place(acct, body)
        except TastytradeError as exc:
            return self._refusal(exc)
        return self._answer(request, {"order": order.data(), "warnings": []}, status=201)

    async def _rest_orders(self, request: web.Request) -> web.Response:
        if (failed := self._failing()) is not None:
            return failed
        try:
            acct = self._account(request)
        except TastytradeError as exc:
            return self._refusal(exc)
        # The sim's trading day never ends: "live" (today's) orders are all of them.
        items = [o.data() for o in reversed(acct.orders.values())]
        return self._answer(request, {"items": items})

    def _lookup(self, request: web.Request) -> tuple[_TastyAccount, int]:
        acct = self._account(request)
        text = request.match_info["order_id"]
        if not text.isdigit() or int(text) not in acct.orders:
            raise TastytradeError("record_not_found", f"no order {text}", 404)
        return acct, int(text)

    async def _rest_order(self, request: web.Request) -> web.Response:
        if (failed := self._failing()) is not None:
            return failed
        try:
            acct, oid = self._lookup(request)
        except TastytradeError as exc:
            return self._refusal(exc)
        return self._answer(request, acct.orders[oid].data())

    async def _rest_cancel(self, request: web.Request) -> web.Response:
        if (failed := self._failing()) is not None:
            return failed
        try:
            acct, oid = self._lookup(request)
            order = self._cancel(acct, oid)
        except TastytradeError as exc:
            return self._refusal(exc)
        return self._answer(request, order.data())

    async def _rest_balances(self, request: web.Request) -> web.Response:
        if (failed := self._failing()) is not None:
            return failed
        try:
            acct = self._account(request)
        except TastytradeError as exc:
            return self._refusal(exc)
        return self._answer(request, self._balance(acct))

    async def _rest_positions(self, request: web.Request) -> web.Response:
        if (failed := self._failing()) is not None:
            return failed
        try:
            acct = self._account(request)
        except TastytradeError as exc:
            return self._refusal(exc)
        items = [
            self._position(acct, s) for s, h in acct.engine.holdings.items() if h.quantity != 0
        ]
        return self._answer(request, {"items": items})

    # -- the socket ---------------------------------------------------------------------

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        sim = self.sim
        refused = sim._refused_handshake()  # refuse_handshakes applies to this socket too
        if refused is not None:
            return refused
        ws, record = await sim._accept_socket(request)
        conn = _TastyConn(sim, ws, request, record)
        conn.last_seen = time.monotonic()
        # One of the sim's connections: drop_connections, go_silent, resume, send_raw,
        # stop and restart treat it as any other.
        sim._conns.add(conn)
        self._conns.add(conn)
        conn.tasks = [asyncio.create_task(conn.writer(), name=f"sim-writer-{record.id}")]
        if sim.config.tastytrade_idle_timeout is not None:
            conn.tasks.append(
                asyncio.create_task(self._idle_watch(conn), name=f"sim-tt-idle-{record.id}")
            )

        async def on_text(data: str | bytes) -> bool:
            conn.last_seen = time.monotonic()
            return await self._on_message(conn, data)

        try:
            await sim._read_socket(ws, conn, record, on_text)
        finally:
            record.closed_at = time.monotonic()
            sim._conns.discard(conn)
            self._conns.discard(conn)
            for t in conn.tasks:
                t.cancel()
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        return ws

    def _reply(
        self,
        conn: _TastyConn,
        action: object,
        rid: object,
        *,
        message: str | None = None,
        value: object = None,
    ) -> None:
        """An ack (``message`` None) or an error, with the socket's session id."""
        out: dict[str, Any] = {"status": "ok" if message is None else "error"}
        if isinstance(action, str):
            out["action"] = action
        out["web-socket-session-id"] = conn.session_id
        if message is not None:
            out["message"] = message
        if value is not None:
            out["value"] = value
        if rid is not None:  # ("failed" is sent without: see _fail)
            out["request-id"] = rid
        conn.send(_encode(out))

    async def _on_message(self, conn: _TastyConn, raw: str | bytes) -> bool:
        """Answer one client message; False when the socket was closed for it."""
        try:
            msg = _decode(raw)
        except msgspec.DecodeError:
            msg = None
        if not isinstance(msg, dict):
            # The sim's choice: what is not a JSON object is an action it cannot do.
            self._reply(conn, None, None, message=NOT_IMPLEMENTED)
            return True
        action = msg.get("action")
        rid = msg.get("request-id")
        if not isinstance(rid, int) or isinstance(rid, bool):
            rid = None
        known = action in ("connect", "heartbeat", *_SUBSCRIPTIONS)
        if not known:
            self._reply(conn, action, rid, message=NOT_IMPLEMENTED)
            return True
        conn.record.subscribe_requests.append(str(action))
        token = msg.get("auth-token")
        entry = self._valid(token)
        if action == "connect":
            self.connect_requests += 1
            if self._connect_fail > 0:
                self._connect_fail -= 1
                entry = None
        if entry is None:
            return await self._fail(conn, action)
        assert isinstance(token, str)
        if action == "connect":
            value = msg.get("value")
            accounts = [value] if isinstance(value, str) else value
            if (
                not isinstance(accounts, list)
                or not all(isinstance(a, str) for a in accounts)
                or not set(accounts) <= set(entry.accounts)
            ):
                # The sim's choice: an account the token does not hold fails the connect.
                return await self._fail(conn, action)
            conn.accounts = tuple(dict.fromkeys(accounts))
            conn.user = frozenset(entry.accounts)
            conn.token = token
            conn.record.api_key = mask_secret(token)
            self._reply(conn, action, rid, value=list(conn.accounts))
            return True
        if action == "heartbeat":
            self._reply(conn, action, rid)
            return True
        if conn.accounts is None:
            self._reply(conn, action, rid, message=CONNECT_NOT_COMPLETED)
            return True
        if action == "public-watchlists-subscribe":
            conn.watchlists = True
        elif action == "quote-alerts-subscribe":
            conn.quote_alerts = True
        else:
            conn.user_messages = True
        self._reply(conn, action, rid)
        return True

    async def _fail(self, conn: _TastyConn, action: object) -> bool:
        """``"failed"``; then, with ``tastytrade_close_on_failed``, a normal close."""
        self._reply(conn, action, None, message=FAILED)
        if not self.sim.config.tastytrade_close_on_failed:
            return True
        conn.record.close_reason = FAILED
        await self._flush(conn)
        await conn.ws.close(code=WSCloseCode.OK, message=b"failed")
        return False

    @staticmethod
    async def _flush(conn: _TastyConn) -> None:
        """Let the writer put what is queued on the wire (before a close frame)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                while conn.outq and not conn.ws.closed and not conn.silent:
                    await asyncio.sleep(0.002)

    async def _idle_watch(self, conn: _TastyConn) -> None:
        """Close the socket once the client sent nothing for ``tastytrade_idle_timeout``."""
        timeout = self.sim.config.tastytrade_idle_timeout
        assert timeout is not None
        while True:
            left = conn.last_seen + timeout - time.monotonic()
            if left > 0:
                await asyncio.sleep(left)
                continue
            if conn.silent:  # a black hole reads nothing and closes nothing
                await conn.resumed.wait()
                conn.last_seen = time.monotonic()
                continue
            conn.record.close_reason = "idle timeout"
            task = asyncio.create_task(self._close_idle(conn))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            return

    async def _close_idle(self, conn: _TastyConn) -> None:
        await self._flush(conn)
        await conn.ws.close(code=WSCloseCode.OK, message=b"idle timeout")


# -- helpers ---------------------------------------------------------------------------


def _decimal(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def _price(value: object, name: str, bad: Callable[[str, str], None]) -> Decimal | None:
    """A positive price in whole cents (at most four decimals below one dollar)."""
    d = _decimal(value)
    if d is None or d <= 0:
        bad(name, "must be a positive price")
        return None
    places = 2 if d >= 1 else 4
    if d != d.quantize(Decimal(1).scaleb(-places)):
        bad(name, f"at most {places} decimal places")
        return None
    return d
