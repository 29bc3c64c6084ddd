"""Which files of a function directory stay out of the image (`.dockerignore` semantics).

Patterns follow Docker's rules: paths are relative to the function directory and use `/`;
`*` and `?` do not cross `/`, `**` matches any number of directories; a pattern that matches a
directory excludes everything below it; `!pattern` re-includes; the last matching pattern wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_EXCLUDES", "IgnoreRules", "read_dockerignore"]

#: Never part of an image unless a `.dockerignore` re-includes them with `!`.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".git",
    ".dockerignore",
    ".venv",
    "**/.env",
    "**/__pycache__",
    "**/*.pyc",
    "**/.pytest_cache",
    "**/.mypy_cache",
    "**/.ruff_cache",
)


def _translate(pattern: str) -> re.Pattern[str]:
    """Compile one Docker/Go `filepath.Match` pattern (plus `**`) into an anchored regex."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1 : end]
                if body.startswith("^"):
                    body = "!" + body[1:]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end + 1
        elif c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _clean(pattern: str) -> str:
    """Normalise like Docker does: strip spaces and leading `/`, collapse `./` and `//`."""
    parts = [p for p in pattern.strip().split("/") if p not in ("", ".")]
    return "/".join(parts)


@dataclass(frozen=True)
class _Rule:
    pattern: str
    regex: re.Pattern[str]
    negated: bool


class IgnoreRules:
    """An ordered list of exclude/re-include patterns; `excluded(relpath)` applies them."""

    def __init__(self, patterns: Iterable[str]) -> None:
        rules: list[_Rule] = []
        for raw in patterns:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            cleaned = _clean(line[1:] if negated else line)
            if cleaned:
                rules.append(_Rule(cleaned, _translate(cleaned), negated))
        self._rules: Sequence[_Rule] = tuple(rules)

    def may_reinclude_below(self, directory: str) -> bool:
        """Whether a `!` pattern could re-include something below an excluded `directory`."""
        return any(
            rule.negated and (rule.pattern.startswith((f"{directory}/", "*", "?", "[")))
            for rule in self._rules
        )

    def excluded(self, relpath: str) -> bool:
        """True when `relpath` (POSIX, relative) or one of its parent directories is excluded."""
        parts = relpath.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for rule in self._rules:
            if any(rule.regex.match(p) for p in prefixes):
                result = not rule.negated
        return result


def read_dockerignore(directory: Path) -> list[str]:
    """The lines of `directory/.dockerignore`, or none when there is no such file."""
    path = directory / ".dockerignore"
    if not path.is_file():
        return []
    return path.read_text(encoding="utf-8").splitlines()
