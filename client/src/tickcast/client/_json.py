"""JSON for the SDK: orjson where it is installed (``pip install
"tickcast-client[orjson]"``, and always beside the server), else the standard
library, so that the client installs with no compiled dependency."""
from __future__ import annotations

try:
    import orjson
except ImportError:                      # pragma: no cover - covered by the client-only test run
    import json

    loads = json.loads                   # takes bytes too

    def dumps(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
else:
    loads = orjson.loads
    dumps = orjson.dumps
