"""The AgentExchange wire protocol, sans I/O: bytes in, classified frames out.

Nothing here touches a socket or a clock, so every rule of the protocol is testable in
microseconds. See ``shared/protocol/agentexchange.md`` for the protocol itself; what the
platform's real server does differently from the SDK page is handled here too (``pong``
spelled both ways, ``ticker_all``, candle ``time`` vs ``open_time``, 15m and 4h candles
the server does not serve).
"""

from __future__ import annotations

import typing
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec

from agentstream.errors import ConfigurationError
from agentstream.models import Candle, OrderUpdate, Portfolio, Ticker
from agentstream.orders import OrderEvent, OrderStatus, map_status, quantity_key
from agentstream.protocols.base import (
    Ack,
    BadFrame,
    Data,
    Handshake,
    HttpResponse,
    Inbound,
    Kind,
    Noise,
    Outgoing,
    Ping,
    Refused,
    VenueProtocol,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from agentstream.channels import Channel

__all__ = [
    "AUTH_CLOSE_CODES",
    "AUTH_HTTP_STATUSES",
    "INTERVALS",
    "INTERVAL_SECONDS",
    "KINDS",
    "PONG",
    "AgentExchangeProtocol",
    "Envelope",
    "endpoint_url",
    "subscribe_message",
    "unsubscribe_message",
]

#: The answer to a server ping: the platform reads ``action``, the SDK page says ``type``.
PONG: Final = '{"type":"pong","action":"pong"}'
#: Handshake statuses that mean "the key is wrong": stop for good.
AUTH_HTTP_STATUSES: Final = frozenset({401, 403})
#: Close codes that mean "the key is wrong": 4401 (the platform's), 1008 (policy violation).
AUTH_CLOSE_CODES: Final = frozenset({4401, 1008})

#: Candle intervals the SDK page promises, and their lengths: the one table of them.
INTERVAL_SECONDS: Final[Mapping[str, int]] = {
    "1m": 60,
    "5m": 300,
    "15m": 900,
    "1h": 3600,
    "4h": 14400,
    "1d": 86400,
}
#: Candle intervals the client accepts (the SDK page's list).
INTERVALS: Final[tuple[str, ...]] = tuple(INTERVAL_SECONDS)
#: Intervals the platform's server serves; the others are built from the finest of these
#: that divides them (see AgentExchangeProtocol.fallback).
SERVER_INTERVALS: Final[tuple[str, ...]] = ("1m", "5m", "1h", "1d")

# Fields the seed page shows on orders that the server sends only when they apply;
# dict handlers get them as None otherwise, so `data["executed_price"]` never raises.
_ORDER_OPTIONAL = (
    "price",
    "executed_price",
    "executed_quantity",
    "fee",
    "filled_at",
    "cancelled_at",
    "rejected_reason",
)

#: The platform's channel kinds.
KINDS: Final[Mapping[str, Kind]] = {
    "ticker": Kind(
        "ticker",
        Ticker,
        symbol=True,
        wildcard="all",
        conflate=True,
        time_fields=("timestamp",),
    ),
    "candles": Kind(
        "candles",
        Candle,
        symbol=True,
        intervals=INTERVAL_SECONDS,
        conflate=True,
        final="is_closed",
        time_fields=("open_time", "time"),
        aliases=(("open_time", "time"),),
    ),
    "orders": Kind(
        "orders",
        OrderUpdate,
        private=True,
        time_fields=("filled_at", "cancelled_at"),
        defaults=_ORDER_OPTIONAL,
        flags=("recovered",),
    ),
    "portfolio": Kind(
        "portfolio",
        Portfolio,
        private=True,
        time_fields=("timestamp",),
        defaults=("roi_pct",),
    ),
}

#: The platform's order statuses as :class:`~agentstream.OrderStatus` (they are the same).
STATUS_MAP: Final = {s.value: s for s in OrderStatus if s is not OrderStatus.OTHER}

#: Server error codes that answer a subscribe, and what they mean for it.
_EFFECTS: Final = {"INVALID_CHANNEL": "invalid", "SUBSCRIPTION_LIMIT": "limit"}

_FINAL: Final = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.EXPIRED}
)

_encode = msgspec.json.Encoder().encode


class Envelope(msgspec.Struct, frozen=True):
    """The outer shape of every server frame; ``data`` is left undecoded.

    Control frames carry ``type`` (``ping``, ``subscribed``, ``unsubscribed``,
    ``error``); data frames carry ``channel`` and ``data``.
    """

    type: str | None = None
    channel: str | None = None
    symbol: str | None = None
    interval: str | None = None
    data: msgspec.Raw = msgspec.Raw()
    code: str | None = None
    message: str | None = None


envelope_decoder: Final = msgspec.json.Decoder(Envelope)


def endpoint_url(base_url: str, api_key: str) -> str:
    """The socket URL for ``base_url``: ``http(s)`` maps to ``ws(s)``, ``/ws/v1`` appended.

    Example:
        >>> endpoint_url("https://api.example.com/", "ak_live_x")
        'wss://api.example.com/ws/v1?api_key=ak_live_x'

    Raises:
        ConfigurationError: the URL's scheme is not ws, wss, http or https.
    """
    parts = urlsplit(base_url.strip())
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ConfigurationError(
            f"base_url must look like ws://host:port or https://host, got {base_url!r}"
        )
    path = parts.path.rstrip("/")
    if not path.endswith("/ws/v1"):
        path += "/ws/v1"
    return urlunsplit((scheme, parts.netloc, path, f"api_key={quote(api_key, safe='')}", ""))


def _channel_fields(channel: Channel) -> dict[str, str]:
    if channel.kind == "ticker" and channel.symbol == "all":
        return {"channel": "ticker_all"}
    fields: dict[str, str] = {"channel": channel.kind}
    if channel.symbol is not None:
        fields["symbol"] = channel.symbol
    if channel.interval is not None:
        fields["interval"] = channel.interval
    return fields


def subscribe_message(channel: Channel) -> str:
    """The subscribe message for ``channel`` in the platform's form.

    Example:
        >>> subscribe_message(Channel.ticker("all"))
        '{"action":"subscribe","channel":"ticker_all"}'
    """
    return _encode({"action": "subscribe", **_channel_fields(channel)}).decode()


def unsubscribe_message(channel: Channel) -> str:
    """The unsubscribe message for ``channel``."""
    return _encode({"action": "unsubscribe", **_channel_fields(channel)}).decode()


def normalize_key(raw: str | None) -> str | None:
    """A server-named channel as our key: ``ticker_all`` -> ``ticker:all``, symbols upper-cased."""
    if not raw:
        return None
    if raw == "ticker_all":
        return "ticker:all"
    parts = raw.split(":")
    if len(parts) >= 2:
        parts[1] = "all" if parts[1].upper() == "ALL" else parts[1].upper()
    return ":".join(parts)


# -- the fast decoder ------------------------------------------------------------------

_KIND_NAMES = tuple(KINDS)
_MODES = ("dict", "typed", "raw")


def _frame_type(kind: Kind, mode: str) -> type[msgspec.Struct]:
    data: Any = {"dict": dict[str, Any], "typed": kind.model, "raw": msgspec.Raw}[mode]
    fields: list[Any] = []
    if kind.symbol:
        fields.append(("symbol", str))
    if kind.intervals is not None:
        fields.append(("interval", str))
    # A frame that also carries a non-null `type` is a control message: refused here, the
    # slow path handles it.
    fields += [("data", data), ("type", None, None)]
    # gc=False: a frame is dropped as soon as its event is taken out, so it is never part
    # of a reference cycle; not tracking it saves the collector's work (about 20 ns).
    return msgspec.defstruct(
        f"_{kind.name}_{mode}_frame", fields, tag_field="channel", tag=kind.name, gc=False
    )


_FRAME_TYPES: Final = {(k, m): _frame_type(KINDS[k], m) for k in _KIND_NAMES for m in _MODES}
_FRAME_KINDS: Final = {cls: km for km, cls in _FRAME_TYPES.items()}
_DECODER_CACHE: dict[tuple[str, ...], msgspec.json.Decoder[Any]] = {}


def _decoder(modes: tuple[str, ...]) -> msgspec.json.Decoder[Any]:
    dec = _DECODER_CACHE.get(modes)
    if dec is None:
        members = tuple(_FRAME_TYPES[k, m] for k, m in zip(_KIND_NAMES, modes, strict=True))
        dec = _DECODER_CACHE[modes] = msgspec.json.Decoder(typing.Union[members])  # noqa: UP007
    return dec


class AgentExchangeProtocol(VenueProtocol):
    """The AgentExchange (TradeReady) platform's stream.

    One socket per up to 10 channels, at ``{base_url}/ws/v1?api_key=...``; one subscribe
    message per channel, acked by channel; server pings answered with a pong; a refused
    key is HTTP 401/403 at the handshake or close code 4401/1008.

    Example:
        >>> proto = AgentExchangeProtocol("ws://127.0.0.1:8000")
        >>> proto.handshake("ak_demo", None).url
        'ws://127.0.0.1:8000/ws/v1?api_key=ak_demo'
        >>> proto.classify('{"type":"subscribed","channel":"ticker_all"}')
        Ack(key='ticker:all', request_id=None, subscribed=True)
    """

    venue = "agentexchange"
    kinds = KINDS
    orders_kind = "orders"
    hot_kind = "ticker"
    stale_timeout = 40.0
    max_subscriptions = 10
    auth_close_codes = AUTH_CLOSE_CODES
    auth_http_statuses = AUTH_HTTP_STATUSES

    def __init__(self, base_url: str) -> None:
        endpoint_url(base_url, "")  # validate now, not at the first connection
        self.base_url = base_url

    def handshake(self, token: str, answer: HttpResponse | None) -> Handshake:
        return Handshake(endpoint_url(self.base_url, token), secret=token)

    def subscribe_messages(
        self, token: str, add: list[Channel], wanted: list[Channel]
    ) -> list[Outgoing]:
        return [Outgoing(subscribe_message(ch), key=ch.key) for ch in add]

    def unsubscribe_messages(
        self, token: str, remove: list[Channel], wanted: list[Channel]
    ) -> list[Outgoing]:
        return [Outgoing(unsubscribe_message(ch), key=ch.key) for ch in remove]

    def classify(self, frame: str | bytes) -> Inbound:
        try:
            env = envelope_decoder.decode(frame)
        except RecursionError:
            return BadFrame("nested too deeply")
        except Exception as exc:  # not JSON, wrong shape, not UTF-8, ...
            return BadFrame(str(exc) or "not a JSON object")
        kind = env.type
        if kind is not None:
            if kind == "ping":
                return Ping(PONG)
            if kind in ("subscribed", "unsubscribed"):
                return Ack(normalize_key(env.channel), subscribed=kind == "subscribed")
            if kind == "error":
                code = str(env.code or "UNKNOWN")
                return Refused(
                    code,
                    str(env.message or ""),
                    normalize_key(env.channel),
                    effect=_EFFECTS.get(code, "none"),  # type: ignore[arg-type]
                )
            return Noise(kind)
        raw = env.data
        ch = env.channel
        spec = KINDS.get(ch) if ch is not None else None
        if spec is None or not raw:
            return BadFrame("no known channel or no data")
        if (spec.symbol and not env.symbol) or (spec.intervals is not None and not env.interval):
            return BadFrame(f"a {ch} frame without its symbol or interval")
        return Data(ch, raw, env.symbol if spec.symbol else None, env.interval)  # type: ignore[arg-type]

    def fast_decoder(self, modes: Mapping[str, str]) -> Callable[[str | bytes], Any]:
        return _decoder(tuple(modes.get(k, "raw") for k in _KIND_NAMES)).decode

    def frame_kinds(self) -> Mapping[type[Any], tuple[str, str]]:
        return _FRAME_KINDS

    def order_event(self, event: OrderUpdate) -> OrderEvent:
        filled = event.executed_quantity or Decimal(0)
        quantity = event.quantity or None  # "0" when the server's serializer lacked it
        remaining = quantity - (filled or 0) if quantity is not None else None
        # The platform's REST order has no cancelled_at: its created_at is then the
        # latest time known (an order placed and cancelled during an outage is recent).
        times = [
            t for t in (event.filled_at, event.cancelled_at, event.created_at) if t is not None
        ]
        return OrderEvent(
            venue=self.venue,
            order_id=event.order_id,
            symbol=event.symbol or None,
            side=event.side or None,
            status=map_status(STATUS_MAP, event.status, filled),
            filled_quantity=filled,
            remaining_quantity=remaining,
            average_price=event.executed_price,
            updated_at=max(times) if times else None,
            recovered=event.recovered,
            raw=event,
        )

    def order_final(self, status: str) -> bool:
        return STATUS_MAP.get(status) in _FINAL

    def order_state(self, event: Any) -> tuple[str, str, str] | None:
        if isinstance(event, dict):
            oid, status, filled = (
                event.get("order_id"),
                event.get("status"),
                event.get("executed_quantity"),
            )
        else:
            oid, status, filled = event.order_id, event.status, event.executed_quantity
        if not isinstance(oid, str) or not oid:
            return None
        return oid, str(status), quantity_key(filled)

    def channel_for(self, key: str) -> Channel:
        """A channel by key, also in the server's forms (``ticker_all``, lower case)."""
        from agentstream.channels import Channel

        return Channel.parse(normalize_key(key) or key, self.kinds)

    def fallback(self, channel: Channel, reason: str = "") -> Channel | None:
        """15m candles from 5m, 4h from 1h: the finest served interval that divides it.

        Not when the refusal is about the symbol (the sim says ``unknown symbol``): a
        finer interval of an unknown symbol would be refused too.
        """
        if "symbol" in reason.lower():
            return None
        interval = channel.interval
        if channel.kind != "candles" or interval is None or interval in SERVER_INTERVALS:
            return None
        length = INTERVAL_SECONDS[interval]
        finer = [
            iv
            for iv in SERVER_INTERVALS
            if INTERVAL_SECONDS[iv] < length and length % INTERVAL_SECONDS[iv] == 0
        ]
        if not finer or channel.symbol is None:
            return None
        from agentstream.channels import Channel

        return Channel.candles(channel.symbol, finer[-1])

    def derive(
        self, target: Channel, source: Channel, *, partial: bool
    ) -> Callable[[Any], list[Any]]:
        """A :class:`~agentstream._aggregate.CandleAggregator`'s ``feed``."""
        from agentstream._aggregate import CandleAggregator

        assert target.symbol is not None and target.interval and source.interval
        return CandleAggregator(
            target.symbol,
            target.interval,
            INTERVAL_SECONDS[target.interval],
            INTERVAL_SECONDS[source.interval],
            partial=partial,
            complete_only=True,  # a window missing a 5m candle is not an exact 15m one
        ).feed
