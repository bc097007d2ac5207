"""Channels as values: ``Channel.ticker("BTCUSDT")``, ``Channel.candles("ETHUSDT", "1m")``.

A channel is a kind, and where the kind has them a symbol and an interval. Its ``key``
joins them with ``:`` (``ticker:BTCUSDT``, ``ticker:all``, ``candles:BTCUSDT:1m``,
``orders``): the name handlers, ``ws.stats`` and gap reports use. Which kinds exist is
each venue's (its protocol's :class:`~agentstream.protocols.base.Kind` list);
``Channel.ticker`` and the other shortcuts build AgentExchange's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agentstream.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from agentstream.protocols.base import Kind

__all__ = ["Channel"]


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

    kind: str
    symbol: str | None = None
    interval: str | None = None
    #: True for the account's own channels (orders, portfolio), never dropped and
    #: delivered once.
    private: bool = field(default=False, compare=False)

    @classmethod
    def of(cls, kind: Kind, symbol: str | None = None, interval: str | None = None) -> Channel:
        """A validated channel of a venue's ``kind``.

        Raises:
            ConfigurationError: a symbol or interval the kind does not take, or lacks.
        """
        sym: str | None = None
        if kind.symbol:
            if symbol is None:
                raise ConfigurationError(f"{kind.name} channels need a symbol")
            sym = _symbol(symbol)
            if kind.wildcard is not None and sym == kind.wildcard.upper():
                if kind.intervals is not None:
                    raise ConfigurationError(
                        f"{kind.name} need one symbol; {kind.wildcard!r} is for other channels"
                    )
                sym = kind.wildcard
        elif symbol is not None:
            raise ConfigurationError(f"{kind.name} channels take no symbol")
        if kind.intervals is not None:
            if interval not in kind.intervals:
                raise ConfigurationError(
                    f"invalid {kind.name} interval {interval!r}: use one of "
                    f"{', '.join(kind.intervals)}"
                )
        elif interval is not None:
            raise ConfigurationError(f"{kind.name} channels take no interval")
        return cls(kind.name, sym, interval, kind.private)

    @classmethod
    def ticker(cls, symbol: str) -> Channel:
        """Trades of one pair; ``"all"`` is every pair (the ``ticker_all`` channel)."""
        return cls.of(_ae_kind("ticker"), symbol)

    @classmethod
    def candles(cls, symbol: str, interval: str) -> Channel:
        """Candles of one pair and interval (1m, 5m, 15m, 1h, 4h, 1d).

        Raises:
            ConfigurationError: (a ``ValueError``) for any other interval.
        """
        if isinstance(symbol, str) and symbol.strip().upper() == "ALL":
            raise ConfigurationError("candles need one symbol; 'all' is for tickers only")
        return cls.of(_ae_kind("candles"), symbol, interval)

    @classmethod
    def orders(cls) -> Channel:
        """The account's order updates."""
        return cls.of(_ae_kind("orders"))

    @classmethod
    def portfolio(cls) -> Channel:
        """The account's portfolio snapshots."""
        return cls.of(_ae_kind("portfolio"))

    @classmethod
    def parse(cls, key: str, kinds: Mapping[str, Kind] | None = None) -> Channel:
        """A channel from its key (``ticker:BTCUSDT``, ``candles:X:1m``, ``orders``).

        ``kinds``: the venue's kinds; AgentExchange's when omitted (which also takes the
        server's ``ticker_all``).

        Raises:
            ConfigurationError: the key names no channel.
        """
        if kinds is None:
            from agentstream.protocols import agentexchange

            kinds = agentexchange.KINDS
            key = agentexchange.normalize_key(key) or key
        parts = key.split(":")
        kind = kinds.get(parts[0])
        want = 1 + (kind is not None and kind.symbol) + (kind is not None and bool(kind.intervals))
        if kind is None or len(parts) != want:
            raise ConfigurationError(f"unknown channel {key!r}")
        return cls.of(kind, *parts[1:])

    @property
    def key(self) -> str:
        """The channel's name, e.g. ``ticker:BTCUSDT``."""
        if self.symbol is None:
            return self.kind
        if self.interval is None:
            return f"{self.kind}:{self.symbol}"
        return f"{self.kind}:{self.symbol}:{self.interval}"

    def __str__(self) -> str:
        return self.key


def _ae_kind(name: str) -> Kind:
    from agentstream.protocols.agentexchange import KINDS

    return KINDS[name]
