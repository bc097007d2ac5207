"""Hostile server frames for fuzzing agentstream's client, and a rig that feeds them to it.

Three sources of frames, all deterministic for a given seed:

- :func:`hostile_frames`: a Hypothesis strategy of structured-but-hostile frames: JSON
  objects with the envelope keys (``channel``, ``symbol``, ``interval``, ``type``,
  ``data``, ``code``, ``message``) holding values of random types; ``data`` objects with
  the right keys and wrong types; NaN / Infinity literals and out-of-range numbers; deep
  nesting; huge strings; unknown channels and types; random text; non-UTF-8 bytes and
  binary frames. :func:`hypothesis_frames` draws a list of them.
- :class:`Mutator`: a fast seeded ``random`` mutator of valid frames (bit flips,
  truncation, field deletion and duplication, type swaps, number/string swaps, invalid
  escapes, injected NaN / Infinity, channel swaps, deep nesting, garbage around the
  object, ...). It makes up the bulk of a million-frame run.
- :class:`ValidFrames`: well-formed frames of every kind, interleaved so data flows.

Text frames are always valid UTF-8 and at most :data:`MAX_FRAME` bytes: a text frame
with invalid UTF-8 or one above the client's ``max_message_size`` ends the connection
by design (RFC 6455), so those are tested on their own
(:meth:`FuzzRig.send_connection_killer`); non-UTF-8 bytes travel in binary frames.

:class:`FuzzRig` runs a quiet in-process :class:`~agentstream.sim.SimExchange` (no
ticks, pings or snapshots of its own, so every frame on the socket is one we sent) and
an :class:`~agentstream.AgentExchangeWS` with dict and typed handlers on ticker,
candles, orders and portfolio channels. :meth:`FuzzRig.send` sends a batch with the
sim's ``send_raw``, then a marker order update, waits for the marker to reach the order
handlers (so the reader has fed every frame before it), and checks:

- every frame is accounted for exactly once:
  ``messages_total + control_messages + dropped_frames`` grew by the frames sent;
- every data message of a channel with a dict handler reached that handler, and every
  data message of a channel with a typed handler reached it or was counted in
  ``invalid_events`` (nothing vanishes between the counters and the handlers);
- no frame ended in the client's internal-error safety net;
- typed handlers only ever got fully valid instances (:func:`typed_problems`);
- the client stayed connected on one connection and nothing was conflated.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import string
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import anyio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from agentstream import AgentExchangeWS, Candle, OrderUpdate, Portfolio, Ticker
from agentstream.sim import DEMO_API_KEY, SimExchange

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Sequence

__all__ = [
    "CLIENT_OPTIONS",
    "MAX_FRAME",
    "QUIET_SIM",
    "ROUTES",
    "Checkpoint",
    "Frame",
    "FuzzRig",
    "Mutator",
    "Raw",
    "ValidFrames",
    "encode",
    "hostile_frames",
    "hypothesis_frames",
    "typed_problems",
]

#: The largest text frame generated, safely below the client's 1 MiB ``max_message_size``.
MAX_FRAME = 900_000

#: Channels the rig's client subscribes (one connection: fewer than 10).
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
INTERVAL = "1m"

#: A sim that sends nothing by itself but acknowledgements: no trades, no pings, no
#: portfolio snapshots, no order steps, and a clock so slow that no candle ever closes.
QUIET_SIM: dict[str, Any] = {
    "tick_rate": 0.0,
    "speed": 1e-9,
    "ping_interval": 3600.0,
    "pong_timeout": 3600.0,
    "portfolio_interval": 3600.0,
    "order_interval": 3600.0,
}

#: Client options of the rig: short timers, no conflation within a batch.
CLIENT_OPTIONS: dict[str, Any] = {
    "stale_timeout": 30.0,
    "backoff_initial": 0.02,
    "backoff_max": 0.2,
    "backoff_jitter": 0.0,
    "connect_timeout": 5.0,
    "close_timeout": 0.5,
    "queue_size": 1_000_000,
    # The oracle counts every order frame a handler should get; with order recovery on,
    # two fuzzed frames of one (order, status, filled) state are one state, delivered
    # once (tests/client/test_recovery.py covers that ledger).
    "recover_orders": False,
}


@dataclass(frozen=True, slots=True)
class Frame:
    """One server-to-client WebSocket frame.

    ``payload`` is ``str`` for a text frame (always valid UTF-8) or ``bytes`` for a
    binary frame; ``origin`` says where it came from (for reports).
    """

    payload: str | bytes
    binary: bool = False
    origin: str = ""

    def short(self, limit: int = 160) -> str:
        """A printable excerpt of the frame for reports."""
        text = repr(self.payload[:limit])
        more = f" ... ({len(self.payload):,} chars)" if len(self.payload) > limit else ""
        kind = "binary" if self.binary else "text"
        return f"[{kind}, {self.origin}] {text}{more}"


# -- JSON with raw literals ---------------------------------------------------------------


class Raw:
    """A literal spliced into encoded JSON as is: ``NaN``, ``1e999``, deep nesting, ..."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r})"


def encode(obj: Any, *, compact: bool = True) -> str:
    """JSON text of ``obj``, where :class:`Raw` values appear verbatim and float NaN /
    infinities as the (invalid JSON) literals ``NaN`` / ``Infinity``."""
    raws: list[str] = []

    def default(o: object) -> str:
        if isinstance(o, Raw):
            raws.append(o.text)
            return f"\x00raw{len(raws) - 1}\x00"
        if isinstance(o, Decimal):
            return str(o)
        raise TypeError(type(o).__name__)

    separators = (",", ":") if compact else (", ", ": ")
    text = json.dumps(
        obj, allow_nan=True, ensure_ascii=False, default=default, separators=separators
    )
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate: escape it, as a server's encoder would
        raws.clear()
        text = json.dumps(obj, allow_nan=True, default=default, separators=separators)
    for i, raw in enumerate(raws):
        text = text.replace(f'"\\u0000raw{i}\\u0000"', raw, 1)
    return text


def nested(depth: int, *, arrays: bool = True) -> Raw:
    """``depth`` levels of nested arrays (or objects) as a raw JSON literal."""
    if arrays:
        return Raw("[" * depth + "]" * depth)
    return Raw('{"a":' * depth + "null" + "}" * depth)


# -- vocabularies -------------------------------------------------------------------------

_RAW_NUMBERS = (
    "1e999",
    "-1e999",
    "1e-999",
    "123456789012345678901234567890",
    "-123456789012345678901234567890",
    "-0",
    "0.0",
    "1E+400",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
)
_BAD_LITERALS = ("NaN", "Infinity", "-Infinity", "nan", "inf", "undefined", "None", "True")
_AMOUNT_STRINGS = (
    "64521.30",
    "0.012",
    "1",
    "0",
    "-0",
    "-1",
    "-0.01",
    "NaN",
    "nan",
    "sNaN",
    "Infinity",
    "-Infinity",
    "inf",
    "1e999999999",
    "1E+999999999999999999",
    "1e-999999999",
    "",
    " ",
    "1,000.00",
    "0x10",
    "1_000",
    "１２３",
    "abc",
    "1.2.3",
    "+5",
    ".5",
    "5.",
    "٣",
)
_TIME_VALUES: tuple[Any, ...] = (
    "2026-02-23T15:30:45.123Z",
    "2026-02-23T15:30:45Z",
    "2026-02-23T15:30:45",
    "2026-02-23T15:30:45+02:00",
    "2026-02-23",
    "2026-13-45T99:99:99Z",
    "0000-00-00T00:00:00Z",
    "9999-12-31T23:59:59.999Z",
    "yesterday",
    "",
    "T",
    1771860645123,
    1771860645,
    0,
    -1,
    -99999999999999,
    99999999999999999999,
    253402300800,
    1.5e12,
    True,
    None,
)
_KNOWN_CHANNELS = ("ticker", "candles", "orders", "portfolio")
_OTHER_CHANNELS = (
    "ticker_all",
    "trades",
    "TICKER",
    "ticker:BTCUSDT",
    "candles:BTCUSDT:1m",
    "",
    "orders ",
    "portfolio\x00",
    "kline",
)
_SYMBOL_VALUES = (*SYMBOLS, "btcusdt", "all", "ALL", "NOPEUSDT", "", "BTC USDT", "BTCUSDT\n")
_INTERVAL_VALUES = ("1m", "5m", "1h", "7m", "", "1M", "60s")
#: Control types. Server errors that carry consequences (INVALID_CHANNEL,
#: SUBSCRIPTION_LIMIT naming a channel the client has) are the server's word, not
#: malformed input, so the vocabulary names no subscribed channel with those codes.
_TYPES = ("ping", "pong", "subscribed", "unsubscribed", "error", "hello", "", "PING", "data")
_CODES = ("UNKNOWN_ACTION", "RATE_LIMITED", "", "INTERNAL", "unknown_action")
_STATUSES = ("pending", "open", "partially_filled", "filled", "cancelled", "rejected", "expired")
_TEXT_ALPHABET = string.ascii_letters + string.digits + ' -_:."\\/{}[],é€😀\t\n\u2028\ufeff'


# -- valid frames -------------------------------------------------------------------------


class ValidFrames:
    """Well-formed frames of every kind the protocol has, from a seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.n = 0

    def _ts(self) -> str:
        r = self.rng
        return (
            f"2026-02-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:"
            f"{r.randint(0, 59):02d}.{r.randint(0, 999):03d}Z"
        )

    def ticker(self, symbol: str | None = None) -> dict[str, Any]:
        r = self.rng
        return {
            "channel": "ticker",
            "symbol": symbol or r.choice(SYMBOLS),
            "data": {
                "price": f"{r.uniform(0.01, 90000):.2f}",
                "quantity": f"{r.uniform(0, 5):.5f}",
                "timestamp": self._ts() if r.random() < 0.9 else r.randint(10**12, 2 * 10**12),
                "is_buyer_maker": r.random() < 0.5,
            },
        }

    def candle(self) -> dict[str, Any]:
        r = self.rng
        low = r.uniform(1, 60000)
        high = low * r.uniform(1, 1.05)
        data: dict[str, Any] = {
            "open": f"{r.uniform(low, high):.2f}",
            "high": f"{high:.2f}",
            "low": f"{low:.2f}",
            "close": f"{r.uniform(low, high):.2f}",
            "volume": f"{r.uniform(0, 100):.5f}",
            "is_closed": r.random() < 0.3,
        }
        data["time" if r.random() < 0.8 else "open_time"] = self._ts()[:19] + "Z"
        return {"channel": "candles", "symbol": "BTCUSDT", "interval": INTERVAL, "data": data}

    def order(self) -> dict[str, Any]:
        r = self.rng
        self.n += 1
        status = r.choice(_STATUSES)
        data: dict[str, Any] = {
            "order_id": f"fz-{self.n:08d}-{r.getrandbits(32):08x}",
            "status": status,
            "symbol": r.choice(SYMBOLS),
            "side": r.choice(("buy", "sell")),
            "type": r.choice(("market", "limit")),
            "quantity": f"{r.uniform(0.001, 3):.3f}",
        }
        if data["type"] == "limit":
            data["price"] = f"{r.uniform(1, 70000):.2f}"
        if status in ("partially_filled", "filled"):
            data["executed_price"] = f"{r.uniform(1, 70000):.2f}"
            data["executed_quantity"] = data["quantity"]
            data["fee"] = f"{r.uniform(0, 50):.8f}"
            data["filled_at"] = self._ts()
        elif status == "cancelled":
            data["cancelled_at"] = self._ts()
        elif status == "rejected":
            data["rejected_reason"] = "insufficient_balance"
        return {"channel": "orders", "data": data}

    def portfolio(self) -> dict[str, Any]:
        r = self.rng
        data = {
            "total_equity": f"{r.uniform(0, 20000):.2f}",
            "available_cash": f"{r.uniform(0, 10000):.2f}",
            "unrealized_pnl": f"{r.uniform(-500, 500):.2f}",
            "realized_pnl": f"{r.uniform(-500, 500):.2f}",
            "timestamp": self._ts(),
        }
        if r.random() < 0.7:
            data["roi_pct"] = f"{r.uniform(-10, 10):.2f}"
        return {"channel": "portfolio", "data": data}

    def control(self) -> dict[str, Any]:
        r = self.rng
        kind = r.choice(("ping", "subscribed", "unsubscribed", "error", "pong"))
        if kind in ("subscribed", "unsubscribed"):
            # Acks of channels the client does not carry: harmless, like a late duplicate.
            return {"type": kind, "channel": r.choice(("ticker:NOPEUSDT", "candles:XRPUSDT:5m"))}
        if kind == "error":
            return {"type": "error", "code": "UNKNOWN_ACTION", "message": "unknown action 'x'"}
        return {"type": kind}

    def data_object(self) -> dict[str, Any]:
        """A valid data frame (no control message) as a JSON-able dict."""
        pick = self.rng.random()
        if pick < 0.35:
            return self.ticker()
        if pick < 0.55:
            return self.candle()
        if pick < 0.8:
            return self.order()
        return self.portfolio()

    def any_object(self) -> dict[str, Any]:
        return self.control() if self.rng.random() < 0.08 else self.data_object()

    def frame(self) -> Frame:
        return Frame(encode(self.any_object()), origin="valid")


# -- the mutator --------------------------------------------------------------------------


def _hostile_value(r: random.Random) -> Any:
    pick = r.randrange(12)
    if pick == 0:
        return None
    if pick == 1:
        return r.random() < 0.5
    if pick == 2:
        return r.randint(-(2**70), 2**70)
    if pick == 3:
        return r.choice((float("nan"), float("inf"), float("-inf"), 1e308, -0.0, 5e-324))
    if pick == 4:
        return Raw(r.choice(_RAW_NUMBERS))
    if pick == 5:
        return r.choice(_AMOUNT_STRINGS)
    if pick == 6:
        return r.choice(_TIME_VALUES)
    if pick == 7:
        return [r.choice(_AMOUNT_STRINGS)] * r.randint(0, 3)
    if pick == 8:
        return {"price": r.choice(_AMOUNT_STRINGS)} if r.random() < 0.5 else {}
    if pick == 9:
        return "".join(r.choice(_TEXT_ALPHABET) for _ in range(r.randint(0, 20)))
    if pick == 10:
        return Raw(r.choice(_BAD_LITERALS))
    return nested(r.choice((2, 10, 200)), arrays=r.random() < 0.5)


def _pick_dict(r: random.Random, obj: dict[str, Any]) -> dict[str, Any]:
    """The envelope or, more often, its ``data`` object when that is a dict."""
    data = obj.get("data")
    if isinstance(data, dict) and data and r.random() < 0.8:
        return data
    return obj


def _m_delete_field(r: random.Random, obj: dict[str, Any]) -> None:
    d = _pick_dict(r, obj)
    if d:
        del d[r.choice(list(d))]


def _m_type_swap(r: random.Random, obj: dict[str, Any]) -> None:
    d = _pick_dict(r, obj)
    if d:
        d[r.choice(list(d))] = _hostile_value(r)


def _m_num_str_swap(r: random.Random, obj: dict[str, Any]) -> None:
    d = _pick_dict(r, obj)
    keys = [k for k, v in d.items() if isinstance(v, str | int | float) and not isinstance(v, bool)]
    if not keys:
        return
    k = r.choice(keys)
    v = d[k]
    if isinstance(v, str):
        try:
            d[k] = float(v) if r.random() < 0.5 else Raw(v if v else "0")
        except ValueError:
            d[k] = r.randint(-5, 10**15)
    else:
        d[k] = str(v)


def _m_inject_nan(r: random.Random, obj: dict[str, Any]) -> None:
    d = _pick_dict(r, obj)
    if d:
        d[r.choice(list(d))] = r.choice(
            (Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), "NaN", "Infinity", Raw("1e999"))
        )


def _m_extreme_number(r: random.Random, obj: dict[str, Any]) -> None:
    d = _pick_dict(r, obj)
    if d:
        d[r.choice(list(d))] = Raw(r.choice(_RAW_NUMBERS))


def _m_bad_time(r: random.Random, obj: dict[str, Any]) -> None:
    d = _pick_dict(r, obj)
    names = [k for k in ("timestamp", "time", "open_time", "filled_at", "cancelled_at") if k in d]
    d[r.choice(names) if names else "timestamp"] = r.choice(_TIME_VALUES)


def _m_channel_swap(r: random.Random, obj: dict[str, Any]) -> None:
    pick = r.randrange(6)
    if pick == 0:
        obj["channel"] = r.choice(_KNOWN_CHANNELS)
    elif pick == 1:
        obj["channel"] = r.choice(_OTHER_CHANNELS)
    elif pick == 2:
        obj["symbol"] = r.choice(_SYMBOL_VALUES)
    elif pick == 3:
        obj["interval"] = r.choice(_INTERVAL_VALUES)
    elif pick == 4:
        obj.pop(r.choice(("channel", "symbol", "interval")), None)
    else:
        obj[r.choice(("channel", "symbol", "interval"))] = _hostile_value(r)


def _m_wrap_data(r: random.Random, obj: dict[str, Any]) -> None:
    data = obj.get("data")
    obj["data"] = r.choice(
        (
            [data],
            None,
            "",
            {},
            0,
            True,
            Raw("1e999"),
            encode(data),
            {"data": data},
            [],
            nested(r.choice((50, 900, 1100, 5000)), arrays=r.random() < 0.5),
        )
    )


def _m_deep_field(r: random.Random, obj: dict[str, Any]) -> None:
    d = _pick_dict(r, obj)
    key = r.choice(list(d)) if d else "x"
    d[key] = nested(r.choice((64, 500, 1000, 2000, 10_000, 50_000)), arrays=r.random() < 0.7)


def _m_type_inject(r: random.Random, obj: dict[str, Any]) -> None:
    obj["type"] = r.choice((*_TYPES, None, 0, [], {}))
    if r.random() < 0.3:
        obj["code"] = r.choice((*_CODES, None, 5))
    if r.random() < 0.3:
        obj["message"] = _hostile_value(r)


def _m_huge_string(r: random.Random, obj: dict[str, Any]) -> None:
    d = _pick_dict(r, obj)
    key = r.choice(list(d)) if d and r.random() < 0.7 else "padding"
    d[key] = r.choice("xé€") * r.randint(10_000, 250_000)


def _m_extra_fields(r: random.Random, obj: dict[str, Any]) -> None:
    d = _pick_dict(r, obj)
    for _ in range(r.randint(1, 5)):
        d["".join(r.choice(_TEXT_ALPHABET) for _ in range(r.randint(0, 8)))] = _hostile_value(r)


_STRUCTURED: tuple[tuple[Callable[[random.Random, dict[str, Any]], None], float], ...] = (
    (_m_delete_field, 10),
    (_m_type_swap, 14),
    (_m_num_str_swap, 8),
    (_m_inject_nan, 6),
    (_m_extreme_number, 6),
    (_m_bad_time, 6),
    (_m_channel_swap, 8),
    (_m_wrap_data, 4),
    (_m_deep_field, 1.5),
    (_m_type_inject, 4),
    (_m_huge_string, 0.15),
    (_m_extra_fields, 3),
)


def _t_bit_flip(r: random.Random, b: bytearray) -> None:
    for _ in range(r.randint(1, 4)):
        i = r.randrange(len(b))
        b[i] ^= 1 << r.randrange(8)


def _t_truncate(r: random.Random, b: bytearray) -> None:
    del b[r.randrange(len(b)) :]


def _t_duplicate_field(r: random.Random, b: bytearray) -> None:
    # Insert a duplicate key right after the data object's (or the envelope's) brace.
    at = b.find(b'"data":{')
    at = at + 8 if at >= 0 else 1
    key = r.choice((b'"price"', b'"order_id"', b'"channel"', b'"quantity"', b'"timestamp"'))
    val = r.choice((b'"1"', b"null", b'"-5"', b"[]", b'"x"', b"NaN", b"7"))
    b[at:at] = key + b":" + val + b","


def _t_invalid_escape(r: random.Random, b: bytearray) -> None:
    quotes = [i for i in range(1, len(b)) if b[i] == 0x22][:64]
    at = r.choice(quotes) if quotes else 0
    esc = r.choice(
        (b"\\x41", b"\\u12G4", b"\\", b"\\ud800", b"\\udc00\\ud800", b"\\U0001F600", b"\\q")
    )
    b[at:at] = esc


def _t_control_chars(r: random.Random, b: bytearray) -> None:
    at = r.randrange(len(b))
    b[at:at] = r.choice((b"\x00", b"\n", b"\x1f", b"\t\r", b"\x7f", b"\x08"))


def _t_garbage(r: random.Random, b: bytearray) -> None:
    pick = r.randrange(7)
    if pick == 0:
        b[0:0] = "\ufeff".encode()
    elif pick == 1:
        b.extend(r.choice((b",", b"}", b"]", b" xyz", b"{}", b"\n\n", b"\x00")))
    elif pick == 2:
        b.extend(bytes(b))  # two objects back to back
    elif pick == 3:
        b[0:0] = r.choice((b"[", b"  ", b"//c\n", b"\x00"))
    elif pick == 4:
        b[:] = b.replace(b'":', b'" :', 1).replace(b",", b" , ", 3)  # valid whitespace
    elif pick == 5:
        b[:] = b.replace(b'"', b"'", 2)
    else:
        b[:] = b.upper() if r.random() < 0.5 else b.replace(b"true", b"True")


def _t_random_span(r: random.Random, b: bytearray) -> None:
    i = r.randrange(len(b))
    n = r.randint(1, 8)
    b[i : i + n] = bytes(r.getrandbits(8) for _ in range(r.randint(0, 8)))


_TEXTUAL: tuple[tuple[Callable[[random.Random, bytearray], None], float], ...] = (
    (_t_bit_flip, 8),
    (_t_truncate, 6),
    (_t_duplicate_field, 5),
    (_t_invalid_escape, 5),
    (_t_control_chars, 4),
    (_t_garbage, 6),
    (_t_random_span, 4),
)


class Mutator:
    """Mutations of valid frames, fast enough for a million of them (seeded ``random``).

    Each frame starts from a valid frame and gets one to three mutations: structured
    ones on the parsed object, textual ones on the encoded bytes, or both. A result that
    is not valid UTF-8 goes out as a binary frame (a text frame would end the connection).
    A few percent are sent unchanged as binary frames, or as empty / non-object frames.

    Example:
        >>> m = Mutator(seed=1)
        >>> frames = [m.frame() for _ in range(1000)]
    """

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.valid = ValidFrames(random.Random(seed + 1))
        self._s_ops = [op for op, _ in _STRUCTURED]
        self._s_weights = [w for _, w in _STRUCTURED]
        self._t_ops = [op for op, _ in _TEXTUAL]
        self._t_weights = [w for _, w in _TEXTUAL]

    def frame(self) -> Frame:
        r = self.rng
        obj = self.valid.any_object()
        pick = r.random()
        if pick < 0.02:
            return Frame(encode(obj).encode(), binary=True, origin="mutation:binary-json")
        if pick < 0.025:
            return Frame(
                r.choice(("", " ", "null", "[]", "5", '"x"', "true", "{}", "[{}]")),
                origin="mutation:non-object",
            )
        if pick < 0.03:
            raw = bytes(r.getrandbits(8) for _ in range(r.randint(0, 64)))
            return Frame(raw, binary=True, origin="mutation:random-bytes")
        names: list[str] = []
        n_ops = r.choice((1, 1, 1, 2, 2, 3))
        structured = r.random() < 0.7
        if structured:
            for op in r.choices(self._s_ops, self._s_weights, k=n_ops):
                op(r, obj)
                names.append(op.__name__[3:])
        text = encode(obj, compact=r.random() < 0.9)
        if not structured or r.random() < 0.2:
            b = bytearray(text.encode())
            for top in r.choices(self._t_ops, self._t_weights, k=1 if structured else n_ops):
                if b:
                    top(r, b)
                names.append(top.__name__[3:])
            if len(b) > MAX_FRAME:
                del b[MAX_FRAME:]
                names.append("cut")
            try:
                text = b.decode()
            except UnicodeDecodeError:
                return Frame(bytes(b), binary=True, origin="mutation:" + "+".join(names))
        payload = text
        if len(payload.encode()) > MAX_FRAME:
            payload = payload[: MAX_FRAME // 4]
            names.append("cut")
        if r.random() < 0.03:
            return Frame(payload.encode(), binary=True, origin="mutation:" + "+".join(names))
        return Frame(payload, origin="mutation:" + "+".join(names))

    def frames(self, n: int) -> list[Frame]:
        return [self.frame() for _ in range(n)]


# -- Hypothesis strategies -----------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(_RAW_NUMBERS + _BAD_LITERALS).map(Raw),
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
_amounts = st.one_of(
    st.sampled_from(_AMOUNT_STRINGS),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(),
    st.sampled_from(_RAW_NUMBERS).map(Raw),
    _scalars,
)
_times = st.one_of(
    st.sampled_from(_TIME_VALUES),
    st.datetimes().map(lambda d: d.isoformat()),
    st.integers(min_value=-(2**70), max_value=2**70),
    _scalars,
)
_depths = st.integers(min_value=1, max_value=6000)
_deep = st.builds(nested, _depths, arrays=st.booleans())
_huge = st.builds(lambda n, c: c * n, st.integers(1000, 250_000), st.sampled_from(("x", "é", "\\")))


def _fields(names: Iterable[str], values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({}, optional=dict.fromkeys(names, values))


_data = st.one_of(
    _fields(("price", "quantity", "is_buyer_maker"), _amounts).flatmap(
        lambda d: _fields(("timestamp",), _times).map(lambda t: {**d, **t})
    ),
    _fields(("open", "high", "low", "close", "volume"), _amounts).flatmap(
        lambda d: _fields(("time", "open_time", "is_closed"), _times).map(lambda t: {**d, **t})
    ),
    _fields(
        (
            "order_id",
            "status",
            "symbol",
            "side",
            "type",
            "quantity",
            "price",
            "executed_price",
            "executed_quantity",
            "fee",
        ),
        _amounts | st.sampled_from(_STATUSES),
    ).flatmap(
        lambda d: _fields(("filled_at", "cancelled_at", "rejected_reason"), _times).map(
            lambda t: {**d, **t}
        )
    ),
    _fields(
        ("total_equity", "available_cash", "unrealized_pnl", "realized_pnl", "roi_pct"), _amounts
    ).flatmap(lambda d: _fields(("timestamp",), _times).map(lambda t: {**d, **t})),
    _json,
    _deep,
)
_envelopes = st.fixed_dictionaries(
    {},
    optional={
        "channel": st.sampled_from(_KNOWN_CHANNELS + _OTHER_CHANNELS) | _scalars,
        "symbol": st.sampled_from(_SYMBOL_VALUES) | _scalars,
        "interval": st.sampled_from(_INTERVAL_VALUES) | _scalars,
        "type": st.sampled_from(_TYPES) | _scalars,
        "data": _data,
        "code": st.sampled_from(_CODES) | _scalars,
        "message": _scalars | _huge,
        "extra": _json,
    },
)


def _envelope_frame(obj: dict[str, Any], compact: bool, binary: bool) -> Frame:
    text = encode(obj, compact=compact)
    if len(text.encode()) > MAX_FRAME:
        text = text[: MAX_FRAME // 4]
    return Frame(text.encode() if binary else text, binary=binary, origin="hypothesis:envelope")


def _bad_utf8(b: bytes) -> Frame:
    return Frame(b + b"\xff\xfe" if b.isascii() else b, binary=True, origin="hypothesis:bytes")


@st.composite
def _valid_with_defect(draw: st.DrawFn) -> Frame:
    """A valid data frame of a subscribed channel with one field replaced by ``_amounts`` /
    ``_times`` values, so that many hostile values meet the typed decoders."""
    seed = draw(st.integers(0, 2**32 - 1))
    obj = ValidFrames(random.Random(seed)).data_object()
    data = obj["data"]
    key = draw(st.sampled_from(sorted(data)))
    timey = key in ("timestamp", "time", "open_time", "filled_at", "cancelled_at")
    data[key] = draw(_times if timey else _amounts)
    return Frame(encode(obj), origin=f"hypothesis:defect:{key}")


def hostile_frames() -> st.SearchStrategy[Frame]:
    """A Hypothesis strategy of hostile server frames (text frames are valid UTF-8)."""
    return st.one_of(
        st.builds(_envelope_frame, _envelopes, st.booleans(), st.booleans()),
        _valid_with_defect(),
        st.builds(lambda o: Frame(encode(o), origin="hypothesis:json"), _json),
        st.builds(
            lambda s: Frame(s, origin="hypothesis:text"),
            st.text(st.characters(codec="utf-8"), max_size=40),
        ),
        st.builds(
            lambda b: Frame(b, binary=True, origin="hypothesis:binary"), st.binary(max_size=40)
        ),
        st.binary(max_size=40).map(_bad_utf8),
        st.builds(
            lambda d, key: Frame(
                encode({"channel": "ticker", "symbol": "BTCUSDT", key: d}), origin="hypothesis:deep"
            ),
            _deep,
            st.sampled_from(("data", "extra", "message")),
        ),
    )


def hypothesis_frames(n: int, *, seed: int = 0) -> list[Frame]:
    """Draw ``n`` frames from :func:`hostile_frames` (generate phase only, no database).

    Runs a ``@given`` function ``n`` times and collects its argument: faster than
    ``strategy.example()`` and without its warning. Several hundred frames per second.
    """
    out: list[Frame] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_frames())
    def collect(frame: Frame) -> None:
        out.append(frame)

    collect()
    return out


# -- checking typed events ----------------------------------------------------------------


def _aware(v: object) -> bool:
    return isinstance(v, datetime) and v.tzinfo is not None and v.utcoffset() is not None


def _dec(
    v: object, *, positive: bool = False, signed: bool = False, optional: bool = False
) -> bool:
    if v is None:
        return optional
    if type(v) is not Decimal or not v.is_finite():
        return False
    if signed:
        return True
    return v > 0 if positive else v >= 0


def _str(v: object, *, optional: bool = False, nonempty: bool = False) -> bool:
    if v is None:
        return optional
    return type(v) is str and (bool(v) or not nonempty)


def typed_problems(event: object, channel: str) -> list[str]:
    """What is wrong with a typed event delivered on ``channel`` (empty: fully valid).

    Checks every field's exact type and each invariant the models promise (see
    ``agentstream/models.py`` and docs/handlers.md#validation), and that the envelope
    fields match the channel the handler was registered for.
    """
    bad: list[str] = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            bad.append(what)

    kind, _, rest = channel.partition(":")
    if kind == "ticker":
        if type(event) is not Ticker:
            return [f"not a Ticker: {type(event).__name__}"]
        need(event.symbol == rest, f"symbol {event.symbol!r}")
        need(_dec(event.price, positive=True), f"price {event.price!r}")
        need(_dec(event.quantity, optional=True), f"quantity {event.quantity!r}")
        need(_aware(event.timestamp), f"timestamp {event.timestamp!r}")
        need(
            event.is_buyer_maker is None or type(event.is_buyer_maker) is bool,
            f"is_buyer_maker {event.is_buyer_maker!r}",
        )
    elif kind == "candles":
        if type(event) is not Candle:
            return [f"not a Candle: {type(event).__name__}"]
        symbol, _, interval = rest.partition(":")
        need(event.symbol == symbol and event.interval == interval, "symbol/interval")
        for name in ("open", "high", "low", "close"):
            need(_dec(getattr(event, name), positive=True), f"{name} {getattr(event, name)!r}")
        need(_dec(event.volume), f"volume {event.volume!r}")
        if not bad:
            need(event.low <= event.high, "low above high")
        need(_aware(event.open_time) and event.open_time == event.time, "open_time/time")
        need(type(event.is_closed) is bool, f"is_closed {event.is_closed!r}")
    elif kind == "orders":
        if type(event) is not OrderUpdate:
            return [f"not an OrderUpdate: {type(event).__name__}"]
        need(_str(event.order_id, nonempty=True), f"order_id {event.order_id!r}")
        for name in ("status", "symbol", "side", "type"):
            need(_str(getattr(event, name)), f"{name} {getattr(event, name)!r}")
        # The real server sends quantity "0" when its serializer lacks it: non-negative.
        need(_dec(event.quantity), f"quantity {event.quantity!r}")
        for name in ("price", "executed_price", "executed_quantity", "fee"):
            need(_dec(getattr(event, name), optional=True), f"{name} {getattr(event, name)!r}")
        for name in ("filled_at", "cancelled_at"):
            v = getattr(event, name)
            need(v is None or _aware(v), f"{name} {v!r}")
        need(_str(event.rejected_reason, optional=True), "rejected_reason")
    elif kind == "portfolio":
        if type(event) is not Portfolio:
            return [f"not a Portfolio: {type(event).__name__}"]
        for name in ("total_equity", "available_cash", "unrealized_pnl", "realized_pnl"):
            need(_dec(getattr(event, name), signed=True), f"{name} {getattr(event, name)!r}")
        need(_dec(event.roi_pct, signed=True, optional=True), f"roi_pct {event.roi_pct!r}")
        need(event.timestamp is None or _aware(event.timestamp), f"timestamp {event.timestamp!r}")
    else:
        bad.append(f"unexpected channel {channel}")
    return bad


# -- the rig ------------------------------------------------------------------------------

#: The rig's registrations: channel key -> (dict handler?, typed handler?).
ROUTES: dict[str, tuple[bool, bool]] = {
    "ticker:BTCUSDT": (True, True),
    "ticker:ETHUSDT": (False, True),
    "ticker:SOLUSDT": (True, False),
    f"candles:BTCUSDT:{INTERVAL}": (True, True),
    "orders": (True, True),
    "portfolio": (True, True),
}


@dataclass
class Checkpoint:
    """What one :meth:`FuzzRig.send` observed (deltas over the batch, marker included)."""

    sent: int
    accounted: int = 0
    data: int = 0
    control: int = 0
    dropped: int = 0
    invalid: int = 0
    dict_calls: int = 0
    typed_calls: int = 0
    internal_errors: int = 0
    typed_violations: int = 0
    reconnects: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class _Errors(logging.Handler):
    """Counts the client's internal-error records (a frame that escaped its decoder)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.kinds: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "agentstream" and "internal error" in record.getMessage():
            self.count += 1
            exc = record.exc_info[1] if record.exc_info else None
            self.kinds[f"{type(exc).__name__}: {str(exc)[:80]}" if exc else "?"] += 1


class FuzzRig:
    """A quiet sim and a client with dict and typed handlers, to send hostile frames to.

    Example:
        >>> async with FuzzRig.start() as rig:
        ...     cp = await rig.send(Mutator(seed=1).frames(1000))
        ...     assert cp.ok, cp.problems
    """

    def __init__(self, sim: SimExchange, ws: AgentExchangeWS) -> None:
        self.sim = sim
        self.ws = ws
        self.token = uuid.uuid4().hex[:12]
        self.markers_sent = 0
        self.markers_seen = {"dict": 0, "typed": 0}
        self.marker_order_ok = True
        self.dict_calls: Counter[str] = Counter()
        self.typed_calls: Counter[str] = Counter()
        self.not_dict = 0
        self.violations = 0
        self.violation_examples: list[str] = []
        self.errors = _Errors()
        self.decode_errors = 0
        self.frames_sent = 0
        self.killers_sent = 0
        for key, (plain, typed) in ROUTES.items():
            if plain:
                self._register(key, self._dict_handler(key))
            if typed:
                self._register(key, self._typed_handler(key))
        self.disconnect_reasons: list[str] = []
        ws.on_error(self._on_error)
        ws.on_disconnect(self.disconnect_reasons.append)

    def _register(self, key: str, fn: Callable[..., None]) -> None:
        kind, _, rest = key.partition(":")
        # every=True: the oracle counts every data message a handler should get.
        if kind == "ticker":
            self.ws.on_ticker(rest, fn, every=True)
        elif kind == "candles":
            symbol, _, interval = rest.partition(":")
            self.ws.on_candles(symbol, interval, fn, partial=True, every=True)
        elif kind == "orders":
            self.ws.on_order_update(fn)
        else:
            self.ws.on_portfolio(fn)

    def _marker(self, who: str, order_id: object) -> None:
        if isinstance(order_id, str) and order_id.startswith(f"marker-{self.token}-"):
            n = int(order_id.rsplit("-", 1)[1])
            if n <= self.markers_seen[who]:
                self.marker_order_ok = False
            self.markers_seen[who] = n

    def _dict_handler(self, key: str) -> Callable[[Any], None]:
        def on_dict(data: Any) -> None:
            self.dict_calls[key] += 1
            if type(data) is not dict:
                self.not_dict += 1
            elif key == "orders":
                self._marker("dict", data.get("order_id"))

        return on_dict

    def _typed_handler(self, key: str) -> Callable[[Any], None]:
        def record(event: object) -> None:
            self.typed_calls[key] += 1
            problems = typed_problems(event, key)
            if problems:
                self.violations += 1
                if len(self.violation_examples) < 10:
                    self.violation_examples.append(f"{key}: {problems}: {event!r}"[:400])
            if type(event) is OrderUpdate:
                self._marker("typed", event.order_id)

        # The first parameter's annotation makes each a typed handler of its model.
        def on_ticker(event: Ticker) -> None:
            record(event)

        def on_candle(event: Candle) -> None:
            record(event)

        def on_order(event: OrderUpdate) -> None:
            record(event)

        def on_portfolio(event: Portfolio) -> None:
            record(event)

        kind = key.split(":")[0]
        handlers: dict[str, Callable[[Any], None]] = {
            "ticker": on_ticker,
            "candles": on_candle,
            "orders": on_order,
            "portfolio": on_portfolio,
        }
        return handlers[kind]

    def _on_error(self, exc: Exception, context: dict[str, Any]) -> None:
        if context.get("stage") == "decode":
            self.decode_errors += 1

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, **client_options: Any) -> AsyncIterator[FuzzRig]:
        """A running rig: sim started, client connected and every channel acknowledged."""
        logger = logging.getLogger("agentstream")
        async with SimExchange(**QUIET_SIM) as sim:
            ws = AgentExchangeWS(DEMO_API_KEY, sim.url, **{**CLIENT_OPTIONS, **client_options})
            rig = cls(sim, ws)
            logger.addHandler(rig.errors)
            try:
                async with ws:
                    await rig._wait(
                        lambda: (
                            ws.stats.connections == 1
                            and sim.subscriptions() == [set(ROUTES)]
                            and ws.stats.control_messages >= len(ROUTES)
                        ),
                        10.0,
                    )
                    yield rig
            finally:
                logger.removeHandler(rig.errors)

    @staticmethod
    async def _wait(cond: Callable[[], bool], timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            while not cond():
                await anyio.sleep(0.001)
            return True
        return False

    def _counters(self) -> tuple[int, ...]:
        s = self.ws.stats
        return (
            s.messages_total,
            s.control_messages,
            s.dropped_frames,
            s.invalid_events,
            s.reconnects,
            s.conflated,
        )

    async def send(self, frames: Sequence[Frame], *, timeout: float = 30.0) -> Checkpoint:
        """Send ``frames`` and a marker; wait for the marker; check the accounting."""
        ws, sim = self.ws, self.sim
        before = self._counters()
        before_msgs = dict(ws.stats.messages)
        before_dict, before_typed = Counter(self.dict_calls), Counter(self.typed_calls)
        before_err, before_viol = self.errors.count, self.violations
        sim_before = sim.stats.frames_sent
        for f in frames:
            sim.send_raw(f.payload, binary=f.binary)
        self.markers_sent += 1
        n = self.markers_sent
        marker = encode(
            {
                "channel": "orders",
                "data": {
                    "order_id": f"marker-{self.token}-{n}",
                    "status": "filled",
                    "symbol": "BTCUSDT",
                    "side": "buy",
                    "type": "market",
                    "quantity": "1",
                },
            }
        )
        sim.send_raw(marker)
        self.frames_sent += len(frames) + 1
        cp = Checkpoint(sent=len(frames) + 1)
        arrived = await self._wait(
            lambda: self.markers_seen["dict"] >= n and self.markers_seen["typed"] >= n, timeout
        )
        drained = await self._wait(lambda: ws.stats.queued == 0, timeout)
        after = self._counters()
        after_msgs = ws.stats.messages
        d_data, d_ctrl, d_drop, d_inv, d_rec, d_conf = (
            a - b for a, b in zip(after, before, strict=True)
        )
        cp.data, cp.control, cp.dropped, cp.invalid, cp.reconnects = (
            d_data,
            d_ctrl,
            d_drop,
            d_inv,
            d_rec,
        )
        cp.accounted = d_data + d_ctrl + d_drop
        cp.dict_calls = sum((self.dict_calls - before_dict).values())
        cp.typed_calls = sum((self.typed_calls - before_typed).values())
        cp.internal_errors = self.errors.count - before_err
        cp.typed_violations = self.violations - before_viol
        sim_sent = sim.stats.frames_sent - sim_before
        p = cp.problems
        if not arrived:
            p.append(f"marker {n} did not reach the order handlers within {timeout:g} s")
        if not drained:
            p.append(f"handler queues did not drain within {timeout:g} s")
        if sim_sent != cp.sent:
            p.append(f"the sim wrote {sim_sent} frames, {cp.sent} expected (not a quiet sim?)")
        if cp.accounted != cp.sent:
            p.append(
                f"accounting: {cp.sent} frames sent but messages_total+control_messages+"
                f"dropped_frames grew by {cp.accounted} "
                f"(data {d_data}, control {d_ctrl}, dropped {d_drop})"
            )
        typed_data = 0
        for key, (plain, typed) in ROUTES.items():
            got = after_msgs.get(key, 0) - before_msgs.get(key, 0)
            if plain and self.dict_calls[key] - before_dict[key] != got:
                p.append(
                    f"{key}: {got} data messages counted, the dict handler got "
                    f"{self.dict_calls[key] - before_dict[key]}"
                )
            if typed:
                typed_data += got
        if typed_data != cp.typed_calls + d_inv:
            p.append(
                f"typed channels: {typed_data} data messages counted, typed handlers got "
                f"{cp.typed_calls} and invalid_events grew by {d_inv}"
            )
        if cp.internal_errors:
            p.append(f"{cp.internal_errors} frame(s) escaped the decoder (internal error logged)")
        if cp.typed_violations:
            p.append(f"{cp.typed_violations} invalid event(s) reached a typed handler")
        if d_rec or ws.stats.connections != 1:
            p.append(f"reconnected {d_rec} time(s); {ws.stats.connections} connection(s) open")
        if d_conf:
            p.append(f"{d_conf} events conflated")
        if self.not_dict:
            p.append(f"{self.not_dict} dict-handler events were not dicts")
        if not self.marker_order_ok:
            p.append("markers arrived out of order")
        if not arrived or not drained or d_rec:
            await self.resync(timeout)
        return cp

    async def resync(self, timeout: float = 10.0) -> None:
        """After a lost connection: wait until the client is connected and subscribed again."""
        await self._wait(
            lambda: self.ws.stats.connections == 1 and self.sim.subscriptions() == [set(ROUTES)],
            timeout,
        )

    async def isolate(
        self, frames: Sequence[Frame], limit: int = 10, seen: set[str] | None = None
    ) -> list[tuple[Frame, list[str]]]:
        """Send ``frames`` one at a time; return (frame, problems) for those that fail.

        With ``seen``, frames of an origin already reported there (``mutation:type_swap``,
        ``hypothesis:deep``, ...) are skipped, and new ones added: varied examples.
        """
        found: list[tuple[Frame, list[str]]] = []
        for f in frames:
            key = f.origin.split("+")[0]
            if seen is not None and key in seen:
                continue
            cp = await self.send([f])
            if not cp.ok:
                found.append((f, cp.problems))
                if seen is not None:
                    seen.add(key)
                if len(found) >= limit:
                    break
        return found

    async def send_connection_killer(
        self, payload: bytes, *, timeout: float = 10.0
    ) -> tuple[bool, str]:
        """Send a text frame that ends the connection by design (invalid UTF-8, or over
        ``max_message_size``); return whether the client reconnected and resubscribed
        every channel exactly once, and how the old connection ended."""
        reasons = self.disconnect_reasons
        seen = len(reasons)
        opened = self.sim.stats.connections_opened
        reconnects = self.ws.stats.reconnects
        controls = self.ws.stats.control_messages
        self.sim.send_raw(payload, binary=False)
        self.killers_sent += 1
        ok = await self._wait(
            lambda: (
                self.ws.stats.reconnects > reconnects
                and self.sim.stats.connections_opened > opened
                and self.sim.subscriptions() == [set(ROUTES)]
                # ... and the client has the acks, so they do not land in the next batch
                and self.ws.stats.control_messages >= controls + len(ROUTES)
            ),
            timeout,
        )
        records = self.sim.open_connections()
        exact = len(records) == 1 and Counter(records[0].subscribe_requests) == Counter(
            list(ROUTES)
        )
        await self._wait(lambda: len(reasons) > seen, 2.0)
        return ok and exact, reasons[seen] if len(reasons) > seen else "?"
