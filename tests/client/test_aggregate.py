"""The candle aggregator: coarser candles (15m, 4h) built exactly from finer closed ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentstream._aggregate import CandleAggregator
from agentstream.models import Candle

T0 = datetime(2026, 2, 23, 10, 0, tzinfo=UTC)  # a 15m boundary (and an hour's)
KEYS = {"symbol", "interval", "time", "open_time", "open", "high", "low", "close"}
KEYS |= {"volume", "is_closed"}


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def ms(t: datetime) -> int:
    return int(t.timestamp()) * 1000


def src(
    t: datetime | str | int,
    o: str = "100",
    h: str = "110",
    lo: str = "90",
    c: str = "105",
    v: str = "1",
    *,
    closed: bool = True,
    interval: str = "5m",
) -> dict[str, Any]:
    """A source candle as a dict handler receives it (``t`` a datetime is sent as ISO)."""
    when = iso(t) if isinstance(t, datetime) else t
    return {
        "symbol": "BTCUSDT",
        "interval": interval,
        "time": when,
        "open_time": when,
        "open": o,
        "high": h,
        "low": lo,
        "close": c,
        "volume": v,
        "is_closed": closed,
    }


def typed(d: dict[str, Any]) -> Candle:
    """The same source candle as a typed Candle."""
    return Candle(
        symbol=d["symbol"],
        interval=d["interval"],
        open_time=datetime.fromisoformat(d["time"]) if isinstance(d["time"], str) else d["time"],
        open=Decimal(d["open"]),
        high=Decimal(d["high"]),
        low=Decimal(d["low"]),
        close=Decimal(d["close"]),
        volume=Decimal(d["volume"]),
        is_closed=d["is_closed"],
    )


def m5(n: int) -> datetime:
    return T0 + timedelta(minutes=5 * n)


def agg15(*, partial: bool = True) -> CandleAggregator:
    return CandleAggregator("BTCUSDT", "15m", 900, 300, partial=partial)


WINDOW = [  # the three 5m candles of 10:00-10:15
    src(m5(0), "64500.00", "64550.00", "64490.00", "64521.30", "12.345"),
    src(m5(1), "64521.30", "64600.10", "64510.00", "64580.00", "3.1"),
    src(m5(2), "64580.00", "64590.00", "64400.05", "64455.50", "0.005"),
]
WINDOW_15M = {
    "symbol": "BTCUSDT",
    "interval": "15m",
    "time": "2026-02-23T10:00:00Z",
    "open_time": "2026-02-23T10:00:00Z",
    "open": "64500.00",
    "high": "64600.10",
    "low": "64400.05",
    "close": "64455.50",
    "volume": "15.450",
    "is_closed": True,
}


# -- exact OHLCV of a full window ------------------------------------------------------------


def test_full_window_of_dicts_is_exact() -> None:
    agg = agg15(partial=False)
    assert agg.feed(WINDOW[0]) == []
    assert agg.feed(WINDOW[1]) == []
    assert agg.feed(WINDOW[2]) == [WINDOW_15M]
    assert (agg.delivered, agg.incomplete, agg.ignored, agg.invalid) == (1, 0, 0, 0)


def test_full_window_of_candles_is_exact() -> None:
    agg = agg15(partial=False)
    out = [c for d in WINDOW for c in agg.feed(typed(d))]
    assert len(out) == 1
    c = out[0]
    assert type(c) is Candle
    assert c.symbol == "BTCUSDT"
    assert c.interval == "15m"
    assert c.open_time == c.time == T0
    assert c.open_time.utcoffset() == timedelta(0)
    assert (c.open, c.high, c.low, c.close, c.volume) == (
        Decimal("64500.00"),
        Decimal("64600.10"),
        Decimal("64400.05"),
        Decimal("64455.50"),
        Decimal("15.450"),
    )
    assert c.is_closed is True


def test_window_is_not_delivered_before_its_last_source_candle_closes() -> None:
    agg = agg15()
    out = agg.feed(WINDOW[0]) + agg.feed(WINDOW[1])
    assert [e["is_closed"] for e in out] == [False, False]
    assert agg.delivered == 0


def test_one_minute_to_one_hour_with_epoch_ms() -> None:
    agg = CandleAggregator("BTCUSDT", "1h", 3600, 60, partial=False)
    out = []
    for i in range(60):
        t = ms(T0 + timedelta(minutes=i))
        price = str(100 + i)
        high = "500" if i == 17 else price
        low = "1.5" if i == 42 else price
        out += agg.feed(src(t, price, high, low, price, "0.1", interval="1m"))
        if i < 59:
            assert out == []
    assert out == [
        {
            "symbol": "BTCUSDT",
            "interval": "1h",
            "time": ms(T0),
            "open_time": ms(T0),
            "open": "100",
            "high": "500",
            "low": "1.5",
            "close": "159",
            "volume": "6.0",
            "is_closed": True,
        }
    ]


# -- UTC alignment ---------------------------------------------------------------------------


def test_4h_windows_are_aligned_to_utc_multiples_of_4h() -> None:
    agg = CandleAggregator("BTCUSDT", "4h", 4 * 3600, 3600, partial=False)
    start = datetime(2026, 2, 22, 22, 0, tzinfo=UTC)  # inside the 20:00-24:00 window
    closed = []
    for i in range(10):  # 22:00 .. 07:00
        closed += agg.feed(src(start + timedelta(hours=i), v=str(i + 1), interval="1h"))
    assert [(c["time"], c["volume"]) for c in closed] == [
        ("2026-02-22T20:00:00Z", "3"),  # 22:00 + 23:00 (it started mid-window)
        ("2026-02-23T00:00:00Z", "18"),  # 00:00 .. 03:00: 3 + 4 + 5 + 6
        ("2026-02-23T04:00:00Z", "34"),  # 04:00 .. 07:00: 7 + 8 + 9 + 10
    ]
    assert agg.incomplete == 1


def test_15m_window_runs_from_10_00_to_10_15() -> None:
    agg = agg15(partial=False)
    assert agg.feed(src(m5(1), v="2")) == []  # 10:05 belongs to 10:00-10:15
    [c] = agg.feed(src(m5(2), v="3"))  # 10:10 closing closes the 10:00 window
    assert (c["time"], c["volume"]) == ("2026-02-23T10:00:00Z", "5")
    assert agg.feed(src(m5(3), v="7")) == []  # 10:15 opens the next one
    [c] = agg.feed(src(m5(5), v="1"))
    assert (c["time"], c["volume"]) == ("2026-02-23T10:15:00Z", "8")


# -- gaps ------------------------------------------------------------------------------------


def test_a_missing_last_candle_closes_the_window_on_the_next_windows_first_candle() -> None:
    agg = agg15()
    agg.feed(src(m5(0), "10", "12", "9", "11", "1"))
    agg.feed(src(m5(1), "11", "15", "10", "14", "2"))
    # 10:10 never closes; the first update of 10:15 (a forming one) ends the window.
    out = agg.feed(src(m5(3), "14", "16", "13", "15", "0.5", closed=False))
    assert len(out) == 2
    old, forming = out
    assert old == {
        **WINDOW_15M,
        "open": "10",
        "high": "15",
        "low": "9",
        "close": "14",
        "volume": "3",
    }
    assert forming["time"] == "2026-02-23T10:15:00Z"
    assert forming["is_closed"] is False
    assert (agg.delivered, agg.incomplete) == (1, 1)
    # The late 10:10 candle must not reopen or redeliver the 10:00 window.
    assert agg.feed(src(m5(2), v="99")) == []
    assert agg.ignored == 1


def test_a_gap_of_whole_windows_delivers_only_what_arrived() -> None:
    agg = agg15(partial=False)
    agg.feed(src(m5(0), v="1"))
    [c] = agg.feed(src(m5(7), v="4"))  # 10:35, two windows later
    assert (c["time"], c["volume"], c["is_closed"]) == ("2026-02-23T10:00:00Z", "1", True)
    [c] = agg.feed(src(m5(8), v="5"))
    assert (c["time"], c["volume"]) == ("2026-02-23T10:30:00Z", "9")
    assert (agg.delivered, agg.incomplete) == (2, 2)


def test_a_window_with_no_closed_candle_is_not_delivered() -> None:
    agg = agg15(partial=False)
    agg.feed(src(m5(0), closed=False))
    assert agg.feed(src(m5(3), v="2")) == []
    assert agg.delivered == 0


# -- forming updates -------------------------------------------------------------------------


def test_forming_updates_replace_each_other() -> None:
    agg = agg15()
    [f0] = agg.feed(src(m5(0), "10", "12", "9", "11", "1"))
    assert (f0["open"], f0["close"], f0["volume"], f0["is_closed"]) == ("10", "11", "1", False)
    [f1] = agg.feed(src(m5(1), "11", "50", "10", "40", "2", closed=False))
    assert (f1["high"], f1["close"], f1["volume"]) == ("50", "40", "3")
    [f2] = agg.feed(src(m5(1), "11", "13", "8", "12", "5", closed=False))
    # The second forming update of 10:05 replaces the first: its 50 high is gone.
    assert (f2["high"], f2["low"], f2["close"], f2["volume"]) == ("13", "8", "12", "6")
    [f3] = agg.feed(src(m5(1), "11", "13", "8", "12.5", "5.5"))  # 10:05 closes
    assert (f3["close"], f3["volume"], f3["is_closed"]) == ("12.5", "6.5", False)
    [f4] = agg.feed(src(m5(2), "12.5", "70", "12", "60", "1", closed=False))
    assert (f4["high"], f4["close"], f4["volume"]) == ("70", "60", "7.5")
    [c] = agg.feed(src(m5(2), "12.5", "14", "12", "13", "1.5"))
    assert c == {
        **WINDOW_15M,
        "open": "10",
        "high": "14",
        "low": "8",
        "close": "13",
        "volume": "8.0",
    }


def test_forming_updates_of_candles_are_candles() -> None:
    agg = agg15()
    [f] = agg.feed(typed(src(m5(0), closed=False)))
    assert type(f) is Candle
    assert (f.interval, f.open_time, f.is_closed) == ("15m", T0, False)


def test_without_partial_no_forming_update_is_built() -> None:
    agg = agg15(partial=False)
    assert agg.feed(src(m5(0), closed=False)) == []
    assert agg.feed(src(m5(0))) == []
    assert agg.feed(src(m5(1), closed=False)) == []
    assert agg.feed(src(m5(1))) == []
    [c] = agg.feed(src(m5(2)))
    assert c["is_closed"] is True
    assert c["volume"] == "3"


def test_a_stale_forming_update_is_ignored() -> None:
    agg = agg15()
    agg.feed(src(m5(1), closed=False))
    assert agg.feed(src(m5(0), h="999", closed=False)) == []  # older than 10:05's
    assert agg.ignored == 1
    [f] = agg.feed(src(m5(1), v="2", closed=False))
    assert f["high"] == "110"


# -- duplicates and late candles --------------------------------------------------------------


def test_duplicate_and_late_candles_are_ignored_and_counted() -> None:
    agg = agg15(partial=False)
    agg.feed(WINDOW[0])
    assert agg.feed({**WINDOW[0], "volume": "1000", "high": "99999"}) == []  # closed twice
    assert agg.feed({**WINDOW[0], "is_closed": False}) == []  # forming after closed
    agg.feed(WINDOW[1])
    assert agg.feed(WINDOW[2]) == [WINDOW_15M]
    assert agg.feed(WINDOW[2]) == []  # the window is never delivered twice
    assert agg.feed(WINDOW[1]) == []
    assert agg.feed({**WINDOW[1], "is_closed": False}) == []
    assert (agg.ignored, agg.delivered) == (5, 1)


def test_a_window_older_than_a_delivered_one_is_never_delivered() -> None:
    agg = agg15(partial=False)
    for n in (3, 4, 5):
        agg.feed(src(m5(n)))
    assert agg.delivered == 1
    for n in (0, 1, 2):  # the whole previous window, late
        assert agg.feed(src(m5(n))) == []
    assert (agg.ignored, agg.delivered) == (3, 1)


# -- invalid input ---------------------------------------------------------------------------


def _without(key: str) -> dict[str, Any]:
    d = src(m5(0), h="999")
    del d[key]
    return d


INVALID: list[object] = [
    None,
    "candle",
    [1, 2],
    42,
    {},
    *[_without(k) for k in ("open", "high", "low", "close", "volume", "is_closed")],
    {k: v for k, v in src(m5(0), h="999").items() if k not in ("time", "open_time")},
    src("yesterday", h="999"),
    src("2026-02-23", h="999"),
    src("2026-02-23T10:03:00Z", h="999"),  # not a 5m boundary
    src("2026-02-23T10:00:00.500Z", h="999"),
    src(ms(T0) + 1, h="999"),
    src(10**30, h="999"),
    src(True, h="999"),
    src(1.5e12, h="999"),  # type: ignore[arg-type]
    {**src(m5(0), h="999"), "open_time": "2026-02-23T10:05:00Z"},  # the two times disagree
    {**src(m5(0), h="999"), "time": ms(m5(1))},
    {**src(m5(0), h="999"), "time": "garbage"},
    {**src(m5(0)), "high": 999},
    {**src(m5(0)), "high": 999.5},
    {**src(m5(0)), "high": None},
    {**src(m5(0)), "high": "abc"},
    {**src(m5(0)), "high": "NaN"},
    {**src(m5(0)), "high": "Infinity"},
    {**src(m5(0)), "high": "1e999"},
    {**src(m5(0)), "high": " 999"},
    {**src(m5(0)), "high": "٩٩٩"},  # Arabic-Indic digits, which Decimal() accepts
    {**src(m5(0)), "open": "-1"},
    {**src(m5(0)), "open": "0"},
    {**src(m5(0)), "volume": "-0.1"},
    {**src(m5(0)), "low": "999", "high": "998"},
    {**src(m5(0)), "is_closed": "true"},
    {**src(m5(0)), "is_closed": 1},
    {**src(m5(0)), "symbol": "ETHUSDT"},
    {**src(m5(0)), "symbol": 7},
    Candle,  # a class, not a candle
    typed({**src(m5(0)), "symbol": "ETHUSDT"}),
]


@pytest.mark.parametrize("bad", INVALID, ids=range(len(INVALID)))
def test_invalid_input_is_counted_not_raised(bad: object) -> None:
    agg = agg15()
    assert agg.feed(bad) == []
    assert (agg.invalid, agg.ignored) == (1, 0)
    # It left no trace: the window still comes out exact.
    out = [e for d in WINDOW for e in agg.feed(d)]
    assert out[-1] == WINDOW_15M
    assert agg.invalid == 1


def test_time_and_open_time_may_be_written_differently_if_they_agree() -> None:
    agg = agg15()
    [f] = agg.feed({**src(m5(0)), "time": ms(T0)})
    assert f["time"] == f["open_time"] == "2026-02-23T10:00:00Z"  # open_time's form
    assert agg.invalid == 0


def test_a_misaligned_typed_candle_is_invalid() -> None:
    agg = agg15()
    assert agg.feed(typed(src("2026-02-23T10:01:00Z"))) == []
    assert agg.invalid == 1


def test_a_volume_sum_beyond_what_a_candle_holds_is_invalid_not_raised() -> None:
    agg = agg15(partial=False)
    big = "9" * 31
    agg.feed(typed(src(m5(0), v=big)))
    assert agg.feed(typed(src(m5(1), v=big))) == []  # the sum would have 32 digits
    assert agg.invalid == 1
    [c] = agg.feed(typed(src(m5(2), v="0")))
    assert c.volume == Decimal(big)


def test_the_interval_lengths_are_checked() -> None:
    with pytest.raises(ValueError, match="divide"):
        CandleAggregator("BTCUSDT", "15m", 900, 240)
    with pytest.raises(ValueError, match="positive"):
        CandleAggregator("BTCUSDT", "15m", 900, 0)


# -- decimals and timestamps -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("volumes", "total"),
    [
        (["0.00000001", "0.00000001", "0.00000001"], "0.00000003"),
        (["0.00000001", "0", "0"], "0.00000001"),
        (["1E-8", "0", "0"], "0.00000001"),
        (["0.00000000", "0.0", "0"], "0.00000000"),
        (["1e+3", "0.5", "0"], "1000.5"),
        (
            ["12345678901234567890.123456789012345678", "0.000000000000000001", "1"],
            "12345678901234567891.123456789012345679",
        ),
        (["64.10", "0.90", "5"], "70.00"),
    ],
)
def test_volume_sums_are_exact_and_plain(volumes: list[str], total: str) -> None:
    agg = agg15(partial=False)
    out = [e for n, v in enumerate(volumes) for e in agg.feed(src(m5(n), v=v))]
    assert [e["volume"] for e in out] == [total]


def test_prices_keep_their_own_strings_and_exponents_are_written_plainly() -> None:
    agg = agg15(partial=False)
    agg.feed(src(m5(0), "64521.30", "64600.00", "6.4E+4", "64521.30"))
    agg.feed(src(m5(1), "64521.30", "6.5E+4", "64000.10", "64521.30"))
    [c] = agg.feed(src(m5(2), "0.00012340", "1E-3", "1E-8", "0.000000010"))
    assert (c["open"], c["high"], c["low"], c["close"]) == (
        "64521.30",
        "65000",
        "0.00000001",
        "0.000000010",
    )


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("2026-02-23T10:10:00Z", "2026-02-23T10:00:00Z"),
        ("2026-02-23T10:10:00.000Z", "2026-02-23T10:00:00Z"),
        ("2026-02-23T10:10:00", "2026-02-23T10:00:00Z"),  # naive: UTC
        ("2026-02-23T12:10:00+02:00", "2026-02-23T10:00:00Z"),
        (ms(m5(2)), ms(T0)),
        (ms(m5(2)) // 1000, ms(T0) // 1000),  # epoch seconds stay seconds
    ],
)
def test_time_formats_are_accepted_and_kept(when: str | int, expected: str | int) -> None:
    agg = agg15()
    [f] = agg.feed(src(when))
    assert f["time"] == f["open_time"] == expected
    assert agg.invalid == 0


# -- property: the aggregate equals a direct computation -------------------------------------

amounts = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(10**9), places=8)


@st.composite
def five_minute_candles(
    draw: st.DrawFn,
) -> list[tuple[int, Decimal, Decimal, Decimal, Decimal, Decimal]]:
    """Closed 5m candles (slot, open, high, low, close, volume) over a few windows, gaps allowed."""
    slots = draw(st.lists(st.integers(0, 20), min_size=1, max_size=21, unique=True))
    out = []
    for slot in sorted(slots):
        o, c, a, b = (draw(amounts) for _ in range(4))
        high, low = max(o, c, a, b), min(o, c, a, b)
        volume = draw(
            st.decimals(min_value=0, max_value=Decimal(10**6), places=draw(st.integers(0, 12)))
        )
        out.append((slot, o, high, low, c, volume))
    return out


@settings(max_examples=150, deadline=None)
@given(
    candles=five_minute_candles(),
    as_candle=st.booleans(),
    forming=st.booleans(),
    partial=st.booleans(),
)
def test_15m_aggregate_equals_a_direct_computation(
    candles: list[tuple[int, Decimal, Decimal, Decimal, Decimal, Decimal]],
    as_candle: bool,
    forming: bool,
    partial: bool,
) -> None:
    agg = agg15(partial=partial)
    delivered: list[Any] = []
    for slot, o, h, lo, c, v in candles:
        d = src(m5(slot), str(o), str(h), str(lo), str(c), str(v))
        if forming:  # a forming update with wild values first: it must leave no trace
            wild = {
                **d,
                "high": "9" * 20,
                "low": "0.000000001",
                "volume": "777",
                "is_closed": False,
            }
            delivered += [e for e in agg.feed(typed(wild) if as_candle else wild) if e_closed(e)]
        delivered += [e for e in agg.feed(typed(d) if as_candle else d) if e_closed(e)]

    windows: dict[int, list[tuple[int, Decimal, Decimal, Decimal, Decimal, Decimal]]] = {}
    for row in candles:
        windows.setdefault(row[0] // 3, []).append(row)
    last = max(windows)
    expected = []
    for w, rows in sorted(windows.items()):
        if w == last and rows[-1][0] % 3 != 2:
            continue  # its last candle never came and no later window did: still open
        expected.append(
            (
                T0 + timedelta(minutes=15 * w),
                rows[0][1],
                max(r[2] for r in rows),
                min(r[3] for r in rows),
                rows[-1][4],
                sum((r[5] for r in rows), Decimal(0)),
            )
        )

    def ohlcv(e: Any) -> tuple[datetime, Decimal, Decimal, Decimal, Decimal, Decimal]:
        if isinstance(e, Candle):
            return (e.open_time, e.open, e.high, e.low, e.close, e.volume)
        assert set(e) == KEYS
        assert "E" not in e["volume"] and "e" not in e["volume"]
        t = datetime.fromisoformat(e["time"])
        return (t, *(Decimal(e[k]) for k in ("open", "high", "low", "close", "volume")))  # type: ignore[return-value]

    got = [ohlcv(e) for e in delivered]
    assert got == expected
    # Exact, not merely equal in value: the volume keeps every digit of the sum.
    for e, (*_, volume) in zip(delivered, expected, strict=True):
        vol = e.volume if isinstance(e, Candle) else Decimal(e["volume"])
        assert vol.as_tuple() == volume.as_tuple()
    assert agg.delivered == len(expected)
    assert (agg.invalid, agg.ignored) == (0, 0)


def e_closed(e: Any) -> bool:
    return bool(e.is_closed if isinstance(e, Candle) else e["is_closed"])


# -- complete_only: what the client uses (every delivered candle exact) ---------------


def _five(t: str, o: str, h: str, low: str, c: str, v: str, closed: bool = True) -> dict[str, Any]:
    return {
        "symbol": "BTCUSDT",
        "interval": "5m",
        "time": t,
        "open_time": t,
        "open": o,
        "high": h,
        "low": low,
        "close": c,
        "volume": v,
        "is_closed": closed,
    }


def test_complete_only_withholds_a_window_that_started_before_us() -> None:
    agg = CandleAggregator("BTCUSDT", "15m", 900, 300, partial=False, complete_only=True)
    # Joined at 10:05: the 10:00 window lacks its first 5m candle.
    assert agg.feed(_five("2026-02-23T10:05:00Z", "11", "13", "10", "12", "2")) == []
    assert agg.feed(_five("2026-02-23T10:10:00Z", "12", "12.5", "8", "9", "0.5")) == []
    assert (agg.withheld, agg.incomplete, agg.delivered) == (1, 1, 0)
    got = []
    for t in ("10:15", "10:20", "10:25"):
        got += agg.feed(_five(f"2026-02-23T{t}:00Z", "9", "10", "8", "9.5", "1"))
    [c] = got
    assert (c["time"], c["volume"], c["is_closed"]) == ("2026-02-23T10:15:00Z", "3", True)
    assert agg.delivered == 1


def test_complete_only_withholds_a_window_with_a_hole() -> None:
    agg = CandleAggregator("BTCUSDT", "15m", 900, 300, complete_only=True)
    agg.feed(_five("2026-02-23T10:00:00Z", "10", "12", "9", "11", "1.5"))
    # 10:05 never arrives; 10:10 closes the window, which cannot be exact.
    assert agg.feed(_five("2026-02-23T10:10:00Z", "12", "12.5", "8", "9", "0.5")) == []
    assert (agg.withheld, agg.delivered) == (1, 0)


def test_complete_only_builds_forming_updates_only_while_whole() -> None:
    agg = CandleAggregator("BTCUSDT", "15m", 900, 300, partial=True, complete_only=True)
    # Joined while 10:05 forms: no forming 15m update (10:00 is missing).
    assert agg.feed(_five("2026-02-23T10:05:00Z", "11", "13", "10", "12", "2", False)) == []
    # The next window from its start: forming updates again.
    [f] = agg.feed(_five("2026-02-23T10:15:00Z", "9", "10", "8", "9.5", "1", False))
    assert (f["time"], f["is_closed"]) == ("2026-02-23T10:15:00Z", False)
    [f] = agg.feed(_five("2026-02-23T10:15:00Z", "9", "10", "8", "9.5", "1", True))
    assert (f["volume"], f["is_closed"]) == ("1", False)
