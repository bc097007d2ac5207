"""Benchmarks of agentstream (run one with ``python -m bench.<name>``)."""
