"""``TastytradeStream``: tastytrade's account streamer, supervised, as the SDK page uses it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, overload
from urllib.parse import urlsplit

from agentstream._client import Credential, StreamClient
from agentstream.channels import Channel
from agentstream.errors import ConfigurationError
from agentstream.protocols.tastytrade import LIVE_URL, SANDBOX_URL, TastytradeProtocol

if TYPE_CHECKING:
    import logging
    import ssl as _ssl
    from collections.abc import Mapping
    from datetime import datetime

    from agentstream.protocols.base import Kind
    from agentstream.tastytrade.models import PlacedOrder
    from agentstream.tastytrade.rest import TastytradeREST

__all__ = ["TastytradeHandlers", "TastytradeStream"]

H = TypeVar("H", bound=Callable[..., Any])

#: Pages of an order search order recovery reads at most, per account.
_RECOVERY_PAGES = 20


#: The streamers' hosts -> their REST roots.
_API_ROOTS = {
    "streamer.tastyworks.com": "https://api.tastyworks.com",
    "streamer.cert.tastyworks.com": "https://api.cert.tastyworks.com",
}


def _api_url(url: str) -> str:
    """The REST root beside a streamer URL: tastytrade's own API for its streamers, else
    the same host over HTTP (the simulated exchange: ``ws://127.0.0.1:8000/tastytrade``
    -> ``http://127.0.0.1:8000``)."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    if host in _API_ROOTS:
        return _API_ROOTS[host]
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(
            f"cannot tell the REST root from the streamer URL {url!r}: pass api_url=..."
        )
    return f"{scheme}://{parts.netloc}"


def _account_number(account: object) -> str:
    number = getattr(account, "account_number", account)
    if not isinstance(number, str) or not number.strip():
        raise ConfigurationError(
            f"an account is an account number or has .account_number, not {account!r}"
        )
    return number.strip()


class TastytradeHandlers:
    """tastytrade's decorators, for any client that registers handlers (the streamer,
    and the bus consumer that reads the same events from Redis)."""

    if TYPE_CHECKING:
        _kinds: Mapping[str, Kind]

        def _register(
            self, channel: Channel, handler: H | None, *, thread: bool, partial: bool = False
        ) -> H | Callable[[H], H]: ...

    # -- decorators --------------------------------------------------------------------

    def _on(self, kind: str, handler: H | None, thread: bool) -> H | Callable[[H], H]:
        return self._register(Channel.of(self._kinds[kind]), handler, thread=thread)

    @overload
    def on_order_update(
        self, handler: None = None, *, thread: bool = False
    ) -> Callable[[H], H]: ...
    @overload
    def on_order_update(self, handler: H, *, thread: bool = False) -> H: ...
    def on_order_update(
        self, handler: H | None = None, *, thread: bool = False
    ) -> H | Callable[[H], H]:
        """Every ``Order`` message of the followed accounts: a dict of the data as sent
        (kebab-case keys), or a :class:`PlacedOrder` when annotated so.

        Example:
            >>> @ts.on_order_update()
            ... def on_order(o: PlacedOrder):
            ...     print(o.id, o.status)
        """
        return self._on("orders", handler, thread)

    @overload
    def on_balance(self, handler: None = None, *, thread: bool = False) -> Callable[[H], H]: ...
    @overload
    def on_balance(self, handler: H, *, thread: bool = False) -> H: ...
    def on_balance(self, handler: H | None = None, *, thread: bool = False) -> H | Callable[[H], H]:
        """Every ``AccountBalance`` message (typed: :class:`AccountBalance`)."""
        return self._on("balances", handler, thread)

    @overload
    def on_position(self, handler: None = None, *, thread: bool = False) -> Callable[[H], H]: ...
    @overload
    def on_position(self, handler: H, *, thread: bool = False) -> H: ...
    def on_position(
        self, handler: H | None = None, *, thread: bool = False
    ) -> H | Callable[[H], H]:
        """Every ``CurrentPosition`` message (typed: :class:`CurrentPosition`)."""
        return self._on("positions", handler, thread)

    @overload
    def on_quote_alert(self, handler: None = None, *, thread: bool = False) -> Callable[[H], H]: ...
    @overload
    def on_quote_alert(self, handler: H, *, thread: bool = False) -> H: ...
    def on_quote_alert(
        self, handler: H | None = None, *, thread: bool = False
    ) -> H | Callable[[H], H]:
        """Your quote alerts (subscribes them; typed: :class:`QuoteAlert`)."""
        return self._on("quote_alerts", handler, thread)

    @overload
    def on_watchlist(self, handler: None = None, *, thread: bool = False) -> Callable[[H], H]: ...
    @overload
    def on_watchlist(self, handler: H, *, thread: bool = False) -> H: ...
    def on_watchlist(
        self, handler: H | None = None, *, thread: bool = False
    ) -> H | Callable[[H], H]:
        """Public watchlist changes (subscribes them; typed: :class:`Watchlist`)."""
        return self._on("watchlists", handler, thread)


class TastytradeStream(StreamClient, TastytradeHandlers):
    """tastytrade's account streamer with a supervisor that keeps it alive for days.

    ``connect`` (with your accounts) goes first and is acknowledged before any other
    subscription; a ``heartbeat`` carrying the current token goes out every
    ``heartbeat_interval`` seconds; after every reconnect ``connect`` and every
    subscription are sent again, then ``reconnect_fn(streamer, *reconnect_args)`` runs.
    A ``"failed"`` answer (an expired token) gets one more try with a fresh token when
    ``token`` is a callable; a fixed token refused, or a fresh one refused again, stops
    the stream with :class:`~agentstream.errors.AuthenticationError`.

    Args:
        token: the ``"Bearer <access token>"`` string, or a sync or async callable
            returning the current one (access tokens last about 15 minutes); read fresh
            for every connection and every message. Never logged or shown in reprs.
        accounts: account numbers (or objects with ``.account_number``) to follow.
        url: the streamer's URL (default live ``wss://streamer.tastyworks.com``).
        sandbox: use ``wss://streamer.cert.tastyworks.com``.
        reconnect_fn, reconnect_args: an async (or sync) callback run after every
            reconnect as ``reconnect_fn(streamer, *reconnect_args)``.
        heartbeat_interval: seconds between heartbeats (default 15).
        stale_timeout: seconds without any frame before the socket is declared dead
            (default 60; heartbeat acks count).
        api_url: the REST root :attr:`rest` and order recovery use (default
            ``https://api.tastyworks.com``, ``https://api.cert.tastyworks.com`` with
            ``sandbox``; for another ``url``, its host over HTTP: the simulated
            exchange's ``ws://127.0.0.1:8000/tastytrade`` -> ``http://127.0.0.1:8000``).
        recover_orders: after a reconnect (when no socket was up for a while), read the
            followed accounts' orders over REST and deliver each update the stream
            missed, once, marked ``recovered``.

    The other options are those of :class:`~agentstream.AgentExchangeWS`.

    Example:
        >>> async with TastytradeStream(token, reconnect_fn=cb, reconnect_args=(a, b)) as s:
        ...     await s.subscribe_accounts(accounts)
        ...     async for order in s.listen(PlacedOrder):
        ...         print(order.account_number, order.status, order.underlying_symbol)
    """

    def __init__(
        self,
        token: Credential,
        accounts: Iterable[object] = (),
        *,
        url: str | None = None,
        sandbox: bool = False,
        reconnect_fn: Callable[..., Awaitable[Any] | Any] | None = None,
        reconnect_args: tuple[Any, ...] = (),
        heartbeat_interval: float = 15.0,
        stale_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        close_timeout: float = 0.5,
        backoff_initial: float | None = None,
        backoff_max: float | None = None,
        backoff_factor: float | None = None,
        backoff_jitter: float | None = None,
        healthy_after: float | None = None,
        queue_size: int = 10_000,
        max_message_size: int = 1 << 20,
        ssl: _ssl.SSLContext | None = None,
        logger: logging.Logger | None = None,
        api_url: str | None = None,
        recover_orders: bool = True,
        max_attempts: int | None = None,
        give_up_after: float | None = None,
    ) -> None:
        protocol = TastytradeProtocol(
            url or (SANDBOX_URL if sandbox else LIVE_URL), heartbeat_interval=heartbeat_interval
        )
        super().__init__(
            protocol,
            token,
            stale_timeout=stale_timeout,
            connect_timeout=connect_timeout,
            close_timeout=close_timeout,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            backoff_factor=backoff_factor,
            backoff_jitter=backoff_jitter,
            healthy_after=healthy_after,
            queue_size=queue_size,
            max_message_size=max_message_size,
            ssl=ssl,
            logger=logger,
            recover_orders=recover_orders,
            max_attempts=max_attempts,
            give_up_after=give_up_after,
        )
        self.url = protocol.url
        if isinstance(token, str) and not token.startswith("Bearer "):
            self.log.warning(
                "a tastytrade token is the whole Authorization value, 'Bearer <access "
                "token>': this one does not start with 'Bearer '"
            )
        if api_url is None:
            from agentstream.tastytrade.rest import LIVE_API_URL, SANDBOX_API_URL

            api_url = _api_url(url) if url else SANDBOX_API_URL if sandbox else LIVE_API_URL
        #: The REST root of :attr:`rest` (and of order recovery).
        self.api_url = api_url.strip().rstrip("/")
        self._rest: TastytradeREST | None = None
        if reconnect_fn is not None:
            self.on_reconnect(reconnect_fn, *reconnect_args)
        if isinstance(accounts, str):
            accounts = [accounts]
        self._follow(accounts)

    def _follow(self, accounts: Iterable[object]) -> None:
        kind = self._kinds["account"]
        self.subscribe(*[Channel.of(kind, _account_number(a)) for a in accounts])

    # -- REST beside the stream ------------------------------------------------------

    @property
    def rest(self) -> TastytradeREST:
        """A :class:`~agentstream.tastytrade.TastytradeREST` for this stream's token and
        REST root (:attr:`api_url`): place, read, list and cancel orders, read balances
        and positions, beside the stream.

        Created on first use, one per stream; it reads the stream's token for every
        request (a callable is called each time), uses the stream's ``ssl`` and
        ``connect_timeout``. Its connections are closed when the stream's run ends, if
        they were opened on the run's event loop; used from another loop (another
        thread), close them with ``await stream.rest.aclose()``. It may be used before,
        during and after a run (it reopens its connections as needed).

        Example:
            >>> @streamer.on_order_update()
            ... async def on_fill(o: PlacedOrder):
            ...     if o.status == "Filled" and o.legs[0].action == "Buy to Open":
            ...         await streamer.rest.place_order(
            ...             o.account_number, o.underlying_symbol, "Sell to Close",
            ...             o.size, "Limit", "GTC", price="250.00")
        """
        if self._rest is None:
            from agentstream.tastytrade.rest import TastytradeREST

            self._rest = TastytradeREST(
                self._token,
                base_url=self.api_url,
                timeout=self._connect_timeout,
                ssl=self._ssl,
            )
        return self._rest

    def _accounts(self) -> list[str]:
        """The account numbers the stream follows now."""
        return [ch.symbol for ch in self.channels if ch.kind == "account" and ch.symbol]

    async def _recover_orders(self, since: datetime | None) -> list[PlacedOrder]:
        # Each followed account's orders: today's (``/orders/live``: any status, and
        # older GTC orders still working) and, for a gap reaching further back, the
        # search since it. One entry per order: its latest state.
        rest = self.rest
        latest: dict[int, PlacedOrder] = {}
        loose: list[PlacedOrder] = []
        for account in self._accounts():
            found = await rest.live_orders(account)
            if since is not None:
                found += await rest.orders(account, start_at=since, max_pages=_RECOVERY_PAGES)
            for order in found:
                if order.id is None:
                    loose.append(order)
                    continue
                seen = latest.get(order.id)
                if seen is None or order.updated_at >= seen.updated_at:
                    latest[order.id] = order
        return [*latest.values(), *loose]

    async def _close_extras(self) -> None:
        if self._rest is not None:
            await self._rest.aclose_on_this_loop()

    # -- the SDK page's subscriptions ------------------------------------------------

    async def subscribe_accounts(self, accounts: Iterable[object] | object) -> None:
        """Follow the balances, orders and positions of ``accounts``.

        Account numbers, or objects with ``.account_number`` (the SDK's ``Account``); one
        or several. Subscribing an account again changes nothing (safe in a reconnect
        callback).

        Example:
            >>> await streamer.subscribe_accounts(["5WT00000"])
        """
        if isinstance(accounts, str) or not isinstance(accounts, Iterable):
            accounts = [accounts]
        self._follow(accounts)

    async def subscribe_public_watchlists(self) -> None:
        """Changes in tastytrade's public watchlists (``listen(Watchlist)``)."""
        self.subscribe(Channel.of(self._kinds["watchlists"]))

    async def subscribe_quote_alerts(self) -> None:
        """Your quote alerts as they trigger (``listen(QuoteAlert)``)."""
        self.subscribe(Channel.of(self._kinds["quote_alerts"]))
