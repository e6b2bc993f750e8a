"""The worst day under traffic (issue 10): probe latency while the server is pushed three ways.

Each scenario runs against one design's service while two probers (faults.Prober: a new
connection per request, as a kubelet does) ask /api/health/live and /api/health/ready 20 times a
second each with a 1 s client timeout, Kubernetes' default `timeoutSeconds`:

- frozen: the cluster SIGSTOPped while wrk's 200 connections call /api/db/test;
- slow_clients: 500 connections that send one header line every 2 s (reopened when the server
  closes them) and 1,000 idle keep-alive connections;
- saturation: wrk's 200 connections on /api/db/test with a healthy database.
"""

from __future__ import annotations

import contextlib
import math
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import requests

from bench.faults import Prober, summarise_probes
from bench.load import run_wrk
from bench.servers import Gunicorn
from harness.pgcluster import TemporaryCluster

PROBES = ("/api/health/live", "/api/health/ready")
PROBE_PERIOD_S = 0.05
PROBE_TIMEOUT_S = 1.0
CLIENTS = 200
SLOW_CONNECTIONS = 500
IDLE_CONNECTIONS = 1000
HEADER_LINE_EVERY_S = 2.0
IDLE_ANSWERS_WAIT_S = 10.0
ANSWER_MARGIN_S = 0.5  # every /api/db/test must be answered within DB_DEADLINE_S plus this
SCENARIOS = ("frozen", "slow_clients", "saturation")


def raise_open_files_limit(wanted: int = 8192) -> int:
    """Lift RLIMIT_NOFILE towards `wanted` (children, the servers included, inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run_scenario(
    name: str,
    server: Gunicorn,
    cluster: TemporaryCluster,
    auth: dict[str, str],
    duration_s: float,
    deadline_s: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Run one scenario against `server` for `duration_s`; return the probes' and load's stats.

    wrk's timeout is DB_DEADLINE_S + 0.5 s rounded up to whole seconds (wrk's unit): its
    `timeouts` then count, every 2 s, each connection whose request has waited longer.
    """
    _recovered(server, auth, time.monotonic())  # a previous scenario's effects are over
    result: dict[str, Any] = {"duration_s": duration_s}
    holder = None
    if name == "frozen":
        cluster.freeze()
    if name == "slow_clients":
        holder = HeldConnections(server.port, SLOW_CONNECTIONS, IDLE_CONNECTIONS)
        holder.start()
        holder.opened.wait(30)  # probes measure a server that holds them all
    origin, stop = time.monotonic(), threading.Event()
    probers = [
        Prober(server.base_url, path, {}, origin, stop, PROBE_PERIOD_S, PROBE_TIMEOUT_S)
        for path in PROBES
    ]
    for prober in probers:
        prober.start()
    thawed_at = None
    try:
        if name in ("frozen", "saturation"):
            load = run_wrk(
                f"{server.base_url}/api/db/test",
                duration_s,
                CLIENTS,
                threads=2,
                headers=auth,
                timeout_s=math.ceil(deadline_s + ANSWER_MARGIN_S),
                count_answers=True,
            )
            result["db_test"] = load.to_dict()
        else:
            time.sleep(duration_s)
    finally:
        stop.set()
        if holder is not None:
            holder.halt.set()
            holder.join(10)
            result["held"] = holder.summary()
        if cluster.is_frozen:
            cluster.thaw()
            thawed_at = time.monotonic()
        for prober in probers:
            prober.join(PROBE_TIMEOUT_S + 1)
    result["probes"] = {p.name.split()[-1]: summarise_probes(p.samples) for p in probers}
    result["samples"] = [asdict(s) for p in probers for s in p.samples]
    result["recovered_s"] = _recovered(server, auth, thawed_at or time.monotonic())
    live, ready = (result["probes"][path] for path in PROBES)
    log(
        f"  {name} on {server.name}: live p99 {_ms(live['p99_ms'])} max {_ms(live['max_ms'])} "
        f"({live['unanswered']} unanswered), ready p99 {_ms(ready['p99_ms'])} "
        f"({ready['unanswered']} unanswered); answers {result.get('db_test', {}).get('answers')}"
    )
    return result


def _recovered(server: Gunicorn, auth: dict[str, str], since: float, limit_s: float = 60) -> float:
    """Seconds from `since` until readiness and /api/db/test both answer 200 (the next scenario
    must start from a healthy server); the value itself is the recovery time after a thaw."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            ready = requests.get(f"{server.base_url}/api/health/ready", timeout=1)
            db_test = requests.get(f"{server.base_url}/api/db/test", headers=auth, timeout=3)
            if ready.status_code == db_test.status_code == 200:
                return round(time.monotonic() - since, 3)
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not recover within {limit_s:g} s")


class HeldConnections(threading.Thread):
    """Holds `slow` connections that send a header line every 2 s and never finish their request,
    and `idle` keep-alive connections that made one request and stay open. A connection the server
    closes is reopened (once per sweep), so the pressure stays constant. One thread, one selector.
    """

    def __init__(self, port: int, slow: int, idle: int) -> None:
        super().__init__(name="held connections", daemon=True)
        self._port, self._slow, self._idle = port, slow, idle
        self._selector = selectors.DefaultSelector()
        self._next_line: dict[socket.socket, float] = {}  # slow connections
        self._open_since: dict[socket.socket, float] = {}
        self.halt, self.opened = threading.Event(), threading.Event()
        self._answered: set[socket.socket] = set()  # idle connections whose request was answered
        self.closed_by_server = {"slow": 0, "idle": 0}
        self.slow_lifetimes: list[float] = []
        self.connect_failures = 0
        self.min_open = {"slow": 0, "idle": 0}

    def run(self) -> None:
        try:
            # The idle connections first, until their one request is answered (the probes must
            # not measure those 1,000 answers), then the slow ones.
            self._open_missing(("idle",))
            settled = time.monotonic() + IDLE_ANSWERS_WAIT_S
            while len(self._answered) < self._idle and time.monotonic() < settled:
                for key, _ in self._selector.select(timeout=0.1):
                    self._readable(key.fileobj)  # type: ignore[arg-type]
            self._open_missing()
            self.min_open = self._counts()
            self.opened.set()
            while not self.halt.is_set():
                for key, _ in self._selector.select(timeout=0.1):
                    self._readable(key.fileobj)  # type: ignore[arg-type]
                now = time.monotonic()
                for sock, due in list(self._next_line.items()):
                    if due <= now:
                        self._send(sock, b"X-Slow: 1\r\n", "slow")
                self._open_missing()
                counts = self._counts()
                self.min_open = {k: min(v, counts[k]) for k, v in self.min_open.items()}
        finally:
            self.opened.set()
            for key in list(self._selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            self._selector.close()

    def summary(self) -> dict[str, Any]:
        lifetimes = sorted(self.slow_lifetimes)
        return {
            "slow": self._slow,
            "idle": self._idle,
            "min_open": self.min_open,
            "idle_answered": len(self._answered),
            "closed_by_server": self.closed_by_server,
            "slow_closed_after_s_median": round(lifetimes[len(lifetimes) // 2], 2)
            if lifetimes
            else None,
            "connect_failures": self.connect_failures,
        }

    def _counts(self) -> dict[str, int]:
        slow = len(self._next_line)
        return {"slow": slow, "idle": len(self._selector.get_map()) - slow}

    def _open_missing(self, kinds: tuple[str, ...] = ("slow", "idle")) -> None:
        counts = self._counts()
        wanted = {"slow": self._slow, "idle": self._idle}
        for kind in kinds:
            for _ in range(wanted[kind] - counts[kind]):
                if self.halt.is_set():
                    return
                self._open(kind)

    def _open(self, kind: str) -> None:
        sock = socket.socket()
        try:
            sock.settimeout(2)
            sock.connect(("127.0.0.1", self._port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            self.connect_failures += 1
            return
        self._selector.register(sock, selectors.EVENT_READ, kind)
        self._open_since[sock] = time.monotonic()
        if kind == "slow":
            self._next_line[sock] = time.monotonic() + HEADER_LINE_EVERY_S
            self._send(sock, b"GET /api/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n", kind)
        else:
            self._send(sock, b"GET /api/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", kind)

    def _send(self, sock: socket.socket, data: bytes, kind: str) -> None:
        try:
            sock.send(data)
        except OSError:
            self._close(sock, kind)
            return
        if kind == "slow":
            self._next_line[sock] = time.monotonic() + HEADER_LINE_EVERY_S

    def _readable(self, sock: socket.socket) -> None:
        kind = self._selector.get_key(sock).data
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data or kind == "slow":  # a slow request is only ever answered by a 408 or close
            self._close(sock, kind)
        else:
            self._answered.add(sock)

    def _close(self, sock: socket.socket, kind: str) -> None:
        if sock not in self._open_since:
            return
        self.closed_by_server[kind] += 1
        lived = time.monotonic() - self._open_since.pop(sock)
        if kind == "slow":
            self.slow_lifetimes.append(lived)
            self._next_line.pop(sock, None)
        self._answered.discard(sock)
        self._selector.unregister(sock)
        sock.close()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"
