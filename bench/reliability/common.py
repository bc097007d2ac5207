"""Shared pieces of the reliability figures: the result type, waiting, timing, processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio

from bench.sim_firehose import start_server, stop_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

__all__ = [
    "Figure",
    "Options",
    "firehose_server",
    "rss_bytes",
    "wait_until",
]


@dataclass
class Options:
    """What to run and how big (from the command line)."""

    disconnects: int = 200
    blackhole_trials: int = 10
    fuzz_frames: int = 1_000_000
    hypothesis_frames: int = 20_000
    orders: int = 1000
    soak_seconds: float = 600.0
    #: Not ``-x``: a failing test must not cut the audit short.
    suite_args: tuple[str, ...] = ("-q", "-p", "no:cacheprovider")
    seed: int = 20260223


@dataclass
class Figure:
    """One measured figure: what was measured against which target, and whether it met it.

    ``passed`` is None when the figure could not be measured (it is then neither a pass
    nor a failure of the client).
    """

    name: str
    measured: str
    target: str
    passed: bool | None
    seconds: float = 0.0
    details: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "N/A"}[self.passed]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measured": self.measured,
            "target": self.target,
            "verdict": self.verdict,
            "seconds": round(self.seconds, 2),
            "details": self.details,
            "data": self.data,
        }


async def wait_until(cond: Callable[[], object], timeout: float, poll: float = 0.002) -> bool:
    """Poll ``cond`` until it is true (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await anyio.sleep(poll)
    return True


def rss_bytes() -> int:
    """Resident set size of this process, from ``/proc/self/statm``."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.asynccontextmanager
async def firehose_server() -> AsyncIterator[tuple[str, str]]:
    """``agentstream serve --firehose`` in its own process: yields (ws URL, REST URL).

    Started and stopped with :mod:`bench.sim_firehose`'s functions.
    """
    proc, url = await start_server()
    try:
        yield url, "http" + url.removeprefix("ws")
    finally:
        rc = await stop_server(proc)
        if rc not in (0, -2):
            logging.getLogger("bench").warning("firehose server exited with %s", rc)


async def rest(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    key: str,
    body: dict[str, Any] | None = None,
) -> tuple[int, Any]:
    """One REST call with the API key; returns (status, JSON body)."""
    async with session.request(method, url, json=body, headers={"X-API-Key": key}) as r:
        return r.status, await r.json()


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "?"
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def all_tasks() -> int:
    return len(asyncio.all_tasks())


def stacks() -> list[str]:
    """Where every asyncio task and thread is now (for a figure that stalled)."""
    import sys
    import traceback

    out: list[str] = []
    for task in asyncio.all_tasks():
        frames = task.get_stack(limit=4)
        where = " <- ".join(
            f"{f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno} {f.f_code.co_name}"
            for f in reversed(frames)
        )
        out.append(f"task {task.get_name()}: {where}")
    for ident, frame in sys._current_frames().items():
        summary = traceback.extract_stack(frame, limit=4)
        where = " <- ".join(f"{s.filename.rsplit('/', 1)[-1]}:{s.lineno} {s.name}" for s in summary)
        out.append(f"thread {ident}: {where}")
    return out


@contextlib.asynccontextmanager
async def watchdog(seconds: float, report: list[str]) -> AsyncIterator[anyio.CancelScope]:
    """Cancel the block after ``seconds``, recording every task's stack in ``report`` first.

    The block's scope is yielded: ``scope.cancelled_caught`` tells whether it stalled.
    """
    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as scope:

            async def guard() -> None:
                await anyio.sleep(seconds)
                report.append(f"stalled: still running after {seconds:g} s; stacks:")
                report.extend(stacks())
                scope.cancel()

            tg.start_soon(guard)
            try:
                yield scope
            finally:
                tg.cancel_scope.cancel()


def session() -> aiohttp.ClientSession:
    """An HTTP session for the sim's REST API, each request bounded to 30 s."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
