"""Every file in examples/ runs as its header says, against a real simulated exchange.

The seed page's snippets are its code (only the import line differs). Each example's
header gives the command that runs it (a ``$ ...`` line after ``$ agentstream serve``);
the test runs exactly that command in a subprocess, from the repository root, with
``python`` as ``sys.executable``. The only help it gets is where the sim is (a free
port, not 8000): ``AGENTSTREAM_BASE_URL``, ``AGENTEXCHANGE_WS_URL`` and the Tradier and
tastytrade URLs. Keys come from the header's command or the sim's defaults (the page's
placeholder ``ak_live_...`` is the demo account). Long-running examples are read until
their expected output appears, then terminated and reaped; the others must exit by
themselves with status 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from decimal import Decimal
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import pytest

from agentstream.sim import DEMO_API_KEY, PLACEHOLDER_API_KEY, SimExchange
from tests.proc import DEADLINE, ROOT, Proc, spawn

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

EXAMPLES = ROOT / "examples"
#: The key the seed page's snippets hard-code: the sim's default alias of the demo key.
PAGE_KEY = PLACEHOLDER_API_KEY


@contextlib.asynccontextmanager
async def exchange() -> AsyncIterator[SimExchange]:
    """A fast sim on a free port, with the default keys (demo key and its page alias)."""
    async with SimExchange(
        port=0,
        speed=120,
        tick_rate=1000,
        step_interval=0.01,
        order_interval=0.05,
        portfolio_interval=0.5,
        ping_interval=0.5,
        pong_timeout=2,
    ) as sim:
        yield sim


def example_env(sim: SimExchange) -> dict[str, str]:
    """The test's environment, minus anything that could stand in for the header's
    instructions (keys, tokens, URLs), plus where the sim listens."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENTSTREAM_", "AGENTEXCHANGE_", "TRADIER_", "TASTYTRADE_"))
    }
    paths = [str(ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env.update(
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(paths),
        AGENTSTREAM_BASE_URL=sim.url,
        AGENTEXCHANGE_WS_URL=sim.url,
        TRADIER_BASE_URL=sim.http_url,
        TASTYTRADE_URL=sim.url + "/tastytrade",
        TASTYTRADE_API=sim.http_url,
    )
    return env


_COMMAND = re.compile(r"^\s*#?\s*\$ (.+)$", re.M)


def header_commands(name: str) -> list[str]:
    """The ``$ ...`` command lines of an example's header, in order."""
    return _COMMAND.findall((EXAMPLES / name).read_text(encoding="utf-8"))


def command(name: str) -> tuple[list[str], dict[str, str]]:
    """The header's command that runs ``examples/name`` (the last ``$`` line; the one
    before it, if any, starts the server): its argv, and the variables it sets."""
    commands = header_commands(name)
    assert commands, f"{name}: no `$ ...` command line in its header"
    assert all(c.startswith("agentstream serve") for c in commands[:-1]), commands
    words = shlex.split(commands[-1], comments=True)
    env: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    program, *args = words
    if program == "python":
        argv = [sys.executable, *args]
    elif program == "agentstream":
        argv = [sys.executable, "-m", "agentstream", *args]
    else:
        raise AssertionError(f"{name}: unexpected program {program!r}")
    assert f"examples/{name}" in args, f"{name}: its command runs another file: {args}"
    return argv, env


Example = Proc


@contextlib.asynccontextmanager
async def run_example(
    name: str, sim: SimExchange, *, stdin: int = subprocess.DEVNULL
) -> AsyncIterator[Example]:
    """Run ``examples/name`` as its header says; on the way out stop it (if alive) and
    reap it."""
    argv, extra = command(name)
    async with spawn(name, argv, env={**example_env(sim), **extra}, stdin=stdin) as ex:
        yield ex


async def wait_until(cond: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await anyio.sleep(0.02)


def subscribed(sim: SimExchange, *keys: str) -> Callable[[], bool]:
    return lambda: any(set(keys) <= subs for subs in sim.subscriptions())


def test_every_example_is_covered() -> None:
    covered = {
        *SELF_EXITING,
        *STREAMING,
        "channels.py",
        "async_event_loop.py",
        "run_forever.py",
        "agent_setup.py",
        "agent_tool.py",
    }
    assert len(covered) == 11
    assert {p.name for p in EXAMPLES.glob("*.py")} == covered


def test_every_header_says_how_to_run_it() -> None:
    for path in EXAMPLES.glob("*.py"):
        argv, env = command(path.name)
        assert argv[0] == sys.executable
        # A key the seed's code reads from the environment is set on the command line.
        if 'os.environ["AGENTEXCHANGE_API_KEY"]' in path.read_text(encoding="utf-8"):
            assert env == {"AGENTEXCHANGE_API_KEY": DEMO_API_KEY}, path.name
        if path.name not in ("construction.py", "price_stream.py"):  # they connect nowhere
            assert header_commands(path.name)[0].startswith("agentstream serve"), path.name


SELF_EXITING = [
    "construction.py",
    "price_stream.py",
    "tradier_orders.py",
    "tastytrade_orders.py",
]


@pytest.mark.anyio
@pytest.mark.parametrize("name", SELF_EXITING)
async def test_example_exits_cleanly(name: str) -> None:
    async with exchange() as sim, run_example(name, sim) as ex:
        code = await ex.exited()
        assert code == 0, ex.report()
        assert "Traceback" not in ex.stderr, ex.report()


STREAMING = {
    "connect.py": r"BTC: \$\d+(\.\d+)?\n",
    "decorators.py": r"BTC: \$\d+(\.\d+)?\n",
}


@pytest.mark.anyio
async def test_tradier_example_follows_its_order_to_the_fill() -> None:
    async with exchange() as sim, run_example("tradier_orders.py", sim) as ex:
        m = await ex.expect(r"order (\d+): filled +buy 2(\.0+)? AAPL filled 2(\.0+)? @ \d")
        assert int(m.group(1)) > 0
        assert await ex.exited() == 0, ex.report()


@pytest.mark.anyio
async def test_tastytrade_example_follows_its_order_to_the_fill() -> None:
    async with exchange() as sim, run_example("tastytrade_orders.py", sim) as ex:
        await ex.expect(r"order (\d+): Filled +AAPL Buy to Open 1")
        assert await ex.exited() == 0, ex.report()


@pytest.mark.anyio
async def test_decorators_example_every_handler() -> None:
    async with exchange() as sim, run_example("decorators.py", sim) as ex:
        await ex.expect(r"BTC: \$\d+(\.\d+)?\n")
        await ex.expect(r"ETH: \$\d+(\.\d+)?\n")
        await wait_until(subscribed(sim, "orders", "portfolio"), "orders and portfolio")
        order = await sim.place_order(
            PAGE_KEY, symbol="ETHUSDT", side="buy", type="market", quantity="0.1"
        )
        # The page's f-string has no separator between the id and the status.
        await ex.expect(re.escape(f"Order {order['order_id']}filled") + r"\n")
        m = await ex.expect(r"Equity: \$(\d+(\.\d+)?)\n")
        assert Decimal(m.group(1)) > 0
        assert ex.returncode() is None, ex.report()


@pytest.mark.anyio
@pytest.mark.parametrize(("name", "pattern"), sorted(STREAMING.items()))
async def test_streaming_example_prints_prices(name: str, pattern: str) -> None:
    async with exchange() as sim, run_example(name, sim) as ex:
        await ex.expect(pattern)
        assert ex.returncode() is None, "it must keep running"
        assert sim.open_connections(), "it must still be connected"
    # Terminated by the harness, not crashed.
    assert ex.returncode() == -signal.SIGTERM, ex.report()
    assert "Traceback" not in ex.stderr, ex.report()


@pytest.mark.anyio
async def test_channels_example() -> None:
    async with exchange() as sim, run_example("channels.py", sim) as ex:
        await ex.expect(r"SOLUSDT: \$\d+(\.\d+)?\n")
        await wait_until(subscribed(sim, "orders", "portfolio"), "orders and portfolio")
        order = await sim.place_order(
            PAGE_KEY, symbol="BTCUSDT", side="buy", type="market", quantity="0.01"
        )
        order_id = str(order["order_id"])
        await ex.expect(r"1m candle closed at \$\d+(\.\d+)?\n")
        await ex.expect(re.escape(f"Order {order_id}: filled") + r"\n")
        await ex.expect(r"  Filled at: \$\d+(\.\d+)?\n")
        m = await ex.expect(r"Equity: \$(\d+(\.\d+)?)  ROI: (-?\d+(\.\d+)?|None)%\n")
        assert Decimal(m.group(1)) > 0
        # The `all` handler prints nothing; only SOLUSDT prices are printed as tickers.
        tickers = re.findall(r"^([A-Z0-9]+): \$", ex.stdout, re.M)
        assert set(tickers) == {"SOLUSDT"}, ex.stdout[-2000:]
        assert ex.returncode() is None, ex.report()


@pytest.mark.anyio
async def test_async_event_loop_example() -> None:
    async with exchange() as sim, run_example("async_event_loop.py", sim) as ex:
        await wait_until(subscribed(sim, "ticker:all", "orders"), "ticker_all and orders")
        await sim.place_order(
            DEMO_API_KEY, symbol="BTCUSDT", side="buy", type="market", quantity="0.01"
        )
        m = await ex.expect(r"\[FILL\] BTCUSDT buy (\S+) @ (\S+)\n")
        assert Decimal(m.group(1)) == Decimal("0.01")
        assert Decimal(m.group(2)) > 0
        assert ex.returncode() is None, ex.report()


@pytest.mark.anyio
async def test_agent_setup_fills_the_cache_for_a_later_read_under_python_i() -> None:
    async with exchange() as sim, run_example("agent_setup.py", sim, stdin=subprocess.PIPE) as ex:
        stdin = ex.process.stdin
        assert stdin is not None
        # What its header shows, typed "later": wait for the feed, then read the cache.
        await stdin.send(
            b"import time\n"
            b"while get_cached_price('BTCUSDT') is None: time.sleep(0.05)\n"
            b"\n"
            b"print('cached', get_cached_price('BTCUSDT'))\n"
        )
        m = await ex.expect(r"cached (\d+\.\d+)\n")
        assert Decimal(m.group(1)) > 0
        await stdin.aclose()  # Ctrl-D: leave the interpreter
        assert await ex.exited() == 0, ex.report()
    # As printed on the page, the snippet itself read the cache too early: no line of its.
    assert "BTC (from cache)" not in ex.stdout, ex.report()
    assert "Traceback" not in ex.stderr, ex.report()


@pytest.mark.anyio
async def test_run_forever_prints_in_the_background_under_python_i() -> None:
    async with exchange() as sim, run_example("run_forever.py", sim, stdin=subprocess.PIPE) as ex:
        await ex.expect(r"BTC: \$\d+(\.\d+)?\n")
        assert ex.returncode() is None, "the interpreter keeps it alive"
        stdin = ex.process.stdin
        assert stdin is not None
        await stdin.aclose()  # Ctrl-D: leave the interpreter
        assert await ex.exited() == 0, ex.report()
    assert "Traceback" not in ex.stderr, ex.report()


@pytest.mark.anyio
async def test_agent_tool_buys_from_the_cached_price_and_respects_its_limit() -> None:
    async with exchange() as sim, run_example("agent_tool.py", sim) as ex:
        assert await ex.exited() == 0, ex.report()
        bought, refused = (json.loads(line) for line in ex.stdout.splitlines())
        # The order is real: the sim's demo account (the tool's default key) holds it.
        order = sim.accounts[DEMO_API_KEY].orders[bought["order_id"]].event()
    assert bought["ok"] is True, bought
    assert (bought["symbol"], bought["status"], order["status"]) == ("BTCUSDT", "filled", "filled")
    assert Decimal(bought["executed_quantity"]) == Decimal("0.01")
    assert Decimal(bought["executed_price"]) == Decimal(order["executed_price"])
    assert Decimal(bought["cached_price"]) > 0
    assert refused["ok"] is False
    assert "above the limit 1: nothing bought" in refused["error"]
    assert len(sim.accounts[DEMO_API_KEY].orders) == 1, "the refused call placed nothing"
    assert "Traceback" not in ex.stderr, ex.report()


@pytest.mark.anyio
@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT semantics")
async def test_ctrl_c_stops_run_forever_in_one_line(tmp_path: Path) -> None:
    script = tmp_path / "bot.py"
    script.write_text(
        "import sys\n"
        "from agentstream import AgentExchangeWS\n"
        "ws = AgentExchangeWS('ak_demo_agentstream', sys.argv[1])\n"
        "ws.on_ticker('BTCUSDT', lambda d: None)\n"
        "ws.on_connect(lambda: print('connected', flush=True))\n"
        "ws.run_forever()\n"
        "print('after run_forever', flush=True)\n"
    )
    async with exchange() as sim, spawn("bot.py", [sys.executable, str(script), sim.url]) as ex:
        await ex.expect("connected\n")
        assert await ex.interrupt() == 0, ex.report()
    assert "after run_forever" in ex.stdout, ex.report()
    assert ex.stderr.strip() == "Ctrl-C: stopping", ex.report()
