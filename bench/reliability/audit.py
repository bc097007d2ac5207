"""The secrets figure: the whole test suite at DEBUG level, audited for the API key.

The audit itself is a session plugin of the test suite (``tests/conftest.py``): when
``AGENTSTREAM_SECRET_AUDIT`` names a file, it checks every log record, repr and
exception text of the session for the keys used and writes
``{"records_checked": N, "leaks": K, "examples": [...]}`` there at the end. This figure
runs the suite in a subprocess with that variable set and reads the file.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.reliability.common import Figure, Options

__all__ = ["run_secrets"]

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 1800.0


async def run_secrets(opts: Options) -> Figure:
    cmd = [sys.executable, "-m", "pytest", *opts.suite_args]
    fig = Figure(
        "secrets",
        "",
        "0 appearances of the API key in log records, reprs, exception texts",
        None,
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="agentstream-audit-") as tmp:
        audit = Path(tmp) / "audit.json"
        env = {**os.environ, "AGENTSTREAM_SECRET_AUDIT": str(audit)}
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        except TimeoutError:
            proc.kill()
            out, _ = await proc.communicate()
        rc = proc.returncode
        lines = out.decode(errors="replace").strip().splitlines()
        summary = lines[-1] if lines else ""
        report = json.loads(audit.read_text()) if audit.exists() else None
    fig.seconds = time.perf_counter() - t0
    shown = " ".join(["python", "-m", "pytest", *opts.suite_args])
    fig.details = [f"AGENTSTREAM_SECRET_AUDIT=<file> {shown}  ->  exit {rc}: {summary}"]
    if report is None:
        fig.measured = "not measured (audit plugin missing: no report written)"
        fig.passed = None
        return fig
    checked = int(report.get("records_checked", 0))
    leaks = int(report.get("leaks", 0))
    fig.measured = f"{leaks} leaks in {checked:,} records checked"
    fig.passed = leaks == 0 and checked > 0
    if rc != 0:
        fig.details.append(
            "the suite had failures; every test still ran and was audited (a test during "
            "which a key leaked fails by itself, and is counted in the leaks)"
        )
        fig.details += [f"  {line[:160]}" for line in lines if line.startswith("FAILED")][:10]
    for ex in report.get("examples", [])[:5]:
        fig.details.append(f"leak: {str(ex)[:200]}")
    fig.data = {"exit": rc, "summary": summary, **report}
    return fig
