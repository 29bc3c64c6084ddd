"""BuildPlan: what lands where in the image, decided from the function's files alone."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path, PurePosixPath

import pytest

from pulsarfunc.builder.errors import PlanError
from pulsarfunc.builder.plan import AVRO_REQUIREMENT, BuildOptions, SourceKind, make_plan
from pulsarfunc.builder.requirements import without_runtime

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _dests(plan_files: tuple[object, ...]) -> list[str]:
    return [f.dest for f in plan_files]  # type: ignore[attr-defined]


def test_single_file_goes_to_app(tmp_path: Path) -> None:
    _write(tmp_path, {"fn.py": "def handler(x): return x\n", "requirements.txt": "six\n"})
    plan = make_plan(BuildOptions(path=tmp_path / "fn.py", tag="t"))
    assert plan.kind is SourceKind.FILE
    assert _dests(plan.files) == ["app/fn.py"]
    assert plan.image_ref() == "/app/fn.py"
    assert plan.requirements == ()  # a single file has no implicit requirements.txt


def test_directory_excludes_defaults_and_dockerignore(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "handler.py": "",
            "lib/util.py": "",
            "lib/__pycache__/util.cpython-311.pyc": "",
            ".git/HEAD": "",
            ".venv/bin/python": "",
            "venv2/pyvenv.cfg": "",
            "venv2/lib/x.py": "",
            ".env": "SECRET=1",
            "lib/.env": "SECRET=2",
            "notes/draft.md": "",
            "notes/keep.md": "",
            ".dockerignore": "notes\n!notes/keep.md\n*.log\n",
            "debug.log": "",
            "sub/debug.log": "",
        },
    )
    plan = make_plan(BuildOptions(path=tmp_path, tag="t"))
    assert plan.kind is SourceKind.DIRECTORY
    assert _dests(plan.files) == [
        "app/handler.py",
        "app/lib/util.py",
        "app/notes/keep.md",
        "app/sub/debug.log",  # `*.log` matches the top level only, as in Docker
    ]


def test_package_keeps_its_name_for_relative_imports() -> None:
    plan = make_plan(BuildOptions(path=EXAMPLES / "wordstats" / "wordstats", tag="t"))
    assert plan.kind is SourceKind.PACKAGE
    assert "app/wordstats/counting.py" in _dests(plan.files)
    assert "app/wordstats/stopwords.txt" in _dests(plan.files)
    assert plan.image_target == PurePosixPath("/app/wordstats")


def test_handler_module_selects_a_package_in_a_project(tmp_path: Path) -> None:
    plan = make_plan(
        BuildOptions(path=EXAMPLES / "wordstats", tag="t", handler="wordstats:handler")
    )
    assert plan.host_ref == f"{EXAMPLES / 'wordstats' / 'wordstats'}:handler"
    assert plan.image_ref() == "/app/wordstats:handler"
    assert plan.title == "wordstats"
    assert plan.labels["org.opencontainers.image.version"] == "1.2.0"


def test_image_ref_uses_the_file_the_host_check_found() -> None:
    plan = make_plan(BuildOptions(path=EXAMPLES / "exclaim", tag="t"))
    found = EXAMPLES / "exclaim" / "handler.py"
    assert plan.image_ref("handler", found) == "/app/handler.py:handler"


def test_requirements_merge_pyproject_and_requirements_txt(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "main.py": "",
            "pyproject.toml": '[project]\nname = "demo"\n'
            'dependencies = ["a>=1", "b", "PulsarFunc>=0.1"]\n',
            "requirements.txt": "# comment\n\nb\nc==2  # pinned\n",
        },
    )
    plan = make_plan(BuildOptions(path=tmp_path, tag="t"), revision="abc123")
    assert plan.requirements == ("a>=1", "b", "c==2")
    assert plan.title == "demo"
    assert plan.labels["org.opencontainers.image.revision"] == "abc123"
    assert plan.labels["io.pulsarfunc.runtime.version"]


def test_pulsarfunc_with_the_otel_extra_brings_opentelemetry_into_the_image(
    tmp_path: Path,
) -> None:
    _write(
        tmp_path,
        {
            "main.py": "",
            "pyproject.toml": '[project]\nname = "demo"\n'
            'dependencies = ["pulsarfunc[otel]>=0.1"]\n',
            "requirements.txt": "requests\nPulsarFunc\n",
        },
    )
    plan = make_plan(BuildOptions(path=tmp_path, tag="t"))
    otel = [r for r in plan.requirements if r.startswith("opentelemetry")]
    # the extra as this pulsarfunc declares it (pyproject.toml's `otel`), without its marker
    declared = {
        r.partition(";")[0].replace(" ", "")
        for r in importlib.metadata.requires("pulsarfunc") or []
        if r.endswith('extra == "otel"')
    }
    assert {r.replace(" ", "") for r in otel} == declared
    assert {r.split("<")[0] for r in otel} == {
        "opentelemetry-api",
        "opentelemetry-sdk",
        "opentelemetry-exporter-otlp-proto-http",
    }
    assert plan.requirements == (*otel, "requests")  # pulsarfunc itself: in the base image


def test_extras_are_expanded_from_pulsarfuncs_own_declaration() -> None:
    declared = [
        "pulsar-client<4,>=3.5",
        'opentelemetry-sdk<2,>=1.35; extra == "otel"',
        'pulsarfunc[otel]; extra == "dev"',
        'pytest>=8; extra == "dev"',
    ]
    extras = ["otel", "dev"]
    assert without_runtime(["a", "pulsarfunc"], declared, extras) == ("a",)
    assert without_runtime(["pulsarfunc[otel]"], declared, extras) == (
        "opentelemetry-sdk<2,>=1.35",
    )
    assert without_runtime(["pulsarfunc[dev]", "--pre"], declared, extras) == (
        "pytest>=8",
        "opentelemetry-sdk<2,>=1.35",
        "--pre",
    )
    with pytest.raises(PlanError, match="no extra 'otle'") as info:
        without_runtime(["pulsarfunc[otle]"], declared, extras)
    assert "pulsarfunc[otel]" in info.value.hint


@pytest.mark.parametrize(
    ("line", "found"),
    [("-e ./lib", "'-e'"), ("./wheels/x.whl", "local path"), ("-r other.txt", "'-r'")],
)
def test_unsupported_requirement_lines_are_user_errors(
    tmp_path: Path, line: str, found: str
) -> None:
    _write(tmp_path, {"main.py": "", "requirements.txt": f"six\n{line}\n"})
    with pytest.raises(PlanError, match=r"requirements\.txt:2") as info:
        make_plan(BuildOptions(path=tmp_path, tag="t"))
    assert found in str(info.value)


@pytest.mark.parametrize(
    ("path", "handler", "message"),
    [
        ("missing", None, "does not exist"),
        ("notes.txt", None, "not a Python file"),
        ("fn.py", "mod:handler", "single file"),
        (".", "nope:handler", "module 'nope' not found"),
        (".", "bad handler", "not of the form"),
    ],
)
def test_bad_inputs_are_plan_errors(
    tmp_path: Path, path: str, handler: str | None, message: str
) -> None:
    _write(tmp_path, {"fn.py": "", "notes.txt": ""})
    with pytest.raises(PlanError, match=message):
        make_plan(BuildOptions(path=tmp_path / path, tag="t", handler=handler))


def test_file_modes_are_normalised(tmp_path: Path) -> None:
    _write(tmp_path, {"main.py": "", "run.sh": "#!/bin/sh\n"})
    (tmp_path / "run.sh").chmod(0o775)
    (tmp_path / "main.py").chmod(0o600)
    modes = {f.dest: f.mode for f in make_plan(BuildOptions(path=tmp_path, tag="t")).files}
    assert modes == {"app/main.py": 0o644, "app/run.sh": 0o755}


@pytest.mark.parametrize("tag", ["fn", "fn:dev", "127.0.0.1:5000/team/fn:1.0", "a.b/c_d-e:V1.2"])
def test_valid_tags(tmp_path: Path, tag: str) -> None:
    _write(tmp_path, {"fn.py": ""})
    assert make_plan(BuildOptions(path=tmp_path / "fn.py", tag=tag)).options.tag == tag


@pytest.mark.parametrize("tag", ["", "MyFunc", "fn:", "fn:has space", "-fn", "fn/"])
def test_invalid_tags_are_plan_errors(tmp_path: Path, tag: str) -> None:
    _write(tmp_path, {"fn.py": ""})
    with pytest.raises(PlanError, match="not a valid image name"):
        make_plan(BuildOptions(path=tmp_path / "fn.py", tag=tag))


def test_fastavro_goes_into_an_image_only_when_the_function_uses_avro(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "handler.py").write_text("def handler(x: bytes) -> bytes:\n    return x\n")
    assert make_plan(BuildOptions(path=plain, tag="t")).requirements == ()
    for name, text in [
        ("config.yaml", "customSchemaInputs: {in: avro}\n"),
        ("handler.py", "from pulsar.schema import AvroSchema\n"),
    ]:
        fn = tmp_path / name.replace(".", "-")
        fn.mkdir()
        (fn / "handler.py").write_text("def handler(x: bytes) -> bytes:\n    return x\n")
        (fn / name).write_text(text + ((fn / name).read_text() if name == "handler.py" else ""))
        assert make_plan(BuildOptions(path=fn, tag="t")).requirements == (AVRO_REQUIREMENT,)
        (fn / "requirements.txt").write_text("fastavro==1.13.1\n")  # listed: kept as listed
        assert make_plan(BuildOptions(path=fn, tag="t")).requirements == ("fastavro==1.13.1",)


def test_the_counter_example_gets_the_state_client_and_a_plain_function_does_not() -> None:
    counter = make_plan(BuildOptions(path=EXAMPLES / "counter", tag="t"))
    assert [r.split("<")[0].split(">")[0] for r in counter.requirements] == [
        "apache-bookkeeper-client"
    ]
    plain = make_plan(BuildOptions(path=EXAMPLES / "exclaim", tag="t"))
    assert not any("bookkeeper" in r for r in plain.requirements)
