"""``agentstream tail`` as users run it: a subprocess against a real in-process sim.

Each test starts ``python -m agentstream tail ...`` pointed at a fast
:class:`SimExchange` on a free port, makes something happen on the sim (orders, a
dropped connection, a quote alert) and reads what the command prints: events on
stdout, connection news on stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from decimal import Decimal
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import pytest

from agentstream._tail import CHANNEL_FORMS, ChannelError, parse_channel, resolve_options
from agentstream.sim import (
    DEMO_API_KEY,
    PLACEHOLDER_API_KEY,
    TASTYTRADE_DEMO_ACCOUNT,
    TRADIER_DEMO_ACCOUNT,
    SimExchange,
)
from tests.proc import DEADLINE, ROOT, Proc, spawn

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

pytestmark = pytest.mark.anyio

WRONG_KEY = "ak_live_TAILWRONGKEY0123456789abcdef"


@contextlib.asynccontextmanager
async def fast_sim() -> AsyncIterator[SimExchange]:
    async with SimExchange(
        port=0,
        speed=120,
        tick_rate=1000,
        step_interval=0.01,
        order_interval=0.05,
        portfolio_interval=0.3,
    ) as sim:
        yield sim


Tail = Proc


def tail_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENTSTREAM_", "AGENTEXCHANGE_", "TRADIER_", "TASTYTRADE_"))
    }
    env.update(PYTHONUNBUFFERED="1", AGENTSTREAM_BACKOFF_INITIAL="0.05", **extra)
    env["AGENTSTREAM_BACKOFF_JITTER"] = "0"
    return env


@contextlib.asynccontextmanager
async def run_tail(*argv: str, **env: str) -> AsyncIterator[Tail]:
    """Run ``agentstream tail argv``; on the way out stop it (if alive) and reap it."""
    async with spawn(
        "agentstream tail",
        [sys.executable, "-m", "agentstream", "tail", *argv],
        env=tail_env(**env),
    ) as tail:
        yield tail


def assert_clean(tail: Tail) -> None:
    assert "Traceback" not in tail.stderr, tail.report()
    for secret in (DEMO_API_KEY, WRONG_KEY, "tradier_demo_agentstream", "tasty_demo_agentstream"):
        assert secret not in tail.stdout + tail.stderr, tail.report()


async def wait_until(cond: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await anyio.sleep(0.02)


# -- AgentExchange ----------------------------------------------------------------------


async def test_agentexchange_every_channel_then_ctrl_c_in_one_line() -> None:
    async with (
        fast_sim() as sim,
        run_tail(
            "ticker:BTCUSDT", "candles:ETHUSDT:1m", "orders", "portfolio", "--url", sim.url
        ) as tail,
    ):
        m = await tail.expect(r"^\S+  ticker:BTCUSDT +BTCUSDT +(\d+\.\d+) x \d")
        assert Decimal(m.group(1)) > 0
        await tail.expect(r"^\S+  candles:ETHUSDT:1m +ETHUSDT .* O=\d+\.\d+ H=.* C=\d+\.\d+ V=")
        await tail.expect(r"-- connected to agentexchange at ws://127\.0\.0\.1:\d+: ", on="stderr")
        # The default key is the sim's demo key: its orders show up.
        order = await sim.place_order(
            DEMO_API_KEY, symbol="SOLUSDT", side="buy", type="market", quantity="2"
        )
        await tail.expect(
            rf"^\S+  orders +{order['order_id']} SOLUSDT buy 2 market: filled 2 @ \d+\.\d+$"
        )
        await tail.expect(r"^\S+  portfolio +equity \d+\.\d+  cash \d+\.\d+ ")
        assert await tail.interrupt() == 130
    ctrl_c = [line for line in tail.stderr.splitlines() if "Ctrl-C" in line]
    assert len(ctrl_c) == 1, tail.report()
    assert re.search(r"-- Ctrl-C: stopped after \d+ events, 0 reconnects, 0 gaps$", ctrl_c[0])
    assert tail.stderr.splitlines()[-1] == ctrl_c[0], tail.report()
    assert_clean(tail)


async def test_json_lines_parse_and_count_stops_it() -> None:
    async with (
        fast_sim() as sim,
        run_tail("ticker:all", "--json", "--count", "25", "--url", sim.url) as tail,
    ):
        assert await tail.exited() == 0, tail.report()
    lines = tail.stdout.splitlines()
    assert len(lines) == 25, tail.report()
    symbols = set()
    for line in lines:
        obj = json.loads(line)
        assert obj["channel"] == "ticker:all"
        assert Decimal(obj["data"]["price"]) > 0  # a decimal string, exactly as sent
        assert isinstance(obj["data"]["price"], str)
        symbols.add(obj["data"]["symbol"])
    assert len(symbols) > 1, "ticker:all carries every pair"
    assert re.search(r"-- stopped after 25 events", tail.stderr), tail.report()
    assert_clean(tail)


async def test_the_key_comes_from_the_environment_and_the_placeholder_is_the_demo_account() -> None:
    async with (
        fast_sim() as sim,
        run_tail(
            "orders",
            "--json",
            "--count",
            "1",
            AGENTEXCHANGE_WS_URL=sim.url,
            AGENTEXCHANGE_API_KEY=PLACEHOLDER_API_KEY,
        ) as tail,
    ):
        await tail.expect(r"-- connected to agentexchange", on="stderr")
        await wait_until(lambda: any("orders" in s for s in sim.subscriptions()), "orders")
        order = await sim.place_order(
            DEMO_API_KEY, symbol="BTCUSDT", side="buy", type="market", quantity="0.01"
        )
        assert await tail.exited() == 0, tail.report()
    [line] = tail.stdout.splitlines()
    data = json.loads(line)["data"]
    assert (data["order_id"], data["status"]) == (order["order_id"], "filled")
    assert_clean(tail)


async def test_a_dropped_connection_shows_reconnect_gap_and_recovered_order() -> None:
    async with (
        fast_sim() as sim,
        run_tail("ticker:BTCUSDT", "orders", "--url", sim.url) as tail,
    ):
        await tail.expect(r"ticker:BTCUSDT +BTCUSDT")
        await wait_until(lambda: any("orders" in s for s in sim.subscriptions()), "orders")
        # Down for a moment; an order fills meanwhile, which the stream never sends.
        sim.refuse_handshakes(503, count=2)
        await sim.drop_connections()
        missed = await sim.place_order(
            DEMO_API_KEY, symbol="ETHUSDT", side="buy", type="market", quantity="0.1"
        )
        await tail.expect(r"-- disconnected \(.+\); reconnecting$", on="stderr")
        await tail.expect(r"-- reconnected: every channel subscribed again$", on="stderr")
        await tail.expect(r"-- gap on ticker:BTCUSDT: down \d+\.\d s \(.+\)$", on="stderr")
        await tail.expect(
            rf"^\S+  orders +{missed['order_id']} ETHUSDT buy 0\.10* market: filled .*"
            r"\(recovered over REST after a gap\)$"
        )
        assert await tail.interrupt() == 130
    assert re.search(r"Ctrl-C: stopped after \d+ events, 1 reconnects, [1-9]\d* gaps", tail.stderr)
    assert_clean(tail)


async def test_a_refused_key_stops_with_status_1_and_the_key_masked() -> None:
    async with (
        fast_sim() as sim,
        run_tail("ticker:BTCUSDT", "--key", WRONG_KEY, "--url", sim.url) as tail,
    ):
        assert await tail.exited() == 1, tail.report()
    assert "refused the credentials (ak_l…def)" in tail.stderr, tail.report()
    assert tail.stdout == ""
    assert_clean(tail)


# -- Tradier and tastytrade -------------------------------------------------------------


async def test_tradier_orders_and_the_account_filter() -> None:
    # One tail at a time: Tradier allows one streaming session per user, so two tails of
    # one token replace each other's session (as on the real venue) and see the orders
    # only through recovery.
    async with fast_sim() as sim:
        async with run_tail(
            "--venue", "tradier", "orders", "--url", sim.http_url, "--account", "VA999999"
        ) as other:
            await other.expect(
                r"-- connected to tradier at http://127\.0\.0\.1:\d+: orders", on="stderr"
            )
            await sim.tradier.place_order(
                TRADIER_DEMO_ACCOUNT,
                symbol="MSFT",
                side="buy",
                quantity="1",
                type="market",
                duration="day",
            )
            # Absence cannot be awaited: the sim pushes a market order's events within
            # milliseconds; give them a second to arrive (and be filtered out).
            await anyio.sleep(1.0)
            assert await other.interrupt() == 130
        # The same stream, filtered to another account: none of the demo account's events.
        assert other.stdout == "", other.report()
        assert "Ctrl-C: stopped after 0 events" in other.stderr, other.report()
        async with run_tail("--venue", "tradier", "orders", "--url", sim.http_url) as tail:
            await tail.expect(
                r"-- connected to tradier at http://127\.0\.0\.1:\d+: orders", on="stderr"
            )
            order = await sim.tradier.place_order(
                TRADIER_DEMO_ACCOUNT,
                symbol="AAPL",
                side="buy",
                quantity="3",
                type="market",
                duration="day",
            )
            await tail.expect(
                rf"^\S+  orders +{order.id} buy 3(\.0+)? AAPL market: filled filled 3(\.0+)? @ "
                rf"\d+\.\d+ account {TRADIER_DEMO_ACCOUNT}$"
            )
            assert await tail.interrupt() == 130
        assert_clean(tail)


async def test_tastytrade_every_channel_as_json() -> None:
    async with (
        fast_sim() as sim,
        run_tail(
            "--venue",
            "tastytrade",
            "orders",
            "balances",
            "positions",
            "quote-alerts",
            "watchlists",
            "--json",
            "--url",
            sim.url + "/tastytrade",
        ) as tail,
    ):
        await tail.expect(r"-- connected to tastytrade", on="stderr")
        await wait_until(
            lambda: sim.push_tastytrade_watchlist("Tail Test", ("AAPL", "NVDA")) > 0,
            "a socket subscribed to watchlists",
        )
        await wait_until(
            lambda: sim.push_tastytrade_quote_alert(symbol="MSFT") > 0,
            "a socket subscribed to quote alerts",
        )
        await sim.tastytrade.place_order(
            TASTYTRADE_DEMO_ACCOUNT, symbol="AAPL", action="Buy to Open", quantity=2
        )
        await tail.expect(r'"channel":"positions".*"symbol":"AAPL"')
        await tail.expect(r'"channel":"orders".*"status":"Filled"')
        assert await tail.interrupt() == 130
    seen: dict[str, list[dict[str, object]]] = {}
    for line in tail.stdout.splitlines():
        obj = json.loads(line)
        seen.setdefault(obj["channel"], []).append(obj["data"])
    assert set(seen) == {"orders", "balances", "positions", "quote-alerts", "watchlists"}
    assert seen["watchlists"][0]["name"] == "Tail Test"
    assert seen["quote-alerts"][0]["symbol"] == "MSFT"
    assert all(o["account-number"] == TASTYTRADE_DEMO_ACCOUNT for o in seen["orders"])
    assert_clean(tail)


async def test_tastytrade_lines_read_well() -> None:
    async with (
        fast_sim() as sim,
        run_tail(
            "--venue",
            "tastytrade",
            "orders",
            "balances",
            "positions",
            "--url",
            sim.url + "/tastytrade",
            "--account",
            TASTYTRADE_DEMO_ACCOUNT,
        ) as tail,
    ):
        await tail.expect(r"-- connected to tastytrade", on="stderr")
        await wait_until(lambda: sim.tastytrade.connect_requests > 0, "the connect message")
        placed = await sim.tastytrade.place_order(
            TASTYTRADE_DEMO_ACCOUNT, symbol="MSFT", action="Buy to Open", quantity=1
        )
        await tail.expect(
            rf"^\S+  orders +{placed['id']} Buy to Open 1 MSFT Market: Filled "
            rf"\(account {TASTYTRADE_DEMO_ACCOUNT}\)$"
        )
        await tail.expect(rf"^\S+  positions +{TASTYTRADE_DEMO_ACCOUNT} MSFT Long 1 avg \d")
        await tail.expect(rf"^\S+  balances +{TASTYTRADE_DEMO_ACCOUNT} cash \d+\.\d+  net liq ")
        assert await tail.interrupt() == 130
    assert_clean(tail)


# -- usage ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("venue", "channel"),
    [
        ("agentexchange", "tickr:BTCUSDT"),
        ("agentexchange", "ticker"),
        ("agentexchange", "candles:BTCUSDT:2m"),
        ("agentexchange", "candles:all:1m"),
        ("agentexchange", "ticker:BTC-USDT"),
        ("tradier", "portfolio"),
        ("tastytrade", "quotes"),
    ],
)
def test_a_bad_channel_is_a_usage_error_naming_the_valid_forms(venue: str, channel: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agentstream", "tail", "--venue", venue, "orders", channel],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=tail_env(),
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("usage: agentstream tail "), proc.stderr
    assert f"invalid channel {channel!r} for {venue}; valid forms: " in proc.stderr
    for form in CHANNEL_FORMS[venue]:
        assert form in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_channels_parse_as_users_type_them() -> None:
    assert parse_channel("agentexchange", "ticker:btcusdt").name == "ticker:BTCUSDT"
    assert parse_channel("agentexchange", "ticker:ALL").name == "ticker:all"
    assert parse_channel("agentexchange", "candles:ethusdt:1h").name == "candles:ETHUSDT:1h"
    assert parse_channel("agentexchange", "Orders").name == "orders"
    assert parse_channel("tastytrade", "quote-alerts").name == "quote-alerts"
    with pytest.raises(ChannelError, match="unknown venue 'kraken'"):
        parse_channel("kraken", "orders")


def test_defaults_are_the_sim_and_its_demo_credentials() -> None:
    ae = resolve_options(
        "agentexchange", ["orders", "orders"], url=None, credential=None, account=None, environ={}
    )
    assert (ae.url, ae.credential, len(ae.channels)) == ("ws://127.0.0.1:8000", DEMO_API_KEY, 1)
    tt = resolve_options(
        "tastytrade", ["orders"], url=None, credential=None, account=None, environ={}
    )
    assert (tt.url, tt.credential, tt.account) == (
        "ws://127.0.0.1:8000/tastytrade",
        "Bearer tasty_demo_agentstream",
        TASTYTRADE_DEMO_ACCOUNT,
    )
    env = {"TRADIER_TOKEN": "t0k", "TRADIER_ACCOUNT": "VA9", "TRADIER_BASE_URL": "http://h:1"}
    tr = resolve_options(
        "tradier", ["orders"], url=None, credential=None, account=None, environ=env
    )
    assert (tr.url, tr.credential, tr.account) == ("http://h:1", "t0k", "VA9")
    # The command line wins over the environment.
    tr = resolve_options(
        "tradier", ["orders"], url="http://x:2", credential="c", account="A", environ=env
    )
    assert (tr.url, tr.credential, tr.account) == ("http://x:2", "c", "A")


def test_agentexchange_url_from_either_variable() -> None:
    def url(env: dict[str, str]) -> str:
        opts = resolve_options(
            "agentexchange", ["orders"], url=None, credential=None, account=None, environ=env
        )
        return opts.url

    # The client's own variable is honoured (a new user had set it, not the examples').
    assert url({"AGENTSTREAM_BASE_URL": "ws://127.0.0.1:1"}) == "ws://127.0.0.1:1"
    both = {"AGENTSTREAM_BASE_URL": "ws://127.0.0.1:1", "AGENTEXCHANGE_WS_URL": "ws://h:2"}
    assert url(both) == "ws://h:2"


def test_run_of_a_missing_or_broken_script_says_so_in_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("x = (\n")
    for script, said in (
        (tmp_path / "missing.py", ": No such file or directory"),
        (broken, " (line 1): '(' was never closed"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "agentstream", "run", str(script)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == f"agentstream run: {script}{said}"
        assert "Traceback" not in proc.stderr


# -- Ctrl-C where we own the loop -------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT semantics")
async def test_ctrl_c_stops_agentstream_run_in_one_line(tmp_path: Path) -> None:
    script = tmp_path / "bot.py"
    script.write_text(
        "import sys\n"
        "from agentstream import AgentExchangeWS\n"
        f"ws = AgentExchangeWS({DEMO_API_KEY!r}, sys.argv[1])\n"
        "ws.on_ticker('BTCUSDT', lambda d: print('price', d['price'], flush=True))\n"
        "await ws.connect()\n"  # the script's own loop, under `agentstream run`
    )
    async with (
        fast_sim() as sim,
        spawn(
            "agentstream run",
            [sys.executable, "-m", "agentstream", "run", str(script), sim.url],
            env=tail_env(),
        ) as run,
    ):
        await run.expect(r"price \d")
        assert await run.interrupt() == 130
    lines = run.stderr.strip().splitlines()
    assert lines[-1] == "agentstream run: stopped (Ctrl-C)", run.report()
    # Under the command line the client says that it connected (its INFO lines).
    assert any(line.endswith("connection 1: connected") for line in lines), run.report()
    assert "Traceback" not in run.stderr, run.report()
