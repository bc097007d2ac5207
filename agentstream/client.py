"""``AgentExchangeWS``: decorator handlers on a supervised AgentExchange stream."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from agentstream._client import Stats, StreamClient
from agentstream._redact import mask_secret, mask_url
from agentstream.channels import Channel
from agentstream.errors import ConfigurationError
from agentstream.protocols.agentexchange import AgentExchangeProtocol, endpoint_url
from agentstream.rest import AgentExchangeREST

if TYPE_CHECKING:
    import logging
    import ssl as _ssl
    from datetime import datetime

    from agentstream.models import OrderUpdate

__all__ = ["AgentExchangeHandlers", "AgentExchangeWS", "Stats"]

H = TypeVar("H", bound=Callable[..., Any])


class AgentExchangeHandlers:
    """AgentExchange's decorators, for any client that registers handlers (the stream,
    and the bus consumer that reads the same events from Redis)."""

    if TYPE_CHECKING:

        def _register(
            self,
            channel: Channel,
            handler: H | None,
            *,
            thread: bool,
            partial: bool = False,
            every: bool = False,
        ) -> H | Callable[[H], H]: ...

    @overload
    def on_ticker(
        self, symbol: str, handler: None = None, *, thread: bool = False, every: bool = False
    ) -> Callable[[H], H]: ...
    @overload
    def on_ticker(
        self, symbol: str, handler: H, *, thread: bool = False, every: bool = False
    ) -> H: ...
    def on_ticker(
        self, symbol: str, handler: H | None = None, *, thread: bool = False, every: bool = False
    ) -> H | Callable[[H], H]:
        """Call ``handler`` with every trade of ``symbol`` (``"all"``: every pair).

        The handler gets a ``dict`` (``data["symbol"]``, ``data["price"]``, ...), or a
        :class:`Ticker` if its first parameter is annotated so. ``thread=True`` runs a
        sync handler in a worker thread, so it may block without stalling the stream.

        A handler that keeps up gets every trade. One that falls behind (its queue not
        empty for 5 ms) gets the newest trade of each symbol from then on, never a
        backlog older than it (the ones it skipped count in ``ws.stats.conflated``).
        ``every=True`` keeps every trade whatever happens, up to the client's
        ``queue_size`` per handler.

        Example:
            >>> @ws.on_ticker("BTCUSDT")
            ... def on_btc(data):
            ...     prices["BTCUSDT"] = data["price"]
            >>> ws.on_ticker("ETHUSDT", on_eth)   # the same without a decorator
            >>> ws.on_ticker("ETHUSDT", record_tape, every=True)  # no trade skipped

        Raises:
            ConfigurationError: (a ``ValueError``) for an empty or invalid symbol.
        """
        return self._register(Channel.ticker(symbol), handler, thread=thread, every=every)

    @overload
    def on_candles(
        self,
        symbol: str,
        interval: str,
        handler: None = None,
        *,
        partial: bool = False,
        thread: bool = False,
        every: bool = False,
    ) -> Callable[[H], H]: ...
    @overload
    def on_candles(
        self,
        symbol: str,
        interval: str,
        handler: H,
        *,
        partial: bool = False,
        thread: bool = False,
        every: bool = False,
    ) -> H: ...
    def on_candles(
        self,
        symbol: str,
        interval: str,
        handler: H | None = None,
        *,
        partial: bool = False,
        thread: bool = False,
        every: bool = False,
    ) -> H | Callable[[H], H]:
        """Call ``handler`` with each closed candle of ``symbol`` and ``interval``.

        ``interval`` is one of 1m, 5m, 15m, 1h, 4h, 1d. With ``partial=True`` the handler
        also gets the updates of the forming candle (``data["is_closed"]`` is False); if
        it falls behind, it gets the newest update of the forming candle, never an older
        one (``every=True`` keeps every update). Closed candles are never skipped.

        Example:
            >>> @ws.on_candles("BTCUSDT", "1m")
            ... async def on_btc_1m(data):
            ...     print(f"1m candle closed at ${data['close']}")

        Raises:
            ConfigurationError: (a ``ValueError``) for any other interval.
        """
        return self._register(
            Channel.candles(symbol, interval), handler, thread=thread, partial=partial, every=every
        )

    @overload
    def on_order_update(
        self, handler: None = None, *, thread: bool = False
    ) -> Callable[[H], H]: ...
    @overload
    def on_order_update(self, handler: H, *, thread: bool = False) -> H: ...
    def on_order_update(
        self, handler: H | None = None, *, thread: bool = False
    ) -> H | Callable[[H], H]:
        """Call ``handler`` with every status change of the account's orders.

        Never dropped or conflated, and never queued behind ticks.

        Example:
            >>> @ws.on_order_update()
            ... async def on_order(data):
            ...     print(f"Order {data['order_id']}: {data['status']}")
        """
        return self._register(Channel.orders(), handler, thread=thread)

    @overload
    def on_portfolio(self, handler: None = None, *, thread: bool = False) -> Callable[[H], H]: ...
    @overload
    def on_portfolio(self, handler: H, *, thread: bool = False) -> H: ...
    def on_portfolio(
        self, handler: H | None = None, *, thread: bool = False
    ) -> H | Callable[[H], H]:
        """Call ``handler`` with every portfolio snapshot of the account.

        Example:
            >>> @ws.on_portfolio()
            ... async def on_portfolio(data):
            ...     print(f"Equity: ${data['total_equity']}  ROI: {data['roi_pct']}%")
        """
        return self._register(Channel.portfolio(), handler, thread=thread)


class AgentExchangeWS(StreamClient, AgentExchangeHandlers):
    """A supervised AgentExchange WebSocket client with decorator-registered handlers.

    Args:
        api_key: the account's API key (``ak_live_...``). Never logged or shown in reprs.
        base_url: ``ws://``, ``wss://``, ``http://`` or ``https://`` URL of the platform;
            default ``$AGENTSTREAM_BASE_URL`` if set, else ``ws://localhost:8000``.
        stale_timeout: seconds without any frame before the socket is declared dead.
        connect_timeout: seconds a connection attempt (TCP, TLS, handshake) may take.
        close_timeout: seconds to wait for the server's close answer when stopping.
        backoff_initial, backoff_max, backoff_factor, backoff_jitter: the reconnect
            schedule (default 1 s doubling to 60 s plus up to 10 % jitter); each can
            also be set by ``AGENTSTREAM_BACKOFF_INITIAL`` / ``_MAX`` / ``_FACTOR`` /
            ``_JITTER``.
        healthy_after: seconds a connection must live (if no data flowed) before the
            backoff resets; defaults to the stale timeout.
        queue_size: events a ticker or candle handler may fall behind before older
            events of the same symbol are conflated. Orders and portfolio are never dropped.
        max_subscriptions_per_connection: channels per socket (the platform allows 10);
            more channels open more sockets.
        max_message_size: frames larger than this end the connection (it is re-opened).
        ssl: an ``ssl.SSLContext`` for ``wss://``; by default certificates are verified
            against the system's trust store.
        logger: logger to use instead of ``logging.getLogger("agentstream")``.
        recover_orders: after a reconnect, read the orders over REST and deliver each
            update the stream missed, once, marked ``recovered`` (default on).
        max_attempts, give_up_after: stop for good after this many failed connection
            attempts in a row, or this many seconds of them (default: never give up).

    Example:
        >>> ws = AgentExchangeWS(api_key="ak_live_...")
        >>> @ws.on_ticker("BTCUSDT")
        ... async def handle_btc(data):
        ...     print(f"BTC: ${data['price']}")
        >>> asyncio.run(ws.connect())
    """

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        *,
        stale_timeout: float = 40.0,
        connect_timeout: float = 10.0,
        close_timeout: float = 0.5,
        backoff_initial: float | None = None,
        backoff_max: float | None = None,
        backoff_factor: float | None = None,
        backoff_jitter: float | None = None,
        healthy_after: float | None = None,
        queue_size: int = 10_000,
        max_subscriptions_per_connection: int = 10,
        max_message_size: int = 1 << 20,
        ssl: _ssl.SSLContext | None = None,
        logger: logging.Logger | None = None,
        recover_orders: bool = True,
        max_attempts: int | None = None,
        give_up_after: float | None = None,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ConfigurationError("api_key must be a non-empty string")
        if base_url is None:
            base_url = os.environ.get("AGENTSTREAM_BASE_URL") or "ws://localhost:8000"
        super().__init__(
            AgentExchangeProtocol(base_url),
            api_key,
            stale_timeout=stale_timeout,
            connect_timeout=connect_timeout,
            close_timeout=close_timeout,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            backoff_factor=backoff_factor,
            backoff_jitter=backoff_jitter,
            healthy_after=healthy_after,
            queue_size=queue_size,
            max_subscriptions_per_connection=max_subscriptions_per_connection,
            max_message_size=max_message_size,
            ssl=ssl,
            logger=logger,
            recover_orders=recover_orders,
            max_attempts=max_attempts,
            give_up_after=give_up_after,
        )
        self.base_url = base_url
        self.__api_key = api_key
        self._rest: AgentExchangeREST | None = None
        self.__masked = f"{mask_url(endpoint_url(base_url, 'x'))} key={mask_secret(api_key)}"

    def __repr__(self) -> str:
        return f"<AgentExchangeWS {self.__masked} state={self._state}>"

    @property
    def rest(self) -> AgentExchangeREST:
        """The platform's REST API with this stream's key (place, cancel, list orders).

        Example:
            >>> order = await ws.rest.place_order("BTCUSDT", "buy", "0.01")
        """
        if self._rest is None:
            self._rest = AgentExchangeREST(self.__api_key, self.base_url, ssl=self._ssl)
        return self._rest

    async def _recover_orders(self, since: datetime | None) -> list[OrderUpdate]:
        # Open orders, and the newest pages of all orders (the platform lists them
        # newest first, at most 500 a page): enough for the orders a gap can touch.
        rest = self.rest
        found = {o.order_id: o for o in await rest.list_orders(limit=500)}
        found.update({o.order_id: o for o in await rest.open_orders()})
        return list(found.values())

    async def _close_extras(self) -> None:
        if self._rest is not None:
            await self._rest.aclose_on_this_loop()
