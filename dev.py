#!/usr/bin/env python3
"""One entry point for working on agentstream: ``python3 dev.py demo | test | bench``.

Standard library only, so it runs on a fresh machine with nothing but Python. It creates
(or reuses) a virtual environment in ``.venv`` and installs the project with its ``dev``
extra whenever ``pyproject.toml`` changed since the last install, then runs the command
inside that environment.

    python3 dev.py demo            # live demo against the built-in simulated exchange
    python3 dev.py test            # lint, type check, the whole test suite, the docs site
    python3 dev.py docs            # build the docs site (docs/_build/html/index.html)
    python3 dev.py bench [ARGS]    # benchmarks (see docs/performance.md)
    python3 dev.py bench reliability  # the reliability figures (docs/reliability.md)
    python3 dev.py serve [ARGS]    # the simulated exchange on its own (agentstream serve)
    python3 dev.py run FILE        # run a script, top-level await allowed (agentstream run)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("AGENTSTREAM_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".agentstream-install"


def _say(msg: str) -> None:
    print(f"[dev] {msg}", flush=True)


def ensure_env() -> None:
    """Create the virtual environment and (re)install the project if needed."""
    if not PY.exists():
        _say(f"creating virtual environment in {VENV}")
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    _say("installing agentstream and its dev tools into the environment")
    pip = [str(PY), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(wanted + "\n")


def run(*cmd: str) -> int:
    _say("$ " + " ".join(cmd))
    return subprocess.run(cmd, cwd=ROOT).returncode


DOCS = ROOT / "docs"
DOCS_HTML = DOCS / "_build" / "html"


def sphinx_cmd() -> list[str]:
    """Build the docs site offline, every warning (nitpicky: every broken reference) an error.

    ``-E`` reads every page again: an incremental build would not repeat the warnings of
    the pages it skips, and a second run would pass with them still there.
    """
    return [
        str(PY), "-m", "sphinx", "-b", "html", "-E", "-W", "--keep-going", "-n", "-q",
        "-d", str(DOCS / "_build" / "doctrees"), str(DOCS), str(DOCS_HTML),
    ]  # fmt: skip


def cmd_docs(args: list[str]) -> int:
    rc = run(*sphinx_cmd(), *args)
    if rc == 0:
        _say(f"docs built: {DOCS_HTML / 'index.html'}")
    return rc


def cmd_test(args: list[str]) -> int:
    steps: list[tuple[str, list[str]]] = [
        ("ruff check", [str(PY), "-m", "ruff", "check", "."]),
        ("ruff format", [str(PY), "-m", "ruff", "format", "--check", "."]),
        ("mypy --strict", [str(PY), "-m", "mypy"]),
        ("docs", sphinx_cmd()),
        ("pytest", [str(PY), "-m", "pytest", *args]),
    ]
    failed = [name for name, cmd in steps if run(*cmd) != 0]
    if failed:
        _say("FAILED: " + ", ".join(failed))
        return 1
    _say("all checks passed")
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    ensure_env()
    if command == "test":
        return cmd_test(rest)
    if command == "docs":
        return cmd_docs(rest)
    if command in {"demo", "serve", "run"}:
        try:
            return run(str(PY), "-m", "agentstream", command, *rest)
        except KeyboardInterrupt:
            return 130
    if command == "bench":
        return run(str(PY), "-m", "bench", *rest)
    print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
