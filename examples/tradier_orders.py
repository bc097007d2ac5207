"""Tradier order events, against the simulated exchange (`agentstream serve`) by default.

    $ agentstream serve              # in another terminal (or point TRADIER_BASE_URL
                                     # and TRADIER_TOKEN at Tradier's sandbox)
    $ python examples/tradier_orders.py

It places one market order for 2 AAPL with the stream's REST client (`ws.rest`), prints each event of it
as the stream delivers it (looked up: symbol, side and quantity included), and stops
once the order is filled. Environment: TRADIER_TOKEN (default: the sim's demo token),
TRADIER_ACCOUNT (default: the sim's demo account), TRADIER_BASE_URL (default
http://127.0.0.1:8000).
"""

import asyncio
import os

from agentstream.tradier import TradierOrder, TradierStream

TOKEN = os.environ.get("TRADIER_TOKEN", "tradier_demo_agentstream")
ACCOUNT = os.environ.get("TRADIER_ACCOUNT", "VA000001")
BASE_URL = os.environ.get("TRADIER_BASE_URL", "http://127.0.0.1:8000")

ws = TradierStream(token=TOKEN, base_url=BASE_URL)


@ws.on_order_update()
async def on_order(o: TradierOrder) -> None:
    print(f"order {o.id}: {o.status:<16} {o.side} {o.quantity} {o.symbol} "
          f"filled {o.exec_quantity} @ {o.avg_fill_price}", flush=True)
    if o.status == "filled":
        await ws.disconnect()


async def place_order() -> None:
    await asyncio.sleep(0.5)  # let the stream connect first
    order_id = await ws.rest.place_order("AAPL", "buy", 2, account=ACCOUNT)
    print("placed: order", order_id, flush=True)


async def main() -> None:
    await asyncio.gather(ws.connect(), place_order())


asyncio.run(main())
