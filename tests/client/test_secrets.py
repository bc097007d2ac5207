"""The API key never shows up in logs, exceptions, reprs or stats.

A real client session against the simulated exchange at DEBUG level walks every path
that formats a URL or an error: connect, subscribe, a server-refused channel, a garbage
frame, a failing handler, a dropped connection and the reconnect, a handshake refused
with 503, a stale connection, the key revoked mid-session (close 4401), and a different
wrong key refused with 403. Every log record, every exception (with its whole
``__cause__`` / ``__context__`` chain, suppressed or not), ``repr(ws)`` and the stats are
then searched for either key.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from agentstream import (
    AgentExchangeWS,
    AuthenticationError,
    DecodeError,
    HandlerError,
    HandshakeError,
    ServerError,
    StaleConnectionError,
)
from agentstream.sim import SimExchange

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

#: Distinctive keys: if any of these strings shows up anywhere, the key leaked.
KEY = "ak_live_SECRETKEY0123456789abcdefXYZ"
WRONG_KEY = "ak_live_WRONGKEY9876543210fedcbaQRS"
#: Parts of the keys that no masked form may show (a mask keeps 4 + 3 characters).
FRAGMENTS = ("SECRETKEY0123456789", "WRONGKEY9876543210", "0123456789abcdef", "9876543210fedcba")

OPTIONS: dict[str, Any] = {
    "stale_timeout": 1.0,
    "backoff_initial": 0.05,
    "backoff_max": 0.2,
    "backoff_jitter": 0.0,
    "connect_timeout": 2.0,
    "close_timeout": 0.2,
}


async def wait_until(cond: Callable[[], object], what: str, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await anyio.sleep(0.01)


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes and contexts (suppressed ones too), and group members."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)


def exception_texts(label: str, exc: BaseException, *, chain: bool = True) -> list[tuple[str, str]]:
    """Texts of ``exc`` as printed, and with ``chain`` of every exception chained to it."""
    out = [(f"{label} traceback", "".join(traceback.format_exception(exc)))]
    for e in exception_chain(exc) if chain else [exc]:
        name = f"{label} -> {type(e).__name__}"
        out += [
            (f"{name} str", str(e)),
            (f"{name} repr", repr(e)),
            (f"{name} args", repr(e.args)),
            (f"{name} attributes", repr(getattr(e, "__dict__", {}))),
        ]
    return out


def record_texts(record: logging.LogRecord) -> list[tuple[str, str]]:
    label = f"log {record.name}:{record.levelname} {record.msg!r:.80}"
    out = [
        (f"{label} message", record.getMessage()),
        (f"{label} args", repr(record.args)),
        (f"{label} formatted", logging.Formatter().format(record)),
    ]
    if record.exc_info and record.exc_info[1] is not None:
        out += exception_texts(label, record.exc_info[1])
    return out


def leaks(texts: list[tuple[str, str]]) -> list[str]:
    """Where a key (or a telling part of one) appears; masked, so the report leaks nothing."""
    found = []
    for where, text in texts:
        for secret in (KEY, WRONG_KEY, *FRAGMENTS):
            at = text.find(secret)
            if at >= 0:
                excerpt = text[max(0, at - 60) : at].replace("\n", " ")
                found.append(f"{where}: ...{excerpt}<{secret[:8]}...>")
                break
    return found


def test_the_leak_detector_detects() -> None:
    err = RuntimeError("wrapped")
    err.__context__ = ValueError(f"ws://h/ws/v1?api_key={KEY}")
    err.__suppress_context__ = True
    assert leaks(exception_texts("probe", err))
    assert leaks([("x", f"...{WRONG_KEY[:-1]}")])  # a truncated key is caught by a fragment
    assert not leaks([("x", "ws://h/ws/v1?api_key=*** key=ak_l…XYZ")])


class RecordList(logging.Handler):
    """Keeps every record of every logger, at DEBUG and up."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def capture_logs() -> Iterator[RecordList]:
    """Capture every logger at DEBUG (the root and the loggers that set their own level)."""
    handler = RecordList()
    loggers = [logging.getLogger(n) for n in ("", "agentstream", "agentstream.sim", "aiohttp")]
    levels = [lg.level for lg in loggers]
    root = logging.getLogger()
    root.addHandler(handler)
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@dataclass
class Session:
    """What one client session left behind, and proof that each path was taken."""

    records: list[logging.LogRecord] = field(default_factory=list)
    #: repr(ws), str(ws), str/repr(ws.stats) at several moments, disconnect reasons.
    reprs: list[tuple[str, str]] = field(default_factory=list)
    #: Every exception the session produced, with a label.
    exceptions: list[tuple[str, BaseException]] = field(default_factory=list)
    error_contexts: list[tuple[str, str]] = field(default_factory=list)
    error_kinds: set[type[BaseException]] = field(default_factory=set)
    revoked: AuthenticationError | None = None
    refused: AuthenticationError | None = None
    wrong_error: BaseException | None = None
    disconnects: int = 0
    handshakes_refused: int = 0
    reconnects: int = 0


async def run_session() -> Session:
    out = Session()
    errors: list[tuple[BaseException, dict[str, Any]]] = []
    fatal: list[AuthenticationError] = []

    async with SimExchange(
        port=0,
        speed=120,
        tick_rate=1000,
        step_interval=0.01,
        order_interval=0.05,
        portfolio_interval=0.5,
        ping_interval=0.3,
        pong_timeout=2,
        api_keys={KEY: Decimal("10000")},
    ) as sim:
        ws = AgentExchangeWS(KEY, sim.url, **OPTIONS)
        ticks: list[dict[str, Any]] = []
        disconnects: list[str] = []

        @ws.on_ticker("BTCUSDT")
        def on_btc(data: dict[str, Any]) -> None:
            ticks.append(data)

        @ws.on_order_update()
        def on_order(data: dict[str, Any]) -> None:
            raise ValueError(f"handler failed on {data['order_id']}")

        @ws.on_error
        def on_error(exc: BaseException, context: dict[str, Any]) -> None:
            errors.append((exc, context))

        @ws.on_disconnect
        def on_disconnect(reason: str) -> None:
            disconnects.append(reason)

        async def run_client() -> None:
            try:
                await ws.connect()
            except AuthenticationError as exc:
                fatal.append(exc)

        def snapshot(label: str) -> None:
            out.reprs.extend(
                [
                    (f"repr(ws) {label}", repr(ws)),
                    (f"str(ws) {label}", str(ws)),
                    (f"str(ws.stats) {label}", str(ws.stats)),
                    (f"repr(ws.stats) {label}", repr(ws.stats)),
                ]
            )

        def seen(kind: type[BaseException]) -> Callable[[], bool]:
            return lambda: any(isinstance(e, kind) for e, _ in errors)

        snapshot("before connecting")
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_client)
            # connect + subscribe
            await wait_until(lambda: len(ticks) >= 3, "ticks on the first connection")
            snapshot("connected")
            # a channel the server refuses, and a frame that is not JSON
            ws.subscribe("ticker:NOPEUSDT")
            await wait_until(seen(ServerError), "INVALID_CHANNEL")
            sim.send_raw("this is not json")
            await wait_until(seen(DecodeError), "a dropped frame")
            # a failing handler (logged with its traceback)
            await sim.place_order(KEY, symbol="BTCUSDT", side="buy", type="market", quantity="0.01")
            await wait_until(seen(HandlerError), "a handler error")
            # a drop and the reconnect
            await sim.drop_connections()
            await wait_until(lambda: ws.stats.reconnects >= 1, "reconnect after a drop")
            n = len(ticks)
            await wait_until(lambda: len(ticks) > n, "ticks after the reconnect")
            snapshot("reconnected")
            # a handshake refused with 503, then accepted
            sim.refuse_handshakes(503, count=1)
            await sim.drop_connections(code=1012, reason="restarting")
            await wait_until(lambda: ws.stats.reconnects >= 2, "reconnect after a 503")
            # a stale connection (TCP open, nothing sent)
            sim.go_silent()
            await wait_until(lambda: ws.stats.reconnects >= 3, "reconnect after going stale")
            snapshot("after the faults")
            out.reconnects = ws.stats.reconnects
            # the key revoked mid-session: close 4401, fatal
            await sim.revoke_key(KEY)
            await wait_until(lambda: bool(fatal), "the 4401")
        snapshot("after the end")
        out.handshakes_refused = sim.stats.handshakes_refused

        # A different, wrong key: refused with 403 at the handshake.
        wrong = AgentExchangeWS(WRONG_KEY, sim.url, **OPTIONS)
        wrong.on_ticker("BTCUSDT", on_btc)
        out.reprs.append(("repr(wrong) before", repr(wrong)))
        with anyio.fail_after(5):
            try:
                await wrong.connect()
            except AuthenticationError as refused:
                out.refused = refused
        out.wrong_error = wrong.error
        out.reprs += [("repr(wrong) after", repr(wrong)), ("str(wrong.stats)", str(wrong.stats))]

    out.revoked = fatal[0]
    out.disconnects = len(disconnects)
    out.reprs += [(f"disconnect reason {i}", r) for i, r in enumerate(disconnects)]
    out.error_kinds = {type(e) for e, _ in errors}
    for i, (exc, context) in enumerate(errors):
        out.exceptions.append((f"on_error #{i} {type(exc).__name__}", exc))
        out.error_contexts.append((f"on_error #{i} context", repr(context)))
    out.exceptions.append(("connect() raised (4401)", fatal[0]))
    if out.refused is not None:
        out.exceptions.append(("connect() raised (403)", out.refused))
    return out


@pytest.fixture(scope="module")
def session() -> Session:
    """One real session (about 2 s), shared by the checks below; logs captured at DEBUG."""
    with capture_logs() as logs:
        result = anyio.run(run_session, backend="asyncio")
    result.records = logs.records
    return result


def test_session_took_every_path(session: Session) -> None:
    """Every path really happened, or the searches below prove nothing."""
    assert {
        ServerError,
        DecodeError,
        HandlerError,
        HandshakeError,
        StaleConnectionError,
    } <= session.error_kinds
    assert session.handshakes_refused == 1
    assert session.reconnects >= 3
    assert session.disconnects >= 3
    assert session.revoked is not None
    assert session.revoked.close_code == 4401
    assert session.refused is not None
    assert session.refused.status == 403
    assert session.wrong_error is session.refused
    # URLs are shown, masked.
    assert any("api_key=***" in str(e) for _, e in session.exceptions)
    assert any("api_key=***" in r.getMessage() for r in session.records)
    assert any(r.exc_info for r in session.records), "the failing handler logs a traceback"
    assert len(session.records) >= 10


def test_no_key_in_log_records(session: Session) -> None:
    texts: list[tuple[str, str]] = []
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for r in session.records:
        label = f"log {r.name}:{r.levelname} {r.msg!r:.80}"
        texts += [
            (f"{label} message", r.getMessage()),
            (f"{label} args", repr(r.args)),
            (f"{label} formatted with traceback", formatter.format(r)),
        ]
    found = leaks(texts)
    assert not found, f"the API key leaked in {len(found)} place(s):\n" + "\n".join(found)


def test_no_key_in_reprs_stats_and_hook_arguments(session: Session) -> None:
    found = leaks(session.reprs + session.error_contexts)
    assert not found, f"the API key leaked in {len(found)} place(s):\n" + "\n".join(found)


def test_no_key_in_exceptions_as_displayed(session: Session) -> None:
    """str, repr, args and attributes of each error, and its traceback as Python prints it."""
    texts: list[tuple[str, str]] = []
    for label, exc in session.exceptions:
        texts += exception_texts(label, exc, chain=False)
    found = leaks(texts)
    assert not found, f"the API key leaked in {len(found)} place(s):\n" + "\n".join(found)


def test_no_key_in_exception_chains(session: Session) -> None:
    """Also the suppressed ``__context__`` (``raise ... from None`` keeps it on the error).

    Debuggers, ``pickle``, error trackers that walk ``__context__`` and any code doing
    ``exc.__context__`` reach it.
    """
    texts: list[tuple[str, str]] = []
    for label, exc in session.exceptions:
        texts += exception_texts(label, exc)
    for r in session.records:
        if r.exc_info and r.exc_info[1] is not None:
            texts += exception_texts(f"log {r.name} {r.msg!r:.60}", r.exc_info[1])
    found = leaks(texts)
    assert not found, f"the API key leaked in {len(found)} place(s):\n" + "\n".join(found)


@pytest.mark.anyio
async def test_no_key_when_the_server_is_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    """Connection refused (nothing listens): the retry warnings and errors stay masked."""
    caplog.set_level(logging.DEBUG)
    async with SimExchange(port=0, api_keys={KEY: Decimal("1")}) as sim:
        url = sim.url
    # The sim is closed: its port now refuses connections.
    ws = AgentExchangeWS(KEY, url, **OPTIONS)
    ws.on_ticker("BTCUSDT", lambda data: None)
    errors: list[BaseException] = []
    ws.on_error(lambda exc, context: errors.append(exc))
    async with anyio.create_task_group() as tg:
        tg.start_soon(ws.connect)
        await wait_until(lambda: ws.stats.failed_attempts >= 3 and len(errors) >= 3, "retries")
        texts = [("repr(ws)", repr(ws)), ("stats", str(ws.stats))]
        await ws.disconnect()
    assert any("api_key=***" in str(e) for e in errors)
    for i, exc in enumerate(errors):
        texts += exception_texts(f"on_error #{i}", exc)
    for record in caplog.records:
        texts += record_texts(record)
    found = leaks(texts)
    assert not found, f"the API key leaked in {len(found)} place(s):\n" + "\n".join(found)
