"""No order update lost: what handlers saw of each order, and recovery after a gap.

Every order event passes a :class:`RecoverySink` (one per representation: dict or
typed) on its way to the handlers. The sink keeps a bounded ledger of the states it
delivered, ``(order id, status, filled quantity)``, and drops any repeat: a copy from
another socket, a live event that recovery already delivered, a replay.

After the account's private channels were down (no socket up), the client reads the
orders over REST while the sink holds live order events back; it delivers each order
whose state the handlers have not seen, once, marked recovered, then the held live
events (minus what recovery already delivered). A recovery that fails lets live events
through at once and is retried.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from agentstream._router import SinkBase

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Ledger", "RecoverySink"]

log = logging.getLogger("agentstream")

#: Orders whose delivered states are remembered (the oldest are forgotten first).
_ORDERS = 50_000
#: Live events held back while a recovery runs, at most; beyond this they go through.
_HOLD = 100_000

State = tuple[str, str, str]


class Ledger:
    """The states of each order delivered to one representation's handlers, and the
    live events held back while a recovery runs (both outlive the routing table)."""

    def __init__(self, limit: int = _ORDERS) -> None:
        self.limit = limit
        self._orders: OrderedDict[str, set[tuple[str, str]]] = OrderedDict()
        #: Events not delivered because their state was delivered already.
        self.repeats = 0
        #: Live events are held back (a recovery runs).
        self.holding = False
        self.held: deque[Any] = deque()
        #: What recovery delivered, per order: (filled, final, status); a live event
        #: behind it is older news (bounded like the ledger).
        self.recovered: OrderedDict[str, tuple[Decimal, bool, str]] = OrderedDict()

    def mark(self, order_id: str, newer: tuple[Decimal, bool, str]) -> None:
        self.recovered[order_id] = newer
        self.recovered.move_to_end(order_id)
        if len(self.recovered) > self.limit:
            self.recovered.popitem(last=False)

    def known(self, order_id: str) -> bool:
        return order_id in self._orders

    def first_time(self, state: State) -> bool:
        """Record ``state``; whether it is new (to be delivered)."""
        oid, status, filled = state
        states = self._orders.get(oid)
        if states is None:
            states = self._orders[oid] = set()
            if len(self._orders) > self.limit:
                self._orders.popitem(last=False)
        else:
            self._orders.move_to_end(oid)
        if (status, filled) in states:
            self.repeats += 1
            return False
        states.add((status, filled))
        return True


class RecoverySink(SinkBase):
    """In front of one representation's order handlers: dedup, and hold during recovery.

    ``state_of`` gives an event's ``(order id, status, filled)`` (None when it has no
    id: delivered as it is); ``pushes`` are the handlers' queues.
    """

    __slots__ = ("ledger", "pushes", "state_of", "typed")

    def __init__(
        self,
        ledger: Ledger,
        pushes: tuple[Callable[[Any], None], ...],
        state_of: Callable[[Any], State | None],
        *,
        typed: bool,
    ) -> None:
        super().__init__()
        self.ledger = ledger
        self.pushes = pushes
        self.state_of = state_of
        self.typed = typed
        self.push: Callable[[Any], None] = self._push

    def _push(self, event: Any) -> None:
        ledger = self.ledger
        if ledger.holding and len(ledger.held) < _HOLD:
            ledger.held.append(event)
            return
        self.deliver(event)

    def deliver(self, event: Any, *, recovered: bool = False) -> bool:
        """Push ``event`` to the handlers unless its state was delivered already, or (a
        live event) it is behind what recovery delivered for its order."""
        state = self.state_of(event)
        if state is not None:
            ledger = self.ledger
            mark = ledger.recovered.get(state[0])
            if mark is not None and not recovered and _behind(state, mark):
                ledger.repeats += 1
                return False
            if not ledger.first_time(state):
                return False
        for push in self.pushes:
            push(event)
        return True

    def release(self) -> None:
        """Deliver the held events, minus repeats and minus those behind what recovery
        delivered for their order (an older state must not land after a newer one), and
        stop holding."""
        ledger = self.ledger
        ledger.holding = False
        held, ledger.held = ledger.held, deque()
        for event in held:
            self.deliver(event)


def _behind(state: State, newer: tuple[Decimal, bool, str]) -> bool:
    """Whether ``state`` is older than the recovered one: less filled, or as filled while
    the recovered order is done and in another status."""
    filled, final, status = newer
    try:
        mine = Decimal(state[2])
    except ArithmeticError:
        return False
    return mine < filled or (mine == filled and final and state[1] != status)
