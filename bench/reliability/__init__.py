"""Reliability figures of agentstream's client, measured against the simulated exchange.

``python -m bench.reliability`` runs them all and prints one line per figure; see
docs/reliability.md for what each one means and the results.
"""

from __future__ import annotations

from bench.reliability.common import Figure, Options

__all__ = ["Figure", "Options"]
