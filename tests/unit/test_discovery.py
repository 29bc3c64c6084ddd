"""Discovery: PATH[:NAME] and Pulsar's className to the user's object, and every way it fails."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulsarfunc.runtime.discovery import (
    DEFAULT_NAMES,
    DISCOVERY_RULE,
    MODULE_FILES,
    RULE_HINT,
    load,
    load_class_name,
)
from pulsarfunc.runtime.errors import HandlerError
from pulsarfunc.runtime.handler import Form, inspect_handler

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "functions"
CTX = object()


@pytest.fixture(autouse=True)
def isolated_imports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Restores sys.path and forgets the user modules a test imported (fixtures, tmp files)."""
    path, before = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    roots = (str(FIXTURES), str(tmp_path_factory.getbasetemp()))
    for name in set(sys.modules) - before:
        file = getattr(sys.modules[name], "__file__", None) or ""
        if file.startswith(roots):
            del sys.modules[name]


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    return directory


def failure(ref: str, cwd: Path = FIXTURES) -> str:
    with pytest.raises(HandlerError) as info:
        load(ref, cwd=cwd)
    assert info.value.exit_code == 2
    return str(info.value)


# --- finding the module ---------------------------------------------------------------------


def test_file_with_default_name() -> None:
    loaded = load("typed/handler.py", cwd=FIXTURES)
    assert (loaded.module, loaded.attr, loaded.where) == (
        "handler",
        "handler",
        "typed/handler.py:handler",
    )
    assert loaded.path == str(FIXTURES / "typed" / "handler.py")
    h = inspect_handler(loaded.obj, where=loaded.where)
    assert (h.takes_context, h.input_codec.name) == (True, "str")
    assert h.call(CTX, "hi") == "HI!"


def test_directory_means_its_handler_py() -> None:
    assert load("typed", cwd=FIXTURES).where == "typed/handler.py:handler"


def test_explicit_attribute() -> None:
    loaded = load("typed/handler.py:shout", cwd=FIXTURES)
    assert (loaded.attr, loaded.where) == ("shout", "typed/handler.py:shout")


def test_dotted_attribute_reaches_into_an_object(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "greet.py": "class G:\n    def hi(self, n: str) -> str:\n        return 'hi ' + n\n"
            "g = G()\n"
        },
    )
    loaded = load("greet.py:g.hi", cwd=tmp_path)
    assert inspect_handler(loaded.obj).call(CTX, "al") == "hi al"


def test_absolute_path_outside_cwd_is_shown_in_full(tmp_path: Path) -> None:
    write(tmp_path, {"fn.py": "def handler(d: bytes) -> bytes:\n    return d\n"})
    assert load(str(tmp_path / "fn.py"), cwd=FIXTURES).where == f"{tmp_path / 'fn.py'}:handler"


@pytest.mark.parametrize(
    ("files", "picked"),
    [
        (["handler.py", "main.py", "function.py"], "handler.py"),
        (["main.py", "function.py"], "main.py"),
        (["function.py", "other.py"], "function.py"),
        (["only.py", "test_only.py", "only_test.py", "conftest.py", "setup.py"], "only.py"),
    ],
)
def test_directory_file_order(tmp_path: Path, files: list[str], picked: str) -> None:
    write(tmp_path / "fn", dict.fromkeys(files, "def handler():\n    return None\n"))
    assert load("fn", cwd=tmp_path).where == f"fn/{picked}:handler"


def test_directory_with_several_candidates_lists_them(tmp_path: Path) -> None:
    write(tmp_path / "fn", {"a.py": "", "b.py": "", "test_a.py": ""})
    text = failure("fn", tmp_path)
    assert "expected handler.py, main.py or function.py in the directory. Found: a.py, b.py" in text
    assert "fn/FILE.py[:NAME]" in text


def test_directory_without_python_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "Found: no .py files" in failure("empty", tmp_path)


def test_not_a_python_file(tmp_path: Path) -> None:
    write(tmp_path, {"notes.txt": "x"})
    assert "notes.txt: not a Python file" in failure("notes.txt", tmp_path)


def test_missing_path(tmp_path: Path) -> None:
    text = failure("nowhere/handler.py", tmp_path)
    assert f"nowhere/handler.py: no such file or directory (looked in {tmp_path})" in text
    assert text.endswith(RULE_HINT)  # the rule itself is in `check --help`: errors stay short


def test_missing_path_suggests_the_py_file(tmp_path: Path) -> None:
    write(tmp_path / "fn", {"handler.py": "def handler(): pass\n"})
    assert "did you mean fn/handler.py?" in failure("fn/handler", tmp_path)


def test_dotted_module_name_from_cwd(tmp_path: Path) -> None:
    write(tmp_path / "pf_dotted_pkg", {"__init__.py": "", "fn.py": "def main():\n    return 1\n"})
    loaded = load("pf_dotted_pkg.fn", cwd=tmp_path)
    assert (loaded.module, loaded.where) == ("pf_dotted_pkg.fn", "pf_dotted_pkg.fn:main")


def test_unknown_module_name(tmp_path: Path) -> None:
    text = failure("pf_no_such_module_anywhere", tmp_path)
    assert "pf_no_such_module_anywhere: no such file, directory or module" in text


@pytest.mark.parametrize(
    "ref", ["typed/handler.py:", "typed/handler.py:1x", "typed/handler.py:a-b"]
)
def test_bad_name_after_colon(ref: str) -> None:
    assert "after ':' is not a Python name" in failure(ref)


# --- packages, sibling imports, isolation ----------------------------------------------------


@pytest.mark.parametrize("ref", ["package_relative/mypkg", "package_relative/mypkg/handler.py"])
def test_package_with_relative_imports(ref: str) -> None:
    loaded = load(ref, cwd=FIXTURES)
    assert loaded.module == "mypkg.handler"
    assert str(FIXTURES / "package_relative") in sys.path
    assert inspect_handler(loaded.obj).call(CTX, "x") == "<x>"


def test_plain_directory_sibling_import() -> None:
    loaded = load("sibling_import", cwd=FIXTURES)
    assert inspect_handler(loaded.obj).call(CTX, b"ab") == b"abab"
    assert sys.path[0] == str(FIXTURES / "sibling_import")


def test_two_handler_modules_of_the_same_name_do_not_collide(tmp_path: Path) -> None:
    write(tmp_path / "one", {"handler.py": "def handler():\n    return 1\n"})
    write(tmp_path / "two", {"handler.py": "def handler():\n    return 2\n"})
    first = load("one", cwd=tmp_path)
    second = load("two", cwd=tmp_path)
    assert inspect_handler(first.obj).call(CTX, None) == 1
    assert inspect_handler(second.obj).call(CTX, None) == 2
    assert sys.modules["handler"].__file__ == str(tmp_path / "two" / "handler.py")


def test_loading_the_same_file_twice_reuses_the_module(tmp_path: Path) -> None:
    write(
        tmp_path, {"fn.py": "import itertools\nN = next(itertools.count())\ndef handler(): pass\n"}
    )
    assert load("fn.py", cwd=tmp_path).obj is load("fn.py", cwd=tmp_path).obj


@pytest.mark.parametrize("name", ["json", "yaml", "pulsar"])
def test_module_names_that_would_shadow_installed_ones_are_refused(
    tmp_path: Path, name: str
) -> None:
    write(tmp_path, {f"{name}.py": "def handler(): pass\n"})
    text = failure(f"{name}.py", tmp_path)
    assert f"the module name {name!r} is already taken by" in text
    assert sys.modules.get(name) is None or tmp_path.name not in str(sys.modules[name])


def test_file_name_that_is_not_a_module_name(tmp_path: Path) -> None:
    write(tmp_path, {"my-fn.py": "def handler(): pass\n"})
    assert "'my-fn' is not a valid Python module name" in failure("my-fn.py", tmp_path)


# --- finding the callable -------------------------------------------------------------------


def test_native_module_found_by_process() -> None:
    loaded = load("native", cwd=FIXTURES)
    assert loaded.where == "native/exclamation.py:process"
    h = inspect_handler(loaded.obj, where=loaded.where)
    assert h.form is Form.PULSAR_NATIVE
    assert h.call(CTX, h.input_codec.decode(b"hi")) == "hi!"


def test_single_pulsar_function_subclass() -> None:
    loaded = load("sdk", cwd=FIXTURES)
    assert loaded.where == "sdk/word_count.py:WordCount"
    h = inspect_handler(loaded.obj, where=loaded.where)
    assert h.form is Form.PULSAR_FUNCTION
    assert h.call(CTX, "a b c") == 3


def test_default_names_in_order(tmp_path: Path) -> None:
    write(tmp_path, {"fn.py": "def main(): pass\ndef process(x): pass\n"})
    assert load("fn.py", cwd=tmp_path).attr == "process"
    write(tmp_path, {"fn2.py": "def main(): pass\ndef handler(): pass\ndef process(x): pass\n"})
    assert load("fn2.py", cwd=tmp_path).attr == "handler"


def test_missing_handler_lists_what_was_found() -> None:
    text = failure("missing_handler")
    assert (
        "missing_handler/handler.py is expected to contain a callable named 'handler', 'process' "
        "or 'main', or one pulsar.Function subclass. Found: 'Record', 'helper', 'transform'"
    ) in text
    assert "missing_handler/handler.py:NAME" in text


def test_missing_attribute_lists_what_was_found() -> None:
    text = failure("missing_handler/handler.py:transfrom")
    assert "handler has no attribute 'transfrom'. Found: 'Record', 'helper', 'transform'" in text


def test_missing_dotted_attribute_names_the_owner() -> None:
    assert "helper has no attribute 'nope'" in failure("missing_handler/handler.py:helper.nope")


def test_ambiguous_pulsar_functions() -> None:
    text = failure("ambiguous")
    assert "2 pulsar.Function subclasses" in text
    assert "'Upper', 'Lower'" in text
    assert "ambiguous/handler.py:Upper" in text


def test_not_callable_is_found_then_refused_by_inspection() -> None:
    loaded = load("not_callable", cwd=FIXTURES)
    with pytest.raises(HandlerError, match=r"not_callable/handler.py:handler: 42 \(of type int\)"):
        inspect_handler(loaded.obj, where=loaded.where)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("wrong_signatures/handler.py:three", "takes 3 required positional parameters"),
        ("wrong_signatures/handler.py:star", "*args is not accepted"),
        ("wrong_signatures/handler.py:kwargs", "**options is not accepted"),
        ("wrong_signatures/handler.py:kwonly", "keyword-only parameter 'mode' has no default"),
        ("wrong_signatures/handler.py:pulsar_order", "the Context is the second parameter"),
        (
            "wrong_signatures/handler.py:first_not_context",
            "with two parameters the first is the Context, but 'text' is",
        ),
        ("wrong_signatures/handler.py:unsupported_type", "annotation set[str] is not supported"),
        (
            "bad_process/handler.py:MissingContext",
            "Pulsar calls MissingContext.process(input, context)",
        ),
        ("bad_process/handler.py:NoProcess", "NoProcess does not define process"),
        ("bad_process/handler.py:NeedsArguments", "could not create NeedsArguments()"),
    ],
)
def test_invalid_handler_fixtures_load_then_fail_inspection(ref: str, message: str) -> None:
    loaded = load(ref, cwd=FIXTURES)
    with pytest.raises(HandlerError) as info:
        inspect_handler(loaded.obj, where=loaded.where)
    assert str(info.value).startswith(f"{ref}: {message}")


def test_valid_signature_fixture_for_contrast() -> None:
    loaded = load("wrong_signatures/handler.py:valid_with_defaults", cwd=FIXTURES)
    assert inspect_handler(loaded.obj).takes_context


# --- import failures ------------------------------------------------------------------------


def test_syntax_error_shows_file_line_and_the_line(tmp_path: Path) -> None:
    write(tmp_path / "fn", {"handler.py": "import json\n\ndef handler(data)\n    return data\n"})
    text = failure("fn", tmp_path)
    assert "fn/handler.py:3: syntax error: expected ':'" in text
    assert "\n    def handler(data)\n" in text
    assert "python -m py_compile" in text


def test_indentation_error_is_a_syntax_error(tmp_path: Path) -> None:
    write(tmp_path, {"fn.py": "def handler(data):\nreturn data\n"})
    assert "fn.py:2: syntax error: expected an indented block" in failure("fn.py", tmp_path)


def test_missing_dependency_names_it_and_suggests_requirements() -> None:
    text = failure("import_error")
    assert "import_error/handler.py: importing it failed (at import_error/handler.py:5)" in text
    assert "No module named 'pulsarfunc_fixture_missing_dependency'" in text
    assert "to requirements.txt next to the handler" in text


def test_bad_import_name(tmp_path: Path) -> None:
    write(tmp_path, {"fn.py": "from json import nothing_here\n"})
    text = failure("fn.py", tmp_path)
    assert "fn.py: importing it failed (at fn.py:1): cannot import name 'nothing_here'" in text


def test_module_level_exception() -> None:
    text = failure("raises_at_import")
    assert (
        "raises_at_import/handler.py: importing it raised KeyError "
        "(at raises_at_import/handler.py:4): 'timeout'" in text
    )
    assert "module-level code runs when the function starts" in text


def test_module_level_sys_exit(tmp_path: Path) -> None:
    write(tmp_path, {"fn.py": "import sys\nsys.exit(3)\n"})
    assert "importing it raised SystemExit (at fn.py:2): 3" in failure("fn.py", tmp_path)


# --- Pulsar's className ---------------------------------------------------------------------


def test_class_name_module_class() -> None:
    loaded = load_class_name("word_count.WordCount", str(FIXTURES / "sdk" / "word_count.py"))
    assert (loaded.module, loaded.attr) == ("word_count", "WordCount")
    assert loaded.where == f"{FIXTURES / 'sdk' / 'word_count.py'}:word_count.WordCount"
    assert inspect_handler(loaded.obj).form is Form.PULSAR_FUNCTION


def test_class_name_bare_module_is_native() -> None:
    loaded = load_class_name("exclamation", str(FIXTURES / "native" / "exclamation.py"))
    assert loaded.attr == ""
    h = inspect_handler(loaded.obj, where=loaded.where)
    assert h.form is Form.PULSAR_NATIVE
    assert h.call(CTX, "a") == "a!"


def test_class_name_relative_to_a_directory() -> None:
    loaded = load_class_name("mypkg.handler.handler", str(FIXTURES / "package_relative"))
    assert inspect_handler(loaded.obj).call(CTX, "p") == "<p>"


def test_class_name_missing_attribute() -> None:
    with pytest.raises(
        HandlerError, match=r"word_count has no attribute 'Nope'\. Found: 'WordCount'"
    ):
        load_class_name("word_count.Nope", str(FIXTURES / "sdk" / "word_count.py"))


def test_class_name_missing_module() -> None:
    with pytest.raises(HandlerError, match="no such file, directory or module"):
        load_class_name("not_there.Fn", str(FIXTURES / "sdk" / "word_count.py"))


@pytest.mark.parametrize("py", ["fn.zip", "fn.whl"])
def test_class_name_archives_are_refused(py: str) -> None:
    with pytest.raises(HandlerError, match="zip and wheel packages are not supported"):
        load_class_name("fn.Fn", py)


def test_class_name_must_be_dotted_python() -> None:
    with pytest.raises(HandlerError, match="is not a dotted Python name"):
        load_class_name("my-fn.Fn", str(FIXTURES / "sdk"))


def test_rule_text_names_the_names_it_tries() -> None:
    for name in (*DEFAULT_NAMES, *MODULE_FILES, "__init__.py", "pulsar.Function", "sys.path"):
        assert name in DISCOVERY_RULE
