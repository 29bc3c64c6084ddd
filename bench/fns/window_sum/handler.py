"""The window benchmark's function: a tumbling count window (the run sets its length), summed."""


def handler(window: list[bytes]) -> int:
    return sum(len(payload) for payload in window)
