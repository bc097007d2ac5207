"""Order recovery figures: no order update lost across forced disconnects.

For each venue of the simulated exchange (AgentExchange, Tradier, and tastytrade once its
stream recovers orders), one client with a
dict handler and an :class:`~agentstream.OrderEvent` handler, each recording every
delivery. A driver moves 1,000 orders through their lifecycles (placed and cancelled
in-process, so the orders never depend on the REST API the client recovers with), while
a chaos task forces 200 disconnects: TCP resets and closes, half of them followed by a
short window in which handshakes are refused, so that order events go to nobody and
recovery has work to do. After a quiet period, each order's final state as the REST API
answers it is compared with what each handler saw.

The second figure is the same with the venue's REST API failing (HTTP 503) through some
outages and for a while after the reconnect, then healing.
"""

from __future__ import annotations

import random
import statistics
import time
from bisect import bisect_right
from collections import Counter, defaultdict
from decimal import ROUND_UP, Decimal
from typing import TYPE_CHECKING, Any

import anyio

from agentstream import AgentExchangeWS, OrderEvent
from agentstream.rest import AgentExchangeREST
from agentstream.sim import (
    DEMO_API_KEY,
    TASTYTRADE_DEMO_ACCOUNT,
    TASTYTRADE_DEMO_TOKEN,
    TRADIER_DEMO_ACCOUNT,
    TRADIER_DEMO_TOKEN,
    OrderError,
    SimExchange,
    TastytradeError,
    TradierError,
)
from agentstream.tastytrade import TastytradeREST, TastytradeStream
from agentstream.tradier import TradierREST, TradierStream
from bench.reliability.common import Figure, Options, wait_until, watchdog

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["run_recovery", "run_recovery_5xx"]

#: Close codes cycled through by the drops; None is a TCP reset (as the disconnects figure).
DROP_CODES: tuple[int | None, ...] = (None, 1000, 1001, 1011, 1012)
#: Share of the drops followed by a window of refused handshakes, and its length (s).
REFUSE_SHARE = 0.5
REFUSE_WINDOW = (0.05, 0.3)
#: Connected time between a reconnect and the next drop (s).
PAUSE = (0.02, 0.15)
#: Delay from placing a resting limit order to cancelling it (s).
CANCEL_AFTER = (0.05, 0.5)
#: REST outages (second figure): one starts every OUTAGE_EVERY drops (at drop 1, 9,
#: 17, ...) and lasts through 1 to 3 drops; it heals this long after the last reconnect.
OUTAGE_EVERY = 8
HEAL_AFTER = (0.1, 0.6)
#: After the last drop: every order final at the exchange, then this long for events
#: still on their way, before the comparison.
QUIET = 1.0

#: Client options: short timers, no jitter (as the other figures).
CLIENT: dict[str, Any] = {
    "stale_timeout": 5.0,
    "backoff_initial": 0.01,
    "backoff_max": 0.05,
    "backoff_jitter": 0.0,
    "connect_timeout": 5.0,
    "close_timeout": 0.2,
}
#: Sim options: the order engine steps every 20 ms; plenty of cash on both venues.
SIM: dict[str, Any] = {
    "tick_rate": 100,
    "ping_interval": 1.0,
    "order_interval": 0.02,
    "portfolio_interval": 60.0,
    "tradier_heartbeat_interval": 0.5,
    "api_keys": {DEMO_API_KEY: Decimal("100000000")},
    "tradier_cash": Decimal("100000000"),
    "tastytrade_cash": Decimal("100000000"),
}

State = tuple[str, str]  # (the venue's status, filled quantity)
Client = AgentExchangeWS | TradierStream | TastytradeStream


def quantity_key(value: object) -> str:
    """A filled quantity as one string however it is written (``1.0``, ``"1"``, None)."""
    if value is None or value == "":
        return "0"
    return format(Decimal(str(value)).normalize(), "f")


class _View:
    """Every delivery one handler got: each order's states in order, and when recovered."""

    def __init__(self) -> None:
        self.states: dict[str, list[State]] = defaultdict(list)
        self.counts: Counter[tuple[str, str, str]] = Counter()
        #: The states each order got marked recovered.
        self.by_recovery: dict[str, set[State]] = defaultdict(set)
        #: Arrival time of each delivery marked recovered.
        self.recovered: list[float] = []

    def add(self, oid: str, status: str, filled: str, recovered: bool) -> None:
        self.states[oid].append((status, filled))
        self.counts[(oid, status, filled)] += 1
        if recovered:
            self.recovered.append(time.monotonic())
            self.by_recovery[oid].add((status, filled))

    def duplicates(self) -> int:
        return sum(n - 1 for n in self.counts.values() if n > 1)


# -- venues --------------------------------------------------------------------------------


class _Venue:
    """What the figure needs of one venue: its client, orders and REST."""

    name = ""
    final: frozenset[str] = frozenset()
    #: Order kinds and their shares.
    kinds: tuple[tuple[str, float], ...] = ()

    def client(self, sim: SimExchange) -> Client:
        raise NotImplementedError

    def dict_state(self, d: dict[str, Any]) -> tuple[str, str, str]:
        """(order id, status, filled quantity) of a dict event."""
        raise NotImplementedError

    async def place(self, sim: SimExchange, kind: str, rng: random.Random) -> str:
        raise NotImplementedError

    async def cancel(self, sim: SimExchange, oid: str) -> None:
        raise NotImplementedError

    def exchange(self, sim: SimExchange) -> dict[str, State]:
        """Every order's state in the sim, read in-process (to wait for the end)."""
        raise NotImplementedError

    async def rest(self, sim: SimExchange) -> dict[str, State]:
        """Every order's state as the venue's REST API answers it."""
        raise NotImplementedError

    def fail_rest(self, sim: SimExchange) -> None:
        raise NotImplementedError

    def heal_rest(self, sim: SimExchange) -> None:
        raise NotImplementedError


class _AgentExchange(_Venue):
    """Crypto orders: market buys (``filled``), limit buys above the price (``pending >
    filled``), limit buys at half the price, cancelled (``pending > cancelled``)."""

    name = "AgentExchange"
    final = frozenset({"filled", "cancelled", "rejected", "expired"})
    kinds = (("market", 0.35), ("limit-fill", 0.35), ("limit-cancel", 0.30))
    symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")

    def client(self, sim: SimExchange) -> AgentExchangeWS:
        return AgentExchangeWS(DEMO_API_KEY, sim.url, **CLIENT)

    def dict_state(self, d: dict[str, Any]) -> tuple[str, str, str]:
        return str(d["order_id"]), str(d["status"]), quantity_key(d.get("executed_quantity"))

    async def place(self, sim: SimExchange, kind: str, rng: random.Random) -> str:
        symbol = rng.choice(self.symbols)
        pair = sim.market.pairs[symbol]
        px = pair.price_decimal()
        tick = Decimal(1).scaleb(-pair.price_dp)
        qty = (Decimal(20) / px).quantize(Decimal(1).scaleb(-pair.qty_dp), ROUND_UP)
        extra: dict[str, str] = {"type": "market"}
        if kind != "market":
            limit = px * (Decimal("1.02") if kind == "limit-fill" else Decimal("0.5"))
            extra = {"type": "limit", "price": str(limit.quantize(tick))}
        order = await sim.place_order(
            DEMO_API_KEY, symbol=symbol, side="buy", quantity=str(qty), **extra
        )
        return str(order["order_id"])

    async def cancel(self, sim: SimExchange, oid: str) -> None:
        await sim.cancel_order(DEMO_API_KEY, oid)

    def exchange(self, sim: SimExchange) -> dict[str, State]:
        orders = sim.accounts[DEMO_API_KEY].orders
        return {k: (o.status, quantity_key(o.executed_quantity)) for k, o in orders.items()}

    async def rest(self, sim: SimExchange) -> dict[str, State]:
        async with AgentExchangeREST(DEMO_API_KEY, sim.http_url) as rest:
            orders = await rest.all_orders()
        return {o.order_id: (o.status, quantity_key(o.executed_quantity)) for o in orders}

    def fail_rest(self, sim: SimExchange) -> None:
        sim.fail_rest(503)

    def heal_rest(self, sim: SimExchange) -> None:
        sim.heal_rest()


class _Tradier(_Venue):
    """Equity orders: market buys (``pending > open > filled``), large ones (``... >
    partially_filled > filled``), limit buys above the price, and limit buys at half the
    price, cancelled (``... > canceled``)."""

    name = "Tradier"
    final = frozenset({"filled", "canceled", "rejected", "expired"})
    kinds = (("market", 0.25), ("large", 0.15), ("limit-fill", 0.30), ("limit-cancel", 0.30))
    symbols = ("AAPL", "MSFT", "SPY", "NVDA", "TSLA")

    def client(self, sim: SimExchange) -> TradierStream:
        return TradierStream(token=TRADIER_DEMO_TOKEN, base_url=sim.http_url, **CLIENT)

    def dict_state(self, d: dict[str, Any]) -> tuple[str, str, str]:
        return str(d["id"]), str(d["status"]), quantity_key(d.get("exec_quantity"))

    async def place(self, sim: SimExchange, kind: str, rng: random.Random) -> str:
        symbol = rng.choice(self.symbols)
        px = sim.market.equities[symbol].price_decimal()
        form: dict[str, str] = {"type": "market", "quantity": "1"}
        if kind == "large":  # above partial_fill_notional (2,500 USD): fills in two steps
            form["quantity"] = str((Decimal(3000) / px).to_integral_value(ROUND_UP))
        elif kind != "market":
            limit = px * (Decimal("1.1") if kind == "limit-fill" else Decimal("0.5"))
            form = {"type": "limit", "quantity": "1", "price": str(limit.quantize(Decimal("0.01")))}
        order = await sim.tradier.place_order(
            TRADIER_DEMO_ACCOUNT, symbol=symbol, side="buy", duration="day", **form
        )
        return str(order.id)

    async def cancel(self, sim: SimExchange, oid: str) -> None:
        await sim.tradier.cancel_order(TRADIER_DEMO_ACCOUNT, int(oid))

    def exchange(self, sim: SimExchange) -> dict[str, State]:
        orders = sim.tradier.accounts[TRADIER_DEMO_ACCOUNT].orders
        return {str(k): (o.status, quantity_key(o.exec_quantity)) for k, o in orders.items()}

    async def rest(self, sim: SimExchange) -> dict[str, State]:
        async with TradierREST(
            TRADIER_DEMO_TOKEN, base_url=sim.http_url, account=TRADIER_DEMO_ACCOUNT
        ) as rest:
            orders = await rest.list_orders()
        return {str(o.id): (o.status, quantity_key(o.exec_quantity)) for o in orders}

    def fail_rest(self, sim: SimExchange) -> None:
        sim.fail_tradier_rest(503)

    def heal_rest(self, sim: SimExchange) -> None:
        sim.heal_tradier_rest()


class _Tastytrade(_Venue):
    """Equity orders: market buys (``Received > Routed > In Flight > Live > Filled``),
    large ones (``... > Live`` with a first fill ``> Filled``), limit buys above the
    price, and limit buys at half the price, cancelled (``... > Cancel Requested >
    Cancelled``)."""

    name = "tastytrade"
    final = frozenset({"Filled", "Cancelled", "Rejected", "Expired"})
    kinds = (("market", 0.25), ("large", 0.15), ("limit-fill", 0.30), ("limit-cancel", 0.30))
    symbols = ("AAPL", "MSFT", "SPY", "NVDA", "TSLA")

    def client(self, sim: SimExchange) -> TastytradeStream:
        return TastytradeStream(
            TASTYTRADE_DEMO_TOKEN,
            [TASTYTRADE_DEMO_ACCOUNT],
            url=sim.url + "/tastytrade",
            heartbeat_interval=0.5,
            **CLIENT,
        )

    def dict_state(self, d: dict[str, Any]) -> tuple[str, str, str]:
        fills = [f.get("quantity") for leg in d.get("legs") or [] for f in leg.get("fills") or []]
        filled = sum((Decimal(str(q)) for q in fills), Decimal(0))
        return str(d["id"]), str(d["status"]), quantity_key(filled)

    async def place(self, sim: SimExchange, kind: str, rng: random.Random) -> str:
        symbol = rng.choice(self.symbols)
        px = sim.market.equities[symbol].price_decimal()
        quantity = "1"
        price: str | None = None
        if kind == "large":  # above partial_fill_notional (2,500 USD): fills in two steps
            quantity = str((Decimal(3000) / px).to_integral_value(ROUND_UP))
        elif kind != "market":
            limit = px * (Decimal("1.1") if kind == "limit-fill" else Decimal("0.5"))
            price = str(limit.quantize(Decimal("0.01")))
        order = await sim.tastytrade.place_order(
            TASTYTRADE_DEMO_ACCOUNT,
            symbol=symbol,
            action="Buy to Open",
            quantity=quantity,
            order_type="Market" if price is None else "Limit",
            price=price,
            price_effect=None if price is None else "Debit",
        )
        return str(order["id"])

    async def cancel(self, sim: SimExchange, oid: str) -> None:
        await sim.tastytrade.cancel_order(TASTYTRADE_DEMO_ACCOUNT, int(oid))

    def exchange(self, sim: SimExchange) -> dict[str, State]:
        orders = sim.tastytrade.accounts[TASTYTRADE_DEMO_ACCOUNT].orders
        return {
            str(k): (o.status, quantity_key(sum(Decimal(f["quantity"]) for f in o.fills)))
            for k, o in orders.items()
        }

    async def rest(self, sim: SimExchange) -> dict[str, State]:
        async with TastytradeREST(TASTYTRADE_DEMO_TOKEN, base_url=sim.http_url) as rest:
            orders = await rest.live_orders(TASTYTRADE_DEMO_ACCOUNT)
        return {
            str(o.id): (
                o.status,
                quantity_key(sum((f.quantity for leg in o.legs for f in leg.fills), Decimal(0))),
            )
            for o in orders
        }

    def fail_rest(self, sim: SimExchange) -> None:
        sim.fail_tastytrade_rest(503)

    def heal_rest(self, sim: SimExchange) -> None:
        sim.heal_tastytrade_rest()


def _tastytrade_recovers() -> bool:
    """Whether the tastytrade stream has order recovery (it is measured only then)."""
    from agentstream._client import StreamClient

    return TastytradeStream._recover_orders is not StreamClient._recover_orders


def venues() -> tuple[_Venue, ...]:
    found: tuple[_Venue, ...] = (_AgentExchange(), _Tradier())
    return (*found, _Tastytrade()) if _tastytrade_recovers() else found


# -- one run: one venue, 200 drops, 1,000 orders -------------------------------------------


class _Run:
    """One venue's run, filled in as it goes (so a stall still reports)."""

    def __init__(self, venue: _Venue, opts: Options, rest_outages: bool, seed: int) -> None:
        self.venue = venue
        self.drops = opts.disconnects
        self.n_orders = opts.orders
        self.rest_outages = rest_outages
        self.rng = random.Random(seed)
        self.plain = _View()
        self.typed = _View()
        self.kinds: dict[str, str] = {}
        self.refused: list[str] = []
        self.cancel_failed: list[str] = []
        self.errors: Counter[str] = Counter()
        self.heals: list[float] = []
        self.opened: list[float] = []
        self.rounds_failed: list[str] = []
        self.refuse_windows = 0
        self.outage_drops = 0
        self.reconnects = 0
        self.all_final = False
        self.rest_states: dict[str, State] = {}
        self.stats: dict[str, Any] = {}
        self.chaos_s = 0.0

    # handlers -------------------------------------------------------------------------

    def on_dict(self, d: dict[str, Any]) -> None:
        oid, status, filled = self.venue.dict_state(d)
        self.plain.add(oid, status, filled, d.get("recovered") is True)

    def on_view(self, e: OrderEvent) -> None:
        status = str(getattr(e.raw, "status", e.status))
        self.typed.add(e.order_id, status, quantity_key(e.filled_quantity), e.recovered)

    def on_error(self, exc: Exception, context: dict[str, Any]) -> None:
        self.errors[str(context.get("stage") or type(exc).__name__)] += 1

    # the driver -------------------------------------------------------------------------

    def plan(self) -> list[str]:
        kinds: list[str] = []
        for kind, share in self.venue.kinds:
            kinds += [kind] * int(self.n_orders * share)
        kinds += [self.venue.kinds[0][0]] * (self.n_orders - len(kinds))
        self.rng.shuffle(kinds)
        return kinds

    async def drive(self, sim: SimExchange, allowance: Callable[[], int]) -> None:
        """Place the orders as the chaos allows (``allowance()`` so far), spread in time;
        cancel the resting ones a while later."""
        venue, rng = self.venue, self.rng

        async def cancel_later(oid: str, delay: float) -> None:
            await anyio.sleep(delay)
            try:
                await venue.cancel(sim, oid)
            except (OrderError, TradierError, TastytradeError) as exc:
                self.cancel_failed.append(f"{oid}: {exc}")

        async with anyio.create_task_group() as tg:
            for kind in self.plan():
                while len(self.kinds) >= allowance():
                    await anyio.sleep(0.005)
                try:
                    oid = await venue.place(sim, kind, rng)
                except (OrderError, TradierError, TastytradeError) as exc:
                    self.refused.append(f"{kind}: {exc}")
                    continue
                self.kinds[oid] = kind
                if kind == "limit-cancel":
                    tg.start_soon(cancel_later, oid, rng.uniform(*CANCEL_AFTER))
                await anyio.sleep(rng.uniform(0.0, 0.04))

    # the chaos --------------------------------------------------------------------------

    async def chaos(self, sim: SimExchange, ws: Client, allow: list[int]) -> None:
        rng, venue = self.rng, self.venue
        failing = False
        outage_end = -1
        t0 = time.perf_counter()
        for i in range(self.drops):
            allow[0] = round((i + 1) * self.n_orders / self.drops)
            code = DROP_CODES[i % len(DROP_CODES)]
            refuse = rng.random() < REFUSE_SHARE
            if self.rest_outages and not failing and i % OUTAGE_EVERY == 1:
                failing, outage_end = True, i + rng.randint(0, 2)
                venue.fail_rest(sim)
            self.outage_drops += failing
            await anyio.sleep(rng.uniform(0.0, 0.03))  # let some orders go out first
            before = ws.stats.reconnects
            if refuse:
                self.refuse_windows += 1
                sim.refuse_handshakes(503)
            await sim.drop_connections(code, "bench")
            if refuse:
                await anyio.sleep(rng.uniform(*REFUSE_WINDOW))
                sim.accept_handshakes()

            def back(n: int = before) -> bool:
                return ws.stats.reconnects > n and ws.stats.connections == 1

            if not await wait_until(back, 10):
                self.rounds_failed.append(f"drop {i} ({code or 'reset'}): no reconnect in 10 s")
            if failing and i >= outage_end:
                await anyio.sleep(rng.uniform(*HEAL_AFTER))
                venue.heal_rest(sim)
                self.heals.append(time.monotonic())
                failing = False
            await anyio.sleep(rng.uniform(*PAUSE))
        if failing:
            venue.heal_rest(sim)
            self.heals.append(time.monotonic())
        allow[0] = self.n_orders
        self.chaos_s = time.perf_counter() - t0

    # the run ----------------------------------------------------------------------------

    async def run(self) -> None:
        venue = self.venue
        async with SimExchange(**SIM) as sim:
            ws = venue.client(sim)
            ws.on_order_update(self.on_dict)
            ws.on_order_update(self.on_view)
            ws.on_error(self.on_error)
            allow = [0]
            async with ws:
                if not await wait_until(lambda: ws.stats.connections == 1, 10):
                    self.rounds_failed.append("the client never connected")
                    return
                reconnects0 = ws.stats.reconnects
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self.drive, sim, lambda: allow[0])
                    await self.chaos(sim, ws, allow)
                self.reconnects = ws.stats.reconnects - reconnects0
                # The quiet period: every order final at the exchange, then the events
                # on their way (and a recovery still running) land.
                placed = set(self.kinds)

                def final() -> bool:
                    states = venue.exchange(sim)
                    return all(states[o][0] in venue.final for o in placed)

                self.all_final = await wait_until(final, 30, poll=0.05)
                await anyio.sleep(QUIET)
                self.rest_states = await venue.rest(sim)
                s = ws.stats
                self.stats = {
                    "recovered_orders": s.recovered_orders,
                    "duplicate_events": s.duplicate_events,
                    "gaps": s.gaps,
                    "failed_attempts": s.failed_attempts,
                }
            self.opened = sorted(r.opened_at for r in sim.connection_log)

    # the figures ------------------------------------------------------------------------

    def check(self, view: _View) -> dict[str, Any]:
        """The figures of one handler against the REST answer."""
        rest = self.rest_states
        orders = list(self.kinds)
        unknown = [o for o in orders if o not in rest]
        reached = [o for o in orders if o in rest and (o, *rest[o]) in view.counts]
        final_ok = [o for o in reached if rest[o][0] in self.venue.final]
        stale = [o for o in orders if o in rest and view.states[o][-1:] != [rest[o]]]
        by_recovery = sum(1 for o in final_ok if rest[o] in view.by_recovery.get(o, ()))
        never = [o for o in orders if not view.states[o]]
        return {
            "orders": len(orders),
            "final_reached": len(final_ok),
            "duplicates": view.duplicates(),
            "stale": len(stale),
            "unknown_to_rest": len(unknown),
            "deliveries": sum(view.counts.values()),
            "recovered_deliveries": len(view.recovered),
            "final_by_recovery": by_recovery,
            "never_delivered": len(never),
            "never_delivered_by": dict(
                Counter(f"{self.kinds[o]} {rest.get(o, ('?',))[0]}" for o in never)
            ),
            "examples_stale": [
                f"{o}: saw {view.states[o][-3:]}, REST {rest.get(o)}" for o in stale[:3]
            ],
        }

    def latencies(self) -> tuple[list[float], list[float]]:
        """Seconds from the reconnect (the sim accepting the socket; with REST outages
        the later of that and the healing) to each recovered delivery of the typed
        handler; and to the first recovered delivery of each recovery."""
        refs = sorted(self.opened + self.heals)
        per_event: list[float] = []
        first: dict[float, float] = {}
        for t in self.typed.recovered:
            k = bisect_right(refs, t)
            if k == 0:
                continue
            ref = refs[k - 1]
            per_event.append(t - ref)
            first.setdefault(ref, t - ref)
        return per_event, list(first.values())


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * q + 0.999999) - 1)]


def _ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (
        f"median {statistics.median(values) * 1000:.0f} ms, p99 {_pct(values, 0.99) * 1000:.0f} "
        f"ms, max {max(values) * 1000:.0f} ms"
    )


async def _figure(opts: Options, rest_outages: bool) -> Figure:
    drops, n = opts.disconnects, opts.orders
    name = "order recovery, REST 5xx" if rest_outages else "order recovery"
    fig = Figure(
        name,
        "",
        f"per venue, {drops} drops x {n:,} orders: 100 % final states delivered, 0 duplicate "
        "(order, status, filled), 0 stale after the last reconnect",
        None,
    )
    t_start = time.perf_counter()
    ok = True
    measured: list[str] = []
    stall: list[str] = []
    for k, venue in enumerate(venues()):
        run = _Run(venue, opts, rest_outages, opts.seed + k + (100 if rest_outages else 0))
        t0 = time.perf_counter()
        async with watchdog(120 + drops * 3 + n / 10, stall) as guard:
            await run.run()
        took = time.perf_counter() - t0
        plain, typed = run.check(run.plain), run.check(run.typed)
        per_event, per_recovery = run.latencies()
        placed = len(run.kinds)
        recovery_errors = run.errors.get("recovery", 0)
        venue_ok = (
            not guard.cancelled_caught
            and not run.rounds_failed
            and placed == n
            and run.all_final
            and run.reconnects == drops
            and all(
                c["final_reached"] == placed and c["duplicates"] == 0 and c["stale"] == 0
                for c in (plain, typed)
            )
            and typed["recovered_deliveries"] > 0
            and (not rest_outages or recovery_errors > 0)
        )
        ok = ok and venue_ok
        reached = min(plain["final_reached"], typed["final_reached"])
        pct = int(1000 * reached / max(placed, 1)) / 10  # rounded down: 99.96 % is not 100 %
        lat = (
            f"reconnect -> recovered {statistics.median(per_event) * 1000:.0f} ms median, "
            f"{_pct(per_event, 0.99) * 1000:.0f} ms p99"
            if per_event
            else "nothing recovered"
        )
        measured.append(
            f"{venue.name}: {reached:,}/{placed:,} final ({pct:g} %), "
            f"{plain['duplicates'] + typed['duplicates']} duplicates, "
            f"{max(plain['stale'], typed['stale'])} stale, {lat}"
        )
        paths: Counter[str] = Counter(
            " > ".join(s for s, _ in run.typed.states[o]) for o in run.kinds
        )
        fig.details += [
            f"{venue.name} ({'PASS' if venue_ok else 'FAIL'}, {took:.1f} s): {placed:,} orders "
            f"({', '.join(f'{k} {v}' for k, v in Counter(run.kinds.values()).items())}); "
            f"{drops} drops in {run.chaos_s:.1f} s (reset, close 1000/1001/1011/1012 "
            f"cycled; {run.refuse_windows} with handshakes refused for 50-300 ms); "
            f"{run.reconnects} reconnects",
            f"  final state reached the handlers: dict {plain['final_reached']:,}/{placed:,}, "
            f"OrderEvent {typed['final_reached']:,}/{placed:,}; duplicates dict "
            f"{plain['duplicates']}, OrderEvent {typed['duplicates']}; stale (last state seen "
            f"!= REST) dict {plain['stale']}, OrderEvent {typed['stale']}; all final at the "
            f"exchange {'yes' if run.all_final else 'NO'}",
            f"  deliveries: {typed['deliveries']:,} per handler, {typed['recovered_deliveries']:,}"
            f" marked recovered (by which {typed['final_by_recovery']:,} final states came"
            f"); client stats: recovered_orders {run.stats.get('recovered_orders')}, "
            f"duplicate_events {run.stats.get('duplicate_events')} (repeats it dropped), gaps "
            f"{run.stats.get('gaps')}, failed_attempts {run.stats.get('failed_attempts')}",
            f"  reconnect -> each recovered event: {_ms(per_event)} ({len(per_event):,} events); "
            f"-> first recovered event of a recovery: {_ms(per_recovery)} "
            f"({len(per_recovery)} recoveries with work)",
        ]
        if rest_outages:
            fig.details.append(
                f"  REST outages: {len(run.heals)}, through {run.outage_drops} of the drops; "
                "recovery failures "
                f"reported to on_error: {recovery_errors} (retried with the backoff); latency "
                "counted from the later of the reconnect and the healing"
            )
        other_errors = {k: v for k, v in run.errors.items() if k != "recovery"}
        if other_errors:
            fig.details.append(f"  other on_error reports: {dict(other_errors)}")
        fig.details.append(
            "  status sequences (OrderEvent handler): "
            + ", ".join(f"{p} x{c}" for p, c in paths.most_common(6))
        )
        if typed["never_delivered"] or plain["never_delivered"]:
            fig.details.append(
                f"  orders whose handlers got no event at all: dict {plain['never_delivered']}, "
                f"OrderEvent {typed['never_delivered']} (kind and final status: "
                f"{typed['never_delivered_by'] or plain['never_delivered_by']})"
            )
        for label, items in (
            ("round problems", run.rounds_failed),
            ("refused orders", run.refused),
            ("failed cancels", run.cancel_failed),
            ("stale, dict", plain["examples_stale"]),
            ("stale, OrderEvent", typed["examples_stale"]),
        ):
            if items:
                fig.details.append(f"  {label} ({len(items)}): {items[:3]}")
        fig.data[venue.name] = {
            "placed": placed,
            "reconnects": run.reconnects,
            "dict": {k: v for k, v in plain.items() if k != "examples_stale"},
            "typed": {k: v for k, v in typed.items() if k != "examples_stale"},
            "latency_ms": {
                "median": statistics.median(per_event) * 1000 if per_event else None,
                "p99": _pct(per_event, 0.99) * 1000 if per_event else None,
                "max": max(per_event) * 1000 if per_event else None,
            },
            "recovery_errors": recovery_errors,
            "client_stats": run.stats,
            "passed": venue_ok,
        }
    if not _tastytrade_recovers():
        fig.details.append("tastytrade: not measured (its stream has no order recovery)")
    fig.details.extend(stall[:60])
    fig.seconds = time.perf_counter() - t_start
    fig.passed = ok
    fig.measured = "; ".join(measured)
    return fig


async def run_recovery(opts: Options) -> Figure:
    return await _figure(opts, rest_outages=False)


async def run_recovery_5xx(opts: Options) -> Figure:
    return await _figure(opts, rest_outages=True)
