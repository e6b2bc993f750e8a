"""A throwaway HAProxy (Debian's package) in front of a few servers on 127.0.0.1.

Configured as a careful production load balancer in front of this service: health checks of
`GET /api/health/ready` expecting 200, every `inter` with `fall`/`rise`, keep-alive to clients,
connection reuse to servers, and no retries and no redispatch, so that a request the server
loses is a failed request for the client (the service's drain must make retries unnecessary).
Its log goes to its own stdout (`log_text`); server states come from the admin socket.
Needs Debian's ``haproxy`` package (``apt-get install haproxy``).
"""

from __future__ import annotations

import csv
import shutil
import signal
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from .processes import ServerProcess, StartedResource, find_binary, free_port, wait_for

HOST = "127.0.0.1"


class HAProxy(StartedResource):
    """HAProxy on a free 127.0.0.1 port balancing over `servers` (name -> port).

    `check_path`, `inter_s`, `fall` and `rise` configure the health checks; the defaults are
    the ones of issue 10 (`GET /api/health/ready`, 1 s, 2, 1).
    """

    backend = "service"

    def __init__(
        self,
        servers: Mapping[str, int],
        *,
        check_path: str = "/api/health/ready",
        inter_s: float = 1.0,
        fall: int = 2,
        rise: int = 1,
        port: int | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.binary = find_binary("haproxy")
        self.servers = dict(servers)
        self.check_path = check_path
        self.inter_s, self.fall, self.rise = inter_s, fall, rise
        self.port = port if port is not None else free_port(HOST)
        self.start_timeout = start_timeout
        self.base_dir = Path(tempfile.mkdtemp(prefix="haproxy-"))
        self.config_path = self.base_dir / "haproxy.cfg"
        self.socket_path = self.base_dir / "admin.sock"
        self.log_path = self.base_dir / "haproxy.log"
        self._process: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def config_text(self) -> str:
        inter_ms = round(self.inter_s * 1000)
        servers = "\n".join(
            f"    server {name} {HOST}:{port} check" for name, port in self.servers.items()
        )
        return f"""\
global
    maxconn 8192
    stats socket {self.socket_path} mode 600 level admin
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    option http-keep-alive
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 30s
    timeout check 1s
    retries 0
    no option redispatch

frontend web
    bind {HOST}:{self.port}
    default_backend service

backend service
    balance roundrobin
    option httpchk GET {self.check_path}
    http-check expect status 200
    http-reuse safe
    default-server inter {inter_ms}ms fall {self.fall} rise {self.rise}
{servers}
"""

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.is_running()

    def start(self) -> Self:
        """Write the configuration, check it, start HAProxy and wait until it answers."""
        if self.is_running:
            return self
        self.config_path.write_text(self.config_text())
        self._process = ServerProcess(
            [str(self.binary), "-db", "-f", str(self.config_path)],
            cwd=self.base_dir,
            log_path=self.log_path,
        ).start()
        process = self._process

        def ready() -> bool:
            if not process.is_running():
                raise RuntimeError(
                    f"haproxy exited with {process.returncode}; log:\n{process.log_tail()}"
                )
            return bool(self.states())

        wait_for(
            ready,
            self.start_timeout,
            description="HAProxy's admin socket",
            retry_on=(OSError,),
        )
        return self

    def command(self, line: str) -> str:
        """One command on the admin socket (`show stat`, `show servers state`...)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> list[dict[str, str]]:
        """`show stat` as rows (pxname, svname, status, stot, hrsp_5xx, ...)."""
        text = self.command("show stat").lstrip("# ")
        return [row for row in csv.DictReader(text.splitlines()) if row.get("pxname")]

    def states(self) -> dict[str, str]:
        """Status of each backend server: `UP`, `DOWN`, `UP 1/2` (going down), `no check`..."""
        return {
            row["svname"]: row["status"]
            for row in self.stats()
            if row["pxname"] == self.backend and row["svname"] in self.servers
        }

    def wait_status(self, server: str, status: str, timeout: float) -> None:
        """Wait until `server`'s status is exactly `status` (e.g. `UP`, `DOWN`)."""
        wait_for(
            lambda: self.states().get(server) == status,
            timeout,
            interval=0.05,
            description=f"HAProxy to see {server} {status} (states: {self.states()})",
        )

    def log_text(self) -> str:
        """HAProxy's log so far: one line per request (`option httplog`) and state changes."""
        return self._process.log_text() if self._process is not None else ""

    def stop(self, timeout: float = 10.0) -> int | None:
        if self._process is None:
            return None
        code = self._process.terminate(signal.SIGTERM, timeout=timeout)
        self._process = None
        return code

    def cleanup(self) -> None:
        """Stop and delete the temp dir; safe to call more than once."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)


class TcpProxy(HAProxy):
    """HAProxy in `mode tcp` sending every connection to one server of `servers` at a time.

    It stands in for a DNS name or a virtual IP in front of a primary and its standby: `switch`
    moves the address to another server and ends the sessions of the others, as Patroni's
    HAProxy does once its `/primary` check marks the old leader down.
    """

    backend = "database"

    def __init__(self, servers: Mapping[str, int], active: str, *, port: int | None = None) -> None:
        super().__init__(servers, port=port)
        self.active = active

    def config_text(self) -> str:
        servers = "\n".join(
            f"    server {name} {HOST}:{port}" + ("" if name == self.active else " disabled")
            for name, port in self.servers.items()
        )
        return f"""\
global
    maxconn 4096
    stats socket {self.socket_path} mode 600 level admin
    log stdout format raw local0 info

defaults
    mode tcp
    log global
    retries 0
    timeout connect 1s
    timeout client 1h
    timeout server 1h

frontend database
    bind {HOST}:{self.port}
    default_backend database

backend database
{servers}
"""

    def switch(self, name: str, *, end_sessions: bool = True) -> None:
        """Send new connections to `name`; end every session with the others, as a moved VIP
        does (`end_sessions=False`: they stay where they are, as after a DNS flip)."""
        self.command(f"set server {self.backend}/{name} state ready")
        for other in self.servers:
            if other != name:
                self.command(f"set server {self.backend}/{other} state maint")
                if end_sessions:
                    self.command(f"shutdown sessions server {self.backend}/{other}")
        self.active = name
