"""Connection faults: closes, resets, restarts, a killed server process, black holes, pings.

After each fault the client must reconnect (with backoff), subscribe every channel again
exactly once, and get data again; a quiet connection that is still pinged is alive.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import pytest
from anyio.streams.text import TextReceiveStream

from agentstream import StaleConnectionError, StreamConnectionError, Ticker, transport
from tests.client.conftest import running, wait_for
from tests.faults.conftest import CHANNELS, Hooks, client, watched
from tests.faults.servers import Script, ScriptedServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from anyio.abc import Process

    from agentstream.sim import SimExchange

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "code", [None, 1000, 1001, 1011, 1012], ids=lambda c: f"close-{c or 'reset'}"
)
async def test_server_close_or_reset_reconnects_and_resubscribes_once(
    sim: SimExchange, code: int | None
) -> None:
    ws, got, hooks = watched(sim.url, CHANNELS)
    async with running(ws):
        await wait_for(lambda: sim.subscriptions() == [CHANNELS] and got, what="first connection")
        assert await sim.drop_connections(code, "scripted") == 1
        await wait_for(
            lambda: sim.stats.connections_opened == 2 and sim.subscriptions() == [CHANNELS],
            what="the reconnect",
        )
        n = ws.stats.messages_total
        await wait_for(lambda: ws.stats.messages_total > n + 5, what="data on the new connection")
        stats = ws.stats
    first, second = sim.connection_log
    assert Counter(first.subscribe_requests) == Counter(CHANNELS)
    assert Counter(second.subscribe_requests) == Counter(CHANNELS)  # exactly once each
    assert (stats.reconnects, stats.failed_attempts) == (1, 0)
    assert hooks.connects == 2
    assert hooks.errors == []  # a lost connection is a disconnect, not an error
    [reason] = hooks.disconnects
    if code is None:
        assert reason.startswith("connection lost"), reason
    else:
        assert reason == f"closed by server ({code}: scripted)"


async def test_in_process_restart_is_retried_then_resubscribed(sim: SimExchange) -> None:
    ws, got, hooks = watched(sim.url, CHANNELS, backoff_max=0.05)
    async with running(ws), anyio.create_task_group() as tg:
        await wait_for(lambda: sim.subscriptions() == [CHANNELS] and got)
        tg.start_soon(sim.restart, 0.4)
        await wait_for(lambda: ws.stats.failed_attempts >= 2, what="refused attempts")
        down = ws.stats
        await wait_for(
            lambda: sim.stats.connections_opened == 2 and sim.subscriptions() == [CHANNELS]
        )
        n = len(got)
        await wait_for(lambda: len(got) > n + 5, what="data after the restart")
    assert (down.state, down.connections) == ("reconnecting", 0)
    refused = hooks.of(StreamConnectionError)
    assert len(refused) == ws.stats.failed_attempts >= 2
    assert all(ctx == {"link": 0, "stage": "connect"} for _, ctx in refused)
    assert all("cannot connect" in str(exc) for exc, _ in refused)
    assert len(hooks.errors) == len(refused)  # nothing else went wrong
    assert Counter(list(sim.connection_log)[1].subscribe_requests) == Counter(CHANNELS)
    assert ws.stats.reconnects == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def sim_process(port: int, *extra: str) -> AsyncIterator[Process]:
    """``agentstream serve`` in a subprocess on ``port``, once it printed its URL."""
    argv = ["serve", "--host", "127.0.0.1", "--port", str(port), "--rate", "2000", *extra]
    proc = await anyio.open_process([sys.executable, "-m", "agentstream", *argv], cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = ""
        with anyio.fail_after(10):
            async for chunk in TextReceiveStream(proc.stdout):
                line += chunk
                if "\n" in line:
                    break
        assert f"ws://127.0.0.1:{port}/ws/v1" in line, line
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.aclose()


async def _subscriptions(http: aiohttp.ClientSession, port: int) -> list[list[str]]:
    """Each open connection's subscriptions, from the server process's admin endpoint."""
    try:
        async with http.get(f"http://127.0.0.1:{port}/admin/state") as r:
            state = await r.json()
    except aiohttp.ClientError:
        return []
    return [c["subscriptions"] for c in state["connections"]]


async def _wait_subscribed(http: aiohttp.ClientSession, port: int) -> None:
    with anyio.fail_after(5):
        while await _subscriptions(http, port) != [sorted(CHANNELS)]:
            await anyio.sleep(0.02)


@pytest.mark.slow
async def test_server_process_killed_and_restarted_on_the_same_port() -> None:
    port = _free_port()
    ws, got, hooks = watched(f"ws://127.0.0.1:{port}", CHANNELS, backoff_max=0.1)
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())
        first = await stack.enter_async_context(sim_process(port))
        await stack.enter_async_context(running(ws))
        await _wait_subscribed(http, port)
        await wait_for(lambda: len(got) > 5, what="data from the first process")
        first.kill()  # SIGKILL: no close frame, no goodbye
        with anyio.fail_after(5):
            await first.wait()
        await wait_for(lambda: hooks.disconnects and ws.stats.failed_attempts >= 1)
        await stack.enter_async_context(sim_process(port))
        await _wait_subscribed(http, port)
        n = len(got)
        await wait_for(lambda: len(got) > n + 5, what="data from the second process")
        stats, connects, reasons = ws.stats, hooks.connects, list(hooks.disconnects)
    # (Snapshots: leaving the block stops the second process before the client.)
    assert stats.reconnects == 1
    assert connects == 2
    [reason] = reasons
    assert reason.startswith("connection lost"), reason
    refused = hooks.of(StreamConnectionError)
    assert len(refused) == stats.failed_attempts
    assert all(ctx == {"link": 0, "stage": "connect"} for _, ctx in refused)


async def test_black_hole_is_detected_after_the_stale_timeout(sim: SimExchange) -> None:
    stale = 0.5
    ws, got, hooks = watched(sim.url, CHANNELS, stale_timeout=stale)
    async with running(ws):
        await wait_for(lambda: sim.subscriptions() == [CHANNELS] and len(got) > 5)
        silenced = time.monotonic()
        assert sim.go_silent() == 1  # no data, no pings, nothing read; TCP stays open
        await wait_for(lambda: sim.stats.connections_opened == 2, timeout=3, what="a new socket")
        detected = time.monotonic() - silenced
        await wait_for(
            lambda: Counter(sim.connection_log[1].subscribe_requests) == Counter(CHANNELS)
        )
        n = len(got)
        await wait_for(lambda: len(got) > n + 5, what="data on the new connection")
    # Not before the stale timeout. (How soon after it is not asserted: a wall-clock
    # bound fails on a loaded machine; the wait above bounds it at 3 s, and the watchdog
    # checks every stale/20 s.)
    assert stale <= detected
    [(exc, ctx)] = hooks.of(StaleConnectionError)
    assert "no frame for 0.5 s" in str(exc)
    assert ctx == {"link": 0, "stage": "liveness"}
    assert hooks.disconnects == ["stale: no frame for the stale timeout"]
    assert len(hooks.errors) == 1
    assert ws.stats.reconnects == 1


@pytest.mark.parametrize("kind", ["json", "websocket"])
async def test_pings_without_data_are_not_stale(kind: str) -> None:
    """A connection that carries nothing but pings (either kind) for 3x the stale timeout."""
    pings = Script(ping_every=0.05) if kind == "json" else Script(ws_ping_every=0.05)
    async with ScriptedServer(pings) as server:
        ws = client(server.url, stale_timeout=0.3)
        ws.on_order_update(lambda d: None)  # a channel with no traffic
        hooks = Hooks.attach(ws)
        async with running(ws):
            await anyio.sleep(1.0)
            stats = ws.stats
        [conn] = server.connections
    assert len(server.handshakes) == 1
    assert hooks.errors == []
    assert hooks.disconnects == []
    assert stats.messages_total == 0
    assert stats.reconnects == 0
    answered = conn.pongs if kind == "json" else conn.ws_pongs
    assert answered >= 12  # about 20 pings in 1 s, each answered
    if kind == "json":
        assert stats.pings >= answered


async def test_accept_and_close_at_once_forever_backs_off() -> None:
    """No reconnect storm: a connection that never proved healthy grows the delays."""
    async with ScriptedServer(close_code=1000) as server:
        ws = client(server.url, backoff_initial=0.02, backoff_max=0.32, healthy_after=5.0)
        ws.on_ticker("BTCUSDT", lambda d: None)
        hooks = Hooks.attach(ws)
        async with running(ws):
            await wait_for(lambda: len(server.handshakes) >= 7, timeout=5)
            stats = ws.stats
    gaps = server.gaps()[:6]
    wanted = [0.02, 0.04, 0.08, 0.16, 0.32, 0.32]
    for gap, delay in zip(gaps, wanted, strict=True):
        assert delay * 0.9 <= gap <= delay + 0.25, (gaps, wanted)
    assert all(h.status == 101 for h in server.handshakes)
    assert all(r == "closed by server (1000: closed by the script)" for r in hooks.disconnects)
    assert len(hooks.disconnects) >= 6
    assert hooks.errors == []
    assert stats.state in ("connected", "reconnecting")  # still trying, never given up
    assert stats.reconnects >= 6


@pytest.mark.slow
@pytest.mark.parametrize("fast_read", [True, False], ids=["fast-read", "receive-only"])
async def test_stop_under_a_firehose_returns_promptly(
    fast_read: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under a firehose the reader never suspends (neither receive() nor the fast path
    # waits while frames are queued); the client must still be stoppable (it once hung
    # for minutes: anyio does not cancel a task whose wait already completed).
    monkeypatch.setattr(transport, "FAST_READ", fast_read)
    used: list[bool] = []  # per connection: did the reader take the fast path?
    buffered = transport._buffered_messages

    def spy(ws: aiohttp.ClientWebSocketResponse) -> Any:
        found = buffered(ws)
        used.append(found is not None)
        return found

    monkeypatch.setattr(transport, "_buffered_messages", spy)
    port = _free_port()
    async with sim_process(port, "--firehose"):
        ws = client(f"ws://127.0.0.1:{port}")
        seen: list[Ticker] = []

        def on_tick(t: Ticker) -> None:
            seen.append(t)

        ws.on_ticker("all", on_tick)
        async with anyio.create_task_group() as tg:
            tg.start_soon(ws.connect)
            await wait_for(lambda: len(seen) > 20_000, timeout=10, what="the firehose")
            started = time.monotonic()
            with anyio.fail_after(5):
                await ws.disconnect()
            took = time.monotonic() - started
    assert took < 2.0
    assert ws.stats.state == "stopped"
    assert used and all(u == fast_read for u in used)
