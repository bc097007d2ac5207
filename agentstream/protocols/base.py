"""The venue seam: what a venue's protocol object tells the core, with no I/O and no clock.

agentstream's core (registry, dispatch, router, supervisor, transport) knows no venue. A
venue is a :class:`VenueProtocol`: a plain object that, given values, returns values:

* **before each socket**: an optional HTTP request to make first (:meth:`pre_connect`,
  e.g. Tradier's session), then the socket's URL and headers (:meth:`handshake`), built
  from that request's answer;
* **once connected**: messages to send first (:meth:`open_messages`, e.g. tastytrade's
  ``connect``, optionally acknowledged before anything else), then subscriptions
  (:meth:`subscribe_messages`, one message per channel or one payload for all), and
  periodic client messages (:attr:`heartbeat_interval`, :meth:`heartbeat_message`);
* **for every inbound frame that its fast decoder refuses**: what it is
  (:meth:`classify`): data for a channel, a ping to answer, a heartbeat, an ack or a
  refusal (by channel or by request id), an authentication failure, a reason to
  reconnect, noise, or a bad frame;
* **its data**: channel kinds (:class:`Kind`) with their models, and a fast decoder for
  the firehose (:meth:`fast_decoder`);
* **its defaults**: stale timeout, subscriptions per socket, auth close codes and HTTP
  statuses.

The supervisor does the I/O, the router the delivery; both read only this interface. A
new venue is a protocol module, its models, a thin client class and a front-end on the
simulated exchange; nothing in the core changes (``tests/client/test_toy_venue.py`` proves
it with a venue defined only in the tests).

Example:
    >>> proto = AgentExchangeProtocol("ws://127.0.0.1:8000")
    >>> proto.classify(b'{"type":"ping"}')
    Ping(reply='{"type":"pong","action":"pong"}')
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import msgspec

    from agentstream.channels import Channel
    from agentstream.orders import OrderEvent

__all__ = [
    "Ack",
    "AuthFailed",
    "BadFrame",
    "Batch",
    "Data",
    "Handshake",
    "Heartbeat",
    "HttpRequest",
    "HttpResponse",
    "Inbound",
    "Kind",
    "Noise",
    "Outgoing",
    "Ping",
    "Reconnect",
    "Refused",
    "VenueProtocol",
]


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of channel of a venue and how its events are handled.

    Attributes:
        name: the kind's name, the first part of every channel key of it (``ticker``).
        model: the typed event a handler annotated with it receives, or None.
        symbol: channels of this kind name a symbol (``ticker:BTCUSDT``).
        intervals: for kinds whose channels also name an interval (candles): each
            interval the client accepts and its length in seconds.
        wildcard: the symbol that means "every symbol" (``all``), if the venue has one:
            its channel carries every symbol, so single-symbol channels of the kind ride
            on it instead of being subscribed too.
        conflate: a handler that falls behind gets the newest event per symbol (and
            interval); the others of the backlog are dropped and counted.
        final: the boolean field that marks an event final (``is_closed``): events
            without it are updates of something still forming; handlers get only final
            ones unless registered with ``partial=True``, and final ones are never
            conflated.
        private: the account's own events: never dropped, and delivered once however
            many sockets receive them.
        time_fields: fields holding the event's exchange time; the latest present one
            is the event's time (for gap reports).
        defaults: fields that a dict handler always finds (None when not sent).
        aliases: pairs of field names that a dict handler finds under both names.
        flags: boolean fields a dict handler always finds (False unless set), such as
            ``recovered`` on order events.
    """

    name: str
    model: type[Any] | None = None
    symbol: bool = False
    intervals: Mapping[str, int] | None = None
    wildcard: str | None = None
    conflate: bool = False
    final: str | None = None
    private: bool = False
    time_fields: tuple[str, ...] = ()
    defaults: tuple[str, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()
    flags: tuple[str, ...] = ()


# -- before a socket -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An HTTP request a protocol asks the I/O layer to make (e.g. a session to create).

    ``secret`` names the credential in it, so the I/O layer masks it in any error.
    """

    method: str
    url: str = field(repr=False)  # may carry the credential
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    form: Mapping[str, str] | None = field(default=None, repr=False)
    json: Any = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What the I/O layer got back: the status and the body, undecoded."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Handshake:
    """Where and how to open one socket; ``secret`` is masked wherever the URL is shown."""

    url: str = field(repr=False)  # may carry the credential (AgentExchange's api_key)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to send.

    Attributes:
        text: the message.
        key: the channel key it subscribes or unsubscribes, if one.
        covers: other channel keys it subscribes (see below).
        request_id: the id the server echoes in its answer, if the protocol uses them.
        await_ack: nothing else is sent on the socket until this one is acknowledged.
    """

    text: str
    key: str | None = None
    request_id: int | None = None
    await_ack: bool = False
    #: Channel keys this message subscribes besides ``key`` (an opening message that
    #: names them, like tastytrade's ``connect`` with its accounts): not sent again.
    covers: tuple[str, ...] = ()


# -- inbound frames --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Data:
    """A data event for a channel: ``payload`` is the event's JSON, not yet decoded."""

    kind: str
    payload: msgspec.Raw
    symbol: str | None = None
    interval: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    """The server asks for an answer: send ``reply``."""

    reply: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The server says it is alive; nothing to deliver."""


@dataclass(frozen=True, slots=True)
class Ack:
    """A request was accepted: a subscription (``key``), or a request by its id."""

    key: str | None = None
    request_id: int | None = None
    subscribed: bool = True


@dataclass(frozen=True, slots=True)
class Refused:
    """The server refused something or reports an error.

    Attributes:
        code: the server's code or message (``INVALID_CHANNEL``, ``not-implemented``).
        message: its detail.
        key: the channel key it names, if it names one.
        request_id: the request it answers, if it says.
        effect: what it means for a subscription: ``invalid`` (this channel will never
            be accepted), ``limit`` (too many subscriptions on this socket), or
            ``none`` (reported, nothing else changes). An ``invalid`` or ``limit``
            refusal that names no channel is pinned on the oldest subscription still
            waiting for its answer.
    """

    code: str
    message: str = ""
    key: str | None = None
    request_id: int | None = None
    effect: Literal["invalid", "limit", "none"] = "none"


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """The credentials were refused.

    ``refreshable``: a fresh credential (from a callable) may be accepted, so the client
    tries once more with one before it gives up.
    """

    reason: str
    refreshable: bool = False


@dataclass(frozen=True, slots=True)
class Reconnect:
    """This socket is done (e.g. its session expired): open a fresh one, not an error."""

    reason: str


@dataclass(frozen=True, slots=True)
class Noise:
    """Something to ignore (counted as a control message); ``what`` names it in logs."""

    what: str = ""


@dataclass(frozen=True, slots=True)
class Batch:
    """Several inbound messages in one frame (tastytrade's ``{"results": [...]}``)."""

    items: tuple[Inbound, ...]


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A frame that follows no shape of the protocol: dropped and counted."""

    why: str


Inbound = (
    Data | Ping | Heartbeat | Ack | Refused | AuthFailed | Reconnect | Noise | BadFrame | Batch
)


class VenueProtocol(abc.ABC):
    """A venue's wire protocol, sans I/O. Subclass it to add a venue.

    Every method takes values and returns values; none does I/O or reads a clock, so a
    protocol is tested by feeding it frames (see ``tests/client/test_protocols.py``).

    Class attributes are the venue's defaults; the client's options override them.
    """

    #: A short name, used in logs and metrics labels (``agentexchange``).
    venue: ClassVar[str]
    #: The venue's channel kinds, by name.
    kinds: ClassVar[Mapping[str, Kind]]
    #: The kind whose frames the reader inlines (the firehose), if any: it must name a
    #: symbol and no interval, and the fast decoder must produce its frames.
    hot_kind: ClassVar[str | None] = None
    #: Seconds with no frame at all before a socket is declared dead.
    stale_timeout: ClassVar[float] = 40.0
    #: Channels per socket; more channels open more sockets.
    max_subscriptions: ClassVar[int] = 10
    #: Close codes that mean "the credentials are wrong" (fatal).
    auth_close_codes: ClassVar[frozenset[int]] = frozenset()
    #: HTTP statuses of a handshake or pre-connect request that mean the same.
    auth_http_statuses: ClassVar[frozenset[int]] = frozenset({401, 403})
    #: Seconds between client heartbeats, or None when the client sends none.
    heartbeat_interval: float | None = None

    # -- preparing a socket ------------------------------------------------------------

    def pre_connect(self, token: str) -> HttpRequest | None:
        """The HTTP request to make before each socket, or None (the default)."""
        return None

    @abc.abstractmethod
    def handshake(self, token: str, answer: HttpResponse | None) -> Handshake:
        """The socket to open, given the pre-connect request's answer (None without one).

        Raises:
            AuthenticationError: the answer says the credentials are wrong (fatal).
            StreamConnectionError: any other failed answer (retried with backoff).
        """

    # -- what to send ------------------------------------------------------------------

    def open_messages(self, token: str, wanted: list[Channel]) -> list[Outgoing]:
        """Messages to send as soon as the socket is open, before any subscription.

        ``wanted``: the socket's channels (an opening message may subscribe some; it
        says which in ``Outgoing.covers``).
        """
        return []

    @abc.abstractmethod
    def subscribe_messages(
        self, token: str, add: list[Channel], wanted: list[Channel]
    ) -> list[Outgoing]:
        """Messages that subscribe ``add``; ``wanted`` is every channel of the socket.

        A protocol with one payload for all channels returns that payload for
        ``wanted``; one with a message per channel returns one per channel of ``add``.
        """

    def unsubscribe_messages(
        self, token: str, remove: list[Channel], wanted: list[Channel]
    ) -> list[Outgoing]:
        """Messages that unsubscribe ``remove`` (default: none; the next socket won't)."""
        return []

    def heartbeat_message(self, token: str) -> Outgoing | None:
        """The periodic client message (see :attr:`heartbeat_interval`), or None."""
        return None

    # -- what arrives ------------------------------------------------------------------

    @abc.abstractmethod
    def classify(self, frame: str | bytes) -> Inbound:
        """What one inbound text or binary frame is. Never raises."""

    def fast_decoder(self, modes: Mapping[str, str]) -> Callable[[str | bytes], Any] | None:
        """A decoder for the firehose, or None (every frame goes to :meth:`classify`).

        ``modes`` says, per kind, how its handlers want events: ``dict``, ``typed`` or
        ``raw`` (both or none). The decoder returns, for a data frame it can take, an
        object of one of :meth:`frame_kinds`' classes, with attributes ``data`` (the
        event in that mode; ``msgspec.Raw`` for ``raw``) and, where the kind names them,
        ``symbol`` and ``interval``. For anything else it raises; the frame then goes
        to :meth:`classify`, which must then say exactly what it is.
        """
        return None

    def frame_kinds(self) -> Mapping[type[Any], tuple[str, str]]:
        """The fast decoder's frame classes: ``(kind, mode)`` of each."""
        return {}

    # -- helpers for venues ------------------------------------------------------------

    def channel_for(self, key: str) -> Channel:
        """The channel named by ``key`` (as users and servers write it).

        Raises:
            ConfigurationError: the key names no channel of this venue.
        """
        from agentstream.channels import Channel

        return Channel.parse(key, self.kinds)

    def fallback(self, channel: Channel, reason: str = "") -> Channel | None:
        """A finer channel to build ``channel`` from when the server refuses it
        (``reason``: the refusal's message).

        The default: None. AgentExchange builds 15m candles from 5m and 4h from 1h.
        """
        return None

    #: The kind of the venue's order events, if it has one (``OrderEvent`` handlers).
    orders_kind: ClassVar[str | None] = None

    def order_event(self, event: Any) -> OrderEvent:
        """The venue's typed order event as the cross-venue :class:`OrderEvent`."""
        raise NotImplementedError(f"{self.venue} has no order events")

    def order_final(self, status: str) -> bool:
        """Whether an order in the venue's ``status`` is done (filled, cancelled, ...)."""
        return False

    def order_state(self, event: Any) -> tuple[str, str, str] | None:
        """``(order id, status, filled quantity)`` of an order event, dict or typed (the
        quantity normalised, so ``"0.50"`` and ``0.5`` are one state); None without an
        id. What "delivered once" means for orders."""
        return None

    def derive(
        self, target: Channel, source: Channel, *, partial: bool
    ) -> Callable[[Any], list[Any]]:
        """A function that takes each event of ``source`` (one representation, dict or
        typed) and returns the events of ``target`` to deliver (see :meth:`fallback`).

        ``partial``: also return updates of a ``target`` event still forming.
        """
        raise NotImplementedError(f"{self.venue} builds no channel from another")
