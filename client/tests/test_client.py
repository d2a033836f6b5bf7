"""The SDK (tickcast.client) against `tickcast serve` processes over real sockets."""
import asyncio
import re
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import free_port, server_command, until

from tickcast.client import (AuthenticationError, Backoff, InvalidChannel, MarketAiClient, MondayClient,
                             RequestFailed, SymbolLimitExceeded)
from tickcast.client.types import Quote

EXACT = dict(jitter=0)
MARKET = ("--feed", "market", "--seed", "1", "--tick-interval", "0.02")
QUIET = ("--feed", "none")


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


async def test_the_readme_example_shape(serve, key):
    server = serve(*MARKET)
    async with MarketAiClient(server.url(), key=key) as client:
        confirmed = await client.subscribe("quotes", ["BTC/USDT", "ETH/USDT"])
        assert confirmed == {"type": "subscribed", "channel": "quotes", "symbols": ["BTC/USDT", "ETH/USDT"]}
        assert (await client.subscribe("signals"))["symbols"] == ["*"]
        got = await updates(client, 4, "quotes")
        assert all(isinstance(u.data, Quote) and u.data.symbol in ("BTC/USDT", "ETH/USDT") for u in got)
        assert isinstance(got[0].data.global_mid, str) and got[0].raw.startswith(b"{")
        assert isinstance(got[0].ts, int)


async def test_decimals_on_request(serve, key):
    server = serve(*MARKET)
    async with MarketAiClient(server.url(), key=key, decimals=True) as client:
        await client.subscribe("quotes", ["BTC/USDT"])
        (u,) = await updates(client, 1, "quotes")
        assert isinstance(u.data.global_mid, Decimal)
        assert all(isinstance(e.bid, Decimal) for e in u.data.exchanges)


async def test_the_guides_schedule_then_resubscription(serve, key):
    # Up, subscribed; killed: attempts after 1, 2, 4, 8 s; back: subscriptions
    # sent again, and updates flow on without the program doing anything.
    port = free_port()
    server = serve(*MARKET, port=port)
    seen = []
    async with MarketAiClient(f"ws://127.0.0.1:{port}/", key=key, backoff=Backoff(**EXACT),
                              on_state=states(seen)) as client:
        await client.subscribe("trades", ["BTC/USDT"])
        await updates(client, 1, "trades")
        server.kill()
        loop = asyncio.get_running_loop()
        while sum(1 for _, s in seen if s.name == "connecting") < 5:     # the first, then 4 attempts
            await asyncio.sleep(0.05)
            assert loop.time() - seen[0][0] < 25
        attempts = [t for t, s in seen if s.name == "connecting"][1:]
        waits = [round(b - a, 1) for a, b in zip(attempts, attempts[1:])]
        assert [s.delay for _, s in seen if s.name == "backing_off"][:4] == [1, 2, 4, 8]
        assert all(abs(w - d) < 0.4 for w, d in zip(waits, [2, 4, 8])), waits
        back = time.time() * 1000
        serve(*MARKET, port=port)
        assert await until(lambda: client.connections == 2, 20)
        while (u := (await updates(client, 1, "trades"))[0]).ts < back:
            pass                                      # read before the server went
        assert u.data.symbol == "BTC/USDT" and client.state.name == "connected"


async def test_the_counter_resets_after_a_stable_connection(serve, relay, key):
    server = serve(*QUIET)
    cutter, port = await relay(server.port)
    seen = []
    backoff = Backoff(first=0.1, reset_after=1.0, **EXACT)
    async with MarketAiClient(f"ws://127.0.0.1:{port}/", key=key, backoff=backoff,
                              on_state=states(seen)) as client:
        for stay in (0.1, 0.1, 1.3):                  # short, short, then stable
            await asyncio.sleep(stay)
            cutter.cut()
            n = client.connections
            assert await until(lambda: client.connections == n + 1, 5)
    delays = [s.delay for _, s in seen if s.name == "backing_off"]
    assert delays == [0.1, 0.2, 0.1]


async def test_a_bad_key_is_not_retried(serve):
    server = serve(*QUIET)
    for auth in ("query", "message"):
        seen = []
        with pytest.raises(AuthenticationError):
            async with MarketAiClient(server.url(), key="mk_live_" + "x" * 32, auth=auth,
                                      on_state=states(seen)):
                pass
        assert [s.name for _, s in seen] == ["connecting", "closed"], auth


async def refused_second(serve, keystore, auth: str):
    """A one-connection key held by a first client, and a second one
    (authenticating by ``auth``) backing off: (first, second, its start task,
    its first backing_off state)."""
    server = serve(*QUIET)
    free = keystore.add("free")
    seen = []
    first = MarketAiClient(server.url(), key=free)
    await first.start()
    second = MarketAiClient(server.url(), key=free, auth=auth,
                            backoff=Backoff(first=0.2, **EXACT), on_state=states(seen))
    task = asyncio.create_task(second.start())
    assert await until(lambda: any(s.name == "backing_off" for _, s in seen), 3)
    return first, second, task, next(s for _, s in seen if s.name == "backing_off")


async def test_the_connection_limit_backs_off_then_connects(serve, keystore):
    first, second, task, refused = await refused_second(serve, keystore, "message")
    assert "CONNECTION_LIMIT" in refused.reason
    await first.close()
    await asyncio.wait_for(task, 5)
    assert second.state.name == "connected" and second.tier == "free"
    await second.close()


async def test_a_refusal_s_retry_after_is_honoured(serve, keystore):
    # The second connection of a one-connection key is refused at the
    # upgrade (?key=): HTTP 429 with Retry-After: 5, which outweighs the
    # schedule's first 0.2 s.
    first, second, task, refused = await refused_second(serve, keystore, "query")
    assert refused.reason == "HTTP 429" and refused.delay == 5.0
    task.cancel()
    await first.close()
    await second.close()


async def test_subscription_errors_map_to_exceptions(serve, keystore):
    server = serve(*QUIET)
    async with MarketAiClient(server.url(), key=keystore.add("free")) as client:
        symbols = [f"C{i}/USDT" for i in range(7)]
        with pytest.raises(SymbolLimitExceeded) as over:
            await client.subscribe("quotes", symbols)
        assert over.value.accepted == symbols[:5] and over.value.rejected == symbols[5:]
        assert client.subscriptions == {"quotes": symbols[:5]}
        with pytest.raises(InvalidChannel):
            await client.subscribe("nope", ["BTC/USDT"])
        assert (await client.unsubscribe("quotes", symbols[:1]))["symbols"] == symbols[:1]
        assert client.subscriptions == {"quotes": symbols[1:5]}


async def test_a_silent_connection_is_taken_for_dead(serve, key):
    server = serve(*QUIET)
    seen = []
    async with MarketAiClient(server.url(), key=key, keepalive=60, dead_after=0.5,
                              backoff=Backoff(first=0.1, **EXACT), on_state=states(seen)) as client:
        assert await until(lambda: client.connections >= 2, 5)
    assert any("nothing heard" in s.reason for _, s in seen if s.name == "backing_off")


async def test_monday_client_acks_by_id_and_resubscribes(serve):
    port = free_port()
    server = serve("--feed", "market", "--seed", "3", "--tick-interval", "0.05", port=port)
    trader = subprocess.run([server_command(), "perp-traders", "--seed", "3"], capture_output=True, text=True,
                            check=True).stdout.split()[1]
    async with MondayClient(server.url("/v4/public/ws"), backoff=Backoff(first=0.1, **EXACT)) as client:
        ack = await client.subscribe(type="common", chainId=143)
        ack2 = await client.subscribe(type="portfolio", chainId=143, userAddress=trader)
        assert ack["result"] == "success" and ack2["id"] == ack["id"] + 1
        with pytest.raises(RequestFailed) as bad:
            await client.subscribe(type="nope", chainId=143)
        assert bad.value.code == "400"
        frames = await updates(client, 1)
        assert frames[0].stream in ("blockNumChanged", "marketListChanged", "portfolio") and \
            frames[0].chain_id == 143
        server.kill()
        serve("--feed", "market", "--seed", "3", "--tick-interval", "0.05", port=port)
        assert await until(lambda: client.connections == 2, 10)
        while (await updates(client, 1))[0].stream != "blockNumChanged":
            pass
        assert client.subscriptions == [{"type": "common", "chainId": 143},
                                        {"type": "portfolio", "chainId": 143, "userAddress": trader}]


async def test_the_readmes_client_example_runs(serve, key, tmp_path):
    readme = Path(__file__).resolve().parent.parent / "README.md"
    example = re.search(r"```python\n(.*?)```", readme.read_text(), re.S).group(1)
    server = serve(*MARKET)
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


async def test_a_cut_connection_resumes_every_update_once_in_order(serve, relay, key):
    # A reader of trades through a relay cut three times: its program sees
    # each topic's updates with contiguous positions in one epoch (every one
    # once, in order), and no gap is told.
    server = serve(*MARKET)
    cutter, port = await relay(server.port)
    gaps = []
    async with MarketAiClient(f"ws://127.0.0.1:{port}/", key=key, backoff=Backoff(first=0.05, **EXACT),
                              on_gap=lambda c, s: gaps.append((c, s))) as cut:
        await cut.subscribe("trades", ["BTC/USDT", "ETH/USDT"])
        seen = []

        async def read(client, into, n):
            async for u in client:
                if u.channel == "trades":
                    into.append(u)
                    if len(into) >= n:
                        return
        reading = asyncio.create_task(read(cut, seen, 10 ** 9))
        away = []                                  # (cut, back) in the server's ms
        for made in (2, 3, 4):
            n = len(seen)
            assert await until(lambda: len(seen) > n + 5, 10)
            cutter.cut()
            start = time.time() * 1000
            assert await until(lambda: cut.connections == made and cut.state.name == "connected", 10)
            away.append((start, time.time() * 1000))
        assert await until(lambda: len(seen) > 40, 20)
        reading.cancel()
    # updates published while it was away came with the resume
    assert any(a <= u.ts < b for u in seen for a, b in away)
    # each topic's updates: contiguous positions, no repeat
    for symbol in ("BTC/USDT", "ETH/USDT"):
        mine = [u.seq for u in seen if u.data.symbol == symbol]
        assert mine == list(range(mine[0], mine[0] + len(mine))), (symbol, mine)
        assert len({u.epoch for u in seen if u.data.symbol == symbol}) == 1
    assert gaps == [] and cut.gaps == 0


async def test_what_could_not_be_recovered_is_told(serve, key):
    # The server killed with -9 and started again: what it published meanwhile
    # is gone with it (and its sequences start again), so each topic the
    # client followed is a gap, told once, and the stream goes on.
    port = free_port()
    server = serve(*MARKET, port=port)
    gaps = []
    async with MarketAiClient(f"ws://127.0.0.1:{port}/", key=key, backoff=Backoff(first=0.1, **EXACT),
                              on_gap=lambda c, s: gaps.append((c, s))) as client:
        await client.subscribe("trades", ["BTC/USDT"])
        first = (await updates(client, 1, "trades"))[0]
        assert first.seq is not None and first.epoch
        server.kill()
        serve(*MARKET, port=port)
        assert await until(lambda: client.connections == 2, 10)
        while (u := (await updates(client, 1, "trades"))[0]).epoch == first.epoch:
            pass
        assert u.seq is not None
    assert ("trades", "BTC/USDT") in gaps and client.gaps == len(gaps)
