"""tickcast command line: ``serve`` and ``keys add|list|revoke``."""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from dataclasses import fields
from pathlib import Path

from tickcast._version import __version__
from tickcast.keys import TIERS, KeyStore, KeyStoreError, LimitsError
from tickcast.config import CONFIG_ENV, Settings, default_keys_path, resolve, to_toml
from tickcast.logs import say


def _keys_arg(p: argparse.ArgumentParser, given_only: bool = False) -> None:
    p.add_argument("--keys", default=argparse.SUPPRESS if given_only else None, metavar="PATH|URL",
                   help="a SQLite key store, created mode 0600, or postgresql://USER@HOST/DB "
                        f"(needs tickcast[cluster]) (default: $TICKCAST_KEYS, else {default_keys_path()})")


def _is_pg(keys) -> bool:
    return str(keys).startswith(("postgresql://", "postgres://"))


SETTING_NAMES = {f.name for f in fields(Settings)}

# serve's flags: (flag, type or choices, help); each default is Settings'.
SERVE_FLAGS = [
    ("--host", str, "address to listen on"),
    ("--port", int, "port to listen on (0: any free port)"),
    ("--ping-interval", float, "seconds between protocol pings to every connection"),
    ("--ping-timeout", float, "seconds a connection has to answer a ping before it is closed"),
    ("--auth-timeout", float, "seconds a connection without ?key= has to send its auth message"),
    ("--max-queue", int, "bytes queued for one connection before it is closed as a slow consumer (1008)"),
    ("--state-bytes", int, "bytes of latest state kept for snapshots; past it the least recently updated topics go"),
    ("--history-bytes", int, "bytes of recent Market.ai updates kept for sequence numbers and resume (at least "
                             "60 s and 300 updates of a topic while they fit; 0: no sequence numbers)"),
    ("--sndbuf", int, "kernel send buffer per connection in bytes (0: the system's default)"),
    ("--coalesce-us", int, "under dense traffic, flush at most once per this many microseconds so "
                           "that updates share writes; after a quiet spell a flush goes out at once "
                           "(0: flush every loop iteration)"),
    ("--backlog", int, "listen backlog (pending connections the kernel queues)"),
    ("--max-frame-size", int, "largest incoming message in bytes (over it: close 1009)"),
    ("--v4-max-connections-per-ip", int, "/v4/public/ws: connections from one client address (429 over it)"),
    ("--v4-max-subscriptions", int, "/v4/public/ws: subscriptions on one connection (429 over it)"),
    ("--max-connections", int, "connections held at once (0: the descriptor limit less a reserve); "
                               "over it a new connection gets HTTP 503"),
    ("--max-pending-auth", int, "connections without ?key= awaiting the auth message at once, and "
                                "separately connections in their handshake (0: a quarter of the "
                                "connection capacity each); over it HTTP 503"),
    ("--max-pending-auth-per-ip", int, "connections without ?key= from one address awaiting the auth "
                                       "message at once; over it HTTP 429"),
    ("--handshake-timeout", float, "seconds a new connection has to complete its WebSocket upgrade"),
    ("--rate", float, "control messages per second a connection may send (a message costs one per "
                      "4 KiB started)"),
    ("--burst", int, "control messages a connection may send at once"),
    ("--close-timeout", float, "seconds a closing connection has to drain before it is cut"),
    ("--drain-seconds", float, "on SIGTERM or Ctrl-C, stop accepting and close every client (1001) spread "
                               "over this many seconds; a second signal stops at once"),
    ("--bus", str, "take updates from this bus too: redis://HOST:PORT[/DB] (needs tickcast[bus])"),
    ("--workers", int, "processes sharing the port (SO_REUSEPORT), each a whole node fed by --bus"),
    ("--log-format", ("text", "json"), "log lines as text, or as one JSON object each"),
    ("--log-level", ("debug", "info", "warning", "error"), "the least a line must be to be logged "
                                                           "(debug: a line per connection opened and closed)"),
    ("--echo-path", str, "a testing aid: echo every message on this path (for the Autobahn "
                         "conformance suite; no keys, no budget; never on a public port)"),
    ("--admin-port", int, "serve /metrics (Prometheus), /healthz and /readyz on this port (default: off)"),
    ("--admin-host", str, "address of the admin port (keep it private)"),
    ("--certfile", str, "serve wss:// (both endpoints, same port) with this PEM certificate chain; "
                        "SIGHUP loads it again"),
    ("--keyfile", str, "the private key of --certfile (PEM)"),
    ("--limits", str, "count connections per key across every node on this Redis: redis://HOST:PORT[/DB] "
                      "(needs tickcast[cluster]; default: per process)"),
    ("--lease-ttl", float, "with --limits: seconds after which the places of a node that stopped "
                           "renewing them (killed) are free again"),
    ("--feed", str,
     "market: the simulated markets (Market.ai channels and the perp exchange behind "
     "/v4/public/ws); bench: synthetic trades for benchmarks; replay:FILE: a recording (tickcast record); "
     "none (default: market, or none with --bus)"),
]
# The feed's own flags, for serve and for feed.
FEED_FLAGS = [
    ("--seed", int, "seed of the simulated market"),
    ("--tick-interval", float, "seconds between steps of the simulated market"),
    ("--bench-symbols", int, "bench feed: symbols BENCH0/USDT ... BENCH{K-1}/USDT"),
    ("--bench-rate", float, "bench feed: updates per second in total (0: as fast as the clients take them)"),
    ("--bench-batch", int, "bench feed: updates per event-loop tick"),
    ("--bench-size", int, "bench feed: approximate bytes per update (at least about 275)"),
    ("--bench-channels", str, "bench feed: channels to publish on, comma-separated (each symbol on each)"),
    ("--bench-zipf", float, "bench feed: spread updates over the streams with this Zipf skew "
                            "(0: each stream in turn)"),
    ("--replay-speed", float, "replay feed: how many times faster than recorded"),
]


def build_parser() -> argparse.ArgumentParser:
    d = Settings()
    ap = argparse.ArgumentParser(prog="tickcast", description="WebSocket push server for market data.")
    ap.add_argument("--version", action="version", version=f"tickcast {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve both push APIs on ws://HOST:PORT/",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Serve the Market.ai push API at ws://HOST:PORT/ and the "
                                   "Monday-style public API at ws://HOST:PORT/v4/public/ws, fed by "
                                   "simulated markets, or by a bus (--bus). With no --keys nor $TICKCAST_KEYS, the default "
                                   "key store is used, and if it is empty a mk_test_ key of tier max "
                                   "is created and printed; a store named by either must exist. The simulated perp exchange's "
                                   "trader addresses (for portfolio subscriptions) are listed by "
                                   "'tickcast perp-traders --seed N'.")
    # Only the flags given are set: the rest come from $TICKCAST_*, the file, the defaults.
    _flags(s, SERVE_FLAGS + FEED_FLAGS, d, given_only=True)
    _keys_arg(s, given_only=True)
    s.add_argument("--no-test-key", dest="mint_test_key", action="store_const", const=False,
                   default=argparse.SUPPRESS, help="do not create a mk_test_ key when the key store is empty")
    s.add_argument("--replay-loop", action="store_const", const=True, default=argparse.SUPPRESS,
                   help="replay feed: start again at the end of the recording")
    s.add_argument("--reuse-port", action="store_const", const=True, default=argparse.SUPPRESS,
                   help="bind with SO_REUSEPORT, so that other processes may serve the same port")
    # Set by serve --workers on the process it starts in a crashed worker's place.
    s.add_argument("--worker-restarts", type=int, default=0, help=argparse.SUPPRESS)
    s.add_argument("--config", metavar="PATH", default=None,
                   help=f"a TOML file of settings (default: ${CONFIG_ENV}); flags win over $TICKCAST_* "
                        "variables, which win over the file")
    s.add_argument("--print-config", action="store_true",
                   help="print the settings in effect as TOML (a file --config reads) and exit")

    f = sub.add_parser("feed", help="run a feed as a process of its own, publishing into a bus",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Run the simulated markets (or the bench feed) and publish every "
                                   "update into the bus, serialised once, for every node on it.")
    f.add_argument("--bus", required=True, help="redis://HOST:PORT[/DB]")
    f.add_argument("--feed", default="market", help="market, bench, or replay:FILE (a recording)")
    f.add_argument("--replay-loop", action="store_true", help="replay feed: start again at the end")
    _flags(f, FEED_FLAGS, d)

    p = sub.add_parser("publish", help="publish one Market.ai update into a bus (a smoke test)",
                       description="Publish one update on CHANNEL for SYMBOL whose data is the JSON "
                                   "object JSON, to every node on the bus.")
    p.add_argument("--bus", required=True, help="redis://HOST:PORT[/DB]")
    p.add_argument("channel")
    p.add_argument("symbol")
    p.add_argument("json", metavar="JSON")

    t = sub.add_parser("perp-traders", help="list the simulated perp exchange's trader addresses")
    t.add_argument("--seed", type=int, default=d.seed, help="the seed given to serve")

    r = sub.add_parser("record", help="record a Market.ai feed to a file (replay it with --feed replay:FILE)",
                       description="Subscribe through the SDK (it reconnects) and write every update, with "
                                   "its receive time, to a gzip file of JSON lines, streamed: a file cut off "
                                   "by Ctrl-C or a kill reads back up to its last whole record.")
    r.add_argument("url", metavar="URL", help="ws://HOST:PORT/ or wss://...")
    r.add_argument("--key", required=True)
    r.add_argument("--subscribe", action="append", required=True, metavar="CHANNEL[:SYM,SYM]",
                   help="a channel and its symbols (none: every symbol); may be given again")
    r.add_argument("--out", required=True, metavar="FILE")
    r.add_argument("--duration", type=float, default=None, help="seconds to record (default: until Ctrl-C)")

    w = sub.add_parser("watch", help="a live terminal view of a Market.ai server",
                       description="Per symbol: the global mid, bid and ask, spread and OBI per exchange, the "
                                   "last trades and the Polymarket odds; the latest signals; the connection's "
                                   "state (it reconnects through the SDK). Ctrl-C quits.")
    w.add_argument("url", metavar="URL", nargs="?", default=f"ws://127.0.0.1:{d.port}/",
                   help=f"ws://HOST:PORT/ or wss://... (default ws://127.0.0.1:{d.port}/)")
    w.add_argument("--key", required=True)
    w.add_argument("--symbols", default=None, metavar="SYM,SYM", help="the symbols to show (default: every symbol)")
    w.add_argument("--once", action="store_true",
                   help="print one text snapshot after --gather seconds of updates, and exit")
    w.add_argument("--plain", action="store_true",
                   help="print a text snapshot every --interval seconds instead of the live view "
                        "(the default when the output is not a terminal)")
    w.add_argument("--interval", type=float, default=0.25, help="seconds between refreshes (default 0.25)")
    w.add_argument("--gather", type=float, default=2.0, help="--once: seconds of updates before printing (2)")
    w.add_argument("--timeout", type=float, default=10.0,
                   help="--once: seconds to wait for the connection before giving up (10)")

    k = sub.add_parser("keys", help="manage API keys")
    ks = k.add_subparsers(dest="keys_command", required=True)
    a = ks.add_parser("add", help="create a key and print it")
    a.add_argument("--tier", required=True, choices=list(TIERS))
    a.add_argument("--test", action="store_true", help="make an mk_test_ key instead of mk_live_")
    _keys_arg(a)
    _keys_arg(ks.add_parser("list", help="list keys (prefix, tier, state; never the key)"))
    r = ks.add_parser("revoke", help="revoke a key")
    r.add_argument("key")
    _keys_arg(r)
    return ap


def _flags(parser: argparse.ArgumentParser, flags: list, defaults: Settings, given_only: bool = False) -> None:
    for flag, kind, text in flags:
        dest = flag[2:].replace("-", "_")
        default = None if dest == "feed" else getattr(defaults, dest)    # feed: resolved with --bus
        if given_only:
            text = text if default is None else f"{text} (default: {default})"
            default = argparse.SUPPRESS
        if isinstance(kind, tuple):
            parser.add_argument(flag, choices=kind, default=default, help=text)
        else:
            parser.add_argument(flag, type=kind, default=default, help=text)


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()            # here, where a closed pipe can be caught, not at exit
        return code
    except BrokenPipeError:
        # The reader went (`tickcast keys list | head`): what is left has nobody to
        # read it. (The Python documentation's recipe: no second error at exit.)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "keys":
        keys = args.keys or os.environ.get("TICKCAST_KEYS") or default_keys_path()
        return _keys(args, keys if _is_pg(keys) else Path(keys))
    if args.command == "feed":
        return _feed(args)
    if args.command == "publish":
        return _publish(args)
    if args.command == "record":
        return _record(args)
    if args.command == "watch":
        return _watch(args)
    if args.command == "perp-traders":
        from tickcast.feeds.perp import SimulatedPerpExchange
        for chain, traders in SimulatedPerpExchange(seed=args.seed).traders.items():
            for trader in traders:
                print(chain, trader)
        return 0
    try:
        settings, chosen = resolve({k: v for k, v in vars(args).items() if k in SETTING_NAMES}, os.environ,
                                   args.config or os.environ.get(CONFIG_ENV),
                                   lambda text: print(f"tickcast serve: {text}", file=sys.stderr))
        settings.validate()
    except ValueError as exc:
        print(f"tickcast serve: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_toml(settings), end="")
        return 0
    # A store named by --keys, $TICKCAST_KEYS or the file is the operator's:
    # serve never creates it nor mints a key in it (a typo would start a
    # server whose keys all fail, and print a key of tier max).
    return _serve(settings, settings.keys, "keys" in chosen, args.worker_restarts)


def _keys(args, path) -> int:
    if _is_pg(path):
        return _pg_keys(args, path)
    store = KeyStore(path)
    try:
        if args.keys_command == "add":
            print(store.add(args.tier, "test" if args.test else "live"))
        elif args.keys_command == "list":
            _print_keys(store.list())
        else:
            if not store.revoke(args.key):
                print("no such active key", file=sys.stderr)
                return 1
            print("revoked")
    finally:
        store.close()
    return 0


def _pg_keys(args, url: str) -> int:
    try:
        from tickcast.keys import postgres
    except ImportError as exc:
        print(f"tickcast keys: a PostgreSQL key store needs asyncpg: pip install 'tickcast[cluster]' ({exc})",
              file=sys.stderr)
        return 2
    try:
        if args.keys_command == "add":
            print(asyncio.run(postgres.add(url, args.tier, "test" if args.test else "live")))
        elif args.keys_command == "list":
            _print_keys(asyncio.run(postgres.listing(url)))
        elif asyncio.run(postgres.revoke(url, args.key)):
            print("revoked")
        else:
            print("no such active key", file=sys.stderr)
            return 1
    except KeyStoreError as exc:
        print(f"tickcast keys: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_keys(keys: list[dict]) -> None:
    for k in keys:
        state = "revoked" if k["revoked"] else "active"
        print(f"{k['prefix']}…  {k['tier']:<6} {state:<8} sha256:{k['hash'][:16]}")


def _serve(settings: Settings, keys_path, named: bool, restarts: int = 0) -> int:
    import uvloop

    from tickcast.feeds import make_feed
    from tickcast.listeners import TLSError
    from tickcast.server import serve

    if _is_pg(keys_path):
        try:
            from tickcast.keys.postgres import PostgresKeyStore
        except ImportError as exc:
            print(f"tickcast serve: a PostgreSQL key store needs asyncpg: pip install 'tickcast[cluster]' "
                  f"({exc})", file=sys.stderr)
            return 2
        store = PostgresKeyStore(keys_path)          # loaded when the server starts
    elif named and not keys_path.exists():
        print(f"tickcast serve: no key store at {keys_path} (create it with: tickcast keys add "
              f"--tier TIER --keys {keys_path})", file=sys.stderr)
        return 2
    else:
        store = KeyStore(keys_path)
    _log_to_stderr(settings)
    _raise_open_file_limit()
    if isinstance(store, KeyStore) and store.is_empty() and settings.mint_test_key and not named:
        key = store.add("max", "test")
        say(f"Created key store {keys_path} with a test key of tier max:", settings.log_format)
        print(key, flush=True)
    if settings.workers > 1:
        store.close()
        return _workers(settings, keys_path)

    try:
        feed = make_feed(settings)        # a replay file that is not there says so now
    except ValueError as exc:
        say(f"tickcast serve: {exc}", settings.log_format, "error")
        store.close()
        return 2
    server = None

    def started(running) -> None:
        nonlocal server
        server = running
        server.restarts = restarts
        ready(running)

    def ready(server) -> None:
        # What startup built (modules, the feed's state) lives as long as the
        # server: out of the collector's sight, a full collection walks only
        # what came since (it paused the stream for about 10 ms, before).
        gc.freeze()
        # Where the keys are, and how to make one: a restart prints no key,
        # and keys list shows only prefixes.
        shown = keys_path
        if _is_pg(keys_path):
            from tickcast.keys.postgres import safe_url
            shown = safe_url(keys_path)
        n = store.active()
        say(f"key store {shown}: {n} active key{'' if n == 1 else 's'} (make one: tickcast keys add "
            f"--tier max{f' --keys {shown}' if named else ''})", settings.log_format)
        scheme = "wss" if settings.certfile else "ws"
        say(f"tickcast {__version__} serving {scheme}://{settings.host}:{server.port}/ "
            f"(feed: {settings.feed})", settings.log_format)

    forced = False

    async def run() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()

        def on_signal() -> None:
            nonlocal forced
            if stopping.is_set():               # the second: at once
                forced = True
                task.cancel()
            stopping.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        # A hangup (a closed terminal, a reload by habit) must not cut every
        # client: it loads the TLS certificate again (renewed), if any; keys
        # need no reload, their changes are seen as they are made.
        def hangup() -> None:
            if server is not None and server.tls is not None:
                server.reload_tls()
            else:
                logging.getLogger("tickcast").info("SIGHUP: nothing to reload (changes of keys are seen "
                                                   "as they are made); ignored")
        loop.add_signal_handler(signal.SIGHUP, hangup)
        try:
            await serve(settings, store, feed, started, stopping)
        except asyncio.CancelledError:
            pass

    try:
        uvloop.run(run())
    except (OSError, LimitsError, KeyStoreError, TLSError) as exc:
        say(f"tickcast serve: {exc}", settings.log_format, "error")
        return 1
    finally:
        store.close()
    if forced:
        say("tickcast serve: stopped at once by a second signal", settings.log_format, "warning")
        return 1
    return 0


def _workers(settings: Settings, keys_path: Path) -> int:
    """serve --workers N: N copies of this serve, each with --workers 1 --reuse-port."""
    from tickcast.workers import supervise
    command = [sys.executable, "-m", "tickcast", "serve", "--keys", str(keys_path), "--no-test-key",
               "--reuse-port"]
    for flag, _, _ in SERVE_FLAGS + FEED_FLAGS:
        value = getattr(settings, flag[2:].replace("-", "_"))
        if flag not in ("--port", "--workers", "--admin-port") and value is not None:
            command += [flag, str(value)]
    return supervise(command, settings.workers, settings.host, settings.port, __version__,
                     "wss" if settings.certfile else "ws", settings.admin_port, settings.log_format)


def _feed(args) -> int:
    """tickcast feed: a feed publishing into the bus until Ctrl-C or SIGTERM."""
    import uvloop

    from tickcast.bus import BusError, open_bus
    from tickcast.feeds import make_feed
    from tickcast.publisher import BusSink

    settings = _settings(args)
    try:
        settings.validate()
        feed = make_feed(settings)
        bus = open_bus(args.bus)
    except ValueError as exc:
        print(f"tickcast feed: {exc}", file=sys.stderr)
        return 2
    _log_to_stderr()

    async def run() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await bus.connect()
        except BusError as exc:
            print(f"tickcast feed: {exc}", file=sys.stderr)
            return 1
        print(f"tickcast {__version__} feed {settings.feed} publishing into {args.bus}",
              file=sys.stderr, flush=True)
        try:
            await feed.run(BusSink(bus))
        except asyncio.CancelledError:
            pass
        finally:
            try:
                await asyncio.wait_for(bus.close(), 2)      # a send cut short may hold a connection
            except (asyncio.TimeoutError, BusError):
                pass
        return 0

    return uvloop.run(run())


def _record(args) -> int:
    """tickcast record: until --duration or Ctrl-C; says how many updates it wrote."""
    from tickcast.client import ClientError
    from tickcast.tools.record import parse_subscriptions, record

    async def run() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await record(args.url, args.key, parse_subscriptions(args.subscribe), args.out, args.duration)

    try:
        n = asyncio.run(run())
    except asyncio.CancelledError:
        n = None
    except (ClientError, OSError, ValueError) as exc:
        print(f"tickcast record: {exc}", file=sys.stderr)
        return 1
    print(f"recorded {'until stopped' if n is None else f'{n} updates'} into {args.out}", file=sys.stderr)
    return 0


def _watch(args) -> int:
    """tickcast watch: until Ctrl-C (or one snapshot with --once)."""
    from rich.console import Console

    from tickcast.client import ClientError
    from tickcast.tools.watch import watch

    symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()] if args.symbols else None
    console = Console(highlight=False)
    mode = "once" if args.once else "plain" if args.plain or not console.is_terminal else "live"
    if mode != "live":
        console = Console(highlight=False, no_color=True, width=max(console.width, 160) if not
                          console.is_terminal else None)

    async def run() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        await watch(args.url, args.key, symbols, mode=mode, console=console, interval=args.interval,
                    gather=args.gather, timeout=args.timeout)

    try:
        asyncio.run(run())
    except asyncio.CancelledError:
        pass
    except (ClientError, OSError, TimeoutError, ValueError) as exc:
        print(f"tickcast watch: {exc}", file=sys.stderr)
        return 1
    return 0


def _publish(args) -> int:
    """tickcast publish: one Market.ai update into the bus."""
    import orjson

    from tickcast.bus import BusError
    from tickcast.publisher import Publisher

    try:
        data = orjson.loads(args.json)
    except orjson.JSONDecodeError as exc:
        print(f"tickcast publish: JSON is not valid JSON ({exc})", file=sys.stderr)
        return 2

    async def run() -> None:
        async with Publisher(args.bus) as pub:
            await pub.publish(args.channel, args.symbol, data)

    try:
        asyncio.run(run())
    except ValueError as exc:
        print(f"tickcast publish: {exc}", file=sys.stderr)
        return 2
    except BusError as exc:
        print(f"tickcast publish: {exc}", file=sys.stderr)
        return 1
    print("published")
    return 0


def _settings(args, **extra) -> Settings:
    """Settings from the parsed flags that are settings (``extra`` over them)."""
    names = {f.name for f in fields(Settings)} - set(extra)
    return Settings(**{k: v for k, v in vars(args).items() if k in names}, **extra)


def _log_to_stderr(settings: Settings | None = None) -> None:
    from tickcast.logs import setup
    setup(settings.log_format if settings else "text", settings.log_level if settings else "info")


def _raise_open_file_limit() -> None:
    """One descriptor per connection: lift the soft limit to the hard one."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


if __name__ == "__main__":
    sys.exit(main())
