"""``agentstream tail``: print a live stream, one line per event, from the sim or any venue.

Channels are typed as users say them (``ticker:BTCUSDT``, ``candles:ETHUSDT:1m``,
``orders``); each event is one readable line on stdout (or one JSON object with
``--json``), and what happens to the connection (connected, disconnected, reconnected,
gaps, errors) is one line each on stderr, so stdout stays pipeable.

Example:
    $ agentstream tail ticker:BTCUSDT candles:ETHUSDT:1m orders
    $ agentstream tail --venue tastytrade orders balances positions --json | jq .data
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import signal
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import msgspec

from agentstream._redact import mask_secret, mask_url
from agentstream.errors import AgentStreamError, AuthenticationError

# Imported at run time on purpose: agentstream reads handler annotations to pick typed payloads.
from agentstream.models import Candle, Gap, OrderUpdate, Portfolio, Ticker  # noqa: TC001
from agentstream.sim import (
    DEMO_API_KEY,
    INTERVAL_MS,
    TASTYTRADE_DEMO_ACCOUNT,
    TASTYTRADE_DEMO_TOKEN,
    TRADIER_DEMO_TOKEN,
)
from agentstream.tastytrade.models import (  # noqa: TC001
    AccountBalance,
    CurrentPosition,
    PlacedOrder,
    QuoteAlert,
    Watchlist,
)
from agentstream.tradier.models import TradierOrder  # noqa: TC001

if TYPE_CHECKING:
    from collections.abc import Callable

    from agentstream._client import StreamClient

__all__ = [
    "CHANNEL_FORMS",
    "CREDENTIAL_ENV",
    "DEFAULT_URLS",
    "VENUES",
    "ChannelError",
    "TailChannel",
    "TailOptions",
    "parse_channel",
    "run_tail",
]

VENUES = ("agentexchange", "tradier", "tastytrade")

#: Where ``tail`` connects when no ``--url`` is given: the sim on 127.0.0.1:8000.
DEFAULT_URLS = {
    "agentexchange": "ws://127.0.0.1:8000",
    "tradier": "http://127.0.0.1:8000",
    "tastytrade": "ws://127.0.0.1:8000/tastytrade",
}
#: Environment variables read for a URL, the credential and the account, per venue.
#: (In order: AgentExchange also honours the client's own AGENTSTREAM_BASE_URL.)
URL_ENV = {
    "agentexchange": ("AGENTEXCHANGE_WS_URL", "AGENTSTREAM_BASE_URL"),
    "tradier": ("TRADIER_BASE_URL",),
    "tastytrade": ("TASTYTRADE_URL",),
}
CREDENTIAL_ENV = {
    "agentexchange": "AGENTEXCHANGE_API_KEY",
    "tradier": "TRADIER_TOKEN",
    "tastytrade": "TASTYTRADE_TOKEN",
}
ACCOUNT_ENV = {"tradier": "TRADIER_ACCOUNT", "tastytrade": "TASTYTRADE_ACCOUNT"}
DEMO_CREDENTIALS = {
    "agentexchange": DEMO_API_KEY,
    "tradier": TRADIER_DEMO_TOKEN,
    "tastytrade": TASTYTRADE_DEMO_TOKEN,
}
DEMO_ACCOUNTS = {"tradier": None, "tastytrade": TASTYTRADE_DEMO_ACCOUNT}

_INTERVALS = " ".join(INTERVAL_MS)
#: The channel forms each venue takes, as the usage error lists them.
CHANNEL_FORMS = {
    "agentexchange": (
        "ticker:SYMBOL",
        "ticker:all",
        f"candles:SYMBOL:INTERVAL (INTERVAL one of {_INTERVALS})",
        "orders",
        "portfolio",
    ),
    "tradier": ("orders",),
    "tastytrade": ("orders", "balances", "positions", "quote-alerts", "watchlists"),
}
_SYMBOL = re.compile(r"[A-Za-z0-9]+")


class ChannelError(ValueError):
    """A channel text ``tail`` does not understand; the message names the valid forms.

    Example:
        >>> parse_channel("agentexchange", "tickr:BTCUSDT")
        Traceback (most recent call last):
        ChannelError: invalid channel 'tickr:BTCUSDT' for agentexchange; ...
    """


@dataclass(frozen=True)
class TailChannel:
    """One channel to print: its kind, and symbol and interval where the kind has them.

    Example:
        >>> parse_channel("agentexchange", "candles:ethusdt:1m")
        TailChannel(kind='candles', symbol='ETHUSDT', interval='1m')
    """

    kind: str
    symbol: str | None = None
    interval: str | None = None

    @property
    def name(self) -> str:
        """The channel as printed: ``ticker:BTCUSDT``, ``candles:ETHUSDT:1m``, ``orders``."""
        return ":".join(p for p in (self.kind, self.symbol, self.interval) if p)


def parse_channel(venue: str, text: str) -> TailChannel:
    """Parse a channel as a user types it for ``venue``.

    Raises:
        ChannelError: not one of the venue's forms (:data:`CHANNEL_FORMS`).

    Example:
        >>> parse_channel("agentexchange", "ticker:btcusdt").name
        'ticker:BTCUSDT'
        >>> parse_channel("tastytrade", "quote-alerts").kind
        'quote-alerts'
    """
    forms = CHANNEL_FORMS.get(venue)
    if forms is None:
        raise ChannelError(f"unknown venue {venue!r}; expected one of {', '.join(VENUES)}")
    parts = text.strip().split(":")
    kind = parts[0].lower()
    if venue == "agentexchange":
        if kind == "ticker" and len(parts) == 2 and _SYMBOL.fullmatch(parts[1]):
            sym = "all" if parts[1].lower() == "all" else parts[1].upper()
            return TailChannel("ticker", sym)
        if (
            kind == "candles"
            and len(parts) == 3
            and _SYMBOL.fullmatch(parts[1])
            and parts[1].lower() != "all"
            and parts[2] in INTERVAL_MS
        ):
            return TailChannel("candles", parts[1].upper(), parts[2])
    if len(parts) == 1 and kind in forms:
        return TailChannel(kind)
    raise ChannelError(f"invalid channel {text!r} for {venue}; valid forms: {', '.join(forms)}")


@dataclass(frozen=True, kw_only=True)
class TailOptions:
    """What ``agentstream tail`` was asked for (the command line, resolved)."""

    venue: str
    channels: tuple[TailChannel, ...]
    url: str
    credential: str
    account: str | None = None
    json: bool = False
    count: int | None = None
    seconds: float | None = None
    verbose: bool = False


def resolve_options(
    venue: str,
    channels: list[str],
    *,
    url: str | None,
    credential: str | None,
    account: str | None,
    json: bool = False,
    count: int | None = None,
    seconds: float | None = None,
    verbose: bool = False,
    environ: dict[str, str] | None = None,
) -> TailOptions:
    """Fill in what the command line left out: the venue's environment variables, then
    the sim's defaults (127.0.0.1:8000, its demo key, token and account).

    Raises:
        ChannelError: a channel the venue does not take.
    """
    env = os.environ if environ is None else environ
    parsed = tuple(dict.fromkeys(parse_channel(venue, c) for c in channels))
    return TailOptions(
        venue=venue,
        channels=parsed,
        url=url or next(filter(None, map(env.get, URL_ENV[venue])), DEFAULT_URLS[venue]),
        credential=credential or env.get(CREDENTIAL_ENV[venue]) or DEMO_CREDENTIALS[venue],
        account=account or env.get(ACCOUNT_ENV.get(venue, "")) or DEMO_ACCOUNTS.get(venue),
        json=json,
        count=count,
        seconds=seconds,
        verbose=verbose,
    )


# -- printing ---------------------------------------------------------------------------

_encode = msgspec.json.Encoder(decimal_format="string").encode


def _opt(value: object, prefix: str = "") -> str:
    return f" {prefix}{value}" if value is not None and value != "" else ""


def _ticker(t: Ticker) -> str:
    qty = _opt(t.quantity, "x ")
    return f"{t.symbol:<10} {t.price}{qty}"


def _candle(c: Candle) -> str:
    return (
        f"{c.symbol:<10} {c.open_time:%Y-%m-%d %H:%M} O={c.open} H={c.high} L={c.low} "
        f"C={c.close} V={c.volume}"
    )


def _order(o: OrderUpdate) -> str:
    fill = f" {o.executed_quantity} @ {o.executed_price}" if o.executed_quantity else ""
    price = _opt(o.price, "@ ") if o.type != "market" else ""
    return f"{o.order_id} {o.symbol} {o.side} {o.quantity} {o.type}{price}: {o.status}{fill}"


def _portfolio(p: Portfolio) -> str:
    roi = "" if p.roi_pct is None else f"  ROI {p.roi_pct}%"
    return (
        f"equity {p.total_equity}  cash {p.available_cash}  unrealized {p.unrealized_pnl}"
        f"  realized {p.realized_pnl}{roi}"
    )


def _tradier_order(o: TradierOrder) -> str:
    what = " ".join(str(x) for x in (o.side, o.quantity, o.symbol, o.type) if x is not None)
    fill = f" filled {o.exec_quantity} @ {o.avg_fill_price}" if o.exec_quantity else ""
    return f"{o.id} {what}: {o.status}{fill}{_opt(o.account, 'account ')}"


def _tasty_order(o: PlacedOrder) -> str:
    legs = ", ".join(f"{leg.action} {leg.quantity} {leg.symbol}" for leg in o.legs)
    price = _opt(o.price, "@ ")
    return f"{o.id} {legs} {o.order_type}{price}: {o.status} (account {o.account_number})"


def _tasty_balance(b: AccountBalance) -> str:
    return (
        f"{b.account_number} cash {b.cash_balance}  net liq {b.net_liquidating_value}"
        f"  buying power {b.equity_buying_power}"
    )


def _tasty_position(p: CurrentPosition) -> str:
    return (
        f"{p.account_number} {p.symbol} {p.quantity_direction} {p.quantity}"
        f" avg {p.average_open_price}{_opt(p.mark_price, 'mark ')}"
    )


def _quote_alert(a: QuoteAlert) -> str:
    return f"{a.symbol} {a.field} {a.operator} {a.threshold}{_opt(a.triggered_at, 'at ')}"


def _watchlist(w: Watchlist) -> str:
    return f"{w.name}: {' '.join(e.symbol for e in w.watchlist_entries)}"


class _Printer:
    """Writes events (stdout) and connection news (stderr); counts; asks to stop."""

    def __init__(self, opts: TailOptions, out: TextIO, err: TextIO) -> None:
        self.opts = opts
        self.out = out
        self.err = err
        self.events = 0
        self.gaps = 0
        self.stop = anyio.Event()
        self.broken_pipe = False
        self._secret = opts.credential
        self._masked = mask_secret(opts.credential)
        self._connected_once = False

    @staticmethod
    def _clock() -> str:
        return datetime.now().strftime("%H:%M:%S.%f")[:-3]

    def _clean(self, text: str) -> str:
        # The client masks credentials itself; this is a second line of defence.
        return text.replace(self._secret, self._masked) if self._secret else text

    def event(self, channel: str, event: Any, text: str, recovered: bool = False) -> None:
        if self.stop.is_set():
            return  # stopping (--count reached, Ctrl-C): print nothing more
        if self.opts.json:
            line = _encode(
                {
                    "received_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "channel": channel,
                    "data": event,
                }
            ).decode()
        else:
            mark = "  (recovered over REST after a gap)" if recovered else ""
            line = f"{self._clock()}  {channel:<20} {text}{mark}"
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except BrokenPipeError:  # `agentstream tail ... | head`: the reader is gone
            self.broken_pipe = True
            self.stop.set()
            return
        self.events += 1
        if self.opts.count is not None and self.events >= self.opts.count:
            self.stop.set()

    def news(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.err.write(f"{self._clock()}  -- {self._clean(text)}\n")
            self.err.flush()

    # hooks
    def connected(self) -> None:
        if self._connected_once:
            self.news("reconnected: every channel subscribed again")
        else:
            self._connected_once = True
            names = " ".join(c.name for c in self.opts.channels)
            url = mask_url(self.opts.url)
            self.news(f"connected to {self.opts.venue} at {url}: {names}")

    def disconnected(self, reason: str) -> None:
        self.news(f"disconnected ({reason}); reconnecting")

    def gap(self, g: Gap) -> None:
        self.gaps += 1
        missed = f", {g.missing_candle_count} candle(s) missed" if g.missing_candle_count else ""
        self.news(
            f"gap on {g.channel}: down {g.duration.total_seconds():.1f} s ({g.reason}){missed}"
        )

    def error(self, exc: BaseException, context: dict[str, Any]) -> None:
        if context.get("stage") == "connect":
            self.news(f"cannot connect: {exc}; retrying")
        else:
            self.news(f"error: {exc}")


def _agentexchange(opts: TailOptions, p: _Printer, logger: logging.Logger) -> StreamClient:
    from agentstream.client import AgentExchangeWS

    ws = AgentExchangeWS(opts.credential, opts.url, logger=logger)
    for ch in opts.channels:
        name = ch.name
        if ch.kind == "ticker":

            def on_ticker(t: Ticker, name: str = name) -> None:
                p.event(name, t, _ticker(t))

            ws.on_ticker(ch.symbol or "all", on_ticker)
        elif ch.kind == "candles":

            def on_candle(c: Candle, name: str = name) -> None:
                p.event(name, c, _candle(c))

            ws.on_candles(ch.symbol or "", ch.interval or "", on_candle)
        elif ch.kind == "orders":

            def on_order(o: OrderUpdate) -> None:
                p.event("orders", o, _order(o), o.recovered)

            ws.on_order_update(on_order)
        else:

            def on_portfolio(x: Portfolio) -> None:
                p.event("portfolio", x, _portfolio(x))

            ws.on_portfolio(on_portfolio)
    return ws


def _tradier(opts: TailOptions, p: _Printer, logger: logging.Logger) -> StreamClient:
    from agentstream.tradier import TradierStream

    ws = TradierStream(opts.credential, base_url=opts.url, logger=logger)

    def on_order(o: TradierOrder) -> None:
        if opts.account is None or o.account in (None, opts.account):
            p.event("orders", o, _tradier_order(o), o.recovered)

    ws.on_order_update(on_order)
    return ws


def _tastytrade(opts: TailOptions, p: _Printer, logger: logging.Logger) -> StreamClient:
    from agentstream.tastytrade import TastytradeStream

    accounts = [opts.account] if opts.account else []
    ws = TastytradeStream(opts.credential, accounts, url=opts.url, logger=logger)
    kinds = {c.kind for c in opts.channels}
    if "orders" in kinds:

        def on_order(o: PlacedOrder) -> None:
            p.event("orders", o, _tasty_order(o), o.recovered)

        ws.on_order_update(on_order)
    if "balances" in kinds:

        def on_balance(b: AccountBalance) -> None:
            p.event("balances", b, _tasty_balance(b))

        ws.on_balance(on_balance)
    if "positions" in kinds:

        def on_position(x: CurrentPosition) -> None:
            p.event("positions", x, _tasty_position(x))

        ws.on_position(on_position)
    if "quote-alerts" in kinds:

        def on_alert(a: QuoteAlert) -> None:
            p.event("quote-alerts", a, _quote_alert(a))

        ws.on_quote_alert(on_alert)
    if "watchlists" in kinds:

        def on_watchlist(w: Watchlist) -> None:
            p.event("watchlists", w, _watchlist(w))

        ws.on_watchlist(on_watchlist)
    return ws


_BUILDERS: dict[str, Callable[[TailOptions, _Printer, logging.Logger], StreamClient]] = {
    "agentexchange": _agentexchange,
    "tradier": _tradier,
    "tastytrade": _tastytrade,
}


async def run_tail(
    opts: TailOptions, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Print ``opts.channels`` until ``--count`` events, ``--seconds`` or Ctrl-C.

    Returns the exit status: 0 when it stopped by itself, 130 after Ctrl-C (one line on
    stderr, no traceback), 1 when the venue refused the credentials or the client gave up.

    Example:
        >>> opts = resolve_options("agentexchange", ["ticker:BTCUSDT"], url=None,
        ...                        credential=None, account=None, count=5)
        >>> asyncio.run(run_tail(opts))
        0
    """
    printer = _Printer(opts, out or sys.stdout, err or sys.stderr)
    # The tail prints its own line for each disconnect, gap and error; the client's
    # warnings would say it twice (-v shows them, at DEBUG and up).
    logger = logging.getLogger("agentstream.tail")
    quiet = logging.getLogger("agentstream")  # the connection supervisor's warnings
    levels = logger.level, quiet.level
    if not opts.verbose:
        logger.setLevel(logging.CRITICAL)
        quiet.setLevel(logging.CRITICAL)
    try:
        return await _tail(opts, printer, logger)
    finally:
        logger.setLevel(levels[0])
        quiet.setLevel(levels[1])


async def _tail(opts: TailOptions, printer: _Printer, logger: logging.Logger) -> int:
    ws = _BUILDERS[opts.venue](opts, printer, logger)
    ws.on_connect(printer.connected)
    ws.on_disconnect(printer.disconnected)
    ws.on_gap(printer.gap)
    ws.on_error(printer.error)

    interrupted = False

    loop = asyncio.get_running_loop()

    def on_sigint() -> None:
        nonlocal interrupted
        interrupted = True
        printer.stop.set()
        # A second Ctrl-C interrupts at once, should stopping ever hang.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, on_sigint)

    async def stopper() -> None:
        with anyio.move_on_after(math.inf if opts.seconds is None else opts.seconds):
            await printer.stop.wait()
        printer.stop.set()
        await ws.disconnect()

    status = 0
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stopper)
            try:
                await ws.connect()
            except AuthenticationError as exc:
                printer.news(
                    f"the venue refused the credentials ({mask_secret(opts.credential)}): {exc}"
                )
                status = 1
            except AgentStreamError as exc:
                printer.news(f"stopped: {exc}")
                status = 1
            finally:
                tg.cancel_scope.cancel()
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)
    if printer.broken_pipe:
        # Quietly: nobody reads stdout any more, and Python would complain at exit.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    stats = ws.stats
    summary = f"{printer.events} events, {stats.reconnects} reconnects, {printer.gaps} gaps"
    if interrupted:
        printer.news(f"Ctrl-C: stopped after {summary}")
        return 130
    if status == 0:
        printer.news(f"stopped after {summary}")
    return status
