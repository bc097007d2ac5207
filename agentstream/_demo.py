"""``agentstream demo``: the simulated exchange and an agentstream client printing its stream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import anyio

from agentstream.client import AgentExchangeWS
from agentstream.errors import AgentStreamError

# Imported at run time on purpose: agentstream reads handler annotations to pick typed payloads.
from agentstream.models import Candle, Gap, OrderUpdate, Portfolio, Ticker  # noqa: TC001
from agentstream.sim import DEMO_API_KEY, SimConfig, SimExchange

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


async def _place_demo_orders(ws: AgentExchangeWS, sim: SimExchange) -> None:
    """A few orders through the REST client, so the order and portfolio channels have
    news; then one outage, to show the reconnect, the gap and the recovered orders."""
    rest = ws.rest
    try:
        await asyncio.sleep(1.0)
        await rest.place_order("BTCUSDT", "buy", "0.05")
        await asyncio.sleep(1.5)
        await rest.place_order("SOLUSDT", "buy", "10")
        eth = sim.market.pairs["ETHUSDT"].price_decimal()
        await asyncio.sleep(1.0)
        far = await rest.place_order(
            "ETHUSDT", "buy", "0.1", type="limit", price=(eth / 2).quantize(eth)
        )
        await asyncio.sleep(1.0)
        # An outage: the connection drops and stays down for a moment, while an order
        # fills and another is cancelled. Nothing the stream sends reaches us meanwhile;
        # recovery reads the orders over REST once we are back.
        print("  -- the demo drops the connection and keeps it down for a second --")
        sim.refuse_handshakes(503, seconds=1.0)
        await sim.drop_connections()
        # The REST API still works: a sale, and the cancel of the resting order.
        await rest.place_order("BTCUSDT", "sell", "0.02")
        await rest.cancel_order(far.order_id)
        await asyncio.sleep(3.0)
        await rest.place_order("ETHUSDT", "buy", "0.2")
    except AgentStreamError as exc:
        print(f"  (the demo's order failed: {exc})")


def _build_client(url: str) -> AgentExchangeWS:
    ws = AgentExchangeWS(api_key=DEMO_API_KEY, base_url=url)
    last_print: dict[str, float] = {}

    def on_price(t: Ticker) -> None:
        now = time.monotonic()
        if now - last_print.get(t.symbol, 0.0) >= 1.0:  # one line per symbol per second
            last_print[t.symbol] = now
            print(f"  price   {t.symbol:<8} {t.price:>12}")

    def on_candle(c: Candle) -> None:
        print(
            f"  candle  {c.symbol:<8} {c.interval} {c.open_time:%H:%M} "
            f"O={c.open} H={c.high} L={c.low} C={c.close}"
        )

    def on_order(o: OrderUpdate) -> None:
        extra = f" @ {o.executed_price}" if o.executed_price is not None else ""
        how = "  (recovered over REST after the outage)" if o.recovered else ""
        print(f"  order   {o.symbol:<8} {o.side} {o.quantity} {o.type}: {o.status}{extra}{how}")

    def on_portfolio(p: Portfolio) -> None:
        print(f"  equity  {p.total_equity} USDT  cash {p.available_cash}  ROI {p.roi_pct}%")

    for sym in _SYMBOLS:
        ws.on_ticker(sym, on_price)
        ws.on_candles(sym, "1m", on_candle)
    ws.on_order_update(on_order)
    ws.on_portfolio(on_portfolio)
    ws.on_disconnect(lambda reason: print(f"  disconnected: {reason}; reconnecting"))
    ws.on_reconnect(lambda _ws: print("  reconnected: every channel subscribed again"))

    def on_gap(g: Gap) -> None:
        print(f"  gap     {g.channel} was down {g.duration.total_seconds():.1f} s ({g.reason})")

    ws.on_gap(on_gap)
    return ws


async def run_demo(
    config: SimConfig,
    *,
    seconds: float | None = None,
    stop_signal: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Start the sim and print prices, closed candles, orders and portfolio until stopped."""
    async with SimExchange(config) as sim:
        print(f"simulated exchange on {sim.url} (1 simulated minute per {60 / config.speed:g} s)")
        print("Ctrl-C to stop\n", flush=True)
        ws = _build_client(sim.url)

        async def stopper() -> None:
            with contextlib.suppress(Exception):
                if seconds is not None and stop_signal is not None:
                    with anyio.move_on_after(seconds):
                        await stop_signal()
                elif seconds is not None:
                    await anyio.sleep(seconds)
                elif stop_signal is not None:
                    await stop_signal()
            await ws.disconnect()

        async with anyio.create_task_group() as tg:
            tg.start_soon(_place_demo_orders, ws, sim)
            tg.start_soon(stopper)
            await ws.connect()
            tg.cancel_scope.cancel()
    print(f"\nstopped: {ws.stats.messages_total} messages, {ws.stats.reconnects} reconnects")
