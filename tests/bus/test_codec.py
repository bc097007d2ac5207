"""The bus's entry format, written to and read back from a real Redis server."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest

from agentstream.bus import SCHEMA_VERSION, decode_entry, encode_entry, stream_key
from agentstream.bus.testing import LocalRedis, find_redis_server
from agentstream.errors import DecodeError
from agentstream.models import Gap

if TYPE_CHECKING:
    import redis.asyncio as aioredis

pytestmark = pytest.mark.anyio


async def test_an_event_round_trips_through_a_stream(redis_client: aioredis.Redis) -> None:
    key = stream_key("agentstream", "agentexchange", "ticker:BTCUSDT")
    event = {"symbol": "BTCUSDT", "price": "64521.30", "volume": Decimal("1.5"), "n": 3}
    await redis_client.xadd(key, encode_entry("ticker", "ticker:BTCUSDT", event, received_ns=42))
    got: Any = await redis_client.xread({key: "0"})
    [(_, [(_id, fields)])] = got
    entry = decode_entry(fields)
    assert entry.type == "ticker"
    assert entry.channel == "ticker:BTCUSDT"
    assert entry.received_ns == 42
    assert entry.payload == {**event, "volume": "1.5"}  # Decimals travel as their text


async def test_a_gap_report_round_trips(redis_client: aioredis.Redis) -> None:
    import msgspec

    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    gap = Gap(channel="orders", disconnected_at=now, reconnected_at=now, reason="drop")
    fields = encode_entry("gap", "orders", msgspec.to_builtins(gap), received_ns=1)
    await redis_client.xadd("g", fields)
    read: Any = await redis_client.xread({"g": "0"})
    [(_, [(_id, got)])] = read
    back = msgspec.convert(decode_entry(got).payload, Gap)
    assert back == gap


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": b"2"}, "schema version '2'"),
        ({"d": b"\xc1"}, "bad payload"),
        ({"r": b"soon"}, "bad 'r'"),
    ],
)
def test_bad_entries_are_typed_errors(change: dict[str, bytes], message: str) -> None:
    fields = {k.encode(): v for k, v in encode_entry("orders", "orders", {}, received_ns=1).items()}
    fields.update({k.encode(): v for k, v in change.items()})
    with pytest.raises(DecodeError, match=message):
        decode_entry(fields)


def test_a_missing_field_is_a_typed_error() -> None:
    with pytest.raises(DecodeError, match="'t'"):
        decode_entry({b"v": str(SCHEMA_VERSION).encode(), b"r": b"1", b"d": b"\x80"})


def test_the_local_server_restarts_on_its_port_and_keeps_data_when_persistent() -> None:
    assert find_redis_server()
    with LocalRedis(persistent=True) as server:
        import redis

        client = redis.Redis.from_url(server.url)
        client.xadd("s", {"a": "1"})
        port = server.port
        server.restart()
        assert server.port == port
        assert client.xlen("s") == 1  # redis-py reconnects by itself
        server.kill()
        assert not server.running
        client.close()


def test_a_local_server_from_the_command_line_stops_with_ctrl_c() -> None:
    import signal
    import subprocess
    import sys

    from agentstream.bus.testing import _free_port

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentstream.bus.testing", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(f"redis://127.0.0.1:{port}/0")
        import redis

        client = redis.Redis(port=port)
        assert client.ping()
        client.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        gone = redis.Redis(port=port, socket_connect_timeout=1)
        with pytest.raises(redis.ConnectionError):
            gone.ping()  # the server went too
        gone.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
