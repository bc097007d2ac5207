"""agentstream's pytest plugin: fixtures to test a bot against the simulated exchange.

pytest loads it by itself once agentstream is installed (entry point ``pytest11``,
name ``agentstream``; ``-p no:agentstream`` turns it off). It lives outside the
``agentstream`` package so that loading it imports nothing but pytest: everything else
is imported by the fixtures, when a test asks for one.

Fixtures (see ``docs/testing.md``):

- ``agentstream_sim``: a running :class:`agentstream.testing.RunningSim` (every venue,
  on a free 127.0.0.1 port, in its own thread), closed after the test.
- ``agentstream_sim_config``: its :class:`agentstream.sim.SimConfig`; override the
  fixture, or mark the test ``@pytest.mark.agentstream_sim(speed=600, ...)``.
- ``agentstream_feed``: ``agentstream_feed(ws)`` starts an :class:`agentstream.testing.Feed`
  (handlers run with no network), stopped after the test.
- ``agentstream_client_options``: fast client timings (:data:`agentstream.testing.FAST_CLIENT`).

Example:
    >>> def test_bot_sees_its_fill(agentstream_sim):
    ...     ws = AgentExchangeWS(agentstream_sim.api_key, agentstream_sim.url)
    ...     order = agentstream_sim.call(agentstream_sim.rest.place_order,
    ...                                  "BTCUSDT", "buy", "0.01")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from agentstream._client import StreamClient
    from agentstream.sim import SimConfig
    from agentstream.testing import Feed, RunningSim

__all__ = [
    "agentstream_client_options",
    "agentstream_feed",
    "agentstream_sim",
    "agentstream_sim_config",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "agentstream_sim(**fields): SimConfig fields for the agentstream_sim fixture",
    )


@pytest.fixture
def agentstream_sim_config() -> SimConfig:
    """The settings of ``agentstream_sim``: fast ones for tests (override this fixture
    to change them for a module or a directory)."""
    from agentstream.testing import fast_sim_config

    return fast_sim_config()


@pytest.fixture
def agentstream_sim(
    request: pytest.FixtureRequest, agentstream_sim_config: SimConfig
) -> Iterator[RunningSim]:
    """A simulated exchange with every venue, running in its own thread for the test.

    ``@pytest.mark.agentstream_sim(**fields)`` overrides fields of
    ``agentstream_sim_config`` (the marker closest to the test wins).
    """
    from agentstream.testing import RunningSim, _marker_overrides

    overrides = _marker_overrides(request.node.iter_markers("agentstream_sim"))
    with RunningSim(agentstream_sim_config, **overrides) as sim:
        yield sim


@pytest.fixture
def agentstream_feed() -> Iterator[Callable[..., Feed]]:
    """``agentstream_feed(ws, timeout=5.0)``: a started :class:`agentstream.testing.Feed`
    for ``ws``, stopped after the test."""
    from agentstream.testing import Feed

    feeds: list[Feed] = []

    def start(ws: StreamClient, **options: Any) -> Feed:
        feed = Feed(ws, **options)
        feeds.append(feed)
        return feed.start()

    yield start
    for feed in reversed(feeds):
        feed.stop()


@pytest.fixture
def agentstream_client_options() -> dict[str, Any]:
    """Fast client timings for tests (reconnects within tens of milliseconds):
    ``AgentExchangeWS(key, url, **agentstream_client_options)``."""
    from agentstream.testing import FAST_CLIENT

    return dict(FAST_CLIENT)
