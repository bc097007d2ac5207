"""Connection supervision: one *link* per WebSocket, each carrying up to N channels.

A link prepares a socket (the venue's pre-connect step, then the handshake), sends the
venue's opening messages and waits for their acks where the venue asks, subscribes
exactly the channels assigned to it, sends the venue's periodic messages, reads until
the socket ends (answering pings, watched by a liveness watchdog), and reconnects with
backoff. An authentication failure is fatal and ends the whole client (after one retry
with a fresh credential where the venue says a fresh one may be accepted).

A link talks to the client only through :class:`LinkHost` and a frozen
:class:`LinkConfig`; it knows the venue only through its protocol object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import typing
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio

from agentstream._router import LinkGaps
from agentstream.errors import (
    AuthenticationError,
    ServerError,
    StaleConnectionError,
    StreamConnectionError,
)
from agentstream.protocols.base import Ack, AuthFailed, Reconnect, Refused

if typing.TYPE_CHECKING:
    from collections.abc import Callable

    from agentstream._router import Router
    from agentstream.backoff import Backoff
    from agentstream.channels import Channel
    from agentstream.errors import AgentStreamError
    from agentstream.protocols.base import Outgoing, VenueProtocol
    from agentstream.transport import CloseInfo, Connection

__all__ = ["Link", "LinkConfig", "LinkHost"]

log = logging.getLogger("agentstream")

#: A connection open this long without being closed counts as accepted (see _watchdog).
_PROVEN_AFTER = 1.0


@dataclass(frozen=True)
class LinkConfig:
    """What every link of a client shares: the venue and the timing."""

    protocol: VenueProtocol
    stale_timeout: float
    close_timeout: float
    healthy_after: float
    new_backoff: Callable[[], Backoff]


class LinkHost(typing.Protocol):
    """What a link needs from its client (and nothing more)."""

    @property
    def first_connected(self) -> asyncio.Event:
        """Set once a link's server has accepted the credentials (extra links wait)."""
        ...

    @property
    def can_refresh(self) -> bool:
        """The credential comes from a callable (a fresh one may be accepted after a
        refusal)."""
        ...

    async def token(self, *, fresh: bool = False) -> str:
        """The current credential; ``fresh`` asks its source for a new one."""
        ...

    async def open_socket(self, token: str) -> Connection:
        """Prepare and open one socket (pre-connect step, handshake).

        Raises:
            AuthenticationError: the credentials were refused (fatal).
            StreamConnectionError: anything else that failed (retried).
        """
        ...

    def channel(self, key: str) -> Channel | None:
        """A channel the client knows, by key."""
        ...

    def link_up(self, link: Link, reconnect: bool) -> None: ...

    def link_ready(self, link: Link, reconnect: bool) -> None:
        """``link`` has sent its subscriptions (on a new socket, or a reconnect)."""
        ...

    def link_down(self, link: Link, reason: str) -> None: ...

    def link_proven(self, link: Link) -> None: ...

    def refused(self, link: Link, key: str, effect: str, reason: str) -> bool:
        """The server refused ``key`` (``invalid`` or ``limit``, with ``reason``); True if
        the client took care of it (moved the channel, or builds it from another)."""
        ...

    def connect_failed(self, link: Link, exc: StreamConnectionError) -> bool:
        """A connection attempt failed; True if the client gives up (the link raises)."""
        ...

    def emit_error(self, exc: AgentStreamError, context: dict[str, typing.Any]) -> None: ...


class Link:
    """One supervised WebSocket and the channels assigned to it."""

    def __init__(self, host: LinkHost, router: Router, config: LinkConfig, index: int) -> None:
        self.host = host
        self.router = router
        self.config = config
        self.protocol = config.protocol
        self.index = index
        #: Channels this link should carry, by key.
        self.channels: dict[str, Channel] = {}
        #: Channels subscribed on the current connection (sent, not unsubscribed).
        self.sent: set[str] = set()
        self.acked: set[str] = set()
        #: Channels the server refused for good (an ``invalid`` refusal): not sent again.
        self.rejected: set[str] = set()
        #: Subscribes awaiting an ack, oldest first, to attribute errors that name no channel.
        self.pending: deque[str] = deque()
        #: Messages awaiting an ack, by request id.
        self.requests: dict[int, Outgoing] = {}
        self.conn: Connection | None = None
        self.dirty = asyncio.Event()
        self.retired = False
        self.ready = asyncio.Event()
        #: Set when an opening message that must be acked first was acked, then for good
        #: once every opening message is sent (and acked where the venue asks).
        self.opened = asyncio.Event()
        #: Data frames received on the current connection.
        self.data_frames = 0
        #: time.monotonic() of the last text or binary frame (set by ``Connection.pump``).
        self.last_frame_at = 0.0
        #: Whether the server has shown it accepted the credentials (ack, data, or time).
        self.proven = False
        #: Whether the current connection replaces an earlier one.
        self._reconnect = False
        #: Why the server ended the current connection in a message, if it did.
        self.ended: AuthFailed | Reconnect | None = None
        #: Channels down since a disconnect, until their first event (for on_gap).
        self.gaps = LinkGaps()

    # Read through methods: other tasks set these while run() awaits (mypy would take
    # the values run() itself last saw).
    def _ended(self) -> AuthFailed | Reconnect | None:
        return self.ended  # set by on_control

    def _retired_now(self) -> bool:
        return self.retired  # set by the control task when its channels are gone

    @property
    def label(self) -> str:
        """How logs name this socket: ``connection 1``."""
        return f"connection {self.index + 1}"

    # -- channel bookkeeping (loop thread only) ----------------------------------------

    def assign(self, channel: Channel) -> None:
        self.channels[channel.key] = channel
        self.dirty.set()

    def release(self, key: str) -> None:
        self.channels.pop(key, None)
        self.rejected.discard(key)
        self.gaps.open.pop(key, None)
        self.dirty.set()

    @property
    def wanted(self) -> set[str]:
        return set(self.channels) - self.rejected

    # -- the supervisor loop ----------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect, until retired or cancelled. Fatal errors propagate."""
        host = self.host
        backoff = self.config.new_backoff()
        connected_before = False
        fresh = False  # the next socket asks the credential's source for a new one
        refreshed = False  # the credential was refreshed after a refusal, not yet accepted
        while not self.retired:
            if self.index > 0:
                # Extra links connect only once the first one got through, so a rejected
                # key costs exactly one handshake.
                await host.first_connected.wait()
            try:
                token = await host.token(fresh=fresh)
                fresh = False
                conn = await host.open_socket(token)
            except StreamConnectionError as exc:
                if host.connect_failed(self, exc):
                    raise  # the client was told to give up (max_attempts / give_up_after)
                delay = backoff.next()
                log.warning("%s: %s; retrying in %.2f s", self.label, exc, delay)
                host.emit_error(exc, {"link": self.index, "stage": "connect"})
                await anyio.sleep(delay)
                continue
            self.ended = None
            info, stale, healthy = await self._serve(conn, token, reconnect=connected_before)
            connected_before = True
            if healthy:
                backoff.reset()
            ended = self._ended()
            if info.code in self.protocol.auth_close_codes:
                raise AuthenticationError(
                    f"the server closed the connection with {info.code}: credentials rejected",
                    close_code=info.code,
                )
            if isinstance(ended, AuthFailed):
                if ended.refreshable and host.can_refresh and not refreshed:
                    # An expired access token looks like a bad one: try once with a
                    # fresh one before giving up. It is a disconnect like any other
                    # (hooks, gaps), without the backoff.
                    log.warning(
                        "%s: %s; retrying with a fresh credential", self.label, ended.reason
                    )
                    host.link_down(self, f"credentials refused ({ended.reason})")
                    fresh = refreshed = True
                    continue
                raise AuthenticationError(
                    f"{self.protocol.venue}: the server refused the credentials "
                    f"({ended.reason}); check the token (and that it has not expired)"
                )
            if self.proven:
                refreshed = False
            if self._retired_now():
                return
            if stale:
                reason = "stale: no frame for the stale timeout"
            elif isinstance(ended, Reconnect):
                reason = ended.reason
            else:
                reason = info.reason
            delay = backoff.next()
            log.warning("%s: disconnected (%s); reconnecting in %.2f s", self.label, reason, delay)
            host.link_down(self, reason)
            await anyio.sleep(delay)

    async def _serve(
        self, conn: Connection, token: str, *, reconnect: bool
    ) -> tuple[CloseInfo, bool, bool]:
        """Run one connection to its end: (how it closed, was it stale, was it healthy)."""
        from agentstream.transport import CloseInfo

        config = self.config
        self.conn = conn
        self.sent.clear()
        self.acked.clear()
        self.pending.clear()
        self.requests.clear()
        self.opened.clear()
        stale = False
        info = CloseInfo(None, "cancelled")
        self.data_frames = 0
        self.proven = False
        try:
            async with anyio.create_task_group() as tg:
                self._reconnect = reconnect
                tg.start_soon(self._control, conn, token)
                if self.protocol.heartbeat_interval:
                    tg.start_soon(self._heartbeats, conn, self.protocol.heartbeat_interval)

                async def watchdog() -> None:
                    nonlocal stale
                    stale = await self._watchdog(conn)
                    if stale:
                        conn.abort()

                tg.start_soon(watchdog)
                self.gaps.reconnected_at = datetime.now(UTC)
                self.host.link_up(self, reconnect)
                info = await conn.pump(self.router.feed_for(self), self)
                if self.data_frames:
                    self._prove()  # data arrived, even if before the watchdog's next tick
                tg.cancel_scope.cancel()
        finally:
            self.conn = None
            self.ready.clear()
            self.router.note_frame_time(self.last_frame_at)
            if not conn.closed:
                with anyio.move_on_after(config.close_timeout, shield=True):
                    await conn.close()
        lived = time.monotonic() - conn.opened_at
        # Healthy means data flowed on this very connection, or it lived long without
        # going stale; a server that accepts and drops at once never resets the backoff.
        healthy = self.data_frames > 0 or (lived >= config.healthy_after and not stale)
        if stale:
            self.host.emit_error(
                StaleConnectionError(f"no frame for {config.stale_timeout:g} s; reconnecting"),
                {"link": self.index, "stage": "liveness"},
            )
        return info, stale, healthy

    async def _watchdog(self, conn: Connection) -> bool:
        """Return True once no frame has arrived for the stale timeout.

        Also marks the link proven once data flowed or it stayed open a moment (for a
        server that neither acks nor sends data yet).
        """
        timeout = self.config.stale_timeout
        period = max(timeout / 20, 0.001)
        grace = min(_PROVEN_AFTER, timeout / 4)
        last_frames = conn.frames
        last_seen = time.monotonic()
        last_fed = self.last_frame_at
        while True:
            await anyio.sleep(min(period, grace) if not self.proven else period)
            now = time.monotonic()
            if not self.proven and (self.data_frames or now - conn.opened_at >= grace):
                self._prove()
            if conn.frames != last_frames or self.last_frame_at != last_fed:
                last_frames = conn.frames
                last_fed = self.last_frame_at
                last_seen = now
            elif now - last_seen >= timeout:
                log.warning(
                    "%s: no frame for %.1f s, closing the stale connection",
                    self.label,
                    now - last_seen,
                )
                return True

    async def _send(self, conn: Connection, out: Outgoing) -> None:
        if out.request_id is not None:
            self.requests[out.request_id] = out
        await conn.send(out.text)

    async def _control(self, conn: Connection, token: str) -> None:
        """Open the session, then keep the subscriptions equal to the link's channels."""
        protocol = self.protocol
        opening = [self.channels[k] for k in sorted(self.wanted) if k in self.channels]
        for out in protocol.open_messages(token, opening):
            self.sent.update(out.covers)
            await self._send(conn, out)
            if out.await_ack:
                # Bounded: a server that never answers (or refuses it, see _on_refused)
                # costs this socket, not the client.
                with anyio.move_on_after(self.config.stale_timeout) as waited:
                    await self.opened.wait()
                if waited.cancelled_caught:
                    self._end(Reconnect("no answer to the opening message"))
                    return
                self.opened.clear()
        self.opened.set()  # the session is open: heartbeats may start
        while True:
            self.dirty.clear()
            wanted = self.wanted
            chans = [self.channels[k] for k in sorted(wanted) if k in self.channels]
            add = [ch for ch in chans if ch.key not in self.sent]
            remove_keys = sorted(self.sent - wanted)
            if add:
                token = await self.host.token()
                for ch in add:
                    self.sent.add(ch.key)
                    self.pending.append(ch.key)
                for out in protocol.subscribe_messages(token, add, chans):
                    await self._send(conn, out)
            if remove_keys:
                remove = []
                for key in remove_keys:
                    self.sent.discard(key)
                    self.acked.discard(key)
                    known = self.host.channel(key)
                    if known is not None:
                        remove.append(known)
                token = await self.host.token()
                for out in protocol.unsubscribe_messages(token, remove, chans):
                    await self._send(conn, out)
            if not self.ready.is_set():
                self.ready.set()
                self.host.link_ready(self, self._reconnect)
            if not self.dirty.is_set():
                if not self.channels and self.index > 0:
                    self.retired = True
                    conn.abort()
                    return
                await self.dirty.wait()

    async def _heartbeats(self, conn: Connection, interval: float) -> None:
        """The venue's periodic client message, with a credential read fresh each time."""
        await self.opened.wait()  # nothing before the opening messages are acked
        while True:
            await anyio.sleep(interval)
            out = self.protocol.heartbeat_message(await self.host.token())
            if out is not None:
                await self._send(conn, out)

    # -- control frames from the server -----------------------------------------------

    def _prove(self) -> None:
        if not self.proven:
            self.proven = True
            self.host.link_proven(self)

    def on_control(self, inbound: Ack | Refused | AuthFailed | Reconnect) -> ServerError | None:
        """React to an ack, a refusal or an end of the connection (see FeedTarget)."""
        if isinstance(inbound, Ack):
            self._on_ack(inbound)
            return None
        if isinstance(inbound, Refused):
            return self._on_refused(inbound)
        self._end(inbound)
        return None

    def _end(self, why: AuthFailed | Reconnect) -> None:
        """The server ends this connection (or failed to open it): close it; run()
        decides what comes next."""
        self.ended = why
        if self.conn is not None:
            self.conn.abort()

    def _on_ack(self, ack: Ack) -> None:
        self._prove()
        key = ack.key
        if ack.request_id is not None:
            out = self.requests.pop(ack.request_id, None)
            if out is not None:
                if out.await_ack:
                    self.opened.set()
                for covered in out.covers:
                    self.acked.add(covered)
                key = key or out.key
        if key is None:
            return
        if ack.subscribed:
            if key in self.acked:
                log.debug("%s: duplicate ack for %s", self.label, key)
            self.acked.add(key)
            with contextlib.suppress(ValueError):
                self.pending.remove(key)
        else:
            self.acked.discard(key)

    def _on_refused(self, refused: Refused) -> ServerError:
        """Attribute a refusal to a channel and react to it.

        A refusal naming no channel is pinned on the oldest unacknowledged subscribe only
        when it answers a subscribe (``invalid`` or ``limit``); one naming a channel this
        link no longer carries changes nothing.
        """
        key = refused.key
        if key is None and refused.request_id is not None:
            out = self.requests.pop(refused.request_id, None)
            key = out.key if out is not None else None
            if out is not None and out.await_ack:
                # The opening message was refused: nothing else may be sent here.
                self._end(Reconnect(f"opening refused: {refused.code}"))
        subscribe_error = refused.effect != "none"
        if key is None and subscribe_error and self.pending:
            key = self.pending.popleft()
        elif key is not None:
            with contextlib.suppress(ValueError):
                self.pending.remove(key)
        err = ServerError(refused.code, refused.message, channel=key)
        if key is not None and key in self.channels and subscribe_error:
            self.sent.discard(key)
            if not self.host.refused(self, key, refused.effect, refused.message):
                self.rejected.add(key)
                self.gaps.open.pop(key, None)  # refused: no first event will close the gap
        return err
