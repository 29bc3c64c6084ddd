"""Building function images from tests: `pulsarfunc build` in-process, its JSON summary back."""

from __future__ import annotations

import io
import json
import os
from typing import Any

from pulsarfunc.builder.commands import build_main


def build(argv: list[str], **env: str) -> tuple[int, dict[str, Any], str]:
    """Run `pulsarfunc build ... --json` in-process: (exit code, summary, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = build_main([*argv, "--json"], env={**os.environ, **env}, out=out, err=err)
    return code, json.loads(out.getvalue() or "{}"), err.getvalue()


def built(argv: list[str], **env: str) -> dict[str, Any]:
    """`build`, which must succeed: its summary (tag, image id, sizes, ...)."""
    code, summary, err = build(argv, **env)
    assert code == 0, err
    return summary
