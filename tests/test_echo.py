"""The echo path (--echo-path): a testing aid for the conformance suite."""
import pytest
import websockets
from conftest import recv, send, url


async def test_echo_returns_text_and_binary_through_the_same_path(make_server):
    server = await make_server(feed=None, echo_path="/echo")
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/echo", max_size=None) as ws:
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        await ws.send(b"\x00\xff" * 20000)                       # over one read, binary
        assert await ws.recv() == b"\x00\xff" * 20000
        for i in range(100):                                     # no budget on this path
            await ws.send(str(i))
        assert [await ws.recv() for _ in range(100)] == [str(i) for i in range(100)]


async def test_invalid_utf8_closes_1007_on_every_endpoint(make_server, key):
    server = await make_server(feed=None, echo_path="/echo")
    for path in ("/echo", "/", "/v4/public/ws"):
        target = url(server, key, path=path) if path == "/" else f"ws://127.0.0.1:{server.port}{path}"
        async with websockets.connect(target) as ws:
            await ws.send(b"\xc3\x28", text=True)                 # not UTF-8, sent as text
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 1007, path


async def test_echo_is_off_unless_asked(server, key):
    # /echo is then a Market.ai path like any other: no echo.
    async with websockets.connect(url(server, key, path="/echo")) as ws:
        await send(ws, {"action": "ping"})
        assert await recv(ws) == {"type": "pong"}
