"""The old commit beside the new one: a git worktree of a baseline ref, and a way to run it.

`resolve()` names the commit and its worktree (the cases' names need the short sha);
`checkout()` adds that detached worktree under the temp dir (or reuses one already there at the
same commit) and removes it at exit. `Baseline.env()` puts the worktree's `.pkg` first on
PYTHONPATH, so that the same venv python imports the old `pulsarfunc`, not the editable install
of this tree; `checkout()` makes sure of that before any case runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import harness  # type: ignore[import-not-found]  # bench/ is on sys.path when run
from harness import Cleanup

# Where `python -m pulsarfunc run` gets its code: the package and the CLI module it runs.
_WHERE = "import pulsarfunc.cli as cli, pulsarfunc as p; print(p.__file__); print(cli.__file__)"


@dataclass(frozen=True)
class Baseline:
    ref: str  # as given
    sha: str
    short: str
    tree: Path  # the worktree

    def env(self) -> dict[str, str]:
        """The environment in which `python -m pulsarfunc` is the baseline's."""
        paths = [str(self.tree / ".pkg"), os.environ.get("PYTHONPATH", "")]
        return {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def _git(repo: Path, *args: str) -> str:
    return str(harness.sh("git", "-C", str(repo), *args))


def describe(repo: Path) -> str:
    """The short sha of HEAD, "+dirty" when tracked files have uncommitted changes."""
    try:
        short = _git(repo, "rev-parse", "--short", "HEAD")
        changes = _git(repo, "--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
    except RuntimeError:
        return "unknown (not a git checkout)"
    return short + ("+dirty" if changes else "")


def resolve(repo: Path, ref: str) -> Baseline:
    """The commit `ref` names in `repo`, and where its worktree goes; nothing is created."""
    try:
        sha = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except RuntimeError as exc:
        raise SystemExit(f"--baseline {ref}: not a commit of {repo}") from exc
    short = _git(repo, "rev-parse", "--short", sha)
    return Baseline(ref, sha, short, Path(tempfile.gettempdir()) / f"pulsarfunc-baseline-{sha}")


def checkout(repo: Path, baseline: Baseline, cleanup: Cleanup) -> None:
    """The worktree of `baseline` (removed at exit), whose `pulsarfunc` the venv python imports."""
    ref, sha, short, tree = baseline.ref, baseline.sha, baseline.short, baseline.tree
    _git(repo, "worktree", "prune")  # forget worktrees whose directory is gone
    if tree.exists():
        found = harness.sh("git", "-C", str(tree), "rev-parse", "HEAD", check=False)
        if found != sha:
            raise SystemExit(
                f"--baseline {ref}: {tree} exists but is not a worktree at {short} "
                f"(HEAD: {found or 'none'}); remove it (git worktree remove --force {tree})"
            )
        print(f"baseline {short}: reusing the worktree {tree}", flush=True)
    else:
        _git(repo, "worktree", "add", "--detach", str(tree), sha)

    def remove() -> None:  # --force: whatever the runs left in it goes too
        harness.sh("git", "-C", str(repo), "worktree", "remove", "--force", str(tree), check=False)

    cleanup.add(remove)
    _check_import(baseline)


def _check_import(baseline: Baseline) -> None:
    """Fail unless `python -m pulsarfunc` in `baseline.env()` is the worktree's code."""
    result = subprocess.run(
        [sys.executable, "-c", _WHERE],
        capture_output=True,
        text=True,
        env={**os.environ, **baseline.env()},
        check=False,
    )
    files = [Path(line).resolve() for line in result.stdout.splitlines()]
    tree = baseline.tree.resolve()
    if result.returncode != 0 or not files or not all(f.is_relative_to(tree) for f in files):
        found = ", ".join(map(str, files)) or result.stderr.strip()
        raise SystemExit(
            f"--baseline {baseline.ref}: with PYTHONPATH={baseline.env()['PYTHONPATH']}, "
            f"{sys.executable} imports pulsarfunc from {found or 'nowhere'}, not from "
            f"{tree}; does {baseline.short} have .pkg/pulsarfunc (a symlink to the root)?"
        )
