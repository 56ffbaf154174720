"""Real git repositories for tests and benchmarks, made where they are told."""

from __future__ import annotations

import subprocess
from pathlib import Path

IDENTITY = ["-c", "user.name=Test", "-c", "user.email=test@example.invalid"]


def git(repo: Path, *args: str) -> str:
    """Run git in `repo` (with a test identity); its stdout, stripped."""
    done = subprocess.run(
        ["git", *IDENTITY, "-C", str(repo), *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def make_repo(repo: Path, files: dict[str, str] | None = None) -> Path:
    """A repository at `repo` on `main` with one commit of `files` (default: a README and
    a pyproject.toml)."""
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q", "-b", "main")
    for name, text in (files or {"README.md": "# app\n", "pyproject.toml": "[project]\n"}).items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    return repo
