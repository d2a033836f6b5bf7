"""socketify (uWebSockets): its native pub/sub, app.publish(topic) to fan out."""
from common import parse_args, publisher, ready, topics_of
from socketify import App, CompressOptions, OpCode

args = parse_args("socketify")
app = App()


def on_message(ws, message, opcode):
    for t in topics_of(message.encode() if isinstance(message, str) else message):
        ws.subscribe(t)
    ws.send('{"type":"subscribed"}', OpCode.TEXT)


def publish(topic, payload):
    n = app.num_subscribers(topic)
    if n:
        app.publish(topic, payload, OpCode.TEXT)
    return n


app.ws("/*", {"compression": CompressOptions.DISABLED, "max_payload_length": 64 * 1024,
              "idle_timeout": 600, "max_backpressure": 1 << 20, "message": on_message})
app.listen(args.port, lambda config: ready(args.port, "socketify"))
app.loop.ensure_future(publisher(args, publish))
app.run()
