"""Paper accounts and the order engine of the simulated exchange.

Pure: the server passes prices and the simulated time in, and pushes the events this
module returns. Money is ``Decimal`` throughout, so balances are exact.

It follows the platform's server (TradeReady ``src/order_engine``, ``src/risk``,
``src/api/schemas/trading.py``): a market order fills in full when it is placed, at the
current price plus slippage; limit, stop-loss and take-profit orders lock their funds
and stay ``pending`` until the price reaches them, then fill in full the same way.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal, cast

from agentstream.sim.market import Market, iso_ms

FEE_RATE = Decimal("0.001")
#: The platform's slippage for the order sizes a paper account makes: its minimum
#: (``SlippageCalculator._MIN_SLIPPAGE_FRACTION``, 0.01 %), against the side.
SLIPPAGE_FRACTION = Decimal("0.0001")
#: Risk manager defaults the sim enforces (``src/risk/manager.py``).
MIN_ORDER_SIZE_USD = Decimal("1.0")
MAX_OPEN_ORDERS = 50
_CENT = Decimal("0.01")
_Q8 = Decimal("0.00000001")  # NUMERIC(20, 8): prices, quantities, fees, balances
_Q6 = Decimal("0.000001")  # NUMERIC(10, 6): slippage_pct

Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit", "stop_loss", "take_profit"]
ORDER_TYPES: tuple[str, ...] = ("market", "limit", "stop_loss", "take_profit")
#: Statuses an order can be cancelled from (the platform's ``_CANCELLABLE_STATUSES``).
OPEN_STATUSES = ("pending", "partially_filled")


class OrderError(ValueError):
    """A request the exchange refuses (HTTP 4xx); nothing was changed.

    Attributes:
        code: machine-readable reason, e.g. ``INVALID_QUANTITY``.
        status: HTTP status the REST API answers with.
        details: the platform's ``error.details`` object (omitted when empty).
    """

    def __init__(
        self, code: str, message: str, status: int = 400, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.details: dict[str, Any] = details or {}

    def body(self) -> dict[str, Any]:
        """The platform's error envelope: ``{"error": {"code", "message"[, "details"]}}``."""
        payload: dict[str, Any] = {"code": self.code, "message": str(self)}
        if self.details:
            payload["details"] = self.details
        return {"error": payload}


class RequestValidationError(OrderError):
    """A request FastAPI refuses before the platform's code runs: HTTP 422 ``{"detail": [...]}``.

    Each item is pydantic's error: ``type``, ``loc``, ``msg``, ``input`` and, for some
    types, ``ctx``.
    """

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__("VALIDATION_ERROR", detail[0]["msg"] if detail else "", status=422)
        self.detail = detail

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail}


def rejected(reason: str) -> OrderError:
    """The risk manager's refusal: ``ORDER_REJECTED``, the reason as the message."""
    return OrderError("ORDER_REJECTED", reason, details={"reason": reason})


def order_not_found(order_id: str) -> OrderError:
    return OrderError(
        "ORDER_NOT_FOUND",
        f"Order '{order_id}' not found.",
        status=404,
        details={"order_id": order_id},
    )


@dataclass
class Order:
    order_id: str
    symbol: str
    side: Side
    type: OrderType
    quantity: Decimal
    price: Decimal | None
    price_dp: int = 8
    status: str = "pending"
    created_ms: int = 0
    seq: int = 0  # placement order within the account (ties of created_ms)
    executed_quantity: Decimal = Decimal(0)
    executed_price: Decimal | None = None
    slippage_pct: Decimal | None = None
    fee: Decimal = Decimal(0)
    reserved: Decimal = Decimal(0)  # cash (buy) or base quantity (sell) held for this order
    filled_ms: int | None = None
    filled_at: str | None = None
    cancelled_at: str | None = None
    rejected_reason: str | None = None

    @property
    def open(self) -> bool:
        return self.status in OPEN_STATUSES

    def event(self) -> dict[str, Any]:
        """The order as the ``orders`` channel sends it; optional fields only when they apply."""
        d: dict[str, Any] = {
            "order_id": self.order_id,
            "status": self.status,
            "symbol": self.symbol,
            "side": self.side,
            "type": self.type,
            "quantity": _plain(self.quantity),
        }
        if self.price is not None:
            d["price"] = _plain(self.price)
        if self.executed_quantity and self.executed_price is not None:
            d["executed_price"] = _plain(self.executed_price)
            d["executed_quantity"] = _plain(self.executed_quantity)
            d["fee"] = _plain(self.fee)
        if self.filled_at is not None:
            d["filled_at"] = self.filled_at
        if self.cancelled_at is not None:
            d["cancelled_at"] = self.cancelled_at
        if self.rejected_reason is not None:
            d["rejected_reason"] = self.rejected_reason
        return d

    def detail(self) -> dict[str, Any]:
        """``OrderDetailResponse`` (GET /trade/order/{id}, the lists): every field, nulls too.

        The values are as the platform's database columns hold them: amounts with 8
        decimals, ``slippage_pct`` with 6; ``executed_qty`` is the platform's name.
        """
        px = self.executed_price if self.executed_quantity > 0 else None
        filled = px is not None
        return {
            "order_id": self.order_id,
            "status": self.status,
            "symbol": self.symbol,
            "side": self.side,
            "type": self.type,
            "quantity": _col8(self.quantity),
            "price": None if self.price is None else _col8(self.price),
            "executed_price": None if px is None else _col8(px),
            "executed_qty": _col8(self.executed_quantity) if filled else None,
            "slippage_pct": (
                str(self.slippage_pct.quantize(_Q6))
                if filled and self.slippage_pct is not None
                else None
            ),
            "fee": _col8(self.fee) if filled else None,
            "created_at": iso_us(self.created_ms),
            "filled_at": iso_us(self.filled_ms) if self.filled_ms is not None else None,
        }


@dataclass
class Position:
    quantity: Decimal = Decimal(0)
    #: Average entry price including the buy fees (the platform's ``avg_entry_price``).
    avg_price: Decimal = Decimal(0)
    total_cost: Decimal = Decimal(0)
    reserved: Decimal = Decimal(0)
    realized_pnl: Decimal = Decimal(0)
    opened_ms: int = 0


@dataclass(frozen=True)
class OrderRequest:
    """A validated order body (the platform's ``OrderRequest`` schema)."""

    symbol: str
    side: Side
    type: OrderType
    quantity: Decimal
    price: Decimal | None


@dataclass
class Account:
    """One API key's paper account.

    Example:
        >>> acct = Account("ak_demo", Decimal("10000"))
        >>> acct.snapshot({}, "2026-01-01T00:00:00.000Z")["total_equity"]
        '10000.00'
    """

    api_key: str
    starting_cash: Decimal
    cash: Decimal = field(init=False)
    reserved_cash: Decimal = Decimal(0)
    realized_pnl: Decimal = Decimal(0)
    positions: dict[str, Position] = field(default_factory=dict)
    orders: dict[str, Order] = field(default_factory=dict)
    _seq: int = 0

    def __post_init__(self) -> None:
        self.cash = self.starting_cash

    # -- placing and cancelling -------------------------------------------------------

    def place(
        self,
        market: Market,
        ts_ms: int = 0,
        /,
        **body: Any,
    ) -> Order:
        """Validate, risk-check and place an order, as ``POST /api/v1/trade/order`` does.

        A market order fills in full at once (status ``filled``); the others lock their
        funds and are ``pending``. ``body`` is the JSON body: ``symbol``, ``side``,
        ``type``, ``quantity``, ``price`` (or ``stop_price``); other keys are ignored.

        Raises:
            RequestValidationError: the body breaks the schema (HTTP 422).
            OrderError: the risk manager (``ORDER_REJECTED``), the validator
                (``INVALID_QUANTITY``) or the engine (``INSUFFICIENT_BALANCE``) refused it.
                The account is unchanged.
        """
        return self.place_request(market, parse_order_body(body), ts_ms)

    def place_request(self, market: Market, req: OrderRequest, ts_ms: int) -> Order:
        """Place an already validated order (see :meth:`place`)."""
        pair = market.pairs.get(req.symbol)
        # The risk manager runs first: a symbol without a price is its refusal.
        if pair is None:
            raise rejected("price_unavailable")
        ref = pair.price_decimal()
        estimated = (req.quantity * ref).quantize(_Q8)
        if estimated < MIN_ORDER_SIZE_USD:
            raise rejected("order_too_small")
        if sum(1 for o in self.orders.values() if o.open) >= MAX_OPEN_ORDERS:
            raise rejected("max_open_orders_exceeded")
        pos = self.positions.get(req.symbol)
        free_base = pos.quantity - pos.reserved if pos else Decimal(0)
        if req.side == "buy":
            if (estimated * (1 + FEE_RATE)).quantize(_Q8) > self.available_cash:
                raise rejected("insufficient_balance")
        elif req.quantity > free_base:
            raise rejected("insufficient_balance")
        # The order validator: the pair's minimum quantity.
        min_qty = Decimal(1).scaleb(-pair.qty_dp)
        if req.quantity < min_qty:
            raise OrderError(
                "INVALID_QUANTITY",
                f"Quantity {req.quantity} is below the minimum {min_qty} for {req.symbol}.",
                details={
                    "quantity": str(req.quantity),
                    "min_qty": str(min_qty),
                },
            )
        self._seq += 1
        order = Order(
            str(uuid.uuid4()),
            req.symbol,
            req.side,
            req.type,
            req.quantity,
            req.price,
            pair.price_dp,
            created_ms=ts_ms,
            seq=self._seq,
        )
        if req.type == "market":
            exec_px = _slipped(ref, req.side)
            fee = (req.quantity * ref * FEE_RATE).quantize(_Q8, ROUND_HALF_UP)
            if req.side == "buy":
                required = req.quantity * exec_px + fee
                if required > self.available_cash:
                    raise _insufficient("USDT", required, self.available_cash)
            elif req.quantity > free_base:
                raise _insufficient(req.symbol.removesuffix("USDT"), req.quantity, free_base)
            self.orders[order.order_id] = order
            self._fill(order, exec_px, ts_ms)
            return order
        assert req.price is not None
        if req.side == "buy":
            lock = req.quantity * req.price * (1 + FEE_RATE)
            if lock > self.available_cash:
                raise _insufficient("USDT", lock, self.available_cash)
            order.reserved = lock
            self.reserved_cash += lock
        else:
            if req.quantity > free_base:
                raise _insufficient(req.symbol.removesuffix("USDT"), req.quantity, free_base)
            assert pos is not None
            order.reserved = req.quantity
            pos.reserved += req.quantity
        self.orders[order.order_id] = order
        return order

    def get(self, order_id: str) -> Order:
        """The order ``order_id`` of this account.

        Raises:
            OrderError: 404 ``ORDER_NOT_FOUND``.
        """
        order = self.orders.get(order_id)
        if order is None:
            raise order_not_found(order_id)
        return order

    def cancel(self, order_id: str, ts_ms: int) -> Order:
        """Cancel an open order.

        Raises:
            OrderError: unknown order (404 ``ORDER_NOT_FOUND``) or one that is no longer
                open (400 ``ORDER_NOT_CANCELLABLE``, as the platform answers).
        """
        order = self.get(order_id)
        if not order.open:
            raise OrderError(
                "ORDER_NOT_CANCELLABLE",
                f"Order '{order_id}' cannot be cancelled (status: {order.status}).",
                details={"order_id": order_id, "current_status": order.status},
            )
        order.status = "cancelled"
        order.cancelled_at = iso_ms(ts_ms)
        self._release(order)
        return order

    def newest_first(self) -> list[Order]:
        """The account's orders, newest first (the platform's ``ORDER BY created_at DESC``)."""
        return sorted(self.orders.values(), key=lambda o: (o.created_ms, o.seq), reverse=True)

    # -- the engine -------------------------------------------------------------------

    def step(self, market: Market, ts_ms: int) -> list[Order]:
        """Fill every pending order whose price was reached; return the orders that changed.

        As the platform's matcher: a limit buy fills when the price is at or below its
        limit, a limit sell at or above; a stop-loss when the price is at or below its
        trigger, a take-profit at or above. The whole quantity fills at the current price
        plus slippage, from the locked funds.
        """
        changed: list[Order] = []
        for order in list(self.orders.values()):
            if order.status != "pending" or order.price is None:
                continue
            px = market.pairs[order.symbol].price_decimal()
            if order.type == "limit":
                met = px <= order.price if order.side == "buy" else px >= order.price
            elif order.type == "stop_loss":
                met = px <= order.price
            else:  # take_profit
                met = px >= order.price
            if not met:
                continue
            exec_px = _slipped(px, order.side)
            if order.side == "buy":
                fee = (order.quantity * exec_px * FEE_RATE).quantize(_Q8, ROUND_HALF_UP)
                cost = order.quantity * exec_px + fee
                spare = self.cash - self.reserved_cash
                if cost > order.reserved + spare:
                    order.status = "rejected"
                    order.rejected_reason = "insufficient_balance"
                    self._release(order)
                    changed.append(order)
                    continue
            self._fill(order, exec_px, ts_ms)
            changed.append(order)
        return changed

    def _fill(self, order: Order, exec_px: Decimal, ts_ms: int) -> None:
        qty = order.quantity
        notional = qty * exec_px
        fee = (notional * FEE_RATE).quantize(_Q8, ROUND_HALF_UP)
        pos = self.positions.setdefault(order.symbol, Position())
        if not pos.quantity:
            pos.opened_ms = ts_ms
        if order.side == "buy":
            cost = notional + fee
            self.cash -= cost
            take = min(cost, order.reserved)
            order.reserved -= take
            self.reserved_cash -= take
            # The platform counts the buy fee in the cost basis (avg_entry_price).
            pos.total_cost += cost
            pos.quantity += qty
            pos.avg_price = pos.total_cost / pos.quantity
        else:
            self.cash += notional - fee
            pnl = (exec_px - pos.avg_price) * qty - fee
            pos.realized_pnl += pnl
            self.realized_pnl += pnl
            pos.quantity -= qty
            if order.reserved:
                pos.reserved -= qty
                order.reserved -= qty
            pos.total_cost = pos.avg_price * pos.quantity
            if pos.quantity == 0:
                pos.avg_price = pos.total_cost = Decimal(0)
        order.executed_quantity = qty
        order.executed_price = exec_px
        order.slippage_pct = (SLIPPAGE_FRACTION * 100).quantize(_Q6)
        order.fee = fee
        order.filled_ms = ts_ms
        order.filled_at = iso_ms(ts_ms)
        order.status = "filled"
        self._release(order)

    def _release(self, order: Order) -> None:
        if order.side == "buy":
            self.reserved_cash -= order.reserved
        else:
            pos = self.positions.get(order.symbol)
            if pos is not None:
                pos.reserved -= order.reserved
        order.reserved = Decimal(0)

    # -- views ------------------------------------------------------------------------

    @property
    def available_cash(self) -> Decimal:
        return self.cash - self.reserved_cash

    def snapshot(self, prices: dict[str, Decimal], timestamp: str) -> dict[str, str]:
        """The ``portfolio`` channel's snapshot, valued at ``prices``."""
        value = Decimal(0)
        unrealized = Decimal(0)
        for sym, pos in self.positions.items():
            if not pos.quantity:
                continue
            px = prices.get(sym, pos.avg_price)
            value += pos.quantity * px
            unrealized += pos.quantity * px - pos.total_cost
        equity = self.cash + value
        roi = (equity - self.starting_cash) / self.starting_cash * 100
        return {
            "total_equity": str(equity.quantize(_CENT)),
            "available_cash": str(self.available_cash.quantize(_CENT)),
            "unrealized_pnl": str(unrealized.quantize(_CENT)),
            "realized_pnl": str(self.realized_pnl.quantize(_CENT)),
            "roi_pct": str(roi.quantize(_CENT)),
            "timestamp": timestamp,
        }

    def position_items(self, prices: dict[str, Decimal]) -> list[dict[str, Any]]:
        """``PositionItem`` of each open position (GET /account/portfolio, /positions)."""
        out: list[dict[str, Any]] = []
        for sym, pos in self.positions.items():
            if pos.quantity <= 0:
                continue
            px = prices.get(sym, pos.avg_price)
            cost_basis = pos.total_cost
            value = pos.quantity * px
            unrealized = value - cost_basis
            out.append(
                {
                    "symbol": sym,
                    "asset": sym.removesuffix("USDT"),
                    "quantity": _col8(pos.quantity),
                    "avg_entry_price": _col8(pos.avg_price),
                    "current_price": str(px),
                    "market_value": str(value),
                    "unrealized_pnl": str(unrealized),
                    "unrealized_pnl_pct": str(unrealized / cost_basis * 100 if cost_basis else 0),
                    "opened_at": iso_us(pos.opened_ms),
                }
            )
        return out

    def portfolio(self, prices: dict[str, Decimal], ts_ms: int) -> dict[str, Any]:
        """``PortfolioResponse`` (GET /api/v1/account/portfolio)."""
        items = self.position_items(prices)
        available, locked = _col8(self.available_cash), _col8(self.reserved_cash)
        position_value = sum((Decimal(p["market_value"]) for p in items), Decimal(0))
        unrealized = sum((Decimal(p["unrealized_pnl"]) for p in items), Decimal(0))
        realized = self.realized_pnl.quantize(_Q8)
        total_pnl = unrealized + realized
        start = self.starting_cash.quantize(_Q8)
        return {
            "total_equity": str(Decimal(available) + Decimal(locked) + position_value),
            "available_cash": available,
            "locked_cash": locked,
            "total_position_value": str(position_value),
            "unrealized_pnl": str(unrealized),
            "realized_pnl": str(realized),
            "total_pnl": str(total_pnl),
            "roi_pct": str(total_pnl / start * 100 if start else Decimal(0)),
            "starting_balance": str(start),
            "positions": items,
            "timestamp": iso_us(ts_ms),
        }

    def balances(self, prices: dict[str, Decimal]) -> dict[str, Any]:
        """``BalancesResponse`` (GET /api/v1/account/balance)."""
        rows = [_balance("USDT", self.available_cash, self.reserved_cash)]
        rows += [
            _balance(sym.removesuffix("USDT"), pos.quantity - pos.reserved, pos.reserved)
            for sym, pos in self.positions.items()
            if pos.quantity > 0
        ]
        value = sum(
            (pos.quantity * prices.get(sym, pos.avg_price) for sym, pos in self.positions.items()),
            Decimal(0),
        )
        equity = self.available_cash.quantize(_Q8) + self.reserved_cash.quantize(_Q8) + value
        return {"balances": rows, "total_equity_usdt": str(equity)}


# -- the request schema (pydantic's checks, FastAPI's 422) -----------------------------

_SIDES = ("buy", "sell")


def _literal_msg(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _decimal_field(
    body: dict[str, Any], key: str, loc: str, errors: list[dict[str, Any]]
) -> Decimal | None:
    """pydantic's ``Decimal = Field(gt=0)``: the value, or None after adding an error."""
    value = body[key]
    where = ["body", loc]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        errors.append(
            {
                "type": "decimal_type",
                "loc": where,
                "msg": "Decimal input should be an integer, float, string or Decimal object",
                "input": value,
            }
        )
        return None
    if isinstance(value, float) and not math.isfinite(value):
        d = Decimal("NaN")
    else:
        try:
            d = Decimal(str(value).strip())
        except ArithmeticError:
            errors.append(
                {
                    "type": "decimal_parsing",
                    "loc": where,
                    "msg": "Input should be a valid decimal",
                    "input": value,
                }
            )
            return None
    if not d.is_finite():
        errors.append(
            {
                "type": "finite_number",
                "loc": where,
                "msg": "Input should be a finite number",
                "input": value,
            }
        )
        return None
    if d <= 0:
        errors.append(
            {
                "type": "greater_than",
                "loc": where,
                "msg": "Input should be greater than 0",
                "input": value,
                "ctx": {"gt": 0},
            }
        )
        return None
    return d


def parse_order_body(body: Any) -> OrderRequest:
    """Check an order body as the platform's ``OrderRequest`` schema does.

    Unknown keys are ignored; ``stop_price`` is accepted for ``price``. ``symbol`` is
    upper-cased (the route does it).

    Raises:
        RequestValidationError: pydantic's errors, every field's at once.
    """
    if not isinstance(body, dict):
        raise RequestValidationError(
            [
                {
                    "type": "model_attributes_type",
                    "loc": ["body"],
                    "msg": "Input should be a valid dictionary or object to extract fields from",
                    "input": body,
                }
            ]
        )
    errors: list[dict[str, Any]] = []

    def missing(name: str) -> None:
        errors.append(
            {"type": "missing", "loc": ["body", name], "msg": "Field required", "input": body}
        )

    symbol: str | None = None
    if "symbol" not in body:
        missing("symbol")
    elif not isinstance(body["symbol"], str):
        errors.append(
            {
                "type": "string_type",
                "loc": ["body", "symbol"],
                "msg": "Input should be a valid string",
                "input": body["symbol"],
            }
        )
    else:
        symbol = body["symbol"].strip()
        if not symbol:
            errors.append(
                {
                    "type": "string_too_short",
                    "loc": ["body", "symbol"],
                    "msg": "String should have at least 1 character",
                    "input": symbol,
                    "ctx": {"min_length": 1},
                }
            )
        elif len(symbol) > 20:
            errors.append(
                {
                    "type": "string_too_long",
                    "loc": ["body", "symbol"],
                    "msg": "String should have at most 20 characters",
                    "input": symbol,
                    "ctx": {"max_length": 20},
                }
            )
    for name, values in (("side", _SIDES), ("type", ORDER_TYPES)):
        if name not in body:
            missing(name)
        elif body[name] not in values or not isinstance(body[name], str):
            expected = _literal_msg(values)
            errors.append(
                {
                    "type": "literal_error",
                    "loc": ["body", name],
                    "msg": f"Input should be {expected}",
                    "input": body[name],
                    "ctx": {"expected": expected},
                }
            )
    quantity: Decimal | None = None
    if "quantity" not in body:
        missing("quantity")
    else:
        quantity = _decimal_field(body, "quantity", "quantity", errors)
    price: Decimal | None = None
    price_key = next((k for k in ("price", "stop_price") if k in body), None)
    if price_key is not None and body[price_key] is not None:
        price = _decimal_field(body, price_key, price_key, errors)
    if errors:
        raise RequestValidationError(errors)
    assert symbol is not None and quantity is not None
    otype = cast("OrderType", body["type"])
    problem = None
    if otype != "market" and price is None:
        problem = f"'price' is required for '{otype}' orders."
    elif otype == "market" and price is not None:
        problem = "'price' must not be set for 'market' orders."
    if problem:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ["body"],
                    "msg": f"Value error, {problem}",
                    "input": body,
                    "ctx": {"error": {}},
                }
            ]
        )
    return OrderRequest(symbol.upper(), cast("Side", body["side"]), otype, quantity, price)


# -- helpers -------------------------------------------------------------------------


def _slipped(px: Decimal, side: str) -> Decimal:
    """The execution price: ``px`` moved against the side by the slippage, 8 decimals."""
    direction = 1 if side == "buy" else -1
    return (px * (1 + direction * SLIPPAGE_FRACTION)).quantize(_Q8, ROUND_HALF_UP)


def _insufficient(asset: str, required: Decimal, available: Decimal) -> OrderError:
    return OrderError(
        "INSUFFICIENT_BALANCE",
        f"Not enough {asset}. Required: {required}, Available: {available}",
        details={"asset": asset, "required": str(required), "available": str(available)},
    )


def _balance(asset: str, available: Decimal, locked: Decimal) -> dict[str, str]:
    a, lk = available.quantize(_Q8), locked.quantize(_Q8)
    return {"asset": asset, "available": str(a), "locked": str(lk), "total": str(a + lk)}


def _col8(d: Decimal) -> str:
    """A value as the platform serialises a ``NUMERIC(20, 8)`` column: ``str()`` of 8 decimals.

    Example:
        >>> _col8(Decimal("0.01")), _col8(Decimal(0)), _col8(Decimal("1E-7"))
        ('0.01000000', '0E-8', '1.0E-7')
    """
    return str(d.quantize(_Q8, ROUND_HALF_UP))


def iso_us(ts_ms: int) -> str:
    """A UTC time as pydantic serialises a ``datetime``: microseconds (if any) and ``Z``.

    Example:
        >>> iso_us(1771860645456), iso_us(1771860645000)
        ('2026-02-23T15:30:45.456000Z', '2026-02-23T15:30:45Z')
    """
    base = iso_ms(ts_ms)[:19]
    ms = ts_ms % 1000
    return f"{base}.{ms * 1000:06d}Z" if ms else f"{base}Z"


def _plain(d: Decimal) -> str:
    """A plain decimal string: never exponent notation (``str`` gives "1E+1", "8E-8")."""
    return format(d, "f")
