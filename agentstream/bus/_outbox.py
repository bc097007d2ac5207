"""The bridge's buffer between the venue client and the engine (no I/O, no clock).

Events wait here until the writer has appended them. Two queues, each in arrival order:

* **market** events (tickers, candles): when more than ``max_pending`` wait (the engine
  is slow or down), the older events of each symbol (and interval) are conflated: the
  newest survives, the others are dropped and counted per channel. Closed candles (no
  conflation key) are never conflated, and stay in order with their stream's updates.
* **kept** events (orders, portfolio, balances and the other account events, events of
  kinds that do not conflate, gap reports): never dropped while their encoded size stays within
  ``max_bytes``; an event beyond it cannot be kept: it is dropped and counted per channel
  (the bridge logs it and reports it as a ``loss`` entry).

Example:
    >>> box = Outbox(max_pending=4, max_bytes=1 << 20)
    >>> for price in "12345":
    ...     box.put(Item("s", "ticker", "ticker:BTC", {"p": price}, 1), key=("ticker:BTC", "BTC"))
    >>> [i.payload["p"] for i in box.take(10)], box.conflated
    (['4', '5'], {'ticker:BTC': 3})
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from agentstream.bus._codec import encode_entry

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["ITEM_OVERHEAD", "Item", "Outbox"]

#: Bytes counted for a kept event besides its encoded payload (the fields, the objects).
ITEM_OVERHEAD = 200


class Item:
    """One event waiting to be written: where, what, and (once encoded) its fields."""

    __slots__ = (
        "channel",
        "conflate",
        "fields",
        "kept",
        "payload",
        "received_ns",
        "stream",
        "type",
    )

    def __init__(
        self,
        stream: str,
        type_: str,
        channel: str,
        payload: Any,
        received_ns: int,
        *,
        conflate: object = None,
    ) -> None:
        self.stream = stream
        self.type = type_
        self.channel = channel
        self.payload = payload
        self.received_ns = received_ns
        #: The conflation key (channel, symbol...) of a market event, None for kept ones.
        self.conflate = conflate
        #: Queued with the kept events (never conflated).
        self.kept = False
        self.fields: dict[Any, Any] | None = None

    def encode(self) -> dict[Any, Any]:
        """The entry's fields, encoded once (see :func:`~agentstream.bus.encode_entry`).

        Raises:
            TypeError: the payload holds something MessagePack cannot carry.
        """
        if self.fields is None:
            self.fields = encode_entry(
                self.type, self.channel, self.payload, received_ns=self.received_ns
            )
        return self.fields

    def size(self) -> int:
        """Bytes this event holds while it waits (encoded payload plus overhead)."""
        return len(self.encode()["d"]) + ITEM_OVERHEAD

    def __repr__(self) -> str:
        return f"<Item {self.channel} r={self.received_ns}>"


class Outbox:
    """The two queues of events waiting for the writer (see the module's docstring)."""

    def __init__(self, *, max_pending: int, max_bytes: int) -> None:
        if max_pending < 2 or max_bytes < 1:
            raise ValueError("max_pending must be at least 2 and max_bytes positive")
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self.market: deque[Item] = deque()
        self.kept: deque[Item] = deque()
        self.kept_bytes = 0
        #: Market events dropped by conflation, per channel key (cumulative).
        self.conflated: dict[str, int] = {}
        #: Kept events dropped because ``max_bytes`` was reached, per channel (cumulative).
        self.dropped: dict[str, int] = {}
        #: Times the market bound was raised because more symbols wait than it allows.
        self.grown = 0

    def __len__(self) -> int:
        return len(self.market) + len(self.kept)

    def put(self, item: Item, *, key: object = None) -> None:
        """Queue a market event (``key``: its conflation key, None = never conflated)."""
        item.conflate = key
        if len(self.market) >= self.max_pending:
            self._conflate()
        self.market.append(item)

    def keep(self, item: Item) -> bool:
        """Queue an event that must not be conflated; False if it could not be kept.

        Raises:
            TypeError: its payload cannot be encoded (the caller counts it as invalid).
        """
        size = item.size()
        if self.kept_bytes + size > self.max_bytes:
            self.dropped[item.channel] = self.dropped.get(item.channel, 0) + 1
            return False
        self.kept_bytes += size
        item.kept = True
        self.kept.append(item)
        return True

    def take(self, n: int) -> list[Item]:
        """Up to ``n`` events to write now: kept ones first, then market ones."""
        out: list[Item] = []
        kept, market = self.kept, self.market
        while kept and len(out) < n:
            item = kept.popleft()
            self.kept_bytes -= item.size()
            out.append(item)
        while market and len(out) < n:
            out.append(market.popleft())
        return out

    def give_back(self, items: Iterable[Item]) -> None:
        """Put events that could not be written back in front, in their order (they were
        taken, so a kept one is never refused here)."""
        for item in reversed(list(items)):
            if item.kept:
                self.kept_bytes += item.size()
                self.kept.appendleft(item)
            else:
                self.market.appendleft(item)

    def discard(self, items: Iterable[Item]) -> int:
        """Remove these events (written after all); return how many were found."""
        gone = {id(i) for i in items}
        if not gone:
            return 0
        before = len(self)
        kept = [i for i in self.kept if id(i) not in gone]
        self.kept_bytes = sum(i.size() for i in kept)
        self.kept = deque(kept)
        self.market = deque(i for i in self.market if id(i) not in gone)
        return before - len(self)

    def _conflate(self) -> None:
        """Keep the newest market event per conflation key; count the others."""
        q = self.market
        seen: set[object] = set()
        kept: deque[Item] = deque()
        for item in reversed(q):
            key = item.conflate
            if key is not None:
                if key in seen:
                    self.conflated[item.channel] = self.conflated.get(item.channel, 0) + 1
                    continue
                seen.add(key)
            kept.appendleft(item)
        self.market = kept
        if len(kept) >= self.max_pending // 2:
            # More distinct symbols (or closed candles) waiting than half the bound:
            # raise it rather than conflate on every event.
            self.max_pending = 2 * len(kept)
            self.grown += 1
