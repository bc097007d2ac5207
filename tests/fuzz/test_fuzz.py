"""Hostile server frames through a real socket: no crash, typed handlers see only valid
events, and every frame is accounted for in ``ws.stats``.

The suite-sized version of the fuzz figure of ``python -m bench.reliability`` (see
docs/reliability.md): a Hypothesis property test and a few thousand mutated frames, sent
by a quiet simulated exchange (``send_raw``) to a client with dict and typed handlers on
ticker, candles, orders and portfolio channels. :class:`bench.fuzzframes.FuzzRig` does
the checks after each batch:

- ``messages_total + control_messages + dropped_frames`` grew by the frames sent;
- every data message of a channel reached its dict handler, and its typed handler or
  ``invalid_events``;
- no frame escaped the decoder into the reader's safety net;
- typed handlers got only fully valid instances;
- the client stayed connected, with nothing conflated.
"""

from __future__ import annotations

import random
from collections import Counter
from decimal import Decimal
from typing import TYPE_CHECKING

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentstream import Ticker
from bench.fuzzframes import (
    MAX_FRAME,
    ROUTES,
    Frame,
    FuzzRig,
    Mutator,
    ValidFrames,
    hostile_frames,
    typed_problems,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

pytestmark = pytest.mark.anyio


@pytest.fixture
async def rig() -> AsyncIterator[FuzzRig]:
    async with FuzzRig.start() as r:
        yield r


def _report(frames: Sequence[Frame], problems: list[str]) -> str:
    shown = "\n".join(f"  {f.short(200)}" for f in frames[:10])
    return "\n".join(problems) + f"\nframes:\n{shown}"


# One rig serves every example: the fixture is not reset between them, on purpose.
@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(frames=st.lists(hostile_frames(), min_size=1, max_size=6))
async def test_hypothesis_frames(rig: FuzzRig, frames: list[Frame]) -> None:
    cp = await rig.send(frames, timeout=10)
    assert cp.ok, _report(frames, cp.problems)


async def test_mutated_frames(rig: FuzzRig) -> None:
    mutator = Mutator(seed=7)
    valid = ValidFrames(random.Random(8))
    rng = random.Random(9)
    failures: list[str] = []
    totals: Counter[str] = Counter()
    for _ in range(10):
        batch = [valid.frame() if rng.random() < 0.1 else mutator.frame() for _ in range(500)]
        cp = await rig.send(batch)
        totals.update(data=cp.data, control=cp.control, dropped=cp.dropped, invalid=cp.invalid)
        if not cp.ok:
            found = await rig.isolate(batch, limit=3)
            failures += [_report([f], p) for f, p in found] or cp.problems
    assert not failures, "\n\n".join(failures[:6])
    assert rig.violations == 0, rig.violation_examples
    # The frames reached every path: data, control, dropped and invalid typed events.
    assert min(totals.values()) > 0, totals
    assert rig.ws.stats.reconnects == 0


async def test_connection_ending_frames_reconnect_and_resubscribe(rig: FuzzRig) -> None:
    # Invalid UTF-8 in a text frame (close 1007) and a frame above max_message_size
    # (1009) end the connection by design; the client comes back with every channel
    # subscribed exactly once, and keeps counting exactly afterwards.
    for payload in (b'{"channel":"ticker","data":"\xff"}', b'"' + b"x" * (1 << 20) + b'"'):
        ok, reason = await rig.send_connection_killer(payload)
        assert ok, reason
    valid = ValidFrames(random.Random(3))
    cp = await rig.send([valid.frame() for _ in range(200)])
    assert cp.ok, cp.problems
    assert rig.ws.stats.reconnects == 2


def test_typed_checker_catches_invalid_events() -> None:
    good = msgspec.json.decode(
        b'{"price":"1.5","quantity":"2","timestamp":"2026-02-23T15:30:45.123Z"}', type=Ticker
    )
    msgspec.structs.force_setattr(good, "symbol", "BTCUSDT")
    assert typed_problems(good, "ticker:BTCUSDT") == []
    assert typed_problems(good, "ticker:ETHUSDT") == ["symbol 'BTCUSDT'"]
    for field, value in (("price", Decimal(-1)), ("price", Decimal("NaN")), ("quantity", 2.0)):
        bad = msgspec.structs.replace(good)
        msgspec.structs.force_setattr(bad, field, value)
        assert typed_problems(bad, "ticker:BTCUSDT"), (field, value)


def test_generated_frames_are_sendable_and_reproducible() -> None:
    frames = Mutator(seed=11).frames(3000)
    assert [f.payload for f in frames[:50]] == [f.payload for f in Mutator(seed=11).frames(50)]
    for f in frames:
        data = f.payload.encode() if isinstance(f.payload, str) else f.payload
        assert len(data) <= MAX_FRAME
        assert f.binary or isinstance(f.payload, str)
    kinds = Counter(f.origin.split(":")[0] for f in frames)
    assert kinds["mutation"] > 2500, kinds
    assert set(ROUTES) >= {"orders", "portfolio"}
