"""Fuzzing both dialects' control messages over a real connection: every
message, however malformed, gets the dialect's documented answer and the
connection stays open.

The server runs in a thread of its own, so that hypothesis can drive a
plain blocking client; its budget is large, so that only the content of
each message decides its answer.
"""
import asyncio
import itertools
import json
import threading

import pytest
import uvloop
import websockets.sync.client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tickcast.keys import KeyStore
from tickcast.config import Settings
from tickcast.wire.marketai import CHANNELS
from tickcast.wire.monday import INTERVALS, TYPES
from tickcast.server import Server

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
deep = st.integers(1, 3000).map(lambda n: "[" * n + "]" * n)


def edited(texts):
    """Texts with a few characters replaced, inserted or dropped."""
    def apply(text, edits):
        for at, ch in edits:
            at %= len(text) + 1
            text = text[:at] + ch + text[at + 1:] if ch else text[:at] + text[at + 1:]
        return text
    return st.builds(apply, texts, st.lists(st.tuples(st.integers(0, 400), st.text(max_size=1)), max_size=4))


symbols = (st.sampled_from(["BTC/USDT", "eth/usdt", " SOL/USDC ", "BTC", "*", "", "A/B/C"])
           | st.from_regex(r"[A-Za-z0-9/ *]{0,12}", fullmatch=True) | values)
entries = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(CHANNELS) | values,
    "symbols": st.lists(symbols, max_size=6) | values,
})
marketai = st.fixed_dictionaries({}, optional={
    "action": st.sampled_from(["subscribe", "unsubscribe", "ping", "auth", "SUBSCRIBE"]) | values,
    "channels": st.lists(entries | values, max_size=4) | values,
    "key": values,
}).map(json.dumps)

addresses = st.sampled_from(["0x" + "ab" * 20, "0x" + "AB" * 20, "0x12"]) | values
params = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(list(TYPES)) | values,
    "chainId": st.sampled_from([143, 8453, "143", 2 ** 64]) | values,
    "instrument": addresses,
    "expiry": st.sampled_from([4294967295, 4294967296, "4294967295"]) | values,
    "interval": st.sampled_from(INTERVALS) | values,
    "userAddress": addresses,
})
v4 = st.fixed_dictionaries({}, optional={
    "id": st.integers(-2 ** 70, 2 ** 70) | values,
    "method": st.sampled_from(["SUBSCRIBE", "UNSUBSCRIBE", "subscribe"]) | values,
    "params": params | values,
}).map(json.dumps)


def messages(valid):
    """What a client may send: the dialect's messages, edits of them, any
    JSON, deep nesting, any text, any bytes (a binary frame)."""
    return (valid | edited(valid) | values.map(json.dumps) | deep | st.text(max_size=60)
            | st.binary(max_size=60))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A server in a thread of its own, and a key of tier max."""
    store = KeyStore(tmp_path_factory.mktemp("fuzz") / "keys.sqlite3")
    key = store.add("max")
    loop = uvloop.new_event_loop()
    server = Server(Settings(port=0, keys=store.path, rate=1e6, burst=1_000_000), store, None)
    started = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    yield server, key
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()
    store.close()


MARKETAI_CODES = {"INVALID_MESSAGE", "INVALID_CHANNEL", "SYMBOL_LIMIT_EXCEEDED"}
MARKETAI_TYPES = {"subscribed", "unsubscribed", "pong"}


@pytest.fixture(scope="module")
def marketai_client(live):
    server, key = live
    with websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}/?key={key}", max_size=None) as ws:
        yield ws


@pytest.fixture(scope="module")
def v4_client(live):
    server, _ = live
    with websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}/v4/public/ws", max_size=None) as ws:
        yield ws


sentinels = itertools.count()


@FUZZ
@given(message=messages(marketai))
def test_every_marketai_message_is_answered(live, marketai_client, message):
    ws = marketai_client
    ws.send(message)
    # A reply nothing fuzzed can ask for marks the end of this message's replies.
    mark = f"Z{next(sentinels)}/SENTINEL"
    ws.send(json.dumps({"action": "unsubscribe", "channels": [{"type": "narratives", "symbols": [mark]}]}))
    replies = []
    while True:
        reply = json.loads(ws.recv(timeout=5))
        if reply.get("symbols") == [mark]:
            break
        replies.append(reply)
    assert replies, f"no answer to {message!r}"
    for reply in replies:
        assert reply["type"] in MARKETAI_TYPES or (reply["type"] == "error"
                                                   and reply["code"] in MARKETAI_CODES), (message, reply)
    assert live[0].stats["internal_errors"] == 0


@FUZZ
@given(message=messages(v4))
def test_every_v4_request_is_answered(live, v4_client, message):
    ws = v4_client
    ws.send(message)
    mark = -next(sentinels) - 0.25          # an id nothing fuzzed can carry
    ws.send(json.dumps({"id": mark, "method": "UNSUBSCRIBE", "params": {"type": "common", "chainId": 1}}))
    replies = []
    while True:
        text = ws.recv(timeout=5)
        reply = text if text == "pong" else json.loads(text)
        if reply != "pong" and reply.get("id") == mark:
            assert reply["result"] == "success"
            break
        replies.append(reply)
    assert len(replies) == 1, (message, replies)
    reply = replies[0]
    assert reply == "pong" or set(reply) in ({"id", "result"}, {"id", "result", "code", "msg"}), reply
    if reply != "pong" and reply["result"] == "error":
        assert reply["code"] in (400, 404, 429), (message, reply)
    assert live[0].stats["internal_errors"] == 0
