"""A PIP-32 style function: the input is text, the return value is the output."""


def handler(text: str) -> str:
    return text + "!"
