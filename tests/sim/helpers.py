"""Helpers of the sim conformance suite: a bare aiohttp WebSocket client, nothing more.

These tests must hold against the real platform, so they never use agentstream's own
client: only :class:`aiohttp.ClientSession`, JSON and the protocol document.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import anyio

from agentstream.sim import SimExchange

JSON = dict[str, Any]
Predicate = Callable[[JSON], bool]

#: Settings that make a sim quick to test against; tests override what they need.
FAST: dict[str, Any] = {
    "tick_rate": 2000.0,
    "speed": 60.0,
    "step_interval": 0.01,
    "order_interval": 0.05,
    "portfolio_interval": 0.3,
}

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ISO_S = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
DECIMAL = re.compile(r"^-?\d+(\.\d+)?$")
SYMBOL = re.compile(r"^[A-Z0-9]+USDT$")

#: Frame types that mean the WebSocket is over.
ENDED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


def fast_sim(**overrides: Any) -> SimExchange:
    """A sim on 127.0.0.1, a free port and :data:`FAST` settings, with ``overrides``."""
    return SimExchange(**{**FAST, **overrides})


def parse_iso(ts: str) -> datetime:
    """Parse a protocol timestamp (``...Z``), asserting its exact form."""
    assert ISO_MS.match(ts) or ISO_S.match(ts), ts
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(UTC)


def decimals(s: str) -> int:
    """Decimal places of a decimal string, asserting it is one (not a float, not 1E-7)."""
    assert isinstance(s, str), f"{s!r} is not a string"
    assert DECIMAL.match(s), f"{s!r} is not a plain decimal string"
    return len(s.split(".")[1]) if "." in s else 0


def dec(s: str) -> Decimal:
    decimals(s)
    return Decimal(s)


async def send(ws: aiohttp.ClientWebSocketResponse, msg: JSON) -> None:
    await ws.send_str(json.dumps(msg))


async def recv_frame(
    ws: aiohttp.ClientWebSocketResponse, timeout: float = 2.0
) -> aiohttp.WSMessage:
    """The next frame of any type; fails the test if none comes within ``timeout``."""
    try:
        return await ws.receive(timeout=timeout)
    except TimeoutError:
        raise AssertionError(f"no frame within {timeout} s") from None


async def recv_until(
    ws: aiohttp.ClientWebSocketResponse,
    pred: Predicate,
    timeout: float = 2.0,
    *,
    answer_pings: bool = True,
) -> JSON:
    """Receive JSON messages until one matches ``pred``; return it.

    Pings are answered (with both pong spellings) when ``answer_pings``, even one that
    matches; everything else that does not match is skipped. Fails the test on a timeout
    or the end of the socket.
    """
    with anyio.move_on_after(timeout):
        while True:
            msg = await ws.receive()
            if msg.type in ENDED:
                raise AssertionError(f"socket ended ({msg!r}, code {ws.close_code})")
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            data = json.loads(msg.data)
            assert isinstance(data, dict), data
            if answer_pings and data.get("type") == "ping":
                await send(ws, {"type": "pong", "action": "pong"})
            if pred(data):
                return data
    raise AssertionError(f"no matching message within {timeout} s")


async def collect(
    ws: aiohttp.ClientWebSocketResponse,
    pred: Predicate,
    count: int,
    timeout: float = 3.0,
) -> list[JSON]:
    """Receive until ``count`` messages matched ``pred``; return them in order."""
    out: list[JSON] = []
    with anyio.fail_after(timeout):
        while len(out) < count:
            out.append(await recv_until(ws, pred, timeout))
    return out


async def collect_for(
    ws: aiohttp.ClientWebSocketResponse, seconds: float, *, answer_pings: bool = True
) -> list[JSON]:
    """Every JSON message received in the next ``seconds`` (pings answered unless told)."""
    out: list[JSON] = []
    with anyio.move_on_after(seconds):
        while True:
            msg = await ws.receive()
            if msg.type in ENDED:
                break
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            data = json.loads(msg.data)
            if answer_pings and data.get("type") == "ping":
                await send(ws, {"action": "pong"})
            out.append(data)
    return out


async def subscribe(ws: aiohttp.ClientWebSocketResponse, **fields: Any) -> JSON:
    """Send a subscribe and return the server's reply (``subscribed`` or ``error``)."""
    await send(ws, {"action": "subscribe", **fields})
    return await recv_until(ws, is_control)


async def unsubscribe(ws: aiohttp.ClientWebSocketResponse, **fields: Any) -> JSON:
    await send(ws, {"action": "unsubscribe", **fields})
    return await recv_until(ws, is_control)


def is_control(m: JSON) -> bool:
    """An acknowledgement or an error (not a ping, not data)."""
    return m.get("type") in ("subscribed", "unsubscribed", "error")


def on(channel: str, **fields: Any) -> Predicate:
    """Predicate: a data message of ``channel`` whose envelope has ``fields``."""
    return lambda m: m.get("channel") == channel and all(m.get(k) == v for k, v in fields.items())


async def expect_end(
    ws: aiohttp.ClientWebSocketResponse, timeout: float = 2.0
) -> aiohttp.WSMessage:
    """Receive (skipping data) until the socket ends; return the ending frame."""
    with anyio.fail_after(timeout):
        while True:
            msg = await ws.receive()
            if msg.type in ENDED:
                return msg


async def expect_quiet(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> None:
    """Assert that nothing at all arrives for ``seconds`` (and the socket stays up)."""
    with anyio.move_on_after(seconds):
        msg = await ws.receive()
        raise AssertionError(f"expected silence, got {msg!r}")
    assert not ws.closed


async def wait_for(cond: Callable[[], bool | Awaitable[bool]], timeout: float = 2.0) -> None:
    """Poll ``cond`` every 10 ms until it is true; fail the test after ``timeout``."""
    with anyio.move_on_after(timeout):
        while True:
            res = cond()
            if not isinstance(res, bool):
                res = await res
            if res:
                return
            await anyio.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout} s")
