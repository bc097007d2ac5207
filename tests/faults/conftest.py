"""Fixtures and helpers of the fault suite (on top of tests/client/conftest.py's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from agentstream import AgentExchangeWS, AgentStreamError
from agentstream.sim import DEMO_API_KEY, SimExchange
from tests.client.conftest import FAST

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

#: The channels most tests register: every kind, two tickers.
CHANNELS = frozenset(
    {"ticker:BTCUSDT", "ticker:ETHUSDT", "candles:BTCUSDT:1m", "orders", "portfolio"}
)


@pytest.fixture
async def sim() -> AsyncIterator[SimExchange]:
    """A busy sim: BTCUSDT trades many times a second, pings every 0.1 s."""
    async with SimExchange(
        tick_rate=2000,
        speed=60,
        ping_interval=0.1,
        pong_timeout=0.5,
        step_interval=0.01,
        order_interval=0.02,
        portfolio_interval=60,
    ) as s:
        yield s


def client(url: str, key: str = DEMO_API_KEY, **options: Any) -> AgentExchangeWS:
    """A client of ``url`` with every timer short (tests/client's FAST) and ``options``.

    Order recovery is off: the scripted server speaks only the WebSocket (recovery,
    which reads orders over REST, is tested in tests/client/test_recovery.py).
    """
    return AgentExchangeWS(key, url, **{**FAST, "recover_orders": False, **options})


@dataclass
class Hooks:
    """Everything the client reported through its hooks."""

    errors: list[tuple[AgentStreamError, dict[str, Any]]] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)
    connects: int = 0

    @classmethod
    def attach(cls, ws: AgentExchangeWS) -> Hooks:
        hooks = cls()

        def connected() -> None:
            hooks.connects += 1

        ws.on_error(lambda exc, ctx: hooks.errors.append((exc, ctx)))
        ws.on_disconnect(hooks.disconnects.append)
        ws.on_connect(connected)
        return hooks

    def of(self, kind: type[AgentStreamError]) -> list[tuple[Any, dict[str, Any]]]:
        """The errors of exactly this type (not subclasses), with their contexts."""
        return [(e, c) for e, c in self.errors if type(e) is kind]


def register(ws: AgentExchangeWS, keys: Iterable[str], sink: list[Any]) -> None:
    """A dict handler appending to ``sink`` for every channel key in ``keys``."""
    for key in keys:
        kind, *rest = key.split(":")
        if kind == "ticker":
            ws.on_ticker(rest[0], sink.append, every=True)
        elif kind == "candles":
            ws.on_candles(rest[0], rest[1], sink.append, partial=True, every=True)
        elif kind == "orders":
            ws.on_order_update(sink.append)
        else:
            ws.on_portfolio(sink.append)


def watched(
    url: str, keys: Iterable[str], key: str = DEMO_API_KEY, **options: Any
) -> tuple[AgentExchangeWS, list[Any], Hooks]:
    """A client of ``url`` with a dict handler for each of ``keys``: (client, events, hooks)."""
    ws = client(url, key, **options)
    got: list[Any] = []
    register(ws, keys, got)
    return ws, got, Hooks.attach(ws)
