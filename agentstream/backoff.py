"""Reconnect delays: exponential backoff with jitter, as a pure, testable object.

The defaults follow the platform: 1 s, 2 s, 4 s, ... capped at 60 s, each plus up to 10 %
random jitter so a fleet of bots does not reconnect in lockstep. They can be changed per
client or through the environment:

- ``AGENTSTREAM_BACKOFF_INITIAL`` (seconds, default 1)
- ``AGENTSTREAM_BACKOFF_MAX`` (seconds, default 60)
- ``AGENTSTREAM_BACKOFF_FACTOR`` (default 2)
- ``AGENTSTREAM_BACKOFF_JITTER`` (fraction added at most, default 0.1)
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field

from agentstream.errors import ConfigurationError

__all__ = ["Backoff"]


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"environment variable {name}={raw!r} is not a number") from None


@dataclass
class Backoff:
    """Delays before successive reconnect attempts.

    ``next()`` gives the delay before the next attempt and advances; ``reset()`` starts
    over (called once a connection has proven healthy).

    Example:
        >>> b = Backoff(initial=1, maximum=60, jitter=0)
        >>> [b.next() for _ in range(8)]
        [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    """

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0
    jitter: float = 0.1
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempts: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        values = (self.initial, self.maximum, self.factor, self.jitter)
        if not all(math.isfinite(v) for v in values):
            raise ConfigurationError(f"backoff settings must be finite numbers, got {values}")
        if self.initial < 0 or self.maximum < self.initial:
            raise ConfigurationError("backoff needs 0 <= initial <= maximum")
        if self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ConfigurationError("backoff needs factor >= 1 and 0 <= jitter <= 1")

    @classmethod
    def from_env(
        cls,
        *,
        initial: float | None = None,
        maximum: float | None = None,
        factor: float | None = None,
        jitter: float | None = None,
    ) -> Backoff:
        """Explicit arguments win, then ``AGENTSTREAM_BACKOFF_*`` variables, then defaults.

        Example:
            >>> Backoff.from_env(initial=0.01, maximum=0.1).initial
            0.01
        """
        return cls(
            initial=initial
            if initial is not None
            else _env_float("AGENTSTREAM_BACKOFF_INITIAL", 1.0),
            maximum=maximum if maximum is not None else _env_float("AGENTSTREAM_BACKOFF_MAX", 60.0),
            factor=factor if factor is not None else _env_float("AGENTSTREAM_BACKOFF_FACTOR", 2.0),
            jitter=jitter if jitter is not None else _env_float("AGENTSTREAM_BACKOFF_JITTER", 0.1),
        )

    def base(self, attempt: int) -> float:
        """The delay before attempt ``attempt`` (0-based), without jitter."""
        return float(min(self.maximum, self.initial * self.factor**attempt))

    def next(self) -> float:
        """The delay before the next attempt, jitter included; advances the schedule."""
        base = self.base(min(self.attempts, 64))
        self.attempts += 1
        return base + base * self.jitter * self.rng.random()

    def reset(self) -> None:
        """Start over from ``initial``."""
        self.attempts = 0
