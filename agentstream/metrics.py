"""Prometheus metrics for agentstream clients (the ``agentstream[metrics]`` extra).

The metrics are read from each client's :attr:`~agentstream.AgentExchangeWS.stats` when
Prometheus scrapes, never counted on the event path: instrumenting a client costs nothing
while events flow. Every series carries ``venue`` (from the client) and ``client`` (a name
you give, by default the venue's) labels; per-channel series also carry ``channel``.

Example:
    >>> from agentstream import AgentExchangeWS
    >>> from agentstream.metrics import instrument, serve_metrics
    >>> ws = AgentExchangeWS(api_key="ak_live_...")
    >>> instrument(ws)  # into prometheus_client's default registry
    >>> serve_metrics(9108)  # http://127.0.0.1:9108/metrics
    >>> ws.run_forever()

Raises:
    ImportError: on import, when ``prometheus-client`` is not installed
        (``pip install 'agentstream[metrics]'``).
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import REGISTRY, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "agentstream.metrics needs prometheus-client: pip install 'agentstream[metrics]'",
        name=exc.name,
    ) from None

from agentstream.errors import ConfigurationError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from agentstream._client import Stats, StreamClient

__all__ = ["StreamCollector", "instrument", "serve_metrics"]

log = logging.getLogger("agentstream")

#: Every value of ``Stats.state``: the ``agentstream_state`` gauge has one series each.
STATES = ("idle", "connecting", "connected", "reconnecting", "stopped", "failed")

#: Counters that are a plain ``Stats`` field: (metric name without ``_total``, field, help).
_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("agentstream_reconnects", "reconnects", "Successful reconnects."),
    (
        "agentstream_failed_connection_attempts",
        "failed_attempts",
        "Failed connection attempts (refused, timed out, HTTP status).",
    ),
    (
        "agentstream_control_messages",
        "control_messages",
        "Control messages (pings, acknowledgements, errors) received.",
    ),
    ("agentstream_server_pings", "pings", "Server pings received (and answered)."),
    ("agentstream_heartbeats", "heartbeats", "Heartbeat messages received from the server."),
    (
        "agentstream_dropped_frames",
        "dropped_frames",
        "Frames dropped as not JSON or not of a known shape.",
    ),
    (
        "agentstream_invalid_events",
        "invalid_events",
        "Events dropped because they failed the typed model's validation.",
    ),
    ("agentstream_server_errors", "server_errors", "Error messages from the server."),
    (
        "agentstream_duplicate_events",
        "duplicate_events",
        "Private events and order states received again and not delivered twice.",
    ),
    (
        "agentstream_recovered_orders",
        "recovered_orders",
        "Order updates delivered by recovery over REST after an outage.",
    ),
)

#: Per-channel counters: (metric name without ``_total``, ``Stats`` field, help).
_CHANNEL_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("agentstream_events_received", "messages", "Data messages received, per channel."),
    (
        "agentstream_handler_errors",
        "handler_errors_by_channel",
        "Exceptions raised by handlers, per channel.",
    ),
    (
        "agentstream_conflated_events",
        "conflated_by_channel",
        "Older ticker / forming-candle events skipped by slow handlers, per channel.",
    ),
    (
        "agentstream_gaps",
        "gaps_by_channel",
        "Gaps reported (a channel down across a reconnect), per channel.",
    ),
)

_LABELS = ["venue", "client"]
_NAME_PART = re.compile(r"[a-z][a-z0-9_]{0,40}")


class StreamCollector:
    """A Prometheus collector reading the ``stats`` of one or more clients at scrape time.

    One collector serves a registry: :func:`instrument` makes it and adds clients to it
    (two collectors would export the same metric names twice). Clients are held by weak
    reference: a client that is garbage-collected leaves the metrics.

    Example:
        >>> from prometheus_client import CollectorRegistry, generate_latest
        >>> registry = CollectorRegistry()
        >>> collector = instrument(ws, registry=registry, name="btc-bot")
        >>> print(generate_latest(registry).decode())
        >>> collector.remove("btc-bot")
        True
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, weakref.ref[StreamClient]] = {}

    def add(self, ws: StreamClient, name: str | None = None) -> str:
        """Export ``ws``'s stats labelled ``client=name`` (default: its venue); return the name.

        Adding a client again under another name renames it.

        Raises:
            ConfigurationError: the name is empty or taken by another client.

        Example:
            >>> collector.add(ws, "eth-bot")
            'eth-bot'
        """
        label = ws.venue if name is None else name
        if not isinstance(label, str) or not label.strip():
            raise ConfigurationError("a metrics client name must be a non-empty string")
        with self._lock:
            known = self._clients.get(label)
            other = known() if known is not None else None
            if other is not None and other is not ws:
                raise ConfigurationError(
                    f"a client named {label!r} is instrumented already; pass name= to tell "
                    "them apart"
                )
            for old, ref in list(self._clients.items()):
                if ref() is ws:
                    del self._clients[old]  # a new name for it: exported once
            self._clients[label] = weakref.ref(ws)
        return label

    def remove(self, client: StreamClient | str) -> bool:
        """Stop exporting a client (by object or name); False if it was not exported.

        Example:
            >>> collector.remove(ws)
            True
        """
        with self._lock:
            for label, ref in list(self._clients.items()):
                if label == client or ref() is client:
                    del self._clients[label]
                    return True
        return False

    @property
    def names(self) -> list[str]:
        """The ``client`` label of every client exported now.

        Example:
            >>> collector.names
            ['agentexchange', 'tradier']
        """
        return [name for name, _ in self._live()]

    def _live(self) -> list[tuple[str, StreamClient]]:
        with self._lock:
            pairs = [(name, ref()) for name, ref in self._clients.items()]
            for name, ws in pairs:
                if ws is None:
                    del self._clients[name]
        return [(name, ws) for name, ws in sorted(pairs, key=lambda p: p[0]) if ws is not None]

    def describe(self) -> Iterable[Metric]:
        """The metric families this collector yields (for the registry's clash check)."""
        return self._families()[0].values()

    def collect(self) -> Iterable[Metric]:
        """Read every client's stats now and yield the metric families."""
        families, extra = self._families()
        for name, ws in self._live():
            try:
                self._add_client(families, extra, name, ws)
            except Exception:  # one broken client must not fail the whole scrape
                log.exception("metrics: reading the stats of client %r failed", name)
        yield from families.values()
        yield from extra.values()

    @staticmethod
    def _families() -> tuple[dict[str, Any], dict[str, CounterMetricFamily]]:
        fams: dict[str, Any] = {
            "state": GaugeMetricFamily(
                "agentstream_state",
                "1 for the client's current state, 0 for the others.",
                labels=[*_LABELS, "state"],
            ),
            "connections": GaugeMetricFamily(
                "agentstream_connected_sockets",
                "Connections (sockets) open now.",
                labels=_LABELS,
            ),
            "queued_by_channel": GaugeMetricFamily(
                "agentstream_queue_depth",
                "Events waiting in handler queues, per channel.",
                labels=[*_LABELS, "channel"],
            ),
            "last_message_age": GaugeMetricFamily(
                "agentstream_last_message_age_seconds",
                "Seconds since the last frame of any kind (absent before the first).",
                labels=_LABELS,
            ),
        }
        for metric, field, text in _COUNTERS:
            fams[field] = CounterMetricFamily(metric, text, labels=_LABELS)
        for metric, field, text in _CHANNEL_COUNTERS:
            fams[field] = CounterMetricFamily(metric, text, labels=[*_LABELS, "channel"])
        return fams, {}

    @staticmethod
    def _add_client(
        fams: dict[str, Any], extra: dict[str, CounterMetricFamily], name: str, ws: StreamClient
    ) -> None:
        stats: Stats = ws.stats
        labels = [ws.venue, name]
        for state in STATES:
            fams["state"].add_metric([*labels, state], 1.0 if stats.state == state else 0.0)
        fams["connections"].add_metric(labels, stats.connections)
        if stats.last_message_age is not None:
            fams["last_message_age"].add_metric(labels, stats.last_message_age)
        for _, field, _ in _COUNTERS:
            fams[field].add_metric(labels, getattr(stats, field))
        # Every wanted channel gets a series from the start (0 until counted), so the
        # first error or gap shows as an increase rather than a new series.
        wanted = [ch.key for ch in ws.channels]
        for field in (*(f for _, f, _ in _CHANNEL_COUNTERS), "queued_by_channel"):
            values: dict[str, int] = dict.fromkeys(wanted, 0)
            values.update(getattr(stats, field))
            for channel, value in sorted(values.items()):
                fams[field].add_metric([*labels, channel], value)
        _add_enrichment(extra, labels, getattr(ws, "enrichment", None))


def _add_enrichment(
    extra: dict[str, CounterMetricFamily], labels: list[str], counts: object
) -> None:
    """A venue client's ``enrichment`` counters (Tradier's order look-ups), if it has them."""
    if not isinstance(counts, Mapping):
        return
    for key, value in counts.items():
        if not (isinstance(key, str) and _NAME_PART.fullmatch(key) and isinstance(value, int)):
            continue
        fam = extra.get(key)
        if fam is None:
            fam = extra[key] = CounterMetricFamily(
                f"agentstream_enrichment_{key}",
                f"Order enrichment: {key} (the venue client's ws.enrichment).",
                labels=_LABELS,
            )
        fam.add_metric(labels, value)


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, StreamCollector] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = threading.Lock()


def instrument(
    ws: StreamClient, *, registry: CollectorRegistry | None = None, name: str | None = None
) -> StreamCollector:
    """Export ``ws.stats`` to Prometheus, labelled ``venue`` and ``client=name``.

    Call it once per client; several clients share the registry's one collector, told
    apart by ``name`` (default: the venue's name, so two clients of one venue need names).

    Args:
        ws: any agentstream client (``AgentExchangeWS``, ``TradierStream``,
            ``TastytradeStream``).
        registry: the ``prometheus_client`` registry (default: its global ``REGISTRY``).
        name: the ``client`` label value.

    Returns:
        The registry's :class:`StreamCollector` (``collector.remove(ws)`` undoes this).

    Raises:
        ConfigurationError: ``name`` is empty or already names another client.

    Example:
        >>> instrument(ws_btc, name="btc")
        >>> instrument(ws_eth, name="eth")
    """
    reg: CollectorRegistry = REGISTRY if registry is None else registry
    with _collectors_lock:
        collector = _collectors.get(reg)
        if collector is None:
            collector = StreamCollector()
            reg.register(collector)
            _collectors[reg] = collector
    collector.add(ws, name)
    return collector


def serve_metrics(
    port: int, addr: str = "127.0.0.1", *, registry: CollectorRegistry | None = None
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` over HTTP from a daemon thread (``prometheus_client``'s server).

    Binds to 127.0.0.1 unless told otherwise: pass ``addr="0.0.0.0"`` deliberately to
    let a Prometheus on another host scrape. ``port=0`` picks a free port
    (``server.server_port``).

    Returns:
        ``(server, thread)``: ``server.shutdown()`` stops it.

    Example:
        >>> server, _ = serve_metrics(9108)
        >>> server.server_port
        9108
    """
    reg: CollectorRegistry = REGISTRY if registry is None else registry
    server, thread = start_http_server(port, addr=addr, registry=reg)
    return server, thread
