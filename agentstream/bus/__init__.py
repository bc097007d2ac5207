"""Fan-out past one process: events of a venue stream, through Redis Streams.

``agentstream bridge`` (or :class:`Bridge`) runs one supervised venue client and appends
every event to a Redis stream per channel; :class:`RedisBus` consumers read them in
consumer groups with the same decorators as a venue client. Needs the ``redis`` extra
(``pip install agentstream[redis]``).

The entry format is in :mod:`agentstream.bus._codec`; :mod:`agentstream.bus.testing`
starts a throwaway Redis server for tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentstream.bus._codec import SCHEMA_VERSION, Entry, decode_entry, encode_entry, stream_key
from agentstream.bus._consumer import BusStats, DataLossReported, DeadLettered
from agentstream.bus.bridge import Bridge, BridgeStats

if TYPE_CHECKING:
    from agentstream.bus.redis import RedisBus

__all__ = [
    "SCHEMA_VERSION",
    "Bridge",
    "BridgeStats",
    "BusStats",
    "DataLossReported",
    "DeadLettered",
    "Entry",
    "RedisBus",
    "decode_entry",
    "encode_entry",
    "stream_key",
]


def __getattr__(name: str) -> Any:
    # RedisBus is imported on first use: ``import agentstream.bus`` works without the
    # redis extra (the entry format needs only msgspec).
    if name == "RedisBus":
        from agentstream.bus.redis import RedisBus

        return RedisBus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
