# Seed page: "Connection Lifecycle: await ws.connect()".
import asyncio
from agentstream import AgentExchangeWS

ws = AgentExchangeWS(api_key="ak_live_...")

@ws.on_ticker("BTCUSDT")
async def on_btc(data):
    print(f"BTC: ${data['price']}")

asyncio.run(ws.connect())
