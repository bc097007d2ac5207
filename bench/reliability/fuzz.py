"""The fuzz figure: a million hostile frames through a real socket, every one accounted for."""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import TYPE_CHECKING

from bench.fuzzframes import Frame, FuzzRig, Mutator, ValidFrames, hypothesis_frames
from bench.reliability.common import Figure, Options

if TYPE_CHECKING:
    from bench.fuzzframes import Checkpoint

__all__ = ["run_fuzz"]

BATCH = 2000
VALID_SHARE = 0.1  # valid frames interleaved, so data keeps flowing
ISOLATED_BATCHES = 3  # failing batches replayed frame by frame for evidence


def _problem_kind(problem: str) -> str:
    """A failing check's category, without its batch-specific numbers."""
    for prefix in (
        "accounting",
        "typed channels",
        "marker",
        "handler queues",
        "reconnected",
        "markers arrived",
    ):
        if problem.startswith(prefix):
            return prefix
    if "escaped the decoder" in problem:
        return "escaped the decoder"
    if "reached a typed handler" in problem:
        return "invalid event reached a typed handler"
    if "dict handler got" in problem:
        return "data message counted but not delivered to the dict handler"
    return problem[:60]


async def run_fuzz(opts: Options) -> Figure:
    total = opts.fuzz_frames
    n_hyp = min(opts.hypothesis_frames, total)
    fig = Figure(
        "fuzz",
        "",
        f"{total:,} frames: 0 crashes, 0 invalid typed events, every frame counted once",
        None,
    )
    t_gen = time.perf_counter()
    hyp = hypothesis_frames(n_hyp, seed=opts.seed)
    gen_hyp = time.perf_counter() - t_gen
    mutator = Mutator(seed=opts.seed)
    valid = ValidFrames(random.Random(opts.seed + 7))
    rng = random.Random(opts.seed + 11)
    origins: Counter[str] = Counter()
    problem_kinds: Counter[str] = Counter()
    examples: list[str] = []
    failing_batches = 0
    isolated = 0
    sent = accounted = data = control = dropped = invalid = 0
    n_valid = 0
    gen_time = replay_time = 0.0
    killers: list[str] = []
    seen: set[str] = set()
    t0 = time.perf_counter()
    async with FuzzRig.start() as rig:
        done = 0
        while done < total:
            size = min(BATCH, total - done)
            tg = time.perf_counter()
            batch: list[Frame] = []
            for _ in range(size):
                if rng.random() < VALID_SHARE:
                    batch.append(valid.frame())
                    n_valid += 1
                elif hyp:
                    batch.append(hyp.pop())
                else:
                    batch.append(mutator.frame())
            gen_time += time.perf_counter() - tg
            for f in batch:
                origins[f.origin.split(":")[0] + (" (binary)" if f.binary else "")] += 1
            cp: Checkpoint = await rig.send(batch)
            done += size
            sent += cp.sent
            accounted += cp.accounted
            data += cp.data
            control += cp.control
            dropped += cp.dropped
            invalid += cp.invalid
            if not cp.ok:
                failing_batches += 1
                for p in cp.problems:
                    problem_kinds[_problem_kind(p)] += 1
                # Replay a failing batch early, one past 40 % and one past 80 % of the run.
                if isolated < ISOLATED_BATCHES and done >= total * 0.4 * isolated:
                    isolated += 1
                    ti = time.perf_counter()
                    for frame, problems in await rig.isolate(batch, limit=4, seen=seen):
                        examples.append(f"{frame.short(110)}\n      -> {'; '.join(problems)}")
                    replay_time += time.perf_counter() - ti
        elapsed = time.perf_counter() - t0 - replay_time
        # Frames that end the connection by design (RFC 6455): invalid UTF-8 in a text
        # frame (1007), a frame above max_message_size (1009). Not part of the count.
        for label, payload in (
            ("invalid UTF-8 text frame", b'{"channel":"ticker","data":"\xff\xfe"}'),
            ("lone continuation byte", b"\x80"),
            ("text frame of 1 MiB + 1 byte", b'"' + b"x" * (1 << 20) + b'"'),
        ):
            ok, reason = await rig.send_connection_killer(payload)
            killers.append(
                f"{label}: {'reconnected, resubscribed exactly' if ok else 'FAILED'} ({reason})"
            )
        rig_ok = rig.ws.stats.state == "connected"
        internal = rig.errors.count
        internal_kinds = rig.errors.kinds.most_common(6)
        violations = rig.violations
        violation_examples = list(rig.violation_examples)
        stats = rig.ws.stats
        typed_calls = sum(rig.typed_calls.values())
        dict_calls = sum(rig.dict_calls.values())
        decode_errors = rig.decode_errors
    rate = sent / elapsed if elapsed else 0.0
    unaccounted = sent - accounted
    fig.seconds = time.perf_counter() - t_gen
    fig.passed = (
        failing_batches == 0
        and violations == 0
        and internal == 0
        and rig_ok
        and all("FAILED" not in k for k in killers)
    )
    fig.measured = (
        f"{total:,} frames, 0 crashes, {violations} invalid typed events, "
        f"{failing_batches}/{-(-total // BATCH)} batches with uncounted or miscounted frames"
    )
    fig.details = [
        f"frames: {total:,} = {n_hyp - len(hyp):,} Hypothesis + {n_valid:,} valid + "
        f"{total - n_valid - (n_hyp - len(hyp)):,} mutations (+ {sent - total:,} markers); "
        f"{', '.join(f'{k} {v:,}' for k, v in origins.most_common())}",
        f"through the socket at {rate:,.0f} frames/s ({elapsed:.1f} s; generating them took "
        f"{gen_hyp:.1f} s for Hypothesis + {gen_time:.1f} s in the loop; replaying failures "
        f"one by one, not counted, {replay_time:.1f} s)",
        f"client counters: messages_total +{data:,}, control_messages +{control:,}, "
        f"dropped_frames +{dropped:,}; sum {accounted:,} vs {sent:,} frames sent "
        f"({'exact' if unaccounted == 0 else f'{-unaccounted:+,} frames counted twice or more'}); "
        f"invalid_events +{invalid:,}; on_error DecodeErrors {decode_errors:,}",
        f"handlers: typed got {typed_calls:,} events, {violations} of them invalid; dict got "
        f"{dict_calls:,}",
        f"frames that escaped the decoder into the reader's safety net (ERROR 'internal "
        f"error while handling a frame', not counted as dropped): {internal:,}",
        *[f"  {n:,} x {k}" for k, n in internal_kinds],
        f"client state at the end: {stats.state}, reconnects {stats.reconnects} "
        f"(connection-ending frames below: {len(killers)})",
        *killers,
    ]
    if problem_kinds:
        fig.details.append(
            "failing checks (batches): "
            + ", ".join(f"{k} {v}" for k, v in problem_kinds.most_common())
        )
    if examples:
        fig.details.append(
            f"examples (frames replayed one by one from {isolated} failing batches):"
        )
        fig.details.extend(f"  {e}" for e in examples[:12])
    if violation_examples:
        fig.details.append("invalid typed events:")
        fig.details.extend(f"  {v}" for v in violation_examples)
    fig.data = {
        "frames": total,
        "sent_with_markers": sent,
        "accounted": accounted,
        "messages_total": data,
        "control_messages": control,
        "dropped_frames": dropped,
        "invalid_events": invalid,
        "internal_errors": internal,
        "typed_violations": violations,
        "failing_batches": failing_batches,
        "frames_per_s": rate,
        "origins": dict(origins),
        "problem_kinds": dict(problem_kinds),
    }
    return fig
