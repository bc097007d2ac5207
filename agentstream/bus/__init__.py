"""Fan-out past one process: events of a venue stream, through Redis Streams.

``agentstream bridge`` (or :class:`Bridge`) runs one supervised venue client and appends
every event to a Redis stream per channel; :class:`RedisBus` consumers read them in
consumer groups with the same decorators as a venue client. Needs the ``redis`` extra
(``pip install agentstream[redis]``).

The entry format is in :mod:`agentstream.bus._codec`; :mod:`agentstream.bus.testing`
starts a throwaway Redis server for tests.
"""

from __future__ import annotations

from agentstream.bus._codec import SCHEMA_VERSION, Entry, decode_entry, encode_entry, stream_key
from agentstream.bus.bridge import Bridge, BridgeStats

__all__ = [
    "SCHEMA_VERSION",
    "Bridge",
    "BridgeStats",
    "Entry",
    "decode_entry",
    "encode_entry",
    "stream_key",
]
