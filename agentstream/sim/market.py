"""The simulated market: 600+ USDT pairs, seeded random walks, candles built from ticks.

Pure and deterministic: nothing here reads a clock or touches the network. The server
passes the simulated time in (milliseconds since the epoch) and turns the ticks and
candles this module produces into frames.

Prices and quantities are kept as integers in units of the pair's tick (``10**-decimals``),
so the walk never drifts into float noise and formatting a decimal string is exact.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from decimal import Decimal

#: Candle intervals the simulated exchange builds, with their length in milliseconds.
INTERVAL_MS: dict[str, int] = {
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "1h": 3_600_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
}

#: The candle intervals the real AgentExchange server serves (its SDK page also promises
#: 15m and 4h, which the server refuses with ``INVALID_CHANNEL``). Pass it as
#: ``SimConfig(candle_intervals=REAL_SERVER_INTERVALS)`` to make the sim refuse them too.
REAL_SERVER_INTERVALS: tuple[str, ...] = ("1m", "5m", "1h", "1d")

# Real base assets with a plausible starting price; the rest of the 600+ pairs are
# generated from syllables with the seeded generator.
_MAJORS: tuple[tuple[str, float], ...] = (
    ("BTC", 64500.0),
    ("ETH", 3400.0),
    ("SOL", 145.0),
    ("BNB", 580.0),
    ("XRP", 0.52),
    ("DOGE", 0.12),
    ("ADA", 0.45),
    ("AVAX", 35.0),
    ("TRX", 0.12),
    ("DOT", 7.1),
    ("LINK", 14.5),
    ("MATIC", 0.7),
    ("TON", 6.8),
    ("SHIB", 0.000024),
    ("LTC", 82.0),
    ("BCH", 470.0),
    ("UNI", 9.8),
    ("ATOM", 8.6),
    ("XLM", 0.11),
    ("NEAR", 6.9),
    ("APT", 9.1),
    ("FIL", 5.8),
    ("ARB", 1.05),
    ("OP", 2.4),
    ("ETC", 27.0),
    ("HBAR", 0.09),
    ("ICP", 12.0),
    ("INJ", 25.0),
    ("SUI", 1.1),
    ("IMX", 2.1),
    ("VET", 0.035),
    ("RNDR", 8.2),
    ("GRT", 0.28),
    ("AAVE", 95.0),
    ("MKR", 2900.0),
    ("ALGO", 0.19),
    ("SAND", 0.45),
    ("MANA", 0.48),
    ("AXS", 7.5),
    ("EGLD", 40.0),
    ("THETA", 2.0),
    ("FTM", 0.7),
    ("XTZ", 1.0),
    ("EOS", 0.8),
    ("FLOW", 0.9),
    ("CHZ", 0.11),
    ("SNX", 3.1),
    ("CRV", 0.5),
    ("LDO", 2.2),
    ("RUNE", 5.5),
    ("KAVA", 0.7),
    ("ZEC", 24.0),
    ("DASH", 30.0),
    ("NEO", 15.0),
    ("COMP", 55.0),
    ("1INCH", 0.42),
    ("ENJ", 0.3),
    ("ZIL", 0.025),
    ("BAT", 0.25),
    ("QTUM", 3.9),
    ("IOTA", 0.23),
    ("ONE", 0.02),
    ("CELO", 0.8),
    ("KSM", 30.0),
    ("YFI", 7000.0),
    ("SUSHI", 1.1),
    ("GALA", 0.04),
    ("APE", 1.3),
    ("PEPE", 0.0000085),
    ("WIF", 2.6),
    ("FET", 1.6),
    ("AGIX", 0.6),
    ("OCEAN", 0.7),
    ("STX", 2.0),
    ("SEI", 0.5),
    ("TIA", 9.0),
    ("JUP", 1.0),
    ("PYTH", 0.5),
    ("WLD", 4.5),
    ("ORDI", 40.0),
    ("BONK", 0.000025),
    ("FLOKI", 0.00018),
    ("JASMY", 0.02),
    ("ROSE", 0.1),
    ("MINA", 0.8),
    ("GMX", 30.0),
    ("DYDX", 2.0),
    ("BLUR", 0.4),
    ("CFX", 0.2),
    ("ANKR", 0.04),
    ("ZRX", 0.5),
    ("LRC", 0.27),
    ("STORJ", 0.5),
    ("SKL", 0.08),
    ("AUDIO", 0.2),
    ("MASK", 3.0),
    ("WOO", 0.3),
    ("ENS", 15.0),
    ("RPL", 25.0),
    ("SSV", 30.0),
)
# -- Tradier front-end: US equities (see agentstream/sim/tradier.py) ---------------------
#: US equities the simulated Tradier trades, with a plausible starting price in USD.
#: They live in :attr:`Market.equities`, apart from the crypto pairs: ``pairs``,
#: ``ticker_all``, the firehose and candles are exactly as without them.
EQUITIES: tuple[tuple[str, float], ...] = (
    ("AAPL", 227.50),
    ("MSFT", 415.30),
    ("SPY", 562.10),
    ("QQQ", 480.20),
    ("TSLA", 248.90),
    ("NVDA", 118.75),
    ("AMZN", 186.40),
)
# -- end Tradier ------------------------------------------------------------------------
_SYLLABLES = (
    "AR",
    "BO",
    "CA",
    "DE",
    "FI",
    "GA",
    "HU",
    "JO",
    "KE",
    "LU",
    "MI",
    "NO",
    "PA",
    "QU",
    "RA",
    "SO",
    "TI",
    "VE",
    "WA",
    "XI",
    "ZE",
    "OM",
    "EX",
    "YL",
    "UN",
    "IN",
    "AL",
    "OR",
)


def price_decimals(price: float) -> int:
    """Decimal places of a pair's price tick: 2 for BTC-like prices, up to 8 for memecoins."""
    return max(2, min(8, 4 - math.floor(math.log10(price))))


def quantity_decimals(price: float) -> int:
    """Decimal places of a pair's quantity step: 5 for BTC-like prices, 0 for cheap coins."""
    return max(0, min(6, math.floor(math.log10(price)) + 1))


def format_units(value: int, decimals: int) -> str:
    """Format an integer count of ``10**-decimals`` units as an exact decimal string.

    >>> format_units(6452130, 2)
    '64521.30'
    """
    if decimals == 0:
        return str(value)
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), 10**decimals)
    return f"{sign}{whole}.{frac:0{decimals}d}"


_second_cache: dict[int, str] = {}


def iso_ms(ts_ms: int) -> str:
    """ISO-8601 UTC with milliseconds and a ``Z``: ``2026-02-23T15:30:45.123Z``."""
    sec, ms = divmod(ts_ms, 1000)
    prefix = _second_cache.get(sec)
    if prefix is None:
        if len(_second_cache) > 4096:
            _second_cache.clear()
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _second_cache[sec] = prefix
    return f"{prefix}.{ms:03d}Z"


def iso_s(ts_ms: int) -> str:
    """ISO-8601 UTC to the second with a ``Z``, the form of a candle's open time."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts_ms // 1000))


@dataclass(slots=True)
class Pair:
    """One trading pair and its current price, in integer ticks."""

    symbol: str
    price: int
    price_dp: int
    qty_dp: int

    def price_str(self) -> str:
        return format_units(self.price, self.price_dp)

    def price_decimal(self) -> Decimal:
        return Decimal(self.price).scaleb(-self.price_dp)


@dataclass(slots=True)
class Tick:
    """One simulated trade."""

    pair: Pair
    price: int
    qty: int
    ts_ms: int
    is_buyer_maker: bool


@dataclass(slots=True)
class CandleState:
    """OHLCV of one pair and interval, in integer units, for the bucket starting at ``start_ms``."""

    start_ms: int
    open: int
    high: int
    low: int
    close: int
    volume: int = 0

    def data(self, pair: Pair, *, closed: bool) -> dict[str, object]:
        p, q = pair.price_dp, pair.qty_dp
        return {
            "time": iso_s(self.start_ms),
            "open": format_units(self.open, p),
            "high": format_units(self.high, p),
            "low": format_units(self.low, p),
            "close": format_units(self.close, p),
            "volume": format_units(self.volume, q),
            "is_closed": closed,
        }


@dataclass
class Market:
    """All pairs, their random walks and their candles.

    Args:
        seed: seed of the random generator; the same seed gives the same pairs and walks.
        n_pairs: number of pairs (at least the ~100 real majors; the rest are generated).
        intervals: candle intervals to build.
        volatility: standard deviation of one tick's relative price move.

    Example:
        >>> m = Market(seed=1)
        >>> len(m.pairs) >= 600, "BTCUSDT" in m.pairs
        (True, True)
    """

    seed: int = 42
    n_pairs: int = 620
    intervals: tuple[str, ...] = tuple(INTERVAL_MS)
    volatility: float = 0.0006
    pairs: dict[str, Pair] = field(init=False)
    #: US equities by symbol, for the Tradier front-end (price in cents, whole shares). Kept apart
    #: from ``pairs`` and walked by their own generator (:meth:`walk_equities`), so the
    #: crypto market of a seed is the same with or without them.
    equities: dict[str, Pair] = field(init=False)
    candles: dict[str, dict[str, CandleState]] = field(init=False)
    _rng: random.Random = field(init=False, repr=False)
    _eq_rng: random.Random = field(init=False, repr=False)
    _symbols: list[str] = field(init=False, repr=False)
    _cum_weights: list[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.pairs = {}
        for base, price in _MAJORS:
            self._add(base, price)
        while len(self.pairs) < self.n_pairs:
            n = self._rng.choice((2, 2, 3))
            base = "".join(self._rng.choice(_SYLLABLES) for _ in range(n))[
                : self._rng.randint(3, 6)
            ]
            if base + "USDT" in self.pairs:
                continue
            self._add(base, 10 ** self._rng.uniform(-5, 3))
        self._symbols = list(self.pairs)
        # Zipf-like activity: BTC trades most, the long tail rarely, as on a real venue.
        acc = 0.0
        self._cum_weights = []
        for rank in range(len(self._symbols)):
            acc += 1.0 / (rank + 1)
            self._cum_weights.append(acc)
        self.candles = {iv: {} for iv in self.intervals}
        # Tradier front-end: equities, with a generator of their own (see ``equities``).
        self._eq_rng = random.Random(self.seed * 1_000_003 + 7)
        self.equities = {
            sym: Pair(symbol=sym, price=round(price * 100), price_dp=2, qty_dp=0)
            for sym, price in EQUITIES
        }

    def _add(self, base: str, price: float) -> None:
        pdp = price_decimals(price)
        self.pairs[base + "USDT"] = Pair(
            symbol=base + "USDT",
            price=max(1, round(price * 10**pdp)),
            price_dp=pdp,
            qty_dp=quantity_decimals(price),
        )

    def ticks(self, n: int, ts_ms: int) -> list[Tick]:
        """Generate ``n`` trades at simulated time ``ts_ms``, moving prices and candles."""
        if n <= 0:
            return []
        rng = self._rng
        gauss = rng.gauss
        chosen = rng.choices(self._symbols, cum_weights=self._cum_weights, k=n)
        out: list[Tick] = []
        for sym in chosen:
            pair = self.pairs[sym]
            move = round(gauss(0.0, self.volatility) * pair.price)
            pair.price = max(1, pair.price + move)
            # A trade's notional is log-uniform between 10 and 5,000 USDT.
            notional = 10 ** rng.uniform(1.0, 3.7)
            qty = max(1, round(notional / pair.price * 10 ** (pair.price_dp + pair.qty_dp)))
            tick = Tick(pair, pair.price, qty, ts_ms, move < 0)
            self._update_candles(tick)
            out.append(tick)
        return out

    def _update_candles(self, tick: Tick) -> None:
        sym, price = tick.pair.symbol, tick.price
        for iv, states in self.candles.items():
            start = tick.ts_ms - tick.ts_ms % INTERVAL_MS[iv]
            st = states.get(sym)
            if st is None or st.start_ms != start:
                states[sym] = CandleState(start, price, price, price, price, tick.qty)
                continue
            if price > st.high:
                st.high = price
            elif price < st.low:
                st.low = price
            st.close = price
            st.volume += tick.qty

    def walk_equities(self) -> None:
        """Move every equity's price by one step of its random walk (Tradier front-end).

        Whole cents, never below one; uses its own generator, so the crypto pairs' walks
        do not depend on how often this runs.
        """
        gauss = self._eq_rng.gauss
        for eq in self.equities.values():
            eq.price = max(1, eq.price + round(gauss(0.0, self.volatility) * eq.price))

    def candle(self, symbol: str, interval: str, start_ms: int) -> CandleState:
        """The candle of ``symbol`` for the bucket starting at ``start_ms``.

        A bucket in which the pair did not trade is a flat candle at the last price with
        zero volume, so every interval has exactly one candle, traded or not.
        """
        st = self.candles[interval].get(symbol)
        if st is not None and st.start_ms == start_ms:
            return st
        price = self.pairs[symbol].price
        return CandleState(start_ms, price, price, price, price, 0)
