"""tastytrade's account-streamer events: frozen msgspec Structs mirroring the tastytrade SDK.

Each model is the ``data`` of one streamer message type (``Order`` -> :class:`PlacedOrder`,
``ComplexOrder`` -> :class:`PlacedComplexOrder`, ``AccountBalance``, ``CurrentPosition``,
``QuoteAlert``, ``PublicWatchlists`` -> :class:`Watchlist`, ``ExternalTransaction``,
``TradingStatus``, ``UnderlyingYearGainSummary``), with the field names of the open-source
tastytrade SDK (tastyware/tastytrade): snake_case attributes for the kebab-case keys on
the wire (``account-number`` -> ``account_number``). Unknown keys are ignored, so a field
tastytrade adds tomorrow never breaks decoding.

Amounts are ``Decimal``, exact whether the wire sends the string ``"12.50"`` or the JSON
number ``12.50``. Times are aware ``datetime``s, from ISO-8601 strings or epoch
milliseconds (``updated-at`` is often an integer); a naive time is taken as UTC.

Amounts are as the wire sends them: a magnitude, with a separate ``*-effect`` field
(``"Debit"``, ``"Credit"`` or ``"None"``) where tastytrade sends one. SDK 9 and later fold
the effect into the sign of ``price``; :attr:`PlacedOrder.signed_price` gives that value.

Validation: a non-finite amount anywhere is refused; so is a negative quantity, or a
negative amount that comes with its own ``*-effect`` (an order's ``price`` or ``value``).
Market prices (fill prices, stop triggers, marks) and balances need only be finite:
futures have traded below zero, and cash or gains can be negative. A refused frame raises
``msgspec.ValidationError``.

Example:
    >>> async for order in stream.listen(PlacedOrder):
    ...     if order.status == OrderStatus.FILLED:
    ...         for leg in order.legs:
    ...             print(leg.symbol, leg.action, [(f.quantity, f.fill_price) for f in leg.fills])

    Decoding a message's ``data`` by hand:

    >>> order = msgspec.json.decode(raw_data, type=PlacedOrder)
    >>> order.updated_at, order.signed_price
    (datetime.datetime(2023, 7, 5, 19, 7, 32, 750000, tzinfo=datetime.timezone.utc), None)
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any, get_args

import msgspec

from agentstream.models import _MAX_EXPONENT, _as_datetime, _check_amount, _fix_time

__all__ = [
    "AccountBalance",
    "CurrentPosition",
    "ExternalTransaction",
    "FillInfo",
    "Leg",
    "OrderStatus",
    "PlacedComplexOrder",
    "PlacedOrder",
    "QuoteAlert",
    "TradingStatus",
    "UnderlyingYearGainSummary",
    "Watchlist",
    "WatchlistEntry",
]

if TYPE_CHECKING:
    _Time = datetime
    _OptTime = datetime | None
    _LooseTime = datetime | None
    _Fills = tuple["FillInfo", ...]
    _Entries = tuple["WatchlistEntry", ...]
    _Related = tuple[dict[str, Any], ...]
else:
    # On the wire a time is an ISO-8601 string or epoch milliseconds; __post_init__ turns
    # integers into datetimes, so users only ever see datetime. A missing list may arrive
    # as null: __post_init__ makes it an empty tuple.
    _Time = datetime | int
    _OptTime = datetime | int | None
    # A quote alert's ``expires-at`` is an integer in the SDK and a string in tastytrade's
    # swagger (digits or ISO-8601): both are accepted.
    _LooseTime = str | int | None
    _Fills = tuple["FillInfo", ...] | None
    _Entries = tuple["WatchlistEntry", ...] | None
    _Related = tuple[dict[str, Any], ...] | None

_set = msgspec.structs.force_setattr


def _check_finite(obj: msgspec.Struct, names: tuple[str, ...]) -> None:
    """Refuse a NaN, infinite or absurdly large amount in any of ``names`` (None passes)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and (not value.is_finite() or value.adjusted() > _MAX_EXPONENT):
            raise ValueError(f"{name} must be finite, got {value}")


def _check_non_negative(obj: msgspec.Struct, names: tuple[str, ...]) -> None:
    for name in names:
        _check_amount(name, getattr(obj, name))


def _fix_times(obj: msgspec.Struct, names: tuple[str, ...]) -> None:
    for name in names:
        _fix_time(obj, name)


def _empty_if_null(obj: msgspec.Struct, name: str) -> None:
    """A list the wire sent as null becomes an empty tuple."""
    if getattr(obj, name) is None:
        _set(obj, name, ())


def _parse_loose_time(value: datetime | str | int) -> datetime:
    if isinstance(value, datetime | int):
        return _as_datetime(value)
    text = value.strip()
    if text.isdigit():
        return _as_datetime(int(text))
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{value!r} is neither ISO-8601 nor epoch milliseconds") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _decimal_fields(cls: type[msgspec.Struct]) -> tuple[str, ...]:
    """The names of ``cls``'s ``Decimal`` (or ``Decimal | None``) fields."""
    return tuple(
        f.name
        for f in msgspec.structs.fields(cls)
        if f.type is Decimal or Decimal in get_args(f.type)
    )


def _signed(value: Decimal | None, effect: str | None) -> Decimal | None:
    if value is None:
        return None
    return -value if effect == "Debit" else value


class OrderStatus(StrEnum):
    """An order's statuses, for comparisons: ``PlacedOrder.status`` itself is a plain str.

    A typical order goes Received -> Routed -> In Flight -> Live -> Filled. Cancelled,
    Expired, Rejected, Removed and Partially Removed are final too; a status tastytrade
    adds later still decodes (as its string).
    """

    RECEIVED = "Received"
    ROUTED = "Routed"
    IN_FLIGHT = "In Flight"
    LIVE = "Live"
    CANCEL_REQUESTED = "Cancel Requested"
    REPLACE_REQUESTED = "Replace Requested"
    CONTINGENT = "Contingent"
    FILLED = "Filled"
    CANCELLED = "Cancelled"
    EXPIRED = "Expired"
    REJECTED = "Rejected"
    REMOVED = "Removed"
    PARTIALLY_REMOVED = "Partially Removed"


_TERMINAL_STATUSES = frozenset(
    {
        OrderStatus.FILLED,
        OrderStatus.CANCELLED,
        OrderStatus.EXPIRED,
        OrderStatus.REJECTED,
        OrderStatus.REMOVED,
        OrderStatus.PARTIALLY_REMOVED,
    }
)


class FillInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False, rename="kebab"):
    """One execution of an order leg (an entry of ``Leg.fills``).

    ``quantity`` is what this fill executed, at ``fill_price`` (per unit, a magnitude).
    """

    fill_id: str
    quantity: Decimal
    fill_price: Decimal
    filled_at: _Time
    destination_venue: str | None = None
    ext_group_fill_id: str | None = None
    ext_exec_id: str | None = None

    def __post_init__(self) -> None:
        _check_amount("quantity", self.quantity)
        _check_finite(self, ("fill_price",))
        _fix_time(self, "filled_at")


class Leg(msgspec.Struct, frozen=True, kw_only=True, rename="kebab"):
    """One leg of an order: what to trade, how much, and its fills so far.

    ``action`` is ``Buy to Open``, ``Sell to Close``, ... (``Buy`` or ``Sell`` for
    futures). ``fills`` can lag behind ``remaining_quantity``: a Filled order may arrive
    before all its fills, followed by the same order with the rest.
    """

    instrument_type: str
    symbol: str
    action: str
    quantity: Decimal | None = None
    remaining_quantity: Decimal | None = None
    fills: _Fills = ()

    def __post_init__(self) -> None:
        _check_amount("quantity", self.quantity)
        _check_amount("remaining_quantity", self.remaining_quantity)
        _empty_if_null(self, "fills")


_ORDER_TIMES = (
    "updated_at",
    "received_at",
    "in_flight_at",
    "live_at",
    "terminal_at",
    "cancelled_at",
)


class PlacedOrder(msgspec.Struct, frozen=True, kw_only=True, rename="kebab"):
    """An order of the account, whether or not it has filled (the ``Order`` message).

    ``status`` is a plain str, one of the values of
    :class:`~agentstream.tastytrade.models.OrderStatus` (Received, Routed,
    In Flight, Live, Cancel Requested, Replace Requested, Contingent, Filled, Cancelled,
    Expired, Rejected, Removed, Partially Removed) or one tastytrade adds later.
    ``price`` and ``value`` are magnitudes, with ``price_effect`` / ``value_effect``
    ``"Debit"`` or ``"Credit"``; :attr:`signed_price` is negative for a debit, as the
    SDK's ``price``. ``id`` is None for a dry-run order. ``order_rule`` (rare, nested) is
    kept as the wire's dict.
    """

    account_number: str
    time_in_force: str
    order_type: str
    underlying_symbol: str
    underlying_instrument_type: str
    status: str
    cancellable: bool
    editable: bool
    edited: bool
    updated_at: _Time
    legs: tuple[Leg, ...]
    id: int | None = None
    size: Decimal | None = None
    cancelled_size: Decimal | None = None
    price: Decimal | None = None
    price_effect: str | None = None
    value: Decimal | None = None
    value_effect: str | None = None
    stop_trigger: Decimal | None = None
    gtc_date: date | None = None
    received_at: _OptTime = None
    in_flight_at: _OptTime = None
    live_at: _OptTime = None
    terminal_at: _OptTime = None
    cancelled_at: _OptTime = None
    reject_reason: str | None = None
    contingent_status: str | None = None
    confirmation_status: str | None = None
    complex_order_id: int | str | None = None
    complex_order_tag: str | None = None
    preflight_id: int | str | None = None
    replacing_order_id: int | str | None = None
    replaces_order_id: int | str | None = None
    cancel_user_id: int | str | None = None
    cancel_username: str | None = None
    user_id: int | str | None = None
    username: str | None = None
    tag: str | None = None
    source: str | None = None
    external_identifier: str | None = None
    global_request_id: str | None = None
    ext_client_order_id: str | None = None
    ext_exchange_order_number: str | None = None
    ext_global_order_number: int | None = None
    destination_venue: str | None = None
    order_rule: dict[str, Any] | None = None
    #: Delivered by agentstream's recovery after a reconnect (read over REST); never on
    #: the wire.
    recovered: bool = False

    def __post_init__(self) -> None:
        _check_non_negative(self, ("size", "cancelled_size", "price", "value"))
        _check_finite(self, ("stop_trigger",))
        _fix_times(self, _ORDER_TIMES)

    @property
    def signed_price(self) -> Decimal | None:
        """``price`` with the sign of ``price_effect``: negative for a debit."""
        return _signed(self.price, self.price_effect)

    @property
    def signed_value(self) -> Decimal | None:
        """``value`` with the sign of ``value_effect``: negative for a debit."""
        return _signed(self.value, self.value_effect)

    @property
    def is_terminal(self) -> bool:
        """True once the order can no longer change (Filled, Cancelled, Rejected, ...)."""
        return self.status in _TERMINAL_STATUSES


class PlacedComplexOrder(msgspec.Struct, frozen=True, kw_only=True, rename="kebab"):
    """An OCO, OTO, OTOCO or PAIRS order and its member orders (the ``ComplexOrder``
    message). ``related_orders`` (rare) are kept as the wire's dicts."""

    account_number: str
    type: str
    orders: tuple[PlacedOrder, ...]
    id: int | None = None
    trigger_order: PlacedOrder | None = None
    terminal_at: _OptTime = None
    ratio_price_threshold: Decimal | None = None
    ratio_price_comparator: str | None = None
    ratio_price_is_threshold_based_on_notional: bool | None = None
    related_orders: _Related = ()

    def __post_init__(self) -> None:
        _check_finite(self, ("ratio_price_threshold",))
        _fix_time(self, "terminal_at")
        _empty_if_null(self, "related_orders")


class AccountBalance(msgspec.Struct, frozen=True, kw_only=True, gc=False, rename="kebab"):
    """The account's balances (the ``AccountBalance`` message).

    Only ``account_number`` is required: which figures tastytrade sends depends on what
    the account may trade (a cash account has no futures margin). Any amount may be
    negative (cash, excesses, calls); ``pending_cash``,
    ``unsettled_cryptocurrency_fiat_amount`` and ``buying_power_adjustment`` are
    magnitudes with a ``*_effect`` (``"Debit"``, ``"Credit"`` or ``"None"``).
    """

    account_number: str
    currency: str | None = None
    cash_balance: Decimal | None = None
    net_liquidating_value: Decimal | None = None
    equity_buying_power: Decimal | None = None
    derivative_buying_power: Decimal | None = None
    day_trading_buying_power: Decimal | None = None
    available_trading_funds: Decimal | None = None
    cash_available_to_withdraw: Decimal | None = None
    maintenance_requirement: Decimal | None = None
    maintenance_excess: Decimal | None = None
    maintenance_call_value: Decimal | None = None
    reg_t_call_value: Decimal | None = None
    reg_t_margin_requirement: Decimal | None = None
    day_trading_call_value: Decimal | None = None
    day_equity_call_value: Decimal | None = None
    day_trade_excess: Decimal | None = None
    margin_equity: Decimal | None = None
    pending_cash: Decimal | None = None
    pending_cash_effect: str | None = None
    pending_margin_interest: Decimal | None = None
    long_equity_value: Decimal | None = None
    short_equity_value: Decimal | None = None
    long_derivative_value: Decimal | None = None
    short_derivative_value: Decimal | None = None
    long_futures_value: Decimal | None = None
    short_futures_value: Decimal | None = None
    long_futures_derivative_value: Decimal | None = None
    short_futures_derivative_value: Decimal | None = None
    long_margineable_value: Decimal | None = None
    short_margineable_value: Decimal | None = None
    long_cryptocurrency_value: Decimal | None = None
    short_cryptocurrency_value: Decimal | None = None
    long_bond_value: Decimal | None = None
    long_fixed_income_security_value: Decimal | None = None
    futures_margin_requirement: Decimal | None = None
    futures_overnight_margin_requirement: Decimal | None = None
    futures_intraday_margin_requirement: Decimal | None = None
    cryptocurrency_margin_requirement: Decimal | None = None
    effective_cryptocurrency_buying_power: Decimal | None = None
    unsettled_cryptocurrency_fiat_amount: Decimal | None = None
    unsettled_cryptocurrency_fiat_effect: str | None = None
    equity_offering_margin_requirement: Decimal | None = None
    bond_margin_requirement: Decimal | None = None
    fixed_income_security_margin_requirement: Decimal | None = None
    closed_loop_available_balance: Decimal | None = None
    used_derivative_buying_power: Decimal | None = None
    apex_starting_day_margin_equity: Decimal | None = None
    buying_power_adjustment: Decimal | None = None
    buying_power_adjustment_effect: str | None = None
    cash_settle_balance: Decimal | None = None
    margin_settle_balance: Decimal | None = None
    total_settle_balance: Decimal | None = None
    snapshot_date: date | None = None
    time_of_day: str | None = None
    updated_at: _OptTime = None

    def __post_init__(self) -> None:
        _check_finite(self, _BALANCE_AMOUNTS)
        _fix_time(self, "updated_at")


_BALANCE_AMOUNTS = _decimal_fields(AccountBalance)


class CurrentPosition(msgspec.Struct, frozen=True, kw_only=True, gc=False, rename="kebab"):
    """One position of the account (the ``CurrentPosition`` message).

    ``quantity`` is never negative: ``quantity_direction`` (``Long``, ``Short`` or
    ``Zero``) gives the side, and :attr:`signed_quantity` combines them.
    ``realized_day_gain`` and ``realized_today`` are magnitudes with a ``*_effect``.
    """

    account_number: str
    symbol: str
    instrument_type: str
    underlying_symbol: str
    quantity: Decimal
    quantity_direction: str
    close_price: Decimal
    average_open_price: Decimal
    multiplier: Decimal
    cost_effect: str
    is_suppressed: bool
    is_frozen: bool
    realized_day_gain: Decimal
    realized_today: Decimal
    created_at: _Time
    updated_at: _Time
    mark: Decimal | None = None
    mark_price: Decimal | None = None
    restricted_quantity: Decimal | None = None
    expires_at: _OptTime = None
    fixing_price: Decimal | None = None
    deliverable_type: str | None = None
    average_yearly_market_close_price: Decimal | None = None
    average_daily_market_close_price: Decimal | None = None
    realized_day_gain_effect: str | None = None
    realized_day_gain_date: date | None = None
    realized_today_effect: str | None = None
    realized_today_date: date | None = None

    def __post_init__(self) -> None:
        _check_non_negative(self, ("quantity", "multiplier", "restricted_quantity"))
        _check_finite(self, _POSITION_PRICES)
        _fix_times(self, ("created_at", "updated_at", "expires_at"))

    @property
    def signed_quantity(self) -> Decimal:
        """``quantity``, negative for a short position."""
        return -self.quantity if self.quantity_direction == "Short" else self.quantity


_POSITION_PRICES = tuple(
    name
    for name in _decimal_fields(CurrentPosition)
    if name not in ("quantity", "multiplier", "restricted_quantity")
)


class QuoteAlert(msgspec.Struct, frozen=True, kw_only=True, gc=False, rename="kebab"):
    """A user's quote alert, sent when it is created, triggered or completed (the
    ``QuoteAlert`` message).

    The alert fires when ``field`` (``Last``, ``Bid``, ``Ask``, ...) compares to
    ``threshold`` by ``operator`` (``>`` or ``<``); ``threshold`` is the wire's text and
    ``threshold_numeric`` its number. ``triggered_at`` and ``completed_at`` are None until
    they happen. Alerts belong to the user, not an account.
    """

    alert_external_id: str
    symbol: str
    field: str
    operator: str
    threshold: str
    threshold_numeric: Decimal | None = None
    user_external_id: str | None = None
    dx_symbol: str | None = None
    instrument_type: str | None = None
    provider: str | None = None
    created_at: _OptTime = None
    triggered_at: _OptTime = None
    completed_at: _OptTime = None
    expires_at: _LooseTime = None

    def __post_init__(self) -> None:
        _check_finite(self, ("threshold_numeric",))
        _fix_times(self, ("created_at", "triggered_at", "completed_at"))
        if self.expires_at is not None:
            _set(self, "expires_at", _parse_loose_time(self.expires_at))


class WatchlistEntry(msgspec.Struct, frozen=True, kw_only=True, gc=False, rename="kebab"):
    """One symbol of a watchlist."""

    symbol: str
    instrument_type: str | None = None


class Watchlist(msgspec.Struct, frozen=True, kw_only=True, rename="kebab"):
    """A public (tastytrade-curated) watchlist (the ``PublicWatchlists`` message).

    ``group_name`` and ``order_index`` default as in the SDK (``"default"``, 9999).
    """

    name: str
    watchlist_entries: _Entries = ()
    group_name: str = "default"
    order_index: int = 9999
    cms_id: str | None = None

    def __post_init__(self) -> None:
        _empty_if_null(self, "watchlist_entries")


class ExternalTransaction(msgspec.Struct, frozen=True, kw_only=True, gc=False, rename="kebab"):
    """A money movement in or out of the account (the ``ExternalTransaction`` message).

    ``amount`` is a magnitude; ``direction`` says which way it goes.
    """

    account_number: str
    id: int | None = None
    amount: Decimal | None = None
    direction: str | None = None
    state: str | None = None
    transfer_method: str | None = None
    disbursement_type: str | None = None
    bank_account_type: str | None = None
    ext_transfer_id: str | None = None
    is_cancelable: bool | None = None
    is_clearing_accepted: bool | None = None
    banking_date: date | None = None
    funds_available_date: date | None = None
    created_at: _OptTime = None
    updated_at: _OptTime = None

    def __post_init__(self) -> None:
        _check_amount("amount", self.amount)
        _fix_times(self, ("created_at", "updated_at"))


class TradingStatus(msgspec.Struct, frozen=True, kw_only=True, gc=False, rename="kebab"):
    """What the account may trade (margin, futures, crypto, ...) and its restrictions
    (the ``TradingStatus`` message). Only ``account_number`` is required."""

    account_number: str
    id: int | None = None
    options_level: str | None = None
    equities_margin_calculation_type: str | None = None
    fee_schedule_name: str | None = None
    futures_margin_rate_multiplier: Decimal | None = None
    small_notional_futures_margin_rate_multiplier: Decimal | None = None
    day_trade_count: int | None = None
    pdt_reset_on: date | None = None
    has_intraday_equities_margin: bool | None = None
    is_aggregated_at_clearing: bool | None = None
    is_closed: bool | None = None
    is_closing_only: bool | None = None
    is_cryptocurrency_enabled: bool | None = None
    is_cryptocurrency_closing_only: bool | None = None
    is_frozen: bool | None = None
    is_full_equity_margin_required: bool | None = None
    is_futures_closing_only: bool | None = None
    is_futures_intra_day_enabled: bool | None = None
    is_futures_enabled: bool | None = None
    is_in_day_trade_equity_maintenance_call: bool | None = None
    is_in_margin_call: bool | None = None
    is_pattern_day_trader: bool | None = None
    is_portfolio_margin_enabled: bool | None = None
    is_risk_reducing_only: bool | None = None
    is_small_notional_futures_intra_day_enabled: bool | None = None
    is_roll_the_day_forward_enabled: bool | None = None
    are_far_otm_net_options_restricted: bool | None = None
    short_calls_enabled: bool | None = None
    is_equity_offering_enabled: bool | None = None
    is_equity_offering_closing_only: bool | None = None
    autotrade_account_type: str | None = None
    clearing_account_number: str | None = None
    clearing_aggregation_identifier: str | None = None
    cmta_override: int | None = None
    enhanced_fraud_safeguards_enabled_at: _OptTime = None
    updated_at: _OptTime = None

    def __post_init__(self) -> None:
        _check_non_negative(
            self,
            ("futures_margin_rate_multiplier", "small_notional_futures_margin_rate_multiplier"),
        )
        _fix_times(self, ("enhanced_fraud_safeguards_enabled_at", "updated_at"))


class UnderlyingYearGainSummary(
    msgspec.Struct, frozen=True, kw_only=True, gc=False, rename="kebab"
):
    """The year's realized gain or loss, fees and commissions on one underlying (the
    ``UnderlyingYearGainSummary`` message). Amounts are magnitudes with a ``*_effect``."""

    account_number: str
    symbol: str
    year: int
    instrument_type: str | None = None
    fees: Decimal | None = None
    fees_effect: str | None = None
    commissions: Decimal | None = None
    commissions_effect: str | None = None
    yearly_realized_gain: Decimal | None = None
    yearly_realized_gain_effect: str | None = None
    realized_lot_gain: Decimal | None = None
    realized_lot_gain_effect: str | None = None

    def __post_init__(self) -> None:
        _check_finite(self, ("fees", "commissions", "yearly_realized_gain", "realized_lot_gain"))
