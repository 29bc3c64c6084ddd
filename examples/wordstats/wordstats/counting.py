"""Word counting; the stop words come from the package's data file."""

import re
from collections import Counter
from importlib.resources import files

STOPWORDS = frozenset(files(__package__).joinpath("stopwords.txt").read_text().split())


def count_words(text: str) -> dict[str, int]:
    words = (w for w in re.findall(r"[a-z']+", text.lower()) if w not in STOPWORDS)
    return dict(Counter(words).most_common())
