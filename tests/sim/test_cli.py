"""``agentstream serve``: a subprocess that starts in under 2 s and stops cleanly on Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import anyio
import pytest
from anyio.streams.text import TextReceiveStream

from agentstream.cli import _sim_config, build_parser
from agentstream.sim import (
    DEMO_API_KEY,
    INTERVAL_MS,
    PLACEHOLDER_API_KEY,
    REAL_SERVER_INTERVALS,
    SimConfig,
)
from tests.sim.helpers import expect_end, on, recv_until, subscribe

if TYPE_CHECKING:
    from anyio.abc import Process

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
URL = re.compile(r"(ws://127\.0\.0\.1:(\d+))/ws/v1\b")


async def first_line(proc: Process) -> str:
    assert proc.stdout is not None
    buf = ""
    async for chunk in TextReceiveStream(proc.stdout):
        buf += chunk
        if "\n" in buf:
            return buf.split("\n", 1)[0]
    raise AssertionError(f"the server exited before printing a line: {buf!r}")


async def stop(proc: Process) -> tuple[int, str]:
    """SIGINT the server; return its exit code and what it wrote on stderr."""
    proc.send_signal(signal.SIGINT)
    with anyio.fail_after(5):
        rc = await proc.wait()
    assert proc.stderr is not None
    err = b"".join([chunk async for chunk in proc.stderr]).decode()
    return rc, err


async def test_serve_starts_fast_serves_and_exits_cleanly_on_sigint(
    session: aiohttp.ClientSession,
) -> None:
    t0 = time.monotonic()
    proc = await anyio.open_process(
        [sys.executable, "-m", "agentstream", "serve", "--port", "0", "--speed", "60"], cwd=ROOT
    )
    try:
        with anyio.fail_after(5):
            line = await first_line(proc)
        started = time.monotonic() - t0
        match = URL.search(line)
        assert match, line
        assert started < 2.0, f"startup took {started:.2f} s"
        base = match.group(1)
        assert int(match.group(2)) > 0
        http = base.replace("ws://", "http://")
        async with session.get(f"{http}/api/v1/market/price/BTCUSDT") as r:
            assert r.status == 200
        async with session.ws_connect(f"{base}/ws/v1?api_key={DEMO_API_KEY}") as ws:
            await subscribe(ws, channel="ticker", symbol="BTCUSDT")
            await recv_until(ws, on("ticker", symbol="BTCUSDT"))
            # Ctrl-C with a client connected: the server stops at once and cleanly.
            t1 = time.monotonic()
            rc, err = await stop(proc)
            assert time.monotonic() - t1 < 2.0
            assert rc == 0, err
            assert "Traceback" not in err
            await expect_end(ws)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.aclose()


async def test_serve_options_reach_the_server(session: aiohttp.ClientSession) -> None:
    proc = await anyio.open_process(
        [
            sys.executable,
            "-m",
            "agentstream",
            "serve",
            "--port",
            "0",
            "--key",
            "ak_cli",
            "--cash",
            "777",
            "--subscription-limit",
            "1",
            "--auth-failure",
            "close",
            "--real-intervals",
        ],
        cwd=ROOT,
    )
    try:
        with anyio.fail_after(5):
            match = URL.search(await first_line(proc))
        assert match
        base = match.group(1)
        async with session.ws_connect(f"{base}/ws/v1?api_key={DEMO_API_KEY}") as bad:
            end = await bad.receive(timeout=2)
            assert (end.type, end.data) == (aiohttp.WSMsgType.CLOSE, 4401)
        async with session.ws_connect(f"{base}/ws/v1?api_key=ak_cli") as ws:
            assert (await subscribe(ws, channel="orders"))["type"] == "subscribed"
            assert (await subscribe(ws, channel="portfolio"))["code"] == "SUBSCRIPTION_LIMIT"
            refused = await subscribe(ws, channel="candles", symbol="BTCUSDT", interval="15m")
            assert (refused["code"], refused["message"]) == (
                "INVALID_CHANNEL",
                "Channel 'candles' requires .",
            )
        async with session.get(
            f"{base.replace('ws://', 'http://')}/api/v1/account/portfolio",
            headers={"X-API-Key": "ak_cli"},
        ) as r:
            assert Decimal((await r.json())["available_cash"]) == Decimal("777")
        rc, err = await stop(proc)
        assert rc == 0, err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.aclose()


def test_serve_defaults_to_port_8000_and_the_platform_settings() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    assert (args.ping_interval, args.pong_timeout, args.subscription_limit) == (30.0, 10.0, 10)
    assert args.auth_failure == "http" and args.firehose is False
    assert build_parser().parse_args(["serve", "--firehose"]).firehose is True


def serve_config(*argv: str) -> SimConfig:
    return _sim_config(build_parser().parse_args(["serve", *argv]))


def test_serve_defaults_match_the_sim_defaults() -> None:
    config, default = serve_config(), SimConfig()
    # The SDK page's placeholder key is the demo account's other name, unless --key.
    assert config.api_key_aliases == default.api_key_aliases == {PLACEHOLDER_API_KEY: DEMO_API_KEY}
    assert set(config.api_keys) == {DEMO_API_KEY}
    assert set(serve_config("--key", "ak_mine").api_keys) == {"ak_mine"}
    assert config.candle_intervals == default.candle_intervals == tuple(INTERVAL_MS)
    assert config.private_to_all_sockets is default.private_to_all_sockets is True
    assert config.sparse_order_events is default.sparse_order_events is False


def test_serve_real_server_flags() -> None:
    assert serve_config("--real-intervals").candle_intervals == REAL_SERVER_INTERVALS
    assert serve_config("--candle-intervals", "1m, 5m,1h,5m").candle_intervals == (
        "1m",
        "5m",
        "1h",
    )
    assert serve_config("--private-to-subscribers").private_to_all_sockets is False
    assert serve_config("--sparse-order-events").sparse_order_events is True
    # The demo has none of these flags, and gets the defaults.
    demo = _sim_config(build_parser().parse_args(["demo"]))
    assert (demo.candle_intervals, demo.private_to_all_sockets, demo.sparse_order_events) == (
        tuple(INTERVAL_MS),
        True,
        False,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--candle-intervals", "1m,2m"],
        ["--candle-intervals", ","],
        ["--real-intervals", "--candle-intervals", "1m"],
    ],
)
def test_serve_refuses_bad_interval_flags(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["serve", *argv])
    assert exc.value.code == 2
    assert "interval" in capsys.readouterr().err


def test_version_and_clean_help(capsys: pytest.CaptureFixture[str]) -> None:
    import agentstream
    from agentstream.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"agentstream {agentstream.__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text  # no raw reStructuredText in the help
    assert "run" in text and "serve" in text and "demo" in text


def test_run_passes_the_scripts_arguments(tmp_path: Path) -> None:
    script = tmp_path / "bot.py"
    script.write_text(
        "import sys, asyncio\n"
        "await asyncio.sleep(0)\n"  # top-level await, as `agentstream run` allows
        "print('argv', sys.argv[1:])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "agentstream", "run", str(script), "--dry-run", "3"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "argv ['--dry-run', '3']"
