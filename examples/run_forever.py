# Seed page: "Connection Lifecycle: ws.run_forever()".
import threading
from agentstream import AgentExchangeWS

ws = AgentExchangeWS(api_key="ak_live_...")

@ws.on_ticker("BTCUSDT")
def on_btc(data):           # sync handlers are also supported
    print(f"BTC: ${data['price']}")

# Start in a daemon thread — non-blocking
thread = threading.Thread(target=ws.run_forever, daemon=True)
thread.start()

# Your main code continues here
# The WS client runs in the background until the process exits
