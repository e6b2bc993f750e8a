"""The gunicorn worker as clients and operators see it: raw sockets, signals, exit codes, logs.

- gunicorn's own errors (a malformed request never reaches Flask) come in the service's JSON shape;
- a request head must arrive within REQUEST_HEAD_TIMEOUT_S of its first byte, or 408 JSON;
- an idle keep-alive connection is not a slow head;
- SIGTERM drains (readiness 503 `draining` while everything else still answers) and exits 0;
- SIGINT stops at once; either way no database connection is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
import uuid

import psycopg2
import pytest
import requests
from werkzeug.http import HTTP_STATUS_CODES

from harness.processes import children_of, wait_for
from harness.service import FAST_HEALTH, ServerFactory
from tests.test_gunicorn import _lock_waiters as lock_waiters
from tests.test_gunicorn import server_connections

pytestmark = pytest.mark.serial  # head deadlines, drain and stops, timed

HEAD_TIMEOUT_S = 0.6
# what an operator must not find in the log of a clean stop (gunicorn says the last when a worker
# exits with a status other than 0)
SIGNS_OF_TROUBLE = ("Traceback", "WORKER TIMEOUT", "Error handling request", "exited with code")


def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.settimeout(5)
    return sock


def read_response(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: status line, headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    return status, headers, body


def is_closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def get(sock: socket.socket, path: str) -> tuple[str, dict[str, str], bytes]:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    return read_response(sock)


def get_once(base: str, path: str) -> tuple[str, dict[str, str], bytes]:
    """One request on a connection of its own (a draining server closes each after one answer)."""
    with connect(base) as sock:
        return get(sock, path)


@pytest.fixture
def server(serve: ServerFactory, database_url: str):
    service_id = f"worker-{uuid.uuid4().hex[:8]}"
    process, base = serve(
        {
            "DATABASE_URL": database_url,
            "SERVICE_ID": service_id,
            "REQUEST_HEAD_TIMEOUT_S": str(HEAD_TIMEOUT_S),
            "SHUTDOWN_DRAIN_S": "0.8",
            "GUNICORN_GRACEFUL_TIMEOUT": "10",
            "LOG_FORMAT": "json",
            "DB_LOCK_TIMEOUT_MS": "8000",  # a request may wait on a lock across a SIGTERM
            "DB_STATEMENT_TIMEOUT_MS": "8000",
            "DB_DEADLINE_S": "8",
            **FAST_HEALTH,
        },
        workers=1,
        timeout=20,  # a worker that cannot serve fails the test soon
    )
    return process, base, service_id


def test_gunicorn_errors_request_heads_and_keep_alive(server, database_url, request) -> None:
    process, base, _ = server
    # A NUL in a header, an over-long request line, a path outside SCRIPT_NAME never reach
    # Flask: gunicorn answers them itself.
    for raw, status, code in (
        (b"GET / HTTP/1.1\r\nHost: test\r\nX-Bad: a\x00b\r\n\r\n", 400, "bad_request"),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: test\r\n\r\n", 414, "request_uri_too_long"),
        (b"GET / HTTP/1.1\r\nHost: test\r\nSCRIPT_NAME: /elsewhere\r\n\r\n", 500, "internal_error"),
        (
            b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: foo\r\n\r\n",
            501,
            "not_implemented",
        ),
    ):
        with connect(base) as sock:
            sock.sendall(raw)
            line, headers, body = read_response(sock)
            assert line == f"HTTP/1.1 {status} {HTTP_STATUS_CODES[status]}", line
            assert headers["content-type"] == "application/json"
            assert headers["connection"] == "close"
            assert int(headers["content-length"]) == len(body)
            error = json.loads(body)["error"]
            assert error["code"] == code and error["message"], error
            assert "<" not in body.decode()
            assert is_closed(sock)

    # A head that starts and stalls: 408 in JSON after REQUEST_HEAD_TIMEOUT_S, then closed.
    with connect(base) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /api/health/live HTTP/1.1\r\n")
        line, headers, body = read_response(sock)
        elapsed = time.monotonic() - started
        assert line.startswith("HTTP/1.1 408 "), line
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {
            "error": {
                "code": "request_timeout",
                "message": "the request head did not arrive in time",
            }
        }
        assert HEAD_TIMEOUT_S - 0.1 <= elapsed < HEAD_TIMEOUT_S + 2
        assert is_closed(sock)
    wait_for(lambda: "request head timed out from 127.0.0.1" in process.log_text(), 5)

    # Trickling bytes does not restart the clock: the limit counts from the first byte.
    with connect(base) as sock:
        started = time.monotonic()
        for piece in (b"GET /api/health/live HTTP/1.1\r\n", b"Host: test\r\n", b"X-A: 1\r\n"):
            sock.sendall(piece)
            time.sleep(HEAD_TIMEOUT_S / 2)
        line, _, _ = read_response(sock)
        assert line.startswith("HTTP/1.1 408 "), line
        assert time.monotonic() - started < HEAD_TIMEOUT_S * 1.5 + 2

    # A keep-alive connection idle for longer than the head limit is served normally, and so is
    # a head that arrives in pieces within the limit.
    with connect(base) as sock:
        assert get(sock, "/api/health/live")[0].startswith("HTTP/1.1 200 ")
        time.sleep(HEAD_TIMEOUT_S * 2)
        assert get(sock, "/api/health/live")[0].startswith("HTTP/1.1 200 ")
        sock.sendall(b"GET /api/health/live HTTP/1.1\r\n")
        time.sleep(HEAD_TIMEOUT_S / 3)
        sock.sendall(b"Host: test\r\n\r\n")
        assert read_response(sock)[0].startswith("HTTP/1.1 200 ")
        time.sleep(HEAD_TIMEOUT_S * 2)
        status, headers, body = get(sock, "/nowhere")
        assert status.startswith("HTTP/1.1 404 ")
        assert json.loads(body)["error"]["code"] == "not_found"

    # Operators get one JSON access line per request, but none for probes and scrapes.
    for path in ("/api/health", "/api/health/ready", "/metrics"):
        requests.get(f"{base}{path}", timeout=5)
    untraced = requests.get(f"{base}/api/healthy", timeout=5)
    locker = psycopg2.connect(database_url)  # the traced request waits 0.3 s on a lock
    request.addfinalizer(locker.close)
    with locker.cursor() as cursor:
        cursor.execute("LOCK TABLE verification IN ACCESS EXCLUSIVE MODE")
    unlock = threading.Timer(0.3, locker.rollback)
    sent = time.monotonic()
    unlock.start()
    traced = requests.get(
        f"{base}/api/db/test?token=secret-query", headers={"X-Request-ID": "trace-7"}, timeout=5
    )
    unlock.join()
    locker.close()
    assert traced.status_code == 200
    wait_for(lambda: "trace-7" in process.log_text(), 5)
    took_ms = (time.monotonic() - sent) * 1000  # gunicorn times a request until it logs it
    records = [json.loads(line) for line in process.log_text().splitlines() if line.strip()]
    # (gunicorn also logs its own 500 above, without a path)
    access = [r for r in records if r["name"] == "gunicorn.access" and r["path"]]
    assert [r["path"] for r in access] == ["/nowhere", "/api/healthy", "/api/db/test"]
    missing, healthy, db_test = access
    assert (missing["status"], missing["http_method"], missing["user_agent"]) == (404, "GET", "-")
    assert healthy["status"] == 404 and healthy["remote_addr"] == "127.0.0.1"
    assert healthy["request_id"] == untraced.headers["X-Request-ID"]  # the one the service made
    assert db_test["request_id"] == "trace-7"
    assert db_test["status"] == 200 and db_test["bytes_sent"] == len(traced.content)
    assert 300 <= db_test["duration_ms"] <= took_ms
    assert round(db_test["duration_ms"], 3) == db_test["duration_ms"]  # to the microsecond
    assert db_test["user_agent"].startswith("python-requests/")
    assert "secret-query" not in process.log_text()
    assert access[-1]["message"].startswith('127.0.0.1 "GET /api/db/test HTTP/1.1" 200 ')


def test_sigterm_drains_then_exits_0_without_waiting_for_idle_connections(
    server, database_url, request
) -> None:
    process, base, service_id = server
    wait_for(lambda: server_connections(service_id), 10, description="the checker to connect")
    idle = connect(base)  # a keep-alive client that never sends another request
    assert get(idle, "/api/health/ready")[0].startswith("HTTP/1.1 200 ")
    locker = psycopg2.connect(database_url)  # holds /api/db/test in flight across the SIGTERM
    request.addfinalizer(locker.close)  # a failed test must not leave the table locked
    with locker.cursor() as cursor:
        cursor.execute("LOCK TABLE verification IN ACCESS EXCLUSIVE MODE")
    in_flight = connect(base)
    in_flight.sendall(b"GET /api/db/test HTTP/1.1\r\nHost: test\r\n\r\n")
    wait_for(lambda: lock_waiters(database_url), 5, description="the request to wait on the lock")
    started = time.monotonic()
    process.proc.send_signal(signal.SIGTERM)
    status, headers, body = wait_for(
        lambda: (
            (answer := get_once(base, "/api/health/ready"))[0].startswith("HTTP/1.1 503") and answer
        ),
        3,
        description="readiness to fail",
    )
    assert json.loads(body) == {"status": "fail", "notes": ["draining"]}
    assert headers["connection"] == "close"  # clients move to other instances
    with connect(base) as other:
        status, headers, body = get(other, "/api/health/live")
        assert status.startswith("HTTP/1.1 200 "), "still serving while draining"
        assert headers["connection"] == "close"
    # The request in flight since before SIGTERM is still in flight when the drain ends and idle
    # connections are swept: it is not idle, it finishes, and its connection closes.
    time.sleep(max(0.0, started + 1.6 - time.monotonic()))
    locker.rollback()
    locker.close()
    status, headers, body = read_response(in_flight)
    assert status.startswith("HTTP/1.1 200 ") and headers["connection"] == "close"
    code = process.wait_exit(8)
    elapsed = time.monotonic() - started
    assert idle.recv(1) == b"", "an idle keep-alive connection is closed without an answer"
    for sock in (idle, in_flight):
        sock.close()
    assert code == 0, process.log_tail()
    assert 0.8 <= elapsed < 5, f"exited {elapsed:.1f} s after SIGTERM; the drain is 0.8 s"
    log = process.log_text()
    assert "draining: readiness fails from now on" in log
    for sign_of_trouble in SIGNS_OF_TROUBLE:
        assert sign_of_trouble not in log
    wait_for(lambda: not server_connections(service_id), 5, description="no connection left")


def test_sigint_stops_at_once_and_closes_every_connection(server) -> None:
    process, base, service_id = server
    assert requests.get(f"{base}/api/db/test", timeout=5).status_code == 200
    wait_for(lambda: server_connections(service_id), 10, description="connections to exist")
    started = time.monotonic()
    process.proc.send_signal(signal.SIGINT)
    code = process.wait_exit(8)
    assert code == 0, process.log_tail()
    assert time.monotonic() - started < 5  # not the 10 s graceful timeout
    log = process.log_text()
    assert "draining" not in log, "SIGINT does not drain"
    for sign_of_trouble in SIGNS_OF_TROUBLE:
        assert sign_of_trouble not in log
    wait_for(lambda: not server_connections(service_id), 5, description="no connection left")


def test_an_aborted_worker_is_reported_as_failed_and_replaced(server) -> None:
    """SIGABRT is what gunicorn sends a worker stuck past its timeout: the exit must say so.

    One signal, as the master sends, while requests run: gunicorn raises its SystemExit(1) in
    whichever greenlet runs, and one that lands in a request ends only that request; the worker
    must still exit 1.
    """
    process, base, _ = server
    (worker,) = children_of(process.proc.pid)
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            with contextlib.suppress(requests.RequestException):
                requests.get(f"{base}/api/db/test", timeout=5)

    callers = [threading.Thread(target=traffic, daemon=True) for _ in range(4)]
    for caller in callers:
        caller.start()
    try:
        time.sleep(0.5)  # requests in flight when the signal lands
        os.kill(worker, signal.SIGABRT)
        # The bound: an aborted worker's exit is reported, however busy the machine.
        wait_for(
            lambda: f"Worker (pid:{worker}) exited with code 1" in process.log_text(),
            20,
            interval=0.2,
            description="the master to report the aborted worker",
        )
    finally:
        stop.set()
        for caller in callers:
            caller.join(10)
    replaced = wait_for(lambda: (kids := children_of(process.proc.pid)) != [worker] and kids, 10)
    assert len(replaced) == 1
    assert requests.get(f"{base}/api/health/live", timeout=5).status_code == 200
