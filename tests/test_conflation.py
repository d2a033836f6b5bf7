"""A reader that falls behind: the latest of each state instead of every
update, never closed for it; events still bound its queue (1008 as the
last resort). Real connections whose kernel buffers are kept small."""
import asyncio
import json
import socket
import subprocess

import pytest
import websockets
from conftest import closed_with, recv, send, subscribe, until, url
from picows import WSListener, WSMsgType, ws_connect
from processes import TICKCAST

PAD = "x" * 1000


def quote(n: int, symbol: str) -> dict:
    return {"symbol": symbol, "global_mid": str(n), "exchanges": [], "pad": PAD}


async def flushed(server) -> bool:
    """Wait until the hub has written what was published (its log is empty),
    so that the stalled reader's socket and transport fill as they would."""
    return await until(lambda: server.hub.log_len == 0, 5)


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
            assert await flushed(server)
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
            assert await flushed(server)
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
            assert await flushed(server)
    mids = []
    while not mids or mids[-1] != 299:
        mids.append(int((await recv(ws, timeout=10))["data"]["global_mid"]))
    server.marketai.publish("quotes", "BTC/USDT", quote(300, "BTC/USDT"))
    mids.append(int((await recv(ws))["data"]["global_mid"]))
    assert mids == sorted(set(mids)) and mids[-1] == 300
    assert await until(lambda: not server.hub.held)
    await ws.close()


class _Reader(WSListener):
    """A reader as fast as picows: each update's seq, read off its bytes."""

    def __init__(self):
        self.seqs: list[int] = []
        self.closed = None

    def on_ws_frame(self, transport, frame):
        if frame.msg_type == WSMsgType.TEXT:
            data = frame.get_payload_as_bytes()
            at = data.find(b'"seq":')
            if data.startswith(b'{"type":"update"') and at > 0:
                self.seqs.append(int(data[at + 6:data.index(b",", at)]))
        elif frame.msg_type == WSMsgType.CLOSE:
            self.closed = (frame.get_close_code(), frame.get_close_message())


@pytest.mark.bus
async def test_a_feed_faster_than_the_node_is_shed_not_its_readers(redis_url, serve_process):
    """A producer flooding the bus (the bench feed, as fast as Redis takes
    it) and readers that keep up with what the node can send: the node drops
    what it cannot deliver, once, where it reads, says so, and closes
    nobody; readers with sequence numbers see the jumps, in order."""
    node = serve_process("--bus", redis_url)
    feed = subprocess.Popen([*TICKCAST, "feed", "--bus", redis_url, "--feed", "bench", "--bench-rate", "0",
                             "--bench-symbols", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    readers = []
    try:
        for _ in range(3):
            transport, reader = await ws_connect(_Reader, node.url() + "&seq=1")
            transport.send(WSMsgType.TEXT, json.dumps(subscribe({"type": "trades"})).encode())
            readers.append((transport, reader))
        # Long enough to be past what one loop iteration may frame, many times over.
        assert await until(lambda: all(len(r.seqs) > 20000 for _, r in readers)
                           and any("the feed outruns this node" in line for line in node.log), 30)
    finally:
        feed.kill()
        feed.wait(10)
        for transport, _ in readers:
            transport.disconnect()
    for _, reader in readers:
        assert reader.closed is None, reader.closed
        seqs = reader.seqs
        assert len(seqs) > 1000 and seqs == sorted(set(seqs))
        assert seqs[-1] - seqs[0] + 1 > len(seqs)                   # jumps: what was shed
    assert any("the feed outruns this node" in line for line in node.log)
    assert not any("slow consumer" in line for line in node.log)
