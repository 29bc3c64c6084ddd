"""exclaim: appends "!" to every message. The demo function: str in, str out."""


def handler(text: str) -> str:
    return text + "!"
