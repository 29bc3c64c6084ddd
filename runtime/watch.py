"""`pulsarfunc run PATH --watch`: reload the handler when the function's files change.

    watchfiles (extra `pulsarfunc[watch]`)   changed paths; a burst of saves comes as one batch
    classify(paths, directory)               what the batch asks for: a reload, a restart, nothing
    Reloader.handle(paths)                   the function's own modules dropped from sys.modules,
                                             the handler loaded and checked as `pulsarfunc check`
                                             does, then `Instance.swap` (instance.py)

Everything the function's directory holds is imported afresh, as the process restart of
functions-framework's `--debug` (werkzeug's reloader) or Knative's `func run` would, but the
client, the subscription and the messages in flight are kept. A handler that no longer loads (a
syntax error, a signature no form accepts) is reported as `pulsarfunc check` reports it, its
previous modules are put back and it goes on running; the next save tries again. So is one the
instance refuses to swap in (schemas other than those registered at the start). Installed
packages are never reloaded: a change to requirements.txt or pyproject.toml asks for a restart,
as any change does for a window function (its windows hold messages).

Host only: the runtime image has no watchfiles, and nothing here runs without `--watch`.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import logging
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Protocol

from pulsarfunc.runtime.config import FunctionConfig
from pulsarfunc.runtime.discovery import Loaded, load
from pulsarfunc.runtime.errors import UserError
from pulsarfunc.runtime.handler import Handler, inspect_handler
from pulsarfunc.runtime.start import report

_log = logging.getLogger("pulsarfunc.watch")

EXTRA = "pip install 'pulsarfunc[watch]'"
DEPENDENCY_FILES = ("requirements.txt", "pyproject.toml")
# Never the function's own files: caches, tools' state, environments, installed packages.
IGNORED_DIRS = frozenset(
    {"__pycache__", "node_modules", "site-packages", "dist-packages", "venv", "build", "dist"}
)
_RESERVED_TOPS = frozenset({"pulsarfunc", "pulsar", "_pulsar"})
_STOP_WAIT_S = 5.0  # at the end of the run, how long the watcher gets to finish a reload
_RUST_TIMEOUT_MS = 500  # how often the watcher wakes without changes (the first wake: watching)


def require_watcher() -> None:
    """UserError (exit 2) naming the extra to install when watchfiles is missing."""
    try:
        import watchfiles  # noqa: F401
    except ImportError as exc:
        raise UserError(f"--watch needs the watchfiles package: {exc}", EXTRA) from exc


# -- which paths trigger what (pure) -------------------------------------------------------------
class Action(enum.Enum):
    """What a changed file asks for."""

    IGNORE = "ignore"  # not the function's: caches, editors' temporary files, tests
    RELOAD = "reload"  # code or data the function loads
    RESTART = "restart"  # the dependencies: installed packages are not reloaded


def action_for(path: Path, directory: Path) -> Action:
    """What a change of `path` (under the watched `directory`) asks for."""
    try:
        parts = path.relative_to(directory).parts
    except ValueError:
        return Action.IGNORE
    if not parts:
        return Action.IGNORE
    *dirs, name = parts
    if any(d.startswith(".") or d in IGNORED_DIRS or d.endswith(".egg-info") for d in dirs):
        return Action.IGNORE
    if _temporary(name) or _test_file(name):
        return Action.IGNORE
    if not dirs and (name in DEPENDENCY_FILES or _requirements_file(name)):
        return Action.RESTART
    return Action.RELOAD


def _temporary(name: str) -> bool:
    """Hidden files and what editors and Python write beside the sources."""
    return (
        name.startswith((".", "#"))
        or name.endswith(("~", ".pyc", ".pyo", ".swp", ".swx", ".tmp"))
        or name.startswith("flycheck_")
    )


def _test_file(name: str) -> bool:
    """The tests beside a handler (as discovery leaves them out): the handler does not load
    them, so saving one reloads nothing."""
    return name.endswith(".py") and (
        name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"
    )


def _requirements_file(name: str) -> bool:
    return name.startswith("requirements") and name.endswith(".txt")


@dataclass(frozen=True)
class Decision:
    """What one batch of changes asks for: the files behind a reload, and behind a restart."""

    reload: tuple[Path, ...] = ()
    restart: tuple[Path, ...] = ()


def classify(paths: Iterable[str | Path], directory: Path) -> Decision:
    """Sort one batch of changed paths by what they ask for (ignored ones are dropped)."""
    reload: list[Path] = []
    restart: list[Path] = []
    for path in sorted({Path(p) for p in paths}):
        action = action_for(path, directory)
        if action is Action.RELOAD:
            reload.append(path)
        elif action is Action.RESTART:
            restart.append(path)
    return Decision(tuple(reload), tuple(restart))


def function_dir(loaded: Loaded) -> Path:
    """The directory the function's files live in: the module's own directory, or the top
    package's for a module inside packages (`pkg/sub/handler.py` is watched from `pkg/`)."""
    file = Path(loaded.path).resolve()
    depth = loaded.module.count(".") - (0 if file.name == "__init__.py" else 1)
    return file.parents[max(depth, 0)]


# -- reloading the function's modules --------------------------------------------------------
def _within(path: str | None, directory: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(directory)


def _installed_dirs() -> tuple[Path, ...]:
    paths = sysconfig.get_paths()
    keys = ("stdlib", "platstdlib", "purelib", "platlib")
    return tuple(Path(paths[k]).resolve() for k in keys if k in paths)


def owned_modules(directory: Path) -> dict[str, ModuleType]:
    """The imported modules that come from the function's directory: its handler module and
    the modules of its own it imports. Installed packages (a virtual environment inside the
    directory included), the standard library and pulsarfunc itself are never counted."""
    installed = _installed_dirs()
    owned: dict[str, ModuleType] = {}
    for name, module in list(sys.modules.items()):
        top = name.partition(".")[0]
        if top in _RESERVED_TOPS or top in sys.stdlib_module_names or module is None:
            continue
        file = getattr(module, "__file__", None)
        paths = [file] if file else list(getattr(module, "__path__", None) or ())
        if not paths or not all(_within(p, directory) for p in paths):
            continue
        if any(_within(p, d) for p in paths for d in installed):
            continue
        if any(_in_ignored_dir(p, directory) for p in paths):
            continue
        owned[name] = module
    return owned


def _in_ignored_dir(path: str, directory: Path) -> bool:
    parts = Path(path).resolve().relative_to(directory).parts[:-1]
    return any(part in IGNORED_DIRS or part.startswith(".") for part in parts)


class Outcome(enum.Enum):
    """What one batch of changes did."""

    IGNORED = "ignored"
    RESTART_NEEDED = "restart needed"  # and nothing to reload
    RELOADED = "reloaded"
    KEPT = "kept the running handler"  # the new one does not load: check's error printed
    NOT_RUNNING = "not running"  # the instance stopped (or has not started): nothing swapped


class Reloader:
    """Reloads the handler `ref` names from its `directory`, and hands it to `swap`."""

    def __init__(
        self,
        ref: str,
        directory: Path,
        swap: Callable[[Handler], bool],
        *,
        cwd: Path,
        window: bool = False,
    ) -> None:
        self.ref = ref
        self.directory = directory.resolve()
        self._swap = swap
        self._cwd = cwd
        self._window = window  # a window function: changes ask for a restart

    def handle(self, paths: Iterable[str | Path]) -> Outcome:
        """React to one batch of changed paths; see the module docstring."""
        decision = classify(paths, self.directory)
        if decision.restart:
            _log.warning(
                "%s changed: restart `pulsarfunc run` to use the new dependencies (installed "
                "packages are not reloaded)",
                self._names(decision.restart),
            )
        if not decision.reload:
            return Outcome.RESTART_NEEDED if decision.restart else Outcome.IGNORED
        if self._window:
            _log.warning(
                "%s changed: restart `pulsarfunc run` to use it (a window function is not "
                "reloaded: its windows hold messages)",
                self._names(decision.reload),
            )
            return Outcome.RESTART_NEEDED
        _log.info("%s changed: reloading %s", self._names(decision.reload), self.ref)
        previous = owned_modules(self.directory)
        for name in previous:
            del sys.modules[name]
        importlib.invalidate_caches()
        try:
            loaded = load(self.ref, cwd=self._cwd)
            handler = inspect_handler(loaded.obj, where=loaded.where)
            swapped = self._swap(handler)  # the instance logs the swap, with the form found
        except Exception as exc:
            self._put_back(previous)
            report(exc, debug=False)  # exactly what `pulsarfunc check` prints
            _log.warning("the running handler is kept; saving the file again reloads it")
            return Outcome.KEPT
        return Outcome.RELOADED if swapped else Outcome.NOT_RUNNING

    def _put_back(self, previous: dict[str, ModuleType]) -> None:
        """The running handler's modules back in place (its own imports still find them), and
        what the failed reload imported gone."""
        for name in owned_modules(self.directory):
            del sys.modules[name]
        sys.modules.update(previous)

    def _names(self, paths: tuple[Path, ...]) -> str:
        return ", ".join(str(p.relative_to(self.directory)) for p in paths)


# -- the watcher (I/O) ---------------------------------------------------------------------------
class Swappable(Protocol):
    """What the watcher needs of the running instance (`Instance`)."""

    @property
    def started(self) -> bool: ...

    @property
    def config(self) -> FunctionConfig: ...

    def swap(self, handler: Handler) -> bool: ...


@contextlib.contextmanager
def watching(instance: Swappable, reloader: Reloader) -> Iterator[None]:
    """Watch the function's files on a thread of their own while the block runs."""
    stop = threading.Event()
    thread = threading.Thread(
        target=_watch, args=(instance, reloader, stop), name="pf-watch", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(_STOP_WAIT_S)


def _watch(instance: Swappable, reloader: Reloader, stop: threading.Event) -> None:
    import watchfiles

    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # our own lines say what changed
    while not instance.started:  # a reload swaps a running engine only
        if stop.wait(0.05):
            return
    ignored = (*watchfiles.DefaultFilter.ignore_dirs, *IGNORED_DIRS)
    changes_seen = watchfiles.watch(
        reloader.directory,
        watch_filter=watchfiles.DefaultFilter(ignore_dirs=ignored),
        stop_event=stop,
        rust_timeout=_RUST_TIMEOUT_MS,
        yield_on_timeout=True,  # the first (empty) batch says the watcher is set up
        raise_interrupt=False,
    )
    announced = False
    for changes in changes_seen:
        if not announced:
            announced = True
            _log.info("watching %s: a saved change reloads the handler", reloader.directory)
        if not changes:
            continue
        try:
            reloader.handle(path for _, path in changes)
        except Exception:
            _log.exception("reload failed; the running handler is kept")


def watcher_for(
    ref: str, loaded: Loaded, *, cwd: Path | None = None
) -> Callable[[Swappable], contextlib.AbstractContextManager[None]]:
    """What `start.run(attach=...)` enters around the instance's run for `--watch`."""
    directory = function_dir(loaded)
    here = (cwd or Path.cwd()).absolute()

    def attach(instance: Swappable) -> contextlib.AbstractContextManager[None]:
        window = instance.config.window.enabled
        reloader = Reloader(ref, directory, instance.swap, cwd=here, window=window)
        return watching(instance, reloader)

    return attach
