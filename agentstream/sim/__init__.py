"""The simulated AgentExchange: a real aiohttp server for demos, tests, benchmarks and bots.

Example:
    >>> from agentstream.sim import SimExchange, DEMO_API_KEY
    >>> async def main() -> None:
    ...     async with SimExchange(speed=60) as sim:
    ...         print(sim.url)
"""

from agentstream.sim.accounts import Account, OrderError
from agentstream.sim.market import INTERVAL_MS, REAL_SERVER_INTERVALS, Market
from agentstream.sim.server import (
    CLOSE_AUTH_FAILED,
    CLOSE_PONG_TIMEOUT,
    DEMO_API_KEY,
    ConnectionRecord,
    SimConfig,
    SimExchange,
    SimStats,
)

__all__ = [
    "CLOSE_AUTH_FAILED",
    "CLOSE_PONG_TIMEOUT",
    "DEMO_API_KEY",
    "INTERVAL_MS",
    "REAL_SERVER_INTERVALS",
    "Account",
    "ConnectionRecord",
    "Market",
    "OrderError",
    "SimConfig",
    "SimExchange",
    "SimStats",
]
