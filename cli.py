"""The `pulsarfunc` command."""


def main() -> int:
    return 0
