"""The pytest plugin as a user meets it: small test files run by pytester.

Each test writes a bot's test file and runs it in-process with pytest (the plugin is
loaded from its ``pytest11`` entry point, as in a user's project), against the real
simulated exchange on 127.0.0.1.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_bot=textwrap.dedent(source))
    return pytester.runpytest("-p", "no:cacheprovider", "-q", *args)


def test_loading_the_plugin_imports_only_pytest() -> None:
    code = textwrap.dedent(
        """
        import importlib.metadata, sys
        before = set(sys.modules)
        import agentstream_pytest
        heavy = sorted(
            m for m in set(sys.modules) - before
            if m.split(".")[0] in ("agentstream", "aiohttp", "msgspec", "anyio")
        )
        points = [e.value for e in importlib.metadata.entry_points(group="pytest11")
                  if e.name == "agentstream"]
        print(heavy, points)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.split() == ["[]", "['agentstream_pytest']"], out.stdout + out.stderr


def test_sync_test_with_a_run_forever_bot_and_no_async_plugin(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import threading
        from decimal import Decimal
        from agentstream import AgentExchangeWS, OrderUpdate

        def test_bot_sees_its_fill(agentstream_sim, agentstream_client_options):
            sim = agentstream_sim
            ws = AgentExchangeWS(sim.api_key, sim.url, **agentstream_client_options)
            filled = threading.Event()
            orders = []
            connected = threading.Event()
            ws.on_connect(connected.set)

            @ws.on_order_update
            def on_order(order: OrderUpdate) -> None:
                orders.append(order)
                if order.status == "filled":
                    filled.set()

            thread = threading.Thread(target=ws.run_forever, daemon=True)
            thread.start()
            try:
                assert connected.wait(5)
                placed = sim.call(sim.rest.place_order, "BTCUSDT", "buy", "0.01")
                assert filled.wait(5)
                assert orders[-1].order_id == placed.order_id
                assert orders[-1].executed_quantity == Decimal("0.01")
                assert sim.call(sim.exchange.portfolio, sim.api_key)["available_cash"] != "10000"
            finally:
                assert ws.stop()
        """,
        "-p",
        "no:anyio",
    )
    result.assert_outcomes(passed=1)


def test_async_anyio_test_with_a_dropped_connection(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import anyio
        import pytest
        from agentstream import AgentExchangeWS, Ticker

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.mark.anyio
        async def test_bot_reconnects_after_a_drop(agentstream_sim, agentstream_client_options):
            sim = agentstream_sim
            ws = AgentExchangeWS(sim.api_key, sim.url, **agentstream_client_options)
            ticks = []
            connects = []
            ws.on_connect(lambda: connects.append(1))

            @ws.on_ticker("BTCUSDT")
            async def on_btc(t: Ticker) -> None:
                ticks.append(t)

            async def until(pred):
                with anyio.fail_after(5):
                    while not pred():
                        await anyio.sleep(0.01)

            async with anyio.create_task_group() as tg:
                tg.start_soon(ws.connect)
                await until(lambda: ticks)
                with pytest.raises(RuntimeError, match="acall"):
                    sim.call(sim.exchange.drop_connections, 1012)
                assert await sim.acall(sim.exchange.drop_connections, 1012) == 1
                await until(lambda: len(connects) == 2)
                seen = len(ticks)
                await until(lambda: len(ticks) > seen)
                async with sim.rest as rest:
                    order = await rest.place_order("ETHUSDT", "buy", "0.1")
                assert order.status == "filled"
                await ws.disconnect()
            assert ws.stats.reconnects == 1
        """,
    )
    result.assert_outcomes(passed=1)


def test_faults_mid_test_the_bot_recovers(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import threading, time
        import pytest
        from agentstream import AgentExchangeWS, RestError

        def wait(pred, timeout=5.0):
            deadline = time.monotonic() + timeout
            while not pred():
                assert time.monotonic() < deadline, "timed out"
                time.sleep(0.01)

        def test_silence_then_refused_handshakes(agentstream_sim, agentstream_client_options):
            sim = agentstream_sim
            ws = AgentExchangeWS(
                sim.api_key, sim.url, stale_timeout=0.5, **agentstream_client_options
            )
            ticks = []
            ws.on_ticker("BTCUSDT")(ticks.append)
            threading.Thread(target=ws.run_forever, daemon=True).start()
            try:
                wait(lambda: ticks)
                sim.call(sim.exchange.refuse_handshakes, 503, count=2)
                assert sim.call(sim.exchange.go_silent) == 1
                wait(lambda: ws.stats.reconnects == 1)
                assert ws.stats.failed_attempts == 2
                seen = len(ticks)
                wait(lambda: len(ticks) > seen)
                sim.call(sim.exchange.fail_rest, 503, count=1)
                with pytest.raises(RestError) as info:
                    sim.call(sim.rest.portfolio)
                assert info.value.status == 503
                assert sim.call(sim.rest.portfolio).total_equity > 0
            finally:
                assert ws.stop()
        """,
    )
    result.assert_outcomes(passed=1)


def test_tradier_and_tastytrade_bots(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import threading
        from agentstream.tastytrade import PlacedOrder, TastytradeStream
        from agentstream.tradier import TradierOrder, TradierStream

        def run_bot(ws, place, seen):
            connected = threading.Event()
            ws.on_connect(connected.set)
            threading.Thread(target=ws.run_forever, daemon=True).start()
            try:
                assert connected.wait(5)
                placed = place()
                deadline = threading.Event()
                for _ in range(500):
                    if any(o.status.lower() == "filled" for o in seen):
                        return placed
                    deadline.wait(0.01)
                raise AssertionError(f"no fill in {seen}")
            finally:
                assert ws.stop()

        def test_tradier(agentstream_sim, agentstream_client_options):
            sim = agentstream_sim
            ws = TradierStream(
                sim.tradier_token, base_url=sim.http_url, **agentstream_client_options
            )
            seen = []

            @ws.on_order_update
            def on_order(order: TradierOrder) -> None:
                seen.append(order)

            rest = sim.tradier_rest
            oid = run_bot(ws, lambda: sim.call(rest.place_order, "AAPL", "buy", 2), seen)
            assert {o.id for o in seen} == {oid}
            assert seen[-1].symbol == "AAPL"  # looked up over the sim's REST API

        def test_tastytrade(agentstream_sim, agentstream_client_options):
            sim = agentstream_sim
            ws = TastytradeStream(
                sim.tastytrade_token,
                [sim.tastytrade_account],
                url=sim.tastytrade_url,
                api_url=sim.http_url,
                **agentstream_client_options,
            )
            seen = []

            @ws.on_order_update
            def on_order(order: PlacedOrder) -> None:
                seen.append(order)

            acct = sim.tastytrade_account
            rest = sim.tastytrade_rest
            placed = run_bot(
                ws, lambda: sim.call(rest.place_order, acct, "MSFT", "Buy to Open", 3), seen
            )
            assert {o.id for o in seen} == {placed.id}
        """,
    )
    result.assert_outcomes(passed=2)


def test_configuration_by_marker_and_by_fixture(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest
        from agentstream.testing import fast_sim_config

        @pytest.fixture
        def agentstream_sim_config():
            return fast_sim_config(tick_rate=50.0, speed=120.0)
        """
    )
    result = run(
        pytester,
        """
        import pytest

        pytestmark = pytest.mark.agentstream_sim(seed=7, speed=300.0)

        def test_fixture_then_module_marker(agentstream_sim):
            cfg = agentstream_sim.exchange.config
            assert (cfg.tick_rate, cfg.seed, cfg.speed) == (50.0, 7, 300.0)

        @pytest.mark.agentstream_sim(speed=600.0)
        def test_closest_marker_wins(agentstream_sim):
            assert agentstream_sim.exchange.config.speed == 600.0
            assert agentstream_sim.exchange.config.seed == 7

        @pytest.mark.agentstream_sim("positional")
        def test_positional_marker_is_refused(agentstream_sim):
            pass
        """,
        "--strict-markers",
    )
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*takes SimConfig fields as keywords only*"])


def test_feed_fixture_in_a_users_test_file(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        from agentstream import AgentExchangeWS, Portfolio

        def test_rebalances_on_portfolio(agentstream_feed):
            ws = AgentExchangeWS("ak_test_userbot1")
            actions = []

            @ws.on_portfolio
            async def rebalance(p: Portfolio) -> None:
                if p.available_cash > 5000:
                    actions.append(("buy", p.available_cash))

            feed = agentstream_feed(ws)
            feed.event("portfolio", {"total_equity": "10000", "available_cash": "9000",
                                     "unrealized_pnl": "0", "realized_pnl": "0"})
            assert actions == [("buy", 9000)]
            feed.event("portfolio", {"total_equity": "10000", "available_cash": "100",
                                     "unrealized_pnl": "0", "realized_pnl": "0"})
            assert len(actions) == 1
        """,
    )
    result.assert_outcomes(passed=1)
