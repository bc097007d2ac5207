# Seed page: "Connection Lifecycle: ws.run_forever()". Run it with
#
#   $ agentstream serve            # in another terminal: the simulated exchange
#   $ python -i examples/run_forever.py
#
# The page's point: run_forever() in a daemon thread does not block. So as a plain
# script (`python examples/run_forever.py`) it reaches its last line at once and exits,
# the thread with it, printing nothing. `python -i` keeps the interpreter (your "main
# code") alive: BTC prices print in the background until you leave with Ctrl-D.
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
