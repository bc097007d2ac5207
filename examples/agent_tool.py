"""An agent tool: a function an LLM agent calls to check a price and buy, fed by the stream.

    $ agentstream serve              # in another terminal: the simulated exchange
    $ python examples/agent_tool.py

The stream keeps a price cache current, so the tool answers from memory instead of a
REST round trip per look-up. `get_price_and_buy(symbol, max_qty, max_price=None)` reads
the cached price, refuses when there is none yet or it is above the agent's limit, and
otherwise buys `max_qty` at market with `agentstream.rest.AgentExchangeREST`. It returns
a plain dict (JSON for the model), refusals and errors included: an agent reads the
answer and decides, it does not catch exceptions. `TOOL_SPEC` describes the tool for
function calling (the JSON schema OpenAI's and Anthropic's APIs take).

Run as a script it plays the agent: it waits for the first BTC price, calls the tool
twice (a buy, then one its price limit refuses), prints both answers as JSON lines and
exits. Environment: AGENTEXCHANGE_API_KEY (default: the sim's demo key,
ak_demo_agentstream) and AGENTEXCHANGE_WS_URL (default ws://127.0.0.1:8000).
"""

import asyncio
import json
import os
from decimal import Decimal, InvalidOperation
from typing import Any

from agentstream import AgentExchangeWS
from agentstream.errors import AgentStreamError
from agentstream.models import Ticker
from agentstream.rest import AgentExchangeREST

API_KEY = os.environ.get("AGENTEXCHANGE_API_KEY", "ak_demo_agentstream")
URL = os.environ.get("AGENTEXCHANGE_WS_URL", "ws://127.0.0.1:8000")
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")

ws = AgentExchangeWS(api_key=API_KEY, base_url=URL)
rest = AgentExchangeREST(API_KEY, URL)
#: The latest trade price of each symbol, written by the stream, read by the tool.
prices: dict[str, Decimal] = {}


def on_price(t: Ticker) -> None:
    prices[t.symbol] = t.price


for symbol in SYMBOLS:
    ws.on_ticker(symbol, on_price)

TOOL_SPEC: dict[str, Any] = {
    "name": "get_price_and_buy",
    "description": (
        "Buy a crypto pair at market if its live price is known and not above max_price. "
        "Returns the cached price and the order, or why nothing was bought."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "symbol": {"type": "string", "description": "pair, e.g. BTCUSDT"},
            "max_qty": {"type": "string", "description": "quantity to buy, e.g. '0.01'"},
            "max_price": {"type": "string", "description": "refuse above this price"},
        },
        "required": ["symbol", "max_qty"],
    },
}


async def get_price_and_buy(
    symbol: str, max_qty: str, max_price: str | None = None
) -> dict[str, Any]:
    """The tool: buy ``max_qty`` of ``symbol`` at market unless its cached price is
    unknown or above ``max_price``. Never raises: the answer says what happened."""
    symbol = symbol.strip().upper()
    try:
        qty = Decimal(max_qty)
        limit = None if max_price is None else Decimal(max_price)
    except InvalidOperation:
        return {"ok": False, "error": "max_qty and max_price must be decimal numbers"}
    if not qty > 0:
        return {"ok": False, "error": "max_qty must be above 0"}
    price = prices.get(symbol)
    if price is None:
        known = ", ".join(sorted(prices)) or "none yet"
        return {"ok": False, "error": f"no live price for {symbol} (streaming: {known})"}
    if limit is not None and price > limit:
        return {
            "ok": False,
            "error": f"{symbol} is at {price}, above the limit {limit}: nothing bought",
            "price": str(price),
        }
    try:
        order = await rest.place_order(symbol, "buy", qty)
    except AgentStreamError as exc:  # refused (funds, symbol), or the API is unreachable
        return {"ok": False, "error": str(exc), "price": str(price)}
    return {
        "ok": True,
        "symbol": symbol,
        "cached_price": str(price),
        "order_id": order.order_id,
        "status": order.status,
        "executed_quantity": str(order.executed_quantity or 0),
        "executed_price": None if order.executed_price is None else str(order.executed_price),
    }


async def main() -> None:
    stream = asyncio.create_task(ws.connect())
    try:
        async with asyncio.timeout(15):  # the price cache fills once the stream is up
            while "BTCUSDT" not in prices:
                await asyncio.sleep(0.05)
        # What an agent's tool calls would be: one buy, one its own limit refuses.
        print(json.dumps(await get_price_and_buy("BTCUSDT", "0.01")), flush=True)
        print(json.dumps(await get_price_and_buy("btcusdt", "0.01", max_price="1")), flush=True)
    except TimeoutError:
        print(f"no BTC price within 15 s: is `agentstream serve` running at {URL}?")
    finally:
        await ws.disconnect()
        await stream
        await rest.aclose()


if __name__ == "__main__":
    asyncio.run(main())
