"""A throwaway PgBouncer in transaction-pooling mode in front of a PostgreSQL server.

Used to prove the service works behind a transaction pooler: no session state survives
between transactions, and PgBouncer's defaults reject the libpq ``options`` startup
parameter (so per-connection ``-c statement_timeout=...`` must not be used).
Needs Debian's ``pgbouncer`` package (``apt-get install pgbouncer``).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import psycopg2
import psycopg2.extensions

from .processes import (
    ServerProcess,
    StartedResource,
    chown_for,
    find_binary,
    free_port,
    port_is_free,
    service_user,
    wait_for,
)

HOST = "127.0.0.1"


class PgBouncer(StartedResource):
    """PgBouncer on a free 127.0.0.1 port forwarding every database name to one server.

    Only the settings a test needs are written; everything else (notably
    ``ignore_startup_parameters``) stays at PgBouncer's defaults. Runs as the
    ``postgres`` OS user when we are root, because PgBouncer refuses to run as root.
    """

    def __init__(
        self,
        target_port: int,
        *,
        target_host: str = HOST,
        port: int | None = None,
        users: Sequence[str] = ("postgres",),
        pool_mode: str = "transaction",
        settings: Mapping[str, str] | None = None,
        start_timeout: float = 15.0,
        user: str | None = None,
    ) -> None:
        self.binary = find_binary("pgbouncer")
        self.target_host = target_host
        self.target_port = target_port
        self._port_fixed = port is not None
        self._port = port if port is not None else free_port(HOST)
        self.users = list(users)
        self.pool_mode = pool_mode
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        self.user = user if user is not None else service_user()
        self.base_dir = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        self.socket_dir = self.base_dir / "sock"
        self.ini_path = self.base_dir / "pgbouncer.ini"
        self.auth_path = self.base_dir / "userlist.txt"
        self.log_path = self.base_dir / "pgbouncer.log"
        self._process: ServerProcess | None = None
        #: Seconds the last ``start`` took until PgBouncer answered.
        self.timings: dict[str, float] = {}

    @property
    def port(self) -> int:
        """TCP port PgBouncer listens on (127.0.0.1)."""
        return self._port

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        """libpq/SQLAlchemy URL of ``database`` through the pooler."""
        return f"postgresql://{user}@{HOST}:{self._port}/{database}"

    def connect(
        self, database: str = "postgres", connect_timeout: int = 5, **kwargs: Any
    ) -> psycopg2.extensions.connection:
        """psycopg2 connection through the pooler (caller closes it)."""
        kwargs.setdefault("user", self.users[0])
        conn: psycopg2.extensions.connection = psycopg2.connect(
            host=HOST, port=self._port, dbname=database, connect_timeout=connect_timeout, **kwargs
        )
        return conn

    def config_text(self) -> str:
        """The generated pgbouncer.ini (wildcard database entry, trust auth)."""
        settings = {
            "listen_addr": HOST,
            "listen_port": str(self._port),
            "unix_socket_dir": str(self.socket_dir),
            "auth_type": "trust",  # no passwords, but users must be listed in auth_file
            "auth_file": str(self.auth_path),
            "admin_users": ",".join(self.users),
            "pool_mode": self.pool_mode,
            **self.settings,
        }
        lines = [
            "[databases]",
            f"* = host={self.target_host} port={self.target_port}",
            "",
            "[pgbouncer]",
            *(f"{key} = {value}" for key, value in settings.items()),
        ]
        return "\n".join(lines) + "\n"

    def _write_files(self) -> None:
        self.socket_dir.mkdir(exist_ok=True)
        self.ini_path.write_text(self.config_text())
        self.auth_path.write_text("".join(f'"{name}" ""\n' for name in self.users))
        self.log_path.touch()
        for path in (self.base_dir, self.socket_dir, self.ini_path, self.auth_path, self.log_path):
            chown_for(path, self.user)

    @property
    def is_running(self) -> bool:
        """True while the pgbouncer process is alive."""
        return self._process is not None and self._process.is_running()

    def start(self) -> Self:
        """Start PgBouncer and wait until its admin console answers."""
        if self.is_running:
            return self
        if not port_is_free(self._port, HOST):
            if self._port_fixed:
                raise RuntimeError(f"cannot start PgBouncer: {HOST}:{self._port} is in use")
            self._port = free_port(HOST)
        self._write_files()
        started = time.monotonic()
        self._process = ServerProcess(
            [str(self.binary), str(self.ini_path)],
            cwd=self.base_dir,
            log_path=self.log_path,
            user=self.user,
        ).start()
        process = self._process

        def ready() -> bool:
            if not process.is_running():
                raise _BouncerDied(f"pgbouncer exited with {process.returncode}")
            # PgBouncer only warns if it cannot bind TCP (it keeps its unix socket): fail fast.
            if "cannot listen on" in process.log_text():
                raise _BouncerDied(f"cannot listen on {HOST}:{self._port}")
            # The admin console answers without touching the backend server, and SHOW
            # VERSION proves it is our PgBouncer, not something else on this port.
            with contextlib.closing(self.connect("pgbouncer", connect_timeout=2)) as conn:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("SHOW VERSION")
                    row = cur.fetchone()
            return row is not None and "PgBouncer" in str(row[0])

        try:
            wait_for(
                ready,
                self.start_timeout,
                0.05,
                description="PgBouncer to accept connections",
                retry_on=(psycopg2.OperationalError,),
            )
        except (_BouncerDied, TimeoutError) as exc:
            process.terminate(signal.SIGKILL, timeout=5)
            self._process = None
            raise RuntimeError(
                f"PgBouncer on port {self._port} failed to start: {exc}; log tail:\n"
                f"{process.log_tail()}"
            ) from exc
        self.timings["start"] = time.monotonic() - started
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop PgBouncer now (SIGTERM; SIGINT waits for clients); SIGKILL after ``timeout``."""
        if self._process is None:
            return None
        code = self._process.terminate(signal.SIGTERM, timeout=timeout)
        self._process = None
        return code

    def log_text(self) -> str:
        """PgBouncer's log output so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cleanup(self) -> None:
        """Stop and delete the temp dir; safe to call more than once."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)


class _BouncerDied(Exception):
    """PgBouncer exited while we waited for it to become ready."""
