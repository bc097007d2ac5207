"""Unit tests of the client's pure parts: no network, no event loop, no sleeps.

Backoff, channels, the sans-I/O protocol module, the event models, the dispatch queues'
conflation, secret masking, the exception tree, the public exports and the client's
construction and registration API.
"""

from __future__ import annotations

import ast
import asyncio
import random
import re
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest

import agentstream
from agentstream import (
    AgentExchangeWS,
    AgentStreamError,
    AuthenticationError,
    Backoff,
    Candle,
    Channel,
    ConfigurationError,
    DecodeError,
    HandlerError,
    HandshakeError,
    OrderUpdate,
    Portfolio,
    ProtocolError,
    ServerError,
    StaleConnectionError,
    StreamConnectionError,
    Ticker,
)
from agentstream._dispatch import Slot, conflation_key_for
from agentstream._dispatch import first_param_model as _first_param_model
from agentstream._redact import mask_secret, mask_url
from agentstream.protocols import agentexchange as proto
from agentstream.protocols.agentexchange import KINDS
from agentstream.protocols.base import Ack, BadFrame, Data, Noise, Ping, Refused

LONG_KEY = "ak_live_SECRETSECRET123456"

# ---------------------------------------------------------------------------------------
# Backoff
# ---------------------------------------------------------------------------------------

BACKOFF_ENV = (
    "AGENTSTREAM_BACKOFF_INITIAL",
    "AGENTSTREAM_BACKOFF_MAX",
    "AGENTSTREAM_BACKOFF_FACTOR",
    "AGENTSTREAM_BACKOFF_JITTER",
)


def first_param_model(fn: Any) -> type[Any] | None:
    return _first_param_model(fn, [k.model for k in KINDS.values() if k.model])


def make_slot(channel: Channel, fn: Any, **kwargs: Any) -> Slot:
    """A handler's slot as the client makes it (conflated as its kind says)."""
    return Slot(channel, fn, conflate=conflation_key_for(KINDS[channel.kind]), **kwargs)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No agentstream variable leaks in from the developer's shell."""
    for name in (*BACKOFF_ENV, "AGENTSTREAM_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_backoff_schedule_doubles_to_the_cap() -> None:
    b = Backoff(jitter=0)
    assert [b.next() for _ in range(9)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_backoff_stays_capped_after_very_many_attempts() -> None:
    b = Backoff(jitter=0)
    delays = [b.next() for _ in range(500)]
    assert max(delays) == 60.0
    assert delays[-1] == 60.0


def test_backoff_jitter_stays_within_bounds() -> None:
    b = Backoff(initial=1, maximum=60, jitter=0.1, rng=random.Random(1234))
    seen_above_base = False
    for _ in range(2000):
        base = b.base(min(b.attempts, 64))
        delay = b.next()
        assert base <= delay <= base * 1.1, (base, delay)
        seen_above_base |= delay > base
        if b.attempts > 10:
            b.reset()
    assert seen_above_base, "jitter never added anything"


def test_backoff_jitter_is_deterministic_with_a_seeded_rng() -> None:
    a = Backoff(rng=random.Random(7))
    b = Backoff(rng=random.Random(7))
    assert [a.next() for _ in range(10)] == [b.next() for _ in range(10)]


def test_backoff_jitter_spreads_a_fleet() -> None:
    delays = {Backoff(rng=random.Random(seed)).next() for seed in range(50)}
    assert len(delays) > 40
    assert all(1.0 <= d <= 1.1 for d in delays)


def test_backoff_reset_starts_over() -> None:
    b = Backoff(jitter=0)
    for _ in range(5):
        b.next()
    assert b.attempts == 5
    b.reset()
    assert b.attempts == 0
    assert [b.next(), b.next()] == [1.0, 2.0]


def test_backoff_from_env_reads_the_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AGENTSTREAM_BACKOFF_INITIAL", "0.5")
    clean_env.setenv("AGENTSTREAM_BACKOFF_MAX", "8")
    clean_env.setenv("AGENTSTREAM_BACKOFF_FACTOR", "3")
    clean_env.setenv("AGENTSTREAM_BACKOFF_JITTER", "0")
    b = Backoff.from_env()
    assert (b.initial, b.maximum, b.factor, b.jitter) == (0.5, 8.0, 3.0, 0.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.5, 4.5, 8.0, 8.0]


def test_backoff_from_env_defaults(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AGENTSTREAM_BACKOFF_INITIAL", "")  # empty means unset
    b = Backoff.from_env()
    assert (b.initial, b.maximum, b.factor, b.jitter) == (1.0, 60.0, 2.0, 0.1)


def test_backoff_explicit_arguments_win_over_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AGENTSTREAM_BACKOFF_INITIAL", "0.5")
    clean_env.setenv("AGENTSTREAM_BACKOFF_MAX", "8")
    clean_env.setenv("AGENTSTREAM_BACKOFF_FACTOR", "3")
    clean_env.setenv("AGENTSTREAM_BACKOFF_JITTER", "0.5")
    b = Backoff.from_env(initial=2, maximum=30, factor=2, jitter=0)
    assert (b.initial, b.maximum, b.factor, b.jitter) == (2.0, 30.0, 2.0, 0.0)
    # Only the arguments given win; the rest still come from the environment.
    c = Backoff.from_env(jitter=0)
    assert (c.initial, c.maximum, c.factor, c.jitter) == (0.5, 8.0, 3.0, 0.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AGENTSTREAM_BACKOFF_INITIAL", "one"),
        ("AGENTSTREAM_BACKOFF_INITIAL", "-1"),
        ("AGENTSTREAM_BACKOFF_INITIAL", "100"),  # above the maximum
        ("AGENTSTREAM_BACKOFF_MAX", "1s"),
        ("AGENTSTREAM_BACKOFF_FACTOR", "0.5"),
        ("AGENTSTREAM_BACKOFF_FACTOR", "x2"),
        ("AGENTSTREAM_BACKOFF_JITTER", "2"),
        ("AGENTSTREAM_BACKOFF_JITTER", "-0.1"),
        ("AGENTSTREAM_BACKOFF_JITTER", "lots"),
    ],
)
def test_backoff_from_env_bad_values_raise(
    clean_env: pytest.MonkeyPatch, name: str, value: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ConfigurationError) as info:
        Backoff.from_env()
    if not value.lstrip("-").replace(".", "").isdigit():
        assert name in str(info.value)
    # The client validates its backoff at construction, not at the first reconnect.
    with pytest.raises(ConfigurationError):
        AgentExchangeWS(api_key=LONG_KEY, base_url="ws://localhost:1")


@pytest.mark.parametrize("name", BACKOFF_ENV[:3])
def test_backoff_from_env_nan_raises(clean_env: pytest.MonkeyPatch, name: str) -> None:
    """NaN passes every ``<``/``>`` check; it must be refused, not turned into NaN delays."""
    clean_env.setenv(name, "nan")
    try:
        b = Backoff.from_env()
    except ConfigurationError:
        return
    # It was accepted: show the harm, the delays it produces.
    pytest.fail(f"{name}=nan accepted; delays {[b.next() for _ in range(3)]}")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": -1},
        {"initial": 5, "maximum": 1},
        {"factor": 0.9},
        {"jitter": 1.5},
        {"jitter": -0.5},
    ],
)
def test_backoff_bad_arguments_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        Backoff(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# Channels
# ---------------------------------------------------------------------------------------


def test_channel_keys() -> None:
    assert Channel.ticker("btcusdt").key == "ticker:BTCUSDT"
    assert Channel.ticker(" ethusdt ").key == "ticker:ETHUSDT"
    assert Channel.ticker("all").key == "ticker:all"
    assert Channel.ticker("ALL").key == "ticker:all"
    assert Channel.candles("btcusdt", "1m").key == "candles:BTCUSDT:1m"
    assert Channel.orders().key == "orders"
    assert Channel.portfolio().key == "portfolio"
    assert str(Channel.candles("ETHUSDT", "4h")) == "candles:ETHUSDT:4h"


def test_channel_fields_and_privacy() -> None:
    c = Channel.candles("solusdt", "15m")
    assert (c.kind, c.symbol, c.interval) == ("candles", "SOLUSDT", "15m")
    assert not c.private
    assert not Channel.ticker("BTCUSDT").private
    assert Channel.orders().private
    assert Channel.portfolio().private


def test_channels_are_hashable_values() -> None:
    assert Channel.ticker("btcusdt") == Channel.ticker("BTCUSDT")
    assert len({Channel.ticker("btcusdt"), Channel.ticker("BTCUSDT"), Channel.orders()}) == 2


@pytest.mark.parametrize(
    "channel",
    [
        Channel.ticker("BTCUSDT"),
        Channel.ticker("all"),
        Channel.candles("ETHUSDT", "1m"),
        Channel.candles("ETHUSDT", "1d"),
        Channel.orders(),
        Channel.portfolio(),
    ],
    ids=str,
)
def test_channel_parse_round_trips(channel: Channel) -> None:
    assert Channel.parse(channel.key) == channel


def test_channel_parse_server_forms() -> None:
    assert Channel.parse("ticker_all") == Channel.ticker("all")
    assert Channel.parse("ticker:btcusdt") == Channel.ticker("BTCUSDT")
    assert Channel.parse("candles:btcusdt:5m") == Channel.candles("BTCUSDT", "5m")


@pytest.mark.parametrize(
    "key",
    ["", "tickers:BTCUSDT", "ticker", "ticker:A:B", "candles:BTCUSDT", "orders:X", "ticker_all:X"],
)
def test_channel_parse_rejects_unknown_keys(key: str) -> None:
    with pytest.raises(ConfigurationError):
        Channel.parse(key)


@pytest.mark.parametrize("interval", ["2m", "1M", "1H", "", "60s", "1w", "30m"])
def test_channel_invalid_interval(interval: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Channel.candles("BTCUSDT", interval)
    assert isinstance(info.value, ValueError)
    assert "1m, 5m, 15m, 1h, 4h, 1d" in str(info.value)


@pytest.mark.parametrize("interval", agentstream.INTERVALS)
def test_channel_valid_intervals(interval: str) -> None:
    assert Channel.candles("BTCUSDT", interval).interval == interval


@pytest.mark.parametrize("symbol", ["", "   ", "BTC/USDT", "BTC-USDT", "btc usdt", "ticker:X"])
def test_channel_invalid_symbols(symbol: str) -> None:
    with pytest.raises(ValueError, match="symbol"):
        Channel.ticker(symbol)
    with pytest.raises(ConfigurationError):
        Channel.candles(symbol, "1m")


def test_channel_symbol_must_be_a_string() -> None:
    with pytest.raises(ConfigurationError):
        Channel.ticker(123)  # type: ignore[arg-type]


def test_candles_of_all_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        Channel.candles("all", "1m")


def test_intervals_are_the_sdk_pages() -> None:
    assert agentstream.INTERVALS == ("1m", "5m", "15m", "1h", "4h", "1d")


# ---------------------------------------------------------------------------------------
# protocols.agentexchange
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("ws://localhost:8000", "ws://localhost:8000/ws/v1?api_key=K"),
        ("ws://localhost:8000/", "ws://localhost:8000/ws/v1?api_key=K"),
        ("http://localhost:8000", "ws://localhost:8000/ws/v1?api_key=K"),
        ("http://localhost:8000/", "ws://localhost:8000/ws/v1?api_key=K"),
        ("https://api.example.com", "wss://api.example.com/ws/v1?api_key=K"),
        ("https://api.example.com/", "wss://api.example.com/ws/v1?api_key=K"),
        ("wss://api.example.com", "wss://api.example.com/ws/v1?api_key=K"),
        ("ws://h:1/ws/v1", "ws://h:1/ws/v1?api_key=K"),
        ("ws://h:1/ws/v1/", "ws://h:1/ws/v1?api_key=K"),
        ("https://h/prefix", "wss://h/prefix/ws/v1?api_key=K"),
        ("  ws://h:1  ", "ws://h:1/ws/v1?api_key=K"),
    ],
)
def test_endpoint_url(base: str, url: str) -> None:
    assert proto.endpoint_url(base, "K") == url


@pytest.mark.parametrize(
    "base", ["ftp://h", "localhost:8000", "h:8000", "", "ws://", "http:///path", "//h:1"]
)
def test_endpoint_url_bad_base_raises(base: str) -> None:
    with pytest.raises(ConfigurationError):
        proto.endpoint_url(base, "K")


def test_endpoint_url_quotes_the_key() -> None:
    url = proto.endpoint_url("ws://h:1", "a b&c=d/é?#+")
    assert url == "ws://h:1/ws/v1?api_key=a%20b%26c%3Dd%2F%C3%A9%3F%23%2B"


@pytest.mark.parametrize(
    ("channel", "fields"),
    [
        (Channel.ticker("btcusdt"), '"channel":"ticker","symbol":"BTCUSDT"'),
        (Channel.ticker("all"), '"channel":"ticker_all"'),
        (
            Channel.candles("BTCUSDT", "1m"),
            '"channel":"candles","symbol":"BTCUSDT","interval":"1m"',
        ),
        (Channel.orders(), '"channel":"orders"'),
        (Channel.portfolio(), '"channel":"portfolio"'),
    ],
    ids=str,
)
def test_subscribe_and_unsubscribe_messages(channel: Channel, fields: str) -> None:
    assert proto.subscribe_message(channel) == '{"action":"subscribe",' + fields + "}"
    assert proto.unsubscribe_message(channel) == '{"action":"unsubscribe",' + fields + "}"


def test_pong_satisfies_both_spellings() -> None:
    pong = msgspec.json.decode(proto.PONG)
    assert pong == {"type": "pong", "action": "pong"}


def test_auth_codes() -> None:
    assert frozenset({401, 403}) == proto.AUTH_HTTP_STATUSES
    assert frozenset({4401, 1008}) == proto.AUTH_CLOSE_CODES


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("ticker_all", "ticker:all"),
        ("ticker:all", "ticker:all"),
        ("ticker:ALL", "ticker:all"),
        ("ticker:btcusdt", "ticker:BTCUSDT"),
        ("ticker:BTCUSDT", "ticker:BTCUSDT"),
        ("candles:ethusdt:1m", "candles:ETHUSDT:1m"),
        ("orders", "orders"),
        ("portfolio", "portfolio"),
        ("", None),
        (None, None),
    ],
)
def test_normalize_key(raw: str | None, key: str | None) -> None:
    assert proto.normalize_key(raw) == key


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"channel": "ticker", "symbol": "BTCUSDT"}, ("ticker", "BTCUSDT", None)),
        ({"channel": "ticker"}, None),
        (
            {"channel": "candles", "symbol": "BTCUSDT", "interval": "1m"},
            ("candles", "BTCUSDT", "1m"),
        ),
        ({"channel": "candles", "symbol": "BTCUSDT"}, None),
        ({"channel": "orders"}, ("orders", None, None)),
        ({"channel": "portfolio"}, ("portfolio", None, None)),
        ({"channel": "trades", "symbol": "BTCUSDT"}, None),
        ({}, None),
    ],
)
def test_classify_data_frames(fields: dict[str, str], expected: tuple[Any, ...] | None) -> None:
    frame = msgspec.json.encode({**fields, "data": {"x": 1}})
    got = proto.AgentExchangeProtocol("ws://h:1").classify(frame)
    if expected is None:
        assert isinstance(got, BadFrame)
    else:
        assert isinstance(got, Data)
        assert (got.kind, got.symbol, got.interval) == expected
        assert msgspec.json.decode(got.payload) == {"x": 1}


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ('{"type":"ping"}', Ping(proto.PONG)),
        ('{"type":"subscribed","channel":"ticker_all"}', Ack("ticker:all")),
        (
            '{"type":"unsubscribed","channel":"ticker:btcusdt"}',
            Ack("ticker:BTCUSDT", subscribed=False),
        ),
        (
            '{"type":"error","code":"INVALID_CHANNEL","message":"Channel \'candles\' requires ."}',
            Refused("INVALID_CHANNEL", "Channel 'candles' requires .", effect="invalid"),
        ),
        (
            '{"type":"error","code":"SUBSCRIPTION_LIMIT","message":"m","channel":"orders"}',
            Refused("SUBSCRIPTION_LIMIT", "m", "orders", effect="limit"),
        ),
        ('{"type":"error","code":"UNKNOWN_ACTION"}', Refused("UNKNOWN_ACTION", "", effect="none")),
        ('{"type":"error"}', Refused("UNKNOWN", "", effect="none")),
        ('{"type":"pong"}', Noise("pong")),
        ('{"type":"welcome"}', Noise("welcome")),
        ("not json", BadFrame("JSON is malformed: invalid character (byte 4)")),
    ],
)
def test_classify_control_frames(frame: str, expected: object) -> None:
    assert proto.AgentExchangeProtocol("ws://h:1").classify(frame) == expected


def _env(frame: str) -> proto.Envelope:
    return proto.envelope_decoder.decode(frame)


def test_envelope_control_messages() -> None:
    env = _env('{"type":"subscribed","channel":"ticker:BTCUSDT"}')
    assert (env.type, env.channel, bytes(env.data)) == ("subscribed", "ticker:BTCUSDT", b"")
    env = _env('{"type":"unsubscribed","channel":"ticker:BTCUSDT"}')
    assert (env.type, env.channel) == ("unsubscribed", "ticker:BTCUSDT")
    env = _env('{"type":"ping"}')
    assert (env.type, env.channel, env.code) == ("ping", None, None)
    for code in ("INVALID_CHANNEL", "SUBSCRIPTION_LIMIT", "UNKNOWN_ACTION"):
        env = _env('{"type":"error","code":"' + code + '","message":"nope"}')
        assert (env.type, env.code, env.message) == ("error", code, "nope")


TICKER_FRAME = (
    '{"channel":"ticker","symbol":"BTCUSDT",'
    '"data":{"price":"64521.30","quantity":"0.012",'
    '"timestamp":"2026-02-23T15:30:45.123Z","is_buyer_maker":false}}'
)
CANDLE_FRAME = (
    '{"channel":"candles","symbol":"BTCUSDT","interval":"1m",'
    '"data":{"time":"2026-02-23T15:30:00Z","open":"64500.00","high":"64550.00",'
    '"low":"64490.00","close":"64521.30","volume":"12.345","is_closed":false}}'
)
ORDER_FRAME = (
    '{"channel":"orders",'
    '"data":{"order_id":"660e8400-e29b-41d4-a716-446655440000","status":"filled",'
    '"symbol":"BTCUSDT","side":"buy","type":"market","quantity":"0.50",'
    '"executed_price":"64521.30","executed_quantity":"0.50",'
    '"fee":"32.26","filled_at":"2026-02-23T15:30:45.456Z"}}'
)
PORTFOLIO_FRAME = (
    '{"channel":"portfolio",'
    '"data":{"total_equity":"12458.30","unrealized_pnl":"660.65",'
    '"realized_pnl":"1241.30","available_cash":"5000.00",'
    '"timestamp":"2026-02-23T15:30:45Z"}}'
)


@pytest.mark.parametrize(
    ("frame", "key", "first_field"),
    [
        (TICKER_FRAME, "ticker:BTCUSDT", ("price", "64521.30")),
        (CANDLE_FRAME, "candles:BTCUSDT:1m", ("close", "64521.30")),
        (ORDER_FRAME, "orders", ("status", "filled")),
        (PORTFOLIO_FRAME, "portfolio", ("total_equity", "12458.30")),
    ],
)
def test_envelope_data_messages(frame: str, key: str, first_field: tuple[str, str]) -> None:
    env = _env(frame)
    assert env.type is None
    got = proto.AgentExchangeProtocol("ws://h:1").classify(frame)
    assert isinstance(got, Data)
    assert Channel.parse(":".join(p for p in (got.kind, got.symbol, got.interval) if p)).key == key
    data = msgspec.json.decode(env.data)
    assert data == msgspec.json.decode(frame)["data"]
    name, value = first_field
    assert data[name] == value


@pytest.mark.parametrize("frame", ["not json", "[1,2]", '"ping"', '{"type":1}', "{"])
def test_envelope_rejects_garbage(frame: str) -> None:
    with pytest.raises(msgspec.DecodeError):
        _env(frame)


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------


def _ticker(*, price: str = '"1"', timestamp: str = '"2026-02-23T15:30:45Z"') -> bytes:
    """A ticker data object with the given JSON values of ``price`` and ``timestamp``."""
    return ('{"price":' + price + ',"timestamp":' + timestamp + "}").encode()


def _data(frame: str) -> bytes:
    return bytes(_env(frame).data)


def test_ticker_from_the_protocol_example() -> None:
    t = msgspec.json.decode(_data(TICKER_FRAME), type=Ticker)
    assert t.price == Decimal("64521.30")
    assert str(t.price) == "64521.30"  # decimal places are kept
    assert t.quantity == Decimal("0.012")
    assert t.is_buyer_maker is False
    assert t.timestamp == datetime(2026, 2, 23, 15, 30, 45, 123000, tzinfo=UTC)
    assert t.symbol == ""  # the symbol is on the envelope; the client sets it


def test_candle_from_the_protocol_example_with_time() -> None:
    c = msgspec.json.decode(_data(CANDLE_FRAME), type=Candle)
    start = datetime(2026, 2, 23, 15, 30, tzinfo=UTC)
    assert c.open_time == start
    assert c.time == start
    assert (c.open, c.high, c.low, c.close) == tuple(
        Decimal(x) for x in ("64500.00", "64550.00", "64490.00", "64521.30")
    )
    assert c.volume == Decimal("12.345")
    assert c.is_closed is False


def test_candle_with_open_time_as_the_sdk_page_names_it() -> None:
    raw = (
        b'{"symbol":"ETHUSDT","interval":"1h","open_time":"2026-02-23T15:00:00Z",'
        b'"open":"1","high":"2","low":"0.5","close":"1.5","volume":"0","is_closed":true}'
    )
    c = msgspec.json.decode(raw, type=Candle)
    start = datetime(2026, 2, 23, 15, tzinfo=UTC)
    assert (c.open_time, c.time) == (start, start)
    assert (c.symbol, c.interval, c.is_closed) == ("ETHUSDT", "1h", True)


def test_candle_needs_a_time() -> None:
    raw = b'{"open":"1","high":"2","low":"0.5","close":"1.5","volume":"0"}'
    with pytest.raises(msgspec.ValidationError, match="time"):
        msgspec.json.decode(raw, type=Candle)


def test_order_update_with_every_field() -> None:
    o = msgspec.json.decode(_data(ORDER_FRAME), type=OrderUpdate)
    assert o.order_id == "660e8400-e29b-41d4-a716-446655440000"
    assert (o.status, o.symbol, o.side, o.type) == ("filled", "BTCUSDT", "buy", "market")
    assert o.quantity == Decimal("0.50")
    assert o.executed_price == Decimal("64521.30")
    assert o.executed_quantity == Decimal("0.50")
    assert o.fee == Decimal("32.26")
    assert o.filled_at == datetime(2026, 2, 23, 15, 30, 45, 456000, tzinfo=UTC)
    assert (o.price, o.cancelled_at, o.rejected_reason) == (None, None, None)


def test_order_update_without_optional_fields() -> None:
    raw = (
        b'{"order_id":"o-1","status":"pending","symbol":"ETHUSDT","side":"sell",'
        b'"type":"limit","quantity":"2"}'
    )
    o = msgspec.json.decode(raw, type=OrderUpdate)
    assert (o.order_id, o.status, o.type, o.quantity) == ("o-1", "pending", "limit", Decimal(2))
    for name in (
        "price",
        "executed_price",
        "executed_quantity",
        "fee",
        "filled_at",
        "cancelled_at",
        "rejected_reason",
    ):
        assert getattr(o, name) is None, name


def test_order_update_cancelled_and_rejected() -> None:
    raw = (
        b'{"order_id":"o-2","status":"cancelled","symbol":"ETHUSDT","side":"buy",'
        b'"type":"limit","quantity":"1","price":"1800.5","cancelled_at":1771860645000}'
    )
    o = msgspec.json.decode(raw, type=OrderUpdate)
    assert o.price == Decimal("1800.5")
    assert o.cancelled_at == datetime(2026, 2, 23, 15, 30, 45, tzinfo=UTC)
    raw = (
        b'{"order_id":"o-3","status":"rejected","symbol":"ETHUSDT","side":"buy",'
        b'"type":"market","quantity":"1","rejected_reason":"INSUFFICIENT_BALANCE"}'
    )
    assert msgspec.json.decode(raw, type=OrderUpdate).rejected_reason == "INSUFFICIENT_BALANCE"


def test_portfolio_without_roi_pct() -> None:
    p = msgspec.json.decode(_data(PORTFOLIO_FRAME), type=Portfolio)
    assert p.total_equity == Decimal("12458.30")
    assert p.unrealized_pnl == Decimal("660.65")
    assert p.realized_pnl == Decimal("1241.30")
    assert p.available_cash == Decimal("5000.00")
    assert p.roi_pct is None
    assert p.timestamp == datetime(2026, 2, 23, 15, 30, 45, tzinfo=UTC)


def test_portfolio_with_roi_pct_and_losses() -> None:
    raw = (
        b'{"total_equity":"9500","available_cash":"100","unrealized_pnl":"-400.5",'
        b'"realized_pnl":"-99.5","roi_pct":"-5.00"}'
    )
    p = msgspec.json.decode(raw, type=Portfolio)
    assert p.roi_pct == Decimal("-5.00")
    assert p.unrealized_pnl == Decimal("-400.5")  # losses are negative, and allowed
    assert p.timestamp is None


EXPECTED_TS = datetime(2026, 2, 23, 15, 30, 45, 123000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("1771860645123", EXPECTED_TS),  # epoch milliseconds
        ("1771860645", EXPECTED_TS.replace(microsecond=0)),  # epoch seconds
        ('"2026-02-23T15:30:45.123Z"', EXPECTED_TS),
        ('"2026-02-23T15:30:45.123+00:00"', EXPECTED_TS),
        ('"2026-02-23T16:30:45.123+01:00"', EXPECTED_TS),
        ('"2026-02-23T15:30:45.123000000Z"', EXPECTED_TS),
    ],
)
def test_timestamps_become_aware_utc_datetimes(ts: str, expected: datetime) -> None:
    t = msgspec.json.decode(_ticker(timestamp=ts), type=Ticker)
    assert isinstance(t.timestamp, datetime)
    assert t.timestamp.tzinfo is not None
    assert t.timestamp == expected
    if not ts.startswith('"'):
        assert t.timestamp.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("model", "name", "field"),
    [
        (OrderUpdate, "filled_at", "filled_at"),
        (OrderUpdate, "cancelled_at", "cancelled_at"),
        (Portfolio, "timestamp", "timestamp"),
        (Candle, "time", "open_time"),
        (Candle, "open_time", "time"),
    ],
)
def test_epoch_integers_in_every_model(model: type[Any], name: str, field: str) -> None:
    fields = {k: v for k, v in REQUIRED[model].items() if k != "time"}
    fields[name] = 1771860645123
    ev = msgspec.json.decode(msgspec.json.encode(fields), type=model)
    for attr in (name, field):
        value = getattr(ev, attr)
        assert value == EXPECTED_TS
        assert value.utcoffset() == timedelta(0)


def test_iso_timestamps_without_offset_are_utc_or_refused() -> None:
    """models.py promises aware datetimes; a naive one breaks comparisons with aware ones."""
    raw = _ticker(timestamp='"2026-02-23T15:30:45"')
    try:
        t = msgspec.json.decode(raw, type=Ticker)
    except msgspec.ValidationError:
        return
    assert t.timestamp.tzinfo is not None, f"naive datetime {t.timestamp!r}"
    assert t.timestamp == EXPECTED_TS.replace(microsecond=0)


def test_nanosecond_iso_timestamps_parse() -> None:
    raw = b'{"price":"1","timestamp":"2026-02-23T15:30:45.123456789Z"}'
    t = msgspec.json.decode(raw, type=Ticker)
    assert t.timestamp.replace(microsecond=0) == datetime(2026, 2, 23, 15, 30, 45, tzinfo=UTC)
    assert t.timestamp.microsecond in (123456, 123457)  # truncated or rounded


@pytest.mark.parametrize("ts", ["10**20", "10**25", "-(10**25)"])
def test_absurd_epoch_integers_are_validation_errors(ts: str) -> None:
    """The client only catches msgspec errors while decoding: anything else kills it."""
    raw = _ticker(timestamp=str(eval(ts)))
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw, type=Ticker)


@pytest.mark.parametrize("ts", ['"yesterday"', '"2026-02-30T00:00:00Z"', "1.5", "null", "true"])
def test_bad_timestamps_raise(ts: str) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(_ticker(timestamp=ts), type=Ticker)


@pytest.mark.parametrize("price", ['"NaN"', '"nan"', '"sNaN"', '"Infinity"', '"-Infinity"'])
def test_non_finite_prices_raise(price: str) -> None:
    raw = _ticker(price=price)
    with pytest.raises(msgspec.ValidationError, match="finite"):
        msgspec.json.decode(raw, type=Ticker)


@pytest.mark.parametrize("price", ['"-1"', '"0"', '"0.00"', '"-0"', '"-64521.30"'])
def test_zero_and_negative_prices_raise(price: str) -> None:
    raw = _ticker(price=price)
    with pytest.raises(msgspec.ValidationError, match="positive"):
        msgspec.json.decode(raw, type=Ticker)


def test_negative_quantity_raises() -> None:
    raw = b'{"price":"1","quantity":"-0.1","timestamp":"2026-02-23T15:30:45Z"}'
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw, type=Ticker)


CANDLE_OK = {
    "time": "2026-02-23T15:30:00Z",
    "open": "10",
    "high": "12",
    "low": "9",
    "close": "11",
    "volume": "1",
}


@pytest.mark.parametrize(
    "change",
    [
        {"low": "13"},  # low above high
        {"high": "NaN"},
        {"close": "Infinity"},
        {"open": "-1"},
        {"low": "0"},
        {"volume": "-1"},
        {"volume": "NaN"},
    ],
)
def test_bad_candles_raise(change: dict[str, str]) -> None:
    raw = msgspec.json.encode({**CANDLE_OK, **change})
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw, type=Candle)


def test_ok_candle_baseline() -> None:
    c = msgspec.json.decode(msgspec.json.encode(CANDLE_OK), type=Candle)
    assert (c.low, c.high) == (Decimal(9), Decimal(12))


REQUIRED: dict[type[Any], dict[str, Any]] = {
    Ticker: {"price": "1", "timestamp": "2026-02-23T15:30:45Z"},
    Candle: CANDLE_OK,
    OrderUpdate: {
        "order_id": "o",
        "status": "open",
        "symbol": "X",
        "side": "buy",
        "type": "market",
        "quantity": "1",
    },
    Portfolio: {
        "total_equity": "1",
        "available_cash": "1",
        "unrealized_pnl": "0",
        "realized_pnl": "0",
    },
}


@pytest.mark.parametrize(
    ("model", "missing"),
    [(model, name) for model, fields in REQUIRED.items() for name in fields],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_missing_required_fields_raise(model: type[Any], missing: str) -> None:
    complete = REQUIRED[model]
    msgspec.json.decode(msgspec.json.encode(complete), type=model)  # the baseline decodes
    fields = {k: v for k, v in complete.items() if k != missing}
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(fields), type=model)


def test_empty_order_id_raises() -> None:
    fields = {**REQUIRED[OrderUpdate], "order_id": ""}
    with pytest.raises(msgspec.ValidationError, match="order_id"):
        msgspec.json.decode(msgspec.json.encode(fields), type=OrderUpdate)


@pytest.mark.parametrize(
    "name", ["total_equity", "available_cash", "unrealized_pnl", "realized_pnl", "roi_pct"]
)
def test_portfolio_non_finite_raises(name: str) -> None:
    fields = {
        "total_equity": "1",
        "available_cash": "1",
        "unrealized_pnl": "0",
        "realized_pnl": "0",
        "roi_pct": "0",
        name: "NaN",
    }
    with pytest.raises(msgspec.ValidationError, match="finite"):
        msgspec.json.decode(msgspec.json.encode(fields), type=Portfolio)


def test_amounts_as_json_numbers_still_decode_to_decimal() -> None:
    t = msgspec.json.decode(b'{"price":64521.3,"timestamp":1}', type=Ticker)
    assert t.price == Decimal("64521.3")


def test_models_are_frozen() -> None:
    t = msgspec.json.decode(_data(TICKER_FRAME), type=Ticker)
    c = msgspec.json.decode(_data(CANDLE_FRAME), type=Candle)
    o = msgspec.json.decode(_data(ORDER_FRAME), type=OrderUpdate)
    p = msgspec.json.decode(_data(PORTFOLIO_FRAME), type=Portfolio)
    for ev, name, value in (
        (t, "price", Decimal(1)),
        (c, "close", Decimal(1)),
        (o, "status", "open"),
        (p, "total_equity", Decimal(1)),
    ):
        with pytest.raises(AttributeError):
            setattr(ev, name, value)
    assert hash(t) == hash(msgspec.json.decode(_data(TICKER_FRAME), type=Ticker))


# ---------------------------------------------------------------------------------------
# _dispatch: slots, conflation, model detection
# ---------------------------------------------------------------------------------------


def _tick(seq: int, symbol: str) -> dict[str, Any]:
    return {"symbol": symbol, "price": str(seq), "seq": seq}


def behind(slot: Slot) -> Slot:
    """The slot's handler counts as behind as soon as one event waits (not after 5 ms)."""
    assert slot.latest
    slot.behind_after = 0.0
    return slot


def pending(slot: Slot) -> list[int]:
    return [ev["seq"] for ev in slot.queue]


def test_slot_of_a_handler_that_keeps_up_queues_every_event() -> None:
    slot = make_slot(Channel.ticker("BTCUSDT"), lambda d: None, model=None)
    for seq in range(5):  # one read's worth: the handler has had no turn yet
        slot.push(_tick(seq, "BTCUSDT"))
    assert pending(slot) == [0, 1, 2, 3, 4]
    assert slot.conflated == 0


def test_slot_behind_for_5_ms_keeps_the_newest_per_symbol_from_then_on() -> None:
    slot = make_slot(Channel.ticker("all"), lambda d: None, model=None)
    for seq in range(4):
        slot.push(_tick(seq, "AUSDT" if seq % 2 else "BUSDT"))
    time.sleep(0.006)  # the queue has not been empty for more than 5 ms
    slot.push(_tick(4, "BUSDT"))
    # The older pending events of each symbol went; B's newest (4) took B's first turn.
    assert pending(slot) == [4, 3]
    assert slot.conflated == 3
    while slot.queue:
        slot.queue.popleft()
    for seq in range(5, 8):  # empty again: not behind any more
        slot.push(_tick(seq, "BUSDT"))
    assert pending(slot) == [5, 6, 7]


def test_slot_behind_keeps_at_most_two_per_symbol_the_newest_among_them() -> None:
    slot = behind(make_slot(Channel.ticker("all"), lambda d: None, model=None))
    symbols = ["AUSDT", "BUSDT", "CUSDT"]
    n = 1000
    for seq in range(n):
        slot.push(_tick(seq, symbols[seq % 3]))
        by_symbol = [ev["symbol"] for ev in slot.queue]
        assert max(by_symbol.count(sym) for sym in symbols) <= 2
    seqs = pending(slot)
    for sym in symbols:  # a symbol's events never reordered
        mine = [ev["seq"] for ev in slot.queue if ev["symbol"] == sym]
        assert mine == sorted(mine)
    assert {n - 3, n - 2, n - 1} <= set(seqs)  # the newest of each symbol is there
    assert slot.conflated + len(seqs) == n  # everything else was counted


def test_slot_behind_on_one_symbol_holds_only_its_newest() -> None:
    slot = behind(make_slot(Channel.ticker("BTCUSDT"), lambda d: None, model=None))
    for seq in range(20):
        slot.push(_tick(seq, "BTCUSDT"))
        assert pending(slot) == [seq]  # whenever the handler looks: the newest, alone
    assert slot.conflated == 19


def test_slot_keeps_every_symbol_it_saw() -> None:
    slot = behind(make_slot(Channel.ticker("all"), lambda d: None, model=Ticker))
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    for seq in range(3000):
        slot.push(Ticker(symbol=f"S{seq % 700}USDT", price=Decimal(seq + 1), timestamp=ts))
    newest: dict[str, Decimal] = {}
    for t in slot.queue:
        newest[t.symbol] = t.price
    assert len(newest) == 700  # no symbol lost, however many there are
    assert all(int(price) > 3000 - 700 for price in newest.values())  # each its newest
    assert len(slot.queue) <= 2 * 700
    assert slot.conflated + len(slot.queue) == 3000


def test_slot_behind_serves_symbols_round_robin_not_the_quiet_ones_first() -> None:
    # A slow ticker:all handler: BTC changes all the time, ETH once. BTC keeps the turn of
    # its first pending event (with its newest price), so it is not pushed behind ETH.
    slot = behind(make_slot(Channel.ticker("all"), lambda d: None, model=None))
    slot.push(_tick(0, "BTCUSDT"))
    slot.push(_tick(1, "ETHUSDT"))
    for seq in range(2, 50):
        slot.push(_tick(seq, "BTCUSDT"))
    first = slot.queue.popleft()
    assert first["symbol"] == "BTCUSDT"
    newer_btc = [ev["seq"] for ev in slot.queue if ev["symbol"] == "BTCUSDT"]
    assert all(seq > first["seq"] for seq in newer_btc)  # and never older than it
    assert first["seq"] >= 25  # the newest as of the last pass, not the first tick


def test_slot_closed_candle_is_never_overtaken_by_the_next_candles_updates() -> None:
    slot = behind(
        make_slot(Channel.candles("BTCUSDT", "1m"), lambda d: None, model=None, partial=True)
    )
    events = [_candle(i, closed=i in (3, 7)) for i in range(12)]
    for ev in events:
        slot.push(ev)
    seqs = pending(slot)
    assert 3 in seqs and 7 in seqs  # closed candles are never dropped
    assert seqs == sorted(seqs)  # and nothing moves ahead of them
    assert seqs[-1] == 11
    assert slot.conflated + len(seqs) == 12
    assert slot.conflated > 0


def test_slot_every_keeps_every_event_below_its_bound() -> None:
    slot = make_slot(Channel.ticker("BTCUSDT"), lambda d: None, model=None, every=True)
    for seq in range(500):
        slot.push(_tick(seq, "BTCUSDT"))
    assert [ev["seq"] for ev in slot.queue] == list(range(500))
    assert slot.conflated == 0


def test_every_slot_conflates_to_the_newest_per_symbol() -> None:
    slot = make_slot(Channel.ticker("all"), lambda d: None, model=None, max_queue=10, every=True)
    symbols = ["AUSDT", "BUSDT", "CUSDT"]
    for seq in range(11):
        slot.push(_tick(seq, symbols[seq % 3]))
    # The 11th push found 10 queued: only the newest of each symbol (7, 8, 9) survived,
    # in their order, then the 11th was appended.
    assert [ev["seq"] for ev in slot.queue] == [7, 8, 9, 10]
    assert slot.conflated == 7


def test_every_slot_conflation_over_many_pushes() -> None:
    slot = make_slot(Channel.ticker("all"), lambda d: None, model=None, max_queue=10, every=True)
    symbols = ["AUSDT", "BUSDT", "CUSDT"]
    n = 1000
    for seq in range(n):
        slot.push(_tick(seq, symbols[seq % 3]))
    seqs = [ev["seq"] for ev in slot.queue]
    assert len(seqs) <= 10
    assert seqs == sorted(seqs)  # order preserved
    assert seqs[-3:] == [n - 3, n - 2, n - 1]  # the newest of each symbol survived
    assert slot.conflated + len(seqs) == n  # everything else was counted


def test_every_slot_conflates_typed_tickers() -> None:
    slot = make_slot(Channel.ticker("all"), lambda d: None, model=Ticker, max_queue=4, every=True)
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    for seq in range(1, 6):
        slot.push(Ticker(symbol="XUSDT" if seq % 2 else "YUSDT", price=Decimal(seq), timestamp=ts))
    # The 5th push found 4 queued: X1 and Y2 were replaced by X3 and Y4.
    assert [(t.symbol, t.price) for t in slot.queue] == [
        ("XUSDT", Decimal(3)),
        ("YUSDT", Decimal(4)),
        ("XUSDT", Decimal(5)),
    ]
    assert slot.conflated == 2


def test_every_slot_never_loses_the_only_event_of_a_symbol() -> None:
    slot = make_slot(Channel.ticker("all"), lambda d: None, model=None, max_queue=10, every=True)
    for seq in range(25):
        slot.push(_tick(seq, f"S{seq}USDT"))
    assert [ev["seq"] for ev in slot.queue] == list(range(25))
    assert slot.conflated == 0


def _candle(seq: int, closed: bool, symbol: str = "BTCUSDT") -> dict[str, Any]:
    return {"symbol": symbol, "interval": "1m", "close": str(seq), "is_closed": closed, "seq": seq}


def test_every_slot_never_conflates_closed_candles() -> None:
    slot = make_slot(
        Channel.candles("BTCUSDT", "1m"), lambda d: None, model=None, max_queue=5, every=True
    )
    for seq in range(40):
        slot.push(_candle(seq, closed=True))
    assert [ev["seq"] for ev in slot.queue] == list(range(40))
    assert slot.conflated == 0


def test_every_slot_conflates_forming_candles_but_keeps_closed_ones() -> None:
    slot = make_slot(
        Channel.candles("BTCUSDT", "1m"),
        lambda d: None,
        model=None,
        partial=True,
        max_queue=6,
        every=True,
    )
    events = [_candle(i, closed=i in (3, 7)) for i in range(10)]
    for ev in events:
        slot.push(ev)
    seqs = [ev["seq"] for ev in slot.queue]
    assert 3 in seqs
    assert 7 in seqs
    assert seqs == sorted(seqs)
    assert seqs[-1] == 9
    assert slot.conflated == 10 - len(seqs)
    assert slot.conflated > 0


def test_orders_slot_never_drops() -> None:
    slot = make_slot(Channel.orders(), lambda d: None, model=None, max_queue=10)
    for i in range(50_000):
        slot.push({"order_id": str(i), "status": "filled", "symbol": "BTCUSDT"})
    assert len(slot.queue) == 50_000
    assert slot.conflated == 0
    assert slot.queue[0]["order_id"] == "0"
    assert slot.queue[-1]["order_id"] == "49999"


def test_portfolio_slot_never_drops() -> None:
    slot = make_slot(Channel.portfolio(), lambda d: None, model=None, max_queue=3)
    for i in range(100):
        slot.push({"total_equity": str(i)})
    assert [ev["total_equity"] for ev in slot.queue] == [str(i) for i in range(100)]
    assert slot.conflated == 0


async def _noop_async(d: dict[str, Any]) -> None: ...


def test_slot_push_wakes_the_worker() -> None:
    slot = make_slot(Channel.orders(), _noop_async, model=None)
    assert not slot.wake.is_set()
    slot.push({"order_id": "1"})
    assert slot.wake.is_set()


@pytest.mark.anyio
async def test_sync_slot_drains_from_the_loop_in_order() -> None:
    got: list[int] = []
    slot = make_slot(Channel.orders(), got.append, model=None)
    assert slot.inline
    slot.bind_loop()
    for i in range(1000):
        slot.push(i)
    assert got == []  # nothing runs inside push: the reader never runs user code
    while slot.queue:
        await anyio.lowlevel.checkpoint()
    assert got == list(range(1000))
    slot.cancel()
    slot.push(1000)
    await anyio.sleep(0.01)
    assert got[-1] == 999  # a stopped slot runs nothing more


def _h_ticker(t: Ticker) -> None: ...
def _h_candle(c: Candle, extra: int = 0) -> None: ...
async def _h_order(o: OrderUpdate) -> None: ...
def _h_portfolio(p: Portfolio) -> None: ...
def _h_dict(d: dict[str, Any]) -> None: ...
def _h_plain(d): ...
def _h_none() -> None: ...
def _h_optional(t: Ticker | None) -> None: ...


class _Handlers:
    def method(self, t: Ticker) -> None: ...

    async def __call__(self, c: Candle) -> None: ...


@pytest.mark.parametrize(
    ("fn", "model"),
    [
        (_h_ticker, Ticker),
        (_h_candle, Candle),
        (_h_order, OrderUpdate),
        (_h_portfolio, Portfolio),
        (_h_dict, None),
        (_h_plain, None),
        (_h_none, None),
        (_h_optional, None),
        (_Handlers().method, Ticker),
        (_Handlers(), Candle),
        (print, None),
    ],
    ids=lambda v: getattr(v, "__qualname__", None) or type(v).__name__,
)
def test_first_param_model(fn: Any, model: type[Any] | None) -> None:
    # This module uses `from __future__ import annotations`: every annotation above is a
    # string, which first_param_model must resolve.
    assert first_param_model(fn) is model


def test_first_param_model_with_real_annotations() -> None:
    def h(t):
        pass

    h.__annotations__ = {"t": Portfolio}
    assert first_param_model(h) is Portfolio
    assert first_param_model(lambda x: None) is None


def test_first_param_model_tolerates_unresolvable_later_annotations() -> None:
    """Another parameter's annotation that does not resolve must not hide the model."""

    def h(t: Ticker, ctx: UndefinedName | None = None) -> None:  # type: ignore[name-defined]  # noqa: F821
        pass

    assert first_param_model(h) is Ticker


# ---------------------------------------------------------------------------------------
# _redact
# ---------------------------------------------------------------------------------------


def test_mask_secret() -> None:
    assert mask_secret("ak_live_0123456789abcdef") == "ak_l…def"
    assert mask_secret(LONG_KEY) == "ak_l…456"
    assert mask_secret("short") == "***"
    assert mask_secret("") == "***"
    assert mask_secret("x" * 11) == "***"
    assert mask_secret("abcdefghijkl") == "abcd…jkl"
    assert "SECRETSECRET" not in mask_secret(LONG_KEY)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "ws://localhost:8000/ws/v1?api_key=ak_live_0123456789abcdef",
            "ws://localhost:8000/ws/v1?api_key=***",
        ),
        ("wss://h/ws/v1?x=1&api_key=SECRET&y=2", "wss://h/ws/v1?x=1&api_key=***&y=2"),
        ("wss://h/ws/v1?API_KEY=SECRET#frag", "wss://h/ws/v1?API_KEY=***#frag"),
        ("wss://h/?token=abc&apikey=def", "wss://h/?token=***&apikey=***"),
        ("wss://h/ws/v1?api_key=a%20b%26c", "wss://h/ws/v1?api_key=***"),
        ("ws://h/ws/v1", "ws://h/ws/v1"),
        (
            "cannot connect to ws://h/ws/v1?api_key=SECRET (refused)",
            "cannot connect to ws://h/ws/v1?api_key=*** (refused)",
        ),
        # The password of the user info (Redis URLs carry theirs there).
        ("redis://bot:SECRET@127.0.0.1:6379/0", "redis://bot:***@127.0.0.1:6379/0"),
        ("rediss://:SECRET@h:6380", "rediss://:***@h:6380"),
        ("rediss://:SEC@RET@h:6380/1", "rediss://:***@h:6380/1"),
        ("http://user:SECRET@h/x?token=abc", "http://user:***@h/x?token=***"),
        ("redis://h:6379/0?password=SECRET&db=1", "redis://h:6379/0?password=***&db=1"),
        ("redis://bot@h:6379/0", "redis://bot@h:6379/0"),  # a user name, no password
        ("ws://h:8000/ws?email=a@b", "ws://h:8000/ws?email=a@b"),
        (
            "redis redis://:SECRET@127.0.0.1:1/0: Connection refused",
            "redis redis://:***@127.0.0.1:1/0: Connection refused",
        ),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_url_inside_reprs_hides_the_key() -> None:
    text = f"url=URL({proto.endpoint_url('ws://h:1', LONG_KEY)!r}), status=503"
    assert LONG_KEY in text
    assert LONG_KEY not in mask_url(text)
    assert "SECRET" not in mask_url(text)


def test_mask_url_of_a_real_endpoint_hides_the_key() -> None:
    url = proto.endpoint_url("https://api.example.com", LONG_KEY)
    assert LONG_KEY in url
    assert LONG_KEY not in mask_url(url)
    assert mask_url(url) == "wss://api.example.com/ws/v1?api_key=***"


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------


def test_error_tree() -> None:
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(StaleConnectionError, TimeoutError)
    assert issubclass(StaleConnectionError, StreamConnectionError)
    assert issubclass(StreamConnectionError, ConnectionError)
    assert issubclass(HandshakeError, StreamConnectionError)
    assert issubclass(DecodeError, ValueError)
    assert issubclass(DecodeError, ProtocolError)
    assert not issubclass(AuthenticationError, StreamConnectionError)  # fatal, not retried
    for cls in (
        ConfigurationError,
        AuthenticationError,
        StreamConnectionError,
        HandshakeError,
        StaleConnectionError,
        ProtocolError,
        DecodeError,
        ServerError,
        HandlerError,
    ):
        assert issubclass(cls, AgentStreamError), cls
        assert issubclass(cls, Exception)


def test_error_attributes() -> None:
    e = AuthenticationError("no", status=403)
    assert (e.status, e.close_code, str(e)) == (403, None, "no")
    assert AuthenticationError("no", close_code=4401).close_code == 4401
    h = HandshakeError("503", status=503)
    assert h.status == 503
    d = DecodeError("bad", frame="{x")
    assert d.frame == "{x"
    s = ServerError("INVALID_CHANNEL", "bad symbol", channel="ticker:NOPE")
    assert (s.code, s.server_message, s.channel) == ("INVALID_CHANNEL", "bad symbol", "ticker:NOPE")
    assert str(s) == "INVALID_CHANNEL (ticker:NOPE): bad symbol"
    assert str(ServerError("UNKNOWN_ACTION", "what")) == "UNKNOWN_ACTION: what"
    he = HandlerError("boom", handler="f", channel="orders")
    assert (he.handler, he.channel) == ("f", "orders")


# ---------------------------------------------------------------------------------------
# Public exports
# ---------------------------------------------------------------------------------------


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: SCREAMING_CASE, then CamelCase, then the rest, each sorted."""
    if name.isupper() and len(name) > 1:
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def test_all_is_sorted() -> None:
    names = list(agentstream.__all__)
    assert names == sorted(names, key=_isort_key)
    assert len(names) == len(set(names))
    # Within each casing group the order is the plain case-sensitive sort.
    for group in (0, 1, 2):
        members = [n for n in names if _isort_key(n)[0] == group]
        assert members == sorted(members)


def _defined_names(path: Path) -> set[str]:
    """Names bound at the top level of a module's source (imports and assignments)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                names.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
    return names


def test_all_is_complete() -> None:
    assert agentstream.__file__ is not None
    defined = _defined_names(Path(agentstream.__file__))
    public = {n for n in defined if not n.startswith("_")}
    assert public, "found no public names: the scan is broken"
    assert public <= set(agentstream.__all__), public - set(agentstream.__all__)
    for name in agentstream.__all__:
        assert hasattr(agentstream, name), name
    assert "__version__" in agentstream.__all__
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", agentstream.__version__)


def test_all_covers_the_documented_surface() -> None:
    for name in (
        "AgentExchangeWS",
        "AuthenticationError",
        "Candle",
        "Channel",
        "ConfigurationError",
        "OrderUpdate",
        "Portfolio",
        "Ticker",
    ):
        assert name in agentstream.__all__


# ---------------------------------------------------------------------------------------
# AgentExchangeWS: construction and registration
# ---------------------------------------------------------------------------------------


def test_repr_never_contains_the_key(clean_env: pytest.MonkeyPatch) -> None:
    ws = AgentExchangeWS(api_key=LONG_KEY, base_url="ws://localhost:8000")
    text = repr(ws)
    assert LONG_KEY not in text
    assert "SECRETSECRET" not in text
    assert "ws://localhost:8000/ws/v1?api_key=***" in text
    assert "ak_l…456" in text
    assert LONG_KEY not in str(ws)
    assert LONG_KEY not in str(ws.stats)
    assert LONG_KEY not in repr(ws.stats)


def test_default_base_url(clean_env: pytest.MonkeyPatch) -> None:
    ws = AgentExchangeWS(api_key=LONG_KEY)
    assert "ws://localhost:8000/ws/v1?api_key=***" in repr(ws)


def test_http_base_url_maps_to_ws(clean_env: pytest.MonkeyPatch) -> None:
    assert "ws://127.0.0.1:9/ws/v1?" in repr(
        AgentExchangeWS(api_key=LONG_KEY, base_url="http://127.0.0.1:9/")
    )
    assert "wss://api.example.com/ws/v1?" in repr(
        AgentExchangeWS(api_key=LONG_KEY, base_url="https://api.example.com")
    )


def test_base_url_from_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AGENTSTREAM_BASE_URL", "http://10.1.2.3:4567")
    ws = AgentExchangeWS(api_key=LONG_KEY)
    assert "ws://10.1.2.3:4567/ws/v1?api_key=***" in repr(ws)
    # An explicit base_url wins over the variable.
    ws = AgentExchangeWS(api_key=LONG_KEY, base_url="ws://127.0.0.1:1")
    assert "ws://127.0.0.1:1/ws/v1" in repr(ws)


@pytest.mark.parametrize("key", ["", "   "])
def test_empty_key_raises(clean_env: pytest.MonkeyPatch, key: str) -> None:
    with pytest.raises(ConfigurationError):
        AgentExchangeWS(api_key=key)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_url": "ftp://h"},
        {"stale_timeout": 0},
        {"connect_timeout": -1},
        {"queue_size": 0},
        {"max_subscriptions_per_connection": 0},
        {"backoff_jitter": 3},
        {"backoff_initial": 10, "backoff_max": 1},
    ],
)
def test_bad_options_raise(clean_env: pytest.MonkeyPatch, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        AgentExchangeWS(api_key=LONG_KEY, **kwargs)


@pytest.fixture
def ws(clean_env: pytest.MonkeyPatch) -> AgentExchangeWS:
    return AgentExchangeWS(api_key=LONG_KEY, base_url="ws://127.0.0.1:9")


def _keys(ws: AgentExchangeWS) -> list[str]:
    return [c.key for c in ws.channels]


def test_decorators_with_and_without_at(ws: AgentExchangeWS) -> None:
    @ws.on_ticker("btcusdt")
    async def on_btc(data: dict[str, Any]) -> None: ...

    def on_eth(data: dict[str, Any]) -> None: ...

    assert ws.on_ticker("ETHUSDT", on_eth) is on_eth
    assert on_btc.__name__ == "on_btc"  # the decorator returns the function itself

    @ws.on_candles("BTCUSDT", "1m")
    def on_c(data: dict[str, Any]) -> None: ...

    @ws.on_order_update()
    def on_o(data: dict[str, Any]) -> None: ...

    @ws.on_portfolio()
    def on_p(data: dict[str, Any]) -> None: ...

    def on_all(data: dict[str, Any]) -> None: ...

    assert ws.on_order_update(on_o) is on_o
    assert ws.on_portfolio(on_p) is on_p
    assert ws.on_candles("ETHUSDT", "1h", on_c) is on_c
    assert ws.on_ticker("all", on_all) is on_all
    assert callable(on_c)
    assert _keys(ws) == [
        "candles:BTCUSDT:1m",
        "candles:ETHUSDT:1h",
        "orders",
        "portfolio",
        "ticker:BTCUSDT",
        "ticker:ETHUSDT",
        "ticker:all",
    ]


def test_several_handlers_per_channel(ws: AgentExchangeWS) -> None:
    def a(data: dict[str, Any]) -> None: ...
    def b(data: dict[str, Any]) -> None: ...

    ws.on_ticker("BTCUSDT", a)
    ws.on_ticker("btcusdt", b)
    ws.on_ticker("BTCUSDT", a)  # the same function twice: two registrations
    assert _keys(ws) == ["ticker:BTCUSDT"]
    # Both are kept (not overwritten): removing one leaves the channel subscribed.
    assert ws.remove_handler(b) == 1
    assert _keys(ws) == ["ticker:BTCUSDT"]
    assert ws.remove_handler(a) == 2
    assert _keys(ws) == []
    assert ws.remove_handler(a) == 0


def test_remove_handler_across_channels(ws: AgentExchangeWS) -> None:
    def h(data: dict[str, Any]) -> None: ...
    def keep(data: dict[str, Any]) -> None: ...

    ws.on_ticker("BTCUSDT", h)
    ws.on_ticker("ETHUSDT", h)
    ws.on_ticker("ETHUSDT", keep)
    ws.on_order_update(h)
    assert ws.remove_handler(h) == 3
    assert _keys(ws) == ["ticker:ETHUSDT"]


def test_invalid_interval_on_the_client(ws: AgentExchangeWS) -> None:
    with pytest.raises(ValueError, match="2m"):
        ws.on_candles("BTCUSDT", "2m")
    with pytest.raises(ConfigurationError):

        @ws.on_candles("BTCUSDT", "2m")
        def h(data: dict[str, Any]) -> None: ...

    assert _keys(ws) == []


def test_invalid_symbol_on_the_client(ws: AgentExchangeWS) -> None:
    with pytest.raises(ValueError, match="symbol"):
        ws.on_ticker("")
    with pytest.raises(ConfigurationError):
        ws.on_ticker("BTC/USDT")
    assert _keys(ws) == []


def test_typed_handler_on_the_wrong_channel(ws: AgentExchangeWS) -> None:
    def on_candle(c: Candle) -> None: ...

    with pytest.raises(ConfigurationError, match="Candle"):
        ws.on_ticker("BTCUSDT", on_candle)
    with pytest.raises(ConfigurationError):
        ws.on_order_update(on_candle)
    assert _keys(ws) == []
    # On its own channel it is fine.
    assert ws.on_candles("BTCUSDT", "1m", on_candle) is on_candle
    assert _keys(ws) == ["candles:BTCUSDT:1m"]


def test_non_callable_handler_raises(ws: AgentExchangeWS) -> None:
    with pytest.raises(ConfigurationError):
        ws.on_ticker("BTCUSDT")(42)  # type: ignore[type-var]
    assert _keys(ws) == []


def test_async_handler_with_thread_raises(ws: AgentExchangeWS) -> None:
    async def h(data: dict[str, Any]) -> None: ...

    with pytest.raises(ConfigurationError):
        ws.on_ticker("BTCUSDT", h, thread=True)
    assert _keys(ws) == []


def test_subscribe_and_unsubscribe_without_handlers(ws: AgentExchangeWS) -> None:
    ws.subscribe(Channel.ticker("SOLUSDT"), "candles:ETHUSDT:1m", "ticker_all")
    assert _keys(ws) == ["candles:ETHUSDT:1m", "ticker:SOLUSDT", "ticker:all"]
    ws.unsubscribe("ticker:SOLUSDT", Channel.ticker("all"))
    assert _keys(ws) == ["candles:ETHUSDT:1m"]
    with pytest.raises(ConfigurationError):
        ws.subscribe("bogus:channel")


def test_on_reconnect_with_arguments(ws: AgentExchangeWS) -> None:
    async def resync(client: AgentExchangeWS, api: object, n: int) -> None: ...

    api = object()
    assert ws.on_reconnect(resync, api, 3) is resync
    with pytest.raises(ConfigurationError):
        ws.on_reconnect("not callable")  # type: ignore[arg-type]


def test_hook_decorators(ws: AgentExchangeWS) -> None:
    @ws.on_connect
    def up() -> None: ...

    @ws.on_disconnect
    def down(reason: str) -> None: ...

    @ws.on_error
    def oops(exc: Exception, context: dict[str, Any]) -> None: ...

    def plain() -> None: ...

    assert up.__name__ == "up"
    assert down.__name__ == "down"
    assert oops.__name__ == "oops"
    assert ws.on_connect(plain) is plain
    with pytest.raises(ConfigurationError):
        ws.on_error(3)  # type: ignore[arg-type]


def test_initial_stats(ws: AgentExchangeWS) -> None:
    s = ws.stats
    assert (s.state, s.connections, s.reconnects, s.messages_total) == ("idle", 0, 0, 0)
    assert s.last_message_age is None
    assert ws.error is None
    assert ws.portal is None
    # stop() before anything ran is a no-op that reports "finished".
    assert ws.stop() is True


@pytest.mark.anyio
async def test_sync_slot_survives_a_base_exception_and_stops_at_once() -> None:
    import asyncio

    got: list[int] = []
    slot: Slot

    def handler(i: int) -> None:
        got.append(i)
        if i == 0:
            raise asyncio.CancelledError  # escapes the drain callback (not an Exception)
        if i == 3:
            slot.cancel()  # the handler removes itself: nothing more, not even queued ones

    slot = make_slot(Channel.orders(), handler, model=None)
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda loop, context: None)  # asyncio would log it
    try:
        slot.start(lambda fn: None)
        for i in range(6):
            slot.push(i)
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
    finally:
        loop.set_exception_handler(previous)
    assert got == [0, 1, 2, 3]


def test_typed_events_without_a_symbol_or_interval_are_never_conflated() -> None:
    """A key of (None, None) would make unrelated events replace each other: kept."""
    ticker_key = conflation_key_for(KINDS["ticker"])
    candle_key = conflation_key_for(KINDS["candles"])
    assert ticker_key is not None
    assert candle_key is not None
    candle = msgspec.convert(
        {"symbol": "BTC", "interval": "1m", "open_time": 0, "open": "1", "high": "1"}
        | {"low": "1", "close": "1", "volume": "1"},
        Candle,
    )
    assert candle_key(candle) == ("BTC", "1m")
    assert ticker_key(SimpleNamespace(symbol="BTC")) == "BTC"
    # What a bus queue holds (an entry's item), or a typed event of the wrong shape.
    for event in (object(), SimpleNamespace(symbol=None, interval=None)):
        assert ticker_key(event) is None
        assert candle_key(event) is None
    assert candle_key(SimpleNamespace(symbol="BTC")) is None  # no interval


def test_hostile_dict_events_never_make_conflation_raise() -> None:
    ticker_key = conflation_key_for(KINDS["ticker"])
    candle_key = conflation_key_for(KINDS["candles"])
    assert ticker_key is not None
    assert candle_key is not None
    assert conflation_key_for(KINDS["orders"]) is None
    assert ticker_key({"symbol": [1], "price": "1"}) is None
    assert candle_key({"symbol": [1], "interval": "1m"}) is None
    assert candle_key({"symbol": "BTC", "interval": [1]}) is None
    assert candle_key({"symbol": "BTC", "interval": "1m"}) == ("BTC", "1m")
    assert candle_key({"symbol": "BTC", "interval": "1m", "is_closed": True}) is None
    for every in (False, True):
        slot = make_slot(
            Channel.ticker("all"), lambda d: None, model=None, max_queue=4, every=every
        )
        if not every:
            behind(slot)
        for i in range(20):
            slot.push({"symbol": [i], "interval": {"x": i}})
            slot.push({"symbol": f"S{i % 3}"})
            slot.push({"symbol": f"S{i % 3}"})
        # The hostile events are kept (they have no symbol to be replaced by), the others
        # conflated.
        assert sum(isinstance(ev["symbol"], list) for ev in slot.queue) == 20
        assert slot.conflated > 0


def test_missing_candles_at_the_edge_of_time_lists_nothing() -> None:
    from agentstream._router import missing_candles

    def missing(*args: Any) -> Any:
        return missing_candles(KINDS["candles"], *args)

    far = {"time": "9999-12-31T23:59:00Z", "is_closed": True}
    after = {"time": "9999-12-31T23:59:00Z", "is_closed": False}
    assert missing("1m", far, far, after) == (0, ())


def test_the_supervisors_interface_is_not_the_clients_public_api() -> None:
    # Links and the router reach the client through a private adapter (_Host).
    ws = AgentExchangeWS("ak_demo_agentstream", "ws://127.0.0.1:9")
    for name in ("token", "open_socket", "refused", "link_up", "link_down", "emit_error"):
        assert not hasattr(ws, name), name


@pytest.mark.parametrize(
    "handler", [lambda: None, lambda a, b: None, lambda *, kw: None], ids=["none", "two", "kw"]
)
def test_a_handler_that_cannot_take_the_event_is_refused_at_registration(handler: Any) -> None:
    ws = AgentExchangeWS("ak_demo_agentstream", "ws://127.0.0.1:9")
    with pytest.raises(ConfigurationError, match="must take 1 argument"):
        ws.on_ticker("BTCUSDT", handler)
    assert ws.channels == []


def test_handlers_and_hooks_that_fit_are_accepted() -> None:
    ws = AgentExchangeWS("ak_demo_agentstream", "ws://127.0.0.1:9")
    ws.on_ticker("BTCUSDT", lambda d, extra=1: None)  # defaults are fine
    ws.on_ticker("BTCUSDT", lambda *events: None)
    ws.on_ticker("ETHUSDT", print)  # a builtin
    ws.on_error(lambda exc, ctx: None)
    ws.on_connect(lambda: None)
    ws.on_reconnect(lambda client, a, b: None, 1, 2)
    with pytest.raises(ConfigurationError, match="must take 2 arguments"):
        ws.on_error(lambda exc: None)
    with pytest.raises(ConfigurationError, match="must take 3 arguments"):
        ws.on_reconnect(lambda client: None, "extra", "args")


def test_run_forever_inside_an_event_loop_says_what_to_do() -> None:
    ws = AgentExchangeWS("ak_demo_agentstream", "ws://127.0.0.1:9")

    async def inside() -> None:
        ws.run_forever()

    with pytest.raises(RuntimeError, match=r"await ws\.connect"):
        asyncio.run(inside())
