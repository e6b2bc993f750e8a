"""Throwaway PostgreSQL clusters for fault-injection tests.

A test that stops, restarts or freezes a database must not touch the shared server,
so each ``TemporaryCluster`` gets its own data directory, TCP port and socket directory.
Durability is switched off (fsync etc.) because the data is thrown away anyway.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from .processes import (
    ServerProcess,
    StartedResource,
    chown_for,
    descendants_of,
    free_port,
    port_is_free,
    process_state,
    run_as_kwargs,
    service_user,
    signal_pids,
    snapshot,
    wait_for,
)

HOST = "127.0.0.1"
SUPERUSER = "postgres"

#: Signal the postmaster understands for each ``pg_ctl stop -m`` mode.
STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}

#: Settings that make a disposable cluster fast; durability is irrelevant here.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def _version_key(path: str) -> tuple[int, ...]:
    match = re.search(r"/postgresql/([\d.]+)/bin", path)
    return tuple(int(p) for p in match.group(1).split(".")) if match else (0,)


def find_pg_bindir() -> Path:
    """Locate the PostgreSQL server binaries (initdb, postgres).

    Order: ``$PG_BINDIR``; highest ``/usr/lib/postgresql/*/bin`` (Debian); ``pg_config
    --bindir``; ``initdb`` on ``$PATH``. Debian keeps initdb off PATH, hence the search.
    """
    candidates: list[str] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(os.environ["PG_BINDIR"])
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            )
            candidates.append(out.stdout.strip())
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for candidate in candidates:
        path = Path(candidate)
        if (path / "initdb").is_file() and (path / "postgres").is_file():
            return path
    raise RuntimeError(
        "PostgreSQL server binaries not found (looked in $PG_BINDIR, /usr/lib/postgresql/*/bin, "
        "pg_config --bindir, PATH); on Debian: apt-get install postgresql"
    )


class TemporaryCluster(StartedResource):
    """A private PostgreSQL server in a temp dir, on a free 127.0.0.1 port, with trust auth.

    Runs as the ``postgres`` OS user when we are root (PostgreSQL refuses root).
    ``freeze``/``thaw`` SIGSTOP/SIGCONT the whole server so it accepts TCP connections
    in the kernel but never answers, which is how a hung database looks to a client.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
        bindir: str | os.PathLike[str] | None = None,
        start_timeout: float = 30.0,
        user: str | None = None,
    ) -> None:
        self.bindir = Path(bindir) if bindir is not None else find_pg_bindir()
        self._port_fixed = port is not None
        self._port = port if port is not None else free_port(HOST)
        self.settings = {**FAST_SETTINGS, **(settings or {})}
        self.start_timeout = start_timeout
        self.user = user if user is not None else service_user()
        self.base_dir = Path(tempfile.mkdtemp(prefix="pgcluster-"))
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "sock"
        self.log_path = self.base_dir / "server.log"
        self.socket_dir.mkdir()
        self.log_path.touch()
        for path in (self.base_dir, self.socket_dir, self.log_path):
            chown_for(path, self.user)
        self._server: ServerProcess | None = None
        self._frozen: dict[int, int] = {}
        #: Seconds taken by the last ``initdb``, ``start``, ``restart`` and ``stop`` calls.
        self.timings: dict[str, float] = {}

    # ----------------------------------------------------------------- addressing
    @property
    def port(self) -> int:
        """TCP port the server listens on (127.0.0.1)."""
        return self._port

    @property
    def host(self) -> str:
        """Host the server listens on."""
        return HOST

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy/libpq URL, e.g. ``postgresql://postgres@127.0.0.1:PORT/postgres``."""
        return f"postgresql://{SUPERUSER}@{HOST}:{self._port}/{database}"

    def connect(
        self, database: str = "postgres", connect_timeout: int = 5, **kwargs: Any
    ) -> psycopg2.extensions.connection:
        """Open a psycopg2 connection (caller closes it); the timeout avoids hanging on a freeze."""
        conn: psycopg2.extensions.connection = psycopg2.connect(
            host=HOST,
            port=self._port,
            user=SUPERUSER,
            dbname=database,
            connect_timeout=connect_timeout,
            **kwargs,
        )
        return conn

    # ------------------------------------------------------------------ lifecycle
    @property
    def is_initialized(self) -> bool:
        """True once initdb has created the data directory."""
        return (self.data_dir / "PG_VERSION").is_file()

    @property
    def is_running(self) -> bool:
        """True while the postmaster process exists (it may be frozen)."""
        return self._server is not None and self._server.is_running()

    def initdb(self) -> None:
        """Create the data directory (done automatically by the first ``start``)."""
        started = time.monotonic()
        result = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--locale=C",
                "--encoding=UTF8",
                "--no-sync",
            ],
            cwd=self.base_dir,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **run_as_kwargs(self.user),
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        self.timings["initdb"] = time.monotonic() - started

    def _server_args(self) -> list[str]:
        settings = {
            "port": str(self._port),
            "listen_addresses": HOST,
            "unix_socket_directories": str(self.socket_dir),
            "logging_collector": "off",
            **self.settings,
        }
        args = [str(self.bindir / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        return args

    def start(self) -> Self:
        """Start the server (initdb first if needed) and wait until it accepts connections."""
        if self.is_running:
            return self
        if self._port_fixed and not port_is_free(self._port, HOST):
            raise RuntimeError(f"cannot start PostgreSQL: {HOST}:{self._port} is in use")
        if not self.is_initialized:
            self.initdb()
        started = time.monotonic()
        for attempt in range(3):
            if not port_is_free(self._port, HOST):
                if self._port_fixed:
                    raise RuntimeError(f"cannot start PostgreSQL: {HOST}:{self._port} is in use")
                self._port = free_port(HOST)
            try:
                self._start_once()
                break
            except RuntimeError as exc:
                port_taken = "Address already in use" in str(exc)
                if self._port_fixed or not port_taken or attempt == 2:
                    raise
                self._port = free_port(HOST)  # lost a race for the port: try another
        self.timings["start"] = time.monotonic() - started
        return self

    def _start_once(self) -> None:
        offset = self.log_path.stat().st_size
        self._server = ServerProcess(
            self._server_args(),
            cwd=self.base_dir,
            log_path=self.log_path,
            user=self.user,
            env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
        ).start()
        server = self._server

        def ready() -> bool:
            if not server.is_running():
                raise _ServerDied("postmaster exited")
            # postmaster.pid line 8 says "ready" once connections are accepted (as pg_ctl -w
            # checks); requiring it and our data_directory guards against probing another
            # server that happens to listen on the same port.
            lines = _read_lines(self.data_dir / "postmaster.pid")
            if len(lines) < 8 or lines[0].strip() != str(server.pid):
                return False
            if lines[7].strip() not in ("ready", "standby"):  # a hot standby accepts reads
                return False
            with contextlib.closing(self.connect(connect_timeout=2)) as conn, conn.cursor() as cur:
                cur.execute("SHOW data_directory")
                row = cur.fetchone()
            if row is None or Path(row[0]).resolve() != self.data_dir.resolve():
                raise _ServerDied(f"port {self._port} is answered by another server ({row})")
            return True

        try:
            wait_for(
                ready,
                self.start_timeout,
                0.05,
                description="PostgreSQL to accept connections",
                retry_on=(psycopg2.OperationalError,),
            )
        except (_ServerDied, TimeoutError) as exc:
            server.terminate(signal.SIGQUIT, timeout=5)
            self._server = None
            new_log = self.log_path.read_text(errors="replace")[offset:]
            tail = "\n".join(new_log.splitlines()[-30:])
            what = f"failed ({exc})" if isinstance(exc, _ServerDied) else "did not become ready"
            raise RuntimeError(
                f"PostgreSQL on port {self._port} {what} within {self.start_timeout}s "
                f"(exit code {server.returncode}); server log tail:\n{tail}"
            ) from exc

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop like ``pg_ctl stop -m MODE`` (smart/fast/immediate); SIGKILL after ``timeout``."""
        if mode not in STOP_SIGNALS:
            raise ValueError(f"mode must be one of {sorted(STOP_SIGNALS)}, not {mode!r}")
        if self._server is None:
            return
        if self._frozen:
            self.thaw()
        started = time.monotonic()
        self._server.terminate(STOP_SIGNALS[mode], timeout=timeout)
        self._server = None
        self.timings["stop"] = time.monotonic() - started

    def crash(self) -> None:
        """SIGKILL the postmaster and every backend at once, as a machine that dies would."""
        if self._server is None:
            return
        self._server.kill()
        self._server = None

    def restart(self, mode: str = "fast") -> Self:
        """Stop and start again on the same port; data is kept."""
        started = time.monotonic()
        self.stop(mode)
        self.start()
        self.timings["restart"] = time.monotonic() - started
        return self

    def cleanup(self) -> None:
        """Thaw, stop and delete everything; safe to call more than once."""
        try:
            if self._frozen:
                self.thaw()
            self.stop("fast", timeout=15)
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    # ------------------------------------------------------------- fault injection
    def postmaster_pid(self) -> int | None:
        """Pid from ``postmaster.pid`` (None when the server is not running)."""
        lines = _read_lines(self.data_dir / "postmaster.pid")
        if not lines or not lines[0].strip().isdigit():
            return None
        pid = int(lines[0])
        return pid if process_state(pid) is not None else None

    def server_pids(self) -> list[int]:
        """Postmaster pid followed by all its descendants (backends, checkpointer, ...)."""
        pid = self.postmaster_pid()
        return [] if pid is None else [pid, *descendants_of(pid)]

    def freeze(self) -> list[int]:
        """SIGSTOP the postmaster, then all its descendants; return the frozen pids.

        The postmaster goes first so it cannot fork new backends meanwhile; children
        are rescanned until no new ones appear. Clients then hang (TCP still accepts).
        """
        postmaster = self.postmaster_pid()
        if postmaster is None:
            raise RuntimeError("cannot freeze: server is not running")
        os.kill(postmaster, signal.SIGSTOP)
        frozen = snapshot([postmaster])
        while True:
            new = [p for p in descendants_of(postmaster) if p not in frozen]
            if not new:
                break
            signal_pids(new, signal.SIGSTOP)
            frozen.update(snapshot(new))
        self._frozen = frozen
        wait_for(
            lambda: all(process_state(p) in ("T", "Z", None) for p in frozen),
            timeout=5,
            description="server processes to stop",
        )
        return list(frozen)

    def thaw(self) -> None:
        """SIGCONT everything ``freeze`` stopped (children first, postmaster last)."""
        postmaster = self.postmaster_pid()
        children = {p: t for p, t in self._frozen.items() if p != postmaster}
        signal_pids(children, signal.SIGCONT)
        if postmaster is not None:
            # Also resume any descendant we did not record, then the postmaster itself.
            signal_pids(descendants_of(postmaster), signal.SIGCONT)
            signal_pids([postmaster], signal.SIGCONT)
        self._frozen = {}

    @property
    def is_frozen(self) -> bool:
        """True while the postmaster is stopped by ``freeze``."""
        postmaster = self.postmaster_pid()
        return bool(self._frozen) and postmaster is not None and process_state(postmaster) == "T"

    # --------------------------------------------------------------------- SQL
    def psql(
        self,
        query: str | sql.Composable,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        database: str = "postgres",
        connect_timeout: int = 5,
    ) -> list[tuple[Any, ...]] | None:
        """Run one statement in autocommit mode; return its rows, or None if it has none."""
        conn = self.connect(database, connect_timeout=connect_timeout)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description is not None else None
        finally:
            conn.close()

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its URL."""
        self.psql(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting its sessions (FORCE)."""
        self.psql(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    # --------------------------------------------------------------------- logs
    def log_text(self) -> str:
        """Whole server log (stderr of every start)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _read_lines(path: Path) -> list[str]:
    """Lines of a file that may be missing or half-written (returns [] then)."""
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


class _ServerDied(Exception):
    """The postmaster exited while we waited for it to become ready."""
