"""The AgentExchange wire protocol, sans I/O: bytes in, classified frames out.

Nothing here touches a socket or a clock, so every rule of the protocol is testable in
microseconds. See ``shared/protocol/agentexchange.md`` for the protocol itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec

from agentstream.errors import ConfigurationError

if TYPE_CHECKING:
    from agentstream.channels import Channel

__all__ = [
    "AUTH_CLOSE_CODES",
    "AUTH_HTTP_STATUSES",
    "PONG",
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


def data_key(env: Envelope) -> str | None:
    """The channel key of a data frame, or None when the frame names no known channel."""
    ch = env.channel
    if ch == "ticker":
        return f"ticker:{env.symbol}" if env.symbol else None
    if ch == "candles":
        return f"candles:{env.symbol}:{env.interval}" if env.symbol and env.interval else None
    if ch in ("orders", "portfolio"):
        return ch
    return None
