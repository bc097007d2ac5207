# Seed page: "Connection Lifecycle: await ws.connect()". Run it with
#
#   $ agentstream serve            # in another terminal: the simulated exchange
#   $ python examples/connect.py
#
# It prints BTC prices until Ctrl-C. The page's placeholder key "ak_live_..." is the
# simulated exchange's demo account.
import asyncio
from agentstream import AgentExchangeWS

ws = AgentExchangeWS(api_key="ak_live_...")

@ws.on_ticker("BTCUSDT")
async def on_btc(data):
    print(f"BTC: ${data['price']}")

asyncio.run(ws.connect())
