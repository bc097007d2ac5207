"""The engine-neutral half of a bus consumer: handlers, delivery and settling.

A bus consumer is a venue client whose events come from a broker (Redis Streams today)
instead of a venue's socket: the same decorators, hooks, run modes and ``listen()``, the
same :class:`~agentstream._dispatch.Slot` per handler (sync, async, ``thread=True``),
the same typed conversion and error reporting. What differs lives here, engine-free:

* each handler is wrapped so that the consumer learns when it *returned* for an entry
  (for an async handler: when its coroutine finished); an entry is *settled* once every
  handler it went to has returned (``error`` None) or one of them raised (the first
  exception);
* an entry's payload is the dict a dict handler of the venue client gets; typed handlers
  get it converted once per model (an ``OrderEvent`` handler the venue's view of it);
* gap and loss reports (``t=gap``, ``t=loss``) go to ``on_gap`` and ``on_error``.

An engine (:mod:`agentstream.bus.redis`) subclasses :class:`BusClient`: it implements
:meth:`BusClient._serve` (read, then call :meth:`BusClient._deliver`) and
:meth:`BusClient._settle` (acknowledge, or leave for a retry). NATS JetStream would be
another such subclass.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from agentstream._client import Stats as _Stats
from agentstream._client import StreamClient
from agentstream._dispatch import Slot, callable_name, is_async_callable
from agentstream._router import is_final
from agentstream.bus._codec import GAP
from agentstream.errors import AgentStreamError, ConfigurationError, DecodeError
from agentstream.models import Gap
from agentstream.orders import OrderEvent

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Hashable

    from agentstream.bus._codec import Entry
    from agentstream.channels import Channel
    from agentstream.protocols.base import VenueProtocol

__all__ = ["LOSS", "BusClient", "BusStats", "DataLossReported", "DeadLettered"]

#: The ``t`` of a loss report written by the bridge (what it had to drop, and why).
LOSS = "loss"
#: Distinct channel keys counted in ``stats.messages``; more are counted under one key.
_MAX_COUNTED_KEYS = 1000


class DeadLettered(AgentStreamError):
    """An entry was moved to the dead-letter stream (reported to ``on_error``).

    Attributes:
        stream: the stream it came from.
        entry_id: its id there.
        deliveries: how many times it had been delivered.
        reason: why (the handler's last error, or why it could not be decoded).
    """

    def __init__(self, message: str, *, stream: str, entry_id: str, deliveries: int, reason: str):
        super().__init__(message)
        self.stream = stream
        self.entry_id = entry_id
        self.deliveries = deliveries
        self.reason = reason


class DataLossReported(AgentStreamError):
    """The bridge reported events it could not keep (reported to ``on_error``).

    Attributes:
        report: the bridge's loss report as it wrote it (counts per channel, reason).
    """

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class BusStats(_Stats):
    """A bus consumer's counters (``bus.stats``): the venue client's, plus the bus's.

    ``messages`` counts entries delivered per channel key, ``handler_errors`` the
    exceptions handlers raised, ``gaps`` the gap reports passed to ``on_gap``,
    ``dropped_frames`` the entries that could not be decoded (dead-lettered at once).

    Example:
        >>> s = bus.stats
        >>> s.read, s.handled, s.acked, s.claimed, s.dead_lettered
        (1200, 1199, 1199, 3, 1)
    """

    #: Entries read from the streams (new ones, this consumer's own pending ones, and
    #: reclaimed ones).
    read: int = 0
    #: Entries every handler of which returned without raising.
    handled: int = 0
    #: Entries acknowledged (handled, or with nobody to handle them here).
    acked: int = 0
    #: Entries taken over from a consumer that held them longer than ``claim_idle``.
    claimed: int = 0
    #: Entries moved to the dead-letter stream.
    dead_lettered: int = 0
    #: Loss reports of the bridge (each also reported to ``on_error``).
    losses: int = 0
    #: Entries delivered to handlers and not yet settled.
    in_flight: int = 0
    #: Streams read.
    streams: int = 0


class _Envelope:
    """One entry on its way through its handlers."""

    __slots__ = ("error", "items", "remaining", "returned", "token")

    def __init__(self, token: Hashable) -> None:
        self.token = token
        #: Handlers (items) yet to return or be dropped.
        self.remaining = 0
        self.error: BaseException | None = None
        #: Whether a handler returned (or raised) for it: an entry whose every other
        #: handler was removed is then settled, not left for a retry.
        self.returned = False
        #: One item per handler the entry went to.
        self.items: list[_Item] = []


class _Item:
    """What a bus handler's queue holds: the event, the entry it came from, the slot."""

    __slots__ = ("done", "envelope", "event", "slot")

    def __init__(self, envelope: _Envelope, event: Any, slot: Slot) -> None:
        self.envelope = envelope
        self.event = event
        self.slot = slot
        #: The handler returned, raised, or the item was dropped: counted once.
        self.done = False


class BusClient(StreamClient):
    """A venue client whose events come from a broker; see the module docstring.

    Not used directly: :class:`~agentstream.bus.RedisBus` is one.
    """

    def __init__(
        self,
        protocol: VenueProtocol,
        *,
        queue_size: int = 10_000,
        logger: logging.Logger | None = None,
    ) -> None:
        # No credential: the bus holds none (the bridge does). The base wants one.
        super().__init__(protocol, "-", queue_size=queue_size, logger=logger, recover_orders=False)
        self._listen_items: dict[Slot, _Item] = {}
        self._counts: dict[str, int] = {}
        self._bus_invalid = 0
        self._bad_entries = 0
        self._gap_count = 0
        self._loss_count = 0
        self._in_flight = 0
        #: Entries with their handlers now, by token.
        self._envelopes: dict[Hashable, _Envelope] = {}

    # -- registration -----------------------------------------------------------------

    def _register(
        self,
        channel: Channel,
        handler: Any,
        *,
        thread: bool,
        partial: bool = False,
        every: bool = False,
    ) -> Any:
        if channel.kind not in self._kinds:
            raise ConfigurationError(
                f"{self._protocol.venue} has no {channel.kind} channel (its channels: "
                f"{', '.join(sorted(self._kinds))})"
            )
        return super()._register(channel, handler, thread=thread, partial=partial, every=every)

    def _new_slot(
        self,
        channel: Channel,
        fn: Callable[[Any], Any],
        *,
        model: type[Any] | None,
        thread: bool,
        partial: bool,
        every: bool = False,
    ) -> Slot:
        # Every entry reaches the handler (and is acknowledged after it): a bus handler
        # is never conflated, so ``every`` changes nothing here.
        # The slot calls a wrapper that tells when the handler returned; an exception
        # reaches the slot's report (below), as for a venue client's handler.
        done = self._done_from_thread if thread else self._item_done
        call: Callable[[Any], Any]
        if is_async_callable(fn):

            async def call(item: _Item) -> None:
                await fn(item.event)
                done(item)

        else:

            def call(item: _Item) -> None:
                fn(item.event)
                done(item)

        setattr(call, "__wrapped__", fn)  # noqa: B010 - so remove_handler finds it
        slot = Slot(
            channel,
            call,
            model=model,
            thread=thread,
            partial=partial,
            max_queue=self._queue_size,
            report=self._slot_failed,
        )
        slot.name = callable_name(fn)
        return slot

    # -- settling ---------------------------------------------------------------------

    def _item_done(self, item: _Item) -> None:
        if item.done:
            return  # dropped (its handler was removed, or the run ended)
        item.done = True
        env = item.envelope
        env.returned = True
        env.remaining -= 1
        if env.remaining == 0:
            self._finish(env)

    def _finish(self, env: _Envelope) -> None:
        """Every handler of the entry returned or was removed: settle it, or (no handler
        returned for it) leave it unsettled, pending in the broker for a retry."""
        self._in_flight -= 1
        self._envelopes.pop(env.token, None)
        if env.returned:
            self._settle(env.token, env.error)
        else:
            self._abandoned(env.token)

    def _abandon(self, slot: Slot | None = None) -> None:
        """Drop what ``slot`` (removed, or a ``listen()`` that ended) still had to handle:
        its queued entries and the one it is handling. An entry nobody else handles is
        not settled: it stays pending in the broker and is delivered again (see
        :meth:`_abandoned`); one that other handlers had or still have settles with
        them. With ``None`` (the run ended): every entry on its way, none settled."""
        if slot is None:
            for s in [*self._running_slots, *self._listen_items, *self._listen_slots]:
                s.queue.clear()  # (only items: undelivered entries of this run)
            self._listen_items.clear()
            for env in list(self._envelopes.values()):
                for it in env.items:
                    it.done = True
                env.remaining = 0
                self._in_flight -= 1
                self._envelopes.pop(env.token, None)
                self._abandoned(env.token)
            return
        self._listen_items.pop(slot, None)
        slot.queue.clear()
        # Its items not done: queued, held by a listen() loop, or in a call being
        # cancelled (or in a worker thread left to finish it: its return is ignored).
        for env in list(self._envelopes.values()):
            for it in env.items:
                if it.slot is slot and not it.done:
                    it.done = True
                    env.remaining -= 1
                    if env.remaining == 0:
                        self._finish(env)

    def _abandoned(self, token: Hashable) -> None:
        """An entry left unsettled (its handlers removed, or the run ended): the engine
        forgets it here; the broker delivers it again. Called on the loop's thread."""

    def _done_from_thread(self, item: _Item) -> None:
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self._item_done, item)
        else:
            self._item_done(item)

    def _slot_failed(self, slot: Slot, exc: BaseException, item: Any) -> None:
        if isinstance(item, _Item):
            if item.envelope.error is None and not item.done:
                item.envelope.error = exc
            self._item_done(item)
            item = item.event
        self._handler_failed(slot, exc, item)

    def _settle(self, token: Hashable, error: BaseException | None) -> None:
        """An entry went through all its handlers (``error``: the first one raised).

        Called on the event loop's thread. The engine acknowledges it, or not.
        """
        raise NotImplementedError

    def _new_listen_slot(
        self, channel: Channel | str, model: type[Any], conflate: Callable[[Any], object] | None
    ) -> Slot:
        # Each entry reaches the loop (and is acknowledged when it asks for the next):
        # never conflated, as a bus handler.
        return super()._new_listen_slot(channel, model, None)

    def _listen_ended(self, slot: Slot) -> None:
        # A loop left (break, return, exception): the entry it was given and those
        # queued for it are not acknowledged; they are delivered again (claim_idle).
        if self._loop is not None:
            self._abandon(slot)

    async def _next_or_end(self, slot: Slot) -> Any:
        # listen(): the previous entry is settled when the loop body asks for the next.
        prev = self._listen_items.pop(slot, None)
        if prev is not None:
            self._item_done(prev)
        got = await super()._next_or_end(slot)
        if isinstance(got, _Item):
            self._listen_items[slot] = got
            return got.event
        return got

    # -- delivery ---------------------------------------------------------------------

    def _deliver(self, entry: Entry, token: Hashable) -> bool:
        """Push an event entry to its handlers; False when none wants it (settle it now).

        Raises:
            DecodeError: the entry names a kind this venue does not have, or its payload
                is not an event (the engine dead-letters it).
        """
        spec = self._kinds.get(entry.type)
        if spec is None:
            raise DecodeError(f"an entry of kind {entry.type!r}, not one of {self._protocol.venue}")
        payload = entry.payload
        if type(payload) is not dict:
            raise DecodeError(f"a {entry.type} entry whose payload is not a map")
        key = entry.channel
        with self._lock:
            slots = list(self._slots.get(key, ()))
            if spec.wildcard is not None:
                every = f"{spec.name}:{spec.wildcard}"
                if key != every:
                    slots += self._slots.get(every, ())
            slots += self._kind_listeners.get(spec.name, ())
        self._count(key)
        closed = spec.final is None or is_final(spec, payload)
        targets: list[tuple[Slot, Any]] = []
        typed: Any = None
        for slot in slots:
            if slot.stopped or not (closed or slot.partial):
                continue
            model = slot.model
            if model is None:
                targets.append((slot, payload))
                continue
            if typed is None:
                typed = self._typed(spec.model, entry)
                if typed is None:
                    typed = False  # invalid: typed handlers skip this entry
            if typed is False:
                continue
            targets.append(
                (slot, self._protocol.order_event(typed) if model is OrderEvent else typed)
            )
        if not targets:
            return False
        env = _Envelope(token)
        env.remaining = len(targets)
        env.items = items = [_Item(env, event, slot) for slot, event in targets]
        self._in_flight += 1
        self._envelopes[token] = env
        for item in items:
            item.slot.push(item)
        return True

    def _typed(self, model: type[Any] | None, entry: Entry) -> Any:
        if model is None:
            return None
        try:
            return msgspec.convert(entry.payload, model)
        except (msgspec.ValidationError, ValueError, TypeError) as exc:
            self._bus_invalid += 1
            self.log.warning("an invalid %s entry (%s): typed handlers skip it", entry.type, exc)
            self._emit_error(
                DecodeError(f"invalid {entry.type} event: {exc}"),
                {"stage": "decode", "channel": entry.channel},
            )
            return None

    def _count(self, key: str) -> None:
        counts = self._counts
        if key not in counts and len(counts) >= _MAX_COUNTED_KEYS:
            key = "(other channels)"
        counts[key] = counts.get(key, 0) + 1

    def _report(self, entry: Entry, then: Callable[[], Any]) -> None:
        """A gap or loss report: to ``on_gap`` / ``on_error``; ``then`` once they ran.

        Raises:
            DecodeError: a gap report that is not a :class:`Gap`, or another ``t``.
        """
        runner = self._hook_runner
        if entry.type == GAP:
            try:
                gap = msgspec.convert(entry.payload, Gap)
            except (msgspec.ValidationError, TypeError) as exc:
                raise DecodeError(f"a gap entry that is not a gap report: {exc}") from None
            if self._concerns(gap.channel):
                self._gap_count += 1
                self._emit_gap(gap)
        elif entry.type == LOSS:
            self._loss_count += 1
            self.log.warning("the bridge reports lost events: %s", entry.payload)
            self._emit_error(
                DataLossReported(f"the bridge reports lost events: {entry.payload}", entry.payload),
                {"stage": "bridge", "channel": entry.channel},
            )
        else:
            raise DecodeError(f"an entry of kind {entry.type!r} in the gaps stream")
        if runner is not None:
            runner.submit(then)  # after the hooks just queued: acknowledged once they ran
        else:
            then()

    def _concerns(self, key: str) -> bool:
        """Whether a gap of channel ``key`` concerns what this consumer subscribed."""
        kind, _, rest = key.partition(":")
        spec = self._kinds.get(kind)
        with self._lock:
            wanted = self._wanted_keys()
            if key in wanted or (spec is not None and self._kind_listeners.get(kind)):
                return True
            if spec is None or spec.wildcard is None:
                return False
            if rest == spec.wildcard:  # a gap of ticker:all: every ticker subscriber
                return any(k.partition(":")[0] == kind for k in wanted)
            return f"{kind}:{spec.wildcard}" in wanted

    def _bus_stats(self, **extra: Any) -> BusStats:
        """The venue client's counters with the bus's (for the engine's ``stats``)."""
        with self._lock:
            slots = [s for v in self._slots.values() for s in v] + [
                s for v in self._kind_listeners.values() for s in v
            ]
        counts = dict(self._counts)
        return BusStats(
            state=self._state,
            connections=extra.pop("connections"),
            reconnects=self._reconnects,
            failed_attempts=self._failed_attempts,
            messages=counts,
            messages_total=sum(counts.values()),
            dropped_frames=self._bad_entries,
            invalid_events=self._bus_invalid,
            handler_errors=self._handler_errors,
            # Always 0: a bus handler or listen() gets every entry (never conflated).
            conflated=sum(self._conflated.values()) + sum(s.conflated for s in slots),
            gaps=self._gap_count,
            queued=sum(len(s.queue) for s in slots),
            losses=self._loss_count,
            in_flight=self._in_flight,
            **extra,
        )
