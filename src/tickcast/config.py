"""Server settings, their embedded defaults, and where else they come from.

Every setting is a serve flag (--ping-interval), a key of the TOML file
named by --config or $TICKCAST_CONFIG (ping_interval = 30.0) and an
environment variable (TICKCAST_PING_INTERVAL=30); flags win over the
environment, the environment over the file, the file over the defaults.
"""
from __future__ import annotations

import difflib
import json
import os
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:                                   # the same parser, before it joined the standard library
    import tomli as tomllib


def default_keys_path() -> Path:
    env = os.environ.get("TICKCAST_KEYS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "tickcast" / "keys.sqlite3"


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8765
    keys: Path = field(default_factory=default_keys_path)
    # Heartbeat: one timer pings every connection; no pong in time closes it.
    ping_interval: float = 30.0
    ping_timeout: float = 10.0
    auth_timeout: float = 10.0
    # Bytes queued for one connection (ours plus the transport's) before it is
    # closed as a slow consumer, and the kernel send buffer that hides behind it.
    max_queue: int = 1 << 20
    sndbuf: int = 256 * 1024
    # Under dense traffic, at most one flush per this many microseconds, so that
    # ticks share writes (a send per frame costs several times the frame). Off
    # by default: it adds up to the interval to a dense update's latency, and
    # a server with a core to spare is faster without it.
    coalesce_us: int = 0
    backlog: int = 4096
    # Incoming control frames are small.
    max_frame_size: int = 64 * 1024
    # The latest state of every topic a feed or the bus names, kept for
    # snapshots: past this many bytes the least recently updated topics go.
    state_bytes: int = 256 << 20
    # Each Market.ai topic's recent updates, for sequence numbers and resume:
    # at least the last 60 s and 300 updates of a topic while the total fits;
    # past it the least recently updated topics go. 0: no sequence numbers.
    history_bytes: int = 256 << 20
    # /v4/public/ws has no keys: bound it per client address and per connection.
    v4_max_connections_per_ip: int = 100
    v4_max_subscriptions: int = 200
    # Connections in all (0: as many as the descriptor limit allows); those
    # in their handshake, and those without ?key= awaiting the auth message,
    # each at most max_pending_auth (0: a quarter of the capacity), the
    # latter also per client address.
    max_connections: int = 0
    max_pending_auth: int = 0
    max_pending_auth_per_ip: int = 16
    handshake_timeout: float = 5.0
    # Control-message budget per connection.
    rate: float = 20.0
    burst: int = 40
    # How long a closing connection may take to drain before it is cut.
    close_timeout: float = 10.0
    # On SIGTERM or Ctrl-C: every client closed (1001) spread over this long.
    drain_seconds: float = 10.0
    # Where updates come from: a bus (redis://HOST:PORT[/DB]) and/or a feed
    # in this process (with a bus, none unless asked).
    bus: str | None = None
    # Connections per key counted across every node on this Redis
    # (redis://HOST:PORT[/DB]); a node's leases lapse lease_ttl seconds after
    # it stops renewing them (killed), so its keys can connect elsewhere.
    limits: str | None = None
    lease_ttl: float = 15.0
    # Processes sharing the port (each a whole node, all fed by the bus), and
    # whether this one binds with SO_REUSEPORT (a worker does).
    workers: int = 1
    reuse_port: bool = False
    # Logs: text or JSON lines, from this level up.
    log_format: str = "text"
    log_level: str = "info"
    # A path that echoes every message (a conformance-testing aid; None: off).
    echo_path: str | None = None
    # Metrics and health on a port of their own (None: off; 0: any free port).
    admin_port: int | None = None
    admin_host: str = "127.0.0.1"
    # TLS (wss://) on the same port for both dialects: a PEM certificate
    # chain and its private key.
    certfile: str | None = None
    keyfile: str | None = None
    # Feed.
    feed: str = "market"
    seed: int = 1
    tick_interval: float = 0.1
    bench_symbols: int = 1
    bench_rate: float = 1000.0
    bench_batch: int = 10
    bench_size: int = 200
    bench_channels: str = "trades"
    bench_zipf: float = 0.0
    mint_test_key: bool = True
    # --feed replay:FILE: how much faster than recorded, and whether to start again at the end.
    replay_speed: float = 1.0
    replay_loop: bool = False

    def validate(self) -> None:
        if self.ping_interval <= 0 or self.ping_timeout <= 0:
            raise ValueError("--ping-interval and --ping-timeout must be positive")
        if self.ping_timeout > self.ping_interval:
            raise ValueError("--ping-timeout may not exceed --ping-interval")
        if self.max_queue < 1024:
            raise ValueError("--max-queue must be at least 1024 bytes")
        if self.coalesce_us < 0 or self.coalesce_us > 1_000_000:
            raise ValueError("--coalesce-us must be between 0 and 1000000")
        if self.state_bytes < 1 << 16:
            raise ValueError("--state-bytes must be at least 65536")
        if self.history_bytes != 0 and self.history_bytes < 1 << 16:
            raise ValueError("--history-bytes must be 0 (no sequence numbers) or at least 65536")
        if self.backlog < 1:
            raise ValueError("--backlog must be at least 1")
        if not 125 <= self.max_frame_size <= 1 << 30:
            raise ValueError("--max-frame-size must be between 125 bytes and 1 GiB")
        if self.max_connections < 0 or self.max_pending_auth < 0 or self.max_pending_auth_per_ip < 1:
            raise ValueError("--max-connections and --max-pending-auth must be >= 0 (0: automatic), "
                             "--max-pending-auth-per-ip >= 1")
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        if self.workers > 1 and not self.bus:
            raise ValueError("--workers above 1 needs --bus: every worker is fed by the bus "
                             "(run the feed as its own process: tickcast feed --bus URL)")
        if self.workers > 1 and self.feed != "none":
            raise ValueError("--workers above 1 takes no --feed: run it as its own process, "
                             "tickcast feed --bus URL")
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError("--certfile and --keyfile go together")
        for flag, path in (("--certfile", self.certfile), ("--keyfile", self.keyfile)):
            if path and not os.access(path, os.R_OK):
                raise ValueError(f"{flag} {path}: no such file, or not readable")
        if self.admin_port is not None and not 0 <= self.admin_port <= 65535:
            raise ValueError("--admin-port must be between 0 and 65535")
        if self.admin_port and self.admin_port == self.port:
            raise ValueError("--admin-port must differ from --port: admin endpoints are never public")
        if self.echo_path is not None and (not self.echo_path.startswith("/") or
                                           self.echo_path == "/v4/public/ws"):
            raise ValueError("--echo-path must be a path of its own, starting with /")
        if not 0 <= self.drain_seconds <= 3600:
            raise ValueError("--drain-seconds must be between 0 and 3600")
        if not 1 <= self.lease_ttl <= 3600:
            raise ValueError("--lease-ttl must be between 1 and 3600 seconds")
        for flag, url in (("--bus", self.bus), ("--limits", self.limits)):
            if url:
                check_redis_url(flag, url)
        if self.handshake_timeout <= 0:
            raise ValueError("--handshake-timeout must be positive")
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("--rate must be positive and --burst at least 1")
        if self.v4_max_connections_per_ip < 1 or self.v4_max_subscriptions < 1:
            raise ValueError("--v4-max-connections-per-ip and --v4-max-subscriptions must be >= 1")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, not {self.log_format!r}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValueError(f"log_level must be debug, info, warning or error, not {self.log_level!r}")
        if self.feed not in ("market", "bench", "none") and not self.feed.startswith("replay:"):
            raise ValueError(f"--feed must be market, bench, none or replay:FILE, not {self.feed!r}")
        if not 0 < self.replay_speed <= 1e6:
            raise ValueError("--replay-speed must be positive")
        from tickcast.wire.marketai import CHANNELS
        if not set(self.bench_channels.split(",")) <= set(CHANNELS):
            raise ValueError(f"--bench-channels takes channels of {', '.join(CHANNELS)}, comma-separated")
        if not 0 <= self.bench_zipf <= 10:
            raise ValueError("--bench-zipf must be between 0 and 10")
        if self.bench_symbols < 1 or self.bench_batch < 1 or self.bench_rate < 0:
            raise ValueError("--bench-symbols and --bench-batch must be >= 1, --bench-rate >= 0")


def check_redis_url(flag: str, url: str) -> None:
    """A Redis URL's form, checked before anything connects (a key store
    first, say): ValueError with the flag's name if it is not one."""
    from urllib.parse import urlsplit
    expected = f"bad {flag} URL {url!r}: expected redis://HOST:PORT[/DB]"
    try:
        parts = urlsplit(url)
        parts.port                       # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        raise ValueError(expected) from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(expected)
    db = parts.path.strip("/")
    if parts.scheme != "unix" and (not parts.hostname or (db and not db.isdigit())):
        raise ValueError(expected)


# -- where settings come from: flags > environment > file > defaults -----------

ENV_PREFIX = "TICKCAST_"
CONFIG_ENV = "TICKCAST_CONFIG"          # the file's path, when --config is not given
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _types() -> dict[str, tuple[type, bool]]:
    """Each setting's type, and whether it may be unset (None)."""
    out = {}
    for name, hint in typing.get_type_hints(Settings).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        out[name] = (args[0] if args else hint, type(None) in typing.get_args(hint))
    return out


def _coerce(name: str, value, where: str):
    kind, optional = _types()[name]
    if kind is Path:
        kind = str                              # a path, or a PostgreSQL URL
    if isinstance(value, str) and where.startswith("$"):
        text = value.strip()
        if optional and text == "":
            return None
        try:
            if kind is bool:
                if text.lower() in _TRUE | _FALSE:
                    return text.lower() in _TRUE
                raise ValueError
            return kind(text)
        except ValueError:
            raise ValueError(f"{where}: expected {_name(kind)}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise ValueError(f"{where}: expected {_name(kind)}, got {type(value).__name__} {value!r}")
    return value


def _name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[kind]


def read_file(path: str) -> dict:
    """The settings a TOML file sets, checked: unknown keys and wrong types are
    refused with the key's name (ValueError, one line)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ValueError(f"config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path}: not TOML: {exc}") from None
    known = _types()
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ValueError(f"config file {path}: unknown key {key!r}")
        out[name] = _coerce(name, value, f"config file {path}: {key}")
    return out


def read_env(environ, warn=None) -> dict:
    """The settings TICKCAST_<NAME> variables set (TICKCAST_PORT, ...). A
    variable under the prefix that names no setting is not the operator's
    mistake alone (an image's TICKCAST_VERSION, a wrapper's TICKCAST_HOME):
    ``warn`` hears of it once, with the nearest setting, and it is ignored
    (an unknown key in a file the operator named stays an error)."""
    known = _types()
    out = {}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
            continue
        name = var[len(ENV_PREFIX):].lower()
        if name not in known:
            if warn is not None:
                near = difflib.get_close_matches(name, known, 1)
                hint = f" (did you mean ${ENV_PREFIX}{near[0].upper()}?)" if near else ""
                warn(f"${var} is not a setting, ignored{hint}")
            continue
        out[name] = _coerce(name, value, f"${var}")
    return out


def resolve(flags: dict, environ, path: str | None, warn=None) -> tuple[Settings, set[str]]:
    """Settings from the flags given, the environment and the file, in that
    order of precedence over the defaults; and the names set by any of them.
    ``warn``: told of environment variables that name no setting."""
    layers = [read_file(path) if path else {}, read_env(environ, warn), flags]
    merged: dict = {}
    for layer in layers:
        merged.update(layer)
    if "feed" not in merged:
        merged["feed"] = "none" if merged.get("bus") else "market"
    if "keys" in merged and not str(merged["keys"]).startswith(("postgresql://", "postgres://")):
        merged["keys"] = Path(merged["keys"])
    return Settings(**merged), set().union(*layers)


def to_toml(settings: Settings) -> str:
    """The settings as a TOML file that --config reads back."""
    lines = []
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if value is None:
            lines.append(f"# {f.name} =            (unset)")
        elif isinstance(value, bool):
            lines.append(f"{f.name} = {'true' if value else 'false'}")
        elif isinstance(value, (int, float)):
            lines.append(f"{f.name} = {value!r}")
        else:
            lines.append(f"{f.name} = {json.dumps(str(value))}")
    return "\n".join(lines) + "\n"
