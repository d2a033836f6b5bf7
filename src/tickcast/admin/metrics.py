"""The node's metrics, read when scraped.

Nothing here runs per update: the hub counts in C (updates and frames per
topic, bytes, flush durations) and the server counts control-plane events
(accepted, refused, errors sent, closes); a scrape reads those counts and
walks the connections once.
"""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

if TYPE_CHECKING:
    from tickcast._fanout import Hub
    from tickcast.bus.intake import Intake
    from tickcast.connection import Connections
    from tickcast.dialects.history import History
    from tickcast.dialects.state import LatestState
    from tickcast.keys.leases import RedisLeases


class NodeView(Protocol):
    """What the admin port reads of its node (and nothing it writes)."""
    hub: Hub
    connections: Connections
    latest: LatestState
    history: History | None
    stats: Counter                  # what clients provoked, by kind
    accepted: Counter               # dialect -> connections upgraded
    refusals: Counter               # (HTTP status, reason) -> connections refused
    errors_sent: Counter            # (dialect, code) -> errors sent
    restarts: int
    bus: object | None              # with --bus: its lag and reconnects
    bus_ready: bool
    intake: Intake | None
    leases: RedisLeases | None

    def not_ready(self) -> str | None: ...


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(kind, name: str, doc: str, labels: list[str], values: dict) -> object:
    family = kind(name, doc, labels=labels)
    for key, value in sorted(values.items(), key=lambda kv: tuple(map(str, kv[0]))):
        family.add_metric([str(k) for k in key], value)
    return family


class ServerCollector:
    def __init__(self, server: NodeView) -> None:
        self.server = server
        # Every (dialect, tier) that has had a connection: a gauge goes back
        # to 0 when its last connection closes, rather than vanishing.
        self.seen: set[tuple[str, str]] = set()

    def describe(self):
        return []

    def collect(self):
        s = self.server
        hub = s.hub
        stats = s.stats

        open_ = Counter()
        for conn in s.connections.values():
            principal = getattr(conn, "principal", None)
            open_[(conn.DIALECT, principal.tier.name if principal is not None else "none")] += 1
        self.seen.update(open_)
        open_.update({labels: 0 for labels in self.seen})
        yield _labelled(GaugeMetricFamily, "tickcast_connections", "Open connections by dialect and tier "
                        "(tier none: a v4 connection, or one not authenticated yet)", ["dialect", "tier"], open_)
        yield _labelled(CounterMetricFamily, "tickcast_connections_accepted",
                        "Connections upgraded, by dialect", ["dialect"], {(d,): n for d, n in s.accepted.items()})
        yield _counter("tickcast_worker_restarts", "Times serve --workers started this worker's place "
                       "again after its process died (0 for a process of its own)", s.restarts)
        yield _labelled(CounterMetricFamily, "tickcast_connections_refused",
                        "Connections refused, by HTTP status and reason", ["status", "reason"], s.refusals)

        families = hub.index.by_family()
        published = {(f,): v[0] for f, v in families.items()}
        delivered = {(f,): v[1] for f, v in families.items()}
        topics = {(f,): v[2] for f, v in families.items()}
        subs = {(f,): v[3] for f, v in families.items()}
        yield _labelled(GaugeMetricFamily, "tickcast_subscriptions", "Subscriptions held, by channel "
                        "(a Market.ai channel or a v4 stream; * is a channel's wildcard)", ["channel"],
                        {k: v for k, v in subs.items()})
        yield _labelled(GaugeMetricFamily, "tickcast_topics", "Live topics, by channel", ["channel"], topics)
        yield GaugeMetricFamily("tickcast_index_bytes", "C memory of the subscription index (each live "
                                "topic's slot arrays or bitsets, each slot's list of topics, the tables)",
                                value=hub.index.nbytes)
        latest = s.latest
        yield GaugeMetricFamily("tickcast_state_topics", "Topics whose latest state is kept for snapshots",
                                value=len(latest))
        yield GaugeMetricFamily("tickcast_state_bytes", "Bytes of latest state kept for snapshots "
                                "(payloads and an estimate of their tables; at most --state-bytes)",
                                value=latest.bytes)
        yield _counter("tickcast_state_evicted", "Topics whose latest state was let go to stay "
                       "within --state-bytes (least recently updated first)", latest.evicted)
        history = s.history
        if history is not None:
            yield GaugeMetricFamily("tickcast_history_topics", "Market.ai topics whose sequence and recent "
                                    "updates are kept, for resume", value=len(history))
            yield GaugeMetricFamily("tickcast_history_bytes", "Bytes of recent updates kept for resume "
                                    "(at most --history-bytes)", value=history.bytes)
            yield _counter("tickcast_history_evicted", "Topics whose recent updates were let go to stay within "
                           "--history-bytes (their sequences start again in a new epoch)", history.evicted)
        yield _labelled(CounterMetricFamily, "tickcast_updates_published", "Updates published, by channel",
                        ["channel"], published)
        yield _labelled(CounterMetricFamily, "tickcast_frames_delivered",
                        "Update frames queued to connections, by channel", ["channel"], delivered)
        yield _counter("tickcast_bytes_sent", "Bytes handed to the kernel or the TLS transport", hub.bytes_sent)
        yield _counter("tickcast_writes", "Writes to connections (one per connection per flush at most)",
                       hub.writes)
        total, most = hub.queued()
        yield GaugeMetricFamily("tickcast_queued_bytes", "Bytes queued for all connections", value=total)
        yield GaugeMetricFamily("tickcast_queued_bytes_max", "Bytes queued for the fullest connection",
                                value=most)

        buckets, cumulative = [], 0
        for bound, n in hub.flush_histogram():
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily("tickcast_flush_duration_seconds", "Duration of the hub's flushes",
                                    buckets=buckets, sum_value=hub.flush_seconds)

        yield _counter("tickcast_slow_consumer_closes", "Connections closed as slow consumers",
                       stats["slow_consumer_closes"])
        yield _labelled(CounterMetricFamily, "tickcast_resumes", "Positions clients named to resume from, by "
                        "whether every update after them was still kept", ["recovered"],
                        {("true",): stats["resumes_recovered"], ("false",): stats["resumes_not_recovered"]})
        yield _counter("tickcast_conflated", "State updates held aside for a connection that was behind "
                       "(it got the latest of each state instead of every one)", hub.conflated)
        yield _counter("tickcast_pong_timeouts", "Connections closed for not answering a ping in time",
                       stats["pong_timeouts"])
        yield _counter("tickcast_rate_limited", "Control messages refused over the connection's budget",
                       stats["rate_limited"])
        yield _labelled(CounterMetricFamily, "tickcast_errors_sent", "Errors sent to clients, by dialect and code",
                        ["dialect", "code"], s.errors_sent)
        yield _counter("tickcast_internal_errors", "Errors of ours while handling a client's message",
                       stats["internal_errors"])

        if s.bus is not None:
            yield GaugeMetricFamily("tickcast_bus_ready", "1 while the bus is connected", value=int(s.bus_ready))
            yield GaugeMetricFamily("tickcast_bus_lag_seconds", "Age of the last message read from the bus when "
                                    "it was read (on Redis's clock)", value=s.bus.lag)
            yield _counter("tickcast_bus_reconnects", "Times the bus was lost and found again", s.bus.reconnects)
            yield _counter("tickcast_bus_records", "Records read from the bus", s.intake.records)
            yield _counter("tickcast_bus_dropped", "Malformed records dropped from the bus", s.intake.dropped)
            yield _counter("tickcast_bus_shed", "Event records from the bus dropped because the feed outran this "
                           "node (clients with sequence numbers see the jump)", s.intake.shed)
            yield _counter("tickcast_bus_held_over", "State records from the bus that waited for a later loop "
                           "iteration because the feed outran this node (the latest per state key went out)",
                           s.intake.held_over)
        if s.leases is not None:
            yield GaugeMetricFamily("tickcast_limits_ready", "1 while connection counts are kept in Redis "
                                    "(0: counted per node)", value=int(s.leases.ready))
