"""The echo endpoint (--echo-path, off by default): a testing aid.

Every text and binary message comes back as it came, through the same frame
reader, outbox and flush as everything else, so that a conformance suite
(the Autobahn|Testsuite's fuzzing client) exercises the server's own frame
handling. It has no budget and no keys: never enable it on a public port.
"""
from __future__ import annotations

from tickcast.connection import BINARY, TEXT, Connection


class EchoConnection(Connection):
    DIALECT = "echo"
    BUDGETED = False              # a suite sends as fast as it can

    def on_message(self, payload: bytes, is_text: bool) -> None:
        self.server.hub.send(self.slot, payload, TEXT if is_text else BINARY)
