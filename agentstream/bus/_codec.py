"""How an event is written to a Redis stream entry, and read back (schema version 1).

One entry per event, in the stream ``{prefix}:{venue}:{channel}`` (for example
``agentstream:agentexchange:ticker:BTCUSDT``). Its fields, all bytes:

* ``v``: the schema version (``b"1"``); a reader refuses versions it does not know.
* ``t``: what the entry is: the channel kind's name (``ticker``, ``candles``, ``orders``,
  ...) for an event, ``gap`` for a gap report of the upstream stream, or ``loss`` for
  the bridge's report of events it had to drop or could not write (both in the stream
  ``{prefix}:{venue}:gaps``).
* ``c``: the channel key the event belongs to (``ticker:BTCUSDT``, ``orders``).
* ``r``: when the bridge received the event, in nanoseconds since the epoch (for
  end-to-end latency and for consumers that start "from a time").
* ``d``: the payload, encoded once with msgspec's MessagePack: the dict a dict handler of
  the venue client receives (for ``gap``, the :class:`~agentstream.models.Gap` as a dict;
  for ``loss``, a dict: ``reason``, ``channels`` (count per channel key) and details).

Fields a reader does not know are ignored, so later versions of the bridge may add some
without a new schema version.

Example:
    >>> fields = encode_entry("ticker", "ticker:BTCUSDT", {"price": "1"}, received_ns=5)
    >>> decode_entry(fields)
    Entry(type='ticker', channel='ticker:BTCUSDT', received_ns=5, payload={'price': '1'})
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from agentstream.errors import DecodeError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "GAP",
    "LOSS",
    "SCHEMA_VERSION",
    "Entry",
    "decode_entry",
    "encode_entry",
    "stream_key",
]

#: The schema version this module writes and reads.
SCHEMA_VERSION = 1
#: The ``t`` of a gap entry.
GAP = "gap"
#: The ``t`` of a loss report: events the bridge dropped or could not write.
LOSS = "loss"

_V = str(SCHEMA_VERSION).encode()
_encode = msgspec.msgpack.Encoder(decimal_format="string").encode
_decode = msgspec.msgpack.Decoder().decode


def stream_key(prefix: str, venue: str, channel: str) -> str:
    """The stream holding ``channel``'s events of ``venue``.

    Example:
        >>> stream_key("agentstream", "tradier", "orders")
        'agentstream:tradier:orders'
    """
    return f"{prefix}:{venue}:{channel}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One decoded stream entry."""

    #: The channel kind's name, or ``gap``.
    type: str
    #: The channel key (``ticker:BTCUSDT``).
    channel: str
    #: When the bridge received it, ns since the epoch.
    received_ns: int
    #: The event as a dict handler gets it (or the gap report as a dict).
    payload: Any


def encode_entry(type_: str, channel: str, payload: Any, *, received_ns: int) -> dict[Any, Any]:
    """The fields of the entry for one event (``payload`` encoded once, as MessagePack).

    Typed ``dict[Any, Any]`` because redis-py's ``xadd`` takes only its own union types;
    the keys are ``str`` and the values ``bytes``.

    Raises:
        TypeError: the payload holds something MessagePack cannot carry.
    """
    return {
        "v": _V,
        "t": type_.encode(),
        "c": channel.encode(),
        "r": str(received_ns).encode(),
        "d": _encode(payload),
    }


def _text(fields: Mapping[Any, Any], name: str) -> str:
    value = fields.get(name.encode(), fields.get(name))
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    raise DecodeError(f"stream entry without the {name!r} field")


def decode_entry(fields: Mapping[Any, Any]) -> Entry:
    """Read an entry's fields (bytes or str keys, as redis-py returns them).

    Raises:
        DecodeError: an unknown schema version, a missing field or a payload that is not
            MessagePack; a consumer counts and dead-letters such an entry.
    """
    version = _text(fields, "v")
    if version != str(SCHEMA_VERSION):
        raise DecodeError(f"stream entry of schema version {version!r}; this reader knows 1")
    try:
        received_ns = int(_text(fields, "r"))
    except ValueError:
        raise DecodeError("stream entry with a bad 'r' (receive time)") from None
    raw = fields.get(b"d", fields.get("d"))
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise DecodeError("stream entry without the 'd' (payload) field")
    try:
        payload = _decode(raw)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"stream entry with a bad payload: {exc}") from None
    return Entry(_text(fields, "t"), _text(fields, "c"), received_ns, payload)
