"""The hub's writes: through the connection's transport, which sends at
once while it has nothing queued and queues what the socket does not take,
in the same order either way; never to a descriptor the transport has closed."""
import asyncio
import socket

import pytest
import websockets
from conftest import recv, send, subscribe, until, url

from tickcast._fanout import Hub
from tickcast._frames import encode_frame
from tickcast._socket import Poller


class Sink(asyncio.BufferedProtocol):
    """The protocol of a transport the test writes to and never reads from."""
    def __init__(self):
        self.buf = bytearray(1 << 16)
        self.lost = False

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        pass

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.lost = True


@pytest.fixture
async def ours():
    """ours(sock): a SocketTransport of a poller of the test's own that owns ``sock``'s descriptor."""
    poller = Poller(asyncio.get_running_loop())

    def adopt(sock):
        sock.setblocking(False)
        return poller.adopt(sock.detach(), Sink())

    yield adopt
    poller.close()


async def test_replies_keep_their_place_among_updates(server, key):
    async with websockets.connect(url(server, key)) as ws:
        await send(ws, subscribe({"type": "trades", "symbols": ["BTC/USDT"]}))
        assert (await recv(ws))["type"] == "subscribed"
        for i in range(50):
            server.marketai.publish("trades", "BTC/USDT", {"n": i})
        await send(ws, {"action": "ping"})
        got = [await recv(ws) for _ in range(51)]
        assert [m["data"]["n"] for m in got[:50]] == list(range(50))
        assert got[50] == {"type": "pong"}


async def test_order_survives_a_full_socket(make_server, key):
    # A reader that keeps stalling (websockets reads no further than one
    # queued message) behind small kernel buffers: the server's sends come up
    # short and the rest waits in the transport while later updates arrive.
    server = await make_server(sndbuf=16 * 1024)
    ws = await websockets.connect(url(server, key), max_queue=1)
    ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024)
    await send(ws, subscribe({"type": "trades", "symbols": ["BTC/USDT"]}))
    assert (await recv(ws))["type"] == "subscribed"
    (conn,) = server.connections.values()
    transport = conn.transport
    total, queued_seen = 1000, False
    for n in range(1, total + 1):
        server.marketai.publish("trades", "BTC/USDT", {"n": n, "pad": "x" * 300})
        if n % 100 == 0:
            await asyncio.sleep(0.01)
            queued_seen |= transport.get_write_buffer_size() > 0
    assert queued_seen, "the socket never filled: the test did not reach the transport's queue"
    await send(ws, {"action": "ping"})
    got = [await recv(ws, timeout=10) for _ in range(total + 1)]
    assert [m["data"]["n"] for m in got[:total]] == list(range(1, total + 1))
    assert got[total] == {"type": "pong"}
    assert server.hub.is_open(conn.slot)
    await ws.close()


async def test_bytes_queue_behind_what_the_transport_holds(ours):
    # The socket has room again, but the transport still holds earlier bytes:
    # the hub's next frames must go behind them, not past them.
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setblocking(False)
    tr = ours(a)
    hub = Hub(asyncio.get_running_loop())
    topic = hub.index.topic("t")
    hub.index.add(topic, hub.attach(tr))
    earlier = b"e" * 200_000
    tr.write(earlier)
    assert tr.get_write_buffer_size() > 0
    read = reader(b)
    read()                                 # room in the socket; the transport's queue is untouched
    hub.publish(topic, b"later")
    hub.flush()
    # The poller drains the transport as the socket empties.
    assert await until(lambda: len(read()) >= len(earlier) + 7, 5)
    assert read() == earlier + encode_frame(b"later")
    tr.abort()
    b.close()


async def test_a_closed_transport_takes_no_frame_even_when_its_number_is_reused(ours):
    # The defect of 0.1.0: the hub wrote to the descriptor number it was
    # given, which the kernel hands to the next socket once closed.
    hub = Hub(asyncio.get_running_loop())
    topic = hub.index.topic("t")
    a, b = socket.socketpair()
    tr = ours(a)
    slot = hub.attach(tr)
    hub.index.add(topic, slot)
    hub.publish(topic, b"queued before the loss")
    tr.abort()                             # the descriptor is closed; the hub hears of it later
    c, d = socket.socketpair()             # the lowest free numbers: the closed one among them
    c.setblocking(False)
    d.setblocking(False)
    hub.publish(topic, b"after the loss")
    hub.flush()
    assert drain(c) == b"" and drain(d) == b""
    assert await until(lambda: tr.get_protocol().lost)
    for sock in (b, c, d):
        sock.close()


async def test_one_write_per_connection_per_tick(server, key):
    async with websockets.connect(url(server, key)) as a, websockets.connect(url(server, key)) as b:
        for ws in (a, b):
            await send(ws, subscribe({"type": "trades", "symbols": ["BTC/USDT"]}))
            assert (await recv(ws))["type"] == "subscribed"
        writes = server.hub.writes
        for i in range(20):
            server.marketai.publish("trades", "BTC/USDT", {"n": i})
        for ws in (a, b):
            assert [(await recv(ws))["data"]["n"] for _ in range(20)] == list(range(20))
        assert server.hub.writes - writes == 2


async def test_shared_and_own_frames_interleave(server, key):
    # One tick: a gets BTC only, c ETH only, b both. b's outbox stays a range
    # of the hub's tick log; a and c miss a frame and copy theirs out.
    async with websockets.connect(url(server, key)) as a, \
            websockets.connect(url(server, key)) as b, websockets.connect(url(server, key)) as c:
        for ws, symbols in ((a, ["BTC/USDT"]), (b, ["BTC/USDT", "ETH/USDT"]), (c, ["ETH/USDT"])):
            await send(ws, subscribe({"type": "trades", "symbols": symbols}))
            assert (await recv(ws))["type"] == "subscribed"
        for tick in range(2):
            for i in range(3):
                for sym in ("BTC/USDT", "ETH/USDT"):
                    server.marketai.publish("trades", sym, {"n": f"{sym}{tick}{i}"})
            want = {s: [f"{s}{tick}{i}" for i in range(3)] for s in ("BTC/USDT", "ETH/USDT")}
            assert [(await recv(a))["data"]["n"] for _ in range(3)] == want["BTC/USDT"]
            assert [(await recv(c))["data"]["n"] for _ in range(3)] == want["ETH/USDT"]
            got = [(await recv(b))["data"]["n"] for _ in range(6)]
            assert got == [x for pair in zip(want["BTC/USDT"], want["ETH/USDT"]) for x in pair]


class Holding:
    """A transport that keeps what it is given (it never drains by itself)."""
    def __init__(self, held=b""):
        self.held = bytearray(held)

    def write(self, data):
        self.held += data

    def get_write_buffer_size(self):
        return len(self.held)


def reader(sock):
    """A function that drains ``sock`` and returns all it has read so far."""
    got = bytearray()

    def read() -> bytearray:
        got.extend(drain(sock))
        return got
    return read


def drain(sock):
    out = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except BlockingIOError:
            return bytes(out)
        out += chunk


async def test_mirrored_outboxes_at_the_hub(ours):
    # Exact bytes per socket when frames shared by everyone, frames for some,
    # replies and a close meet in one flush; then a second flush reuses the log.
    hub = Hub(asyncio.get_running_loop())
    everyone, some = hub.index.topic("everyone"), hub.index.topic("some")
    pairs = [socket.socketpair() for _ in range(4)]
    slots = []
    transports = []
    for s, r in pairs:
        r.setblocking(False)
        transports.append(ours(s))
        slots.append(hub.attach(transports[-1]))
        hub.index.add(everyone, slots[-1])
    hub.index.add(some, slots[1])
    hub.index.add(some, slots[2])
    f = encode_frame
    hub.publish(everyone, b"e1")
    hub.publish(some, b"s1")
    hub.send(slots[2], b"reply")
    hub.publish(everyone, b"e2")
    hub.close(slots[3], True, b"\x03\xe8")
    hub.publish(everyone, b"e3")
    hub.flush()
    got = [drain(r) for _, r in pairs]
    assert got[0] == f(b"e1") + f(b"e2") + f(b"e3")
    assert got[1] == f(b"e1") + f(b"s1") + f(b"e2") + f(b"e3")
    assert got[2] == f(b"e1") + f(b"s1") + f(b"reply") + f(b"e2") + f(b"e3")
    assert got[3] == f(b"e1") + f(b"e2") + b"\x88\x02\x03\xe8"
    hub.publish(some, b"s2")
    hub.publish(everyone, b"e4")
    hub.flush()
    got = [drain(r) for _, r in pairs]
    assert got[:3] == [f(b"e4"), f(b"s2") + f(b"e4"), f(b"s2") + f(b"e4")] and got[3] == b""
    for tr, (_, r) in zip(transports, pairs):
        tr.abort()
        r.close()


class Draining(Holding):
    """A transport that takes everything at once."""
    def get_write_buffer_size(self):
        return 0


async def test_a_buffer_is_kept_only_while_its_connection_is_written_flush_after_flush():
    # A connection whose frames are not one run of the tick log gets a
    # buffer of its own; written in two flushes in a row it keeps it, and
    # gives it back at the first flush that does not write it (trim, at the
    # next ping round, finds nothing left).
    hub = Hub(asyncio.get_running_loop())
    both, theirs = hub.index.topic("both"), hub.index.topic("theirs")
    a, b = Draining(), Draining()
    sa, sb = hub.attach(a), hub.attach(b)
    for t, slot in ((both, sa), (both, sb), (theirs, sb)):
        hub.index.add(t, slot)

    def tick(*topics):
        for t in topics:
            hub.publish(t, b"x")
        hub.flush()

    tick(both, theirs, both)           # a's two frames are not one run of the log: a copy of its own
    tick(both, theirs, both)           # written again: kept
    assert hub.trim() == 4096          # (taken by trim, the ping round's sweep)
    tick(both, theirs, both)
    tick(both, theirs, both)           # kept again
    tick(theirs)                       # b alone: a gives its buffer back
    assert hub.trim() == 0
    assert a.held.count(b"\x81\x01x") == 4 * 2 and b.held.count(b"\x81\x01x") == 4 * 3 + 1


async def test_a_short_send_from_the_log_leaves_the_rest_to_the_transport(ours):
    hub = Hub(asyncio.get_running_loop())
    topic = hub.index.topic("t")
    s, r = socket.socketpair()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    r.setblocking(False)
    tr = ours(s)
    hub.index.add(topic, hub.attach(tr))
    frames = [encode_frame(bytes([65 + i]) * 20_000) for i in range(5)]
    for fr in frames:
        hub.publish(topic, fr[4:])        # 20,000-byte payloads: 4-byte headers
    hub.flush()
    assert tr.get_write_buffer_size(), "the socket took everything: no short send"
    want = b"".join(frames)
    read = reader(r)
    assert await until(lambda: len(read()) >= len(want), 5)
    assert read() == want
    tr.abort()
    r.close()


async def test_a_slow_consumer_overflowing_while_mirroring():
    closed = []
    hub = Hub(asyncio.get_running_loop(), max_queue=1000, on_overflow=closed.append)
    topic = hub.index.topic("t")
    fast, slow = Holding(), Holding(b"x" * 900)
    a, b = hub.attach(fast), hub.attach(slow)
    hub.index.add(topic, a)
    hub.index.add(topic, b)
    hub.publish(topic, b"p" * 50)
    hub.publish(topic, b"q" * 100)    # 900 + 52 + 102 > 1000: b overflows
    hub.flush()
    assert bytes(fast.held) == encode_frame(b"p" * 50) + encode_frame(b"q" * 100)
    assert bytes(slow.held) == b"x" * 900       # a slow consumer's outbox is dropped
    assert closed == [b] and not hub.is_open(b)


async def test_frames_nobody_takes_do_not_stay_in_the_tick_log(server, key):
    # While every subscriber of a topic is closing, a publish reaches no
    # outbox and so schedules no flush, which is what empties the tick log:
    # the frame must not be left there (it grew by megabytes while slow
    # consumers were being closed).
    async with websockets.connect(url(server, key)) as ws:
        await send(ws, subscribe({"type": "trades", "symbols": ["BTC/USDT"]}))
        assert (await recv(ws))["type"] == "subscribed"
        (conn,) = server.connections.values()
        conn.close(1008, "slow consumer", flush=False)
        for i in range(1000):
            assert server.marketai.publish("trades", "BTC/USDT", {"n": i, "pad": "x" * 200}) == 0
        assert server.hub.log_len == 0


async def test_plain_connections_run_on_transports_of_our_own(server, key):
    """A plain connection runs on a SocketTransport of the server's poller
    from accept on (about 1 KB lighter than the loop's); closing them gives
    every one back: none registered, none alive."""
    import gc

    from tickcast._socket import SocketTransport

    clients = [await websockets.connect(url(server, key)) for _ in range(20)]
    for ws in clients:
        await send(ws, {"action": "ping"})
        assert await recv(ws) == {"type": "pong"}
    assert {type(c.transport) for c in server.connections.values()} == {SocketTransport}
    assert server.poller.count == 20
    for ws in clients[:10]:
        await ws.close()
    for ws in clients[10:]:
        ws.transport.abort()                     # and ten go without a close frame
    for _ in range(200):
        if not server.connections and server.poller.count == 0:
            break
        await asyncio.sleep(0.01)
    assert not server.connections and server.poller.count == 0
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o) is SocketTransport]


async def test_accepted_sockets_have_nodelay_and_the_send_buffer(make_server, key):
    """Set once on the listener, both options reach every accepted socket."""
    import os
    import socket
    server = await make_server(sndbuf=16 * 1024)
    async with websockets.connect(url(server, key)) as ws:
        await send(ws, {"action": "ping"})
        assert await recv(ws) == {"type": "pong"}
        (conn,) = server.connections.values()
        sock = socket.socket(fileno=os.dup(conn.transport.fileno()))
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 16 * 1024   # Linux doubles it
        finally:
            sock.close()
