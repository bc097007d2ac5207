"""``TradierStream``: supervised Tradier account events with decorator handlers."""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar, overload

import anyio
import msgspec

from agentstream._client import Credential, StreamClient
from agentstream._router import Route, SinkBase
from agentstream.channels import Channel
from agentstream.errors import AgentStreamError, StreamConnectionError
from agentstream.protocols.base import HttpRequest
from agentstream.protocols.tradier import LIVE_URL, SANDBOX_URL, TradierProtocol

if TYPE_CHECKING:
    import logging
    import ssl as _ssl
    from collections.abc import Mapping
    from datetime import datetime

    from agentstream.protocols.base import Kind
    from agentstream.tradier.models import TradierOrder
    from agentstream.tradier.rest import TradierREST

__all__ = ["TradierHandlers", "TradierStream"]

H = TypeVar("H", bound=Callable[..., Any])

#: Order ids whose looked-up fields are remembered.
_CACHE = 10_000
#: How long an order's events wait for its look-up before they go without its fields.
_HOLD_S = 1.0


class _Looked(msgspec.Struct, frozen=True):
    symbol: str | None = None
    side: str | None = None
    quantity: msgspec.Raw = msgspec.Raw()


class _OrderAnswer(msgspec.Struct, frozen=True):
    order: _Looked


_answer = msgspec.json.Decoder(_OrderAnswer)
_QTY: Any = Decimal
_NOT_KNOWN: Any = object()


class _Lookups:
    """One REST look-up per order id, shared by every handler's stage; a bounded cache."""

    def __init__(self, stream: TradierStream) -> None:
        self.stream = stream
        self.cache: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self.inflight: dict[int, asyncio.Future[dict[str, Any] | None]] = {}
        self.lookups = 0
        self.failed = 0
        self.late = 0

    def known(self, oid: int) -> dict[str, Any] | Any:
        fields = self.cache.get(oid, _NOT_KNOWN)
        if fields is not _NOT_KNOWN:
            self.cache.move_to_end(oid)
        return fields

    def get(self, account: str, oid: int) -> asyncio.Future[dict[str, Any] | None]:
        fut = self.inflight.get(oid)
        if fut is None:
            fut = self.inflight[oid] = asyncio.get_running_loop().create_future()
            self.stream._spawn(self._fetch, account, oid, fut)
        return fut

    async def _fetch(
        self, account: str, oid: int, fut: asyncio.Future[dict[str, Any] | None]
    ) -> None:
        self.lookups += 1
        fields: dict[str, Any] | None = None
        try:
            fields = await self.stream._look_up(account, oid)
        except AgentStreamError as exc:
            self.failed += 1
            self.stream._emit_error(exc, {"stage": "enrich", "order": oid})
        finally:
            self.inflight.pop(oid, None)
            if fields is not None:
                self.cache[oid] = fields
                if len(self.cache) > _CACHE:
                    self.cache.popitem(last=False)
            if not fut.done():
                fut.set_result(fields)


class _EnrichSink(SinkBase):
    """A handler-like sink on the orders route: each event gets its order's symbol,
    side and quantity before the handlers behind it see it.

    Events of one order keep their order; an order whose look-up is pending holds only
    its own events, for at most ``_HOLD_S``.
    """

    __slots__ = ("lookups", "pushes", "typed", "waiting")

    def __init__(self, lookups: _Lookups, pushes: tuple[Callable[[Any], None], ...], typed: bool):
        super().__init__()
        self.lookups = lookups
        self.pushes = pushes
        self.typed = typed
        self.waiting: dict[int, deque[Any]] = {}
        self.push: Callable[[Any], None] = self._push

    def _push(self, event: Any) -> None:
        oid, account = (
            (event.id, event.account) if self.typed else (event.get("id"), event.get("account"))
        )
        if not isinstance(oid, int) or not isinstance(account, str):
            self._deliver(event, None)  # nothing to look up with
            return
        queue = self.waiting.get(oid)
        if queue is not None:
            queue.append(event)  # behind the same order's earlier events
            return
        fields = self.lookups.known(oid)
        if fields is not _NOT_KNOWN:
            self._deliver(event, fields)
            return
        self.waiting[oid] = deque([event])
        self.lookups.stream._spawn(self._resolve, account, oid)

    async def _resolve(self, account: str, oid: int) -> None:
        fields: dict[str, Any] | None = None
        try:
            with anyio.move_on_after(_HOLD_S) as scope:
                fields = await asyncio.shield(self.lookups.get(account, oid))
            if scope.cancelled_caught:
                self.lookups.late += 1
        finally:
            for event in self.waiting.pop(oid, ()):
                self._deliver(event, fields)

    def _deliver(self, event: Any, fields: dict[str, Any] | None) -> None:
        if fields:
            quantity = fields["quantity"]
            if quantity is not None:
                try:
                    quantity = msgspec.json.decode(quantity, type=_QTY if self.typed else Any)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    quantity = None
            looked = {"symbol": fields["symbol"], "side": fields["side"], "quantity": quantity}
            if self.typed:
                try:
                    event = msgspec.structs.replace(event, **looked)
                except ValueError:  # a quantity the model refuses: deliver without it
                    event = msgspec.structs.replace(event, **{**looked, "quantity": None})
            else:
                event.update(looked)
        elif not self.typed:
            for name in ("symbol", "side", "quantity"):
                event.setdefault(name, None)
        for push in self.pushes:
            push(event)


class TradierHandlers:
    """Tradier's decorators, for any client that registers handlers (the stream, and
    the bus consumer that reads the same events from Redis)."""

    if TYPE_CHECKING:
        _kinds: Mapping[str, Kind]

        def _register(
            self, channel: Channel, handler: H | None, *, thread: bool, partial: bool = False
        ) -> H | Callable[[H], H]: ...

    @overload
    def on_order_update(
        self, handler: None = None, *, thread: bool = False
    ) -> Callable[[H], H]: ...
    @overload
    def on_order_update(self, handler: H, *, thread: bool = False) -> H: ...
    def on_order_update(
        self, handler: H | None = None, *, thread: bool = False
    ) -> H | Callable[[H], H]:
        """Call ``handler`` with every order event of the account(s), in the order received.

        A plain handler gets a ``dict`` of the event's own fields (numbers as JSON gives
        them), one annotated with :class:`TradierOrder` the typed event. Heartbeats never
        reach it (they count in ``ws.stats.heartbeats``).

        Example:
            >>> @ws.on_order_update()
            ... async def on_fill(o: TradierOrder):
            ...     print(o.id, o.status, o.exec_quantity)
        """
        return self._register(Channel.of(self._kinds["orders"]), handler, thread=thread)


class TradierStream(StreamClient, TradierHandlers):
    """A supervised Tradier account events stream with decorator-registered handlers.

    A fresh REST session before every socket (a session id is used once), server
    heartbeats as the liveness signal (150 s without any frame is a dead socket), a
    refused token (HTTP 401/403 on the session request) stops it for good after exactly
    one request; ``{"error": "session not found"}`` or a closed socket opens a new
    session and goes on.

    Args:
        token: the API access token, or a sync or async callable returning it. Never
            logged or shown in reprs.
        sandbox: use ``https://sandbox.tradier.com`` instead of the live API.
        base_url: any other REST root (the simulated exchange: ``http://127.0.0.1:8000``);
            the socket URL is the one the session answer gives.
        exclude_accounts: account numbers whose events are left out.
        enrich: look each new order up once (``GET /v1/accounts/{account}/orders/{id}``)
            and add its ``symbol``, ``side`` and ``quantity`` before handlers see the event.
        stale_timeout: seconds without any frame before the socket is declared dead.
        recover_orders: after a reconnect, read the accounts' orders over REST and
            deliver each update the stream missed, once, marked ``recovered``.

    The other options are those of :class:`~agentstream.AgentExchangeWS`.

    Example:
        >>> ws = TradierStream(token=os.environ["TRADIER_TOKEN"])
        >>> @ws.on_order_update()
        ... def on_order(data):
        ...     print(data["id"], data["status"], data["exec_quantity"])
        >>> ws.run_forever()
    """

    def __init__(
        self,
        token: Credential,
        *,
        sandbox: bool = False,
        base_url: str | None = None,
        exclude_accounts: Sequence[str] = (),
        enrich: bool = True,
        stale_timeout: float = 150.0,
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
        recover_orders: bool = True,
        max_attempts: int | None = None,
        give_up_after: float | None = None,
    ) -> None:
        rest = base_url or (SANDBOX_URL if sandbox else LIVE_URL)
        self._tradier = TradierProtocol(rest, exclude_accounts)
        super().__init__(
            self._tradier,
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
        self.base_url = self._tradier.rest_url
        self._enrich = enrich
        self._lookups = _Lookups(self)
        self._rest: TradierREST | None = None

    @property
    def rest(self) -> TradierREST:
        """A :class:`~agentstream.tradier.TradierREST` for this stream's token and REST
        root: place, read, list and cancel orders beside the stream.

        Created on first use, one per stream; it reads the stream's credential for every
        request (a callable token is called each time), uses the stream's ``ssl`` and
        ``connect_timeout``, and has no default account (pass ``account=``, or set
        ``ws.rest.account``). Its connections are closed when the stream's run ends, if
        they were opened on the run's event loop; used from another loop (another
        thread), close them with ``await ws.rest.aclose()``. It may be used before, during
        and after a run (it reopens its connections as needed).

        Example:
            >>> @ws.on_order_update()
            ... async def on_fill(o: TradierOrder):
            ...     if o.status == "filled" and o.side == "buy":
            ...         await ws.rest.place_order(o.symbol, "sell", o.quantity, type="limit",
            ...                                   price=o.avg_fill_price * 2, account=o.account)
        """
        if self._rest is None:
            from agentstream.tradier.rest import TradierREST

            self._rest = TradierREST(
                self._token,
                base_url=self.base_url,
                timeout=self._connect_timeout,
                ssl=self._ssl,
            )
        return self._rest

    async def _recover_orders(self, since: datetime | None) -> list[TradierOrder]:
        # Every order of the accounts the stream follows (Tradier lists the day's
        # orders and the open ones), read with the REST API.
        rest = self.rest
        skip = set(self._tradier.exclude_accounts)
        found: list[TradierOrder] = []
        for account in await rest.profile():
            if account not in skip:
                found += await rest.list_orders(account=account)
        return found

    async def _close_extras(self) -> None:
        if self._rest is not None:
            await self._rest.aclose_on_this_loop()

    # -- enrichment ----------------------------------------------------------------

    def _stage(self, route: Route) -> Route:
        if not self._enrich or route.kind != "orders":
            return route
        # The handlers' pushes go behind a sink per representation that adds the looked
        # up fields; the router sees only the sinks.
        sinks_dict = (
            (_EnrichSink(self._lookups, route.push_dict_all, typed=False),)
            if route.dict_slots
            else ()
        )
        sinks_typed = (
            (_EnrichSink(self._lookups, route.push_typed_all, typed=True),)
            if route.typed_slots
            else ()
        )
        staged = Route(route.key, route.spec, sinks_dict, sinks_typed)
        staged.inherit(route)
        return staged

    async def _look_up(self, account: str, oid: int) -> dict[str, Any]:
        """``symbol``, ``side`` and ``quantity`` of order ``oid`` over REST.

        Raises:
            StreamConnectionError: the request failed or its answer has no order.
        """
        transport = self._transport
        if transport is None:
            raise StreamConnectionError("the stream is not running")
        token = await self._token()
        url = f"{self.base_url}/v1/accounts/{account}/orders/{oid}"
        answer = await transport.request(
            HttpRequest(
                "GET",
                url,
                {"Authorization": f"Bearer {token}", "Accept": "application/json"},
                secret=token,
            )
        )
        if answer.status != 200:
            raise StreamConnectionError(f"order look-up {url} answered HTTP {answer.status}")
        try:
            order = _answer.decode(answer.body).order
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise StreamConnectionError(f"order look-up {url}: {exc}") from None
        # The quantity stays JSON text: a Decimal for typed handlers, as JSON gives it
        # for dict handlers (see _EnrichSink._deliver).
        quantity = bytes(order.quantity) if order.quantity else None
        return {"symbol": order.symbol, "side": order.side, "quantity": quantity}

    @property
    def enrichment(self) -> dict[str, int]:
        """Order look-ups made, failed, and events delivered without them after 1 s."""
        lk = self._lookups
        return {"lookups": lk.lookups, "failed": lk.failed, "late": lk.late}
