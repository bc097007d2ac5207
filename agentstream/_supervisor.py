"""Connection supervision: one *link* per WebSocket, each carrying up to N channels.

A link connects, subscribes exactly the channels assigned to it, reads until the socket
ends (answering pings, watched by a liveness watchdog), and reconnects with backoff.
An authentication failure is fatal and ends the whole client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import typing
from collections import deque
from dataclasses import dataclass

import anyio

from agentstream._router import LinkGaps
from agentstream.errors import (
    AuthenticationError,
    ServerError,
    StaleConnectionError,
    StreamConnectionError,
)
from agentstream.protocols.agentexchange import (
    AUTH_CLOSE_CODES,
    subscribe_message,
    unsubscribe_message,
)
from agentstream.transport import CloseInfo, Connection

if typing.TYPE_CHECKING:
    from agentstream.backoff import Backoff
    from agentstream.channels import Channel
    from agentstream.client import AgentExchangeWS

log = logging.getLogger("agentstream")

#: A connection open this long without being closed counts as accepted (see _watchdog).
_PROVEN_AFTER = 1.0


@dataclass
class LinkStats:
    connects: int = 0
    reconnects: int = 0
    failed_attempts: int = 0


class Link:
    """One supervised WebSocket and the channels assigned to it."""

    def __init__(self, client: AgentExchangeWS, index: int) -> None:
        self.client = client
        self.index = index
        #: Channels this link should carry, by key.
        self.channels: dict[str, Channel] = {}
        #: Channels subscribed on the current connection (sent, not unsubscribed).
        self.sent: set[str] = set()
        self.acked: set[str] = set()
        #: Channels the server refused (INVALID_CHANNEL): not sent again.
        self.rejected: set[str] = set()
        #: Subscribes awaiting an ack, oldest first, to attribute errors that name no channel.
        self.pending: deque[str] = deque()
        self.conn: Connection | None = None
        self.dirty = asyncio.Event()
        self.stats = LinkStats()
        self.state = "idle"
        self.retired = False
        self.last_close: CloseInfo | None = None
        self.ready = asyncio.Event()
        #: Data frames received on the current connection.
        self.data_frames = 0
        #: time.monotonic() of the last text or binary frame (set by ``Connection.pump``).
        self.last_frame_at = 0.0
        #: Whether the server has shown it accepted the key (ack, data, or time open).
        self.proven = False
        #: Channels down since a disconnect, until their first event (for on_gap).
        self.gaps = LinkGaps()

    # -- channel bookkeeping (loop thread only) ----------------------------------------

    def assign(self, channel: Channel) -> None:
        self.channels[channel.key] = channel
        self.dirty.set()

    def release(self, key: str) -> None:
        self.channels.pop(key, None)
        self.rejected.discard(key)
        self.gaps.open.pop(key, None)
        self.dirty.set()

    def is_retired(self) -> bool:
        return self.retired

    @property
    def wanted(self) -> set[str]:
        return set(self.channels) - self.rejected

    # -- the supervisor loop ----------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect, until retired or cancelled. Fatal errors propagate."""
        client = self.client
        backoff: Backoff = client._new_backoff()
        connected_before = False
        while not self.retired:
            self.state = "connecting" if not connected_before else "reconnecting"
            if self.index > 0:
                # Extra links connect only once the first one got through, so a rejected
                # key costs exactly one handshake.
                await client._first_connected.wait()
            try:
                conn = await client._transport_connect()
            except AuthenticationError:
                raise
            except StreamConnectionError as exc:
                self.stats.failed_attempts += 1
                client._failed_attempts += 1
                delay = backoff.next()
                log.warning("link %d: %s; retrying in %.2f s", self.index, exc, delay)
                client._emit_error(exc, {"link": self.index, "stage": "connect"})
                await anyio.sleep(delay)
                continue
            self.stats.connects += 1
            if connected_before:
                self.stats.reconnects += 1
            info, stale, healthy = await self._serve(conn, reconnect=connected_before)
            connected_before = True
            self.last_close = info
            if healthy:
                backoff.reset()
            if info.code in AUTH_CLOSE_CODES:
                raise AuthenticationError(
                    f"the server closed the connection with {info.code}: API key rejected",
                    close_code=info.code,
                )
            if self.is_retired():  # the control task may have retired it meanwhile
                return
            reason = "stale: no frame for the stale timeout" if stale else info.reason
            self.state = "disconnected"
            delay = backoff.next()
            log.warning(
                "link %d: disconnected (%s); reconnecting in %.2f s", self.index, reason, delay
            )
            client._on_link_down(self, reason, stale)
            await anyio.sleep(delay)

    async def _serve(self, conn: Connection, *, reconnect: bool) -> tuple[CloseInfo, bool, bool]:
        """Run one connection to its end: (how it closed, was it stale, was it healthy)."""
        client = self.client
        self.conn = conn
        self.sent.clear()
        self.acked.clear()
        self.pending.clear()
        self.state = "connected"
        stale = False
        info = CloseInfo(None, "cancelled")
        self.data_frames = 0
        self.proven = False
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._control, conn)

                async def watchdog() -> None:
                    nonlocal stale
                    stale = await self._watchdog(conn)
                    if stale:
                        conn.abort()

                tg.start_soon(watchdog)
                client._on_link_up(self, reconnect)
                info = await conn.pump(client._router.feed_for(self), self)
                if self.data_frames:
                    self._prove()  # data arrived, even if before the watchdog's next tick
                tg.cancel_scope.cancel()
        finally:
            self.conn = None
            self.ready.clear()
            client._router.note_frame_time(self.last_frame_at)
            if not conn.closed:
                with anyio.move_on_after(client._close_timeout, shield=True):
                    await conn.close()
        lived = time.monotonic() - conn.opened_at
        # Healthy means data flowed on this very connection, or it lived long without
        # going stale; a server that accepts and drops at once never resets the backoff.
        healthy = self.data_frames > 0 or (lived >= client._healthy_after and not stale)
        if stale:
            client._emit_error(
                StaleConnectionError(f"no frame for {client._stale_timeout:g} s; reconnecting"),
                {"link": self.index, "stage": "liveness"},
            )
        return info, stale, healthy

    async def _watchdog(self, conn: Connection) -> bool:
        """Return True once no frame has arrived for the stale timeout.

        Also marks the link proven once data flowed or it stayed open a moment (for a
        server that neither acks nor sends data yet).
        """
        timeout = self.client._stale_timeout
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
                    "link %d: no frame for %.1f s, closing the stale connection",
                    self.index,
                    now - last_seen,
                )
                return True

    async def _control(self, conn: Connection) -> None:
        """Keep the connection's subscriptions equal to the link's channels."""
        while True:
            self.dirty.clear()
            wanted = self.wanted
            for key in sorted(wanted - self.sent):
                channel = self.channels.get(key)
                if channel is None:  # released while an earlier send was waiting
                    continue
                self.sent.add(key)
                self.pending.append(key)
                await conn.send(subscribe_message(channel))
            for key in sorted(self.sent - wanted):
                self.sent.discard(key)
                self.acked.discard(key)
                ch = self.client._known_channel(key)
                if ch is not None:
                    await conn.send(unsubscribe_message(ch))
            self.ready.set()
            if not self.dirty.is_set():
                if not self.channels and self.index > 0:
                    self.retired = True
                    conn.abort()
                    return
                await self.dirty.wait()

    # -- control frames from the server -----------------------------------------------

    def _prove(self) -> None:
        if not self.proven:
            self.proven = True
            self.client._link_proven(self)

    def on_ack(self, kind: str, key: str | None) -> None:
        if kind == "subscribed":
            self._prove()
        if key is None:
            return
        if kind == "subscribed":
            if key in self.acked:
                log.debug("link %d: duplicate ack for %s", self.index, key)
            self.acked.add(key)
            with contextlib.suppress(ValueError):
                self.pending.remove(key)
        else:
            self.acked.discard(key)

    def on_error(self, code: str, message: str, key: str | None) -> ServerError:
        """Attribute a server error to a channel and react to it.

        An error naming no channel is pinned on the oldest unacknowledged subscribe only
        for the codes that answer a subscribe; an error naming a channel this link no
        longer carries changes nothing.
        """
        subscribe_error = code in ("SUBSCRIPTION_LIMIT", "INVALID_CHANNEL")
        if key is None and subscribe_error and self.pending:
            key = self.pending.popleft()
        elif key is not None:
            with contextlib.suppress(ValueError):
                self.pending.remove(key)
        err = ServerError(code, message, channel=key)
        if key is not None and key in self.channels and subscribe_error:
            self.sent.discard(key)
            if code == "SUBSCRIPTION_LIMIT":
                # The server allows fewer channels per connection than we assumed: learn
                # its limit and move the channel to another connection instead of losing it.
                self.client._learn_limit(self, key)
            else:
                self.rejected.add(key)
                self.gaps.open.pop(key, None)  # refused: no first event will close the gap
        return err
