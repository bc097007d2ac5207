# Seed page: "Then in your agent setup:" (uses price_stream.py beside it).
from price_stream import start_stream, get_cached_price

# Start the feed before the agent loop
start_stream()

# Later, in any tool function:
price = get_cached_price("BTCUSDT")
if price:
    print(f"BTC (from cache): ${price}")
