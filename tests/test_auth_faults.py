"""Who is calling, under a real gunicorn, when the database fails and when requests are malformed.

A database frozen or stopped while a caller is verified gives the service's JSON 503 within
DB_DEADLINE_S + 0.5 s (the path /api/db/test takes: deadline, classify), never a 401 or a hang;
requests gunicorn refuses itself stay JSON. Faults are induced on the throwaway cluster only.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy.engine import make_url

from harness.better_auth import SigningKey, sign, store_session
from harness.pgcluster import TemporaryCluster
from harness.service import FAST_HEALTH, ServerFactory
from harness.traffic import exchange
from tests.openapi import assert_conforms

pytestmark = pytest.mark.serial

AUTH_URL = "http://127.0.0.1:3000"
SECRET = "the-secret-of-the-fault-tests-0123456789abcdef"
DEADLINE_S = 1.0
LIMIT_S = DEADLINE_S + 0.5  # the bound
OUTAGE_CODES = {"timeout", "database_unavailable", "overloaded"}


def settings_for(database_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "BETTER_AUTH_URL": AUTH_URL,
        "BETTER_AUTH_SECRET": SECRET,
        "DB_DEADLINE_S": str(DEADLINE_S),
        "DB_POOL_TIMEOUT_S": "0.5",
        "BETTER_AUTH_JWKS_REFETCH_S": "0",  # every unknown kid reads the keys
        "SHUTDOWN_DRAIN_S": "0.5",  # the test's end need not wait for load balancers
        **FAST_HEALTH,
    }


def me(base: str, headers: dict[str, str]) -> tuple[float, requests.Response]:
    started = time.monotonic()
    response = requests.get(f"{base}/api/me", headers=headers, timeout=10)
    elapsed = time.monotonic() - started
    assert_conforms("GET", "/api/me", response.status_code, response.headers.get("Content-Type"),
                    response.content)  # fmt: skip
    return elapsed, response


def assert_outage_answers(base: str, credentials: list[dict[str, str]]) -> None:
    """Concurrent callers, each a JSON 503 with Retry-After within the bound, none a 401."""
    with ThreadPoolExecutor(max_workers=len(credentials)) as pool:
        answers = list(pool.map(lambda headers: me(base, headers), credentials))
    for elapsed, response in answers:
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] in OUTAGE_CODES, response.text
        assert response.headers["Retry-After"] == "1"
        assert elapsed < LIMIT_S, f"{elapsed:.2f} s: {response.text}"


def wait_until_served(base: str, headers: dict[str, str], within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while (status := me(base, headers)[1].status_code) != 200:
        assert status == 503 and time.monotonic() < deadline, status
        time.sleep(0.1)


def test_a_frozen_or_stopped_database_is_a_json_503_within_the_deadline(
    serve: ServerFactory, faulty_cluster: TemporaryCluster, cluster_database_url: str
) -> None:
    stored = store_session(cluster_database_url)
    key = SigningKey(cluster_database_url, AUTH_URL)
    cookie = {"Cookie": f"better-auth.session_token={sign(stored.token, SECRET)}"}
    bearer = {"Authorization": f"Bearer {sign(stored.token, SECRET)}"}
    token = {"Authorization": f"Bearer {key.token()}"}
    _, base = serve(settings_for(cluster_database_url), workers=1)
    assert me(base, cookie)[1].status_code == 200  # the pool holds a connection now
    # The worker has not read the keys yet: the JWT's first verification needs the database too.
    callers = [cookie, bearer, token, cookie, bearer, token]

    faulty_cluster.freeze()
    try:
        assert_outage_answers(base, callers)
    finally:
        faulty_cluster.thaw()
    wait_until_served(base, cookie)
    assert me(base, token)[1].status_code == 200

    rotated = {"Authorization": f"Bearer {SigningKey(cluster_database_url, AUTH_URL).token()}"}
    faulty_cluster.stop()
    try:
        assert_outage_answers(base, [cookie, bearer, rotated, cookie, bearer, rotated])
        # A JWT whose key the worker holds needs no database: that is its trade-off's upside.
        assert me(base, token)[1].status_code == 200
    finally:
        faulty_cluster.start()
    wait_until_served(base, cookie)
    assert me(base, bearer)[1].status_code == 200 and me(base, rotated)[1].status_code == 200


HOST = b"Host: 127.0.0.1\r\n"


def test_malformed_credentials_under_gunicorn_are_json_never_a_500(
    serve: ServerFactory, database_url: str
) -> None:
    """What gunicorn refuses itself is a JSON 400 or 431; what reaches the app, a JSON 401."""
    process, base = serve(settings_for(database_url), workers=1)
    port = make_url(base.replace("http://", "postgresql://")).port
    refused_by_gunicorn = {
        b"Cookie: better-auth.session_token=a\x00b.c\r\n": 400,
        b"Authorization: Bearer a\x00b\r\n": 400,
        b"Authorization: Bearer " + b"a" * 9000 + b"\r\n": 431,
        b"Cookie: better-auth.session_token=" + b"a" * 9000 + b"\r\n": 431,
        b"Cookie : better-auth.session_token=a.b\r\n": 400,
    }
    for header, status in refused_by_gunicorn.items():
        response = exchange(port, b"GET /api/me HTTP/1.1\r\n" + HOST + header + b"\r\n")
        assert response.status == status, (header[:40], response.status, response.body[:200])
        assert response.media_type == "application/json", response.body[:200]
        assert response.json()["error"]["code"], response.body
    reaching_the_app = [
        b"Cookie: better-auth.session_token=\xff\xfe." + b"A" * 43 + b"=\r\n",
        b"Cookie: better-auth.session_token=%FF." + b"A" * 43 + b"=\r\n",
        b"Authorization: Bearer \xe9t\xe9.x.y\r\n",
        b"Cookie: better-auth.session_token=\r\nCookie: better-auth.session_token=a.b\r\n",
        b"Authorization: \r\n",
    ]
    for header in reaching_the_app:
        response = exchange(port, b"GET /api/me HTTP/1.1\r\n" + HOST + header + b"\r\n")
        assert response.status == 401, (header[:40], response.status, response.body[:200])
        assert response.json()["error"]["code"] == "unauthenticated"
        assert response.headers["www-authenticate"] == "Bearer"
    assert "Traceback" not in process.log_text()
