"""A full disk under FLEETBUS_HOME (a small tmpfs): dispatch is refused with one clear line,
nothing is half-written, and everything works again when space returns.

Mounting needs root (CI runs as root); elsewhere the test is skipped, unless CI is set.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetbus.bus.errors import Refused
from fleetbus.testing.runner import Watch, dispatch, runner_hub, status

pytestmark = [pytest.mark.faults, pytest.mark.anyio]


@contextlib.contextmanager
def small_disk(size: str = "16m") -> Iterator[Path]:
    mount = Path(tempfile.mkdtemp(prefix="fb-disk-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        mount.rmdir()
        reason = f"cannot mount a tmpfs here: {done.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


def fill(path: Path) -> None:
    """Write to `path` until the disk has no room left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):  # big chunks, then the last bytes
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


async def test_a_full_disk_refuses_dispatch_clearly_and_recovers() -> None:
    with small_disk() as disk:
        home = disk / "home"
        async with runner_hub(home) as hub:
            watch = Watch(hub)
            first = await dispatch(hub, "echo before", "d/w/a")
            assert (await watch.completed(first.run_id)).status == "completed"

            filler = disk / "filler"
            fill(filler)
            with pytest.raises(Refused) as refused:
                await dispatch(hub, "echo during", "d/w/b")
            assert "is full" in refused.value.message and "free some space" in refused.value.message
            assert "\n" not in refused.value.message
            runs = (await status(hub, limit=100)).runs
            assert [r.run_id for r in runs] == [first.run_id]  # nothing half-written

            filler.unlink()
            after = await dispatch(hub, "echo after", "d/w/c")
            assert (await watch.completed(after.run_id)).status == "completed"
            assert len((await status(hub, limit=100)).runs) == 2
