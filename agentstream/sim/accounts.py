"""Paper accounts and the order engine of the simulated exchange.

Pure: the server passes prices and the simulated time in, and pushes the events this
module returns. Money is ``Decimal`` throughout, so balances are exact.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, cast

from agentstream.sim.market import Market, Pair, iso_ms

FEE_RATE = Decimal("0.001")
_CENT = Decimal("0.01")

Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit"]


class OrderError(ValueError):
    """An order the exchange refuses at placement (HTTP 4xx); nothing was changed.

    Attributes:
        code: machine-readable reason, e.g. ``INVALID_QUANTITY``.
        status: HTTP status the REST API answers with.
    """

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


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
    executed_quantity: Decimal = Decimal(0)
    executed_notional: Decimal = Decimal(0)
    fee: Decimal = Decimal(0)
    reserved: Decimal = Decimal(0)  # cash (buy) or base quantity (sell) held for this order
    filled_at: str | None = None
    cancelled_at: str | None = None
    rejected_reason: str | None = None
    steps: int = 0  # engine steps this order has seen (market orders fill on the first)

    @property
    def open(self) -> bool:
        return self.status in ("pending", "open", "partially_filled")

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
        if self.executed_quantity:
            d["executed_price"] = _plain(self.avg_price())
            d["executed_quantity"] = _plain(self.executed_quantity)
            d["fee"] = _plain(self.fee.quantize(Decimal("0.00000001")).normalize())
        if self.filled_at is not None:
            d["filled_at"] = self.filled_at
        if self.cancelled_at is not None:
            d["cancelled_at"] = self.cancelled_at
        if self.rejected_reason is not None:
            d["rejected_reason"] = self.rejected_reason
        return d

    def avg_price(self) -> Decimal:
        if not self.executed_quantity:
            return Decimal(0)
        q = Decimal(1).scaleb(-self.price_dp)
        return (self.executed_notional / self.executed_quantity).quantize(q)


@dataclass
class Position:
    quantity: Decimal = Decimal(0)
    avg_price: Decimal = Decimal(0)
    reserved: Decimal = Decimal(0)


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

    def __post_init__(self) -> None:
        self.cash = self.starting_cash

    # -- placing and cancelling -------------------------------------------------------

    def place(
        self,
        market: Market,
        *,
        symbol: str,
        side: str,
        type: str,
        quantity: str,
        price: str | None = None,
    ) -> Order:
        """Validate and accept an order (status ``pending``), reserving cash or coins.

        Raises:
            OrderError: unknown symbol, bad side/type, zero or negative quantity, bad limit
                price, not enough cash or coins. The account is unchanged.
        """
        sym = str(symbol).upper()
        pair = market.pairs.get(sym)
        if pair is None:
            raise OrderError("INVALID_SYMBOL", f"unknown symbol {symbol!r}")
        if side not in ("buy", "sell"):
            raise OrderError("INVALID_SIDE", f"side must be 'buy' or 'sell', not {side!r}")
        if type not in ("market", "limit"):
            raise OrderError("INVALID_TYPE", f"type must be 'market' or 'limit', not {type!r}")
        qty = _decimal(quantity, "quantity")
        if qty <= 0:
            raise OrderError("INVALID_QUANTITY", f"quantity must be positive, got {quantity}")
        step = Decimal(1).scaleb(-pair.qty_dp)
        if qty != qty.quantize(step):
            raise OrderError(
                "INVALID_QUANTITY", f"{sym} quantities have at most {pair.qty_dp} decimal places"
            )
        limit: Decimal | None = None
        if type == "limit":
            if price is None:
                raise OrderError("INVALID_PRICE", "a limit order needs a price")
            limit = _decimal(price, "price")
            if limit <= 0:
                raise OrderError("INVALID_PRICE", f"price must be positive, got {price}")
            limit = limit.quantize(Decimal(1).scaleb(-pair.price_dp))
        ref = limit if limit is not None else pair.price_decimal()
        order = Order(
            str(uuid.uuid4()),
            sym,
            cast("Side", side),
            cast("OrderType", type),
            qty,
            limit,
            pair.price_dp,
        )
        if side == "buy":
            need = qty * ref * (1 + FEE_RATE)
            if need > self.available_cash:
                raise OrderError(
                    "INSUFFICIENT_BALANCE",
                    f"not enough cash: the order needs {need:.2f} USDT, "
                    f"{self.available_cash:.2f} available",
                )
            order.reserved = need
            self.reserved_cash += need
        else:
            pos = self.positions.get(sym)
            free = pos.quantity - pos.reserved if pos else Decimal(0)
            if qty > free:
                raise OrderError(
                    "INSUFFICIENT_BALANCE",
                    f"not enough {sym[:-4]}: selling {qty}, {free} available",
                )
            assert pos is not None
            order.reserved = qty
            pos.reserved += qty
        self.orders[order.order_id] = order
        return order

    def cancel(self, order_id: str, ts_ms: int) -> Order:
        """Cancel an open order.

        Raises:
            OrderError: unknown order (404) or one that is no longer open (409).
        """
        order = self.orders.get(order_id)
        if order is None:
            raise OrderError("ORDER_NOT_FOUND", f"no order {order_id!r}", status=404)
        if not order.open:
            raise OrderError(
                "ORDER_NOT_OPEN", f"order {order_id} is {order.status}, not open", status=409
            )
        order.status = "cancelled"
        order.cancelled_at = iso_ms(ts_ms)
        self._release(order)
        return order

    # -- the engine -------------------------------------------------------------------

    def step(self, market: Market, ts_ms: int, partial_notional: Decimal) -> list[Order]:
        """Advance every open order by one engine step; return the orders that changed.

        Market orders fill on their first step; limit orders open on their first step and
        fill once the price crosses the limit. An order whose notional exceeds
        ``partial_notional`` fills in two steps (``partially_filled``, then ``filled``).
        """
        changed: list[Order] = []
        for order in list(self.orders.values()):
            if not order.open:
                continue
            order.steps += 1
            pair = market.pairs[order.symbol]
            px = pair.price_decimal()
            if order.type == "limit" and order.status == "pending":
                order.status = "open"
                changed.append(order)
                continue
            if order.type == "limit":
                assert order.price is not None
                crossed = px <= order.price if order.side == "buy" else px >= order.price
                if not crossed:
                    continue
                px = order.price
            remaining = order.quantity - order.executed_quantity
            chunk = remaining
            if (
                order.executed_quantity == 0
                and order.quantity * px > partial_notional
                and pair.qty_dp >= 0
            ):
                half = (order.quantity / 2).quantize(Decimal(1).scaleb(-pair.qty_dp))
                if 0 < half < remaining:
                    chunk = half
            if self._fill(order, pair, chunk, px, ts_ms):
                changed.append(order)
        return changed

    def _fill(self, order: Order, pair: Pair, qty: Decimal, px: Decimal, ts_ms: int) -> bool:
        notional = qty * px
        fee = notional * FEE_RATE
        pos = self.positions.setdefault(order.symbol, Position())
        if order.side == "buy":
            cost = notional + fee
            # The market may have moved since placement: a market buy can cost more than
            # was reserved. Use the reservation first, then free cash; else reject.
            spare = self.cash - self.reserved_cash
            if cost > order.reserved + spare:
                order.status = "rejected"
                order.rejected_reason = "insufficient_balance: the price moved past available cash"
                self._release(order)
                return True
            self.cash -= cost
            # The fee is a realized cost (avg_price excludes it), so that equity stays
            # starting cash + realized + unrealized.
            self.realized_pnl -= fee
            take = min(cost, order.reserved)
            order.reserved -= take
            self.reserved_cash -= take
            new_qty = pos.quantity + qty
            pos.avg_price = (pos.avg_price * pos.quantity + notional) / new_qty
            pos.quantity = new_qty
        else:
            self.cash += notional - fee
            self.realized_pnl += (px - pos.avg_price) * qty - fee
            pos.quantity -= qty
            pos.reserved -= qty
            order.reserved -= qty
            if pos.quantity == 0:
                pos.avg_price = Decimal(0)
        order.executed_quantity += qty
        order.executed_notional += notional
        order.fee += fee
        order.filled_at = iso_ms(ts_ms)
        if order.executed_quantity >= order.quantity:
            order.status = "filled"
            self._release(order)
        else:
            order.status = "partially_filled"
        return True

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
            unrealized += pos.quantity * (px - pos.avg_price)
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


def _plain(d: Decimal) -> str:
    """A plain decimal string: never exponent notation (``str`` gives "1E+1", "8E-8")."""
    return format(d, "f")


def _decimal(value: object, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise OrderError(f"INVALID_{name.upper()}", f"{name} must be a decimal string")
    try:
        d = Decimal(str(value))
    except ArithmeticError:
        raise OrderError(f"INVALID_{name.upper()}", f"{name} {value!r} is not a number") from None
    if not d.is_finite():
        raise OrderError(f"INVALID_{name.upper()}", f"{name} must be finite")
    return d
