"""Long work shows progress: wheel sizes from pip's lines, seconds per stage, bars on a terminal.

Where the bars may show (a terminal outside CI, without --quiet/--json), and that `rich` stays
out of the runtime: it is the builder extra's, never a runtime dependency.
"""

from __future__ import annotations

import ast
import io
import sys
from itertools import count
from pathlib import Path

import pytest
from test_builder_progress import EVENTS
from test_builder_wheels import FAKE_PIP, TARGET

from pulsarfunc.builder.base import runtime_files
from pulsarfunc.builder.progress import Bars, BuildLog, Lines, Progress, human_size, is_live
from pulsarfunc.builder.wheels import WheelStager, parse_fetched, runtime_requirements, stage_wheels

REPO = Path(__file__).resolve().parents[2]

# Lines in the forms pip 23.2 printed here for `pip install --target ... requests==2.32.3`, with
# a cached wheel, MB sizes and a URL added in the same forms.
PIP_OUTPUT = """\
Looking in links: /opt/wheels
Collecting requests==2.32.3
  Downloading requests-2.32.3-py3-none-any.whl (64 kB)
Collecting charset-normalizer<4,>=2 (from requests==2.32.3)
  Downloading charset_normalizer-3.5.3-cp311-cp311-manylinux_2_28_x86_64.whl (263 kB)
  Downloading idna-3.20-py3-none-any.whl.metadata (8.1 kB)
  Using cached urllib3-2.8.0-py3-none-any.whl (135 kB)
  Downloading grpcio-1.73.1-cp311-cp311-manylinux_2_17_x86_64.whl (6.0 MB)
  Downloading https://f.example/p/numpy-2.3.1-cp311-cp311-manylinux_2_28_x86_64.whl (16.6 MB)
Installing collected packages: urllib3, idna, charset-normalizer, certifi, requests
"""


def test_pips_lines_give_each_wheel_and_its_size() -> None:
    found = [w for line in PIP_OUTPUT.splitlines() if (w := parse_fetched(line))]
    assert found == [
        ("requests-2.32.3-py3-none-any.whl", 64_000, False),
        ("charset_normalizer-3.5.3-cp311-cp311-manylinux_2_28_x86_64.whl", 263_000, False),
        ("urllib3-2.8.0-py3-none-any.whl", 135_000, True),
        ("grpcio-1.73.1-cp311-cp311-manylinux_2_17_x86_64.whl", 6_000_000, False),
        ("numpy-2.3.1-cp311-cp311-manylinux_2_28_x86_64.whl", 16_600_000, False),
    ]  # the .metadata download is not a wheel


def test_human_sizes() -> None:
    assert [human_size(n) for n in (980, 64_000, 12_345_678, 2_500_000_000)] == [
        "980 B",
        "64.0 kB",
        "12.3 MB",
        "2.5 GB",
    ]


@pytest.fixture
def chatty_stager(tmp_path: Path) -> WheelStager:
    """The fake pip of test_builder_wheels, printing pip's lines as it goes."""
    script = tmp_path / "fakepip.py"
    script.write_text(FAKE_PIP + f"sys.stdout.write({PIP_OUTPUT!r})\n")
    return WheelStager(tmp_path / "cache", pip=[sys.executable, str(script)])


def test_staging_reports_each_wheel_the_sizes_and_the_seconds(chatty_stager: WheelStager) -> None:
    out = io.StringIO()
    ticks = count()
    progress = Progress(out, clock=lambda: 1.5 * next(ticks))
    staged = stage_wheels(chatty_stager, progress, "dependencies", ["mod==1"], TARGET)
    assert (staged.cached, staged.wheels, staged.fetched) == (False, 5, 23_062_000)
    lines = out.getvalue().splitlines()
    assert lines[:2] == [
        "    dependencies requests-2.32.3-py3-none-any.whl 64.0 kB (downloaded)",
        "    dependencies charset_normalizer-3.5.3-cp311-cp311-manylinux_2_28_x86_64.whl "
        "263.0 kB (downloaded)",
    ]
    assert "    dependencies urllib3-2.8.0-py3-none-any.whl 135.0 kB (cached)" in lines
    installed = human_size(staged.size)
    assert lines[-1] == (
        f"==> dependencies staged: 5 wheels, 23.1 MB fetched, {installed} installed "
        f"({staged.key[:12]}): mod==1 (1.5s)"
    )
    again = io.StringIO()
    stage_wheels(chatty_stager, Progress(again), "dependencies", ["mod==1"], TARGET)
    assert again.getvalue().startswith(f"==> dependencies cached, {installed} installed")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("out", "env", "quiet", "as_json", "live"),
    [
        (Terminal(), {}, False, False, True),
        (Terminal(), {"CI": "true"}, False, False, False),
        (Terminal(), {"CI": "false"}, False, False, True),
        (Terminal(), {"TERM": "dumb"}, False, False, False),
        (Terminal(), {}, True, False, False),
        (Terminal(), {}, False, True, False),
        (io.StringIO(), {}, False, False, False),  # a pipe or a file
    ],
)
def test_bars_only_on_a_terminal_outside_ci_without_quiet_or_json(
    out: io.StringIO, env: dict[str, str], quiet: bool, as_json: bool, live: bool
) -> None:
    assert is_live(out, env, quiet=quiet, as_json=as_json) is live
    display = Progress.for_output(out, env, quiet=quiet, as_json=as_json).display
    assert isinstance(display, Bars if live else Lines)


def test_a_build_on_a_terminal_draws_bars_and_keeps_the_step_lines() -> None:
    out = Terminal()
    progress = Progress.for_output(out, {})
    assert isinstance(progress.display, Bars)
    progress.wheels_started("dependencies")
    progress.wheel("dependencies", "six-1.17.0-py2.py3-none-any.whl", 11_000, False)
    progress.wheels_done("dependencies")
    log = BuildLog(progress, "image")
    for event in EVENTS:
        log.feed(event)
    log.close()
    progress.stage("image x:1 built, 52.0 MB", 3.25)
    text = out.getvalue()
    assert "\x1b[" in text  # drawn with terminal control sequences
    for line in (
        "dependencies six-1.17.0-py2.py3-none-any.whl 11.0 kB (downloaded)",
        "image [2/3] COPY deps/ / (cached)",
        "image [3/3] RUN check",
        "==> image x:1 built, 52.0 MB (3.2s)",
    ):
        assert line in text
    bars = progress.display
    assert isinstance(bars, Bars)
    assert all(not bar.live.is_started for bar in bars._bars.values())  # stopped when done


def test_rich_is_a_builder_dependency_never_a_runtime_one() -> None:
    runtime = {pin.split("==")[0].lower() for pin in runtime_requirements()}
    assert runtime == {"pulsar-client", "protobuf", "pyyaml", "prometheus-client"}
    import importlib.metadata

    requires = importlib.metadata.requires("pulsarfunc") or []
    assert any(r.startswith("rich") and 'extra == "builder"' in r for r in requires)
    # and nothing that goes into an image imports it
    for name, path in runtime_files():
        if path.suffix == ".py":
            tree = ast.parse(path.read_text(encoding="utf-8"))
            imported = {
                alias.name.split(".")[0]
                for node in ast.walk(tree)
                if isinstance(node, ast.Import)
                for alias in node.names
            } | {
                (node.module or "").split(".")[0]
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom)
            }
            assert "rich" not in imported, name
    assert any(name.startswith("runtime/") for name, _ in runtime_files())
