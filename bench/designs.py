"""The server designs compared side by side: gthread (before issue 10), from git, and this tree.

The gthread design is checked out by the bench itself (`git worktree add --detach`) into a temporary
folder, run with this venv's python, and removed at the end, so nothing of it enters this tree.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The last commit of the gthread design: 2 workers x 4 threads, preload, a WSGI fast path for
# health probes in front of Flask.
GTHREAD_REVISION = "ee7ba07"


@dataclass(frozen=True)
class Design:
    """One way of serving the service: a source tree with its own gunicorn.conf.py and floor."""

    key: str  # short name used in the results: "gthread" or "new"
    label: str
    root: Path
    revision: str

    @property
    def service(self) -> str:
        return f"{self.key}-service"

    @property
    def floor(self) -> str:
        return f"{self.key}-floor"


def this_tree() -> Design:
    label = "service.server.Worker (gevent + drain + head deadline), this tree"
    return Design("new", label, PROJECT_ROOT, _head())


@contextmanager
def gthread(revision: str, log: Callable[[str], None]) -> Iterator[Design | None]:
    """The gthread design checked out at `revision`; None (after saying why) if git cannot."""
    folder = Path(tempfile.mkdtemp(prefix="bench-gthread-"))
    folder.rmdir()  # git worktree add wants to create it
    added = _git("worktree", "add", "--detach", str(folder), revision)
    if added.returncode != 0:
        log(
            f"the gthread design skipped: cannot check out {revision} "
            f"({added.stderr.strip().splitlines()[-1:] or 'no git'}); only this tree is measured"
        )
        yield None
        return
    try:
        label = f"gthread x 4 threads, preload, WSGI fast path for probes, at {revision}"
        yield Design("gthread", label, folder, revision)
    finally:
        _git("worktree", "remove", "--force", str(folder))
        shutil.rmtree(folder, ignore_errors=True)
        _git("worktree", "prune")


def _head() -> str:
    result = _git("rev-parse", "--short", "HEAD")
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", *args],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return subprocess.CompletedProcess(["git", *args], 1, "", str(error))
