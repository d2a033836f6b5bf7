"""The websockets library: one connection handler each, websockets.broadcast() to fan out."""
import asyncio

import uvloop
import websockets
from common import parse_args, publisher, ready, topics_of

subscribers: dict[str, set] = {}


async def handler(ws):
    topics = []
    try:
        async for message in ws:
            for t in topics_of(message.encode() if isinstance(message, str) else message):
                subscribers.setdefault(t, set()).add(ws)
                topics.append(t)
            await ws.send('{"type":"subscribed"}')
    finally:
        for t in topics:
            subscribers[t].discard(ws)


def publish(topic, payload):
    conns = subscribers.get(topic)
    if not conns:
        return 0
    websockets.broadcast(conns, payload.decode())
    return len(conns)


async def main():
    args = parse_args("websockets")
    async with websockets.serve(handler, args.host, args.port, max_queue=None, compression=None,
                                ping_interval=None):
        ready(args.port, "websockets")
        await publisher(args, publish)
        await asyncio.Future()

uvloop.run(main())
