"""TLS: ``wss://`` verifies certificates by default; a custom SSL context is honoured.

A local sim serves TLS with a certificate issued by a throw-away CA (trustme). Without
``ssl=`` the client refuses it with a fatal CertificateError after one attempt; with a
context that trusts the CA, data flows.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import trustme

from agentstream import AgentExchangeWS, CertificateError, StreamConnectionError
from agentstream.sim import DEMO_API_KEY, SimExchange

from .conftest import FAST, running, wait_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_sim(ca: trustme.CA) -> AsyncIterator[SimExchange]:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    async with SimExchange(tick_rate=500, ssl_context=server_ctx) as sim:
        yield sim


async def test_sim_serves_wss(tls_sim: SimExchange) -> None:
    assert tls_sim.url.startswith("wss://127.0.0.1:")
    assert tls_sim.http_url.startswith("https://127.0.0.1:")


async def test_untrusted_certificate_is_fatal_after_one_attempt(tls_sim: SimExchange) -> None:
    ws = AgentExchangeWS(DEMO_API_KEY, tls_sim.url, **FAST)
    errors: list[BaseException] = []
    ws.on_error(lambda exc, ctx: errors.append(exc))
    ws.on_ticker("BTCUSDT", lambda data: None)
    with anyio.fail_after(5), pytest.raises(CertificateError) as info:
        await ws.connect()
    assert isinstance(ws.error, CertificateError)
    assert not isinstance(info.value, StreamConnectionError)  # not a retryable kind
    assert "ssl=" in str(info.value)
    assert DEMO_API_KEY not in str(info.value)
    assert ws.stats.failed_attempts == 0  # never retried
    assert tls_sim.stats.handshakes == 0  # TLS failed before any HTTP request
    assert ws.stats.state == "failed"


async def test_wrong_host_name_is_refused(ca: trustme.CA) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("exchange.example").configure_cert(server_ctx)  # not 127.0.0.1
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with SimExchange(tick_rate=500, ssl_context=server_ctx) as sim:
        ws = AgentExchangeWS(DEMO_API_KEY, sim.url, ssl=client_ctx, **FAST)
        ws.on_ticker("BTCUSDT", lambda data: None)
        with anyio.fail_after(5), pytest.raises(CertificateError):
            await ws.connect()


async def test_custom_context_trusting_the_ca_connects(
    tls_sim: SimExchange, ca: trustme.CA
) -> None:
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    ws = AgentExchangeWS(DEMO_API_KEY, tls_sim.url, ssl=client_ctx, **FAST)
    got: list[dict[str, Any]] = []
    ws.on_ticker("BTCUSDT", got.append)
    async with running(ws):
        await wait_for(lambda: len(got) >= 3, what="ticks over TLS")
    assert got[0]["symbol"] == "BTCUSDT"
    assert ws.error is None
