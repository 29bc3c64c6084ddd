"""Build log events become step lines, cache hits, the image id and a failure's last lines."""

from __future__ import annotations

import io
from itertools import count
from typing import Any

from pulsarfunc.builder.progress import BuildLog, Progress


def _log(quiet: bool = False) -> tuple[BuildLog, io.StringIO]:
    out = io.StringIO()
    ticks = count()
    return BuildLog(Progress(out, quiet=quiet, clock=lambda: float(next(ticks))), "image"), out


EVENTS: list[dict[str, Any]] = [
    {"stream": "Step 1/3 : FROM base\n"},
    {"stream": " ---> 1234\n"},
    {"stream": "Step 2/3 : COPY deps/ /\n"},
    {"stream": " ---> Using cache\n ---> 5678\n"},
    {"stream": "Step 3/3 : RUN check\n"},
    {"stream": "pulsarfunc check passed: /app/handler.py:handler: sync function\n"},
    {"aux": {"ID": "sha256:abc"}},
    {"stream": "Successfully built abc\n"},
]


def test_steps_cache_hits_and_image_id() -> None:
    log, out = _log()
    for event in EVENTS:
        log.feed(event)
    log.close()
    assert [(s.index, s.total, s.instruction, s.cached) for s in log.steps] == [
        (1, 3, "FROM base", False),
        (2, 3, "COPY deps/ /", True),
        (3, 3, "RUN check", False),
    ]
    assert log.image_id == "sha256:abc"
    assert log.step_for("COPY deps/") is log.steps[1]
    text = out.getvalue()
    assert "image [2/3] COPY deps/ / (cached)" in text
    assert "pulsarfunc check passed" in text
    assert text.count("[3/3]") == 1


def test_error_is_kept_with_the_tail() -> None:
    log, _ = _log()
    log.feed({"stream": "Step 1/1 : RUN check\n"})
    log.feed({"stream": "ModuleNotFoundError: No module named 'magic'\n"})
    log.feed({"error": "The command returned a non-zero code: 1", "errorDetail": {}})
    log.close()
    assert log.error == "The command returned a non-zero code: 1"
    assert "ModuleNotFoundError: No module named 'magic'" in log.tail
    assert log.image_id == ""


def test_quiet_prints_nothing() -> None:
    log, out = _log(quiet=True)
    for event in EVENTS:
        log.feed(event)
    log.close()
    assert out.getvalue() == ""
    assert len(log.steps) == 3
