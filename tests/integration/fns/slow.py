"""Takes a few milliseconds per message, so a stop always finds work in flight."""

import time


def handler(text: str) -> str:
    time.sleep(0.003)
    return text.upper()
