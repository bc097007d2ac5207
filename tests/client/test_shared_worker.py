"""Async handlers proven fast share one worker task: it must keep every guarantee of
separate workers (order, one call at a time, a suspending or slow handler delays only
itself, removal cancels), against the real simulated exchange."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import pytest

from agentstream.sim import SimExchange
from tests.client.conftest import make_client, running, wait_for

if TYPE_CHECKING:
    from agentstream import AgentExchangeWS

pytestmark = pytest.mark.anyio


def _slot(ws: AgentExchangeWS, fn: Any, key: str = "ticker:all") -> Any:
    return next(s for s in ws._slots[key] if s.fn is fn)


def _reference(ws: AgentExchangeWS) -> list[dict[str, Any]]:
    """A sync handler on ticker:all: the order every handler must see events in."""
    seen: list[dict[str, Any]] = []
    ws.on_ticker("all", seen.append, every=True)
    return seen


def _busy(seconds: float) -> None:
    """Keep the CPU busy (a handler that is slow without suspending)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _cancelled_future() -> asyncio.Future[None]:
    """Something cancelled elsewhere: awaiting it raises a CancelledError of one's own."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.cancel()
    return future


def _in_order(got: list[dict[str, Any]], ref: list[dict[str, Any]]) -> None:
    """``got`` is ``ref``'s first events, the very same objects, none missing or extra."""
    assert len(got) > 0
    assert len(got) <= len(ref)
    bad = next((i for i, (a, b) in enumerate(zip(got, ref, strict=False)) if a is not b), None)
    assert bad is None, f"event {bad} out of order or missing"


async def test_fast_async_handlers_share_one_task_and_keep_order(sim: SimExchange) -> None:
    ws = make_client(sim)
    ref = _reference(ws)
    got: dict[str, list[dict[str, Any]]] = {"a": [], "b": [], "c": []}
    tasks: dict[str, set[asyncio.Task[Any] | None]] = {k: set() for k in got}

    def handler(name: str) -> Any:
        async def on_tick(data: dict[str, Any]) -> None:
            got[name].append(data)
            if _slot(ws, on_tick).shared:
                tasks[name].add(asyncio.current_task())

        return on_tick

    fns = {name: handler(name) for name in got}
    for fn in fns.values():
        ws.on_ticker("all", fn, every=True)
    async with running(ws):
        await wait_for(
            lambda: (
                all(len(t) > 0 for t in tasks.values()) and all(len(g) > 200 for g in got.values())
            ),
            what="all three handlers called by the shared worker",
        )
        shared_tasks = set().union(*tasks.values())
        for name in got:
            _in_order(got[name], ref)
    assert len(shared_tasks) == 1, "fast handlers did not share one task"


async def test_a_handler_that_suspends_does_not_hold_up_the_others(sim: SimExchange) -> None:
    # A is proven fast and shared with B, then one of its calls waits until B has had 50
    # more events. If the shared worker waited for A's call, B would get none: deadlock.
    ws = make_client(sim)
    ref = _reference(ws)
    a_got: list[dict[str, Any]] = []
    b_got: list[dict[str, Any]] = []
    b_needed: list[int] = []
    b_moved_on = asyncio.Event()

    async def on_a(data: dict[str, Any]) -> None:
        a_got.append(data)
        if not b_needed and _slot(ws, on_a).shared and _slot(ws, on_b).shared:
            b_needed.append(len(b_got) + 50)
            await b_moved_on.wait()

    async def on_b(data: dict[str, Any]) -> None:
        b_got.append(data)
        if b_needed and len(b_got) >= b_needed[0]:
            b_moved_on.set()

    ws.on_ticker("all", on_a, every=True)
    ws.on_ticker("all", on_b, every=True)
    async with running(ws):
        await wait_for(lambda: b_moved_on.is_set(), what="B's events while A's call waits")
        after = len(a_got)
        await wait_for(lambda: len(a_got) > after + 100, what="A's events after its call")
        a = _slot(ws, on_a)
        assert a.suspends
        assert not a.shared  # it has its own worker from now on
        assert _slot(ws, on_b).shared
        _in_order(a_got, ref)
        _in_order(b_got, ref)
        assert ws.stats.handler_errors == 0


async def test_removing_a_handler_cancels_its_suspended_call_and_nothing_else(
    sim: SimExchange,
) -> None:
    ws = make_client(sim)
    states: list[str] = []
    others: list[dict[str, Any]] = []

    async def stuck(data: dict[str, Any]) -> None:
        if not states and _slot(ws, stuck).shared:
            states.append("waiting")
            try:
                await asyncio.Event().wait()  # never set
            except asyncio.CancelledError:
                states.append("cancelled")
                with anyio.CancelScope(shield=True):  # a clean-up that must not be cut short
                    await asyncio.sleep(0.005)
                states.append("cleaned up")
                raise

    async def other(data: dict[str, Any]) -> None:
        others.append(data)

    ws.on_ticker("all", stuck, every=True)
    ws.on_ticker("all", other, every=True)
    async with running(ws):
        await wait_for(lambda: states == ["waiting"], what="the stuck call")
        slot = _slot(ws, stuck)
        await wait_for(lambda: slot.flight is not None, what="the stuck call left to its task")
        assert ws.remove_handler(stuck) == 1
        await wait_for(
            lambda: states == ["waiting", "cancelled", "cleaned up"], what="the cancellation"
        )
        await wait_for(lambda: slot.flight is None, what="the call's task to end")
        before = len(others)
        await wait_for(lambda: len(others) > before + 200, what="the other handler's events")
        state = ws.stats.state
    assert state == "connected"
    assert ws.stats.reconnects == 0
    assert ws.stats.handler_errors == 0


@pytest.mark.parametrize("shared", [False, True], ids=["own-worker", "shared-worker"])
async def test_a_handlers_own_cancelled_error_is_reported_not_fatal(
    sim: SimExchange, shared: bool
) -> None:
    # A handler that awaits a future cancelled elsewhere gets a CancelledError nobody
    # meant for the worker. It is the handler's failure: reported, and the stream and
    # the handler go on (a worker task ending "cancelled" would stop the whole client).
    ws = make_client(sim)
    raised: list[bool] = []
    calls: list[int] = []

    async def tick(data: dict[str, Any]) -> None:
        calls.append(1)
        if not raised and _slot(ws, tick).shared == shared:
            raised.append(True)
            await _cancelled_future()

    ws.on_ticker("all", tick, every=True)
    async with running(ws):
        await wait_for(lambda: raised, what="the CancelledError")
        after = len(calls)
        await wait_for(lambda: len(calls) > after + 100, what="events after it")
        state = ws.stats.state
        errors = ws.stats.handler_errors
    assert state == "connected"
    assert errors == 1
    assert ws.stats.reconnects == 0


async def test_a_shared_handler_that_turns_slow_gets_its_own_worker_back(
    sim: SimExchange,
) -> None:
    ws = make_client(sim)
    slow: list[bool] = []
    calls: list[int] = []

    async def tick(data: dict[str, Any]) -> None:
        calls.append(1)
        if slow:
            _busy(100e-6)  # never suspends

    ws.on_ticker("all", tick, every=True)
    async with running(ws):
        slot = _slot(ws, tick)
        await wait_for(lambda: slot.shared, what="the handler proven fast")
        slow.append(True)
        await wait_for(lambda: not slot.shared, what="the handler back on its own worker")
        assert not slot.suspends  # slow, not suspending: it may prove fast again
        after = len(calls)
        await wait_for(lambda: len(calls) > after + 50, what="events on its own worker")


@pytest.mark.parametrize("shared", [False, True], ids=["own-worker", "shared-worker"])
async def test_an_async_handler_that_removes_itself_gets_no_more_events(shared: bool) -> None:
    # Removed from inside its own call with more of its events queued: none of those
    # may reach it (the firehose keeps its queue from being empty), and an await after
    # the removal is cancelled, on its own worker as on the shared one.
    async with SimExchange(firehose=True) as sim:
        ws = make_client(sim)
        calls: list[int] = []
        others: list[int] = []
        left: list[int] = []
        after_removal: list[str] = []

        async def once_shared(data: dict[str, Any]) -> None:
            calls.append(1)
            slot = _slot(ws, once_shared)
            if not left and slot.shared == shared and len(slot.queue) >= 2:
                left.append(len(calls))
                ws.remove_handler(once_shared)
                try:
                    await asyncio.sleep(0.01)
                    after_removal.append("went on")
                except asyncio.CancelledError:
                    after_removal.append("cancelled")
                    raise

        async def other(data: dict[str, Any]) -> None:
            others.append(1)

        ws.on_ticker("all", once_shared, every=True)
        ws.on_ticker("all", other, every=True)
        async with running(ws):
            await wait_for(lambda: left, what="the handler to remove itself")
            await wait_for(lambda: after_removal, what="the await after the removal to end")
            before = len(others)
            await wait_for(lambda: len(others) > before + 1000, what="the other's events")
            state = ws.stats.state
        assert len(calls) == left[0]  # none after the call that removed it
        assert after_removal == ["cancelled"]
        assert state == "connected"
        assert ws.stats.handler_errors == 0


@pytest.mark.parametrize("where", ["thread", "reader"])
async def test_a_shared_handler_removed_elsewhere_gets_none_of_its_queued_events(
    where: str,
) -> None:
    # remove_handler() from another thread, or from a sync handler the reader calls
    # (the worker change waits for the end of the batch): once it has returned, the
    # shared worker must not call the handler again, although its queue still holds
    # events until the change is applied.
    async with SimExchange(firehose=True) as sim:
        ws = make_client(sim)
        removed: list[bool] = []
        late: list[int] = []

        async def x(data: dict[str, Any]) -> None:
            if removed:
                late.append(1)

        def remover(data: dict[str, Any]) -> None:
            slot = next((s for s in ws._slots["ticker:all"] if s.fn is x), None)
            if (
                where == "reader"
                and not removed
                and slot is not None
                and slot.shared
                and ws._router.feeding
                and slot.queue
            ):
                ws.remove_handler(x)
                removed.append(True)

        ws.on_ticker("all", x, every=True)
        ws.on_ticker("all", remover, every=True)
        async with running(ws):
            if where == "thread":
                slot = _slot(ws, x)
                await wait_for(lambda: slot.shared, what="x proven fast")

                def remove_with_events_queued() -> None:
                    while not slot.queue:
                        pass
                    ws.remove_handler(x)
                    removed.append(True)

                thread = threading.Thread(target=remove_with_events_queued)
                thread.start()
                await wait_for(lambda: removed, what="the removal")
                thread.join()
            else:
                await wait_for(lambda: removed, timeout=10, what="the removal")
            await asyncio.sleep(0.2)
        assert late == [], f"{len(late)} events delivered after remove_handler() returned"


async def test_handlers_added_and_removed_at_once_leave_no_task_behind() -> None:
    # Removed before its worker task took its first step, a handler's worker has no
    # cancel scope yet to be cancelled through: it must still end (not wait forever,
    # nor spin on the events queued for it).
    async with SimExchange(firehose=True) as sim:
        ws = make_client(sim)
        ws.on_ticker("all", lambda data: None)

        def add_and_remove() -> None:
            for i in range(300):

                async def handler(data: dict[str, Any]) -> None:
                    pass

                ws.on_ticker("all", handler, every=True)
                if i % 2:
                    time.sleep(0.0002)
                ws.remove_handler(handler)

        async with running(ws):
            await asyncio.sleep(0.2)
            baseline = len(asyncio.all_tasks())
            thread = threading.Thread(target=add_and_remove)
            thread.start()
            while thread.is_alive():
                await asyncio.sleep(0.01)
            await wait_for(
                lambda: len(asyncio.all_tasks()) <= baseline,
                what=f"no task left ({len(asyncio.all_tasks())} against {baseline} before)",
            )
            state = ws.stats.state
        assert state == "connected"


@pytest.mark.parametrize("then", ["own CancelledError", "removal"])
async def test_a_task_group_in_a_handler_cannot_stop_the_client(then: str) -> None:
    # On Python 3.11, an asyncio.TaskGroup whose child fails after the body finished
    # leaves the task with a cancel request pending for good (fixed in 3.12). The
    # handler's own CancelledError must still be told from a cancellation, and its
    # removal must not end its worker "cancelled" (AnyIO would then stop the client).
    async with SimExchange(tick_rate=2000) as sim:
        ws = make_client(sim)
        calls: list[int] = []
        steps: list[str] = []
        others: list[int] = []

        async def fail_later() -> None:
            await asyncio.sleep(0.001)
            raise ValueError("child failed")

        async def tick(data: dict[str, Any]) -> None:
            calls.append(1)
            if not steps:
                steps.append("task group")
                with contextlib.suppress(ExceptionGroup):
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(fail_later())
            elif then == "own CancelledError" and len(calls) > 50 and len(steps) == 1:
                steps.append("cancelled future")
                await _cancelled_future()

        async def other(data: dict[str, Any]) -> None:
            others.append(1)

        ws.on_ticker("all", tick, every=True)
        ws.on_ticker("all", other, every=True)
        async with running(ws):
            await wait_for(lambda: len(calls) > 20, what="calls after the task group")
            if then == "removal":
                ws.remove_handler(tick)
            else:
                await wait_for(lambda: len(steps) == 2, what="the cancelled future")
            await asyncio.sleep(0.3)
            before = len(others)
            await wait_for(lambda: len(others) > before + 100, what="events afterwards")
            state = ws.stats.state
        assert state == "connected"
        assert ws.stats.handler_errors == (1 if then == "own CancelledError" else 0)


async def test_a_handler_removed_by_itself_raising_its_own_cancelled_error_is_reported(
    sim: SimExchange,
) -> None:
    # Removed from inside its call on the shared task, then a CancelledError of its own
    # (a future cancelled elsewhere), without suspending: a handler failure, not a
    # cancellation of the shared task (that would stop the whole client).
    ws = make_client(sim)
    done: list[bool] = []
    others: list[int] = []

    async def tick(data: dict[str, Any]) -> None:
        if not done and _slot(ws, tick).shared:
            done.append(True)
            ws.remove_handler(tick)
            await _cancelled_future()

    async def other(data: dict[str, Any]) -> None:
        others.append(1)

    ws.on_ticker("all", tick, every=True)
    ws.on_ticker("all", other, every=True)
    async with running(ws):
        await wait_for(lambda: done, what="the removal")
        before = len(others)
        await wait_for(lambda: len(others) > before + 200, what="events afterwards")
        state = ws.stats.state
    assert state == "connected"
    assert ws.stats.handler_errors == 1


async def test_a_thread_handlers_own_cancelled_error_is_reported(sim: SimExchange) -> None:
    # A blocking handler runs a coroutine with anyio.from_thread.run(); that coroutine
    # ends with a CancelledError of its own. Nothing cancels a thread: it is reported,
    # and the handler goes on getting events.
    ws = make_client(sim)
    calls: list[int] = []

    async def lookup() -> None:
        await _cancelled_future()

    def tick(data: dict[str, Any]) -> None:
        calls.append(1)
        if len(calls) == 20:
            anyio.from_thread.run(lookup)

    ws.on_ticker("all", tick, thread=True, every=True)
    async with running(ws):
        await wait_for(lambda: len(calls) > 200, what="events after the CancelledError")
        state = ws.stats.state
    assert state == "connected"
    assert ws.stats.handler_errors == 1


@pytest.mark.parametrize("shared", [False, True], ids=["own-worker", "shared-worker"])
async def test_removal_honours_a_shield_in_a_suspended_call(shared: bool) -> None:
    # Removing a handler cancels its call in flight through a cancel scope, so a shielded
    # section (placing an order, say) completes, on the shared worker as on its own.
    async with SimExchange(tick_rate=2000) as sim:
        ws = make_client(sim)
        steps: list[str] = []

        async def tick(data: dict[str, Any]) -> None:
            if steps or _slot(ws, tick).shared != shared:
                if not shared:  # keep it too slow to be shared
                    _busy(40e-6)
                return
            steps.append("shielded")
            with anyio.CancelScope(shield=True):
                await asyncio.sleep(0.1)
                steps.append("completed")
            await asyncio.sleep(0.2)  # not shielded: cancelled
            steps.append("not cancelled")

        ws.on_ticker("all", tick, every=True)
        async with running(ws):
            await wait_for(lambda: steps, timeout=10, what="the shielded section")
            ws.remove_handler(tick)
            await asyncio.sleep(0.5)
            state = ws.stats.state
        assert steps == ["shielded", "completed"]
        assert state == "connected"


async def test_a_handler_removing_itself_after_its_call_suspended_is_cancelled_at_its_next_await(
    sim: SimExchange,
) -> None:
    # Its call suspended on the shared task, which was left to finish it; then it
    # removes itself: its next await is cancelled, as on its own worker.
    ws = make_client(sim)
    steps: list[str] = []

    async def tick(data: dict[str, Any]) -> None:
        if steps or not _slot(ws, tick).shared:
            return
        steps.append("suspending")
        await asyncio.sleep(0.01)  # the shared task is left with this call
        ws.remove_handler(tick)
        try:
            await asyncio.sleep(1)
            steps.append("not cancelled")
        except asyncio.CancelledError:
            steps.append("cancelled")
            raise

    ws.on_ticker("all", tick, every=True)
    async with running(ws):
        await wait_for(lambda: len(steps) == 2, what="the await after the removal")
        state = ws.stats.state
    assert steps == ["suspending", "cancelled"]
    assert state == "connected"
