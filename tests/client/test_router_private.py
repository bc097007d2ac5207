"""The router's handling of private events across sockets, fed frames directly.

Private events (orders, portfolio) reach every socket of the key. The router delivers
each once (a copy from another socket is dropped, a repeat on the same socket is not),
and their gaps are the account's: open only while no socket was up.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec

from agentstream._dispatch import Slot
from agentstream._router import LinkGaps, Route, Router
from agentstream.channels import Channel
from agentstream.protocols.agentexchange import KINDS, AgentExchangeProtocol

if TYPE_CHECKING:
    from agentstream.errors import AgentStreamError, ServerError
    from agentstream.models import Gap
    from agentstream.protocols.base import Ack, AuthFailed, Reconnect, Refused


class Host:
    """Where the router's errors and gaps go (a RouterHost)."""

    def __init__(self) -> None:
        self.errors: list[AgentStreamError] = []
        self.gaps: list[Gap] = []

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger("agentstream.test")

    def emit_error(self, exc: AgentStreamError, context: dict[str, Any]) -> None:
        self.errors.append(exc)

    def emit_gap(self, gap: Gap) -> None:
        self.gaps.append(gap)


class Socket:
    """One socket as the router sees it (a FeedTarget)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.gaps = LinkGaps()
        self.data_frames = 0

    def on_control(self, inbound: Ack | Refused | AuthFailed | Reconnect) -> ServerError | None:
        return None


def order(oid: str, status: str) -> bytes:
    data = {
        "order_id": oid,
        "status": status,
        "symbol": "BTCUSDT",
        "side": "buy",
        "type": "market",
        "quantity": "1",
        "filled_at": "2026-02-23T15:30:45.456Z",
    }
    return msgspec.json.encode({"channel": "orders", "data": data})


def setup() -> tuple[Router, Host, Slot]:
    host = Host()
    router = Router(host, AgentExchangeProtocol("ws://127.0.0.1:1"))
    slot = Slot(Channel.orders(), None, model=None)  # a listen()-style queue
    router.rebuild({"orders": Route("orders", KINDS["orders"], (slot,), ())})
    return router, host, slot


def statuses(slot: Slot) -> list[str]:
    return [ev["status"] for ev in slot.queue]


def test_a_copy_from_another_socket_is_dropped_a_repeat_on_one_socket_is_not() -> None:
    router, _, slot = setup()
    router.dedup_private = True  # two sockets open
    a, b = Socket(0), Socket(1)
    feed_a, feed_b = router.feed_for(a), router.feed_for(b)
    feed_a([order("1", "pending")])
    feed_b([order("1", "pending")])  # the broadcast's copy
    feed_b([order("1", "filled")])  # B first this time
    feed_a([order("1", "filled")])
    feed_a([order("2", "open"), order("2", "open")])  # the server sent it twice on A
    assert statuses(slot) == ["pending", "filled", "open", "open"]
    assert router.duplicates == 2
    router.reset_private()
    feed_b([order("1", "pending")])  # a new run remembers nothing
    assert statuses(slot)[-1] == "pending"


def test_private_gaps_are_the_accounts_and_close_on_the_first_event_from_any_socket() -> None:
    router, host, slot = setup()
    router.dedup_private = True
    a, b = Socket(0), Socket(1)
    feed_a, feed_b = router.feed_for(a), router.feed_for(b)
    feed_a([order("1", "pending")])
    # Only when no socket is left up is the account's channel down.
    router.link_down(router.private_gaps, {"orders"}, "both sockets lost")
    assert "orders" in router.private_gaps.open
    assert not a.gaps.open and not b.gaps.open  # the sockets' own tables stay free
    feed_b([order("1", "filled")])  # the first event back, on the other socket
    [gap] = host.gaps
    assert gap.channel == "orders"
    assert gap.reason == "both sockets lost"
    assert not router.private_gaps.open
    feed_a([order("1", "filled")])  # A's copy: no second gap, no second delivery
    assert len(host.gaps) == 1
    assert statuses(slot) == ["pending", "filled"]


def test_a_live_event_behind_what_recovery_delivered_is_older_news() -> None:
    from decimal import Decimal

    from agentstream._recovery import Ledger, RecoverySink

    got: list[dict[str, Any]] = []
    ledger = Ledger()
    proto = AgentExchangeProtocol("ws://127.0.0.1:1")
    sink = RecoverySink(ledger, (got.append,), proto.order_state, typed=False)

    def ev(status: str, filled: str) -> dict[str, Any]:
        return {"order_id": "o1", "status": status, "executed_quantity": filled}

    ledger.holding = True
    sink.push(ev("open", "0"))  # live, held while the recovery runs
    sink.push(ev("partially_filled", "0.5"))
    ledger.mark("o1", (Decimal("0.5"), False, "partially_filled"))
    sink.deliver(ev("partially_filled", "0.5"), recovered=True)
    sink.release()
    assert [e["status"] for e in got] == ["partially_filled"]  # held ones were behind
    sink.push(ev("partially_filled", "0.3"))  # late and older: dropped
    sink.push(ev("filled", "1"))  # newer: delivered
    assert [e["status"] for e in got] == ["partially_filled", "filled"]
    ledger.mark("o2", (Decimal(0), True, "cancelled"))
    sink.push({"order_id": "o2", "status": "pending", "executed_quantity": None})
    assert len(got) == 2  # a cancelled order's earlier pending is older news


def test_tastytrade_dict_states_read_legs_as_to_builtins_gives_them() -> None:
    from agentstream.protocols.tastytrade import TastytradeProtocol
    from agentstream.tastytrade import PlacedOrder

    order = msgspec.convert(
        {
            "id": 9,
            "account-number": "5WT00000",
            "time-in-force": "Day",
            "order-type": "Market",
            "underlying-symbol": "AAPL",
            "underlying-instrument-type": "Equity",
            "status": "Filled",
            "cancellable": False,
            "editable": False,
            "edited": False,
            "updated-at": 1_700_000_000_000,
            "legs": [
                {
                    "instrument-type": "Equity",
                    "symbol": "AAPL",
                    "action": "Buy to Open",
                    "fills": [{"fill-id": "f", "quantity": "2", "fill-price": "1", "filled-at": 1}],
                }
            ],
        },
        PlacedOrder,
    )
    proto = TastytradeProtocol("ws://h")
    plain = msgspec.to_builtins(order)  # what recovery hands dict handlers
    assert proto.order_state(plain) == proto.order_state(order) == ("9", "Filled", "2")
