"""The Market.ai push API: the dialect (dialect.py: topics, the path of an
update, the upgrade) and its connection (connection.py: control messages).

A dialect owns no fan-out: it turns control messages into bitset changes on
the hub's index and updates into payload bytes for ``Hub.publish``.
Rules: ../shared/spec/marketai-push-api.txt and marketai-decisions.md.
"""
from tickcast.dialects.marketai.connection import (MAX_ENTRIES, MAX_SYMBOLS, MAX_WAITING, MarketAiConnection,
                                                   MarketAiHost, MarketAiSeqConnection, error)
from tickcast.dialects.marketai.dialect import MarketAi, query_key, query_value

__all__ = ["MAX_ENTRIES", "MAX_SYMBOLS", "MAX_WAITING", "MarketAi", "MarketAiConnection", "MarketAiHost",
           "MarketAiSeqConnection", "error", "query_key", "query_value"]
