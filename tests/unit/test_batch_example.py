"""examples/batch-upper through `pulsarfunc.testing`, and batch handlers in `run_function`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pulsarfunc import Batch, BatchItemFailures, Context, cli
from pulsarfunc.runtime.batching import BatchResultError
from pulsarfunc.runtime.config import FunctionConfig, ProcessingGuarantee
from pulsarfunc.runtime.discovery import load
from pulsarfunc.testing import run_function

PULSARFUNC = str(Path(sys.executable).with_name("pulsarfunc"))
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "batch-upper"


def test_the_batch_upper_example_fails_the_empty_input_alone() -> None:
    handler = load(str(EXAMPLE)).obj
    result = run_function(handler, ["a", "", "b"])
    assert result.outputs == ["A", "B"]
    assert [str(e) for e in result.errors] == ["empty input"]
    assert result.calls[1].error is not None
    assert result.calls[1].outputs == []
    assert result.acked == [0, 2]  # the failed input is not acknowledged
    assert [c.batch for c in result.calls] == [0, 0, 0]  # one call for the three


def test_run_function_groups_inputs_by_the_batch_size() -> None:
    sizes: list[int] = []

    def upper(items: list[str]) -> list[str]:
        sizes.append(len(items))
        return [i.upper() for i in items]

    config = FunctionConfig(batch_max_size=4)
    result = run_function(upper, [f"w{i}" for i in range(10)], config=config)
    assert sizes == [4, 4, 2]
    assert result.outputs == [f"W{i}" for i in range(10)]
    assert [c.batch for c in result.calls] == [0] * 4 + [1] * 4 + [2] * 2
    assert result.payloads[0] == b"W0"


def test_batch_item_failures_are_recorded_per_item() -> None:
    def second_fails(items: Batch[str]) -> list[str]:
        raise BatchItemFailures({1: KeyError("nope")}, outputs=[i * 2 for i in items])

    result = run_function(second_fails, ["a", "b", "c"])
    assert result.outputs == ["aa", "cc"]
    assert isinstance(result.calls[1].error, KeyError)


def test_a_whole_batch_failure_is_raised_or_recorded_on_every_item() -> None:
    def short(items: Batch[int]) -> list[int]:
        return items[:1]

    with pytest.raises(BatchResultError, match="returned 1 outputs for a batch of 2"):
        run_function(short, [1, 2])
    result = run_function(short, [1, 2], raise_errors=False)
    assert [type(c.error) for c in result.calls] == [BatchResultError, BatchResultError]
    assert result.acked == []


def test_an_async_batch_handler_with_a_context_from_an_async_test() -> None:
    async def tagged(ctx: Context, items: Batch[str]) -> list[str]:
        await asyncio.sleep(0)
        return [f"{ctx.get_function_name()}:{i}" for i in items]

    async def inside_a_loop() -> Any:
        return run_function(tagged, ["x", "y"], config=FunctionConfig(name="tagger"))

    result = asyncio.run(inside_a_loop())
    assert result.outputs == ["tagger:x", "tagger:y"]


def test_at_most_once_acks_every_input_of_a_batch_on_receipt() -> None:
    def fails_all(items: Batch[str]) -> list[Exception]:
        return [ValueError(i) for i in items]

    config = FunctionConfig(processing_guarantee=ProcessingGuarantee.ATMOST_ONCE)
    result = run_function(fails_all, ["a", "b"], config=config)
    assert result.acked == [0, 1]
    assert len(result.errors) == 2


def test_check_names_the_batch_form(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "sync batch handler (function) handler(items: Batch[str])" in out
    assert "up to 100 inputs a call, each input str, each output str" in out


@pytest.mark.parametrize(
    ("source", "flags", "fragment"),
    [
        ("def handler(text: str) -> str:\n    return text\n", [], "takes str, not a list"),
        (
            "from pulsarfunc import Batch\n\ndef handler(items: Batch[str]) -> list[str]:\n"
            "    return items\n",
            ["--processing-guarantees", "MANUAL"],
            "MANUAL",
        ),
    ],
)
def test_a_handler_that_cannot_batch_stops_the_start_with_exit_2(
    tmp_path: Path, source: str, flags: list[str], fragment: str
) -> None:
    (tmp_path / "handler.py").write_text(source)
    argv = [PULSARFUNC, "run", str(tmp_path), "--inputs", "in", "--batch-max-size", "5", *flags]
    argv += ["--service-url", "pulsar://127.0.0.1:1"]  # never reached: fails before connecting
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    err = done.stderr
    assert done.returncode == 2, err
    assert err.startswith("pulsarfunc: error: ")
    assert fragment in err
    assert "Traceback" not in err
