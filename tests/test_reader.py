"""Client frames after the handshake (ext/tickcast/_reader.pyx), sent as raw
bytes over a real socket: split anywhere, several in one read, or in the same
read as the upgrade request."""
import asyncio
import json
import struct

import pytest
from conftest import Raw, masked, run, until


PING = json.dumps({"action": "ping"}).encode()


async def test_a_frame_sent_one_byte_at_a_time(server, key):
    raw = Raw(server.port)
    await run(raw.handshake, key)
    frame = masked(PING)
    for i in range(len(frame)):
        raw.s.sendall(frame[i:i + 1])
        await asyncio.sleep(0.002)
    assert await run(raw.frame) == (0x1, b'{"type":"pong"}')
    raw.s.close()


@pytest.mark.parametrize("size", [125, 126, 65535, 65536])
async def test_a_large_frame_split_across_reads(make_server, key, size):
    server = await make_server(max_frame_size=70_000)
    raw = Raw(server.port)
    await run(raw.handshake, key)
    msg = b'{"action": "ping", "pad": "' + b"x" * (size - 29) + b'"}'
    assert len(msg) == size
    frame = masked(msg)
    for part in (frame[:1], frame[1:3], frame[3:5000], frame[5000:]):
        raw.s.sendall(part)
        await asyncio.sleep(0.01)
    assert await run(raw.frame) == (0x1, b'{"type":"pong"}')
    raw.s.close()


async def test_many_frames_in_one_read(server, key):
    raw = Raw(server.port)
    await run(raw.handshake, key)
    raw.s.sendall(masked(PING) * 3 + masked(b"abc", opcode=0x9) + masked(PING)[:5])
    got = [await run(raw.frame) for _ in range(4)]
    assert got == [(0x1, b'{"type":"pong"}')] * 3 + [(0xA, b"abc")]   # ping answered with its payload
    raw.s.sendall(masked(PING)[5:])     # the rest of an unrelated frame: garbage now
    raw.s.close()


async def test_frames_in_the_same_read_as_the_upgrade_request(server, key):
    raw = Raw(server.port)
    await run(raw.handshake, key, masked(PING) + masked(b"x", opcode=0x9))
    assert await run(raw.frame) == (0x1, b'{"type":"pong"}')
    assert (await run(raw.frame))[0] == 0xA
    raw.s.sendall(masked(PING))          # and the reader takes over after them
    assert await run(raw.frame) == (0x1, b'{"type":"pong"}')
    raw.s.close()


async def test_fragments_interleaved_with_a_ping(server, key):
    raw = Raw(server.port)
    await run(raw.handshake, key)
    raw.s.sendall(masked(PING[:5], fin=False) + masked(b"p", opcode=0x9)
                  + masked(PING[5:], opcode=0x0))
    assert await run(raw.frame) == (0xA, b"p")
    assert await run(raw.frame) == (0x1, b'{"type":"pong"}')
    raw.s.close()


async def test_close_is_echoed_and_the_socket_closed(server, key):
    raw = Raw(server.port)
    await run(raw.handshake, key)
    raw.s.sendall(masked(struct.pack(">H", 4000) + b"bye", opcode=0x8))
    assert await run(raw.frame) == (0x8, struct.pack(">H", 4000))
    assert await run(raw.s.recv, 10) == b""
    raw.s.close()
    assert await until(lambda: not server.connections)


