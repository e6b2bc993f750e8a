"""How gunicorn runs the service: its worker, its log lines and the master's hooks.

The worker is gevent's, plus three things gunicorn lacks: a drain before a graceful stop, a
deadline on request heads, and errors in the service's JSON shape. Why: docs/architecture.md.
Settings flow one way: the master loads them (`process_settings`, read by the logger too), each
worker's app is built from that same object, and the worker reads its own from the app it serves.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from typing import Any

import gevent
from gunicorn import util
from gunicorn.glogging import Logger
from gunicorn.workers.ggevent import GeventWorker
from werkzeug.http import HTTP_STATUS_CODES

import service
from service.config import Settings, process_settings
from service.errors import code_for, error_body
from service.logs import RequestIdFilter, build_formatter
from service.metrics import Metrics

QUIET_PATHS = ("/api/health", "/metrics")  # probes and scrapes get no access line
IDLE_SWEEP_S = 0.5
MILLISECOND = timedelta(milliseconds=1)


class RequestHeadTimeout(Exception):
    """The request line and headers did not arrive within REQUEST_HEAD_TIMEOUT_S."""


class _EndOfConnection(BaseException):
    """Thrown into an idle connection's reader at shutdown: it reads the end of the stream."""


class Worker(GeventWorker):
    """gevent worker that drains on SIGTERM, bounds request heads and answers errors in JSON."""

    settings: Settings  # the settings of the app it serves, once loaded (`load_wsgi`)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.draining = False
        self.aborted = False
        self.connections: set[_Connection] = set()

    def init_process(self) -> None:
        util.write_error = write_json_error  # gunicorn's own errors, in the service's shape
        try:
            super().init_process()  # returns, or exits 0 on SIGQUIT/SIGINT, once it has stopped
        except SystemExit as stop:
            if stop.code not in (0, None):
                raise
        # A forked child ends without the interpreter's teardown, as multiprocessing's do: it
        # walks the whole inherited heap, which held a quick shutdown for seconds.
        self.log.info("Worker exiting (pid: %s)", self.pid)
        logging.shutdown()
        os._exit(1 if self.aborted else 0)

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.settings = self.wsgi.config["SETTINGS"]
        service.start_serving(self.wsgi)

    def run(self) -> None:
        try:
            super().run()
        finally:
            service.stop_serving(self.wsgi)

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        if self.cfg.is_ssl:  # TLS is terminated in front of the service; keep gunicorn's path
            return super().handle(listener, client, addr)
        connection = _Connection(client, self.settings.request_head_timeout_s)
        self.connections.add(connection)
        try:
            super().handle(listener, connection, addr)
        finally:
            connection.stop_timer()
            self.connections.discard(connection)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> bool:
        if isinstance(sock, _Connection):
            sock.head_received(req)
        if self.draining:
            req.must_close = True  # `Connection: close`: clients move to other instances
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            if isinstance(sock, _Connection):
                sock.expect_head()

    def handle_abort(self, sig: int, frame: Any) -> None:
        """SIGABRT (the master's timeout): exit 1, even when its SystemExit ends only a request."""
        self.aborted = True
        super().handle_abort(sig, frame)

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: drain, then stop as gunicorn does (finish in-flight requests)."""
        if not self.draining:
            self.draining = True
            for connection in self.connections:  # requests in flight close their connection too
                if connection.request is not None:
                    connection.request.must_close = True
            gevent.spawn(self._drain_then_stop)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if isinstance(exc, RequestHeadTimeout):
            self.log.info("request head timed out from %s", addr[0] if addr else "-")
            write_json_error(client, 408, "Request Timeout", str(exc))
            return
        super().handle_error(req, client, addr, exc)

    def _drain_then_stop(self) -> None:
        service.drain(self.wsgi)
        gevent.sleep(self.settings.shutdown_drain_s)
        self.alive = False  # gunicorn's loop closes the listeners and waits for in-flight work
        loop = gevent.get_hub().loop
        while True:  # connections waiting for a next request that will not come
            for connection in list(self.connections):
                loop.run_callback(connection.end_if_idle)
            gevent.sleep(IDLE_SWEEP_S)


class _Connection:
    """A client socket whose request heads must arrive within a limit of their first byte."""

    def __init__(self, sock: socket.socket, limit_s: float) -> None:
        self._sock = sock
        self._limit_s = limit_s
        self._timer: gevent.Timeout | None = None
        self._between_requests = True
        self._reader = gevent.getcurrent()
        self.request: Any = None  # the request being answered, if any

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    @property
    def idle(self) -> bool:
        """Waiting for a request of which no byte has arrived."""
        return self._between_requests and self._timer is None

    def recv(self, size: int, *flags: int) -> bytes:
        try:
            data = self._sock.recv(size, *flags)
        except _EndOfConnection:
            return b""
        if data and self._between_requests and self._timer is None:
            message = "the request head did not arrive in time"
            self._timer = gevent.Timeout.start_new(self._limit_s, RequestHeadTimeout(message))
        return data

    def end_if_idle(self) -> None:
        """In the hub: an idle reader is blocked in `recv`, the one place that catches this."""
        if self.idle and not self._reader.dead:
            self._reader.throw(_EndOfConnection())

    def head_received(self, request: Any) -> None:
        self._between_requests = False
        self.request = request
        self.stop_timer()

    def expect_head(self) -> None:
        self._between_requests = True
        self.request = None

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None


def write_json_error(sock: Any, status: int, _reason: str, message: str) -> None:
    """gunicorn's `util.write_error`, in the service's error shape, named by the status itself."""
    phrase = HTTP_STATUS_CODES[status]  # as Flask names it; gunicorn's reason can disagree
    code = "internal_error" if status == 500 else code_for(phrase)
    body = error_body(code, message or phrase)
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


class ServiceLogger(Logger):
    """gunicorn's lines in the app's format and redaction; no access lines for probes."""

    def setup(self, cfg: Any) -> None:
        """At start and on every reload (SIGHUP) gunicorn rebuilds its handlers: dress them."""
        super().setup(cfg)
        settings = process_settings()
        formatter = build_formatter(str(settings.log_format), settings.secrets)
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                if getattr(handler, "_gunicorn", False):
                    handler.setFormatter(formatter)
                    handler.addFilter(RequestIdFilter())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: timedelta) -> None:
        """One structured record per request; the query string is left out (it may hold secrets)."""
        path = environ.get("PATH_INFO", "")
        if not self.access_log_enabled or any(
            path == quiet or path.startswith(quiet + "/") for quiet in QUIET_PATHS
        ):
            return
        status = str(getattr(resp, "status", "") or "-").split(" ", 1)[0]
        fields = {
            "request_id": _header(resp, "x-request-id") or environ.get("HTTP_X_REQUEST_ID", "-"),
            "http_method": environ.get("REQUEST_METHOD", "-"),
            "path": path,
            "status": int(status) if status.isdigit() else status,
            "duration_ms": request_time / MILLISECOND,  # exact: a timedelta counts microseconds
            "bytes_sent": getattr(resp, "sent", None),
            "remote_addr": environ.get("REMOTE_ADDR", "-"),
            "user_agent": environ.get("HTTP_USER_AGENT", "-"),
        }
        self.access_log.info(
            '%s "%s %s %s" %s %s %.1fms',
            fields["remote_addr"],
            fields["http_method"],
            path,
            environ.get("SERVER_PROTOCOL", "-"),
            fields["status"],
            fields["bytes_sent"],
            fields["duration_ms"],
            extra=fields,
        )


def _header(resp: Any, name: str) -> str | None:
    for key, value in getattr(resp, "headers", None) or ():
        if key.lower() == name:
            return str(value)
    return None


def forget_worker(pid: int) -> None:
    """In the master, when a worker has exited: drop its live gauges."""
    Metrics.forget_process(pid)
