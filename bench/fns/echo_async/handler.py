"""The benchmark's trivial function, as a coroutine."""


async def handler(data: bytes) -> bytes:
    return data
