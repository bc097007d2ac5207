# Seed page: "Then in your agent setup:" (uses price_stream.py beside it). Run it with
#
#   $ agentstream serve            # in another terminal: the simulated exchange
#   $ AGENTEXCHANGE_API_KEY=ak_demo_agentstream python examples/agent_setup.py
#
# It prints the cached BTC price once and exits. The page's snippet reads the cache
# "later"; right after start_stream() the cache is still empty (the stream has not even
# connected), so the two lines marked "not on the page" stand for that "later".
from price_stream import start_stream, get_cached_price

# Start the feed before the agent loop
start_stream()
import time; later = time.monotonic() + 10  # not on the page: its "later" (at most 10 s)
while get_cached_price("BTCUSDT") is None and time.monotonic() < later: time.sleep(0.05)  # not on the page

# Later, in any tool function:
price = get_cached_price("BTCUSDT")
if price:
    print(f"BTC (from cache): ${price}")
