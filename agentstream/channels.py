"""Channels as values: ``Channel.ticker("BTCUSDT")``, ``Channel.candles("ETHUSDT", "1m")``.

A channel's ``key`` is the server's name for it (``ticker:BTCUSDT``, ``ticker:all``,
``candles:BTCUSDT:1m``, ``orders``, ``portfolio``), the form acks and errors use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agentstream.errors import ConfigurationError

__all__ = ["INTERVALS", "Channel", "ChannelKind"]

#: Candle intervals the client accepts (the SDK page's list).
INTERVALS: tuple[str, ...] = ("1m", "5m", "15m", "1h", "4h", "1d")

ChannelKind = Literal["ticker", "candles", "orders", "portfolio"]


def _symbol(symbol: str) -> str:
    if not isinstance(symbol, str):
        raise ConfigurationError(f"a symbol must be a string, not {type(symbol).__name__}")
    sym = symbol.strip().upper()
    if not sym or not sym.isalnum():
        raise ConfigurationError(f"invalid symbol {symbol!r}: expected e.g. 'BTCUSDT' or 'all'")
    return sym


@dataclass(frozen=True, slots=True)
class Channel:
    """One subscription.

    Example:
        >>> Channel.ticker("btcusdt").key
        'ticker:BTCUSDT'
        >>> Channel.parse("candles:ETHUSDT:1m") == Channel.candles("ETHUSDT", "1m")
        True
    """

    kind: ChannelKind
    symbol: str | None = None
    interval: str | None = None

    @classmethod
    def ticker(cls, symbol: str) -> Channel:
        """Trades of one pair; ``"all"`` is every pair (the ``ticker_all`` channel)."""
        sym = _symbol(symbol)
        return cls("ticker", "all" if sym == "ALL" else sym)

    @classmethod
    def candles(cls, symbol: str, interval: str) -> Channel:
        """Candles of one pair and interval (1m, 5m, 15m, 1h, 4h, 1d).

        Raises:
            ConfigurationError: (a ``ValueError``) for any other interval.
        """
        if interval not in INTERVALS:
            raise ConfigurationError(
                f"invalid candle interval {interval!r}: use one of {', '.join(INTERVALS)}"
            )
        sym = _symbol(symbol)
        if sym == "ALL":
            raise ConfigurationError("candles need one symbol; 'all' is for tickers only")
        return cls("candles", sym, interval)

    @classmethod
    def orders(cls) -> Channel:
        """The account's order updates."""
        return cls("orders")

    @classmethod
    def portfolio(cls) -> Channel:
        """The account's portfolio snapshots."""
        return cls("portfolio")

    @classmethod
    def parse(cls, key: str) -> Channel:
        """A channel from its key (``ticker:BTCUSDT``, ``candles:X:1m``, ``ticker_all``, ...).

        Raises:
            ConfigurationError: the key names no channel.
        """
        parts = key.split(":")
        kind = parts[0]
        if kind == "ticker_all" and len(parts) == 1:
            return cls.ticker("all")
        if kind == "ticker" and len(parts) == 2:
            return cls.ticker(parts[1])
        if kind == "candles" and len(parts) == 3:
            return cls.candles(parts[1], parts[2])
        if kind in ("orders", "portfolio") and len(parts) == 1:
            return cls(kind)  # type: ignore[arg-type]
        raise ConfigurationError(f"unknown channel {key!r}")

    @property
    def key(self) -> str:
        """The server's name for the channel, e.g. ``ticker:BTCUSDT``."""
        if self.kind == "ticker":
            return f"ticker:{self.symbol}"
        if self.kind == "candles":
            return f"candles:{self.symbol}:{self.interval}"
        return self.kind

    @property
    def private(self) -> bool:
        """True for the account's own channels (orders, portfolio)."""
        return self.kind in ("orders", "portfolio")

    def __str__(self) -> str:
        return self.key
