"""slugify: turns a title into a URL slug. A function with a pure-Python dependency."""

from slugify import slugify


def handler(title: str) -> str:
    return slugify(title)
