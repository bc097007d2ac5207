"""Tradier's account events stream, sans I/O.

A REST session before every socket (``POST /v1/accounts/events/session``), the socket at
the URL that answer gives, one payload for the whole subscription, server heartbeats
about once a minute, order events whose numbers are JSON numbers, and
``{"error": "session not found"}`` for a session id that is expired or used. See
``shared/protocol/tradier.md``.

Example:
    >>> proto = TradierProtocol("https://api.tradier.com")
    >>> proto.pre_connect("tok").url
    'https://api.tradier.com/v1/accounts/events/session'
    >>> proto.classify('{"event":"heartbeat","status":"active","timestamp":"..."}')
    Heartbeat()
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import msgspec

from agentstream.errors import AuthenticationError, ConfigurationError, StreamConnectionError
from agentstream.orders import OrderEvent, OrderStatus, map_status, quantity_key
from agentstream.protocols.base import (
    BadFrame,
    Data,
    Handshake,
    Heartbeat,
    HttpRequest,
    HttpResponse,
    Inbound,
    Kind,
    Noise,
    Outgoing,
    Reconnect,
    Refused,
    VenueProtocol,
)
from agentstream.tradier.models import TradierOrder

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from agentstream.channels import Channel

__all__ = ["LIVE_URL", "SANDBOX_URL", "TradierProtocol"]

#: Tradier's REST roots.
LIVE_URL: Final = "https://api.tradier.com"
SANDBOX_URL: Final = "https://sandbox.tradier.com"

#: Tradier's one channel kind: the account's order events.
KINDS: Final[Mapping[str, Kind]] = {
    "orders": Kind(
        "orders",
        TradierOrder,
        private=True,
        time_fields=("transaction_date",),
        flags=("recovered",),
    ),
}

#: Tradier's statuses as :class:`~agentstream.OrderStatus`.
STATUS_MAP: Final = {
    "pending": OrderStatus.PENDING,
    "calculated": OrderStatus.PENDING,  # priced, not yet working
    "held": OrderStatus.PENDING,  # held by the broker before it works
    "open": OrderStatus.OPEN,
    "accepted_for_bidding": OrderStatus.OPEN,
    "partially_filled": OrderStatus.PARTIALLY_FILLED,
    "filled": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELLED,
    "rejected": OrderStatus.REJECTED,
    "error": OrderStatus.REJECTED,
    "expired": OrderStatus.EXPIRED,
}

_FINAL: Final = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.EXPIRED}
)

_encode = msgspec.json.Encoder().encode


class _Frame(msgspec.Struct, frozen=True):
    """The outer shape of a Tradier frame (the rest is the event itself)."""

    event: str | None = None
    error: str | None = None


_frame: Final = msgspec.json.Decoder(_Frame)


class _Stream(msgspec.Struct, frozen=True):
    url: str
    sessionid: str


class _Session(msgspec.Struct, frozen=True):
    stream: _Stream


_session: Final = msgspec.json.Decoder(_Session)


class TradierProtocol(VenueProtocol):
    """Tradier's account events stream.

    The session id of the socket being opened is kept here between the pre-connect
    answer and the subscription payload: Tradier allows one streaming session per user,
    so a client has one socket.

    Args:
        rest_url: the REST root (``https://api.tradier.com``, the sandbox, or the sim).
        exclude_accounts: account numbers whose events the stream leaves out.
    """

    venue = "tradier"
    kinds = KINDS
    orders_kind = "orders"
    hot_kind = None
    #: Heartbeats come about once a minute: 150 s without any frame is a dead socket.
    stale_timeout = 150.0
    max_subscriptions = 1
    auth_http_statuses = frozenset({401, 403})

    def __init__(self, rest_url: str, exclude_accounts: Sequence[str] = ()) -> None:
        rest_url = rest_url.strip().rstrip("/")
        if not rest_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"base_url must be an http(s) URL, got {rest_url!r}")
        if isinstance(exclude_accounts, str):
            raise ConfigurationError("exclude_accounts takes a list of account numbers")
        self.rest_url = rest_url
        self.exclude_accounts = [str(a) for a in exclude_accounts]
        self.session: str | None = None

    def pre_connect(self, token: str) -> HttpRequest:
        """A fresh streaming session: a session id is used once and lasts 5 minutes."""
        return HttpRequest(
            "POST",
            f"{self.rest_url}/v1/accounts/events/session",
            {"Authorization": f"Bearer {token}", "Accept": "application/json"},
            secret=token,
        )

    def handshake(self, token: str, answer: HttpResponse | None) -> Handshake:
        if answer is None:
            raise StreamConnectionError("no answer to the session request")
        where = f"{self.rest_url}/v1/accounts/events/session"
        if answer.status in self.auth_http_statuses:
            raise AuthenticationError(
                f"Tradier refused the token (HTTP {answer.status}) at {where}",
                status=answer.status,
            )
        if answer.status == 404:
            raise StreamConnectionError(
                f"{where} answered HTTP 404: check base_url (the REST root, such as "
                "https://api.tradier.com or http://127.0.0.1:8000, without /v1)"
            )
        if answer.status != 200:
            raise StreamConnectionError(f"{where} answered HTTP {answer.status}")
        try:
            stream = _session.decode(answer.body).stream
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise StreamConnectionError(f"{where} answered no session: {exc}") from None
        self.session = stream.sessionid
        return Handshake(stream.url, secret=stream.sessionid)

    def subscribe_messages(
        self, token: str, add: list[Channel], wanted: list[Channel]
    ) -> list[Outgoing]:
        """One payload for the whole subscription (sent again, it replaces it)."""
        payload = {
            "events": ["order"],
            "sessionid": self.session,
            "excludeAccounts": self.exclude_accounts,
        }
        return [Outgoing(_encode(payload).decode())]

    def classify(self, frame: str | bytes) -> Inbound:
        try:
            head = _frame.decode(frame)
        except RecursionError:
            return BadFrame("nested too deeply")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return BadFrame(str(exc) or "not a JSON object")
        if head.error is not None:
            if "session" in head.error.lower():
                # Expired or used: open a new session, this is no authentication failure.
                return Reconnect(head.error)
            return Refused(head.error, head.error)
        if head.event == "order":
            return Data(
                "orders", msgspec.Raw(frame if isinstance(frame, bytes) else frame.encode())
            )
        if head.event == "heartbeat":
            return Heartbeat()
        if head.event is None:
            return BadFrame("neither an event nor an error")
        return Noise(head.event)

    def order_event(self, event: TradierOrder) -> OrderEvent:
        filled = event.exec_quantity or Decimal(0)
        return OrderEvent(
            venue=self.venue,
            account=event.account,
            order_id=str(event.id),
            symbol=event.symbol,
            side=event.side,
            status=map_status(STATUS_MAP, event.status, filled),
            filled_quantity=filled,
            remaining_quantity=event.remaining_quantity,
            average_price=event.avg_fill_price if filled else None,
            updated_at=event.transaction_date,
            recovered=event.recovered,
            raw=event,
        )

    def order_final(self, status: str) -> bool:
        return STATUS_MAP.get(status) in _FINAL

    def order_state(self, event: Any) -> tuple[str, str, str] | None:
        if isinstance(event, dict):
            oid, status, filled = event.get("id"), event.get("status"), event.get("exec_quantity")
        else:
            oid, status, filled = event.id, event.status, event.exec_quantity
        if isinstance(oid, bool) or not isinstance(oid, int):
            return None
        return str(oid), str(status), quantity_key(filled)

    def channel_for(self, key: str) -> Channel:
        from agentstream.channels import Channel

        return Channel.parse(key, self.kinds)
