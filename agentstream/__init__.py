"""agentstream: real-time trading streams."""
