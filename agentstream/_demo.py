"""``agentstream demo``: the simulated exchange and an agentstream client printing its stream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio

from agentstream.client import AgentExchangeWS

# Imported at run time on purpose: agentstream reads handler annotations to pick typed payloads.
from agentstream.models import Candle, OrderUpdate, Portfolio, Ticker  # noqa: TC001
from agentstream.sim import DEMO_API_KEY, SimConfig, SimExchange

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


async def _place_demo_orders(sim: SimExchange, session: aiohttp.ClientSession) -> None:
    """A few orders through the sim's REST API, so the order and portfolio channels have news."""
    url = f"{sim.http_url}/api/v1/trade/order"
    headers = {"X-API-Key": DEMO_API_KEY}

    async def place(**order: str) -> dict[str, Any]:
        async with session.post(url, json=order, headers=headers) as resp:
            body: dict[str, Any] = await resp.json()
            return body

    await asyncio.sleep(1.0)
    await place(symbol="BTCUSDT", side="buy", type="market", quantity="0.05")
    await asyncio.sleep(1.5)
    await place(symbol="SOLUSDT", side="buy", type="market", quantity="10")
    eth = sim.market.pairs["ETHUSDT"].price_decimal()
    await asyncio.sleep(1.5)
    await place(
        symbol="ETHUSDT",
        side="buy",
        type="limit",
        quantity="0.5",
        price=str((eth * Decimal("0.999")).quantize(eth)),
    )
    await asyncio.sleep(1.5)
    far = await place(
        symbol="ETHUSDT",
        side="buy",
        type="limit",
        quantity="0.1",
        price=str((eth / 2).quantize(eth)),
    )
    await asyncio.sleep(2.0)
    async with session.delete(f"{url}/{far['order_id']}", headers=headers):
        pass
    await asyncio.sleep(2.0)
    await place(symbol="BTCUSDT", side="sell", type="market", quantity="0.02")


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
        print(f"  order   {o.symbol:<8} {o.side} {o.quantity} {o.type}: {o.status}{extra}")

    def on_portfolio(p: Portfolio) -> None:
        print(f"  equity  {p.total_equity} USDT  cash {p.available_cash}  ROI {p.roi_pct}%")

    for sym in _SYMBOLS:
        ws.on_ticker(sym, on_price)
        ws.on_candles(sym, "1m", on_candle)
    ws.on_order_update(on_order)
    ws.on_portfolio(on_portfolio)
    ws.on_disconnect(lambda reason: print(f"  (disconnected: {reason}; reconnecting)"))
    return ws


async def run_demo(
    config: SimConfig,
    *,
    seconds: float | None = None,
    stop_signal: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Start the sim and print prices, closed candles, orders and portfolio until stopped."""
    async with SimExchange(config) as sim, aiohttp.ClientSession() as session:
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
            tg.start_soon(_place_demo_orders, sim, session)
            tg.start_soon(stopper)
            await ws.connect()
            tg.cancel_scope.cancel()
    print(f"\nstopped: {ws.stats.messages_total} messages, {ws.stats.reconnects} reconnects")
