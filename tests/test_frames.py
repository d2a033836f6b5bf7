"""Frame encoding, checked by a real client across every length form."""
import pytest
import websockets
from conftest import recv, send, subscribe, url

import tickcast.server
from tickcast._frames import encode_frame
from tickcast._version import __version__
from tickcast.extensions import EXTENSIONS


def test_extensions_are_compiled():
    import importlib
    from pathlib import Path
    for name in EXTENSIONS:
        mod = importlib.import_module(f"tickcast.{name}")
        assert mod.__file__.endswith((".so", ".pyd")), mod.__file__
    # and nothing compiled that the list does not name
    package = Path(tickcast.server.__file__).parent
    built = {p.name.split(".")[0] for p in package.glob("_*.*") if p.suffix in (".so", ".pyd")}
    assert built == set(EXTENSIONS)
    assert __version__


@pytest.mark.parametrize("n,header", [(0, b"\x81\x00"), (125, b"\x81\x7d"), (126, b"\x81\x7e\x00\x7e"),
                                      (65535, b"\x81\x7e\xff\xff"),
                                      (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00")])
def test_header_forms(n, header):
    frame = encode_frame(b"a" * n)
    assert frame[:len(header)] == header and len(frame) == len(header) + n


@pytest.mark.parametrize("size", [10, 125, 126, 127, 65535, 65536, 300_000])
async def test_client_reads_every_length_form(server, key, size):
    pad = "x" * max(0, size - 60)
    async with websockets.connect(url(server, key), max_size=None) as ws:
        await send(ws, subscribe({"type": "trades", "symbols": ["BTC/USDT"]}))
        await recv(ws)
        server.marketai.publish("trades", "BTC/USDT", {"pad": pad}, ts=1)
        msg = await recv(ws)
        assert msg["data"]["pad"] == pad
