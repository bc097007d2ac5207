"""tastytrade's account-streamer models: decoding real payloads, and refusing bad ones.

Payload sources (each fixture says which):
- DOC_ORDER: the Filled order of tastytrade's "Streaming Account Data" guide
  (developer.tastytrade.com/streaming-account-data), account number as published.
- LEAN_*: QuantConnect/Lean.Brokerages.Tastytrade's test data
  (TastytradeJsonConverterTests.DeserializeStreamFilledOrderMessage, TestData/
  Get_Account_Balance.json, TestData/Get_Positions.json, the leg data of
  TastytradeBrokerageAdditionalTests): responses recorded from tastytrade's sandbox.
- The quote alert and public watchlist frames: the fields of tastytrade's swagger
  (QuoteAlertDeserializer, Watchlist) as the tastyware SDK names them; the guide shows
  no example of either.
"""

from __future__ import annotations

import gc
import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from agentstream.tastytrade import models
from agentstream.tastytrade.models import (
    AccountBalance,
    CurrentPosition,
    ExternalTransaction,
    FillInfo,
    Leg,
    OrderStatus,
    PlacedComplexOrder,
    PlacedOrder,
    QuoteAlert,
    TradingStatus,
    UnderlyingYearGainSummary,
    Watchlist,
    WatchlistEntry,
)

# tastytrade's "Streaming Account Data" guide: the order after it filled.
DOC_ORDER: dict[str, Any] = {
    "id": 1,
    "account-number": "5WT00000",
    "time-in-force": "Day",
    "order-type": "Market",
    "size": 100,
    "underlying-symbol": "AAPL",
    "underlying-instrument-type": "Equity",
    "status": "Filled",
    "cancellable": False,
    "editable": False,
    "edited": False,
    "ext-exchange-order-number": "12345",
    "ext-client-order-id": "67890",
    "ext-global-order-number": 1111,
    "received-at": "2023-07-05T19:07:32.444+00:00",
    "updated-at": 1688584052750,
    "in-flight-at": "2023-07-05T19:07:32.494+00:00",
    "live-at": "2023-07-05T19:07:32.495+00:00",
    "destination-venue": "TEST_A",
    "user-id": 99,
    "username": "coolperson",
    "terminal-at": "2023-07-05T19:07:32.737+00:00",
    "legs": [
        {
            "instrument-type": "Equity",
            "symbol": "AAPL",
            "quantity": 100,
            "remaining-quantity": 0,
            "action": "Buy to Open",
            "fills": [
                {
                    "ext-group-fill-id": "0",
                    "ext-exec-id": "1122",
                    "fill-id": "24_TW::TEST_A47504::20230705.1179-TEST_FILL",
                    "quantity": 100,
                    "fill-price": "100.0",
                    "filled-at": "2023-07-05T19:07:32.496+00:00",
                    "destination-venue": "TEST_A",
                }
            ],
        }
    ],
}

# Lean's DeserializeStreamFilledOrderMessage: a whole streamer message, as received.
LEAN_ORDER_MESSAGE = b"""{
    "type": "Order",
    "data": {
        "id": 270602,
        "account-number": "5WX06827",
        "cancellable": false,
        "editable": false,
        "edited": false,
        "ext-client-order-id": "0a000000d40004210a",
        "ext-exchange-order-number": "910533337354",
        "ext-global-order-number": 212,
        "global-request-id": "cac193dce95dd480f7c191e8655f54a9",
        "order-type": "Market",
        "received-at": "2025-05-28T16:00:01.651+00:00",
        "size": 1,
        "status": "Filled",
        "terminal-at": "2025-05-28T16:00:02.550+00:00",
        "time-in-force": "Day",
        "underlying-instrument-type": "Equity",
        "underlying-symbol": "AAPL",
        "updated-at": 1748448002553,
        "legs": [
            {
                "action": "Buy to Open",
                "instrument-type": "Equity",
                "quantity": 1,
                "remaining-quantity": 0,
                "symbol": "AAPL",
                "fills": [
                    {
                        "destination-venue": "TEST_A",
                        "ext-exec-id": "134",
                        "ext-group-fill-id": "0",
                        "fill-id": "2_TW::TEST_A1::20250528.135-TEST_FILL",
                        "fill-price": "1.0",
                        "filled-at": "2025-05-28T16:00:01.953+00:00",
                        "quantity": 1
                    }
                ]
            }
        ]
    },
    "timestamp": 1748448002620
}"""

# Lean's TestData/Get_Account_Balance.json (the REST body; the streamer's AccountBalance
# carries the same object).
LEAN_BALANCE: dict[str, Any] = {
    "account-number": "5WZ81257",
    "available-trading-funds": "0.0",
    "bond-margin-requirement": "0.0",
    "cash-available-to-withdraw": "0.0",
    "cash-balance": "0.0",
    "cash-settle-balance": "0.0",
    "closed-loop-available-balance": "0.0",
    "cryptocurrency-margin-requirement": "0.0",
    "currency": "USD",
    "day-equity-call-value": "0.0",
    "day-trade-excess": "0.0",
    "day-trading-buying-power": "0.0",
    "day-trading-call-value": "0.0",
    "derivative-buying-power": "0.0",
    "equity-buying-power": "0.0",
    "equity-offering-margin-requirement": "0.0",
    "fixed-income-security-margin-requirement": "0.0",
    "futures-margin-requirement": "0.0",
    "long-bond-value": "0.0",
    "long-cryptocurrency-value": "0.0",
    "long-derivative-value": "0.0",
    "long-equity-value": "0.0",
    "long-fixed-income-security-value": "0.0",
    "long-futures-derivative-value": "0.0",
    "long-futures-value": "0.0",
    "long-margineable-value": "0.0",
    "maintenance-call-value": "0.0",
    "maintenance-requirement": "0.0",
    "margin-equity": "0.0",
    "margin-settle-balance": "0.0",
    "net-liquidating-value": "0.0",
    "pending-cash": "0.0",
    "pending-cash-effect": "None",
    "reg-t-call-value": "0.0",
    "short-cryptocurrency-value": "0.0",
    "short-derivative-value": "0.0",
    "short-equity-value": "0.0",
    "short-futures-derivative-value": "0.0",
    "short-futures-value": "0.0",
    "short-margineable-value": "0.0",
    "sma-equity-option-buying-power": "0.0",
    "special-memorandum-account-apex-adjustment": "0.0",
    "special-memorandum-account-value": "0.0",
    "total-settle-balance": "0.0",
    "unsettled-cryptocurrency-fiat-amount": "0.0",
    "unsettled-cryptocurrency-fiat-effect": "None",
    "used-derivative-buying-power": "0.0",
    "snapshot-date": "2025-05-14",
    "reg-t-margin-requirement": "0.0",
    "futures-overnight-margin-requirement": "0.0",
    "futures-intraday-margin-requirement": "0.0",
    "maintenance-excess": "0.0",
    "pending-margin-interest": "0.0",
    "buying-power-adjustment": "0.0",
    "buying-power-adjustment-effect": "None",
    "effective-cryptocurrency-buying-power": "0.0",
    "total-pending-liquidity-pool-rebate": "0.0",
    "updated-at": "2025-05-13T17:09:41.714+00:00",
}

# Lean's TestData/Get_Positions.json, its one item.
LEAN_POSITION: dict[str, Any] = {
    "account-number": "5WT00000",
    "symbol": "AAPL",
    "instrument-type": "Equity",
    "underlying-symbol": "AAPL",
    "quantity": "100",
    "quantity-direction": "Long",
    "close-price": "282.48",
    "average-open-price": "288.7",
    "average-yearly-market-close-price": "123.18",
    "average-daily-market-close-price": "282.48",
    "multiplier": 1,
    "cost-effect": "Credit",
    "is-suppressed": False,
    "is-frozen": False,
    "restricted-quantity": "0.0",
    "realized-day-gain": "0.0",
    "realized-day-gain-effect": "None",
    "realized-day-gain-date": "2022-11-01",
    "realized-today": "0.0",
    "realized-today-effect": "None",
    "realized-today-date": "2022-11-01",
    "created-at": "2022-08-22T17:56:51.872+00:00",
    "updated-at": "2022-11-01T21:49:54.095+00:00",
}

# Lean's leg data: a five-lot leg whose fills so far add up to three.
LEAN_PARTIAL_LEG: dict[str, Any] = {
    "action": "Buy to Open",
    "instrument-type": "Equity Option",
    "quantity": 5,
    "remaining-quantity": 0,
    "symbol": "NVDA  251017C00190000",
    "fills": [
        {
            "destination-venue": "TEST_A",
            "ext-exec-id": "79",
            "ext-group-fill-id": "0",
            "fill-id": "2_TW::TEST_A1::20251006.80-TEST_FILL",
            "fill-price": "2.01",
            "filled-at": "2025-10-06T17:12:45.157+00:00",
            "quantity": 1,
        },
        {
            "destination-venue": "TEST_A",
            "ext-exec-id": "79",
            "ext-group-fill-id": "0",
            "fill-id": "2_TW::TEST_A1::20251006.81-TEST_FILL",
            "fill-price": "2.01",
            "filled-at": "2025-10-06T17:12:45.157+00:00",
            "quantity": 2,
        },
    ],
}

# A triggered alert, with the swagger's QuoteAlertDeserializer fields.
QUOTE_ALERT: dict[str, Any] = {
    "alert-external-id": "alert-1",
    "user-external-id": "U0001",
    "symbol": "AAPL",
    "dx-symbol": "AAPL",
    "instrument-type": "Equity",
    "field": "Last",
    "operator": ">",
    "threshold": "200.00",
    "threshold-numeric": 200.0,
    "provider": "dxfeed",
    "created-at": "2026-08-01T12:00:00.000+00:00",
    "triggered-at": "2026-08-03T14:30:00.000-04:00",
    "completed-at": "2026-08-03T14:30:00.100-04:00",
    "expires-at": 1788595114405,
}

PUBLIC_WATCHLIST: dict[str, Any] = {
    "name": "High Options Volume",
    "group-name": "tastytrade",
    "order-index": 3,
    "cms-id": "blt-high-options-volume",
    "watchlist-entries": [
        {"symbol": "AAPL", "instrument-type": "Equity"},
        {"symbol": "/ES", "instrument-type": "Future"},
    ],
}


def _decode(data: dict[str, Any], type_: type[Any]) -> Any:
    """Decode ``data`` as the streamer sends it: JSON text, not a Python dict."""
    return msgspec.json.decode(json.dumps(data).encode(), type=type_)


def _with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``base`` with kebab-case keys (given snake_case) replaced, or removed when None."""
    out = dict(base)
    for key, value in changes.items():
        wire = key.replace("_", "-")
        if value is None:
            out.pop(wire)
        else:
            out[wire] = value
    return out


# -- orders ---------------------------------------------------------------------------


def test_documented_filled_order_decodes_with_kebab_case_fields() -> None:
    order = _decode(DOC_ORDER, PlacedOrder)

    assert order.id == 1
    assert order.account_number == "5WT00000"
    assert order.time_in_force == "Day"
    assert order.order_type == "Market"
    assert order.underlying_symbol == "AAPL"
    assert order.underlying_instrument_type == "Equity"
    assert order.status == OrderStatus.FILLED
    assert (order.cancellable, order.editable, order.edited) == (False, False, False)
    assert order.size == Decimal(100)
    assert order.ext_exchange_order_number == "12345"
    assert order.ext_global_order_number == 1111
    assert order.user_id == 99
    assert order.username == "coolperson"
    assert order.destination_venue == "TEST_A"
    assert order.updated_at == datetime(2023, 7, 5, 19, 7, 32, 750000, tzinfo=UTC)
    assert order.received_at == datetime(2023, 7, 5, 19, 7, 32, 444000, tzinfo=UTC)
    assert order.terminal_at == datetime(2023, 7, 5, 19, 7, 32, 737000, tzinfo=UTC)
    assert order.is_terminal
    (leg,) = order.legs
    assert (leg.instrument_type, leg.symbol, leg.action) == ("Equity", "AAPL", "Buy to Open")
    assert (leg.quantity, leg.remaining_quantity) == (Decimal(100), Decimal(0))
    (fill,) = leg.fills
    assert fill == FillInfo(
        fill_id="24_TW::TEST_A47504::20230705.1179-TEST_FILL",
        quantity=Decimal(100),
        fill_price=Decimal("100.0"),
        filled_at=datetime(2023, 7, 5, 19, 7, 32, 496000, tzinfo=UTC),
        destination_venue="TEST_A",
        ext_group_fill_id="0",
        ext_exec_id="1122",
    )


def test_lean_stream_message_data_decodes() -> None:
    class Message(msgspec.Struct):
        type: str
        data: msgspec.Raw
        timestamp: int

    message = msgspec.json.decode(LEAN_ORDER_MESSAGE, type=Message)
    order = msgspec.json.decode(message.data, type=PlacedOrder)

    assert message.type == "Order"
    assert order.id == 270602
    assert order.global_request_id == "cac193dce95dd480f7c191e8655f54a9"
    assert order.updated_at == datetime.fromtimestamp(1748448002.553, UTC)
    assert order.legs[0].fills[0].fill_price == Decimal("1.0")
    assert order.legs[0].fills[0].quantity == 1


def test_field_names_on_the_wire_are_kebab_case() -> None:
    for model in (PlacedOrder, Leg, FillInfo, AccountBalance, CurrentPosition, QuoteAlert):
        for field in msgspec.structs.fields(model):
            assert field.encode_name == field.name.replace("_", "-")
    encoded = json.loads(msgspec.json.encode(_decode(DOC_ORDER, PlacedOrder)))
    assert encoded["account-number"] == "5WT00000"
    assert encoded["legs"][0]["fills"][0]["fill-id"].endswith("TEST_FILL")
    assert "account_number" not in encoded


def test_filled_multi_leg_order_decodes_before_all_its_fills() -> None:
    # A Filled strangle whose first leg has 3 of its 5 lots' fills and whose second has
    # none yet: the rest follow in a later message for the same order.
    second = _with(LEAN_PARTIAL_LEG, symbol="NVDA  251017P00170000", fills=[])
    data = _with(
        DOC_ORDER,
        underlying_symbol="NVDA",
        size=5,
        price="4.02",
        price_effect="Debit",
        legs=[LEAN_PARTIAL_LEG, second],
    )

    order = _decode(data, PlacedOrder)

    assert order.status == "Filled"
    assert [len(leg.fills) for leg in order.legs] == [2, 0]
    assert sum(f.quantity for f in order.legs[0].fills) == 3
    assert order.legs[0].quantity == 5
    assert order.legs[1].fills == ()
    assert all(leg.remaining_quantity == 0 for leg in order.legs)


def test_fills_missing_or_null_decode_as_no_fills() -> None:
    bare = _with(LEAN_PARTIAL_LEG, fills=None, quantity=None, remaining_quantity=None)
    null = _with(LEAN_PARTIAL_LEG, fills=[])
    null["fills"] = None

    assert _decode(bare, Leg).fills == ()
    assert _decode(bare, Leg).quantity is None
    assert _decode(null, Leg).fills == ()


@pytest.mark.parametrize(
    ("wire", "exact"),
    [
        ('"12.50"', "12.50"),
        ("12.50", "12.50"),
        ("0.1", "0.1"),
        ("1.23456789012345678901", "1.23456789012345678901"),
        ("100", "100"),
    ],
)
def test_amounts_are_exact_decimals_from_strings_and_numbers(wire: str, exact: str) -> None:
    text = json.dumps(_with(DOC_ORDER, price="PLACEHOLDER")).replace('"PLACEHOLDER"', wire)

    order = msgspec.json.decode(text.encode(), type=PlacedOrder)

    assert isinstance(order.price, Decimal)
    assert str(order.price) == exact  # the wire's own digits: never through a float


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (1688584052750, datetime(2023, 7, 5, 19, 7, 32, 750000, tzinfo=UTC)),
        ("2023-07-05T19:07:32.750+00:00", datetime(2023, 7, 5, 19, 7, 32, 750000, tzinfo=UTC)),
        ("2023-07-05T19:07:32.750Z", datetime(2023, 7, 5, 19, 7, 32, 750000, tzinfo=UTC)),
        ("2023-07-05T15:07:32.750-04:00", datetime(2023, 7, 5, 19, 7, 32, 750000, tzinfo=UTC)),
        ("2023-07-05T19:07:32.750", datetime(2023, 7, 5, 19, 7, 32, 750000, tzinfo=UTC)),
        (1688584052, datetime(2023, 7, 5, 19, 7, 32, tzinfo=UTC)),
    ],
)
def test_times_decode_from_iso_strings_and_epoch_integers(wire: Any, expected: datetime) -> None:
    order = _decode(_with(DOC_ORDER, updated_at=wire, cancelled_at=wire), PlacedOrder)
    fill = _decode(_with(LEAN_PARTIAL_LEG["fills"][0], filled_at=wire), FillInfo)

    for value in (order.updated_at, order.cancelled_at, fill.filled_at):
        assert isinstance(value, datetime)
        assert value.tzinfo is not None
        assert value == expected


def test_unknown_fields_are_ignored() -> None:
    data = _with(DOC_ORDER, brand_new_field={"nested": [1, 2]}, leg_count="1")
    data["legs"] = [dict(DOC_ORDER["legs"][0], **{"future-key": True})]

    order = _decode(data, PlacedOrder)

    assert order == _decode(DOC_ORDER, PlacedOrder)


def test_an_unknown_status_still_decodes() -> None:
    order = _decode(_with(DOC_ORDER, status="Some Future Status"), PlacedOrder)

    assert order.status == "Some Future Status"
    assert not order.is_terminal


def test_order_status_enum_lists_the_documented_statuses() -> None:
    assert [s.value for s in OrderStatus] == [
        "Received",
        "Routed",
        "In Flight",
        "Live",
        "Cancel Requested",
        "Replace Requested",
        "Contingent",
        "Filled",
        "Cancelled",
        "Expired",
        "Rejected",
        "Removed",
        "Partially Removed",
    ]
    assert _decode(_with(DOC_ORDER, status="Live"), PlacedOrder).status == OrderStatus.LIVE
    assert not _decode(_with(DOC_ORDER, status="Live"), PlacedOrder).is_terminal


@pytest.mark.parametrize(
    ("effect", "signed"), [("Debit", Decimal("-4.02")), ("Credit", Decimal("4.02"))]
)
def test_signed_price_follows_the_price_effect(effect: str, signed: Decimal) -> None:
    order = _decode(
        _with(DOC_ORDER, price="4.02", price_effect=effect, value=10, value_effect=effect),
        PlacedOrder,
    )

    assert order.price == Decimal("4.02")
    assert order.signed_price == signed
    assert order.signed_value == (-10 if effect == "Debit" else 10)
    assert _decode(DOC_ORDER, PlacedOrder).signed_price is None


def test_optional_order_fields_decode() -> None:
    data = _with(
        DOC_ORDER,
        stop_trigger="190.5",
        gtc_date="2026-01-16",
        cancelled_at="2023-07-05T19:08:00+00:00",
        reject_reason="Insufficient buying power",
        complex_order_id=42,
        complex_order_tag="OTOCO::trigger-order",
        contingent_status="Pending Condition",
        confirmation_status="Confirmed",
        preflight_id="abc",
        tag="bot-7",
        order_rule={"route-after": "2026-01-01T00:00:00Z", "order-conditions": []},
    )

    order = _decode(data, PlacedOrder)

    assert order.stop_trigger == Decimal("190.5")
    assert order.gtc_date == date(2026, 1, 16)
    assert order.cancelled_at == datetime(2023, 7, 5, 19, 8, tzinfo=UTC)
    assert order.complex_order_id == 42
    assert order.preflight_id == "abc"
    assert order.tag == "bot-7"
    assert order.order_rule == {"route-after": "2026-01-01T00:00:00Z", "order-conditions": []}


def _with_fill(**changes: Any) -> dict[str, Any]:
    leg = dict(DOC_ORDER["legs"][0])
    leg["fills"] = [_with(leg["fills"][0], **changes)]
    return _with(DOC_ORDER, legs=[leg])


def _with_leg(**changes: Any) -> dict[str, Any]:
    return _with(DOC_ORDER, legs=[_with(DOC_ORDER["legs"][0], **changes)])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_with(DOC_ORDER, price="-1.5"), "price must be non-negative"),
        (_with(DOC_ORDER, price="NaN"), "price must be finite"),
        (_with(DOC_ORDER, size="Infinity"), "size must be finite"),
        (_with(DOC_ORDER, value="1e999"), "value must be finite"),
        (_with(DOC_ORDER, stop_trigger="-Infinity"), "stop_trigger must be finite"),
        (_with(DOC_ORDER, updated_at="yesterday"), "datetime"),
        (_with(DOC_ORDER, updated_at=10**17), "out of range"),
        (_with(DOC_ORDER, updated_at=None), "updated-at"),
        (_with(DOC_ORDER, legs=None), "legs"),
        (_with(DOC_ORDER, status=3), "str"),
        (_with(DOC_ORDER, cancellable="no"), "bool"),
        (_with(DOC_ORDER, size="lots"), "decimal"),
        (_with_leg(quantity=-100), "quantity must be non-negative"),
        (_with_leg(remaining_quantity="-1"), "remaining_quantity must be non-negative"),
        (_with_leg(symbol=None), "symbol"),
        (_with_fill(quantity=-1), "quantity must be non-negative"),
        (_with_fill(fill_price="NaN"), "fill_price must be finite"),
        (_with_fill(filled_at=None), "filled-at"),
    ],
)
def test_invalid_orders_are_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        _decode(data, PlacedOrder)


def test_a_negative_fill_price_is_accepted() -> None:
    # Futures have traded below zero (WTI, April 2020): a market price need only be finite.
    order = _decode(_with_fill(fill_price="-37.63"), PlacedOrder)

    assert order.legs[0].fills[0].fill_price == Decimal("-37.63")


def test_complex_order_decodes_its_member_orders() -> None:
    trigger = _with(DOC_ORDER, complex_order_tag="OTOCO::trigger-order")
    profit = _with(DOC_ORDER, id=2, status="Contingent", order_type="Limit", price="110.0")
    data = {
        "id": 7,
        "account-number": "5WT00000",
        "type": "OTOCO",
        "trigger-order": trigger,
        "orders": [profit],
        "terminal-at": 1688584052750,
        "related-orders": None,
    }

    complex_order = _decode(data, PlacedComplexOrder)

    assert complex_order.type == "OTOCO"
    assert complex_order.trigger_order is not None
    assert complex_order.trigger_order.complex_order_tag == "OTOCO::trigger-order"
    assert complex_order.orders[0].price == Decimal("110.0")
    assert complex_order.terminal_at == datetime(2023, 7, 5, 19, 7, 32, 750000, tzinfo=UTC)
    assert complex_order.related_orders == ()
    with pytest.raises(msgspec.ValidationError, match="price must be non-negative"):
        _decode(dict(data, orders=[_with(profit, price="-1")]), PlacedComplexOrder)


# -- balances and positions -----------------------------------------------------------


def test_lean_account_balance_decodes() -> None:
    balance = _decode(LEAN_BALANCE, AccountBalance)

    assert balance.account_number == "5WZ81257"
    assert balance.currency == "USD"
    assert balance.cash_balance == Decimal("0.0")
    assert balance.pending_cash_effect == "None"
    assert balance.fixed_income_security_margin_requirement == Decimal(0)
    assert balance.snapshot_date == date(2025, 5, 14)
    assert balance.updated_at == datetime(2025, 5, 13, 17, 9, 41, 714000, tzinfo=UTC)


def test_a_sparse_balance_decodes_with_exact_amounts() -> None:
    # The streamer sends what applies to the account: a cash account has no futures margin.
    data = {
        "account-number": "5WT00000",
        "cash-balance": "-1234.56",
        "net-liquidating-value": 12345.67,
        "equity-buying-power": "20000.0",
        "updated-at": 1688584052750,
    }

    balance = _decode(data, AccountBalance)

    assert balance.cash_balance == Decimal("-1234.56")  # cash can be negative
    assert str(balance.net_liquidating_value) == "12345.67"
    assert balance.futures_margin_requirement is None
    assert balance.updated_at == datetime(2023, 7, 5, 19, 7, 32, 750000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cash_balance", "NaN"),
        ("net_liquidating_value", "Infinity"),
        ("maintenance_excess", "-1e999"),
        ("pending_cash", "sNaN"),
    ],
)
def test_a_non_finite_balance_is_refused(field: str, value: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=f"{field} must be finite"):
        _decode(_with(LEAN_BALANCE, **{field: value}), AccountBalance)


def test_a_balance_without_its_account_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="account-number"):
        _decode(_with(LEAN_BALANCE, account_number=None), AccountBalance)


def test_lean_position_decodes() -> None:
    position = _decode(LEAN_POSITION, CurrentPosition)

    assert position.account_number == "5WT00000"
    assert position.instrument_type == "Equity"
    assert position.quantity == Decimal(100)
    assert position.signed_quantity == Decimal(100)
    assert position.close_price == Decimal("282.48")
    assert position.average_open_price == Decimal("288.7")
    assert position.multiplier == Decimal(1)
    assert position.cost_effect == "Credit"
    assert position.is_suppressed is False
    assert position.realized_day_gain_date == date(2022, 11, 1)
    assert position.created_at == datetime(2022, 8, 22, 17, 56, 51, 872000, tzinfo=UTC)
    assert position.mark is None


def test_a_short_position_keeps_a_positive_quantity() -> None:
    data = _with(
        LEAN_POSITION,
        quantity="3",
        quantity_direction="Short",
        realized_day_gain="-125.5",
        mark_price=5.25,
        updated_at=1688584052750,
    )

    position = _decode(data, CurrentPosition)

    assert position.quantity == 3
    assert position.signed_quantity == -3
    assert position.realized_day_gain == Decimal("-125.5")
    assert position.mark_price == Decimal("5.25")
    assert position.updated_at == datetime(2023, 7, 5, 19, 7, 32, 750000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"quantity": "-100"}, "quantity must be non-negative"),
        ({"restricted_quantity": "-1"}, "restricted_quantity must be non-negative"),
        ({"multiplier": -100}, "multiplier must be non-negative"),
        ({"close_price": "NaN"}, "close_price must be finite"),
        ({"realized_today": "Infinity"}, "realized_today must be finite"),
        ({"mark": "NaN"}, "mark must be finite"),
        ({"quantity": None}, "quantity"),
        ({"created_at": "not a time"}, "datetime"),
    ],
)
def test_invalid_positions_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        _decode(_with(LEAN_POSITION, **changes), CurrentPosition)


# -- quote alerts and watchlists ------------------------------------------------------


def test_quote_alert_decodes() -> None:
    alert = _decode(QUOTE_ALERT, QuoteAlert)

    assert alert.alert_external_id == "alert-1"
    assert alert.user_external_id == "U0001"
    assert (alert.field, alert.operator, alert.threshold) == ("Last", ">", "200.00")
    assert alert.threshold_numeric == Decimal("200.0")
    assert alert.dx_symbol == "AAPL"
    eastern = timezone(timedelta(hours=-4))
    assert alert.triggered_at == datetime(2026, 8, 3, 14, 30, tzinfo=eastern)
    assert alert.completed_at == datetime(2026, 8, 3, 14, 30, 0, 100000, tzinfo=eastern)
    assert alert.expires_at == datetime.fromtimestamp(1788595114.405, UTC)


@pytest.mark.parametrize(
    "wire",
    [1788595114405, "1788595114405", "2026-09-05T07:58:34.405+00:00", "2026-09-05T07:58:34.405"],
)
def test_quote_alert_expiry_accepts_epoch_ms_and_iso(wire: Any) -> None:
    alert = _decode(_with(QUOTE_ALERT, expires_at=wire), QuoteAlert)

    assert alert.expires_at == datetime(2026, 9, 5, 7, 58, 34, 405000, tzinfo=UTC)


def test_an_untriggered_quote_alert_decodes() -> None:
    data = _with(QUOTE_ALERT, triggered_at=None, completed_at=None, expires_at=None)

    alert = _decode(data, QuoteAlert)

    assert (alert.triggered_at, alert.completed_at, alert.expires_at) == (None, None, None)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"threshold_numeric": "NaN"}, "threshold_numeric must be finite"),
        ({"expires_at": "next week"}, "neither ISO-8601 nor epoch"),
        ({"expires_at": "99999999999999999999"}, "out of range"),
        ({"triggered_at": "soon"}, "datetime"),
        ({"alert_external_id": None}, "alert-external-id"),
    ],
)
def test_invalid_quote_alerts_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        _decode(_with(QUOTE_ALERT, **changes), QuoteAlert)


def test_public_watchlist_decodes() -> None:
    watchlist = _decode(PUBLIC_WATCHLIST, Watchlist)

    assert watchlist.name == "High Options Volume"
    assert watchlist.group_name == "tastytrade"
    assert watchlist.order_index == 3
    assert watchlist.watchlist_entries == (
        WatchlistEntry(symbol="AAPL", instrument_type="Equity"),
        WatchlistEntry(symbol="/ES", instrument_type="Future"),
    )


def test_watchlist_defaults_follow_the_sdk() -> None:
    bare = _decode({"name": "Empty"}, Watchlist)
    null = _decode({"name": "Null", "watchlist-entries": None}, Watchlist)

    assert (bare.watchlist_entries, bare.group_name, bare.order_index) == ((), "default", 9999)
    assert null.watchlist_entries == ()


def test_a_watchlist_entry_without_a_symbol_is_refused() -> None:
    data = _with(PUBLIC_WATCHLIST, watchlist_entries=[{"instrument-type": "Equity"}])

    with pytest.raises(msgspec.ValidationError, match="symbol"):
        _decode(data, Watchlist)


# -- the rarer messages ---------------------------------------------------------------


def test_external_transaction_decodes() -> None:
    data = {
        "id": 4711,
        "account-number": "5WT00000",
        "amount": "2500.00",
        "direction": "Incoming",
        "state": "Completed",
        "transfer-method": "ACH",
        "banking-date": "2026-08-03",
        "is-cancelable": False,
        "created-at": "2026-08-01T12:00:00.000+00:00",
        "updated-at": 1785931200000,
    }

    transaction = _decode(data, ExternalTransaction)

    assert transaction.amount == Decimal("2500.00")
    assert transaction.banking_date == date(2026, 8, 3)
    assert transaction.updated_at == datetime(2026, 8, 5, 12, tzinfo=UTC)
    with pytest.raises(msgspec.ValidationError, match="amount must be non-negative"):
        _decode(dict(data, amount="-1"), ExternalTransaction)


def test_trading_status_decodes() -> None:
    data = {
        "account-number": "5WT00000",
        "id": 1,
        "options-level": "Covered And Cash Secured",
        "is-pattern-day-trader": False,
        "day-trade-count": 2,
        "futures-margin-rate-multiplier": "1.0",
        "pdt-reset-on": "2026-09-01",
        "updated-at": "2026-08-01T12:00:00.000+00:00",
    }

    status = _decode(data, TradingStatus)

    assert status.options_level == "Covered And Cash Secured"
    assert status.day_trade_count == 2
    assert status.futures_margin_rate_multiplier == Decimal("1.0")
    assert status.is_in_margin_call is None
    with pytest.raises(msgspec.ValidationError, match="must be non-negative"):
        _decode(dict(data, **{"futures-margin-rate-multiplier": "-2"}), TradingStatus)


def test_underlying_year_gain_summary_decodes() -> None:
    data = {
        "year": 2026,
        "account-number": "5WT00000",
        "symbol": "AAPL",
        "instrument-type": "Equity",
        "fees": "1.25",
        "fees-effect": "Debit",
        "commissions": 0,
        "yearly-realized-gain": "-310.40",
        "realized-lot-gain": "12.5",
        "realized-lot-gain-effect": "Credit",
    }

    summary = _decode(data, UnderlyingYearGainSummary)

    assert summary.year == 2026
    assert summary.fees == Decimal("1.25")
    assert summary.yearly_realized_gain == Decimal("-310.40")
    with pytest.raises(msgspec.ValidationError, match="fees must be finite"):
        _decode(dict(data, fees="NaN"), UnderlyingYearGainSummary)


# -- the models themselves ------------------------------------------------------------


def test_models_are_frozen() -> None:
    order = _decode(DOC_ORDER, PlacedOrder)

    with pytest.raises(AttributeError):
        setattr(order, "status", "Cancelled")  # noqa: B010
    with pytest.raises(AttributeError):
        setattr(order.legs[0].fills[0], "quantity", Decimal(1))  # noqa: B010
    assert isinstance(order.legs, tuple)
    assert isinstance(order.legs[0].fills, tuple)


def test_only_models_holding_containers_are_tracked_by_the_gc() -> None:
    order = _decode(DOC_ORDER, PlacedOrder)
    complex_order = PlacedComplexOrder(account_number="5WT00000", type="OCO", orders=(order,))

    for tracked in (order, order.legs[0], complex_order, _decode(PUBLIC_WATCHLIST, Watchlist)):
        assert gc.is_tracked(tracked), type(tracked).__name__
    untracked = (
        order.legs[0].fills[0],
        _decode(LEAN_BALANCE, AccountBalance),
        _decode(LEAN_POSITION, CurrentPosition),
        _decode(QUOTE_ALERT, QuoteAlert),
        WatchlistEntry(symbol="AAPL"),
        ExternalTransaction(account_number="5WT00000"),
        TradingStatus(account_number="5WT00000"),
        UnderlyingYearGainSummary(account_number="5WT00000", symbol="AAPL", year=2026),
    )
    for model in untracked:
        assert not gc.is_tracked(model), type(model).__name__


def test_all_is_sorted_and_complete() -> None:
    public = {
        name
        for name, value in vars(models).items()
        if not name.startswith("_")
        and isinstance(value, type)
        and value.__module__ == models.__name__
    }

    assert models.__all__ == sorted(models.__all__)
    assert set(models.__all__) == public
