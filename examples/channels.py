# Seed page: "Available Channels", every snippet of the section in one file. The two
# setup lines and the last line are not on the page (its snippets assume a `ws`).
# Run it with
#
#   $ agentstream serve            # in another terminal: the simulated exchange
#   $ python examples/channels.py
#
# It prints SOL prices, closed candles, orders and portfolio snapshots until Ctrl-C.
# The page's placeholder key "ak_live_..." is the simulated exchange's demo account.
from agentstream import AgentExchangeWS
ws = AgentExchangeWS(api_key="ak_live_...")

@ws.on_ticker("SOLUSDT")
async def on_sol(data):
    # data contains: symbol, price, timestamp
    print(f"{data['symbol']}: ${data['price']}")

@ws.on_ticker("all")
async def on_any_price(data):
    symbol = data["symbol"]
    price = data["price"]
    # Called for every price update across all pairs

@ws.on_candles("BTCUSDT", "1m")
async def on_btc_1m(data):
    # data contains: symbol, interval, open, high, low, close, volume, open_time
    print(f"1m candle closed at ${data['close']}")

@ws.on_candles("ETHUSDT", "1h")
async def on_eth_1h(data):
    print(f"ETH 1h: O={data['open']} H={data['high']} L={data['low']} C={data['close']}")

@ws.on_order_update()
async def on_order(data):
    # data contains: order_id, symbol, side, status, executed_price, executed_quantity
    print(f"Order {data['order_id']}: {data['status']}")
    if data["status"] == "filled":
        print(f"  Filled at: ${data['executed_price']}")

@ws.on_portfolio()
async def on_portfolio(data):
    # data contains: total_equity, available_cash, unrealized_pnl, roi_pct
    print(f"Equity: ${data['total_equity']}  ROI: {data['roi_pct']}%")

ws.run_forever()
