"""Workspace names: validated, and always resolved inside the workspace root.

Names and paths only: never touches the database, the bus or a process.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")
MAX_DEPTH = 6


class BadWorkspace(ValueError):
    """The name is not acceptable; the message says why and what to do."""


def normalize(name: str, root: Path) -> str:
    """The workspace's canonical relative name, or BadWorkspace.

    Accepts `org/repo/task` (1 to 6 segments of letters, digits, `.`, `_`, `-`, not
    starting with `-` or `.`), or an absolute path inside `root`.
    """
    if "\x00" in name:
        raise BadWorkspace("contains a NUL byte")
    if not name.strip():
        raise BadWorkspace("must not be empty; use a name such as core/app/fix-login")
    if name.startswith("/"):
        root = real_root(root)
        path = Path(name).resolve()
        if not path.is_relative_to(root) or path == root:
            raise BadWorkspace(
                f"{name!r} is outside the workspace root {root}; use a relative name"
            )
        name = path.relative_to(root).as_posix()
    parts = name.split("/")
    if len(parts) > MAX_DEPTH:
        raise BadWorkspace(f"has {len(parts)} levels; at most {MAX_DEPTH} (e.g. org/repo/task)")
    for part in parts:
        if part in ("", ".", ".."):
            raise BadWorkspace(f"{name!r} has an empty, '.' or '..' segment")
        if part.startswith("-"):
            raise BadWorkspace(
                f"segment {part!r} starts with '-', which a command could read as an option"
            )
        if not SEGMENT.fullmatch(part):
            raise BadWorkspace(
                f"segment {part!r} may hold only letters, digits, '.', '_' and '-' (at most 100)"
            )
    return "/".join(parts)


def resolve(name: str, root: Path, *, create: bool = True) -> Path:
    """The directory of workspace `name` (already normalized), kept inside `root`.

    A symlink anywhere on the way that leads outside the root is refused.
    """
    root = real_root(root)
    found = plain_directory(root, name)
    if found is not None:
        return found
    path = (root / name).resolve()
    if not path.is_relative_to(root) or path == root:
        raise BadWorkspace(f"{name!r} resolves to {path}, outside the workspace root {root}")
    if create:
        path.mkdir(parents=True, exist_ok=True)
        # re-check after creation: a symlink may have been followed on the way
        if not path.resolve().is_relative_to(root):
            raise BadWorkspace(f"{name!r} escapes the workspace root through a symlink")
    return path


def plain_directory(root: Path, name: str) -> Path | None:
    """`root/name` when every segment of `name` is an existing directory that is not a
    symlink: then it is inside the root with nothing to resolve (one `lstat` a segment,
    where resolving the whole path costs several times that in Python). None otherwise,
    and `resolve` takes the long way: resolving, creating, checking again. The root is
    checked too: made a symlink since it was resolved, it would lead elsewhere."""
    paths = [str(root)]
    for part in name.split("/"):
        paths.append(f"{paths[-1]}/{part}")
    try:
        if all(stat.S_ISDIR(os.lstat(p).st_mode) for p in paths):
            return Path(paths[-1])
    except OSError:
        pass
    return None


_REAL_ROOTS: dict[Path, Path] = {}


def real_root(root: Path) -> Path:
    """`root` with its symlinks resolved, worked out once per existing root: the workspace
    root is the hub's own directory, which does not move while it runs."""
    found = _REAL_ROOTS.get(root)
    if found is None:
        found = root.resolve()
        if found.is_dir():
            _REAL_ROOTS[root] = found
    return found
