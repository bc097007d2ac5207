"""agentstream: real-time trading streams for bots and agents.

Example:
    >>> from agentstream import AgentExchangeWS
    >>> ws = AgentExchangeWS(api_key="ak_live_...")
    >>> @ws.on_ticker("BTCUSDT")
    ... def on_btc(data):
    ...     print(data["price"])
    >>> ws.run_forever()
"""

from agentstream.backoff import Backoff
from agentstream.channels import Channel
from agentstream.client import AgentExchangeWS, Stats
from agentstream.errors import (
    AgentStreamError,
    AuthenticationError,
    CertificateError,
    ConfigurationError,
    DecodeError,
    HandlerError,
    HandshakeError,
    ProtocolError,
    RestError,
    ServerError,
    StaleConnectionError,
    StreamConnectionError,
)
from agentstream.models import Candle, Event, Gap, OrderUpdate, Portfolio, Ticker
from agentstream.orders import OrderEvent, OrderStatus
from agentstream.protocols.agentexchange import INTERVALS

__version__ = "0.1.0"

__all__ = [
    "INTERVALS",
    "AgentExchangeWS",
    "AgentStreamError",
    "AuthenticationError",
    "Backoff",
    "Candle",
    "CertificateError",
    "Channel",
    "ConfigurationError",
    "DecodeError",
    "Event",
    "Gap",
    "HandlerError",
    "HandshakeError",
    "OrderEvent",
    "OrderStatus",
    "OrderUpdate",
    "Portfolio",
    "ProtocolError",
    "RestError",
    "ServerError",
    "StaleConnectionError",
    "Stats",
    "StreamConnectionError",
    "Ticker",
    "__version__",
]
