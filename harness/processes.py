"""Process helpers for tests that start real servers.

Every process is started in its own session (and so its own process group), so that
cleanup can kill the whole group and no orphans outlive a test.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import requests

T = TypeVar("T")


def find_binary(name: str) -> Path:
    """Path of a Debian tool's binary (often in /usr/sbin, off PATH); one line if it is missing."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError(f"{name} not found; on Debian: apt-get install {name}")
    return Path(found)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago (the OS picks it; a tiny race remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on ``host:port`` (checked by binding it briefly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    interval: float = 0.05,
    description: str = "condition",
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll ``predicate`` until it returns a truthy value, which is returned.

    Exceptions listed in ``retry_on`` count as "not yet" (the last one is chained to the
    ``TimeoutError`` so a failure says why); any other exception propagates at once,
    which lets a predicate give up early, e.g. when the awaited process has died.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = predicate()
        except retry_on as exc:
            last_exc = exc
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout:.1f}s waiting for {description}"
            ) from last_exc
        time.sleep(interval)


def _parents() -> dict[int, int]:
    """Every process's parent, from one scan of /proc (works across sessions and users)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # process vanished meanwhile
        # Field 2 (comm) may contain spaces/parens: parse after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
    return parents


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``, found by scanning /proc."""
    return [child for child, parent in _parents().items() if parent == pid]


def descendants_of(pid: int) -> list[int]:
    """All descendants of ``pid`` (children first-level first), from one scan of /proc.

    One scan, not one per process: on a busy machine with many processes a scan per level
    took seconds, long enough to delay a fault a test injects.
    """
    parents = _parents()
    found: list[int] = []
    queue = [pid]
    while queue:
        parent = queue.pop(0)
        kids = [child for child, of in parents.items() if of == parent]
        found.extend(kids)
        queue.extend(kids)
    return found


def process_state(pid: int) -> str | None:
    """Kernel state letter of ``pid`` (``R``, ``S``, ``T`` = stopped, ``Z``...), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()[0]


def start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` (clock ticks since boot), or None if it is gone.

    A (pid, start time) pair identifies a process even if the pid is later reused.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2 :].split()[19])


def snapshot(pids: Sequence[int]) -> dict[int, int]:
    """Map each live pid to its start time, so it can be signalled later without pid-reuse risk."""
    result = {}
    for pid in pids:
        started = start_time(pid)
        if started is not None:
            result[pid] = started
    return result


def signal_pids(pids: Sequence[int] | Mapping[int, int], sig: int) -> None:
    """Send ``sig`` to each pid, ignoring ones that already exited.

    Given a ``snapshot`` mapping, pids whose start time changed (reused pids) are skipped.
    """
    for pid in pids:
        if isinstance(pids, Mapping) and start_time(pid) != pids[pid]:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def run_as_kwargs(user: str | None) -> dict[str, Any]:
    """Popen keyword arguments that drop root privileges to ``user`` (empty dict for None).

    Uses the user's real supplementary groups so that root's group 0 does not leak.
    """
    if user is None:
        return {}
    try:
        pw = pwd.getpwnam(user)
    except KeyError as exc:
        raise RuntimeError(f"OS user {user!r} does not exist") from exc
    groups = os.getgrouplist(user, pw.pw_gid)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": groups}


def service_user() -> str | None:
    """OS user to run PostgreSQL/PgBouncer as: ``postgres`` when we are root, else ourselves."""
    return "postgres" if os.geteuid() == 0 else None


def chown_for(path: Path, user: str | None) -> None:
    """Give ``path`` to ``user`` (no-op for None), so a dropped-privilege server can use it."""
    if user is None:
        return
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)


def _kill_group_and(pgid: int, extra: Mapping[int, int] | None = None) -> None:
    """SIGKILL a process group and some extra pids; safe to call when they are already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    signal_pids(extra or {}, signal.SIGKILL)


class StartedResource:
    """`with` support for helpers that have `start()` and `cleanup()` (clusters, PgBouncer).

    A failed start cleans up at once: `__exit__` does not run when `__enter__` raises.
    """

    def start(self) -> Self:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


class ServerProcess:
    """A long-running child process (server under test) whose output goes to a log file.

    Started in a new session; ``terminate``/``kill``/``__exit__`` signal the whole
    process group and then SIGKILL any leftovers, including descendants that moved
    to their own sessions (as PostgreSQL backends do). Without ``log_path`` a temp log
    is used, kept after ``terminate`` (so ``log_text`` still works) and deleted by ``__exit__``.
    """

    def __init__(
        self,
        args: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        user: str | None = None,
    ) -> None:
        self.args = [os.fspath(a) for a in args]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.user = user
        #: True when we made the log file ourselves; ``__exit__`` then deletes it.
        self.owns_log = log_path is None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="server-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., ServerProcess] | None = None

    @property
    def pid(self) -> int:
        """Pid of the started process (raises if not started)."""
        if self.proc is None:
            raise RuntimeError("process not started")
        return self.proc.pid

    def start(self) -> Self:
        """Start the process; returns self so ``ServerProcess(...).start()`` chains."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("process already running")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **run_as_kwargs(self.user),
            )
        # Safety net: kill the group at interpreter exit / GC if nobody cleaned up.
        self._finalizer = weakref.finalize(self, _kill_group_and, self.proc.pid)
        return self

    def is_running(self) -> bool:
        """True while the main process has not exited."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit code once exited (negative = killed by that signal), else None."""
        return None if self.proc is None else self.proc.poll()

    def log_text(self) -> str:
        """Everything the process wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        """Last ``lines`` lines of the log, for error messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_http_ok(
        self, url: str, timeout: float = 30.0, interval: float = 0.1
    ) -> requests.Response:
        """Poll ``url`` until it answers 2xx; fail early (with the log) if the process dies."""

        def probe() -> requests.Response | None:
            if not self.is_running():
                raise RuntimeError(
                    f"process exited with {self.returncode} before {url} answered; log tail:\n"
                    f"{self.log_tail()}"
                )
            resp = requests.get(url, timeout=min(2.0, max(timeout, 0.1)))
            return resp if resp.ok else None

        try:
            return wait_for(
                probe,
                timeout,
                interval,
                description=f"HTTP 2xx from {url}",
                retry_on=(requests.RequestException,),
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; log tail:\n{self.log_tail()}") from exc.__cause__

    def wait_exit(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for the main process to exit; return its code or None."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Send ``sig`` to the main process, wait, then SIGKILL whatever is left; return exit code.

        Only the main process gets ``sig`` (servers like PostgreSQL shut their children
        down themselves); its group and any descendants seen are SIGKILLed afterwards.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            seen = snapshot(descendants_of(self.proc.pid))
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            if self.wait_exit(timeout) is None:
                seen.update(snapshot(descendants_of(self.proc.pid)))
                self._hard_kill(seen)
                self.proc.wait()
            else:
                self._hard_kill(seen)
        else:
            self._hard_kill({})
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the process, its group and its descendants at once; return exit code."""
        if self.proc is None:
            return None
        self._hard_kill(snapshot(descendants_of(self.proc.pid)))
        self.proc.wait()
        return self.proc.returncode

    def _hard_kill(self, extra: Mapping[int, int]) -> None:
        assert self.proc is not None
        # Continue stopped processes so a frozen tree dies (and gets reaped) promptly.
        if self.proc.poll() is None:
            signal_pids([self.proc.pid], signal.SIGCONT)
        signal_pids(extra, signal.SIGCONT)
        _kill_group_and(self.proc.pid, extra)
        if self._finalizer is not None:
            self._finalizer.detach()

    def __enter__(self) -> Self:
        if self.proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.terminate()
        if self.owns_log:
            self.log_path.unlink(missing_ok=True)
