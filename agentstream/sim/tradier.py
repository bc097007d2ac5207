"""The simulated Tradier: account events stream and order REST API on the sim's market.

A second front-end of the same :class:`~agentstream.sim.SimExchange` (one market, one
order loop, one port), speaking Tradier's protocol as ``shared/protocol/tradier.md``
describes it:

- ``POST /v1/accounts/events/session`` (bearer token) answers a single-use session id,
  valid ``tradier_session_ttl`` seconds, one per user at a time;
- the socket at ``/v1/accounts/events`` takes one JSON payload (``events``,
  ``sessionid``, ``excludeAccounts``), answers an unknown, used or expired id with
  ``{"error": "session not found"}`` and a close, and then sends heartbeats and order
  events whose numbers are JSON numbers;
- ``/v1/accounts/{account}/orders`` places, lists, looks up and cancels equity orders,
  with Tradier's quirks (one order as a plain object, ``"null"`` for none).

Where the reference is silent the sim does what Tradier's public API documentation
shows; where that is silent too, the choice is the sim's and says so.

Example:
    >>> from agentstream.sim import TRADIER_DEMO_ACCOUNT, TRADIER_DEMO_TOKEN, SimExchange
    >>> async def main() -> None:
    ...     async with SimExchange() as sim:
    ...         order = await sim.tradier.place_order(
    ...             TRADIER_DEMO_ACCOUNT, symbol="AAPL", side="buy", quantity="10",
    ...             type="market", duration="day",
    ...         )
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

import msgspec
from aiohttp import WSCloseCode, web

from agentstream._redact import mask_secret
from agentstream.sim.accounts import Account
from agentstream.sim.market import iso_ms
from agentstream.sim.server import (
    TRADIER_DEMO_ACCOUNT,
    TRADIER_DEMO_TOKEN,
    ConnectionRecord,
    RestOutage,
    _Conn,
)

if TYPE_CHECKING:
    from agentstream.sim.market import Market
    from agentstream.sim.server import SimExchange

__all__ = [
    "SESSION_NOT_FOUND",
    "TRADIER_DEMO_ACCOUNT",
    "TRADIER_DEMO_TOKEN",
    "EquityAccount",
    "EquityOrder",
    "Holding",
    "TradierError",
    "TradierVenue",
]

#: The stream's answer to an unknown, used or expired session id (then it closes).
SESSION_NOT_FOUND = "session not found"

SIDES = ("buy", "sell", "sell_short", "buy_to_cover")
TYPES = ("market", "limit", "stop", "stop_limit")
DURATIONS = ("day", "gtc", "pre", "post")
#: Order classes Tradier knows; the sim trades ``equity`` only.
CLASSES = ("equity", "option", "multileg", "combo", "oto", "oco", "otoco")
OPEN_STATUSES = ("pending", "open", "partially_filled")
_TAG = re.compile(r"[A-Za-z0-9-]{1,255}")
_EIGHT = Decimal("0.00000001")
_INVALID_TOKEN = "Invalid Access Token"  # Tradier's 401 body, as plain text

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
#: Stands in for the AgentExchange account a sim connection carries: a Tradier socket
#: has none (it is tied to a session, not to an API key).
_NO_ACCOUNT = Account("<tradier socket>", Decimal(0))


class TradierError(ValueError):
    """A Tradier request the sim refuses; nothing was changed.

    Attributes:
        status: the HTTP status of the answer.
        messages: the ``errors.error`` list of the answer.
    """

    def __init__(self, *messages: str, status: int = 400) -> None:
        super().__init__("; ".join(messages))
        self.messages = list(messages)
        self.status = status


# -- numbers ---------------------------------------------------------------------------


def stream_number(d: Decimal) -> msgspec.Raw:
    """A stream event's JSON number: ``10.0``, ``0.0``, ``187.45`` (exact, never a float).

    Example:
        >>> bytes(stream_number(Decimal("10.00")))
        b'10.0'
    """
    text = format(d.normalize(), "f")
    if "." not in text:
        text += ".0"
    return msgspec.Raw(text.encode())


def rest_number(d: Decimal) -> msgspec.Raw:
    """A REST answer's JSON number, with eight decimals as Tradier's REST API writes them.

    Example:
        >>> bytes(rest_number(Decimal("188")))
        b'188.00000000'
    """
    return msgspec.Raw(format(d.quantize(_EIGHT), "f").encode())


def iso_ns(ts_ns: int) -> str:
    """ISO-8601 UTC with nine fractional digits, the heartbeat's form.

    Example:
        >>> iso_ns(1_765_303_431_029_067_177)
        '2025-12-09T18:03:51.029067177Z'
    """
    sec, ns = divmod(ts_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{ns:09d}Z"


# -- the equity order engine -----------------------------------------------------------


@dataclass
class EquityOrder:
    """One Tradier equity order. Quantities are whole shares, prices USD, all ``Decimal``."""

    id: int
    account: str
    symbol: str
    side: str
    quantity: Decimal
    type: str
    duration: str
    price: Decimal | None
    stop: Decimal | None
    tag: str | None
    created_ms: int
    updated_ms: int
    status: str = "pending"
    exec_quantity: Decimal = Decimal(0)
    exec_notional: Decimal = Decimal(0)
    last_fill_quantity: Decimal = Decimal(0)
    last_fill_price: Decimal = Decimal(0)
    #: A stop or stop-limit order whose stop price was reached.
    triggered: bool = False
    reserved_cash: Decimal = Decimal(0)
    reserved_shares: Decimal = Decimal(0)
    #: Why the engine rejected it (the sim's words; not sent on the stream).
    reason: str | None = None
    #: Its ``pending`` event waits to go out after its ``open`` one (out-of-order mode).
    held_pending: bool = False

    @property
    def open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def buys(self) -> bool:
        """A buy or a buy to cover."""
        return self.side in ("buy", "buy_to_cover")

    @property
    def remaining_quantity(self) -> Decimal:
        """Shares still to fill; zero once the order is done, filled or not (as Tradier)."""
        return self.quantity - self.exec_quantity if self.open else Decimal(0)

    @property
    def avg_fill_price(self) -> Decimal:
        if not self.exec_quantity:
            return Decimal(0)
        return (self.exec_notional / self.exec_quantity).quantize(_EIGHT)

    def stream_event(
        self, *, as_pending: bool = False, zero_last_fill: bool = False
    ) -> dict[str, Any]:
        """The order as the account stream sends it, in the documentation's field order.

        No ``symbol``, ``side``, ``quantity``, ``class`` or ``duration``: the stream has
        none. ``as_pending``: its held ``pending`` event (the state it was placed in).
        """
        if as_pending:
            status, avg, exe, last = "pending", Decimal(0), Decimal(0), Decimal(0)
            remaining, updated = self.quantity, self.created_ms
        else:
            status, avg, exe = self.status, self.avg_fill_price, self.exec_quantity
            last = self.last_fill_quantity
            if zero_last_fill and status == "filled":
                last = Decimal(0)
            remaining, updated = self.remaining_quantity, self.updated_ms
        event: dict[str, Any] = {
            "id": self.id,
            "event": "order",
            "status": status,
            "type": self.type,
            "price": stream_number(self.price or Decimal(0)),
            "stop_price": stream_number(self.stop or Decimal(0)),
            "avg_fill_price": stream_number(avg),
            "exec_quantity": stream_number(exe),
            "last_fill_quantity": stream_number(last),
            "remaining_quantity": stream_number(remaining),
            "transaction_date": iso_ms(updated),
            "create_date": iso_ms(self.created_ms),
            "account": self.account,
        }
        if self.tag is not None:
            event["tag"] = self.tag
        return event

    def rest(self, *, include_tag: bool = True) -> dict[str, Any]:
        """The order as ``GET /v1/accounts/{account}/orders[/{id}]`` answers it."""
        d: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "symbol": self.symbol,
            "side": self.side,
            "quantity": rest_number(self.quantity),
            "status": self.status,
            "duration": self.duration,
        }
        if self.price is not None:
            d["price"] = rest_number(self.price)
        if self.stop is not None:
            d["stop_price"] = rest_number(self.stop)
        d.update(
            avg_fill_price=rest_number(self.avg_fill_price),
            exec_quantity=rest_number(self.exec_quantity),
            last_fill_price=rest_number(self.last_fill_price),
            last_fill_quantity=rest_number(self.last_fill_quantity),
            remaining_quantity=rest_number(self.remaining_quantity),
            create_date=iso_ms(self.created_ms),
            transaction_date=iso_ms(self.updated_ms),
        )
        d["class"] = "equity"
        if include_tag and self.tag is not None:
            d["tag"] = self.tag
        return d


@dataclass
class Holding:
    """Shares of one symbol: positive long, negative short; and what open orders hold."""

    quantity: Decimal = Decimal(0)
    #: Long shares open sell orders will deliver.
    reserved_sell: Decimal = Decimal(0)
    #: Short shares open buy-to-cover orders will cover.
    reserved_cover: Decimal = Decimal(0)


@dataclass
class EquityAccount:
    """One Tradier account: USD cash, equity holdings and orders, all exact.

    No commissions (Tradier's equity trades are commission-free on most plans). A short
    sale adds its proceeds to cash; the sim asks no margin for it.

    Example:
        >>> EquityAccount("VA000001", Decimal("100000")).available_cash
        Decimal('100000')
    """

    number: str
    cash: Decimal
    reserved_cash: Decimal = Decimal(0)
    holdings: dict[str, Holding] = field(default_factory=dict)
    orders: dict[int, EquityOrder] = field(default_factory=dict)

    @property
    def available_cash(self) -> Decimal:
        return self.cash - self.reserved_cash

    def step(self, market: Market, ts_ms: int, partial_notional: Decimal) -> list[EquityOrder]:
        """Advance every open order by one engine step; return the orders that changed.

        A ``pending`` order is checked on its first step: ``rejected`` without the cash or
        shares it needs, else ``open`` (what it needs is then reserved). An open order
        fills once its price is reached: market at the current price; limit at its
        limit (buy: price ≤ limit, sell: price ≥ limit), as the sim's crypto engine does;
        stop and stop-limit once the price reaches the stop (buy: ≥, sell: ≤), then as
        market and limit. An order worth more than ``partial_notional`` fills in two
        steps, the first ``partially_filled``.
        """
        changed: list[EquityOrder] = []
        for order in list(self.orders.values()):
            if not order.open:
                continue
            px = market.equities[order.symbol].price_decimal()
            if order.status == "pending":
                self._accept(order, px)
                order.updated_ms = ts_ms
                changed.append(order)
                continue
            fill_px = _fill_price(order, px)
            if fill_px is None:
                continue
            remaining = order.quantity - order.exec_quantity
            chunk = remaining
            if not order.exec_quantity and order.quantity * fill_px > partial_notional:
                half = (order.quantity / 2).to_integral_value(ROUND_FLOOR)
                if 0 < half < remaining:
                    chunk = half
            self._fill(order, chunk, fill_px)
            order.updated_ms = ts_ms
            changed.append(order)
        return changed

    def cancel(self, order: EquityOrder, ts_ms: int) -> None:
        """Cancel an open order, releasing what it reserved."""
        order.status = "canceled"
        order.updated_ms = ts_ms
        self._release(order)

    def expire(self, order: EquityOrder, ts_ms: int) -> None:
        """Expire an open order (its session ended), releasing what it reserved."""
        order.status = "expired"
        order.updated_ms = ts_ms
        self._release(order)

    def _accept(self, order: EquityOrder, px: Decimal) -> None:
        ref = order.price if order.type in ("limit", "stop_limit") else order.stop
        need = order.quantity * (ref if ref is not None else px)
        hold = self.holdings.setdefault(order.symbol, Holding())
        reason: str | None = None
        if order.side == "buy":
            if hold.quantity < 0:
                reason = "the account is short: buy to cover"
        elif order.side == "buy_to_cover":
            if order.quantity > -hold.quantity - hold.reserved_cover:
                reason = "buy to cover exceeds the short position"
        elif order.side == "sell":
            if order.quantity > hold.quantity - hold.reserved_sell:
                reason = "sell exceeds the long position"
        elif hold.quantity > 0:  # sell_short
            reason = "the account is long: sell, not sell short"
        if reason is None and order.buys and need > self.available_cash:
            reason = f"insufficient buying power: needs {need} USD, {self.available_cash} free"
        if reason is not None:
            order.status = "rejected"
            order.reason = reason
            return
        order.status = "open"
        if order.buys:
            order.reserved_cash = need
            self.reserved_cash += need
        if order.side == "sell":
            order.reserved_shares = order.quantity
            hold.reserved_sell += order.quantity
        elif order.side == "buy_to_cover":
            order.reserved_shares = order.quantity
            hold.reserved_cover += order.quantity

    def _fill(self, order: EquityOrder, qty: Decimal, px: Decimal) -> None:
        notional = qty * px
        hold = self.holdings.setdefault(order.symbol, Holding())
        if order.buys:
            # The price may have moved past what was reserved: take the rest from free
            # cash, and reject the order if there is not enough.
            if notional > order.reserved_cash + self.available_cash:
                order.status = "rejected"
                order.reason = "insufficient buying power at execution"
                self._release(order)
                return
            self.cash -= notional
            take = min(notional, order.reserved_cash)
            order.reserved_cash -= take
            self.reserved_cash -= take
            hold.quantity += qty
        else:
            self.cash += notional
            hold.quantity -= qty
        if order.side == "sell":
            hold.reserved_sell -= qty
            order.reserved_shares -= qty
        elif order.side == "buy_to_cover":
            hold.reserved_cover -= qty
            order.reserved_shares -= qty
        order.exec_quantity += qty
        order.exec_notional += notional
        order.last_fill_quantity = qty
        order.last_fill_price = px
        if order.exec_quantity >= order.quantity:
            order.status = "filled"
            self._release(order)
        else:
            order.status = "partially_filled"

    def _release(self, order: EquityOrder) -> None:
        self.reserved_cash -= order.reserved_cash
        order.reserved_cash = Decimal(0)
        hold = self.holdings.get(order.symbol)
        if hold is not None:
            if order.side == "sell":
                hold.reserved_sell -= order.reserved_shares
            elif order.side == "buy_to_cover":
                hold.reserved_cover -= order.reserved_shares
        order.reserved_shares = Decimal(0)


def _fill_price(order: EquityOrder, px: Decimal) -> Decimal | None:
    """The price ``order`` fills at now, or None while its price is not reached."""
    if order.type in ("stop", "stop_limit") and not order.triggered:
        assert order.stop is not None
        if not (px >= order.stop if order.buys else px <= order.stop):
            return None
        order.triggered = True
    if order.type in ("market", "stop"):
        return px
    assert order.price is not None
    crossed = px <= order.price if order.buys else px >= order.price
    return order.price if crossed else None


# -- sessions and sockets --------------------------------------------------------------


@dataclass
class _Session:
    id: str
    token: str
    #: The accounts the token had when the session was created: what its stream covers.
    accounts: tuple[str, ...]
    expires: float  # event-loop time
    used: bool = False
    conn: _TradierConn | None = None


class _TradierConn(_Conn):
    """A socket of the account stream: the sim's connection, plus its subscription."""

    __slots__ = ("events", "exclude", "session")

    def __init__(
        self,
        sim: SimExchange,
        ws: web.WebSocketResponse,
        request: web.Request,
        record: ConnectionRecord,
    ) -> None:
        super().__init__(sim, ws, request, _NO_ACCOUNT, record)
        self.session: _Session | None = None
        self.events: frozenset[str] = frozenset()
        self.exclude: frozenset[str] = frozenset()


# -- the front-end ---------------------------------------------------------------------


class TradierVenue:
    """The Tradier front-end of a :class:`~agentstream.sim.SimExchange` (``sim.tradier``).

    Holds the tokens, sessions, stream sockets and equity accounts; its orders are
    stepped by the sim's order loop on the sim's market and clock. Its faults are
    methods of the sim (``fail_tradier_sessions`` ...) and admin faults (``tradier_*``).

    Args:
        sim: the simulated exchange it is part of.
    """

    def __init__(self, sim: SimExchange) -> None:
        self.sim = sim
        cfg = sim.config
        #: Valid bearer tokens and the account numbers each may trade and stream.
        self.tokens: dict[str, tuple[str, ...]] = {}
        #: Equity accounts by account number.
        self.accounts: dict[str, EquityAccount] = {}
        self._revoked: dict[str, tuple[str, ...]] = {}
        for token, accounts in cfg.tradier_tokens.items():
            self.add_token(token, *((accounts,) if isinstance(accounts, str) else accounts))
        self._sessions: dict[str, _Session] = {}
        self._user_session: dict[str, _Session] = {}
        self._conns: set[_TradierConn] = set()
        self._closing: set[asyncio.Task[bool]] = set()
        self._next_id = 1_000_000
        #: Session requests received (``POST /v1/accounts/events/session``), refused or not.
        self.session_requests = 0
        self._session_fail: tuple[int, int] | None = None  # status, requests left
        self._lookup_delay = 0.0
        self._lookup_fail: tuple[int, int | None] | None = None  # status, requests left
        #: ``fail_rest``: the account API (profile, orders) failing on demand.
        self._rest_outage = RestOutage()

    def add_routes(self, app: web.Application) -> None:
        """Register Tradier's REST paths and the stream socket on ``app``."""
        app.router.add_post("/v1/accounts/events/session", self._rest_session)
        app.router.add_get("/v1/accounts/events", self._ws_handler)
        app.router.add_post("/v1/accounts/{account}/orders", self._rest_place)
        app.router.add_get("/v1/accounts/{account}/orders", self._rest_orders)
        app.router.add_get("/v1/accounts/{account}/orders/{order_id}", self._rest_order)
        app.router.add_delete("/v1/accounts/{account}/orders/{order_id}", self._rest_cancel)
        app.router.add_get("/v1/user/profile", self._rest_profile)

    # -- tokens, orders (in-process) ----------------------------------------------------

    def add_token(self, token: str, *accounts: str) -> None:
        """Accept ``token`` for ``accounts`` (a revoked token with none: its own again)."""
        if not accounts:
            accounts = self._revoked.get(token, ()) or self.tokens.get(token, ())
        if not accounts:
            raise ValueError(f"token {mask_secret(token)} needs at least one account number")
        for number in accounts:
            self.accounts.setdefault(
                number, EquityAccount(number, Decimal(self.sim.config.tradier_cash))
            )
        self._revoked.pop(token, None)
        self.tokens[token] = tuple(accounts)

    def revoke_token(self, token: str) -> int:
        """Refuse ``token`` from now on; return how many of its unused sessions ended."""
        accounts = self.tokens.pop(token, None)
        if accounts is not None:
            self._revoked[token] = accounts
        gone = [s for s in self._sessions.values() if s.token == token and not s.used]
        for s in gone:
            self._drop_session(s)
        return len(gone)

    async def place_order(self, account: str, **fields: str) -> EquityOrder:
        """Place an order for ``account`` in-process, with the REST API's form fields.

        ``class`` defaults to ``equity`` (a keyword cannot be named ``class``).

        Raises:
            TradierError: the order is refused (unknown account: 401); nothing changed.
        """
        acct = self.accounts.get(account)
        if acct is None:
            raise TradierError(f"Unauthorized Account: {account}", status=401)
        return self._place(acct, {"class": "equity", **fields})

    async def cancel_order(self, account: str, order_id: int) -> EquityOrder:
        """Cancel an open order in-process, as ``DELETE .../orders/{id}`` does."""
        acct = self.accounts.get(account)
        if acct is None:
            raise TradierError(f"Unauthorized Account: {account}", status=401)
        return self._cancel(acct, order_id)

    def _place(self, acct: EquityAccount, form: dict[str, str]) -> EquityOrder:
        order = self._validate(acct.number, form)
        acct.orders[order.id] = order
        if self.sim.config.tradier_out_of_order:
            order.held_pending = True  # goes out after its "open" event
        else:
            self._emit(order, [order.stream_event()])
        return order

    def _cancel(self, acct: EquityAccount, order_id: int) -> EquityOrder:
        order = acct.orders.get(order_id)
        if order is None:
            raise TradierError(f"Order not found: {order_id}", status=404)
        if not order.open:
            # The sim's words: Tradier's own are not documented.
            raise TradierError(f"Order {order_id} is {order.status} and cannot be canceled")
        acct.cancel(order, self.sim.now_ms())
        self._push([order])
        return order

    def _validate(self, account: str, form: dict[str, str]) -> EquityOrder:
        """An order from the form fields, or TradierError with every problem found.

        The messages are the sim's (``Invalid Parameter: side ...``); Tradier documents
        the ``{"errors": {"error": [...]}}`` shape, not its wording.
        """
        errors: list[str] = []
        klass = form.get("class", "")
        if klass not in CLASSES:
            errors.append(f"Invalid Parameter: class. Must be one of {', '.join(CLASSES)}")
        elif klass != "equity":
            errors.append(f"The simulator trades class equity only, not {klass}")
        symbol = form.get("symbol", "").strip().upper()
        if symbol not in self.sim.market.equities:
            errors.append(f"Invalid Parameter: symbol {symbol or '(missing)'}")
        side = form.get("side", "")
        if side not in SIDES:
            errors.append(f"Invalid Parameter: side. Must be one of {', '.join(SIDES)}")
        quantity = _decimal(form.get("quantity"))
        if quantity is None or quantity <= 0 or quantity != quantity.to_integral_value():
            errors.append("Invalid Parameter: quantity. Must be a positive whole number")
        type_ = form.get("type", "")
        if type_ not in TYPES:
            errors.append(f"Invalid Parameter: type. Must be one of {', '.join(TYPES)}")
        duration = form.get("duration", "")
        if duration not in DURATIONS:
            errors.append(f"Invalid Parameter: duration. Must be one of {', '.join(DURATIONS)}")
        price = stop = None
        if type_ in ("limit", "stop_limit"):
            price = _price(form.get("price"), "price", errors)
        if type_ in ("stop", "stop_limit"):
            stop = _price(form.get("stop"), "stop", errors)
        tag = form.get("tag")
        if tag is not None and not _TAG.fullmatch(tag):
            errors.append("Invalid Parameter: tag. At most 255 letters, digits and '-' characters")
        if errors:
            raise TradierError(*errors)
        assert quantity is not None
        self._next_id += 1
        now = self.sim.now_ms()
        return EquityOrder(
            self._next_id,
            account,
            symbol,
            side,
            quantity.quantize(Decimal(1)),
            type_,
            duration,
            price,
            stop,
            tag,
            now,
            now,
        )

    # -- the engine ---------------------------------------------------------------------

    def step(self, ts_ms: int) -> None:
        """One step of the order engine (the sim's order loop calls it)."""
        market = self.sim.market
        market.walk_equities()
        partial = self.sim.config.partial_fill_notional
        for acct in self.accounts.values():
            if not acct.orders:
                continue
            changed = acct.step(market, ts_ms, partial)
            if changed:
                self._push(changed)
            # Settled orders are kept (GET .../orders), but at most 10,000.
            if len(acct.orders) > 10_000:
                for oid in [o.id for o in acct.orders.values() if not o.open][:1000]:
                    del acct.orders[oid]

    def end_of_day(self) -> int:
        """The trading day ends: open ``day``, ``pre`` and ``post`` orders expire."""
        ts = self.sim.now_ms()
        done: list[EquityOrder] = []
        for acct in self.accounts.values():
            for order in acct.orders.values():
                if order.open and order.duration != "gtc":
                    acct.expire(order, ts)
                    done.append(order)
        self._push(done)
        return len(done)

    def _push(self, orders: list[EquityOrder]) -> None:
        """Send each changed order's event (and a held ``pending`` one, out of order)."""
        zero = self.sim.config.tradier_zero_last_fill
        for order in orders:
            event = order.stream_event(zero_last_fill=zero)
            if order.held_pending:
                order.held_pending = False
                pending = order.stream_event(as_pending=True)
                # As the documentation's sample: "open" first, then "pending".
                events = [event, pending] if order.status == "open" else [pending, event]
            else:
                events = [event]
            self._emit(order, events)

    def _emit(self, order: EquityOrder, events: list[dict[str, Any]]) -> None:
        targets = [
            c
            for c in self._conns
            if c.session is not None
            and "order" in c.events
            and order.account not in c.exclude
            and order.account in c.session.accounts
        ]
        if not targets:
            return
        frames = [_encode(e) for e in events]
        for c in targets:
            for f in frames:
                c.send(f)

    # -- faults -------------------------------------------------------------------------

    def fail_sessions(self, status: int = 503, count: int = 1) -> None:
        """Answer the next ``count`` session requests with HTTP ``status``."""
        _check_status(status)
        self._session_fail = (status, int(count)) if count > 0 else None

    def expire_sessions(self) -> int:
        """Every session id not yet used by a socket expires now; return how many."""
        unused = [s for s in self._sessions.values() if not s.used]
        for s in unused:
            self._drop_session(s)
        return len(unused)

    def slow_lookups(self, seconds: float) -> None:
        """``GET .../orders/{id}`` answers ``seconds`` late (0 ends it)."""
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        self._lookup_delay = float(seconds)

    def fail_lookups(self, status: int = 503, count: int | None = None) -> None:
        """``GET .../orders/{id}`` answers ``status``, ``count`` times or until healed."""
        _check_status(status)
        self._lookup_fail = (status, count) if count is None or count > 0 else None

    def heal_lookups(self) -> None:
        """End :meth:`slow_lookups` and :meth:`fail_lookups`."""
        self._lookup_delay = 0.0
        self._lookup_fail = None

    def fail_rest(
        self, status: int = 503, *, seconds: float | None = None, count: int | None = None
    ) -> None:
        """The account API (``/v1/user/profile``, ``/v1/accounts/{account}/orders...``)
        answers ``status``: for ``seconds``, the next ``count`` requests, or until healed."""
        self._rest_outage.start(status, seconds, count)

    def heal_rest(self) -> None:
        """End :meth:`fail_rest`."""
        self._rest_outage.heal()

    def _failing(self) -> web.Response | None:
        """The answer of a request :meth:`fail_rest` refuses, else None."""
        status = self._rest_outage.hit()
        if status is None:
            return None
        return web.Response(status=status, text=f"refused by fault injection ({status})")

    def state(self) -> dict[str, Any]:
        """What ``GET /admin/state`` shows of the Tradier front-end."""
        loop_now = asyncio.get_running_loop().time()
        return {
            "sessions_unused": sum(
                1 for s in self._sessions.values() if not s.used and s.expires > loop_now
            ),
            "streams": len(self._conns),
            "session_requests": self.session_requests,
            "session_fail": list(self._session_fail) if self._session_fail else None,
            "lookup_delay": self._lookup_delay,
            "lookup_fail": list(self._lookup_fail) if self._lookup_fail else None,
            "rest_fail": self._rest_outage.state(),
        }

    def admin_fault(self, fault: str, params: dict[str, Any]) -> tuple[bool, object]:
        """Run admin fault ``fault`` (``tradier_*``); False for an unknown one.

        Raises:
            KeyError, TypeError, ValueError: bad parameters (the admin answers 400).
        """
        result: object = None
        if fault == "tradier_session_fail":
            self.sim.fail_tradier_sessions(
                int(params.get("status", 503)), int(params.get("count", 1))
            )
        elif fault == "tradier_expire":
            result = self.sim.expire_tradier_sessions()
        elif fault == "tradier_lookup_slow":
            self.sim.slow_tradier_lookups(float(params.get("seconds", 1.0)))
        elif fault == "tradier_lookup_fail":
            count = params.get("count")
            self.sim.fail_tradier_lookups(
                int(params.get("status", 503)), None if count is None else int(count)
            )
        elif fault == "tradier_lookup_ok":
            self.sim.heal_tradier_lookups()
        elif fault == "tradier_rest_fail":
            seconds, count = params.get("seconds"), params.get("count")
            self.sim.fail_tradier_rest(
                int(params.get("status", 503)),
                seconds=None if seconds is None else float(seconds),
                count=None if count is None else int(count),
            )
        elif fault == "tradier_rest_ok":
            self.sim.heal_tradier_rest()
        elif fault == "tradier_end_of_day":
            result = self.sim.tradier_end_of_day()
        elif fault == "tradier_revoke":
            result = self.sim.revoke_tradier_token(str(params["token"]))
        elif fault == "tradier_restore":
            accounts = params.get("accounts", [])
            if not isinstance(accounts, list):
                raise TypeError("accounts must be a list of account numbers")
            self.sim.add_tradier_token(str(params["token"]), *map(str, accounts))
        else:
            return False, None
        return True, result

    # -- REST ---------------------------------------------------------------------------

    def _token(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        return token if token in self.tokens else None

    def _account(self, request: web.Request) -> EquityAccount:
        token = self._token(request)
        if token is None:
            raise TradierError(_INVALID_TOKEN, status=401)
        number = request.match_info["account"]
        if number not in self.tokens[token]:
            # The sim's choice: the token is good but not for this account.
            raise TradierError(f"Unauthorized Account: {number}", status=401)
        return self.accounts[number]

    async def _rest_session(self, request: web.Request) -> web.Response:
        self.session_requests += 1
        if self._session_fail is not None:
            status, left = self._session_fail
            self._session_fail = (status, left - 1) if left > 1 else None
            return web.Response(status=status, text=f"refused by fault injection ({status})")
        token = self._token(request)
        if token is None:
            return _refusal(request, TradierError(_INVALID_TOKEN, status=401))
        loop_now = asyncio.get_running_loop().time()
        for s in [s for s in self._sessions.values() if not s.used and s.expires <= loop_now]:
            self._drop_session(s)
        old = self._user_session.get(token)
        if old is not None:
            if not old.used:
                self._drop_session(old)
            elif old.conn is not None and self.sim.config.tradier_new_session_ends_stream:
                self._end_stream(old.conn, "session replaced")
        session = _Session(
            str(uuid.uuid4()),
            token,
            self.tokens[token],
            loop_now + self.sim.config.tradier_session_ttl,
        )
        self._sessions[session.id] = session
        self._user_session[token] = session
        return _answer(
            request, {"stream": {"url": self._stream_url(request), "sessionid": session.id}}
        )

    async def _rest_profile(self, request: web.Request) -> web.Response:
        """``GET /v1/user/profile``: the user and their accounts (clients read the account
        numbers here). One account is a plain object, several a list, as Tradier's."""
        if (failed := self._failing()) is not None:
            return failed
        token = self._token(request)
        if token is None:
            return _refusal(request, TradierError(_INVALID_TOKEN, status=401))
        accounts = [
            {
                "account_number": number,
                "classification": "individual",
                "date_created": "2024-01-02T00:00:00.000Z",
                "day_trader": False,
                "option_level": 2,
                "status": "active",
                "type": "margin",
                "last_update_date": "2024-01-02T00:00:00.000Z",
            }
            for number in self.tokens[token]
        ]
        profile = {
            "account": accounts[0] if len(accounts) == 1 else accounts,
            "id": f"id-{self.tokens[token][0].lower()}" if accounts else "id-none",
            "name": "Agentstream Demo",
        }
        return _answer(request, {"profile": profile})

    def _stream_url(self, request: web.Request) -> str:
        """The socket URL: this server's own scheme, host and port."""
        host = self.sim.config.host
        if host in ("", "0.0.0.0", "::"):  # listening everywhere: the host the client used
            scheme = "wss" if self.sim.config.ssl_context is not None else "ws"
            return f"{scheme}://{request.host}/v1/accounts/events"
        return f"{self.sim.url}/v1/accounts/events"

    async def _rest_place(self, request: web.Request) -> web.Response:
        if (failed := self._failing()) is not None:
            return failed
        try:
            acct = self._account(request)
            form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
            order = self._place(acct, form)
        except TradierError as exc:
            return _refusal(request, exc)
        return _answer(
            request,
            {"order": {"id": order.id, "status": "ok", "partner_id": str(uuid.uuid4())}},
        )

    async def _rest_orders(self, request: web.Request) -> web.Response:
        if (failed := self._failing()) is not None:
            return failed
        try:
            acct = self._account(request)
        except TradierError as exc:
            return _refusal(request, exc)
        # Tradier lists tags only when asked (``includeTags=true``).
        tags = request.query.get("includeTags", "").lower() == "true"
        orders = [o.rest(include_tag=tags) for o in acct.orders.values()]
        # Tradier's quirks: the string "null" for none, a plain object for one.
        body: object = (
            "null" if not orders else {"order": orders[0] if len(orders) == 1 else orders}
        )
        return _answer(request, {"orders": body})

    async def _rest_order(self, request: web.Request) -> web.Response:
        if (failed := self._failing()) is not None:
            return failed
        if self._lookup_delay:
            await asyncio.sleep(self._lookup_delay)
        if self._lookup_fail is not None:
            status, left = self._lookup_fail
            if left is not None:
                self._lookup_fail = (status, left - 1) if left > 1 else None
            return web.Response(status=status, text=f"refused by fault injection ({status})")
        try:
            acct = self._account(request)
            order = acct.orders.get(_order_id(request))
            if order is None:
                raise TradierError(f"Order not found: {request.match_info['order_id']}", status=404)
        except TradierError as exc:
            return _refusal(request, exc)
        # The one order's look-up carries its tag (what a stream client enriches from).
        return _answer(request, {"order": order.rest(include_tag=True)})

    async def _rest_cancel(self, request: web.Request) -> web.Response:
        if (failed := self._failing()) is not None:
            return failed
        try:
            acct = self._account(request)
            order = self._cancel(acct, _order_id(request))
        except TradierError as exc:
            return _refusal(request, exc)
        return _answer(request, {"order": {"id": order.id, "status": "ok"}})

    # -- the socket ---------------------------------------------------------------------

    def _drop_session(self, session: _Session) -> None:
        self._sessions.pop(session.id, None)
        if self._user_session.get(session.token) is session:
            del self._user_session[session.token]

    def _end_stream(self, conn: _TradierConn, reason: str) -> None:
        conn.record.close_reason = reason
        task = asyncio.create_task(conn.ws.close(code=WSCloseCode.OK, message=reason.encode()))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        sim = self.sim
        refused = sim._refused_handshake()  # refuse_handshakes applies to this socket too
        if refused is not None:
            return refused
        ws, record = await sim._accept_socket(request)
        conn = _TradierConn(sim, ws, request, record)
        # One of the sim's connections: drop_connections, go_silent, resume, send_raw,
        # stop and restart treat it as any other.
        sim._conns.add(conn)
        self._conns.add(conn)
        conn.tasks = [asyncio.create_task(conn.writer(), name=f"sim-writer-{record.id}")]
        try:
            await sim._read_socket(ws, conn, record, lambda data: self._on_payload(conn, data))
        finally:
            record.closed_at = time.monotonic()
            sim._conns.discard(conn)
            self._conns.discard(conn)
            if conn.session is not None:
                conn.session.conn = None
                self._drop_session(conn.session)  # used: it never comes back
            for t in conn.tasks:
                t.cancel()
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        return ws

    async def _on_payload(self, conn: _TradierConn, raw: str | bytes) -> bool:
        """Apply one client payload; False when the socket was closed for it."""
        try:
            msg = _decode(raw)
        except msgspec.DecodeError:
            msg = None
        events = msg.get("events", []) if isinstance(msg, dict) else None
        exclude = msg.get("excludeAccounts", []) if isinstance(msg, dict) else None
        if (
            not isinstance(msg, dict)
            or not isinstance(events, list)
            or not isinstance(exclude, list)
            or not all(isinstance(x, str) for x in [*events, *exclude])
        ):
            # The sim's words and choice (the socket stays open): Tradier documents only
            # that errors arrive as {"error": "..."}.
            conn.send(_encode({"error": "invalid payload"}))
            return True
        sid = msg.get("sessionid")
        if conn.session is None or sid != conn.session.id:
            session = self._sessions.get(sid) if isinstance(sid, str) else None
            loop_now = asyncio.get_running_loop().time()
            if (
                session is None
                or session.used
                or session.expires <= loop_now
                or session.token not in self.tokens
            ):
                await self._refuse_session(conn)
                return False
            session.used = True
            session.conn = conn
            if conn.session is not None:
                conn.session.conn = None
                self._drop_session(conn.session)
            conn.session = session
            conn.record.api_key = mask_secret(session.token)
            if len(conn.tasks) == 1:  # the writer only: start the heartbeat
                conn.tasks.append(
                    asyncio.create_task(
                        self._heartbeat(conn), name=f"sim-tradier-heartbeat-{conn.record.id}"
                    )
                )
        # A new payload on the same session replaces the subscription.
        conn.events = frozenset(events)
        conn.exclude = frozenset(exclude)
        conn.record.subscribe_requests.append(",".join(events))
        return True

    async def _refuse_session(self, conn: _TradierConn) -> None:
        """``{"error": "session not found"}``, then a normal close (not an auth failure)."""
        conn.record.close_reason = SESSION_NOT_FOUND
        conn.send(_encode({"error": SESSION_NOT_FOUND}))
        # Let the writer put the error on the wire before the close frame.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                while conn.outq and not conn.ws.closed:
                    await asyncio.sleep(0.002)
        await conn.ws.close(code=WSCloseCode.OK)

    async def _heartbeat(self, conn: _TradierConn) -> None:
        interval = self.sim.config.tradier_heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            if conn.silent:
                continue
            conn.send(
                _encode(
                    {
                        "event": "heartbeat",
                        "status": "active",
                        "timestamp": iso_ns(self.sim.now_ns()),
                    }
                )
            )


# -- helpers ---------------------------------------------------------------------------


def _check_status(status: int) -> None:
    if not 400 <= status <= 599:
        raise ValueError(f"status must be an HTTP error status (400-599), got {status}")


def _decimal(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        d = Decimal(value.strip())
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def _price(value: str | None, name: str, errors: list[str]) -> Decimal | None:
    """A positive price in whole cents (at most four decimals below one dollar)."""
    d = _decimal(value)
    if d is None or d <= 0:
        errors.append(f"Invalid Parameter: {name}. Must be a positive price")
        return None
    places = 2 if d >= 1 else 4
    if d != d.quantize(Decimal(1).scaleb(-places)):
        errors.append(f"Invalid Parameter: {name}. At most {places} decimal places")
        return None
    return d


def _order_id(request: web.Request) -> int:
    text = request.match_info["order_id"]
    if not text.isdigit():
        raise TradierError(f"Invalid Parameter: order id {text}")
    return int(text)


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _answer(request: web.Request, body: dict[str, Any], status: int = 200) -> web.Response:
    """JSON with ``Accept: application/json``, else XML, as Tradier answers."""
    if _wants_json(request):
        return web.Response(body=_encode(body), status=status, content_type="application/json")
    (root, value), *_ = body.items()
    xml = '<?xml version="1.0" encoding="UTF-8"?>' + _xml(root, value)
    return web.Response(text=xml, status=status, content_type="application/xml")


def _refusal(request: web.Request, exc: TradierError) -> web.Response:
    if exc.status == 401:  # Tradier answers a bad token in plain text
        return web.Response(status=401, text=str(exc))
    return _answer(request, {"errors": {"error": exc.messages}}, status=exc.status)


def _xml(tag: str, value: object) -> str:
    """A minimal XML rendering: objects as elements, lists as repeated elements."""
    if isinstance(value, dict):
        return f"<{tag}>" + "".join(_xml(k, v) for k, v in value.items()) + f"</{tag}>"
    if isinstance(value, list):
        return "".join(_xml(tag, v) for v in value)
    if isinstance(value, msgspec.Raw):
        text = bytes(value).decode()
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = "" if value is None else str(value)
    return f"<{tag}>{escape(text)}</{tag}>"
