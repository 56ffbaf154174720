"""Where a hub keeps its files: `FLEETBUS_HOME` and what lives in it.

Every `fleetbus call` imports it: what only a home with a path too long for a socket
needs (hashlib, tempfile) is imported there.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import StartupError

# AF_UNIX paths are limited to 108 bytes on Linux; leave room for the NUL.
MAX_SOCKET_PATH = 100


def default_home(env: Mapping[str, str] = os.environ) -> Path:
    """`$FLEETBUS_HOME`, else `$XDG_STATE_HOME/fleetbus`, else `~/.local/state/fleetbus`."""
    if env.get("FLEETBUS_HOME"):
        return Path(env["FLEETBUS_HOME"]).expanduser().resolve()
    state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return (Path(state).expanduser() / "fleetbus").resolve()


def _private_dir(path: Path, what: str) -> None:
    """Create `path` with mode 0700, or check that an existing one is ours and private.
    Missing parents are created 0700 too (`mkdir(parents=True)` would leave them open to
    all: `fleetbus demo` made `$FLEETBUS_HOME` 0755 as the parent of its hub's home)."""
    try:
        for parent in reversed([p for p in path.parents if not p.exists()]):
            parent.mkdir(mode=0o700, exist_ok=True)
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.stat()
    except OSError as e:
        raise StartupError(f"cannot create {what} {path}: {e.strerror}") from e
    if st.st_uid != os.getuid():
        raise StartupError(
            f"{what} {path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}); "
            "set FLEETBUS_HOME to a directory of your own"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        path.chmod(0o700)


@dataclass(frozen=True)
class Home:
    """The files of one `FLEETBUS_HOME`."""

    root: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Home:
        return cls(default_home(env))

    @property
    def db(self) -> Path:
        return self.root / "fleetbus.db"

    @property
    def lock(self) -> Path:
        return self.root / "hub.lock"

    @property
    def spawn_lock(self) -> Path:
        return self.root / "spawn.lock"

    @property
    def log(self) -> Path:
        return self.root / "hub.log"

    @property
    def socket(self) -> Path:
        """`hub.sock` in the home, or a short private path under the temp dir when the
        home's path is too long for a Unix socket."""
        path = self.root / "hub.sock"
        if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
            return path
        import hashlib

        digest = hashlib.sha256(os.fsencode(self.root)).hexdigest()[:16]
        return self.socket_dir / f"{digest}.sock"

    @property
    def socket_dir(self) -> Path:
        path = self.root / "hub.sock"
        if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
            return self.root
        import tempfile

        return Path(tempfile.gettempdir()) / f"fleetbus-{os.getuid()}"

    def ensure(self) -> None:
        """Create the home (0700) and the socket's directory; refuse another user's."""
        _private_dir(self.root, "FLEETBUS_HOME")
        if self.socket_dir != self.root:
            _private_dir(self.socket_dir, "socket directory")
