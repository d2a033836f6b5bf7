"""A naive picows server: a Python loop of transport.send per subscriber, picows defaults."""

import uvloop
from common import parse_args, publisher, ready, topics_of
from picows import WSListener, WSMsgType, ws_create_server

subscribers: dict[str, set] = {}


class Client(WSListener):
    def on_ws_connected(self, transport):
        self.transport, self.topics = transport, []

    def on_ws_frame(self, transport, frame):
        if frame.msg_type == WSMsgType.TEXT:
            for t in topics_of(frame.get_payload_as_bytes()):
                subscribers.setdefault(t, set()).add(transport)
                self.topics.append(t)
            transport.send(WSMsgType.TEXT, b'{"type":"subscribed"}')
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport):
        for t in self.topics:
            subscribers[t].discard(transport)


def publish(topic, payload):
    n = 0
    for tr in subscribers.get(topic, ()):
        tr.send(WSMsgType.TEXT, payload)
        n += 1
    return n


async def main():
    args = parse_args("picows-naive")
    server = await ws_create_server(lambda request: Client(), args.host, args.port)
    ready(args.port, "picows-naive")
    await publisher(args, publish)
    await server.serve_forever()

uvloop.run(main())
