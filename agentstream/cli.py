"""Command line: ``agentstream serve | demo | tail | bridge | run``.

Example:
    $ agentstream serve --port 8000 --speed 60
    $ agentstream demo --seconds 20
    $ agentstream tail ticker:BTCUSDT orders --count 10
    $ agentstream bridge --venue agentexchange --to redis://127.0.0.1:6379/0 --channel ticker:all
    $ agentstream run my_bot.py --dry-run
    $ agentstream --version
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import logging
import signal
import sys
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from agentstream.bus._redis_writer import mask_redis_url
from agentstream.errors import AgentStreamError, ConfigurationError
from agentstream.sim import (
    DEMO_API_KEY,
    INTERVAL_MS,
    PLACEHOLDER_API_KEY,
    REAL_SERVER_INTERVALS,
    TASTYTRADE_DEMO_ACCOUNT,
    TASTYTRADE_DEMO_TOKEN,
    TRADIER_DEMO_ACCOUNT,
    TRADIER_DEMO_TOKEN,
    SimConfig,
    SimExchange,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agentstream._client import StreamClient


def _sim_config(args: argparse.Namespace) -> SimConfig:
    keys = {k: Decimal(args.cash) for k in (args.key or [DEMO_API_KEY])}
    return SimConfig(
        host=args.host,
        port=args.port,
        api_keys=keys,
        tick_rate=args.rate,
        speed=args.speed,
        seed=args.seed,
        ping_interval=args.ping_interval,
        pong_timeout=args.pong_timeout,
        subscription_limit=args.subscription_limit,
        auth_failure=args.auth_failure,
        firehose=args.firehose,
        # `serve` only (the demo has no such flags): what makes the sim act like the real
        # server where it is stricter than the SDK page.
        candle_intervals=getattr(args, "candle_intervals", None) or tuple(INTERVAL_MS),
        private_to_all_sockets=not getattr(args, "private_to_subscribers", False),
        sparse_order_events=getattr(args, "sparse_order_events", False),
    )


def _intervals(text: str) -> tuple[str, ...]:
    """``--candle-intervals 1m,5m,1h,1d``: known intervals, comma-separated, in order."""
    ivs = tuple(dict.fromkeys(iv.strip() for iv in text.split(",") if iv.strip()))
    unknown = [iv for iv in ivs if iv not in INTERVAL_MS]
    if unknown or not ivs:
        raise argparse.ArgumentTypeError(
            f"expected some of {','.join(INTERVAL_MS)}, comma-separated; got {text!r}"
        )
    return ivs


def _add_serve_options(p: argparse.ArgumentParser) -> None:
    ivs = p.add_mutually_exclusive_group()
    ivs.add_argument(
        "--candle-intervals",
        type=_intervals,
        metavar="LIST",
        help=f"candle intervals served, comma-separated (default {','.join(INTERVAL_MS)})",
    )
    ivs.add_argument(
        "--real-intervals",
        dest="candle_intervals",
        action="store_const",
        const=REAL_SERVER_INTERVALS,
        help=f"serve only the real server's intervals ({','.join(REAL_SERVER_INTERVALS)})",
    )
    p.add_argument(
        "--private-to-subscribers",
        action="store_true",
        help="send orders/portfolio events only to sockets subscribed to them (the real "
        "server sends them to every socket of the key)",
    )
    p.add_argument(
        "--sparse-order-events",
        action="store_true",
        help='order events as the real server sends them when fields are missing: quantity "0"'
        ', symbol/side/type ""',
    )


def _add_sim_options(p: argparse.ArgumentParser, *, port: int, rate: float, speed: float) -> None:
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=port, help=f"port (default {port}; 0 = any free)")
    p.add_argument(
        "--rate", type=float, default=rate, help=f"trades per second, all pairs (default {rate:g})"
    )
    p.add_argument(
        "--speed",
        type=float,
        default=speed,
        help=f"simulated seconds per real second (default {speed:g})",
    )
    p.add_argument("--seed", type=int, default=42, help="random seed of the market (default 42)")
    p.add_argument(
        "--key",
        action="append",
        metavar="API_KEY",
        help=f"accept this API key (repeatable; default the demo key {DEMO_API_KEY})",
    )
    p.add_argument(
        "--cash", default="10000", help="starting cash of each key's account (default 10000)"
    )
    p.add_argument(
        "--ping-interval", type=float, default=30.0, help="seconds between pings (default 30)"
    )
    p.add_argument(
        "--pong-timeout", type=float, default=10.0, help="seconds a pong may be late (default 10)"
    )
    p.add_argument(
        "--subscription-limit",
        type=int,
        default=10,
        help="subscriptions per connection (default 10)",
    )
    p.add_argument(
        "--auth-failure",
        choices=("http", "close"),
        default="http",
        help="refuse a bad key with HTTP 403 (default) or accept and close with 4401",
    )
    p.add_argument(
        "--firehose",
        action="store_true",
        help="benchmark mode: ticker_all subscribers get frames as fast as they can read",
    )


def build_parser() -> argparse.ArgumentParser:
    from agentstream import __version__

    parser = argparse.ArgumentParser(
        prog="agentstream",
        description="agentstream: the simulated exchange, a live demo, and scripts.",
    )
    parser.add_argument("--version", action="version", version=f"agentstream {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the simulated exchange")
    _add_sim_options(serve, port=8000, rate=200.0, speed=1.0)
    _add_serve_options(serve)
    demo = sub.add_parser(
        "demo", help="live demo: the simulated exchange and a client printing its stream"
    )
    _add_sim_options(demo, port=0, rate=300.0, speed=60.0)
    demo.add_argument(
        "--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)"
    )
    _add_tail_parser(sub)
    _add_bridge_parser(sub)
    run = sub.add_parser("run", help="run a Python script (top-level await allowed)")
    run.add_argument("script", help="path of the script")
    run.add_argument(
        "args", nargs=argparse.REMAINDER, help="arguments for the script (its sys.argv[1:])"
    )
    return parser


#: Per venue: the default channels of ``bridge``. (Its credential's environment variable
#: is the one ``tail`` reads: ``_tail.CREDENTIAL_ENV``.)
_BRIDGE_CHANNELS = {
    "agentexchange": ("ticker:all", "orders", "portfolio"),
    "tradier": ("orders",),
    "tastytrade": ("orders", "complex_orders", "balances", "positions"),
}


def _add_bridge_parser(sub: Any) -> None:
    from agentstream._tail import CREDENTIAL_ENV

    p = sub.add_parser(
        "bridge",
        help="run one venue stream and append its events to Redis Streams",
        description="Run one supervised venue stream and append every event to a Redis "
        "stream per channel ({prefix}:{venue}:{channel}); see docs/scale-out.md. The "
        "credential comes from --key or, better (a command line is visible to other "
        "users), from the venue's environment variable: "
        + ", ".join(f"{v}: ${env}" for v, env in CREDENTIAL_ENV.items())
        + ".",
    )
    p.add_argument("--venue", required=True, choices=sorted(_BRIDGE_CHANNELS), help="the venue")
    p.add_argument(
        "--url",
        help="the venue's address: AgentExchange's ws:// base (default $AGENTSTREAM_BASE_URL "
        "or ws://localhost:8000), Tradier's REST root, tastytrade's streamer URL",
    )
    p.add_argument("--api-url", help="tastytrade: the REST root (default from --url)")
    p.add_argument("--sandbox", action="store_true", help="Tradier / tastytrade: the sandbox")
    p.add_argument("--key", help="the API key or token (default: the venue's variable)")
    p.add_argument(
        "--account",
        action="append",
        default=[],
        help="tastytrade: an account number to follow (repeatable)",
    )
    p.add_argument(
        "--to",
        default="redis://127.0.0.1:6379/0",
        metavar="REDIS_URL",
        help="the Redis server (default redis://127.0.0.1:6379/0)",
    )
    p.add_argument(
        "--channel",
        action="append",
        default=[],
        help="a channel key to bridge (repeatable; default per venue: "
        + "; ".join(f"{v}: {' '.join(chs)}" for v, chs in _BRIDGE_CHANNELS.items())
        + ")",
    )
    p.add_argument(
        "--maxlen", type=int, default=100_000, help="trim each stream to about N (default 100000)"
    )
    p.add_argument("--prefix", default="agentstream", help="key prefix (default agentstream)")
    p.add_argument(
        "--max-buffer-mb",
        type=float,
        default=64.0,
        help="memory the account events waiting for Redis may hold (default 64)",
    )
    p.add_argument(
        "--stats-every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="print the bridge's counters this often (default: never)",
    )


def _bridge_client(args: argparse.Namespace) -> StreamClient:
    import os

    from agentstream._tail import CREDENTIAL_ENV

    env = CREDENTIAL_ENV[args.venue]
    key = args.key or os.environ.get(env)
    if not key:
        raise ConfigurationError(f"no credential: pass --key or set ${env}")
    if args.venue == "agentexchange":
        from agentstream import AgentExchangeWS

        return AgentExchangeWS(key, args.url)
    if args.venue == "tradier":
        from agentstream.tradier import TradierStream

        return TradierStream(key, base_url=args.url, sandbox=args.sandbox)
    from agentstream.tastytrade import TastytradeStream

    return TastytradeStream(
        key, args.account, url=args.url, api_url=args.api_url, sandbox=args.sandbox
    )


async def _bridge(args: argparse.Namespace) -> int:
    from agentstream.bus.bridge import Bridge

    client = _bridge_client(args)
    bridge = Bridge(
        client,
        args.to,
        channels=args.channel or _BRIDGE_CHANNELS[args.venue],
        maxlen=args.maxlen,
        prefix=args.prefix,
        max_buffer_bytes=max(1, int(args.max_buffer_mb * (1 << 20))),
    )
    print(
        f"bridge {args.venue} -> {mask_redis_url(args.to)}: "
        f"{', '.join(c.key for c in bridge.channels)}  Ctrl-C to stop",
        flush=True,
    )
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)  # a second Ctrl-C interrupts
        print("stopping (writing what waits)", file=sys.stderr, flush=True)
        stopping.append(loop.create_task(bridge.stop()))

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)

    async def report() -> None:
        while True:
            await asyncio.sleep(args.stats_every)
            s = bridge.stats
            print(
                f"{s.state} upstream={s.upstream} received={s.received} written={s.written} "
                f"pending={s.pending} conflated={s.conflated} lost={s.lost} "
                f"redis_errors={s.redis_errors}",
                flush=True,
            )

    reporter = asyncio.create_task(report()) if args.stats_every > 0 else None
    try:
        await bridge.run()
    finally:
        if reporter is not None:
            reporter.cancel()
    s = bridge.stats
    print(f"stopped: written={s.written} conflated={s.conflated} lost={s.lost}", flush=True)
    return 0


_TAIL_EPILOG = """\
channels:
  agentexchange  ticker:SYMBOL  ticker:all  candles:SYMBOL:INTERVAL  orders  portfolio
                 (INTERVAL: 1m 5m 15m 1h 4h 1d)
  tradier        orders
  tastytrade     orders  balances  positions  quote-alerts  watchlists

defaults: the simulated exchange (agentstream serve) on 127.0.0.1:8000 with its demo
key, token and account. Environment: AGENTEXCHANGE_API_KEY, AGENTEXCHANGE_WS_URL;
TRADIER_TOKEN, TRADIER_ACCOUNT, TRADIER_BASE_URL; TASTYTRADE_TOKEN, TASTYTRADE_ACCOUNT,
TASTYTRADE_URL. Events go to stdout, connection news (reconnects, gaps) to stderr.

examples:
  agentstream tail ticker:BTCUSDT candles:ETHUSDT:1m orders portfolio
  agentstream tail ticker:all --json --count 100 | jq -r .data.price
  agentstream tail --venue tradier orders
  agentstream tail --venue tastytrade orders balances positions --account 5WT00000
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text}")
    return value


def _add_tail_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from agentstream._tail import VENUES

    tail = sub.add_parser(
        "tail",
        help="print a live stream, one line per event (the sim by default, or any venue)",
        description="Print a live stream, one line per event, with reconnects and gaps.",
        epilog=_TAIL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tail.add_argument("channels", nargs="+", metavar="CHANNEL", help="what to print (below)")
    tail.add_argument(
        "--venue", choices=VENUES, default="agentexchange", help="default agentexchange"
    )
    tail.add_argument("--url", help="the venue's URL (default: the sim on 127.0.0.1:8000)")
    cred = tail.add_mutually_exclusive_group()
    cred.add_argument(
        "--key",
        dest="credential",
        metavar="API_KEY",
        help="AgentExchange API key (default $AGENTEXCHANGE_API_KEY, else the sim's demo key)",
    )
    cred.add_argument(
        "--token",
        dest="credential",
        metavar="TOKEN",
        help="Tradier or tastytrade token (default $TRADIER_TOKEN / $TASTYTRADE_TOKEN, "
        "else the sim's demo token); tastytrade's includes 'Bearer '",
    )
    tail.add_argument(
        "--account",
        help="Tradier: print only this account's orders; tastytrade: the account to follow "
        "(default $TRADIER_ACCOUNT / $TASTYTRADE_ACCOUNT; tastytrade: the sim's demo account)",
    )
    tail.add_argument(
        "--json", action="store_true", help="one JSON object per event (for jq and scripts)"
    )
    tail.add_argument("--count", type=_positive_int, metavar="N", help="stop after N events")
    tail.add_argument("--seconds", type=_positive_float, metavar="S", help="stop after S seconds")
    tail.set_defaults(tail_parser=tail)  # for a usage error about a channel, after parsing


def _tail(args: argparse.Namespace) -> int:
    from agentstream._tail import ChannelError, resolve_options, run_tail

    try:
        opts = resolve_options(
            args.venue,
            args.channels,
            url=args.url,
            credential=args.credential,
            account=args.account,
            json=args.json,
            count=args.count,
            seconds=args.seconds,
            verbose=args.verbose,
        )
    except ChannelError as exc:
        args.tail_parser.error(str(exc))
    return asyncio.run(run_tail(opts))


def run_script(path: str, args: Sequence[str] = ()) -> None:
    """Run ``path`` as ``__main__`` with ``sys.argv[1:]`` = ``args``, allowing top-level
    ``await`` (as in a notebook).

    Example:
        $ agentstream run examples/decorators.py --verbose
    """
    import ast
    import runpy
    import types
    from pathlib import Path

    sys.argv = [path, *args]
    source = Path(path).read_text(encoding="utf-8")
    code = compile(source, path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if not code.co_flags & inspect.CO_COROUTINE:  # no top-level await: run it plainly
        runpy.run_path(path, run_name="__main__")
        return
    module = types.ModuleType("__main__")
    module.__file__ = path
    sys.modules["__main__"] = module
    sys.path.insert(0, str(Path(path).resolve().parent))
    coro = eval(code, module.__dict__)  # the user's own script, by request
    asyncio.run(coro)


async def _serve(config: SimConfig) -> None:
    async with SimExchange(config) as sim:
        print(f"simulated exchange on {sim.url}/ws/v1  (REST {sim.http_url}/api/v1)", flush=True)
        if DEMO_API_KEY in config.api_keys:
            keys = f"demo API key: {DEMO_API_KEY} (or the SDK page's {PLACEHOLDER_API_KEY})"
        else:  # --key: the user's own keys, which we do not echo
            keys = f"API keys: the {len(config.api_keys)} given with --key"
        print(f"{keys}   Ctrl-C to stop", flush=True)
        print(
            f"Tradier: base_url {sim.http_url}  demo token: {TRADIER_DEMO_TOKEN}"
            f" (account {TRADIER_DEMO_ACCOUNT})",
            flush=True,
        )
        print(
            f"tastytrade: streamer {sim.url}/tastytrade  REST {sim.http_url}/accounts"
            f"  demo token: {TASTYTRADE_DEMO_TOKEN!r} (account {TASTYTRADE_DEMO_ACCOUNT})",
            flush=True,
        )
        await _wait_for_signal()


async def _wait_for_signal() -> None:
    """Block until SIGINT/SIGTERM (Ctrl-C), then return so everything closes cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agentstream`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "tail":
        try:
            return _tail(args)
        except KeyboardInterrupt:  # a second Ctrl-C while stopping
            print("agentstream tail: interrupted", file=sys.stderr)
            return 130
    if args.command == "run":
        if not args.verbose:
            # A bot run from the command line says when it connected, reconnected or gave
            # up (the client's INFO lines); the libraries it uses stay at WARNING.
            logging.getLogger("agentstream").setLevel(logging.INFO)
        try:
            run_script(args.script, args.args)
        except (OSError, SyntaxError) as exc:
            if isinstance(exc, SyntaxError) and exc.filename != args.script:
                raise  # the script's own import of a broken module: its traceback helps
            # The script cannot be read or compiled: one line, as python would say it.
            where = f" (line {exc.lineno})" if isinstance(exc, SyntaxError) else ""
            reason = exc.msg if isinstance(exc, SyntaxError) else exc.strerror or exc
            print(f"agentstream run: {args.script}{where}: {reason}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            # The script's own loop was interrupted: one line instead of a traceback.
            print("agentstream run: stopped (Ctrl-C)", file=sys.stderr)
            return 130
        return 0
    if args.command == "bridge":
        try:
            return asyncio.run(_bridge(args))
        except KeyboardInterrupt:
            return 130
        except AgentStreamError as exc:
            print(f"agentstream bridge: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    config = _sim_config(args)
    try:
        if args.command == "serve":
            asyncio.run(_serve(config))
        elif args.command == "demo":
            from agentstream._demo import run_demo

            asyncio.run(run_demo(config, seconds=args.seconds, stop_signal=_wait_for_signal))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"agentstream: {exc}", file=sys.stderr)
        return 1
    return 0
