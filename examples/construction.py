# Seed page: "Import and Construction".
from agentstream import AgentExchangeWS

ws = AgentExchangeWS(
    api_key="ak_live_...",
    base_url="ws://localhost:8000",  # default
)
