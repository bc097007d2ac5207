"""Fixtures of the sim conformance suite: a started sim with fast settings, an HTTP session."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
import pytest

from agentstream.sim import DEMO_API_KEY, SimExchange
from tests.sim.helpers import fast_sim

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def sim() -> AsyncIterator[SimExchange]:
    """A running sim on a free port with :data:`~tests.sim.helpers.FAST` settings."""
    async with fast_sim() as s:
        yield s


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def ws(
    sim: SimExchange, session: aiohttp.ClientSession
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A plain WebSocket to ``sim`` with the demo key."""
    async with session.ws_connect(sim.ws_url(DEMO_API_KEY)) as w:
        yield w
