"""agentstream's exceptions: one tree, so ``except AgentStreamError`` catches them all.

::

    AgentStreamError
    ├── ConfigurationError (ValueError)        bad option, symbol, interval or handler
    ├── AuthenticationError                    key rejected (403/401, close 4401/1008): fatal
    ├── CertificateError                       the server's TLS certificate is not trusted: fatal
    ├── StreamConnectionError (ConnectionError) could not connect, or the connection died
    │   ├── HandshakeError                     HTTP status other than 101 at the handshake
    │   └── StaleConnectionError (TimeoutError) no frame for the stale timeout
    ├── ProtocolError                          the server sent something we cannot use
    │   └── DecodeError (ValueError)           a frame that is not valid JSON of the right shape
    ├── ServerError                            an ``error`` message from the server
    ├── RestError                              a venue's REST API refused a request
    └── HandlerError                           one of your handlers raised

Errors never contain the API key: URLs in messages are masked.
"""

from __future__ import annotations

__all__ = [
    "AgentStreamError",
    "AuthenticationError",
    "CertificateError",
    "ConfigurationError",
    "DecodeError",
    "HandlerError",
    "HandshakeError",
    "ProtocolError",
    "RestError",
    "ServerError",
    "StaleConnectionError",
    "StreamConnectionError",
]


class AgentStreamError(Exception):
    """Base class of every exception agentstream raises."""


class ConfigurationError(AgentStreamError, ValueError):
    """A bad argument: unknown interval, empty symbol, invalid option or handler.

    Example:
        >>> try:
        ...     ws.on_candles("BTCUSDT", "2m")
        ... except ValueError as exc:   # ConfigurationError is a ValueError too
        ...     print(exc)
    """


class AuthenticationError(AgentStreamError):
    """The server rejected the API key. Fatal: the client stops and does not retry.

    Attributes:
        status: the HTTP status of a refused handshake (401/403), else None.
        close_code: the WebSocket close code (4401/1008) when refused after accepting.
    """

    def __init__(
        self, message: str, *, status: int | None = None, close_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.close_code = close_code


class CertificateError(AgentStreamError):
    """The server's TLS certificate failed verification. Fatal: the client does not retry.

    A certificate that is not trusted today will not be trusted in a second either, and
    retrying would hide a misconfiguration (or an attacker) behind a reconnect loop. Pass
    ``ssl=`` an ``ssl.SSLContext`` that trusts the server's CA to connect.

    Example:
        >>> import ssl
        >>> ctx = ssl.create_default_context(cafile="my-ca.pem")
        >>> ws = AgentExchangeWS("ak_live_...", "wss://exchange.internal", ssl=ctx)
    """


class StreamConnectionError(AgentStreamError, ConnectionError):
    """Connecting failed or an established connection was lost (retried by the client)."""


class HandshakeError(StreamConnectionError):
    """The server answered the WebSocket handshake with HTTP ``status`` (not 101)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class StaleConnectionError(StreamConnectionError, TimeoutError):
    """No frame of any kind arrived for the stale timeout: the socket is presumed dead."""


class ProtocolError(AgentStreamError):
    """The server sent something that does not follow the protocol."""


class DecodeError(ProtocolError, ValueError):
    """A frame that is not valid JSON, or JSON of the wrong shape or types.

    Attributes:
        frame: the start of the offending frame (at most 200 characters), for logs.
    """

    def __init__(self, message: str, *, frame: str = "") -> None:
        super().__init__(message)
        self.frame = frame


class ServerError(AgentStreamError):
    """An ``error`` message from the server, e.g. ``INVALID_CHANNEL``.

    Attributes:
        code: the server's code (``INVALID_CHANNEL``, ``SUBSCRIPTION_LIMIT``,
            ``UNKNOWN_ACTION``, ...).
        channel: the channel key it concerns (``ticker:BTCUSDT``), when known.
    """

    def __init__(self, code: str, message: str, *, channel: str | None = None) -> None:
        where = f" ({channel})" if channel else ""
        super().__init__(f"{code}{where}: {message}")
        self.code = code
        self.server_message = message
        self.channel = channel


class RestError(AgentStreamError):
    """A venue's REST API answered a request with an error status.

    Attributes:
        status: the HTTP status (400, 404, 409, 500, ...).
        code: the venue's error code when it sends one (``ORDER_NOT_FOUND``), else "".
        detail: the venue's error message, as sent.

    Example:
        >>> try:
        ...     await rest.cancel_order("nope")
        ... except RestError as exc:
        ...     print(exc.status, exc.code)
        404 ORDER_NOT_FOUND
    """

    def __init__(self, message: str, *, status: int, code: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.detail = detail


class HandlerError(AgentStreamError):
    """A handler or hook raised; the original exception is ``__cause__``.

    Attributes:
        handler: the handler's qualified name.
        channel: the channel key of the event, or the hook's name.
    """

    def __init__(self, message: str, *, handler: str, channel: str) -> None:
        super().__init__(message)
        self.handler = handler
        self.channel = channel
