"""The one place agentstream's client does I/O: aiohttp, mapped to agentstream's errors.

``Transport.connect`` opens a socket from a venue's prepared :class:`Handshake` (URL
and headers) or raises one of our errors (with the credential masked);
``Transport.request`` makes the small HTTP calls a venue needs beside its socket (a
session to create, an order to look up); ``Connection.pump`` is the read loop: it hands
every text or binary frame to a synchronous ``feed`` callback and sends back whatever
``feed`` returns (a pong). The loop itself never runs user code; the feed calls only
handlers that proved fast, stops doing so when its frames run long, and never between a
ping and its pong.

aiohttp's errors become ours here and nowhere else. Which HTTP statuses mean "the
credentials are wrong" is the venue's to say (``auth_statuses``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from aiohttp import WSMsgType

from agentstream._redact import mask_secret, mask_url
from agentstream.errors import (
    AgentStreamError,
    AuthenticationError,
    CertificateError,
    HandshakeError,
    StreamConnectionError,
)
from agentstream.protocols.base import HttpResponse

if TYPE_CHECKING:
    import ssl as _ssl

    from agentstream.protocols.base import Handshake, HttpRequest

__all__ = ["CloseInfo", "Connection", "Transport"]

log = logging.getLogger("agentstream")

#: Takes a batch of text and binary frames; returns the replies to send (pongs) or None.
Feed = Callable[[list[str | bytes]], list[str] | None]

#: The read loop yields to handlers after this long of reading (see Connection.pump).
_SLICE_S = 0.001
#: Frames handed to the feed at most at once; the clock is read once per batch.
_BATCH = 32


@dataclass(frozen=True, slots=True)
class CloseInfo:
    """How a connection ended: the close code (None if TCP just died) and why."""

    code: int | None
    reason: str


class Connection:
    """One open WebSocket."""

    __slots__ = ("_ws", "frames", "opened_at")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        #: Ping and pong frames received (the liveness watchdog reads this and the time
        #: of the last text or binary frame, which ``pump`` records).
        self.frames = 0
        self.opened_at = time.monotonic()

    async def pump(self, feed: Feed, clock: FrameClock) -> CloseInfo:
        """Read until the connection ends; return how it ended. Never raises for I/O.

        Text and binary frames go to ``feed`` in batches, in the order they arrived; a
        batch is what aiohttp had already parsed (at most ``_BATCH`` frames), or one frame
        when they come one at a time. ``clock.last_frame_at`` is set to the
        ``time.monotonic()`` after each batch.
        """
        ws = self._ws
        receive = ws.receive
        buffered = _buffered_messages(ws)
        fast = buffered is not None
        # Without the fast path ``buf`` is a placeholder that is never read (and never
        # empty, so the reader yields by time; see below).
        buf, read = buffered if buffered is not None else ((None,), receive)
        quick = False

        def readable() -> bool:
            # receive() reads only from a socket neither closing nor closed. (Read only
            # on the fast path, which the version gate allows.)
            return not (ws._closing or ws._closed)

        text, binary = WSMsgType.TEXT, WSMsgType.BINARY
        batch: list[str | bytes] = []
        append = batch.append
        monotonic = time.monotonic
        slice_end = monotonic() + _SLICE_S
        try:
            while True:
                if quick:
                    # The fast path: text and binary frames that aiohttp has already
                    # parsed are taken straight from its queue, which costs a third of a
                    # receive() call. ``quick`` says the socket was not closing when this
                    # task last resumed (only then can that change).
                    for _ in range(_BATCH - len(batch)):
                        if not buf:
                            break
                        head = buf[0][0].type  # type: ignore[index]
                        if head is not text and head is not binary:
                            break  # a control frame: receive() handles it, in order
                        append((await read()).data)  # queued: returns without suspending
                if batch:
                    try:
                        replies = feed(batch)
                    except Exception:
                        # A safety net (the feed guards each frame): nothing a server
                        # sends may end the read loop.
                        log.exception("internal error while handling frames; dropped")
                        replies = None
                    batch.clear()
                    now = clock.last_frame_at = monotonic()
                    if replies:
                        for reply in replies:
                            await ws.send_str(reply)
                        quick = fast and readable()
                    if not buf:
                        # aiohttp's queue is empty: the next receive() waits for the
                        # socket, and handlers get their turn there.
                        slice_end = now + _SLICE_S
                    elif now >= slice_end:
                        # Under a firehose the queue never empties and nothing here
                        # suspends. Yield after each slice, so handlers get their turn and
                        # a cancellation (stop(), a timeout around connect()) gets
                        # through: anyio does not cancel a task whose wait has already
                        # completed.
                        await asyncio.sleep(0)
                        quick = fast and readable()
                        slice_end = monotonic() + _SLICE_S
                    continue
                # Nothing the fast path takes: wait for a frame, or let receive() handle
                # a control frame (close, ping, pong, error).
                msg = await receive()
                quick = fast and readable()
                kind = msg.type
                if kind is text or kind is binary:
                    append(msg.data)
                elif kind is WSMsgType.PING or kind is WSMsgType.PONG:
                    self.frames += 1
                    if kind is WSMsgType.PING:
                        await ws.pong(msg.data)
                    now = monotonic()
                    if now >= slice_end:
                        # A flood of pings never suspends receive() either: yield by time.
                        await asyncio.sleep(0)
                        slice_end = monotonic() + _SLICE_S
                    quick = fast and readable()
                elif kind is WSMsgType.ERROR:
                    # aiohttp puts a protocol error (1009 too big, 1007 bad UTF-8) in data.
                    exc = msg.data if isinstance(msg.data, BaseException) else ws.exception()
                    if exc is None:
                        return CloseInfo(ws.close_code, "error: connection failed")
                    return CloseInfo(ws.close_code, f"error: {type(exc).__name__}: {exc}")
                else:  # CLOSE, CLOSING, CLOSED
                    reason = msg.extra if kind is WSMsgType.CLOSE and msg.extra else ""
                    code = ws.close_code
                    if code == 1006 or code is None:
                        return CloseInfo(code, "connection lost (no close frame)")
                    suffix = f": {reason}" if reason else ""
                    return CloseInfo(code, f"closed by server ({code}{suffix})")
        except (aiohttp.ClientError, ConnectionError, OSError) as exc:
            return CloseInfo(None, f"connection lost: {type(exc).__name__}")

    async def send(self, text: str) -> None:
        """Send one text frame; a dead connection is ignored (the pump will notice)."""
        with contextlib.suppress(aiohttp.ClientError, ConnectionError, OSError, RuntimeError):
            await self._ws.send_str(text)

    def abort(self) -> None:
        """Drop the connection at once, without a close handshake (a stale socket)."""
        # aiohttp has no public abort for a client socket. On the checked versions its
        # writer holds the transport; elsewhere shut the socket down (public API), which
        # ends the read loop the same way.
        writer = getattr(self._ws, "_writer", None) if _FAST_READ_OK and PRIVATE_ABORT else None
        transport = getattr(writer, "transport", None)
        if transport is not None and hasattr(transport, "abort"):
            if not transport.is_closing():
                transport.abort()
            return
        sock = self._ws.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def close(self) -> None:
        """Close with code 1000 (the close handshake waits at most the close timeout)."""
        with contextlib.suppress(
            aiohttp.ClientError, ConnectionError, OSError, asyncio.TimeoutError
        ):
            await self._ws.close()

    @property
    def closed(self) -> bool:
        return self._ws.closed


#: Read queued frames straight from aiohttp's message queue (tests switch it off).
FAST_READ = True
#: Abort a socket through aiohttp's private writer (tests switch it off for the fallback).
PRIVATE_ABORT = True
#: aiohttp versions whose message queue was checked (its code read, and the client and
#: fault suites run with it): from 3.11 to 3.14. Others read every frame with receive().
_FAST_READ_VERSIONS = ((3, 11), (3, 14))


def _aiohttp_version() -> tuple[int, int]:
    try:
        major, minor = aiohttp.__version__.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return (0, 0)


_FAST_READ_OK = _FAST_READ_VERSIONS[0] <= _aiohttp_version() <= _FAST_READ_VERSIONS[1]


class FrameClock(Protocol):
    """Where ``Connection.pump`` records the time of the latest text or binary frame."""

    last_frame_at: float


def _buffered_messages(
    ws: aiohttp.ClientWebSocketResponse,
) -> tuple[deque[Any], Callable[[], Awaitable[Any]]] | None:
    """aiohttp's queue of parsed messages and the method that pops one, if usable.

    ``receive()`` takes a message from ``ws._reader``: a queue of ``(message, size)``
    pairs with an awaitable ``read()`` that returns at once while the queue is not
    empty. These are aiohttp internals, so the fast path is used only with the aiohttp
    versions it was checked with (``_FAST_READ_VERSIONS``) and when they are there;
    otherwise every frame goes through ``receive()``.
    """
    reader = getattr(ws, "_reader", None)
    queue = getattr(reader, "_buffer", None)
    read = getattr(reader, "read", None)
    if (
        not FAST_READ
        or not _FAST_READ_OK
        or not isinstance(queue, deque)
        or not callable(read)
        or not isinstance(getattr(ws, "_closing", None), bool)
        or not isinstance(getattr(ws, "_closed", None), bool)
    ):
        return None
    return queue, read


def _raise_mmap_threshold() -> None:
    """Free one 1 MiB block once, so glibc serves asyncio's 256 KiB read buffers from the heap.

    asyncio allocates a 256 KiB buffer for every socket read. glibc maps blocks that
    large with mmap and unmaps them on free, on every read, until a block of at least
    that size has been freed once (then its dynamic threshold rises above it). Under a
    steady stream that map/unmap pair nearly doubled the median latency at 20,000 msg/s.
    Elsewhere this is one harmless allocation.
    """
    block = bytearray(1 << 20)
    del block


class Transport:
    """Opens connections with one shared aiohttp session.

    Args:
        ssl: ``None`` verifies certificates with the system's trust store (the default);
            an ``ssl.SSLContext`` is used as given.
        connect_timeout: seconds the TCP connect plus handshake may take.
        close_timeout: seconds to wait for the server's answer to our close frame.
        max_message_size: frames larger than this end the connection (it is re-opened).
        auth_statuses: HTTP statuses that mean the credentials were refused (the venue's).
    """

    def __init__(
        self,
        *,
        ssl: _ssl.SSLContext | None,
        connect_timeout: float,
        close_timeout: float,
        max_message_size: int,
        auth_statuses: frozenset[int] = frozenset({401, 403}),
    ) -> None:
        self._auth_statuses = auth_statuses
        self._ssl = ssl
        self._connect_timeout = connect_timeout
        self._close_timeout = close_timeout
        self._max_message_size = max_message_size
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Transport:
        _raise_mmap_threshold()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _session_or_raise(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Transport used outside `async with`")
        return self._session

    async def connect(self, handshake: Handshake | str) -> Connection:
        """Open a WebSocket as ``handshake`` says (or to a plain URL).

        Raises:
            AuthenticationError: the handshake was answered with an auth status (401/403).
            HandshakeError: any other non-101 status (retryable).
            CertificateError: the server's TLS certificate failed verification (fatal).
            StreamConnectionError: refused, unreachable, other TLS failure or timed out.
        """
        session = self._session_or_raise()
        if isinstance(handshake, str):
            url, headers, secret = handshake, {}, None
        else:
            url, headers, secret = handshake.url, dict(handshake.headers), handshake.secret
        safe = _masked(url, secret)
        # Errors are raised after the `except` blocks, not inside them: aiohttp's
        # exceptions carry the full URL, credential included, and must not become our
        # errors' __context__.
        error: AgentStreamError
        try:
            async with asyncio.timeout(self._connect_timeout):
                ws = await session.ws_connect(
                    url,
                    headers=headers,
                    autoping=False,
                    autoclose=True,
                    heartbeat=None,
                    # aiohttp refuses a frame of exactly max_msg_size; ours is inclusive.
                    max_msg_size=self._max_message_size + 1,
                    ssl=self._ssl if self._ssl is not None else True,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self._close_timeout),
                )
            return Connection(ws)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in self._auth_statuses:
                error = AuthenticationError(
                    f"the server refused the credentials (HTTP {exc.status}) at {safe}",
                    status=exc.status,
                )
            else:
                error = HandshakeError(
                    f"handshake with {safe} answered HTTP {exc.status}", status=exc.status
                )
        except Exception as exc:
            error = self._map(exc, safe, secret, "connecting to")
        raise error

    async def request(self, req: HttpRequest, *, timeout: float | None = None) -> HttpResponse:
        """Make one HTTP request; any status comes back (the caller decides what it means).

        Raises:
            CertificateError: the server's TLS certificate failed verification.
            StreamConnectionError: refused, unreachable, other TLS failure or timed out.
        """
        session = self._session_or_raise()
        safe = _masked(req.url, req.secret)
        error: AgentStreamError
        try:
            async with asyncio.timeout(timeout or self._connect_timeout):
                async with session.request(
                    req.method,
                    req.url,
                    headers=dict(req.headers),
                    data=dict(req.form) if req.form is not None else None,
                    json=req.json,
                    ssl=self._ssl if self._ssl is not None else True,
                ) as resp:
                    body = await resp.read()
                    return HttpResponse(resp.status, body, dict(resp.headers))
        except Exception as exc:
            error = self._map(exc, safe, req.secret, req.method)
        raise error

    def _map(
        self, exc: BaseException, safe: str, secret: str | None, action: str
    ) -> AgentStreamError:
        """aiohttp's (and the OS's) errors as ours, with no credential in the text."""
        if isinstance(exc, TimeoutError):
            return StreamConnectionError(
                f"{action} {safe} timed out after {self._connect_timeout:g} s"
            )
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return CertificateError(
                f"TLS certificate of {safe} failed verification: {exc.certificate_error}; "
                "pass ssl=<an ssl.SSLContext that trusts its CA> to connect"
            )
        if isinstance(exc, aiohttp.ClientError | OSError):
            return StreamConnectionError(
                f"cannot connect to {safe}: {type(exc).__name__}: {_masked(str(exc), secret)}"
            )
        raise exc


def _masked(text: str, secret: str | None) -> str:
    """``text`` with credentials in query strings, and ``secret`` anywhere, masked."""
    text = mask_url(text)
    if secret and len(secret) >= 4:
        text = text.replace(secret, mask_secret(secret))
    return text
