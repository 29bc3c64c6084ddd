"""msgsize: the MessagePack size of a JSON document. A function with a binary-wheel dependency.

Importing `msgpack._cmsgpack` makes sure the compiled extension (not msgpack's pure-Python
fallback) is what runs: the image must carry the manylinux wheel for its platform.
"""

from typing import Any

import msgpack
from msgpack import _cmsgpack


def handler(document: dict[str, Any]) -> dict[str, Any]:
    packed = msgpack.packb(document)
    return {"json_keys": len(document), "msgpack_bytes": len(packed), "native": _cmsgpack.__name__}
