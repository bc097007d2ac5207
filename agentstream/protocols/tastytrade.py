"""tastytrade's account ("alert") streamer, sans I/O.

Every client message is one JSON object carrying the current token (``auth-token``), an
``action`` and a ``request-id``. ``connect`` (with the account numbers) comes first and is
acknowledged before anything else; ``public-watchlists-subscribe`` and
``quote-alerts-subscribe`` follow; the CLIENT sends ``heartbeat`` every 15 s or so (the
server closes a socket idle for about a minute). Data messages are
``{"type": TYPE, "data": {...}, "timestamp": ms}``, sometimes batched as
``{"results": [...]}``. ``"failed"`` answers a bad or expired token. See
``shared/protocol/tastytrade.md``.

Example:
    >>> proto = TastytradeProtocol("wss://streamer.tastyworks.com")
    >>> proto.classify('{"status":"ok","action":"heartbeat","request-id":7}')
    Ack(key=None, request_id=7, subscribed=True)
"""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import msgspec

from agentstream.errors import ConfigurationError
from agentstream.orders import OrderEvent, OrderStatus, map_status, quantity_key
from agentstream.protocols.base import (
    Ack,
    AuthFailed,
    BadFrame,
    Batch,
    Data,
    Handshake,
    HttpResponse,
    Inbound,
    Kind,
    Noise,
    Outgoing,
    Refused,
    VenueProtocol,
)
from agentstream.tastytrade.models import (
    AccountBalance,
    CurrentPosition,
    PlacedOrder,
    QuoteAlert,
    Watchlist,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from agentstream.channels import Channel

__all__ = ["LIVE_URL", "SANDBOX_URL", "TastytradeProtocol"]

LIVE_URL: Final = "wss://streamer.tastyworks.com"
SANDBOX_URL: Final = "wss://streamer.cert.tastyworks.com"

#: The streamer's kinds. ``account`` channels (one per account number) and the two
#: subscriptions are what is sent; the others are the data those bring.
KINDS: Final[Mapping[str, Kind]] = {
    "account": Kind("account", symbol=True),
    "orders": Kind(
        "orders",
        PlacedOrder,
        private=True,
        time_fields=("updated_at", "updated-at"),
        flags=("recovered",),
    ),
    "complex_orders": Kind("complex_orders", private=True),
    "balances": Kind("balances", AccountBalance, private=True),
    "positions": Kind("positions", CurrentPosition, private=True),
    "quote_alerts": Kind("quote_alerts", QuoteAlert, private=True),
    "watchlists": Kind("watchlists", Watchlist),
}
#: A data message's ``type`` -> our kind. Other types are ignored (counted).
TYPES: Final = {
    "Order": "orders",
    "ComplexOrder": "complex_orders",
    "AccountBalance": "balances",
    "CurrentPosition": "positions",
    "QuoteAlert": "quote_alerts",
    "PublicWatchlists": "watchlists",
}
#: Kinds subscribed by an action of their own (the account kinds come with ``connect``).
_ACTIONS: Final = {
    "watchlists": "public-watchlists-subscribe",
    "quote_alerts": "quote-alerts-subscribe",
}

#: tastytrade's order statuses as :class:`~agentstream.OrderStatus`.
STATUS_MAP: Final = {
    "Received": OrderStatus.PENDING,
    "Routed": OrderStatus.PENDING,
    "In Flight": OrderStatus.PENDING,
    "Contingent": OrderStatus.PENDING,  # waits for another order
    "Live": OrderStatus.OPEN,
    "Cancel Requested": OrderStatus.OPEN,  # still working until cancelled
    "Replace Requested": OrderStatus.OPEN,
    "Filled": OrderStatus.FILLED,
    "Cancelled": OrderStatus.CANCELLED,
    "Removed": OrderStatus.CANCELLED,  # removed by the broker
    "Partially Removed": OrderStatus.CANCELLED,  # partly filled, the rest removed
    "Expired": OrderStatus.EXPIRED,
    "Rejected": OrderStatus.REJECTED,
}

_FINAL: Final = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.EXPIRED}
)

_encode = msgspec.json.Encoder().encode


class _Message(msgspec.Struct, frozen=True, rename="kebab"):
    """Any streamer message: an ack or error, a data message, or a batch of them."""

    status: str | None = None
    action: str | None = None
    message: str | None = None
    request_id: int | None = None
    type: str | None = None
    data: msgspec.Raw = msgspec.Raw()
    results: list[msgspec.Raw] | None = None


_message: Final = msgspec.json.Decoder(_Message)


class TastytradeProtocol(VenueProtocol):
    """tastytrade's account streamer.

    Args:
        url: the streamer's URL (live, sandbox, or the simulated exchange's).
        heartbeat_interval: seconds between client heartbeats (tastytrade accepts 2 to 60;
            shorter ones are for tests against the simulated exchange).
    """

    venue = "tastytrade"
    kinds = KINDS
    orders_kind = "orders"
    hot_kind = None
    stale_timeout = 60.0
    max_subscriptions = 10_000  # one socket carries everything
    auth_http_statuses = frozenset({401, 403})

    def __init__(self, url: str, heartbeat_interval: float = 15.0) -> None:
        url = url.strip()
        if not url.startswith(("ws://", "wss://")):
            raise ConfigurationError(f"url must be a ws:// or wss:// URL, got {url!r}")
        if heartbeat_interval <= 0:
            raise ConfigurationError(
                f"heartbeat_interval must be positive, got {heartbeat_interval}"
            )
        self.url = url
        self.heartbeat_interval = heartbeat_interval
        self._ids = itertools.count(1)

    def _message(self, token: str, action: str, value: Any = None) -> tuple[str, int]:
        rid = next(self._ids)
        msg: dict[str, Any] = {"auth-token": token, "action": action}
        if value is not None:
            msg["value"] = value
        msg["request-id"] = rid
        return _encode(msg).decode(), rid

    def handshake(self, token: str, answer: HttpResponse | None) -> Handshake:
        return Handshake(self.url, secret=token)

    def open_messages(self, token: str, wanted: list[Channel]) -> list[Outgoing]:
        """``connect`` with the accounts, acknowledged before anything else."""
        accounts = [ch for ch in wanted if ch.kind == "account"]
        text, rid = self._message(token, "connect", [ch.symbol for ch in accounts])
        return [
            Outgoing(text, request_id=rid, await_ack=True, covers=tuple(c.key for c in accounts))
        ]

    def subscribe_messages(
        self, token: str, add: list[Channel], wanted: list[Channel]
    ) -> list[Outgoing]:
        out = []
        if any(ch.kind == "account" for ch in add):
            # connect again with every account: it replaces the account list.
            accounts = [ch.symbol for ch in wanted if ch.kind == "account"]
            text, rid = self._message(token, "connect", accounts)
            out.append(Outgoing(text, request_id=rid))
        for ch in add:
            action = _ACTIONS.get(ch.kind)
            if action is not None:
                text, rid = self._message(token, action)
                out.append(Outgoing(text, key=ch.key, request_id=rid))
        return out

    def heartbeat_message(self, token: str) -> Outgoing:
        text, _ = self._message(token, "heartbeat")
        return Outgoing(text)  # its ack needs no matching

    def classify(self, frame: str | bytes) -> Inbound:
        try:
            msg = _message.decode(frame)
        except RecursionError:
            return BadFrame("nested too deeply")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return BadFrame(str(exc) or "not a JSON object")
        return self._classify(msg)

    def _classify(self, msg: _Message) -> Inbound:
        if msg.results is not None:
            items: list[Inbound] = []
            for raw in msg.results:
                try:
                    items.append(self._classify(_message.decode(raw)))
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    items.append(BadFrame(f"a batch item: {exc}"))
            return Batch(tuple(items))
        if msg.type is not None:
            kind = TYPES.get(msg.type)
            if kind is None:
                return Noise(msg.type)
            if not msg.data:
                return BadFrame(f"a {msg.type} message without data")
            return Data(kind, msg.data)
        if msg.status == "ok":
            return Ack(request_id=msg.request_id)
        if msg.status == "error":
            text = msg.message or "error"
            if text == "failed":
                # A bad or expired access token: a fresh one may be accepted.
                return AuthFailed(f"{msg.action or 'request'} failed", refreshable=True)
            return Refused(
                text, f"answer to {msg.action or 'a request'}", request_id=msg.request_id
            )
        return BadFrame("no shape of the account streamer")

    def order_event(self, event: PlacedOrder) -> OrderEvent:
        fills = [f for leg in event.legs for f in leg.fills]
        filled = sum((f.quantity for f in fills), Decimal(0))
        average = (
            sum((f.quantity * f.fill_price for f in fills), Decimal(0)) / filled if filled else None
        )
        left = [leg.remaining_quantity for leg in event.legs if leg.remaining_quantity is not None]
        first = event.legs[0].action if event.legs else ""
        side = "buy" if first.startswith("Buy") else "sell" if first.startswith("Sell") else None
        return OrderEvent(
            venue=self.venue,
            account=event.account_number,
            order_id=str(event.id) if event.id is not None else "",
            symbol=event.underlying_symbol,
            side=side,
            status=map_status(STATUS_MAP, event.status, filled),
            filled_quantity=filled,
            remaining_quantity=sum(left, Decimal(0)) if left else None,
            average_price=average,
            updated_at=event.updated_at,
            recovered=event.recovered,
            raw=event,
        )

    def order_final(self, status: str) -> bool:
        return STATUS_MAP.get(status) in _FINAL

    def order_state(self, event: Any) -> tuple[str, str, str] | None:
        if isinstance(event, dict):
            oid, status = event.get("id"), event.get("status")
            raw_legs = event.get("legs")
            legs: list[Any] = list(raw_legs) if isinstance(raw_legs, list | tuple) else []
            fills = [
                f.get("quantity")
                for leg in legs
                if isinstance(leg, dict)
                for f in (leg.get("fills") or ())
                if isinstance(f, dict)
            ]
        else:
            oid, status = event.id, event.status
            fills = [f.quantity for leg in event.legs for f in leg.fills]
        if oid is None:
            return None
        try:
            filled = sum((Decimal(str(q)) for q in fills), Decimal(0))
        except ArithmeticError:
            filled = Decimal(0)
        return str(oid), str(status), quantity_key(filled)

    def channel_for(self, key: str) -> Channel:
        from agentstream.channels import Channel

        return Channel.parse(key, self.kinds)
