"""tastytrade's account streamer, against the simulated exchange (`agentstream serve`).

    $ agentstream serve              # in another terminal: the simulated exchange
    $ python examples/tastytrade_orders.py

As tastytrade's SDK page does it: `async with` the streamer, subscribe the account,
then `listen(PlacedOrder)`. It places one market order for 1 AAPL with the stream's
REST client (`streamer.rest`), prints the order as it moves, and stops once it is filled.
Environment: TASTYTRADE_TOKEN (default: the sim's demo token), TASTYTRADE_ACCOUNT
(default: the sim's demo account), TASTYTRADE_URL (default ws://127.0.0.1:8000/tastytrade)
and TASTYTRADE_API (default http://127.0.0.1:8000).
"""

import asyncio
import os

from agentstream.tastytrade import PlacedOrder, TastytradeStream

TOKEN = os.environ.get("TASTYTRADE_TOKEN", "Bearer tasty_demo_agentstream")
ACCOUNT = os.environ.get("TASTYTRADE_ACCOUNT", "5WT00000")
URL = os.environ.get("TASTYTRADE_URL", "ws://127.0.0.1:8000/tastytrade")
API = os.environ.get("TASTYTRADE_API", "http://127.0.0.1:8000")


async def resubscribe(streamer: TastytradeStream, account: str) -> None:
    print("reconnected; following", account, flush=True)


async def place_order(streamer: TastytradeStream) -> None:
    await asyncio.sleep(0.5)  # let the stream connect first
    order = await streamer.rest.place_order(ACCOUNT, "AAPL", "Buy to Open", 1)
    print("placed: order", order.id, flush=True)


async def main() -> None:
    async with TastytradeStream(TOKEN, url=URL, api_url=API, reconnect_fn=resubscribe,
                                reconnect_args=(ACCOUNT,)) as streamer:
        await streamer.subscribe_accounts([ACCOUNT])
        placing = asyncio.create_task(place_order(streamer))
        async for order in streamer.listen(PlacedOrder):
            print(f"order {order.id}: {order.status:<10} {order.underlying_symbol} "
                  f"{order.legs[0].action} {order.legs[0].quantity}", flush=True)
            if order.status == "Filled":
                break
        await placing


asyncio.run(main())
