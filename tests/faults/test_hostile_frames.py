"""Hostile frames: bad JSON, JSON of the wrong shape or types, unknown channels and types,
binary frames, NaN and infinite numbers, deep nesting, huge strings, frames over the size
limit, invalid UTF-8.

A bad frame is counted (``dropped_frames`` or ``invalid_events``), reported to ``on_error``
as a ``DecodeError`` and logged; it never crashes the client or a handler, a typed handler
never sees it, and the stream goes on: the well-formed probe sent right after it arrives,
and so does the sim's own data. A frame over ``max_message_size`` (and, per RFC 6455, a
text frame that is not UTF-8) ends that connection; the client reconnects.

Probe events carry markers the sim never produces (a quantity with 12 decimals, a
timestamp in 2001) so they can be told apart from the sim's own traffic; the orders and
portfolio channels carry nothing else in these tests (no order is placed, and the sim's
portfolio timer is 60 s).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

from agentstream import Candle, DecodeError, OrderUpdate, Portfolio, Ticker
from tests.client.conftest import running, wait_for
from tests.faults.conftest import Hooks, client, register
from tests.faults.servers import ScriptedServer, data_frame

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from agentstream import AgentExchangeWS
    from agentstream.sim import SimExchange

pytestmark = pytest.mark.anyio

MARK = "0.000000031415"  # no pair has 12 quantity decimals
OLD = "2001-02-03T04:05:06.789Z"  # the sim's clock starts now
CANDLE_TIME = "2001-02-03T04:05:00Z"
MISSING: Any = object()  # a field left out

#: A well-formed probe event of each kind: its data and its envelope fields.
GOOD: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "ticker": (
        {"price": "64521.30", "quantity": MARK, "timestamp": OLD, "is_buyer_maker": False},
        {"symbol": "BTCUSDT"},
    ),
    "candles": (
        {
            "time": CANDLE_TIME,
            "open": "1.5",
            "high": "2.5",
            "low": "1.0",
            "close": "2.0",
            "volume": MARK,
            "is_closed": True,
        },
        {"symbol": "BTCUSDT", "interval": "1m"},
    ),
    "orders": (
        {
            "order_id": "probe-1",
            "status": "filled",
            "symbol": "BTCUSDT",
            "side": "buy",
            "type": "market",
            "quantity": "0.01",
            "executed_price": "64550.53",
            "executed_quantity": "0.01",
            "fee": "0.6455053",
            "filled_at": OLD,
        },
        {},
    ),
    "portfolio": (
        {
            "total_equity": "9999.35",
            "available_cash": "9353.85",
            "unrealized_pnl": "0.00",
            "realized_pnl": "-0.65",
            "roi_pct": "-0.01",
            "timestamp": OLD,
        },
        {},
    ),
}
KEYS = {
    "ticker": "ticker:BTCUSDT",
    "candles": "candles:BTCUSDT:1m",
    "orders": "orders",
    "portfolio": "portfolio",
}
#: A field of each probe that tells it apart, as the typed model shows it.
CHECK = {"ticker": "price", "candles": "close", "orders": "order_id", "portfolio": "total_equity"}

#: Bad values, field by field: each makes the event fail its typed model's validation.
BROKEN: dict[str, list[tuple[str, Any]]] = {
    "ticker": [
        ("price", None),
        ("price", {"amount": "1"}),
        ("price", ["1"]),
        ("price", True),
        ("price", "abc"),
        ("price", ""),
        ("price", "NaN"),
        ("price", "Infinity"),
        ("price", "-Infinity"),
        ("price", "-1"),
        ("price", "0"),
        ("price", MISSING),
        ("timestamp", "garbage"),
        ("timestamp", "2026-13-45T99:99:99Z"),
        ("timestamp", ""),
        ("timestamp", None),
        ("timestamp", True),
        ("timestamp", 1e300),
        ("timestamp", 10**25),
        ("timestamp", -(10**14)),
        ("timestamp", MISSING),
        ("quantity", "-5"),
        ("quantity", "NaN"),
        ("is_buyer_maker", "yes"),
    ],
    "candles": [
        ("open", "NaN"),
        ("high", None),
        ("high", "0.5"),  # below the low
        ("low", "-1"),
        ("close", "Infinity"),
        ("close", MISSING),
        ("volume", "-1"),
        ("volume", {"v": 1}),
        ("time", "garbage"),
        ("time", 10**25),
        ("time", MISSING),
        ("is_closed", "true"),
    ],
    "orders": [
        ("order_id", ""),
        ("order_id", 5),
        ("status", None),
        ("status", 5),
        ("quantity", "-1"),  # ("0" is what the real server sends when it lacks one: valid)
        ("quantity", "NaN"),
        ("quantity", MISSING),
        ("side", MISSING),
        ("symbol", ["BTCUSDT"]),
        ("price", "-1"),
        ("fee", "Infinity"),
        ("executed_price", {"x": "1"}),
        ("filled_at", "garbage"),
        ("rejected_reason", 5),
    ],
    "portfolio": [
        ("total_equity", "NaN"),
        ("total_equity", None),
        ("total_equity", {"a": 1}),
        ("available_cash", MISSING),
        ("unrealized_pnl", "Infinity"),
        ("realized_pnl", "-Infinity"),
        ("roi_pct", "NaN"),
        ("timestamp", "garbage"),
        ("timestamp", True),
    ],
}


def probe(kind: str, field_name: str | None = None, value: Any = None) -> str:
    """The probe event of ``kind`` as a frame, with ``field_name`` set to ``value``."""
    data, envelope = GOOD[kind]
    data = dict(data)
    if field_name is not None:
        if value is MISSING:
            del data[field_name]
        else:
            data[field_name] = value
    return data_frame(kind, data, **envelope)


def is_probe(event: Any) -> bool:
    """A probe event, typed or dict (orders and portfolio only ever carry probes here)."""
    if isinstance(event, dict):
        return bool({MARK, OLD, CANDLE_TIME} & {v for v in event.values() if isinstance(v, str)})
    if isinstance(event, Ticker):
        return event.quantity == Decimal(MARK) or event.timestamp.year == 2001
    if isinstance(event, Candle):
        return event.volume == Decimal(MARK) or event.open_time.year == 2001
    return isinstance(event, OrderUpdate | Portfolio)


@dataclass
class Stream:
    """A client with a typed and (optionally) a dict handler on one channel, running."""

    ws: AgentExchangeWS
    hooks: Hooks
    typed: list[Any] = field(default_factory=list)
    plain: list[dict[str, Any]] = field(default_factory=list)
    flow: list[Any] = field(default_factory=list)

    def probes(self) -> list[Any]:
        return [e for e in self.typed if is_probe(e)]

    async def goes_on(self) -> None:
        """Wait for the typed probe sent last, then for more of the server's own data."""
        await wait_for(self.probes, what="the well-formed probe sent after the bad frames")
        n = len(self.flow)
        await wait_for(lambda: len(self.flow) > n + 3, what="the stream to go on")


@contextlib.asynccontextmanager
async def stream(
    url: str, kind: str = "ticker", *, plain: bool = True, **options: Any
) -> AsyncIterator[Stream]:
    ws = client(url, **options)
    s = Stream(ws, Hooks.attach(ws))

    def on_ticker(t: Ticker) -> None:
        s.typed.append(t)

    def on_candle(c: Candle) -> None:
        s.typed.append(c)

    def on_order(o: OrderUpdate) -> None:
        s.typed.append(o)

    def on_portfolio(p: Portfolio) -> None:
        s.typed.append(p)

    # every=True: each probe must reach the handler, not be replaced by a newer tick.
    if kind == "ticker":
        ws.on_ticker("BTCUSDT", on_ticker, every=True)
    elif kind == "candles":
        ws.on_candles("BTCUSDT", "1m", on_candle, every=True)
    elif kind == "orders":
        ws.on_order_update(on_order)
    else:
        ws.on_portfolio(on_portfolio)
    if plain:
        register(ws, [KEYS[kind]], s.plain)
    ws.on_ticker("ETHUSDT", s.flow.append)
    async with running(ws):
        await wait_for(lambda: len(s.flow) > 3, what="data before the bad frames")
        yield s


def _internal_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "internal error" in r.getMessage()]


@pytest.mark.parametrize("kind", sorted(BROKEN))
async def test_events_of_the_wrong_types_never_reach_typed_handlers(
    sim: SimExchange, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    bad = BROKEN[kind]
    async with stream(sim.url, kind) as s:
        before = s.ws.stats
        for name, value in bad:
            sim.send_raw(probe(kind, name, value))
        sim.send_raw(probe(kind))
        await s.goes_on()
        after = s.ws.stats
        await wait_for(lambda: len(s.hooks.errors) >= len(bad), what="every error reported")
    probes = s.probes()
    assert len(probes) == 1, f"a typed handler got malformed events: {probes}"
    [good] = probes  # the well-formed one
    assert str(getattr(good, CHECK[kind])) == GOOD[kind][0][CHECK[kind]]
    assert after.invalid_events - before.invalid_events == len(bad)
    assert after.dropped_frames == before.dropped_frames
    assert after.handler_errors == 0
    decode_errors = s.hooks.of(DecodeError)
    assert len(decode_errors) == len(s.hooks.errors) == len(bad)
    assert all(ctx == {"stage": "decode", "channel": kind} for _, ctx in decode_errors)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"invalid {kind} event" in r.getMessage() for r in warnings)
    assert not _internal_errors(caplog)
    assert sim.stats.connections_opened == 1


_T = f'"timestamp":"{OLD}","quantity":"{MARK}"'
#: Frames that are not JSON, or not of any known shape: (id, payload, as a binary frame).
SHAPELESS: list[tuple[str, str | bytes, bool]] = [
    ("truncated", '{"channel":"ticker","data":', False),
    ("not-json", "hello", False),
    ("empty", "", False),
    ("bare-NaN", '{"channel":"ticker","symbol":"BTCUSDT","data":{"price":NaN,' + _T + "}}", False),
    ("bare-Infinity", '{"channel":"ticker","symbol":"BTCUSDT","data":{"price":Infinity}}', False),
    (
        "bare-minus-Infinity",
        '{"channel":"ticker","symbol":"BTCUSDT","data":{"price":-Infinity}}',
        False,
    ),
    ("top-level-array", "[1, 2]", False),
    ("top-level-string", '"ticker"', False),
    ("top-level-number", "42", False),
    ("top-level-null", "null", False),
    ("top-level-deep-nesting", "[" * 100_000 + "]" * 100_000, False),
    ("empty-object", "{}", False),
    ("type-not-a-string", '{"type":5}', False),
    ("channel-not-a-string", '{"channel":5,"data":{}}', False),
    ("symbol-an-object", '{"channel":"ticker","symbol":{"a":1},"data":{}}', False),
    ("unknown-channel", '{"channel":"trades","symbol":"BTCUSDT","data":{' + _T + "}}", False),
    ("ticker-without-symbol", '{"channel":"ticker","data":{"price":"1",' + _T + "}}", False),
    ("candles-without-interval", '{"channel":"candles","symbol":"BTCUSDT","data":{}}', False),
    ("no-data", '{"channel":"ticker","symbol":"BTCUSDT"}', False),
    ("data-a-list", '{"channel":"ticker","symbol":"BTCUSDT","data":[1,2]}', False),
    ("data-a-string", '{"channel":"ticker","symbol":"BTCUSDT","data":"x"}', False),
    ("data-null", '{"channel":"ticker","symbol":"BTCUSDT","data":null}', False),
    ("data-a-number", '{"channel":"ticker","symbol":"BTCUSDT","data":5}', False),
    ("binary-garbage", b"\x00\x01\x02binary\xff", True),
    ("binary-non-utf8-json", b'{"channel":"ticker","symbol":"BTC\xff\xfeUSDT","data":{}}', True),
]


@pytest.mark.parametrize(
    ("payload", "binary"), [c[1:] for c in SHAPELESS], ids=[c[0] for c in SHAPELESS]
)
async def test_frame_of_no_known_shape_is_dropped_and_counted(
    sim: SimExchange, payload: str | bytes, binary: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async with stream(sim.url) as s:
        before = s.ws.stats
        sim.send_raw(payload, binary=binary)
        sim.send_raw(probe("ticker"))
        await s.goes_on()
        after = s.ws.stats
        await wait_for(lambda: s.hooks.errors, what="the error reported")
    assert after.dropped_frames - before.dropped_frames == 1
    assert after.invalid_events == before.invalid_events
    [(exc, ctx)] = s.hooks.errors
    assert isinstance(exc, DecodeError)
    assert ctx == {"stage": "decode"}
    assert len(exc.frame) <= 200
    assert len(s.probes()) == 1
    assert len([e for e in s.plain if is_probe(e)]) == 1  # nothing of it reached a dict handler
    assert any("dropped a frame" in r.getMessage() for r in caplog.records)
    assert not _internal_errors(caplog)
    assert sim.stats.connections_opened == 1


async def test_unknown_message_types_are_ignored(
    sim: SimExchange, caplog: pytest.LogCaptureFixture
) -> None:
    odd = ['{"type":"dance"}', '{"type":"subscribed"}', '{"type":"unsubscribed","channel":5}']
    async with stream(sim.url) as s:
        before = s.ws.stats
        for frame in odd:
            sim.send_raw(frame)
        sim.send_raw(probe("ticker"))
        await s.goes_on()
        after = s.ws.stats
    assert any(
        r.getMessage() == "ignored a control message of type 'dance'" for r in caplog.records
    )
    assert after.dropped_frames - before.dropped_frames == 1  # the channel of 5 is no string
    assert (after.invalid_events, after.server_errors, after.reconnects) == (0, 0, 0)
    assert [type(e) for e, _ in s.hooks.errors] == [DecodeError]
    assert [str(c) for c in s.ws.channels] == ["ticker:BTCUSDT", "ticker:ETHUSDT"]
    assert len(s.probes()) == 1
    assert sim.stats.connections_opened == 1


async def test_numbers_where_strings_are_expected_are_decoded_exactly(sim: SimExchange) -> None:
    """Prices as JSON numbers (not the protocol's strings) are taken exactly, never via float."""
    async with stream(sim.url) as s:
        sim.send_raw(
            '{"channel":"ticker","symbol":"BTCUSDT","data":{"price":0.1,'
            f'"quantity":{MARK},"timestamp":"{OLD}"}}}}'
        )
        await s.goes_on()
    [t] = s.probes()
    assert str(t.price) == "0.1"  # Decimal(0.1) would be 0.1000000000000000055511...
    assert t.quantity == Decimal(MARK)


async def test_deeply_nested_json_inside_an_event_is_dropped_and_counted(
    sim: SimExchange, caplog: pytest.LogCaptureFixture
) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    async with stream(sim.url) as s:
        before = s.ws.stats
        sim.send_raw('{"channel":"ticker","symbol":"BTCUSDT","data":' + nested + "}")
        sim.send_raw(probe("ticker"))
        await s.goes_on()
        after = s.ws.stats
    assert not _internal_errors(caplog)
    assert after.dropped_frames + after.invalid_events == before.dropped_frames + 1
    assert len(s.hooks.of(DecodeError)) == 1


_HUGE_NUMBER = (
    '{"channel":"ticker","symbol":"BTCUSDT","data":{"price":1e999,' + _T + "}}"
)  # 1e999: a valid JSON number, infinite as a double


async def test_out_of_range_number_is_counted_not_lost_with_a_dict_handler(
    sim: SimExchange, caplog: pytest.LogCaptureFixture
) -> None:
    async with stream(sim.url) as s:
        before = s.ws.stats
        sim.send_raw(_HUGE_NUMBER)
        sim.send_raw(probe("ticker"))
        await s.goes_on()
        after = s.ws.stats
    assert not _internal_errors(caplog)
    assert after.dropped_frames + after.invalid_events == (
        before.dropped_frames + before.invalid_events + 1
    )


async def test_infinite_number_never_reaches_a_typed_handler(sim: SimExchange) -> None:
    async with stream(sim.url, plain=False) as s:
        sim.send_raw(_HUGE_NUMBER)
        sim.send_raw(probe("ticker"))
        await s.goes_on()
    assert [str(t.price) for t in s.probes()] == [GOOD["ticker"][0]["price"]]


FIVE_MB = 5 * 1024 * 1024


async def test_huge_strings_below_the_size_limit(
    sim: SimExchange, caplog: pytest.LogCaptureFixture
) -> None:
    big = "x" * FIVE_MB
    async with stream(sim.url, max_message_size=2 * FIVE_MB) as s:
        before = s.ws.stats
        sim.send_raw('{"channel":"ticker","symbol":"BTCUSDT","data":{"price":"' + big)  # cut
        data, envelope = GOOD["ticker"]
        sim.send_raw(data_frame("ticker", {**data, "note": big}, **envelope))  # unknown field
        sim.send_raw(probe("ticker"))
        await wait_for(lambda: len(s.probes()) == 2, what="both well-formed events")
        await s.goes_on()
        after = s.ws.stats
    assert after.dropped_frames - before.dropped_frames == 1
    [(exc, _)] = s.hooks.errors
    assert isinstance(exc, DecodeError)
    assert len(exc.frame) <= 200
    assert max(len(r.getMessage()) for r in caplog.records) < 2000  # logs show a snippet
    assert sim.stats.connections_opened == 1


async def test_huge_unknown_symbol_is_not_kept(sim: SimExchange) -> None:
    async with stream(sim.url, max_message_size=2 * FIVE_MB) as s:
        sim.send_raw(probe("ticker").replace('"BTCUSDT"', '"' + "Z" * FIVE_MB + '"'))
        sim.send_raw(probe("ticker"))
        await s.goes_on()
    assert max(len(k) for k in s.ws.stats.messages) < 1000


LIMIT = 64 * 1024


def _padded(size: int) -> str:
    """A well-formed probe ticker frame of exactly ``size`` bytes."""
    data, envelope = GOOD["ticker"]
    base = len(data_frame("ticker", {**data, "pad": ""}, **envelope))
    return data_frame("ticker", {**data, "pad": "p" * (size - base)}, **envelope)


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(LIMIT, id="at"),
        pytest.param(LIMIT + 1, id="over"),
        pytest.param(FIVE_MB, id="5MB"),
    ],
)
async def test_frame_over_max_message_size_ends_the_connection(size: int) -> None:
    wanted = ["ticker:BTCUSDT", "ticker:ETHUSDT"]
    async with (
        ScriptedServer(data_every=0.02) as server,
        stream(server.url, max_message_size=LIMIT) as s,
    ):
        frame = _padded(size)
        assert len(frame.encode()) == size
        await server.send_all(frame)
        if size <= LIMIT:
            await wait_for(s.probes, timeout=1, what="the frame at the limit")
        else:
            await wait_for(lambda: len(server.connections) == 2, what="a new connection")
        n = len(s.flow)
        await wait_for(lambda: len(s.flow) > n + 3, what="data afterwards")
        stats = s.ws.stats
    if size <= LIMIT:
        assert len(s.probes()) == 1
        assert len(server.connections) == 1
        assert stats.reconnects == 0
        return
    first, second = server.connections
    assert first.close_code == 1009  # "message too big", sent by the client
    assert sorted(second.subscribes) == wanted  # once each
    assert s.probes() == []
    assert stats.reconnects == 1
    assert (stats.dropped_frames, stats.invalid_events) == (0, 0)
    assert len(s.hooks.disconnects) == 1


async def test_text_frame_that_is_not_utf8_ends_the_connection(sim: SimExchange) -> None:
    """RFC 6455 8.1: invalid UTF-8 in a text frame fails the connection (aiohttp: 1007)."""
    async with stream(sim.url) as s:
        sim.send_raw(probe("ticker").encode().replace(b"BTCUSDT", b"BTC\xffUSDT"))
        await wait_for(lambda: sim.stats.connections_opened == 2, what="a new connection")
        await wait_for(
            lambda: (
                sorted(sim.connection_log[1].subscribe_requests)
                == ["ticker:BTCUSDT", "ticker:ETHUSDT"]
            )
        )
        n = len(s.flow)
        await wait_for(lambda: len(s.flow) > n + 3, what="data on the new connection")
        stats = s.ws.stats
    assert stats.reconnects == 1
    assert s.probes() == []
    assert len(s.hooks.disconnects) == 1


@pytest.mark.parametrize("fault", ["oversize", "not-utf8"])
async def test_disconnect_reason_names_the_protocol_violation(sim: SimExchange, fault: str) -> None:
    async with stream(sim.url, max_message_size=LIMIT) as s:
        if fault == "oversize":
            sim.send_raw(_padded(LIMIT + 1))
        else:
            sim.send_raw(b'{"channel":"ticker","symbol":"\xff","data":{}}')
        await wait_for(lambda: s.hooks.disconnects, what="the disconnect")
    [reason] = s.hooks.disconnects
    code, words = ("1009", "exceeds") if fault == "oversize" else ("1007", "utf-8")
    assert code in reason or words in reason.lower(), reason
