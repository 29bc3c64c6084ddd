"""10 ms of blocking I/O wait per message (a sync client call), then the input unchanged."""

import time


def handler(data: bytes) -> bytes:
    time.sleep(0.01)
    return data
