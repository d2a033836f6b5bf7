"""The SDK (tickcast.client) against real servers over real sockets."""
import asyncio
import time
from decimal import Decimal

import pytest
from conftest import until
from processes import free_port

from tickcast.client import (AuthenticationError, Backoff, InvalidChannel, MarketAiClient, MondayClient,
                             RequestFailed, SymbolLimitExceeded)
from tickcast.client.types import Quote
from tickcast.feeds.market import SimulatedMarket
from tickcast.feeds.perp import PERPETUAL, SimulatedPerpExchange

EXACT = dict(jitter=0)


async def updates(client, n: int, channel: str | None = None, timeout: float = 5.0) -> list:
    got = []

    async def take():
        async for u in client:
            if channel is None or u.channel == channel:
                got.append(u)
                if len(got) == n:
                    return
    await asyncio.wait_for(take(), timeout)
    return got


def states(into: list):
    loop = asyncio.get_running_loop()
    return lambda s: into.append((loop.time(), s))


async def test_the_readme_example_shape(make_server, key):
    server = await make_server(feed=SimulatedMarket(seed=1, tick=0.02))
    async with MarketAiClient(f"ws://127.0.0.1:{server.port}/", key=key) as client:
        confirmed = await client.subscribe("quotes", ["BTC/USDT", "ETH/USDT"])
        assert confirmed == {"type": "subscribed", "channel": "quotes", "symbols": ["BTC/USDT", "ETH/USDT"]}
        assert (await client.subscribe("signals"))["symbols"] == ["*"]
        got = await updates(client, 4, "quotes")
        assert all(isinstance(u.data, Quote) and u.data.symbol in ("BTC/USDT", "ETH/USDT") for u in got)
        assert isinstance(got[0].data.global_mid, str) and got[0].raw.startswith(b"{")
        assert isinstance(got[0].ts, int)


async def test_decimals_on_request(make_server, key):
    server = await make_server(feed=SimulatedMarket(seed=1, tick=0.02))
    async with MarketAiClient(f"ws://127.0.0.1:{server.port}/", key=key, decimals=True) as client:
        await client.subscribe("quotes", ["BTC/USDT"])
        (u,) = await updates(client, 1, "quotes")
        assert isinstance(u.data.global_mid, Decimal)
        assert all(isinstance(e.bid, Decimal) for e in u.data.exchanges)


async def test_the_guides_schedule_then_resubscription(make_server, key):
    # Up, subscribed; down: attempts after 1, 2, 4, 8 s; back: subscriptions
    # sent again, and updates flow on without the program doing anything.
    port = free_port()
    server = await make_server(feed=SimulatedMarket(seed=1, tick=0.02), port=port)
    seen = []
    async with MarketAiClient(f"ws://127.0.0.1:{port}/", key=key, backoff=Backoff(**EXACT),
                              on_state=states(seen)) as client:
        await client.subscribe("trades", ["BTC/USDT"])
        await updates(client, 1, "trades")
        await server.stop()
        loop = asyncio.get_running_loop()
        while sum(1 for _, s in seen if s.name == "connecting") < 5:     # the first, then 4 attempts
            await asyncio.sleep(0.05)
            assert loop.time() - seen[0][0] < 25
        attempts = [t for t, s in seen if s.name == "connecting"][1:]
        waits = [round(b - a, 1) for a, b in zip(attempts, attempts[1:])]
        assert [s.delay for _, s in seen if s.name == "backing_off"][:4] == [1, 2, 4, 8]
        assert all(abs(w - d) < 0.4 for w, d in zip(waits, [2, 4, 8])), waits
        back = time.time() * 1000
        await make_server(feed=SimulatedMarket(seed=1, tick=0.02), port=port)
        assert await until(lambda: client.connections == 2, 20)
        while (u := (await updates(client, 1, "trades"))[0]).ts < back:
            pass                                      # read before the server went
        assert u.data.symbol == "BTC/USDT" and client.state.name == "connected"


async def test_the_counter_resets_after_a_stable_connection(make_server, key):
    server = await make_server(feed=None)
    seen = []
    backoff = Backoff(first=0.1, reset_after=1.0, **EXACT)
    async with MarketAiClient(f"ws://127.0.0.1:{server.port}/", key=key, backoff=backoff,
                              on_state=states(seen)) as client:
        for stay in (0.1, 0.1, 1.3):                  # short, short, then stable
            await asyncio.sleep(stay)
            for conn in list(server.connections.values()):
                conn.close(1001, "going away")
            n = client.connections
            assert await until(lambda: client.connections == n + 1, 5)
    delays = [s.delay for _, s in seen if s.name == "backing_off"]
    assert delays == [0.1, 0.2, 0.1]


async def test_a_bad_key_is_not_retried(make_server):
    server = await make_server(feed=None)
    for auth in ("query", "message"):
        seen = []
        with pytest.raises(AuthenticationError):
            async with MarketAiClient(f"ws://127.0.0.1:{server.port}/", key="mk_live_" + "x" * 32, auth=auth,
                                      on_state=states(seen)):
                pass
        assert [s.name for _, s in seen] == ["connecting", "closed"], auth


async def refused_second(make_server, keystore, auth: str):
    """A one-connection key held by a first client, and a second one
    (authenticating by ``auth``) backing off: (first, second, its start task,
    its first backing_off state)."""
    server = await make_server(feed=None)
    free = keystore.add("free")
    seen = []
    first = MarketAiClient(f"ws://127.0.0.1:{server.port}/", key=free)
    await first.start()
    second = MarketAiClient(f"ws://127.0.0.1:{server.port}/", key=free, auth=auth,
                            backoff=Backoff(first=0.2, **EXACT), on_state=states(seen))
    task = asyncio.create_task(second.start())
    assert await until(lambda: any(s.name == "backing_off" for _, s in seen), 3)
    return first, second, task, next(s for _, s in seen if s.name == "backing_off")


async def test_the_connection_limit_backs_off_then_connects(make_server, keystore):
    first, second, task, refused = await refused_second(make_server, keystore, "message")
    assert "CONNECTION_LIMIT" in refused.reason
    await first.close()
    await asyncio.wait_for(task, 5)
    assert second.state.name == "connected" and second.tier == "free"
    await second.close()


async def test_a_refusal_s_retry_after_is_honoured(make_server, keystore):
    # The second connection of a one-connection key is refused at the
    # upgrade (?key=): HTTP 429 with Retry-After: 5, which outweighs the
    # schedule's first 0.2 s.
    first, second, task, refused = await refused_second(make_server, keystore, "query")
    assert refused.reason == "HTTP 429" and refused.delay == 5.0
    task.cancel()
    await first.close()
    await second.close()


async def test_subscription_errors_map_to_exceptions(make_server, keystore):
    server = await make_server(feed=None)
    async with MarketAiClient(f"ws://127.0.0.1:{server.port}/", key=keystore.add("free")) as client:
        symbols = [f"C{i}/USDT" for i in range(7)]
        with pytest.raises(SymbolLimitExceeded) as over:
            await client.subscribe("quotes", symbols)
        assert over.value.accepted == symbols[:5] and over.value.rejected == symbols[5:]
        assert client.subscriptions == {"quotes": symbols[:5]}
        with pytest.raises(InvalidChannel):
            await client.subscribe("nope", ["BTC/USDT"])
        assert (await client.unsubscribe("quotes", symbols[:1]))["symbols"] == symbols[:1]
        assert client.subscriptions == {"quotes": symbols[1:5]}


async def test_a_silent_connection_is_taken_for_dead(make_server, key):
    server = await make_server(feed=None)
    seen = []
    async with MarketAiClient(f"ws://127.0.0.1:{server.port}/", key=key, keepalive=60, dead_after=0.5,
                              backoff=Backoff(first=0.1, **EXACT), on_state=states(seen)) as client:
        assert await until(lambda: client.connections >= 2, 5)
    assert any("nothing heard" in s.reason for _, s in seen if s.name == "backing_off")


async def test_monday_client_acks_by_id_and_resubscribes(make_server):
    feed = SimulatedPerpExchange(seed=3, tick=0.05)
    server = await make_server(feed=feed)
    assert await until(lambda: server.monday.instruments, 3)
    m = next(m for (c, _), m in feed.markets.items() if c == 143)
    async with MondayClient(f"ws://127.0.0.1:{server.port}/v4/public/ws",
                            backoff=Backoff(first=0.1, **EXACT)) as client:
        ack = await client.subscribe(type="orderBook", chainId=143, instrument=m.addr, expiry=PERPETUAL)
        ack2 = await client.subscribe(type="common", chainId=143)
        assert ack["result"] == "success" and ack2["id"] == ack["id"] + 1
        with pytest.raises(RequestFailed) as bad:
            await client.subscribe(type="nope", chainId=143)
        assert bad.value.code == "400"
        frames = await updates(client, 1)
        assert frames[0].stream in ("orderBook", "marketPairInfoChanged", "blockNumChanged") and \
            frames[0].chain_id == 143
        for conn in list(server.connections.values()):
            conn.close(1001, "going away")
        assert await until(lambda: client.connections == 2, 5)
        while (await updates(client, 1))[0].stream != "orderBook":
            pass
        assert client.subscriptions == [
            {"type": "orderBook", "chainId": 143, "instrument": m.addr, "expiry": PERPETUAL},
            {"type": "common", "chainId": 143}]


async def test_the_readmes_client_example_runs(make_server, key, tmp_path):
    import re
    import subprocess
    import sys
    from pathlib import Path
    readme = Path(__file__).resolve().parent.parent / "README.md"
    if not readme.exists():
        pytest.skip("needs the README beside the tests")
    example = re.search(r"## Clients.*?```python\n(.*?)```", readme.read_text(), re.S).group(1)
    server = await make_server(feed=SimulatedMarket(seed=1, tick=0.02))
    script = tmp_path / "client.py"
    script.write_text(example.replace("mk_test_...", key).replace("127.0.0.1:8765", f"127.0.0.1:{server.port}"))
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    try:
        first = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert b"'type': 'subscribed'" in first, first
        lines = [await asyncio.wait_for(proc.stdout.readline(), 10) for _ in range(5)]
        assert all(line.startswith((b"quotes ", b"signals ")) for line in lines), lines
    finally:
        proc.kill()
        await proc.wait()
