"""`.dockerignore` matching follows Docker's rules."""

from __future__ import annotations

import pytest

from pulsarfunc.builder.ignore import DEFAULT_EXCLUDES, IgnoreRules


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        (["*.md"], "README.md", True),
        (["*.md"], "docs/README.md", False),
        (["**/*.md"], "docs/deep/README.md", True),
        (["docs"], "docs/a/b.txt", True),
        (["docs", "!docs/keep.txt"], "docs/keep.txt", False),
        (["docs", "!docs/keep.txt"], "docs/other.txt", True),
        (["/build/"], "build/x", True),
        (["./tmp"], "tmp", True),
        (["data?.csv"], "data1.csv", True),
        (["data?.csv"], "data10.csv", False),
        (["[a-c].py"], "b.py", True),
        (["[!a-c].py"], "b.py", False),
        (["# comment", ""], "# comment", False),
        (list(DEFAULT_EXCLUDES), "pkg/__pycache__/m.cpython-311.pyc", True),
        (list(DEFAULT_EXCLUDES), "pkg/.env", True),
        (list(DEFAULT_EXCLUDES), ".git/config", True),
        (list(DEFAULT_EXCLUDES), "pkg/module.py", False),
        ([*DEFAULT_EXCLUDES, "!.env"], ".env", False),
    ],
)
def test_patterns(patterns: list[str], path: str, excluded: bool) -> None:
    assert IgnoreRules(patterns).excluded(path) is excluded
