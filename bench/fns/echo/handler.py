"""The benchmark's trivial function: the input bytes, unchanged."""


def handler(data: bytes) -> bytes:
    return data
