"""The simulated AgentExchange: a real aiohttp server for demos, tests, benchmarks and bots.

It also speaks Tradier's account events stream and order REST API on the same port
(``agentstream.sim.tradier``), with the demo token :data:`TRADIER_DEMO_TOKEN`, and
tastytrade's account streamer (``/tastytrade``) and order REST API
(``agentstream.sim.tastytrade``), with the demo token :data:`TASTYTRADE_DEMO_TOKEN`.

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
    PLACEHOLDER_API_KEY,
    TASTYTRADE_DEMO_ACCOUNT,  # tastytrade front-end
    TASTYTRADE_DEMO_TOKEN,  # tastytrade front-end
    TRADIER_DEMO_ACCOUNT,
    TRADIER_DEMO_TOKEN,
    ConnectionRecord,
    SimConfig,
    SimExchange,
    SimStats,
)
from agentstream.sim.tastytrade import (  # tastytrade front-end
    TastytradeError,
    TastytradeVenue,
)
from agentstream.sim.tradier import TradierError, TradierVenue  # Tradier front-end

__all__ = [
    "CLOSE_AUTH_FAILED",
    "CLOSE_PONG_TIMEOUT",
    "DEMO_API_KEY",
    "INTERVAL_MS",
    "PLACEHOLDER_API_KEY",
    "REAL_SERVER_INTERVALS",
    "TASTYTRADE_DEMO_ACCOUNT",
    "TASTYTRADE_DEMO_TOKEN",
    "TRADIER_DEMO_ACCOUNT",
    "TRADIER_DEMO_TOKEN",
    "Account",
    "ConnectionRecord",
    "Market",
    "OrderError",
    "SimConfig",
    "SimExchange",
    "SimStats",
    "TastytradeError",
    "TastytradeVenue",
    "TradierError",
    "TradierVenue",
]
