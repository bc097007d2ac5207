"""A command run as a user runs it, in a subprocess: what it prints, waited for by pattern.

Shared by the tests of the examples and of the command line.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import pytest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 15.0


class Proc:
    """A running process and everything it printed so far."""

    def __init__(self, name: str, process: anyio.abc.Process) -> None:
        self.name = name
        self.process = process
        self.stdout = ""
        self.stderr = ""

    async def _read(self, stream: anyio.abc.ByteReceiveStream | None, attr: str) -> None:
        assert stream is not None
        with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
            async for chunk in stream:
                setattr(self, attr, getattr(self, attr) + chunk.decode(errors="replace"))

    def returncode(self) -> int | None:
        """The exit status, or None while it runs (a method: mypy must not narrow it)."""
        return self.process.returncode

    def report(self) -> str:
        return (
            f"{self.name} (return code {self.process.returncode})\n"
            f"--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}"
        )

    async def expect(
        self, pattern: str, *, on: str = "stdout", timeout: float = DEADLINE
    ) -> re.Match[str]:
        """Wait until stdout (or stderr) matches ``pattern``; fail the test otherwise."""
        regex = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            if (m := regex.search(getattr(self, on))) is not None:
                return m
            if self.process.returncode is not None:
                await anyio.sleep(0.1)  # let the readers drain the pipes
                if (m := regex.search(getattr(self, on))) is not None:
                    return m
                pytest.fail(f"exited before printing {pattern!r} on {on}: {self.report()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} on {on} within {timeout} s: {self.report()}")
            await anyio.sleep(0.02)

    async def exited(self, timeout: float = DEADLINE) -> int:
        """Wait for the process to exit by itself; return its code."""
        with anyio.move_on_after(timeout):
            code = await self.process.wait()
            await anyio.sleep(0.05)  # let the readers drain the pipes
            return code
        pytest.fail(f"did not exit within {timeout} s: {self.report()}")

    async def interrupt(self) -> int:
        """Ctrl-C, as a terminal sends it: SIGINT; return the exit code."""
        self.process.send_signal(signal.SIGINT)
        return await self.exited()


@contextlib.asynccontextmanager
async def spawn(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: int = subprocess.DEVNULL,
) -> AsyncIterator[Proc]:
    """Run ``argv`` from the repository root, reading its output; on the way out
    terminate it (kill it after 5 s) and reap it.

    It runs in a session of its own: a test runner may ignore SIGINT in its children,
    and Ctrl-C (:meth:`Proc.interrupt`) must reach this one.
    """
    process = await anyio.open_process(
        list(argv),
        cwd=ROOT,
        env=env,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    async with process:
        proc = Proc(name, process)
        async with anyio.create_task_group() as tg:
            tg.start_soon(proc._read, process.stdout, "stdout")
            tg.start_soon(proc._read, process.stderr, "stderr")
            try:
                yield proc
            finally:
                with anyio.CancelScope(shield=True):
                    if process.returncode is None:
                        process.terminate()
                        with anyio.move_on_after(5):
                            await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
    assert process.returncode is not None  # reaped
