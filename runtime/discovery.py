"""Finding and importing the user's callable from `PATH[:NAME]` (or Pulsar's `className`).

Every failure is a HandlerError that says what was looked for and what was found: a syntax
error shows file:line and the line, a missing import names the module and points at
requirements.txt, a missing handler lists the module's public callables.

Module names are the natural ones (`handler`, `mypkg.handler`), so pickling, serde class names
and the user's own imports see one module object. A module of the same name loaded earlier from
another directory is dropped from `sys.modules` first; a name that would shadow an installed or
standard-library module is refused.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import sysconfig
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from pulsarfunc.runtime.errors import HandlerError
from pulsarfunc.runtime.handler import is_pulsar_function_class

DEFAULT_NAMES = ("handler", "process", "main")
MODULE_FILES = ("handler.py", "main.py", "function.py")
#: The hint's pointer to the rule: error messages stay one or two lines.
RULE_HINT = "`pulsarfunc check --help` shows how PATH[:NAME] finds the handler"

DISCOVERY_RULE = """\
PATH[:NAME] names the handler.
  PATH is a .py file, a directory, or a dotted module name importable from the current
  directory. For a directory, the module is the first of handler.py, main.py, function.py in
  it; else its __init__.py if it is a package; else its only .py file (test_*.py, *_test.py,
  conftest.py and setup.py not counted).
  NAME is the attribute to call; obj.method reaches into an object. Without NAME, the first of
  handler, process, main found in the module is used; else the module's one pulsar.Function
  subclass.
  The module's directory (for a module inside packages, the directory above the top package)
  goes first on sys.path, so the function's own imports and relative imports work."""

_NOT_CANDIDATES = ("conftest.py", "setup.py")
_RESERVED = frozenset({"pulsarfunc", "pulsar", "_pulsar"})


@dataclass(frozen=True)
class Loaded:
    """The object found, and where: `where` (path:attr) prefixes every later message about it."""

    obj: object
    module: str
    attr: str
    path: str
    where: str


def load(ref: str, *, cwd: Path | None = None) -> Loaded:
    """Imports the module `ref` names and returns its handler object (see DISCOVERY_RULE)."""
    cwd = (cwd or Path.cwd()).absolute()
    target, attr = _split(ref)
    path = Path(target) if Path(target).is_absolute() else cwd / target
    if path.is_file() or path.is_dir():
        file = path if path.is_file() else _pick_file(path, target)
        if file.suffix != ".py":
            raise HandlerError(
                f"{target}: not a Python file",
                f"point at a .py file or a directory; {RULE_HINT}",
            )
        name, root = _module_of_file(file)
        shown = _shown(file, cwd)
        module = _import(name, root, file, shown, cwd)
    elif _is_dotted(target):
        shown = target
        module = _import(target, cwd, None, shown, cwd)
    else:
        near = path.with_suffix(".py")
        hint = f"did you mean {target}.py?" if near.is_file() else RULE_HINT
        raise HandlerError(f"{target}: no such file or directory (looked in {cwd})", hint)
    return _find(module, attr, shown)


def load_class_name(class_name: str, py: str) -> Loaded:
    """Pulsar's `className` relative to its `py` file or directory, as Pulsar's instance reads it.

    `module.Class` / `module.func` imports `module` from the directory of `py` and takes the
    attribute; a bare `module` returns the module itself (Pulsar then calls `module.process`).
    """
    py_path = Path(py).absolute()
    if py_path.suffix in (".zip", ".whl"):
        raise HandlerError(
            f"{py}: zip and wheel packages are not supported",
            "unpack it and point py at the directory or the .py file",
        )
    root = py_path if py_path.is_dir() else py_path.parent
    module_name, _, attr = class_name.rpartition(".")
    if not _is_dotted(class_name):
        raise HandlerError(
            f"className {class_name!r} is not a dotted Python name", "e.g. module.Class"
        )
    name = module_name or class_name
    file = _module_file(root, name)
    module = _import(name, root, file, str(file) if file else name, Path.cwd())
    shown = f"{py}:{class_name}"
    if not module_name:
        return Loaded(module, module.__name__, "", _file_of(module), shown)
    return _find(module, attr, str(file) if file else name, where=shown)


def _split(ref: str) -> tuple[str, str]:
    head, sep, tail = ref.rpartition(":")
    if not sep:
        return ref, ""
    if not tail or not _is_dotted(tail):
        raise HandlerError(
            f"{ref}: {tail!r} after ':' is not a Python name",
            "write PATH:NAME, e.g. handler.py:transform or handler.py:obj.method",
        )
    return head, tail


def _is_dotted(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def _shown(file: Path, cwd: Path) -> str:
    try:
        return str(file.relative_to(cwd))
    except ValueError:
        return str(file)


def _is_candidate(file: Path) -> bool:
    name = file.name
    return not (name.startswith("test_") or name.endswith("_test.py") or name in _NOT_CANDIDATES)


def _pick_file(directory: Path, target: str) -> Path:
    for name in (*MODULE_FILES, "__init__.py"):
        if (directory / name).is_file():
            return directory / name
    files = sorted(p for p in directory.glob("*.py") if _is_candidate(p))
    if len(files) == 1:
        return files[0]
    if not files and (packages := _packages(directory)):
        paths = " or ".join(f"{target.rstrip('/')}/{p.relative_to(directory)}" for p in packages)
        names = ", ".join(p.name for p in packages)
        raise HandlerError(
            f"{target}: holds no module, only the package{'s' * (len(packages) > 1)} {names}",
            f"give the package's directory as PATH: {paths}",
        )
    found = ", ".join(p.name for p in files) or "no .py files"
    raise HandlerError(
        f"{target}: expected handler.py, main.py or function.py in the directory. Found: {found}",
        f"name the file: {target.rstrip('/')}/FILE.py[:NAME]; {RULE_HINT}",
    )


def _packages(directory: Path) -> list[Path]:
    """The packages (directories with an __init__.py) in `directory`, or in its src/ layout."""
    for where in (directory, directory / "src"):
        found = sorted(p.parent for p in where.glob("*/__init__.py") if _is_candidate(p.parent))
        if found:
            return found
    return []


def _module_of_file(file: Path) -> tuple[str, Path]:
    """(dotted module name, sys.path root): walks up through packages (dirs with __init__.py)."""
    if not file.stem.isidentifier():
        raise HandlerError(
            f"{file}: {file.stem!r} is not a valid Python module name",
            "rename the file with letters, digits and underscores only",
        )
    parts = [] if file.name == "__init__.py" else [file.stem]
    directory = file.parent
    while (directory / "__init__.py").is_file() and directory.name.isidentifier():
        parts.insert(0, directory.name)
        directory = directory.parent
    if not parts:  # an __init__.py whose directory is not a valid package name
        raise HandlerError(
            f"{file}: the package directory {file.parent.name!r} is not a valid Python name",
            "rename the directory with letters, digits and underscores only",
        )
    return ".".join(parts), directory


def _module_file(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    for file in (base.with_suffix(".py"), base / "__init__.py"):
        if file.is_file():
            return file
    return None


def _file_of(module: ModuleType) -> str:
    return str(getattr(module, "__file__", None) or module.__name__)


def _under(path: str | None, root: Path) -> bool:
    return path is not None and Path(path).resolve().is_relative_to(root.resolve())


def _installed(path: str | None) -> bool:
    """Whether a module file belongs to the interpreter or an installed distribution."""
    if path is None:  # a namespace package: directories only, nothing to shadow
        return False
    dirs = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return path in ("built-in", "frozen") or any(_under(path, Path(d)) for d in dirs)


def _make_room(name: str, root: Path, shown: str) -> None:
    """Drops a same-named module from another directory; refuses to shadow an installed one."""
    top = name.partition(".")[0]
    existing = sys.modules.get(top)
    if existing is not None:
        origin = getattr(existing, "__file__", None)
    else:
        spec = importlib.util.find_spec(top)  # before root goes on sys.path
        origin = spec.origin if spec else None
    taken = top in _RESERVED or top in sys.stdlib_module_names or top in sys.builtin_module_names
    if taken or (not _under(origin, root) and _installed(origin)):
        raise HandlerError(
            f"{shown}: the module name {top!r} is already taken by {origin or 'a standard module'}",
            f"rename {top!r} so it does not shadow the installed or standard module",
        )
    for key in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
        if not _under(getattr(sys.modules[key], "__file__", None), root):
            del sys.modules[key]  # the same name from another directory (an earlier load)


def _import(name: str, root: Path, file: Path | None, shown: str, cwd: Path) -> ModuleType:
    """Imports `name` with `root` first on sys.path; `cwd` only shortens paths in messages."""
    if file is not None:
        _make_room(name, root, shown)
    entry = str(root)
    if entry in sys.path:
        sys.path.remove(entry)
    sys.path.insert(0, entry)
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(name)
    except SyntaxError as e:
        raise _syntax_error(e, cwd) from e
    except ModuleNotFoundError as e:
        if file is None and e.name and (name == e.name or name.startswith(e.name + ".")):
            raise HandlerError(
                f"{shown}: no such file, directory or module (looked in {root})", RULE_HINT
            ) from e
        raise HandlerError(
            f"{shown}: importing it failed{_at(e, root, cwd)}: No module named {e.name!r}",
            f"add the distribution that provides {str(e.name).partition('.')[0]!r} to "
            "requirements.txt next to the handler (and pip install it to run locally)",
        ) from e
    except ImportError as e:
        raise HandlerError(
            f"{shown}: importing it failed{_at(e, root, cwd)}: {e}",
            "check that import; a missing package belongs in requirements.txt",
        ) from e
    except (Exception, SystemExit) as e:
        raise HandlerError(
            f"{shown}: importing it raised {type(e).__name__}{_at(e, root, cwd)}: {e}",
            "module-level code runs when the function starts; move work into the handler, "
            "or guard it with if __name__ == '__main__'",
        ) from e
    loaded_from = getattr(module, "__file__", None)
    if file is not None and (loaded_from is None or Path(loaded_from).resolve() != file.resolve()):
        raise HandlerError(
            f"{shown}: importing {name!r} loaded {loaded_from or 'a namespace package'} instead",
            f"rename {file.name} so its module name is unique",
        )
    return module


def _syntax_error(e: SyntaxError, cwd: Path) -> HandlerError:
    file = _shown(Path(e.filename), cwd) if e.filename else ""
    where = f"{file}:{e.lineno}" if file else "the handler module"
    text = (e.text or "").rstrip("\n")
    shown = text.strip()
    caret = ""
    if shown and e.offset:
        indent = len(text) - len(text.lstrip())
        caret = "\n    " + " " * max(e.offset - 1 - indent, 0) + "^"
    line = f"\n    {shown}{caret}" if shown else ""
    return HandlerError(
        f"{where}: syntax error: {e.msg}{line}",
        f"fix that line; python -m py_compile {file or 'FILE'} shows the same error",
    )


def _at(e: BaseException, root: Path, cwd: Path) -> str:
    """` (at fn/handler.py:3)`: the innermost traceback frame in the user's files."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if _under(f.filename, root)]
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {_shown(Path(f.filename), cwd)}:{f.lineno})"


def _public_callables(module: ModuleType) -> list[str]:
    """What the module itself defines that could be a handler, for error messages."""
    names = []
    for key, value in vars(module).items():
        if key.startswith("_") or inspect.ismodule(value) or not callable(value):
            continue
        defined_here = getattr(value, "__module__", None) == module.__name__
        instance_here = type(value).__module__ == module.__name__
        if defined_here or instance_here:
            names.append(key)
    return names


def _find(module: ModuleType, attr: str, shown: str, *, where: str = "") -> Loaded:
    path = _file_of(module)
    if attr:
        obj: object = module
        for i, part in enumerate(attr.split(".")):
            if not hasattr(obj, part):
                owner = module.__name__ if i == 0 else ".".join(attr.split(".")[:i])
                found = ", ".join(map(repr, _public_callables(module))) or "nothing callable"
                raise HandlerError(
                    f"{where or shown}: {owner} has no attribute {part!r}. Found: {found}",
                    f"name one of those: {shown}:NAME",
                )
            obj = getattr(obj, part)
        return Loaded(obj, module.__name__, attr, path, where or f"{shown}:{attr}")
    namespace = vars(module)
    for name in DEFAULT_NAMES:
        if name in namespace:
            return Loaded(namespace[name], module.__name__, name, path, f"{shown}:{name}")
    classes = [
        key
        for key, value in namespace.items()
        if isinstance(value, type)
        and value.__module__ == module.__name__
        and is_pulsar_function_class(value)
    ]
    if len(classes) == 1:
        key = classes[0]
        return Loaded(namespace[key], module.__name__, key, path, f"{shown}:{key}")
    if classes:
        raise HandlerError(
            f"{shown}: {len(classes)} pulsar.Function subclasses, and no callable named "
            f"'handler', 'process' or 'main': {', '.join(map(repr, classes))}",
            f"say which one: {shown}:{classes[0]}",
        )
    found = ", ".join(map(repr, _public_callables(module))) or "nothing callable"
    raise HandlerError(
        f"{shown} is expected to contain a callable named 'handler', 'process' or 'main', "
        f"or one pulsar.Function subclass. Found: {found}",
        f"rename your function to handler, or name it: {shown}:NAME",
    )
