"""10 ms of asynchronous I/O wait per message, then the input unchanged."""

import asyncio


async def handler(data: bytes) -> bytes:
    await asyncio.sleep(0.01)
    return data
