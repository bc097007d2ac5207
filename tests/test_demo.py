"""The README's first command: the demo prints live prices, candles, orders and portfolio."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest


def test_demo_prints_every_kind_of_event_and_exits_cleanly() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agentstream", "demo", "--seconds", "6", "--speed", "120"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in ("price   BTCUSDT", "candle  ETHUSDT", "market: filled", "equity", "stopped:"):
        assert needle in out, f"{needle!r} missing from the demo output:\n{out}"
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT semantics")
def test_demo_stops_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentstream", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 10
        while "price" not in proc.stdout.readline():
            assert time.monotonic() < deadline, "the demo printed no price"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=5)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped:" in out
    assert "Traceback" not in err
