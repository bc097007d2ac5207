"""agentstream.metrics against the simulated exchange: what Prometheus scrapes is ws.stats.

Clients run against an in-process SimExchange; the collector sits in a fresh registry and
is read with ``generate_latest`` and over a real HTTP scrape on 127.0.0.1.
"""

from __future__ import annotations

import gc
import subprocess
import sys
from typing import Any

import aiohttp
import anyio
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agentstream import AgentExchangeWS, ConfigurationError
from agentstream.metrics import StreamCollector, instrument, serve_metrics
from agentstream.sim import (
    DEMO_API_KEY,
    TASTYTRADE_DEMO_ACCOUNT,
    TASTYTRADE_DEMO_TOKEN,
    TRADIER_DEMO_ACCOUNT,
    TRADIER_DEMO_TOKEN,
    SimExchange,
)
from agentstream.tastytrade import TastytradeStream
from agentstream.tradier import TradierStream

from .conftest import FAST, make_client, running, wait_for

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def scrape(registry: CollectorRegistry) -> Samples:
    return parse(generate_latest(registry).decode())


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))


def series(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return {lb: v for (n, lb), v in samples.items() if n == name and want <= lb}


AX = {"venue": "agentexchange", "client": "agentexchange"}


async def test_a_scrape_mirrors_stats_per_channel(sim: SimExchange) -> None:
    ws = make_client(sim)
    calls: list[int] = []
    raised: list[int] = []

    def on_btc(data: dict[str, Any]) -> None:
        calls.append(1)
        if len(calls) % 5 == 0:
            raised.append(1)
            raise RuntimeError("every fifth tick")

    ws.on_ticker("BTCUSDT", on_btc)
    ws.on_ticker("ETHUSDT", lambda data: None)
    registry = CollectorRegistry()
    instrument(ws, registry=registry)

    idle = scrape(registry)
    assert idle[key("agentstream_state", **AX, state="idle")] == 1
    assert idle[key("agentstream_state", **AX, state="connected")] == 0
    assert idle[key("agentstream_connected_sockets", **AX)] == 0
    # Wanted channels have series from the start, at 0.
    for ch in ("ticker:BTCUSDT", "ticker:ETHUSDT"):
        assert idle[key("agentstream_events_received_total", **AX, channel=ch)] == 0
        assert idle[key("agentstream_handler_errors_total", **AX, channel=ch)] == 0
        assert idle[key("agentstream_queue_depth", **AX, channel=ch)] == 0
    assert not series(idle, "agentstream_last_message_age_seconds")  # no frame yet

    async with running(ws):
        await wait_for(lambda: len(raised) >= 3, what="three handler errors")
        await wait_for(lambda: ws.stats.pings >= 2, what="two pings from the sim")
        live = scrape(registry)
        assert live[key("agentstream_state", **AX, state="connected")] == 1
        assert live[key("agentstream_connected_sockets", **AX)] == 1
        assert live[key("agentstream_last_message_age_seconds", **AX)] >= 0
        assert live[key("agentstream_server_pings_total", **AX)] >= 0

    stats = ws.stats  # stopped: nothing moves any more
    done = scrape(registry)
    assert done[key("agentstream_state", **AX, state="stopped")] == 1
    assert sum(series(done, "agentstream_state", **AX).values()) == 1
    received = series(done, "agentstream_events_received_total", **AX)
    assert {dict(lb)["channel"]: v for lb, v in received.items()} == {
        **dict.fromkeys(ws.stats.messages, 0),
        **stats.messages,
    }
    assert done[key("agentstream_events_received_total", **AX, channel="ticker:BTCUSDT")] >= len(
        calls
    )
    btc_errors = key("agentstream_handler_errors_total", **AX, channel="ticker:BTCUSDT")
    assert done[btc_errors] == len(raised) == stats.handler_errors
    assert done[key("agentstream_handler_errors_total", **AX, channel="ticker:ETHUSDT")] == 0
    for name, field in (
        ("agentstream_reconnects_total", "reconnects"),
        ("agentstream_failed_connection_attempts_total", "failed_attempts"),
        ("agentstream_control_messages_total", "control_messages"),
        ("agentstream_server_pings_total", "pings"),
        ("agentstream_dropped_frames_total", "dropped_frames"),
        ("agentstream_duplicate_events_total", "duplicate_events"),
    ):
        assert done[key(name, **AX)] == getattr(stats, field), name


async def test_a_real_http_scrape_on_localhost(sim: SimExchange) -> None:
    ws = make_client(sim)
    ws.on_ticker("BTCUSDT", lambda data: None)
    registry = CollectorRegistry()
    instrument(ws, registry=registry, name="btc-bot")
    server, thread = serve_metrics(0, registry=registry)
    try:
        assert server.server_address[0] == "127.0.0.1"
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        async with running(ws), aiohttp.ClientSession() as http:
            await wait_for(lambda: ws.stats.messages_total >= 10, what="ticks")
            async with http.get(url) as resp:
                assert resp.status == 200
                assert resp.content_type == "text/plain"
                text = await resp.text()
        labels = {"venue": "agentexchange", "client": "btc-bot"}
        got = parse(text)
        assert got[key("agentstream_events_received_total", **labels, channel="ticker:BTCUSDT")]
        assert got[key("agentstream_state", **labels, state="connected")] == 1
        assert "# TYPE agentstream_events_received_total counter" in text
        assert "# TYPE agentstream_queue_depth gauge" in text
        assert DEMO_API_KEY not in text
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_a_forced_drop_counts_a_reconnect_and_a_gap(sim: SimExchange) -> None:
    ws = make_client(sim)
    ws.on_ticker("BTCUSDT", lambda data: None)
    registry = CollectorRegistry()
    instrument(ws, registry=registry)
    gap = key("agentstream_gaps_total", **AX, channel="ticker:BTCUSDT")
    async with running(ws):
        await wait_for(lambda: ws.stats.messages_total >= 5, what="ticks")
        before = scrape(registry)
        assert before[key("agentstream_reconnects_total", **AX)] == 0
        assert before[gap] == 0
        assert await sim.drop_connections() == 1
        await wait_for(lambda: ws.stats.gaps >= 1, what="the gap after the reconnect")
        after = scrape(registry)
    assert after[key("agentstream_reconnects_total", **AX)] == 1
    assert after[gap] == 1
    assert ws.stats.gaps_by_channel == {"ticker:BTCUSDT": 1}


async def test_conflation_and_queue_depth_per_channel_outlive_the_handler(
    sim: SimExchange,
) -> None:
    ws = make_client(sim, queue_size=8)
    release = anyio.Event()
    started = anyio.Event()

    async def stuck(data: dict[str, Any]) -> None:
        started.set()
        await release.wait()

    ws.on_ticker("BTCUSDT", stuck)
    # every=True: by default even a fast handler may get only the newest of the ticks
    # that arrived in one read; this channel must show no conflation at all.
    ws.on_ticker("ETHUSDT", lambda data: None, every=True)
    registry = CollectorRegistry()
    instrument(ws, registry=registry)
    conflated = key("agentstream_conflated_events_total", **AX, channel="ticker:BTCUSDT")
    async with running(ws):
        try:
            await started.wait()
            await wait_for(lambda: ws.stats.conflated >= 20, what="conflation")
            stats = ws.stats
            assert set(stats.conflated_by_channel) == {"ticker:BTCUSDT"}
            assert stats.queued_by_channel["ticker:BTCUSDT"] >= 1
            assert sum(stats.queued_by_channel.values()) == stats.queued
            got = scrape(registry)
            assert got[key("agentstream_queue_depth", **AX, channel="ticker:BTCUSDT")] >= 1
            assert got[conflated] >= stats.conflated_by_channel["ticker:BTCUSDT"]
            eth = key("agentstream_conflated_events_total", **AX, channel="ticker:ETHUSDT")
            assert got[eth] == 0
            assert ws.remove_handler(stuck) == 1
        finally:
            release.set()  # the stuck handler ends, so the client can stop
        left = ws.stats.conflated_by_channel["ticker:BTCUSDT"]
        assert left >= stats.conflated_by_channel["ticker:BTCUSDT"]
        assert ws.stats.conflated == left  # the count stays with its handler gone
        assert scrape(registry)[conflated] == left


async def test_all_three_venues_get_their_venue_label() -> None:
    async with SimExchange(tick_rate=100, order_interval=0.02) as sim:
        ax = AgentExchangeWS(DEMO_API_KEY, sim.url, **FAST)
        ax.on_ticker("BTCUSDT", lambda data: None)
        tr = TradierStream(token=TRADIER_DEMO_TOKEN, base_url=sim.http_url, **FAST)
        tr_orders: list[dict[str, Any]] = []
        tr.on_order_update(tr_orders.append)
        tt = TastytradeStream(
            TASTYTRADE_DEMO_TOKEN,
            url=sim.url + "/tastytrade",
            accounts=[TASTYTRADE_DEMO_ACCOUNT],
            heartbeat_interval=0.1,
            **FAST,
        )
        tt_orders: list[dict[str, Any]] = []
        tt.on_order_update(tt_orders.append)
        registry = CollectorRegistry()
        collectors = {instrument(ws, registry=registry) for ws in (ax, tr, tt)}
        assert len(collectors) == 1  # one collector per registry
        assert collectors.pop().names == ["agentexchange", "tastytrade", "tradier"]
        async with running(ax), running(tr), running(tt):
            await wait_for(lambda: all(ws.stats.connections for ws in (ax, tr, tt)))
            await _tradier_order(sim)
            await sim.tastytrade.place_order(
                TASTYTRADE_DEMO_ACCOUNT, symbol="AAPL", action="Buy to Open"
            )
            await wait_for(lambda: tr_orders and tt_orders, what="order events on both")
            await wait_for(lambda: tr.enrichment["lookups"] >= 1, what="the look-up")
            await wait_for(lambda: ax.stats.messages_total > 0, what="a tick")
            got = scrape(registry)
        for ws in (ax, tr, tt):
            labels = {"venue": ws.venue, "client": ws.venue}
            assert got[key("agentstream_state", **labels, state="connected")] == 1
            received = series(got, "agentstream_events_received_total", **labels)
            assert sum(received.values()) > 0, ws.venue
        assert {ws.venue for ws in (ax, tr, tt)} == {"agentexchange", "tradier", "tastytrade"}
        tr_labels = {"venue": "tradier", "client": "tradier"}
        lookups = got[key("agentstream_enrichment_lookups_total", **tr_labels)]
        assert lookups == tr.enrichment["lookups"] >= 1
        assert got[key("agentstream_enrichment_failed_total", **tr_labels)] == 0
        assert not series(got, "agentstream_enrichment_lookups_total", venue="agentexchange")
        text = generate_latest(registry).decode()
        for secret in (DEMO_API_KEY, TRADIER_DEMO_TOKEN, TASTYTRADE_DEMO_TOKEN):
            assert secret not in text


async def _tradier_order(sim: SimExchange) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{sim.http_url}/v1/accounts/{TRADIER_DEMO_ACCOUNT}/orders",
            data={"class": "equity", "duration": "day", "symbol": "AAPL", "side": "buy"}
            | {"quantity": "2", "type": "market"},
            headers={"Authorization": f"Bearer {TRADIER_DEMO_TOKEN}", "Accept": "application/json"},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()


async def test_client_names_are_unique_and_clients_can_leave(sim: SimExchange) -> None:
    a, b = make_client(sim), make_client(sim)
    registry = CollectorRegistry()
    collector = instrument(a, registry=registry)
    assert instrument(a, registry=registry) is collector  # again: the same name, no clash
    with pytest.raises(ConfigurationError, match="name="):
        instrument(b, registry=registry)
    with pytest.raises(ConfigurationError):
        instrument(b, registry=registry, name=" ")
    instrument(b, registry=registry, name="second")
    assert collector.names == ["agentexchange", "second"]
    assert collector.add(b, "renamed") == "renamed"
    assert collector.names == ["agentexchange", "renamed"]  # one client, exported once
    assert collector.add(b, "second") == "second"
    clients = {dict(lb)["client"] for lb in series(scrape(registry), "agentstream_state")}
    assert clients == {"agentexchange", "second"}
    assert collector.remove(a) is True
    assert collector.remove("agentexchange") is False
    assert collector.names == ["second"]
    del b
    gc.collect()
    assert collector.names == []  # a garbage-collected client leaves the metrics
    assert not series(scrape(registry), "agentstream_state")


def test_a_second_collector_in_one_registry_is_refused() -> None:
    registry = CollectorRegistry()
    registry.register(StreamCollector())
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(StreamCollector())


def test_without_the_extra_the_import_error_names_it() -> None:
    code = (
        "import sys\n"
        "sys.modules['prometheus_client'] = None\n"
        "try:\n"
        "    import agentstream.metrics\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
        "else:\n"
        "    print('imported')\n"
        "import agentstream\n"
        "print('core', agentstream.__version__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    lines = out.stdout.splitlines()
    assert lines[0] == (
        "ImportError agentstream.metrics needs prometheus-client: "
        "pip install 'agentstream[metrics]'"
    )
    assert lines[1].startswith("core ")  # the core does not need it
