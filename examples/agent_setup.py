# Seed page: "Then in your agent setup:" (uses price_stream.py beside it). Run it with
#
#   $ agentstream serve            # in another terminal: the simulated exchange
#   $ AGENTEXCHANGE_API_KEY=ak_demo_agentstream python -i examples/agent_setup.py
#   >>> get_cached_price("BTCUSDT")     # a moment later: "Later, in any tool function"
#   '64521.30'
#
# Run as a plain script it prints nothing, as on the page: it reads the cache right
# after start_stream(), before the stream has even connected. `python -i` keeps the
# feed running and lets you read the cache later, as an agent's tool would;
# examples/agent_tool.py is a whole tool that waits for the first price.
from price_stream import start_stream, get_cached_price

# Start the feed before the agent loop
start_stream()

# Later, in any tool function:
price = get_cached_price("BTCUSDT")
if price:
    print(f"BTC (from cache): ${price}")
