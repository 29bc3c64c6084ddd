"""wordstats: counts the words of a text, minus stop words. A package with relative imports
and a data file (stopwords.txt, read with importlib.resources)."""

from .counting import count_words

__all__ = ["count_words", "handler"]


def handler(text: str) -> dict[str, int]:
    return count_words(text)
