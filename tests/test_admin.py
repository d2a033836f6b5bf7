"""The admin port: Prometheus metrics (parsed with prometheus_client's own
parser), /healthz and /readyz, over real sockets."""
import asyncio

import pytest
import websockets
from conftest import recv, send, subscribe, until, url
from prometheus_client.parser import text_string_to_metric_families

from tickcast.feeds.market import SimulatedMarket


async def get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def scrape(server) -> dict:
    """{(name, labels as a sorted tuple): value} of one scrape."""
    status, body = await get(server.admin.port, "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.fixture
async def watched(make_server):
    return await make_server(feed=SimulatedMarket(seed=1, tick=0.02), admin_port=0)


async def test_metrics_count_what_happened(watched, key):
    server = watched
    async with websockets.connect(url(server, key)) as ws:
        await send(ws, subscribe({"type": "quotes", "symbols": ["BTC/USDT", "ETH/USDT"]}))
        assert (await recv(ws))["type"] == "subscribed"
        got = 0
        while got < 10:
            if (await recv(ws))["type"] == "update":
                got += 1
        await ws.send("not json")
        while (await recv(ws)).get("code") != "INVALID_MESSAGE":
            pass
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(url(server, "mk_live_" + "x" * 32))
        async with websockets.connect(url(server, path="/v4/public/ws")) as v4:
            await v4.send('{"id": 1, "method": "SUBSCRIBE", "params": {"type": "nope"}}')
            assert '"code":400' in (await asyncio.wait_for(v4.recv(), 3)).replace(" ", "")
            m = await scrape(server)
        assert m[("tickcast_connections", (("dialect", "marketai"), ("tier", "max")))] == 1
        assert m[("tickcast_connections", (("dialect", "v4"), ("tier", "none")))] == 1
        assert m[("tickcast_connections_accepted_total", (("dialect", "marketai"),))] == 1
        assert m[("tickcast_connections_refused_total", (("reason", "UNAUTHORIZED"), ("status", "401")))] == 1
        assert m[("tickcast_errors_sent_total", (("code", "INVALID_MESSAGE"), ("dialect", "marketai")))] == 1
        assert m[("tickcast_errors_sent_total", (("code", "400"), ("dialect", "v4")))] == 1
        assert m[("tickcast_subscriptions", (("channel", "quotes"),))] == 2
        assert m[("tickcast_index_bytes", ())] > 0
        assert m[("tickcast_state_topics", ())] == len(server.latest) > 0     # the quotes the feed published
        assert 0 < m[("tickcast_state_bytes", ())] <= server.settings.state_bytes
        assert m[("tickcast_frames_delivered_total", (("channel", "quotes"),))] >= got - 2   # less the snapshots
        assert m[("tickcast_updates_published_total", (("channel", "quotes"),))] >= \
            m[("tickcast_frames_delivered_total", (("channel", "quotes"),))] / 2
        assert m[("tickcast_bytes_sent_total", ())] > 0
        flushes = m[("tickcast_flush_duration_seconds_count", ())]
        assert flushes > 0 and m[("tickcast_flush_duration_seconds_bucket", (("le", "+Inf"),))] == flushes
        assert 0 <= m[("tickcast_queued_bytes_max", ())] <= m[("tickcast_queued_bytes", ())]
        assert m[("tickcast_slow_consumer_closes_total", ())] == 0
    # A topic given back keeps its counts under its channel; a gauge of
    # connections goes back to 0 when the last of its label set closes.
    assert await until(lambda: not server.connections)
    after = await scrape(server)
    assert after[("tickcast_connections", (("dialect", "marketai"), ("tier", "max")))] == 0
    assert after[("tickcast_connections", (("dialect", "v4"), ("tier", "none")))] == 0
    assert after[("tickcast_subscriptions", (("channel", "quotes"),))] == 0
    assert after[("tickcast_frames_delivered_total", (("channel", "quotes"),))] >= \
        m[("tickcast_frames_delivered_total", (("channel", "quotes"),))]


async def test_health_and_readiness(watched, key):
    server = watched
    assert await get(server.admin.port, "/healthz") == (200, "ok\n")
    assert await get(server.admin.port, "/readyz") == (200, "ready\n")
    assert (await get(server.admin.port, "/nope"))[0] == 404
    async with websockets.connect(url(server, key)) as ws:
        drain = asyncio.create_task(server.drain(0.5))
        await asyncio.sleep(0.1)
        assert await get(server.admin.port, "/readyz") == (503, "not ready: draining\n")
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 3)
        await drain


async def test_admin_endpoints_are_not_on_the_public_port(watched):
    status, body = await get(watched.port, "/metrics")
    assert status != 200 and "tickcast_" not in body
    assert watched.admin.port != watched.port
