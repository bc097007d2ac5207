"""``agentstream demo``: the simulated exchange and a client printing its live stream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec

from agentstream.sim import DEMO_API_KEY, SimConfig, SimExchange

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


async def _place_demo_orders(sim: SimExchange, session: aiohttp.ClientSession) -> None:
    """A few orders through the REST API, so the order and portfolio channels have news."""
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
        async with session.ws_connect(sim.ws_url()) as ws:
            for sym in _SYMBOLS:
                await ws.send_json({"action": "subscribe", "channel": "ticker", "symbol": sym})
                await ws.send_json(
                    {"action": "subscribe", "channel": "candles", "symbol": sym, "interval": "1m"}
                )
            await ws.send_json({"action": "subscribe", "channel": "orders"})
            await ws.send_json({"action": "subscribe", "channel": "portfolio"})
            orders = asyncio.create_task(_place_demo_orders(sim, session))
            last_print: dict[str, float] = {}

            async def read() -> None:
                async for msg in ws:
                    frame = msgspec.json.decode(msg.data)
                    if frame.get("type") == "ping":
                        await ws.send_json({"type": "pong", "action": "pong"})
                        continue
                    if "type" in frame:
                        continue
                    ch, data = frame.get("channel"), frame.get("data", {})
                    if ch == "ticker":
                        now = time.monotonic()
                        if now - last_print.get(frame["symbol"], 0) >= 1.0:
                            last_print[frame["symbol"]] = now
                            print(f"  price   {frame['symbol']:<8} {data['price']:>12}")
                    elif ch == "candles" and data.get("is_closed"):
                        print(
                            f"  candle  {frame['symbol']:<8} 1m {data['time']} "
                            f"O={data['open']} H={data['high']} L={data['low']} C={data['close']}"
                        )
                    elif ch == "orders":
                        extra = f" @ {data['executed_price']}" if "executed_price" in data else ""
                        print(
                            f"  order   {data['symbol']:<8} {data['side']} {data['quantity']} "
                            f"{data['type']}: {data['status']}{extra}"
                        )
                    elif ch == "portfolio":
                        print(
                            f"  equity  {data['total_equity']} USDT  cash {data['available_cash']}"
                            f"  ROI {data['roi_pct']}%"
                        )

            waiters = [asyncio.create_task(read())]
            if seconds is not None:
                waiters.append(asyncio.create_task(asyncio.sleep(seconds)))
            if stop_signal is not None:
                waiters.append(asyncio.create_task(stop_signal()))  # type: ignore[arg-type]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for t in [*waiters, orders]:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
    print("\nstopped", flush=True)
