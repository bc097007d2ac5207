"""The bridge's Redis side: the only module of the bridge that talks to Redis.

The bridge (``bridge.py``) buffers, conflates and counts; this module appends batches
of entries, keeps the set of channels, writes the health hash and tells a server restart
from the server's ``run_id``. Another engine (NATS JetStream) would be a module with the
same methods.

Every failure of the server or the connection is raised as :class:`Unavailable` (mapped
here, once); redis-py's own retries are off, so a restart is never hidden from the
bridge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentstream._redact import mask_url
from agentstream.bus._codec import GAP, LOSS

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from agentstream.bus._outbox import Item

__all__ = ["RedisWriter", "Unavailable", "WriteResult", "mask_redis_url"]

#: Error replies that mean "not now" (the entry may be written later), not "never".
_TRANSIENT = ("OOM", "LOADING", "READONLY", "MASTERDOWN", "BUSY", "TRYAGAIN", "CLUSTERDOWN")


class Unavailable(Exception):
    """Redis cannot be written now (down, restarting, refusing); retry later."""


@dataclass
class WriteResult:
    """What became of a batch: written, to retry later, or refused for good."""

    written: list[Item] = field(default_factory=list)
    retry: list[Item] = field(default_factory=list)
    rejected: list[tuple[Item, str]] = field(default_factory=list)
    #: The channels set was gone when the batch arrived: the server lost what the bridge
    #: had written before (a restart without persistence, a flush); this batch is the
    #: first of the new data.
    data_lost: bool = False


def mask_redis_url(url: str) -> str:
    """The URL without its password, for logs (``agentstream._redact.mask_url``).

    Example:
        >>> mask_redis_url("redis://user:s3cret@127.0.0.1:6379/0")
        'redis://user:***@127.0.0.1:6379/0'
    """
    return mask_url(url)


def _transient(exc: Exception) -> bool:
    """An error reply that means "not now" (redis-py maps some to classes, without the
    code in the text)."""
    import redis.exceptions as rexc

    return isinstance(
        exc,
        rexc.OutOfMemoryError
        | rexc.ReadOnlyError
        | rexc.BusyLoadingError
        | rexc.MasterDownError
        | rexc.TryAgainError
        | rexc.ClusterDownError,
    ) or str(exc).startswith(_TRANSIENT)


def _pack(args: list[bytes]) -> bytes:
    """One command in RESP: ``*N`` then ``$len`` + each argument."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class RedisWriter:
    """Appends the bridge's batches to Redis streams (``XADD ... MAXLEN ~ N``).

    Args:
        url: ``redis://HOST:PORT/DB`` (or ``rediss://``, ``unix://``).
        prefix, venue: the streams are ``{prefix}:{venue}:{channel}``.
        maxlen: each stream is trimmed to about this many entries.
        socket_timeout, connect_timeout: seconds a command / a connection may take.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        venue: str,
        maxlen: int,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.maxlen = maxlen
        self.channels_key = f"{prefix}:{venue}:channels"
        self.health_key = f"{prefix}:{venue}:bridge"
        #: The server's run_id when last seen (it changes when the server restarts).
        self.run_id: str | None = None
        #: Channel keys known to be in the channels set (cleared when the server lost it).
        self.known: set[str] = set()
        self._socket_timeout = socket_timeout
        self._connect_timeout = connect_timeout
        self._redis: Any = None

    def _client(self) -> Any:
        if self._redis is None:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            self._redis = aioredis.Redis.from_url(
                self.url,
                socket_timeout=self._socket_timeout,
                socket_connect_timeout=self._connect_timeout,
                retry=Retry(NoBackoff(), 0),  # the bridge retries, and sees every failure
                retry_on_timeout=False,
            )
        return self._redis

    async def _call(self, coro: Any) -> Any:
        import redis.exceptions as rexc

        try:
            return await coro
        except (rexc.RedisError, OSError) as exc:
            # Down, restarting, refusing (OOM, NOAUTH, ...): all retried with backoff.
            raise Unavailable(f"{type(exc).__name__}: {exc}") from exc

    async def server_id(self) -> str:
        """The server's ``run_id`` (also a check that it answers).

        Raises:
            Unavailable: it does not.
        """
        info = await self._call(self._client().info("server"))
        return str(info.get("run_id", ""))

    async def write(self, items: Sequence[Item]) -> WriteResult:
        """Append ``items`` in one round trip (and add new channel keys to the set).

        The commands are packed here (``XADD key MAXLEN ~ N * field value ...``) and sent
        at once on one of redis-py's connections: redis-py's own pipeline costs about
        twice as much per entry. An error reply concerns its entry only.

        Raises:
            Unavailable: the batch did not reach the server, or its answers did not come
                back: some entries may be written (see :meth:`written_already`).
        """
        import redis.exceptions as rexc

        new = {i.channel for i in items if i.type not in (GAP, LOSS)} - self.known
        chunks: list[bytes] = []
        # Each batch first asks whether the channels set is still there: if the server
        # lost its data, the bridge learns it with the very batch that follows the loss,
        # so it can say exactly which entries were lost (those written before).
        check = bool(self.known)
        if check:
            chunks.append(_pack([b"EXISTS", self.channels_key.encode()]))
        if new:
            chunks.append(_pack([b"SADD", self.channels_key.encode(), *map(str.encode, new)]))
        head = [b"XADD", b"", b"MAXLEN", b"~", str(self.maxlen).encode(), b"*"]
        for item in items:
            head[1] = item.stream.encode()
            fields = item.encode()
            args = head + [x for k, v in fields.items() for x in (k.encode(), v)]
            chunks.append(_pack(args))
        pool = self._client().connection_pool
        try:
            conn = await pool.get_connection()
        except (rexc.RedisError, OSError) as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}") from exc
        answers: list[Any] = []
        try:
            await conn.send_packed_command(b"".join(chunks), check_health=False)
            for _ in range(len(chunks)):
                try:
                    answers.append(await conn.read_response(disable_decoding=True))
                except rexc.ResponseError as exc:  # this entry's error; the reply was read
                    answers.append(exc)
        except (rexc.RedisError, OSError) as exc:
            await conn.disconnect(nowait=True)  # replies may be unread: never reuse it
            raise Unavailable(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)
        result = WriteResult()
        if check:
            marker, answers = answers[0], answers[1:]
            result.data_lost = marker == 0
        if new:
            first, answers = answers[0], answers[1:]
            if not isinstance(first, Exception):
                self.known |= new
        for item, answer in zip(items, answers, strict=True):
            if not isinstance(answer, Exception):
                result.written.append(item)
            elif _transient(answer):
                result.retry.append(item)
            else:
                result.rejected.append((item, f"{type(answer).__name__}: {answer}"))
        if result.data_lost:
            # The set now holds only this batch's new channels: add the others written.
            self.known = set()
            again = {i.channel for i in result.written if i.type not in (GAP, LOSS)}
            if again:
                await self._call(self._client().sadd(self.channels_key, *sorted(again)))
                self.known = again
        return result

    async def written_already(self, items: Sequence[Item]) -> list[Item]:
        """Which of ``items`` (a batch whose answers were lost) are in their streams.

        Compares the receive times (``r``, unique per bridge) with the newest entries of
        each stream.

        Raises:
            Unavailable: the server does not answer.
        """
        by_stream: dict[str, list[Item]] = {}
        for item in items:
            by_stream.setdefault(item.stream, []).append(item)
        pipe = self._client().pipeline(transaction=False)
        for stream, group in by_stream.items():
            pipe.xrevrange(stream, count=len(group))
        answers = await self._call(pipe.execute(raise_on_error=False))
        found: list[Item] = []
        for (_, group), answer in zip(by_stream.items(), answers, strict=True):
            if isinstance(answer, Exception):
                continue
            times = {fields.get(b"r") for _, fields in answer}
            found += [i for i in group if str(i.received_ns).encode() in times]
        return found

    async def health(self, fields: Mapping[str, str | int | float], ttl: float) -> str:
        """Write the health hash (expiring after ``ttl`` s) and return the ``run_id``.

        Raises:
            Unavailable: the server does not answer.
        """
        pipe = self._client().pipeline(transaction=False)
        pipe.hset(self.health_key, mapping=dict(fields))
        pipe.pexpire(self.health_key, max(1, int(ttl * 1000)))
        pipe.info("server")
        answers = await self._call(pipe.execute())
        return str(answers[2].get("run_id", ""))

    async def aclose(self) -> None:
        """Close the connections (redis-py's ``aclose()``)."""
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()
