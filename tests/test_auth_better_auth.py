"""The service against a real Better Auth 1.7.25 (tests/better_auth/server.mjs) on one database.

The database is migrated by `flask db upgrade` only; Better Auth signs users up, in and out over
its HTTP API, and the service verifies what it issued: the session cookie (http and https), the
signed bearer token, the JWT, and rotated secrets exactly as Better Auth itself treats them.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg2
import pytest
from flask.testing import FlaskClient

from harness.better_auth import BetterAuthServer, delete_user
from harness.service import AppFactory, DatabaseFactory, migrate

SECRET = "the-secret-shared-with-better-auth-0123456789"


@pytest.fixture(scope="module")
def shared_url(databases: DatabaseFactory) -> str:
    url = databases.create("svc_with_better_auth")
    migrate(url)
    return url


@pytest.fixture(scope="module")
def better_auth(
    shared_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BetterAuthServer]:
    instances = {
        "plain": {"secret": SECRET},
        "secure": {"secret": SECRET, "baseURL": "https://auth.example.test"},
        # Rotation is about signed cookies: these two leave out the jwt plugin, whose key in the
        # shared table is encrypted with SECRET (server.mjs).
        "rotated": {
            "secrets": [{"version": 2, "value": "new"}, {"version": 1, "value": "old"}],
            "jwt": False,
        },
        "old": {"secret": "old", "jwt": False},
    }
    log = tmp_path_factory.mktemp("better-auth") / "server.log"
    with BetterAuthServer(shared_url, instances, log) as server:
        yield server


@pytest.fixture
def service(make_app: AppFactory, shared_url: str, better_auth: BetterAuthServer):
    """A client of the service configured as the Better Auth instance named."""

    def build(instance: str, **settings: str) -> FlaskClient:
        config = {"BETTER_AUTH_URL": better_auth.base_url(instance), "BETTER_AUTH_SECRET": SECRET}
        app = make_app(DATABASE_URL=shared_url, **{**config, **settings})
        return app.test_client(use_cookies=False)  # Cookie headers exactly as sent

    return build


def me(client: FlaskClient, **headers: str):
    return client.get("/api/me", headers=headers)


def sql(url: str, statement: str, params: tuple) -> None:
    connection = psycopg2.connect(url)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(statement, params)
    finally:
        connection.close()


def test_its_cookie_bearer_and_jwt_are_accepted(service, better_auth) -> None:
    client = service("plain")
    signed_in = better_auth.sign_up("plain")
    session = better_auth.get_session("plain", signed_in.cookie)["session"]
    token = better_auth.jwt("plain", signed_in.cookie)

    by_cookie = me(client, Cookie=signed_in.cookie)
    assert by_cookie.status_code == 200, by_cookie.get_data(as_text=True)
    body = by_cookie.get_json()
    assert body["user"]["id"] == signed_in.user_id
    assert body["user"]["emailVerified"] is False
    assert body["session"]["id"] == session["id"]
    assert session["token"] not in by_cookie.get_data(as_text=True)

    by_bearer = me(client, Authorization=f"Bearer {signed_in.bearer}")
    assert by_bearer.get_json() == {**body, "credential": "bearer"}
    by_jwt = me(client, Authorization=f"Bearer {token}")
    assert by_jwt.get_json() == {"user": body["user"], "session": None, "credential": "jwt"}


def test_after_sign_out_the_cookie_and_bearer_are_refused_and_the_jwt_lives_on(
    service, better_auth
) -> None:
    """The JWT trade-off (docs/auth.md): it names no session, so it is valid until `exp`."""
    client = service("plain")
    signed_in = better_auth.sign_up("plain")
    token = better_auth.jwt("plain", signed_in.cookie)
    assert me(client, Cookie=signed_in.cookie).status_code == 200
    better_auth.sign_out("plain", signed_in.cookie)
    assert me(client, Cookie=signed_in.cookie).status_code == 401
    assert me(client, Authorization=f"Bearer {signed_in.bearer}").status_code == 401
    assert me(client, Authorization=f"Bearer {token}").status_code == 200


def test_an_expired_session_and_a_deleted_user_are_refused(service, better_auth, shared_url):
    client = service("plain")
    expiring, leaving = better_auth.sign_up("plain"), better_auth.sign_up("plain")
    for signed_in in (expiring, leaving):
        assert me(client, Cookie=signed_in.cookie).status_code == 200
    sql(
        shared_url,
        'UPDATE session SET "expiresAt" = now() - interval \'1 second\' WHERE "userId" = %s',
        (expiring.user_id,),
    )
    delete_user(shared_url, leaving.user_id)
    for signed_in in (expiring, leaving):
        assert me(client, Cookie=signed_in.cookie).status_code == 401
        assert me(client, Authorization=f"Bearer {signed_in.bearer}").status_code == 401
    assert better_auth.get_session("plain", expiring.cookie) is None  # Better Auth agrees


def test_with_an_https_base_url_the_secure_cookie_is_accepted(service, better_auth) -> None:
    signed_in = better_auth.sign_up("secure")
    assert signed_in.cookie.startswith("__Secure-better-auth.session_token=")
    secure = me(service("secure"), Cookie=signed_in.cookie)
    assert secure.status_code == 200 and secure.get_json()["credential"] == "cookie"
    assert me(service("plain"), Cookie=signed_in.cookie).status_code == 401  # another name
    secure_jwt = better_auth.jwt("secure", signed_in.cookie)
    assert me(service("secure"), Authorization=f"Bearer {secure_jwt}").status_code == 200
    assert me(service("plain"), Authorization=f"Bearer {secure_jwt}").status_code == 401  # iss


def test_rotated_secrets_verify_with_the_current_one_only_as_better_auth_does(
    service, better_auth
) -> None:
    client = service("rotated", BETTER_AUTH_SECRET="", BETTER_AUTH_SECRETS="2:new,1:old")
    new = better_auth.sign_up("rotated")  # signed with "new", the current secret
    old = better_auth.sign_up("old")  # signed with "old", as before the rotation
    assert me(client, Cookie=new.cookie).status_code == 200
    assert me(client, Authorization=f"Bearer {new.bearer}").status_code == 200
    assert me(client, Cookie=old.cookie).status_code == 401
    assert me(client, Authorization=f"Bearer {old.bearer}").status_code == 401
    assert better_auth.get_session("rotated", new.cookie)["user"]["id"] == new.user_id
    assert better_auth.get_session("rotated", old.cookie) is None  # Better Auth refuses it too


def test_a_new_signing_key_is_found_by_its_unknown_kid(service, better_auth, shared_url) -> None:
    client = service("plain", BETTER_AUTH_JWKS_REFETCH_S="0")
    signed_in = better_auth.sign_up("plain")
    before = better_auth.jwt("plain", signed_in.cookie)
    assert me(client, Authorization=f"Bearer {before}").status_code == 200
    sql(shared_url, "DELETE FROM jwks", ())  # Better Auth mints a new key on the next token
    after = better_auth.jwt("plain", signed_in.cookie)
    assert me(client, Authorization=f"Bearer {after}").status_code == 200
    assert me(client, Authorization=f"Bearer {before}").status_code == 401  # its key is gone
