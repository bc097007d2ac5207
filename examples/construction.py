# Seed page: "Import and Construction". Run it with
#
#   $ python examples/construction.py
#
# It builds the client and exits, printing nothing: constructing opens no connection
# (so no server is needed either).
from agentstream import AgentExchangeWS

ws = AgentExchangeWS(
    api_key="ak_live_...",
    base_url="ws://localhost:8000",  # default
)
