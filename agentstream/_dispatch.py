"""Handlers, their queues and workers, and the routing table the reader uses.

Every registered handler (a *slot*) owns a queue. The reader task decodes a frame once
and appends it to the queues of the handlers of its channel; it never awaits a handler.
A plain sync handler's queue is drained by loop callbacks (about 1 ms each, scheduled
once per batch), an async handler's by a worker task of its own, a ``thread=True``
handler's in a worker thread. So a slow handler delays only itself, and events of one
channel reach a handler in order. A plain sync handler that has proved fast is called
by the reader directly while its queue is empty (see ``Slot._push_drain``), and goes
back to its queue as soon as the reader sees a slow batch. Likewise async handlers that
have proved fast share one worker task (``SharedWorker``) instead of each being woken by
the reader, until one of them suspends (it goes back to its own worker at once, without
holding up the others) or their calls turn slow.

A ticker (or in-progress candle) handler that falls behind gets the newest event of
each symbol, never a backlog older than it: once its queue has not been empty for 5 ms
(``Slot.behind``), whenever the queue has doubled since the last pass it keeps one event
per symbol, the newest, in the turn of that symbol's oldest (a round robin: a busy symbol
is not pushed back behind quiet ones), so at most about two per symbol wait and the cost
per event stays constant; the events dropped are counted as conflated. A handler that
keeps up gets every event. Registered with ``every=True`` it keeps every event instead, up to
its ``max_queue``, beyond which older events of the same symbol are conflated as well.
Order updates, portfolio snapshots and closed candles are never dropped.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
import typing
from collections import deque
from typing import Any

import anyio

if typing.TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from agentstream.channels import Channel
    from agentstream.protocols.base import Kind

log = logging.getLogger("agentstream")

_BATCH = 256  # events a worker handles before yielding to the event loop
_SLICE_S = 0.001  # a sync handler's queue is drained for about this long per loop turn
_SLOW_HANDLER_S = 0.25  # a loop handler blocking longer than this gets a warning
#: A sync handler whose drains averaged less than this per event (over at least
#: _DIRECT_MIN_EVENTS) is called straight from the reader while its queue is empty.
_DIRECT_MAX_S = 20e-6
_DIRECT_MIN_EVENTS = 16
_MAX_HOOK_QUEUE = 10_000  # hook calls waiting; beyond this they are dropped and counted
#: A thread=True ticker handler gets as many events per trip to its worker
#: thread as it handles in about this long (at least one): a slow handler then always
#: takes the newest event, a fast one still amortises the thread hop over many.
_THREAD_BATCH_S = 0.002
_THREAD_BATCH_MAX = 1024
#: A conflated kind's handler whose queue has not been empty for this long is behind: it
#: gets the newest event per symbol from then on, until its queue is empty again.
_BEHIND_S = 0.005
_monotonic = time.monotonic


def _reraise(exc: BaseException) -> None:
    """A loop callback: hand a handler's BaseException to the event loop, as a drain would."""
    raise exc


def first_param_model(fn: Callable[..., Any], models: Collection[type[Any]]) -> type[Any] | None:
    """The one of ``models`` the handler's first parameter is annotated with, if any.

    Only the first parameter's annotation is resolved (a string annotation, as under
    ``from __future__ import annotations``, is evaluated in the function's globals), so
    an unresolvable annotation elsewhere does not hide it. Callable objects are
    inspected through their ``__call__``.
    """
    target: Any = fn
    if not (inspect.isfunction(fn) or inspect.ismethod(fn)) and hasattr(fn, "__call__"):  # noqa: B004
        call = fn.__call__
        if inspect.isfunction(call) or inspect.ismethod(call):
            target = call
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return None
    if not params:
        return None
    ann = params[0].annotation
    if isinstance(ann, str):
        func = inspect.unwrap(getattr(target, "__func__", target))
        namespace = dict(getattr(func, "__globals__", {}))
        try:
            ann = eval(ann, namespace)  # an annotation string of the user's own code
        except Exception:
            return _model_by_name(ann, models)
    return ann if ann in models else None


def _model_by_name(name: str, models: Collection[type[Any]]) -> type[Any] | None:
    """Last resort for an annotation that cannot be evaluated: match the model's name."""
    short = name.rsplit(".", 1)[-1]
    for model in models:
        if model.__name__ == short:
            return model
    return None


def is_async_callable(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def callable_name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def conflation_key_for(kind: Kind) -> Callable[[Any], object] | None:
    """What makes two events of ``kind`` interchangeable for a handler that fell behind.

    None for a kind that is never conflated; else a function giving an event's symbol
    (and interval), or None for an event that must be kept (a final one, one of the
    wrong shape). Only strings are used from a dict (a hostile ``"symbol": [1]`` must
    not make the key unhashable).

    Example:
        >>> conflation_key_for(KINDS["candles"])({"symbol": "BTC", "interval": "1m"})
        ('BTC', '1m')
    """
    if not kind.conflate:
        return None
    final = kind.final
    with_interval = kind.intervals is not None

    def key(event: Any) -> object:
        if isinstance(event, dict):
            symbol = event.get("symbol")
            if not isinstance(symbol, str):
                return None
            if not with_interval:
                return symbol
            interval = event.get("interval")
            if (final is not None and event.get(final)) or not isinstance(interval, str):
                return None
            return (symbol, interval)
        if final is not None and getattr(event, final, False):
            return None
        # No symbol (or interval): kept. A (None, None) key would merge unrelated events.
        symbol = getattr(event, "symbol", None)
        if not isinstance(symbol, str):
            return None
        if not with_interval:
            return symbol
        interval = getattr(event, "interval", None)
        return (symbol, interval) if isinstance(interval, str) else None

    return key


class Slot:
    """One handler (or ``listen()`` iterator) with its queue.

    ``report`` is called with the exception and the event when the handler raises.
    """

    __slots__ = (
        "behind",
        "behind_after",
        "channel",
        "conflate",
        "conflated_into",
        "direct",
        "flight",
        "fn",
        "inline",
        "is_async",
        "latest",
        "loop",
        "max_queue",
        "model",
        "name",
        "partial",
        "push",
        "queue",
        "report",
        "runner",
        "scheduled",
        "scope",
        "shared",
        "since",
        "stopped",
        "suspends",
        "thread",
        "thread_batch",
        "timed_events",
        "timed_s",
        "trim",
        "trim_at",
        "trimmed",
        "wake",
        "warned_slow",
    )

    def __init__(
        self,
        channel: Channel | str,
        fn: Callable[[Any], Any] | None,
        *,
        model: type[Any] | None,
        conflate: Callable[[Any], object] | None = None,
        thread: bool = False,
        partial: bool = False,
        max_queue: int = 10_000,
        every: bool = False,
        report: Callable[[Slot, BaseException, Any], None] | None = None,
        conflated_into: dict[str, int] | None = None,
    ) -> None:
        self.channel = channel
        self.fn = fn
        self.model = model
        self.is_async = fn is not None and is_async_callable(fn)
        self.thread = thread
        self.partial = partial
        #: The conflation key of an event (see conflation_key_for), or None: never dropped.
        self.conflate = conflate
        self.max_queue = max_queue
        self.queue: deque[Any] = deque()
        #: A conflated kind's handler gets the newest event per symbol once it is behind
        #: (``latest``); with ``every=True`` it keeps every event up to max_queue, then
        #: trims the older events of each symbol (``trim``). Other kinds keep everything.
        self.latest = conflate is not None and not every
        self.trim = conflate is not None and every
        self.trimmed = 0
        #: When the queue last went from empty to not empty; behind once it has not been
        #: empty for ``behind_after`` seconds (until it is empty again).
        self.since = 0.0
        self.behind = False
        self.behind_after = _BEHIND_S
        #: Behind: the queue length at which the next conflation pass runs.
        self.trim_at = 2
        #: Events per trip to the worker thread (thread=True, latest).
        self.thread_batch = 1
        self.wake = asyncio.Event()
        self.report = report
        self.name = callable_name(fn) if fn is not None else "listen()"
        #: The client's conflation counts of removed handlers, by channel key: a slot
        #: adds its own there when it is removed (see retire()), so ``ws.stats`` never
        #: counts fewer than before.
        self.conflated_into = conflated_into
        self.scope: anyio.CancelScope | None = None
        self.stopped = False
        self.warned_slow = False
        #: A plain sync handler runs from loop callbacks scheduled by the reader (or from
        #: the reader itself once proved fast, see _push_drain), with no
        #: task of its own; async, threaded handlers and listen() have a worker or reader.
        #: ``scheduled``: a drain callback is due (sync), or the queue is on the shared
        #: worker's ready list or being drained by it (async, see SharedWorker).
        self.inline = fn is not None and not self.is_async and not thread
        self.loop: asyncio.AbstractEventLoop | None = None
        self.scheduled = False
        #: Proven fast (see drain()): called from the reader while nothing is queued.
        self.direct = False
        self.timed_events = 0  # events and time of drains since the last verdict
        self.timed_s = 0.0
        #: An async handler proven fast: its events go to the shared worker (see
        #: SharedWorker), which calls it; its own worker waits.
        self.shared = False
        self.runner: SharedWorker | None = None
        #: Seen to suspend (await something real) when called by the shared worker: it
        #: keeps its own worker from then on.
        self.suspends = False
        #: The cancel scope of the shared worker's task left to finish a call of this
        #: handler that suspended; until it ends, the handler's own worker leaves its
        #: queue alone. Cancelled when the handler is removed.
        self.flight: anyio.CancelScope | None = None
        self.push: Callable[[Any], None] = self._push_drain if self.inline else self._push_wake

    @property
    def conflated(self) -> int:
        """Events dropped for a newer one of the same symbol before the handler got them."""
        return self.trimmed

    @property
    def key(self) -> str:
        """The channel key (a kind's name for a ``listen(Model)`` of every symbol)."""
        channel = self.channel
        return channel if isinstance(channel, str) else channel.key

    def retire(self) -> None:
        """Removed: add this slot's conflation count to the client's (once).

        Called under the client's lock as the slot leaves the registry (``ws.stats``
        reads both under it, so the total never goes down), and again once it is
        cancelled, for what it conflated in between.
        """
        n = self.conflated
        into = self.conflated_into
        if n and into is not None:
            into[self.key] = into.get(self.key, 0) + n
        self.trimmed = 0

    def bind_loop(self) -> None:
        """Fresh synchronisation for a new run (an asyncio.Event is bound to one loop)."""
        self.wake = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.scheduled = False
        self.stopped = False
        self.direct = False
        self.shared = False
        self.flight = None
        self.scope = None
        if self.queue:
            self.wake.set()
            if self.inline:
                self._schedule()

    # -- producer side (the reader task) ----------------------------------------------

    def _push_wake(self, event: Any) -> None:
        q = self.queue
        n = len(q)
        if not n:
            if self.latest:
                self.since = _monotonic()
                self.behind = False
            # Wake the consumer only when the queue was empty: once per batch, not per event.
            if not self.shared:
                self.wake.set()
            elif not self.scheduled:
                self.scheduled = True
                runner: SharedWorker = self.runner  # type: ignore[assignment]
                if not runner.ready:
                    runner.wake.set()
                runner.ready.append(self)
        elif self.latest:
            q.append(event)
            self._check_behind(n + 1)
            return
        elif n >= self.max_queue and self.trim:
            self._conflate()
        q.append(event)

    def _push_drain(self, event: Any) -> None:
        q = self.queue
        n = len(q)
        if not n:
            if self.direct and not self.stopped:
                # A handler proven fast, nothing queued before this event: call it now,
                # from the reader, instead of queueing it for a drain. The reader times
                # its batches and puts every handler back to queueing when one ran long
                # (Router.feed_for), and drain() proves it fast again.
                try:
                    self.fn(event)  # type: ignore[misc]
                except BaseException as exc:
                    self.direct_failed(exc, event)
                return
            if self.latest:
                self.since = _monotonic()
                self.behind = False
            if not self.scheduled:
                self._schedule()
        elif self.latest:
            q.append(event)
            self._check_behind(n + 1)
            return
        elif n >= self.max_queue and self.trim:
            self._conflate()
        q.append(event)

    def _schedule(self) -> None:
        loop = self.loop
        if loop is not None and not self.stopped:
            self.scheduled = True
            loop.call_soon(self.drain)

    def _check_behind(self, n: int) -> None:
        """An event was just queued, ``n`` wait (a latest slot): conflate if behind.

        Behind, a pass runs when the queue has doubled since the last one: the cost per
        event stays constant, and at most about two events per symbol wait.
        """
        if self.behind:
            if n >= self.trim_at:
                self._keep_newest()
        elif _monotonic() - self.since >= self.behind_after:
            self.behind = True
            self._keep_newest()

    def _keep_newest(self) -> None:
        """Behind: one event per symbol, the newest, in the turn of its oldest one.

        Run after an event is queued, when the queue has doubled since the last pass: a
        handler of one symbol always finds just the newest; with many symbols, one may
        have an older event waiting ahead of its newest until the next pass (one tick
        older than the newest, never a backlog).

        Round robin: a symbol keeps its place in the queue however often it changes, so
        a busy symbol is not pushed back behind quiet ones. A closed candle (no key) is
        kept and starts a new segment: nothing after it moves ahead of it.
        """
        key_of: Callable[[Any], object] = self.conflate  # type: ignore[assignment]
        q = self.queue
        out: list[Any] = []
        place: dict[object, int] = {}
        for ev in q:
            key = key_of(ev)
            if key is None:
                out.append(ev)
                place = {}
                continue
            i = place.get(key)
            if i is None:
                place[key] = len(out)
                out.append(ev)
            else:
                out[i] = ev
        self.trimmed += len(q) - len(out)
        q.clear()
        q.extend(out)
        self.trim_at = max(2, 2 * len(out))

    def _conflate(self) -> None:
        """Keep the newest event per symbol (closed candles always); count the rest."""
        q = self.queue
        key_of: Callable[[Any], object] = self.conflate  # type: ignore[assignment]
        seen: set[object] = set()
        kept: deque[Any] = deque()
        for ev in reversed(q):
            key = key_of(ev)
            if key is not None:
                if key in seen:
                    continue
                seen.add(key)
            kept.appendleft(ev)
        self.trimmed += len(q) - len(kept)
        q.clear()
        q.extend(kept)
        if len(q) >= self.max_queue // 2:
            # More distinct symbols than the bound: grow it rather than lose the only
            # event of a symbol.
            self.max_queue = 2 * len(q)

    # -- consumer side ----------------------------------------------------------------

    def drain(self) -> None:
        """A loop callback: call a sync handler for queued events, for one time slice.

        Runs when the reader yields; the reader and handlers share the loop by time, so a
        slow handler leaves the reader enough time to keep reading (and conflating).
        """
        self.scheduled = False
        if self.stopped:
            return
        fn = self.fn
        assert fn is not None
        q = self.queue
        popleft = q.popleft
        started = time.monotonic()
        deadline = started + _SLICE_S
        n = 0
        try:
            while q and not self.stopped:
                ev = popleft()
                n += 1
                try:
                    fn(ev)
                except Exception as exc:
                    self._failed(exc, ev)
                if (n == 1 or not n & 15) and time.monotonic() > deadline:
                    break
        finally:
            # Even if the handler raised a BaseException out of this callback, the events
            # still queued get another drain (a push schedules one only on an empty queue).
            if q and not self.scheduled and not self.stopped:
                self._schedule()
        elapsed = time.monotonic() - started
        # Proven fast over at least _DIRECT_MIN_EVENTS events (over several drains when
        # events come one at a time): from now on called from the reader.
        fast = self._timed(n, elapsed)
        if fast is not None:
            self.direct = fast
        if elapsed > _SLOW_HANDLER_S and not self.warned_slow:
            self.warned_slow = True
            log.warning(
                "handler %s blocked the event loop for %.2f s; pass thread=True "
                "to run it in a worker thread",
                self.name,
                elapsed,
            )

    async def run(self) -> None:
        """The worker: call the handler for each queued event, in order, forever."""
        fn = self.fn
        assert fn is not None
        q = self.queue
        try:
            await self._work(fn, q)
        except asyncio.CancelledError:
            if not self.stopped or _cancelled_by_anyio():
                raise
            # Removed, and its cancel scope did not take its own cancellation back: on
            # Python 3.11 a handler's asyncio.TaskGroup can leave the task with a cancel
            # request pending for good (fixed in 3.12). Ending with CancelledError would
            # make AnyIO cancel the whole client.

    async def _work(self, fn: Callable[[Any], Any], q: deque[Any]) -> None:
        with anyio.CancelScope() as self.scope:
            while True:
                if self.stopped:
                    return  # removed (perhaps before this task started, with no scope yet)
                if not q or self.shared or self.flight is not None:
                    self.wake.clear()
                    await self.wake.wait()
                    continue
                if self.thread:
                    latest = self.latest
                    if latest:
                        # Behind: the newest per symbol first. Then only what the handler
                        # gets through in about _THREAD_BATCH_S: the rest stays queued,
                        # where it is conflated with newer events.
                        # Only once the reader found it behind: the time the thread spent
                        # on its last batch is not the handler falling behind.
                        if self.behind and len(q) >= self.trim_at:
                            self._keep_newest()
                        batch: list[Any] = []
                        while q and len(batch) < self.thread_batch:
                            batch.append(q.popleft())
                    else:
                        batch = list(q)
                        q.clear()
                    started = time.monotonic()
                    try:
                        failures = await anyio.to_thread.run_sync(
                            self._run_batch, batch, abandon_on_cancel=True
                        )
                    except BaseException:
                        self.stopped = True  # the abandoned thread stops after its current event
                        raise
                    if latest:
                        per_event = (time.monotonic() - started) / len(batch)
                        self.thread_batch = max(
                            1, min(_THREAD_BATCH_MAX, int(_THREAD_BATCH_S / max(per_event, 1e-9)))
                        )
                    for exc, ev in failures:  # reported from the loop, not the worker thread
                        self._failed(exc, ev)
                    continue
                # An async handler (sync ones drain from loop callbacks, see drain()).
                # While it awaits, the reader may conflate the queue: re-check it.
                n = 0
                started = time.monotonic()
                while q and n < _BATCH and not self.stopped:
                    ev = q.popleft()
                    n += 1
                    try:
                        await fn(ev)
                    except Exception as exc:
                        self._failed(exc, ev)
                    except asyncio.CancelledError as exc:
                        self._failed_cancelled(exc, ev)
                runner = self.runner
                if (
                    runner is not None
                    and not self.suspends
                    and self._timed(n, time.monotonic() - started)
                    and not q
                    and not self.stopped
                    and self.flight is None
                ):
                    # Proven fast (no call suspended for long) over at least
                    # _DIRECT_MIN_EVENTS events: the shared worker calls it from now on.
                    runner.adopt(self)
                # Let the reader and other workers run between batches. (asyncio.sleep(0),
                # not anyio's checkpoint(): that looks up the event loop library on every
                # call, 6 % of the time in the async blast profile. A cancel scope still
                # cancels a task that yields like this.)
                await asyncio.sleep(0)

    def _run_batch(self, batch: list[Any]) -> list[tuple[BaseException, Any]]:
        """In a worker thread: call the handler for each event; return the failures."""
        fn = self.fn
        assert fn is not None
        failures: list[tuple[BaseException, Any]] = []
        for ev in batch:
            if self.stopped:
                break
            try:
                fn(ev)
            except (Exception, asyncio.CancelledError) as exc:
                # A CancelledError in a worker thread is the handler's own (a coroutine it
                # ran with anyio.from_thread.run() was cancelled): nothing cancels a thread.
                failures.append((exc, ev))
        return failures

    def _timed(self, n: int, elapsed: float) -> bool | None:
        """Add ``n`` calls that took ``elapsed`` s; the verdict once there are enough.

        None until at least _DIRECT_MIN_EVENTS calls are counted (over several batches
        when events come one at a time); then whether they averaged under
        _DIRECT_MAX_S, and the count starts over.
        """
        self.timed_events += n
        self.timed_s += elapsed
        if self.timed_events < _DIRECT_MIN_EVENTS:
            return None
        fast = self.timed_s < self.timed_events * _DIRECT_MAX_S
        self.timed_events = 0
        self.timed_s = 0.0
        return fast

    def _failed_cancelled(self, exc: asyncio.CancelledError, event: Any) -> None:
        """An async handler raised CancelledError: re-raise it if the worker is cancelled.

        Workers are cancelled only through AnyIO cancel scopes: the client's when it
        stops, the worker's own (or that of the shared worker's task left with a call,
        ``Slot.flight``) when the handler is removed. Any other CancelledError is the
        handler's own (it awaited a task or future cancelled elsewhere), reported like
        any exception: it must not end the worker, since AnyIO takes a child task that
        ends cancelled for no reason of its own as a reason to cancel the whole client.
        (Not ``Task.cancelling()``: on Python 3.11 a handler's asyncio.TaskGroup can
        leave it above zero for good.)
        """
        if _cancelled_by_anyio():
            raise exc
        self._failed(exc, event)

    def direct_failed(self, exc: BaseException, event: Any) -> None:
        """The handler, called from the reader (see _push_drain), raised ``exc``."""
        if isinstance(exc, Exception):
            self._failed(exc, event)
            return
        # As from a drain: the event loop gets it (it logs it, or stops on
        # KeyboardInterrupt and SystemExit); the reader goes on.
        self.direct = False
        self.loop.call_soon(_reraise, exc)  # type: ignore[union-attr]

    def _failed(self, exc: BaseException, event: Any) -> None:
        if self.report is None:
            return
        try:
            self.report(self, exc, event)
        except Exception:  # reporting must never end the worker
            log.exception("could not report an exception of handler %s", self.name)

    def cancel(self) -> None:
        self.stopped = True
        self.direct = False
        runner = self.runner
        if self.shared and runner is not None:
            if runner.serving is self and runner.task is not asyncio.current_task():
                # The shared worker's task is suspended in a call of this handler: leave
                # that task to it (and to the cancellation below), go on with a new one.
                runner._check(runner.generation)
            runner.release(self)
        # Cancel scopes: AnyIO shields inside the handler hold, and from inside the
        # handler's own call the cancellation comes at its next await.
        if self.scope is not None:
            self.scope.cancel()
        if self.flight is not None:
            self.flight.cancel()

    def start(
        self,
        start_soon: Callable[[Callable[[], Any]], Any],
        runner: SharedWorker | None = None,
    ) -> None:
        """Begin delivering: a worker task, or (sync handlers) drains on the loop.

        ``runner``: the shared worker that an async handler joins once proven fast.
        """
        if self.is_async and not self.thread:
            self.runner = runner
        if self.inline:
            self.loop = asyncio.get_running_loop()  # also for a slot added mid-run
            self.stopped = False
            if self.queue and not self.scheduled:
                self._schedule()
        else:
            start_soon(self.run)


class SharedWorker:
    """One task that calls the async handlers that have proved fast, a queue at a time.

    An async handler starts with a worker task of its own, woken by the reader once per
    batch. A task switch costs about 5 µs, and the tasks run one after another: with ten
    handlers of a burst, the last is called some 50 µs after the reader. Once a
    handler's calls have averaged under ``_DIRECT_MAX_S`` over at least
    ``_DIRECT_MIN_EVENTS`` events, its own worker hands it to this one: the reader then
    puts the handler's queue (still its own, bounded and conflated as always) on this
    worker's ready list, and one task drains every ready queue in turn.

    It keeps the guarantees of separate workers:

    - A handler that suspends (awaits a network call, a sleep, a lock) does not hold up
      the others: the first time the worker's task is suspended inside a call, a loop
      callback it scheduled (``_check``) starts a new task for the ready list, and the
      old task finishes that handler's call and hands its queue back to its own worker.
      That handler keeps its own worker from then on (``Slot.suspends``).
    - A handler whose calls here average more than ``_DIRECT_MAX_S`` goes back to its own
      worker until it proves fast again.
    - One call at a time per handler, in order: a handler is on the ready list at most
      once (``Slot.scheduled``); it joins only from its own worker with an empty queue
      and leaves while none of its calls runs here, and its own worker waits while it is
      shared or a call of it is still in flight.
    - Each queue is drained for at most about 1 ms before the next ready one (it goes to
      the back of the list), and the task gives the event loop a turn every 1 ms.
    """

    def __init__(self, start_soon: Callable[[Callable[[], Any]], Any]) -> None:
        self.ready: deque[Slot] = deque()
        self.wake = asyncio.Event()
        self.members: set[Slot] = set()
        self.start_soon = start_soon
        #: Bumped when the running task is left with a call that suspended.
        self.generation = 0
        self.task: asyncio.Task[Any] | None = None
        #: The slot whose queue the task is draining, None between queues.
        self.serving: Slot | None = None
        #: The cancel scope of the task serving now (see run()).
        self.scope: anyio.CancelScope | None = None

    def adopt(self, slot: Slot) -> None:
        """From the slot's own worker, with its queue empty: drained here from now on."""
        slot.shared = True
        slot.scheduled = False
        self.members.add(slot)

    def release(self, slot: Slot) -> None:
        """Back to its own worker: between its calls, or when it is removed (the drain
        loop then stops at once, and the own worker does not start)."""
        slot.shared = False
        slot.scheduled = False
        self.members.discard(slot)
        if slot.queue and not slot.stopped:
            slot.wake.set()

    def release_all(self) -> None:
        """Every handler back to its own worker (the client's run ended)."""
        for slot in list(self.members):
            self.release(slot)
        self.ready.clear()
        self.serving = None
        self.generation += 1

    def _check(self, generation: int) -> None:
        """A loop callback, once per slice: is the task suspended inside a handler call?

        The task runs synchronously from the start of a slice until it awaits: either at
        the slice's end (``serving`` is None then) or inside a call that suspended.
        """
        slot = self.serving
        if slot is None or generation != self.generation:
            return
        self.generation += 1  # the old task finishes this call; a new one takes over
        flight = self.scope
        slot.flight = flight
        self.serving = None
        self.task = None
        self.start_soon(self.run)
        if slot.stopped and flight is not None:
            # It removed itself in this very call, then awaited: cancelled, as in its
            # own worker.
            flight.cancel()

    async def run(self) -> None:
        """Drain the ready queues (until this task is left with a call that suspended)."""
        generation = self.generation
        self.task = asyncio.current_task()
        at = _Serving()
        try:
            # One cancel scope for the task's life: if the task is left with a call that
            # suspended (see _check), removing that handler cancels the call through it
            # (Slot.flight), as through its own worker's scope.
            with anyio.CancelScope() as scope:
                self.scope = scope
                await self._serve(generation, at)
        except asyncio.CancelledError:
            if generation == self.generation or _cancelled_by_anyio():
                raise
            # The handler's removal cancelled this task's scope, and the scope did not
            # take the cancellation back (a pending cancel request left by a handler's
            # asyncio.TaskGroup on Python 3.11, see Slot.run).
        # This task was left with a call of ``at.slot`` that suspended, and has finished
        # it (or the handler was removed and the call cancelled). That handler goes back
        # to its own worker for good.
        slot = at.slot
        assert slot is not None
        slot.suspends = True
        slot.flight = None
        self.release(slot)

    async def _serve(self, generation: int, at: _Serving) -> None:
        """Drain ready queues in slices of about 1 ms until this task is left with a call."""
        ready = self.ready
        loop = asyncio.get_running_loop()
        monotonic = time.monotonic
        while True:
            if not ready:
                self.wake.clear()
                await self.wake.wait()
                continue
            loop.call_soon(self._check, generation)
            deadline = monotonic() + _SLICE_S
            while ready:
                slot = ready.popleft()
                if not _deliverable(slot):
                    continue  # released or removed since it was scheduled
                self.serving = at.slot = slot
                fn = slot.fn
                assert fn is not None
                q = slot.queue
                n = 0
                started = monotonic()
                while q and slot.shared and not slot.stopped:
                    ev = q.popleft()
                    n += 1
                    try:
                        await fn(ev)
                    except Exception as exc:
                        slot._failed(exc, ev)
                    except asyncio.CancelledError as exc:
                        slot._failed_cancelled(exc, ev)
                    if not n & 15 and monotonic() > deadline:
                        break
                if generation != self.generation:
                    return  # this task was left with a call of this handler: see run()
                self.serving = None
                if slot.stopped:
                    continue  # removed from inside its own call
                if slot._timed(n, monotonic() - started) is False:
                    self.release(slot)  # turned slow: own worker until proven fast
                    continue
                if q:
                    ready.append(slot)  # its turn again after the other ready ones
                else:
                    slot.scheduled = False
                if monotonic() > deadline:
                    break
            # Let the reader and other tasks run between slices.
            await asyncio.sleep(0)


class _Serving:
    """Where a shared worker task is: the handler it serves."""

    __slots__ = ("slot",)

    def __init__(self) -> None:
        self.slot: Slot | None = None


def _deliverable(slot: Slot) -> bool:
    """Still drained by the shared worker: neither released nor removed."""
    return slot.shared and not slot.stopped


def _cancelled_by_anyio() -> bool:
    """Whether a cancel scope around the current task (the client's, a worker's) is cancelled."""
    return anyio.current_effective_deadline() == -math.inf


class HookRunner:
    """Runs lifecycle hooks (connect, disconnect, reconnect, error) in order, off the reader."""

    def __init__(self) -> None:
        self.queue: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self.wake = asyncio.Event()
        #: Hook calls dropped because the queue was full (logged as they happen).
        self.dropped = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if len(self.queue) >= _MAX_HOOK_QUEUE:
            # A slow hook under a flood of errors must not grow memory: drop, count, log.
            self.dropped += 1
            if self.dropped == 1 or not self.dropped % 1000:
                log.warning(
                    "hooks are %d calls behind; dropped %d hook call(s) so far (%s)",
                    len(self.queue),
                    self.dropped,
                    callable_name(fn),
                )
            return
        self.queue.append((fn, args))
        self.wake.set()

    async def run(self) -> None:
        q = self.queue
        while True:
            if not q:
                self.wake.clear()
                await self.wake.wait()
                continue
            fn, args = q.popleft()
            try:
                result = fn(*args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("hook %s raised", callable_name(fn))
