"""Fixtures for client tests: a fast simulated exchange and a client running against it."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import pytest

from agentstream import AgentExchangeWS
from agentstream._client import StreamClient
from agentstream.sim import DEMO_API_KEY, SimExchange

C = TypeVar("C", bound=StreamClient)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

#: Client options for tests: every timer short, backoff without jitter.
FAST: dict[str, Any] = {
    "stale_timeout": 1.0,
    "backoff_initial": 0.02,
    "backoff_max": 0.1,
    "backoff_jitter": 0.0,
    "connect_timeout": 2.0,
    "close_timeout": 0.2,
}


async def wait_for(pred: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``pred`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or pred}")
        await anyio.sleep(0.005)


@pytest.fixture
async def sim() -> AsyncIterator[SimExchange]:
    async with SimExchange(
        tick_rate=2000,
        speed=120,
        ping_interval=0.1,
        pong_timeout=0.3,
        order_interval=0.02,
        portfolio_interval=0.5,
    ) as s:
        yield s


@pytest.fixture
def threaded_sim() -> Iterator[str]:
    """A simulated exchange on its own thread and loop, for tests of run_forever()."""
    box: dict[str, Any] = {}
    ready = threading.Event()
    done = threading.Event()

    def serve() -> None:
        async def main() -> None:
            async with SimExchange(tick_rate=1000) as s:
                box["url"] = s.url
                ready.set()
                while not done.is_set():
                    await anyio.sleep(0.02)

        anyio.run(main)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    assert ready.wait(5)
    yield box["url"]
    done.set()
    server.join(5)


def make_client(sim: SimExchange, **options: Any) -> AgentExchangeWS:
    return AgentExchangeWS(DEMO_API_KEY, sim.url, **{**FAST, **options})


@contextlib.asynccontextmanager
async def running(ws: C) -> AsyncIterator[C]:
    """Run ``ws.connect()`` in the background for the block; stop it afterwards."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(ws.connect)
        try:
            yield ws
        finally:
            with anyio.fail_after(3):
                await ws.disconnect()
