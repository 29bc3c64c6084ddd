"""`pulsarfunc run --watch`: which paths trigger what, the reload, and errors keeping the old
handler (the swap itself on the fake broker: test_instance_swap.py)."""

from __future__ import annotations

import importlib.metadata
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

from pulsarfunc import cli
from pulsarfunc.builder.requirements import read_project
from pulsarfunc.runtime.config import FunctionConfig
from pulsarfunc.runtime.discovery import load
from pulsarfunc.runtime.errors import HandlerError
from pulsarfunc.runtime.handler import Handler
from pulsarfunc.runtime.watch import (
    Action,
    Decision,
    Outcome,
    Reloader,
    action_for,
    classify,
    function_dir,
    owned_modules,
    watching,
)

ROOT = Path(__file__).resolve().parents[2]
PULSARFUNC = str(Path(sys.executable).with_name("pulsarfunc"))


@pytest.fixture(autouse=True)
def isolated_imports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Restores sys.path and forgets the modules a test imported from its tmp directory."""
    path, before = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    base = str(tmp_path_factory.getbasetemp())
    for name in set(sys.modules) - before:
        if (getattr(sys.modules[name], "__file__", None) or "").startswith(base):
            del sys.modules[name]


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    return directory


class Swaps:
    """Stands in for the running instance: records the handlers it is given."""

    def __init__(self, *, running: bool = True) -> None:
        self.handlers: list[Handler] = []
        self.running = running
        self.started = True
        self.config = FunctionConfig()

    def swap(self, handler: Handler) -> bool:
        if self.running:
            self.handlers.append(handler)
        return self.running

    def output(self, value: Any) -> Any:
        return self.handlers[-1].call(None, value)


# -- which paths trigger what --------------------------------------------------------------------
D = Path("/fn")


@pytest.mark.parametrize(
    ("rel", "action"),
    [
        ("handler.py", Action.RELOAD),
        ("helpers.py", Action.RELOAD),
        ("lib/util.py", Action.RELOAD),  # a package of the function's own
        ("words.json", Action.RELOAD),  # a data file beside the code
        ("data/table.csv", Action.RELOAD),
        ("requirements.txt", Action.RESTART),
        ("requirements-dev.txt", Action.RESTART),
        ("pyproject.toml", Action.RESTART),
        ("lib/requirements.txt", Action.RELOAD),  # not the function's dependencies: data
        ("test_handler.py", Action.IGNORE),  # tests are never loaded by the handler
        ("handler_test.py", Action.IGNORE),
        ("conftest.py", Action.IGNORE),
        ("__pycache__/handler.cpython-311.pyc", Action.IGNORE),
        ("handler.pyc", Action.IGNORE),
        (".handler.py.swp", Action.IGNORE),  # editors' temporary files
        ("handler.py~", Action.IGNORE),
        (".#handler.py", Action.IGNORE),
        ("#handler.py#", Action.IGNORE),
        (".env", Action.IGNORE),
        (".git/index", Action.IGNORE),
        (".venv/lib/python3.11/site-packages/x.py", Action.IGNORE),
        ("venv/lib/python3.11/site-packages/x.py", Action.IGNORE),
        ("node_modules/x/index.js", Action.IGNORE),
        ("lib/site-packages/x.py", Action.IGNORE),
        ("fn.egg-info/PKG-INFO", Action.IGNORE),
        ("build/lib/handler.py", Action.IGNORE),
        (".mypy_cache/3.11/x.json", Action.IGNORE),
    ],
)
def test_each_path_triggers_what_it_should(rel: str, action: Action) -> None:
    assert action_for(D / rel, D) is action


def test_a_path_outside_the_directory_is_ignored() -> None:
    assert action_for(Path("/elsewhere/handler.py"), D) is Action.IGNORE
    assert action_for(D, D) is Action.IGNORE


def test_one_batch_is_sorted_by_what_it_asks_for() -> None:
    paths = [D / "requirements.txt", D / "handler.py", D / "test_x.py", D / "b.json"]
    assert classify([*map(str, paths), str(D / "handler.py")], D) == Decision(
        reload=(D / "b.json", D / "handler.py"), restart=(D / "requirements.txt",)
    )
    assert classify([D / "x.pyc"], D) == Decision()


# -- the function's directory and modules ------------------------------------------------------
def test_the_function_directory_is_the_module_directory_or_the_top_package(
    tmp_path: Path,
) -> None:
    write(tmp_path / "single", {"fn.py": "def handler(x): return x\n"})
    assert function_dir(load(str(tmp_path / "single" / "fn.py"))) == tmp_path / "single"
    write(tmp_path / "dir", {"handler.py": "def handler(x): return x\n"})
    assert function_dir(load(str(tmp_path / "dir"))) == tmp_path / "dir"
    write(
        tmp_path / "proj",
        {
            "pkga/__init__.py": "",
            "pkga/sub/__init__.py": "",
            "pkga/sub/handler.py": "def handler(x): return x\n",
        },
    )
    deep = load(str(tmp_path / "proj" / "pkga" / "sub" / "handler.py"))
    assert deep.module == "pkga.sub.handler"
    assert function_dir(deep) == tmp_path / "proj" / "pkga"
    write(tmp_path / "proj2", {"pkgb/__init__.py": "def handler(x): return x\n"})
    assert function_dir(load(str(tmp_path / "proj2" / "pkgb"))) == tmp_path / "proj2" / "pkgb"


def test_owned_modules_are_the_functions_own_never_installed_or_pulsarfunc(
    tmp_path: Path,
) -> None:
    write(
        tmp_path,
        {
            "handler.py": "import helpers\ndef handler(x): return x\n",
            "helpers.py": "",
            "site-packages/vendored_dep.py": "",
        },
    )
    sys.path.insert(0, str(tmp_path / "site-packages"))
    importlib.import_module("vendored_dep")

    load(str(tmp_path))
    owned = owned_modules(tmp_path)
    assert set(owned) == {"handler", "helpers"}
    assert not any(name.startswith("pulsarfunc") for name in owned_modules(ROOT))


# -- reloading -----------------------------------------------------------------------------------
def test_a_save_reloads_the_handler_and_the_modules_beside_it(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "handler.py": "import helpers\ndef handler(t: str) -> str:\n    return helpers.f(t)\n",
            "helpers.py": "def f(t):\n    return t + '!'\n",
        },
    )
    swaps = Swaps()
    reloader = Reloader(str(tmp_path), tmp_path, swaps.swap, cwd=tmp_path)
    before = sys.modules.get("helpers")
    load(str(tmp_path))
    write(tmp_path, {"helpers.py": "def f(t):\n    return t + '?'\n"})
    assert reloader.handle([tmp_path / "helpers.py"]) is Outcome.RELOADED
    assert swaps.output("hi") == "hi?"  # the helper only changed: it was imported afresh
    assert sys.modules["helpers"] is not before
    write(tmp_path, {"handler.py": "async def handler(t: str) -> str:\n    return t.upper()\n"})
    assert reloader.handle([tmp_path / "handler.py"]) is Outcome.RELOADED
    assert swaps.handlers[-1].is_async  # the form may change: the instance rebuilds its engine


def test_a_data_file_change_reloads_a_module_that_reads_it_at_import(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "handler.py": (
                "from pathlib import Path\n"
                "WORD = (Path(__file__).parent / 'word.txt').read_text().strip()\n"
                "def handler(t: str) -> str:\n    return t + WORD\n"
            ),
            "word.txt": "one",
        },
    )
    swaps = Swaps()
    load(str(tmp_path))
    write(tmp_path, {"word.txt": "two"})
    reloader = Reloader(str(tmp_path), tmp_path, swaps.swap, cwd=tmp_path)
    assert reloader.handle([tmp_path / "word.txt"]) is Outcome.RELOADED
    assert swaps.output("x") == "xtwo"


def check_error(ref: str, cwd: Path) -> str:
    """What `pulsarfunc check REF` prints on stderr (it must fail), in a process of its own."""
    done = subprocess.run(
        [PULSARFUNC, "check", ref], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    return done.stderr


@pytest.mark.parametrize(
    ("broken", "shown"),
    [
        ("def handler(t: str) -> str\n    return t\n", "syntax error"),
        ("def handler(a, b, c):\n    return a\n", "handler(a, b, c)"),
        ("import not_installed_anywhere_xyz\ndef handler(t): return t\n", "requirements.txt"),
        ("raise RuntimeError('boom at import')\n", "boom at import"),
        ("def other(t):\n    return t\n", "'other'"),
    ],
)
def test_a_broken_save_keeps_the_old_handler_and_prints_what_check_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], broken: str, shown: str
) -> None:
    write(
        tmp_path,
        {
            "handler.py": "import helpers\ndef handler(t: str) -> str:\n    return helpers.f(t)\n",
            "helpers.py": "def f(t):\n    return t + '!'\n",
        },
    )
    swaps = Swaps()
    reloader = Reloader(str(tmp_path), tmp_path, swaps.swap, cwd=tmp_path)
    running = load(str(tmp_path)).obj
    old_modules = {name: sys.modules[name] for name in ("handler", "helpers")}
    write(tmp_path, {"handler.py": broken})
    capsys.readouterr()
    assert reloader.handle([tmp_path / "handler.py"]) is Outcome.KEPT
    printed = capsys.readouterr().err
    assert swaps.handlers == []
    assert shown in printed
    assert printed == check_error(str(tmp_path), tmp_path)
    assert "Traceback" not in printed
    # the running handler's modules are back: its own imports still find what it loaded
    assert {name: sys.modules[name] for name in old_modules} == old_modules
    assert callable(running)
    assert running("a") == "a!"
    # fixing the file resumes normal reloads
    write(tmp_path, {"handler.py": "def handler(t: str) -> str:\n    return t + '#'\n"})
    assert reloader.handle([tmp_path / "handler.py"]) is Outcome.RELOADED
    assert swaps.output("a") == "a#"


def test_a_requirements_change_asks_for_a_restart_and_reloads_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, {"handler.py": "def handler(t):\n    return t\n", "requirements.txt": ""})
    swaps = Swaps()
    reloader = Reloader(str(tmp_path), tmp_path, swaps.swap, cwd=tmp_path)
    load(str(tmp_path))
    handler_module = sys.modules["handler"]
    caplog.set_level(logging.INFO, logger="pulsarfunc.watch")
    write(tmp_path, {"requirements.txt": "requests==2.32.3\n"})
    assert reloader.handle([tmp_path / "requirements.txt"]) is Outcome.RESTART_NEEDED
    assert swaps.handlers == []
    assert sys.modules["handler"] is handler_module  # not even re-imported
    assert "requirements.txt changed: restart `pulsarfunc run`" in caplog.text
    # with code in the same batch, the code is reloaded and the restart still asked for
    caplog.clear()
    both = [tmp_path / "requirements.txt", tmp_path / "handler.py"]
    assert reloader.handle(both) is Outcome.RELOADED
    assert "restart" in caplog.text


def test_ignored_changes_do_nothing_and_a_stopped_instance_swaps_nothing(
    tmp_path: Path,
) -> None:
    write(tmp_path, {"handler.py": "def handler(t):\n    return t\n"})
    load(str(tmp_path))
    swaps = Swaps(running=False)
    reloader = Reloader(str(tmp_path), tmp_path, swaps.swap, cwd=tmp_path)
    assert reloader.handle([tmp_path / "__pycache__" / "handler.pyc"]) is Outcome.IGNORED
    assert reloader.handle([tmp_path / "test_handler.py"]) is Outcome.IGNORED
    assert reloader.handle([tmp_path / "handler.py"]) is Outcome.NOT_RUNNING


def test_a_swap_the_instance_refuses_keeps_the_old_handler_and_its_modules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, {"handler.py": "def handler(t: str) -> str:\n    return t\n"})
    load(str(tmp_path))
    module = sys.modules["handler"]

    def refuse(handler: Handler) -> bool:
        raise HandlerError("the schema changed", "restart `pulsarfunc run` to use it")

    reloader = Reloader(str(tmp_path), tmp_path, refuse, cwd=tmp_path)
    assert reloader.handle([tmp_path / "handler.py"]) is Outcome.KEPT
    err = capsys.readouterr().err
    assert err == (
        "pulsarfunc: error: the schema changed\n  hint: restart `pulsarfunc run` to use it\n"
    )
    assert sys.modules["handler"] is module


def test_a_window_function_asks_for_a_restart_instead_of_a_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, {"handler.py": "def handler(w: list[int]) -> int:\n    return sum(w)\n"})
    swaps = Swaps()
    reloader = Reloader(str(tmp_path), tmp_path, swaps.swap, cwd=tmp_path, window=True)
    caplog.set_level(logging.INFO, logger="pulsarfunc.watch")
    assert reloader.handle([tmp_path / "handler.py"]) is Outcome.RESTART_NEEDED
    assert swaps.handlers == []
    assert "a window function is not reloaded" in caplog.text


# -- the watcher: real file events (watchfiles) --------------------------------------------------
def test_the_watcher_reloads_once_for_a_burst_of_saves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, {"handler.py": "def handler(t: str) -> str:\n    return t + '0'\n"})
    load(str(tmp_path))
    swaps = Swaps()
    reloader = Reloader(str(tmp_path), tmp_path, swaps.swap, cwd=tmp_path)
    caplog.set_level(logging.INFO, logger="pulsarfunc.watch")
    with watching(swaps, reloader):
        wait_for(lambda: "watching" in caplog.text, timeout_s=10)
        for i in range(1, 6):  # a burst of saves: debounced into one batch
            write(tmp_path, {"handler.py": f"def handler(t: str) -> str:\n    return t + '{i}'\n"})
        wait_for(lambda: bool(swaps.handlers) and swaps.output("x") == "x5", timeout_s=10)
        threading.Event().wait(1.0)  # any further reload would come by now
    # one batch (a loaded machine may split the burst once): never a reload per save
    assert 1 <= len(swaps.handlers) <= 2
    assert swaps.output("x") == "x5"


# -- the command line --------------------------------------------------------------------------
def test_watch_without_watchfiles_names_the_extra_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, {"handler.py": "def handler(t):\n    return t\n"})
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # as if not installed
    monkeypatch.setattr(
        "pulsarfunc.runtime.broker.PulsarBroker",
        lambda *a: pytest.fail("--watch without watchfiles reached the broker"),
    )
    code = cli._run([str(tmp_path), "--watch", "--inputs", "in"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--watch needs the watchfiles package" in err
    assert "pip install 'pulsarfunc[watch]'" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 2


def test_run_help_names_watch_and_watch_alone_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli._run(["--help"]) == 0
    assert "--watch" in capsys.readouterr().out
    assert cli._run(["--watch"]) == 2
    assert "needs PATH[:handler]" in capsys.readouterr().err


def test_watchfiles_is_an_extra_never_a_runtime_dependency() -> None:
    project = read_project(ROOT / "pyproject.toml")
    assert not any(dep.startswith("watchfiles") for dep in project.dependencies)
    extras = importlib.metadata.metadata("pulsarfunc").get_all("Requires-Dist") or []
    assert any(dep.startswith("watchfiles") and 'extra == "watch"' in dep for dep in extras)
