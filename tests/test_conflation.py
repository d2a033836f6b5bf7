"""A reader that falls behind: the latest of each state instead of every
update, never closed for it; events still bound its queue (1008 as the
last resort). Real connections whose kernel buffers are kept small."""
import asyncio
import json
import socket

import websockets
from conftest import closed_with, recv, send, subscribe, until, url

PAD = "x" * 1000


def quote(n: int, symbol: str) -> dict:
    return {"symbol": symbol, "global_mid": str(n), "exchanges": [], "pad": PAD}


async def stalled(server, key, *entries, seq: bool = False):
    """A client that reads nothing until told, behind 8 KiB of receive buffer."""
    ws = await websockets.connect(url(server, key) + ("&seq=1" if seq else ""), max_queue=1)
    ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024)
    await send(ws, subscribe(*entries))
    for _ in entries:
        assert (await recv(ws))["type"] == "subscribed"
    return ws


async def test_a_reader_behind_on_quotes_gets_the_latest_and_stays(make_server, key):
    server = await make_server(max_queue=64 * 1024, sndbuf=16 * 1024)
    symbols = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
    ws = await stalled(server, key, {"type": "quotes", "symbols": symbols}, seq=True)
    # 3 MB of quotes: 45 times what --max-queue lets one connection hold.
    for n in range(1000):
        for s in symbols:
            server.marketai.publish("quotes", s, quote(n, s))
        if n % 50 == 0:
            await asyncio.sleep(0.005)
    assert server.hub.conflated > 0 and server.hub.is_open(next(iter(server.connections.values())).slot)
    total, most = server.hub.queued()
    assert most <= 64 * 1024
    # It reads now: every symbol's quotes in order, ending with the last published.
    got = {s: [] for s in symbols}
    while any(not got[s] or got[s][-1]["data"]["global_mid"] != "999" for s in symbols):
        msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
        got[msg["data"]["symbol"]].append(msg)
    for s in symbols:
        seqs = [m["seq"] for m in got[s]]
        assert seqs == sorted(set(seqs)) and len(seqs) < 1000     # in order, once, and fewer: conflated
    await send(ws, {"action": "ping"})
    assert (await recv(ws)) == {"type": "pong"}                    # still served
    await ws.close()


async def test_a_reader_behind_on_trades_is_closed_as_before(make_server, key):
    server = await make_server(max_queue=64 * 1024, sndbuf=16 * 1024)
    ws = await stalled(server, key, {"type": "trades", "symbols": ["BTC/USDT"]})
    for n in range(1000):
        server.marketai.publish("trades", "BTC/USDT", {"symbol": "BTC/USDT", "n": n, "pad": PAD})
        if n % 50 == 0:
            await asyncio.sleep(0.005)
        if not server.connections:
            break
    assert (await closed_with(ws, timeout=20)) == (1008, "slow consumer")


async def test_a_state_held_aside_never_overtakes_a_newer_one(make_server, key):
    # Behind, caught up, then a newer quote: the one held is replaced, never sent after it.
    server = await make_server(max_queue=64 * 1024, sndbuf=16 * 1024)
    ws = await stalled(server, key, {"type": "quotes", "symbols": ["BTC/USDT"]})
    for n in range(300):
        server.marketai.publish("quotes", "BTC/USDT", quote(n, "BTC/USDT"))
        if n % 50 == 0:
            await asyncio.sleep(0.005)
    mids = []
    while not mids or mids[-1] != 299:
        mids.append(int((await recv(ws, timeout=10))["data"]["global_mid"]))
    server.marketai.publish("quotes", "BTC/USDT", quote(300, "BTC/USDT"))
    mids.append(int((await recv(ws))["data"]["global_mid"]))
    assert mids == sorted(set(mids)) and mids[-1] == 300
    assert await until(lambda: not server.hub.held)
    await ws.close()
