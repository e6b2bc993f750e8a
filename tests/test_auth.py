"""Who is calling (service/auth): every credential Better Auth issues, every malformed one.

The app runs in-process on the real test database; the sessions are rows written as Better Auth
writes them, the cookies signed as better-call signs them (harness.better_auth.sign, itself held
to Better Auth's golden vector here and to the real server in test_auth_better_auth.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import string
import time
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask, jsonify
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, text

from harness.better_auth import SigningKey, StoredSession, delete_user, sign, store_session
from service.auth import current_caller, requires_caller
from service.auth.credentials import Refused, unsign
from service.auth.jwks import KeySet
from service.auth.sessions import SESSION_WITH_USER
from service.extensions import db

AUTH_URL = "http://127.0.0.1:3000"
SECRET = "a-shared-secret-of-the-tests-0123456789abcdef"
COOKIE = "better-auth.session_token"
GOLDEN_SECRET = "better-auth-secret-12345678901234567890"
GOLDEN_TOKEN = "Rw9tWk3Zb1uEw0r8Jc8mY7kQn2pLx5Vd"
GOLDEN_VALUE = f"{GOLDEN_TOKEN}.CGJJ2mwt0QSZSuVLgKbRtlxck6RanMe8drQkRchjvEM%3D"
FAST_PROPERTIES = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
def auth_app(make_app) -> Flask:
    app = make_app(BETTER_AUTH_URL=AUTH_URL, BETTER_AUTH_SECRET=SECRET)

    @app.post("/test/write")
    @requires_caller
    def write():  # an unsafe method behind the decorator, as any view of the service would be
        return jsonify(user=current_caller().user.id)

    return app


@pytest.fixture
def client(auth_app):
    return auth_app.test_client(use_cookies=False)  # Cookie headers as sent


@pytest.fixture
def stored(database_url) -> StoredSession:
    return store_session(database_url)


def cookie_of(token: str, secret: str = SECRET) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={sign(token, secret)}"}


def assert_unauthenticated(response) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert response.get_json()["error"]["code"] == "unauthenticated"
    assert response.headers["WWW-Authenticate"] == "Bearer"


def run_sql(database_url: str, statement: str, params: tuple = ()) -> None:
    import psycopg2

    connection = psycopg2.connect(database_url)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(statement, params)
    finally:
        connection.close()


# ------------------------------------------------------------------ the signed value, exactly


def test_the_golden_vector_signs_and_verifies() -> None:
    assert sign(GOLDEN_TOKEN, GOLDEN_SECRET) == GOLDEN_VALUE
    assert unsign(GOLDEN_VALUE, GOLDEN_SECRET) == GOLDEN_TOKEN
    with pytest.raises(Refused):
        unsign(GOLDEN_VALUE, GOLDEN_SECRET + "x")


def plus_token() -> tuple[str, str]:
    """A token whose signature holds a `+`, and that signature."""
    for number in range(10000):
        token = f"PlusToken{number:023d}"
        signature = sign(token, SECRET).split(".")[1].replace("%2B", "+").replace("%3D", "=")
        if "+" in signature:
            return token, signature.replace("%2F", "/")
    raise AssertionError("no signature with a plus")


def named_cases() -> dict[str, str]:
    """Malformed signed values, each refused: `{token}` is a live session's token and
    `{signature}` its right signature (percent-encoded), so each case is one flaw away from
    valid."""
    token, signature = plus_token()
    return {
        "wrong signature": "{token}." + sign("x" * 32, SECRET).split(".")[1],
        "wrong secret": sign("{token}", "another-secret-0123456789abcdef0123"),
        "no dot": "{token}",
        "no dot, signature glued on": "{token}{signature}",
        "a dot first": ".{signature}",
        "only a dot": ".",
        "empty": "",
        "bad base64": "{token}." + "!" * 43 + "=",
        "a character outside base64 in the signature": "{token}.!{signature}",
        "44 characters without =": "{token}." + "A" * 44,
        "43 characters with =": "{token}." + "A" * 42 + "=",
        "overlong": "{token}.{signature}" + "A" * 9000,
        "overlong token": "a" * 9000 + ".{signature}",
        "non-ASCII": "{token}é.{signature}",
        "non-ASCII signature": "{token}." + "é" * 43 + "=",
        "bad percent-encoding": "{token}.%FF{signature}",
        "a plus as a space": f"{token}." + signature.replace("+", " "),
        "NUL": "{token}\x00.{signature}",
    }


@pytest.mark.parametrize("case", list(named_cases()))
def test_every_malformed_cookie_is_a_json_401(client, stored, case) -> None:
    assert client.get("/api/me", headers=cookie_of(stored.token)).status_code == 200  # control
    signature = sign(stored.token, SECRET).split(".")[1]
    value = named_cases()[case].replace("{token}", stored.token).replace("{signature}", signature)
    assert_unauthenticated(client.get("/api/me", headers={"Cookie": f"{COOKIE}={value}"}))
    assert_unauthenticated(client.get("/api/me", headers={"Authorization": f"Bearer {value}"}))


def test_a_percent_encoded_plus_and_a_literal_plus_both_verify(client, database_url) -> None:
    token, signature = plus_token()
    stored = store_session(database_url)
    run_sql(database_url, "UPDATE session SET token = %s WHERE id = %s", (token, stored.session_id))
    encoded = sign(token, SECRET)
    assert "%2B" in encoded
    for value in (encoded, f"{token}.{signature}"):
        assert client.get("/api/me", headers={"Cookie": f"{COOKIE}={value}"}).status_code == 200
        assert (
            client.get("/api/me", headers={"Authorization": f"Bearer {value}"}).status_code == 200
        )


def test_the_first_of_duplicate_cookies_wins(client, stored) -> None:
    good, bad = sign(stored.token, SECRET), sign(stored.token, "wrong-secret-0123456789abcdef0123")
    first_good = {"Cookie": f"{COOKIE}={good}; {COOKIE}={bad}"}
    assert client.get("/api/me", headers=first_good).status_code == 200
    assert_unauthenticated(
        client.get("/api/me", headers={"Cookie": f"{COOKIE}={bad}; {COOKIE}={good}"})
    )


# ------------------------------------------------------------------ properties


def cookie_headers():
    printable = st.characters(min_codepoint=0, max_codepoint=255, blacklist_characters="\r\n")
    tokens = st.text(alphabet=string.ascii_letters + string.digits, min_size=0, max_size=40)
    base64ish = st.text(alphabet=string.ascii_letters + string.digits + "+/=%", max_size=50)
    signed_looking = st.builds(lambda t, s: f"{t}.{s}", tokens, base64ish)
    values = st.one_of(st.text(printable, max_size=300), signed_looking)
    names = st.sampled_from([COOKIE, f"__Secure-{COOKIE}", "other", ""])
    pairs = st.lists(st.tuples(names, values), max_size=3)
    return st.one_of(
        st.text(printable, max_size=300),
        pairs.map(lambda ps: "; ".join(f"{n}={v}" for n, v in ps)),
    )


def jwt_looking():
    segment = st.text(alphabet=string.ascii_letters + string.digits + "-_", max_size=60)
    header = st.dictionaries(
        st.sampled_from(["alg", "kid", "typ", "crit"]),
        st.one_of(st.text(max_size=10), st.integers(), st.none(), st.lists(st.integers())),
    ).map(lambda h: base64.urlsafe_b64encode(json.dumps(h).encode()).decode().rstrip("="))
    return st.builds(lambda h, p, s: f"{h}.{p}.{s}", st.one_of(header, segment), segment, segment)


def authorization_headers():
    printable = st.characters(min_codepoint=0, max_codepoint=255, blacklist_characters="\r\n")
    scheme = st.sampled_from(["Bearer ", "bearer ", "BEARER  ", "Basic ", "Bearer", ""])
    value = st.one_of(st.text(printable, max_size=300), jwt_looking())
    return st.builds(lambda s, v: s + v, scheme, value)


@FAST_PROPERTIES
@given(
    cookie=st.one_of(st.none(), cookie_headers()),
    authorization=st.one_of(st.none(), authorization_headers()),
)
def test_any_cookie_or_authorization_gets_a_json_401(client, cookie, authorization) -> None:
    headers = {}
    if cookie is not None:
        headers["Cookie"] = cookie
    if authorization is not None:
        headers["Authorization"] = authorization
    assert_unauthenticated(client.get("/api/me", headers=headers))


@settings(max_examples=300, deadline=None)
@given(value=st.text(max_size=200), secret=st.text(min_size=1, max_size=50))
def test_unsign_refuses_or_returns_a_token_never_anything_else(value, secret) -> None:
    try:
        token = unsign(value, secret)
    except Refused:
        return
    assert sign(token, secret) in (value, value.replace("%3D", "=").replace("%2F", "/"))


@settings(max_examples=200, deadline=None)
@given(token=st.text(alphabet=[chr(c) for c in range(0x21, 0x7F)], min_size=1, max_size=64))
def test_any_token_signed_verifies_with_its_secret_only(token) -> None:
    assert unsign(sign(token, SECRET), SECRET) == token
    with pytest.raises(Refused):
        unsign(sign(token, SECRET), SECRET[:-1])


# ------------------------------------------------------------------ sessions


def test_a_live_session_answers_its_user_and_session_never_the_token(client, stored) -> None:
    for headers, credential in (
        (cookie_of(stored.token), "cookie"),
        ({"Authorization": f"Bearer {sign(stored.token, SECRET)}"}, "bearer"),
        ({"Authorization": f"bearer {sign(stored.token, SECRET).replace('%3D', '=')}"}, "bearer"),
    ):
        response = client.get("/api/me", headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        assert body["user"] == {
            "id": stored.user_id,
            "name": "Stored User",
            "email": f"{stored.user_id.lower()}@example.test",
            "emailVerified": True,
            "image": None,
        }
        assert body["session"]["id"] == stored.session_id
        assert datetime.fromisoformat(body["session"]["expiresAt"]) > datetime.now(UTC)
        assert body["credential"] == credential
        assert stored.token not in response.get_data(as_text=True)
        assert response.headers["Cache-Control"] == "private, no-store"


def test_revoked_expired_and_deleted_are_refused_on_the_very_next_request(
    client, database_url
) -> None:
    revoked, expired, deleted = (store_session(database_url) for _ in range(3))
    for stored in (revoked, expired, deleted):
        assert client.get("/api/me", headers=cookie_of(stored.token)).status_code == 200
    run_sql(database_url, "DELETE FROM session WHERE id = %s", (revoked.session_id,))
    run_sql(
        database_url,
        "UPDATE session SET \"expiresAt\" = now() - interval '1 second' WHERE id = %s",
        (expired.session_id,),
    )
    delete_user(database_url, deleted.user_id)
    for stored in (revoked, expired, deleted):
        assert_unauthenticated(client.get("/api/me", headers=cookie_of(stored.token)))


def test_an_unsigned_bearer_only_when_allowed(make_app, stored) -> None:
    raw = {"Authorization": f"Bearer {stored.token}"}
    strict = make_app(BETTER_AUTH_URL=AUTH_URL, BETTER_AUTH_SECRET=SECRET).test_client(
        use_cookies=False
    )  # Cookie headers as sent
    assert_unauthenticated(strict.get("/api/me", headers=raw))
    lenient = make_app(
        BETTER_AUTH_URL=AUTH_URL,
        BETTER_AUTH_SECRET=SECRET,
        BETTER_AUTH_ALLOW_UNSIGNED_BEARER="true",
    ).test_client(use_cookies=False)  # Cookie headers as sent
    assert lenient.get("/api/me", headers=raw).get_json()["credential"] == "bearer"
    assert_unauthenticated(lenient.get("/api/me", headers={"Authorization": "Bearer a\x00b"}))


def test_an_authorization_that_is_not_better_auths_is_passed_over_for_the_cookie(
    client, stored
) -> None:
    """As the bearer plugin does: the ops token, Basic or a badly signed bearer leave the cookie."""
    for authorization in ("Bearer ops-token-0123456789", "Basic dXNlcjpwYXNz", "Bearer x.y"):
        headers = {**cookie_of(stored.token), "Authorization": authorization}
        assert client.get("/api/me", headers=headers).get_json()["credential"] == "cookie"
        assert_unauthenticated(client.get("/api/me", headers={"Authorization": authorization}))


def test_without_better_auth_url_nobody_is_known(make_app, stored) -> None:
    client = make_app(BETTER_AUTH_SECRET="", BETTER_AUTH_URL="").test_client(
        use_cookies=False
    )  # Cookie headers as sent
    assert_unauthenticated(client.get("/api/me", headers=cookie_of(stored.token, GOLDEN_SECRET)))


def test_the_https_cookie_has_the_secure_prefix_and_the_prefix_is_a_setting(make_app, stored):
    secure = make_app(BETTER_AUTH_URL="https://auth.example.test", BETTER_AUTH_SECRET=SECRET)
    value = sign(stored.token, SECRET)
    client = secure.test_client(use_cookies=False)  # Cookie headers as sent
    assert (
        client.get("/api/me", headers={"Cookie": f"__Secure-{COOKIE}={value}"}).status_code == 200
    )
    assert_unauthenticated(client.get("/api/me", headers={"Cookie": f"{COOKIE}={value}"}))
    custom = make_app(
        BETTER_AUTH_URL=AUTH_URL, BETTER_AUTH_SECRET=SECRET, BETTER_AUTH_COOKIE_PREFIX="my-app"
    ).test_client(use_cookies=False)  # Cookie headers as sent
    cookie = {"Cookie": f"my-app.session_token={value}"}
    assert custom.get("/api/me", headers=cookie).status_code == 200
    assert_unauthenticated(custom.get("/api/me", headers={"Cookie": f"{COOKIE}={value}"}))


def test_only_the_current_of_rotated_secrets_verifies(make_app, stored) -> None:
    client = make_app(
        BETTER_AUTH_URL=AUTH_URL, BETTER_AUTH_SECRETS="2:new-secret, 1:old-secret"
    ).test_client(use_cookies=False)  # Cookie headers as sent
    assert client.get("/api/me", headers=cookie_of(stored.token, "new-secret")).status_code == 200
    assert_unauthenticated(client.get("/api/me", headers=cookie_of(stored.token, "old-secret")))


def test_verifying_is_one_read_only_statement_and_changes_no_row(
    auth_app, client, database_url
) -> None:
    """Better Auth owns sessions: no extend, refresh or delete, not even of an expired one."""
    live = store_session(database_url, expires_in=timedelta(hours=1))  # due a refresh in BA
    expired = store_session(database_url, expires_in=timedelta(seconds=-1))
    snapshot = 'SELECT id, "expiresAt", "updatedAt", token FROM session ORDER BY id'
    with auth_app.app_context():
        before = db.session.execute(text(snapshot)).all()
        db.session.rollback()
        statements: list[str] = []
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        event.listen(db.engine, "before_cursor_execute", listener)
        try:
            assert client.get("/api/me", headers=cookie_of(live.token)).status_code == 200
            assert len(statements) == 1 and statements[0].lstrip().startswith("SELECT")
            statements.clear()
            assert_unauthenticated(client.get("/api/me", headers=cookie_of(expired.token)))
            assert len(statements) == 1 and statements[0].lstrip().startswith("SELECT")
        finally:
            event.remove(db.engine, "before_cursor_execute", listener)
        assert db.session.execute(text(snapshot)).all() == before
        db.session.rollback()


def test_the_session_lookup_is_one_index_scan_by_token(auth_app, database_url) -> None:
    run_sql(
        database_url,
        'INSERT INTO "user" (id, name, email, "emailVerified")'
        " SELECT 'u' || n, 'n', 'e' || n, false FROM generate_series(1, 3000) n;"
        'INSERT INTO session (id, "expiresAt", token, "updatedAt", "userId")'
        " SELECT 's' || n, now(), 't' || n, now(), 'u' || n FROM generate_series(1, 3000) n;"
        'ANALYZE "user"; ANALYZE session',
    )
    with auth_app.app_context():
        lookup = SESSION_WITH_USER.params(token="t42")
        compiled = lookup.compile(db.engine, compile_kwargs={"literal_binds": True})
        plan = db.session.execute(text(f"EXPLAIN (FORMAT JSON) {compiled}")).scalar()
        db.session.rollback()
    top = plan[0]["Plan"]
    scans = [node for node in _nodes(top) if "Scan" in node["Node Type"]]
    assert top["Node Type"] == "Nested Loop", top
    assert {(n["Node Type"], n.get("Index Name")) for n in scans} == {
        ("Index Scan", "session_token_key"),
        ("Index Scan", "user_pkey"),
    }, scans


def _nodes(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


# ------------------------------------------------------------------ CSRF


def test_cookie_writes_need_a_trusted_origin_and_bearers_do_not(make_app, stored) -> None:
    app = make_app(
        BETTER_AUTH_URL=AUTH_URL,
        BETTER_AUTH_SECRET=SECRET,
        BETTER_AUTH_TRUSTED_ORIGINS="https://app.example.test, https://admin.example.test:8443",
    )

    @app.route("/test/write", methods=["POST", "DELETE"])
    @requires_caller
    def write():
        return jsonify(user=current_caller().user.id)

    @app.put("/test/other")
    @requires_caller  # a second guarded view: each keeps its own endpoint name
    def other():
        return jsonify(user=current_caller().user.id)

    client = app.test_client(use_cookies=False)  # Cookie headers as sent
    assert client.put("/test/other", headers={**cookie_of(stored.token), "Origin": AUTH_URL}).json
    cookie = cookie_of(stored.token)
    for headers in (
        {},
        {"Origin": "https://evil.example.test"},
        {"Origin": "null"},
        {"Origin": "https://app.example.test.evil.test"},
        {"Origin": "http://app.example.test"},  # another scheme is another origin
        {"Referer": "https://evil.example.test/https://app.example.test"},
    ):
        response = client.post("/test/write", headers={**cookie, **headers})
        assert response.status_code == 403, headers
        assert response.get_json()["error"]["code"] == "forbidden"
    for headers in (
        {"Origin": AUTH_URL},
        {"Origin": "https://app.example.test"},
        {"Origin": "https://ADMIN.example.test:8443"},
        {"Referer": "https://app.example.test/some/page?x=1"},
    ):
        assert client.post("/test/write", headers={**cookie, **headers}).status_code == 200, headers
    assert client.delete("/test/write", headers={**cookie, "Origin": AUTH_URL}).status_code == 200
    bearer = {"Authorization": f"Bearer {sign(stored.token, SECRET)}"}
    evil = {"Origin": "https://evil.example.test"}
    assert client.post("/test/write", headers={**bearer, **evil}).status_code == 200
    assert client.get("/api/me", headers={**cookie, **evil}).status_code == 200  # safe method
    assert_unauthenticated(client.post("/test/write", headers={"Origin": AUTH_URL}))


# ------------------------------------------------------------------ JWTs


def signing_key(database_url: str, expires_at: datetime | None = None) -> SigningKey:
    return SigningKey(database_url, AUTH_URL, expires_at)


def test_a_jwt_of_the_jwt_plugin_answers_its_user_without_a_session(client, database_url) -> None:
    key = signing_key(database_url)
    response = client.get("/api/me", headers={"Authorization": f"Bearer {key.token()}"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {
        "user": {
            "id": "user-1", "name": "Jay", "email": "jay@example.test", "emailVerified": True,
            "image": None,
        },
        "session": None,
        "credential": "jwt",
    }  # fmt: skip


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forge(header: dict, claims: dict, signer) -> str:
    """A JWT built by hand, so that headers PyJWT would refuse to write can be sent."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(signer(signing_input.encode()))}"


def test_every_wrong_jwt_is_a_json_401(client, database_url) -> None:
    key = signing_key(database_url)
    old = signing_key(database_url, expires_at=datetime.now(UTC) - timedelta(days=30, hours=1))
    good = key.token()
    claims = jwt.decode(good, options={"verify_signature": False})
    header, payload, signature = good.split(".")
    public_jwk = jwt.algorithms.OKPAlgorithm.to_jwk(key.private.public_key())
    other = Ed25519PrivateKey.generate()
    hs256 = lambda data: hmac.new(public_jwk.encode(), data, hashlib.sha256).digest()  # noqa: E731
    cases = {
        "expired": key.token(exp=int(time.time()) - 5),
        "wrong issuer": key.token(iss="https://elsewhere.example.test"),
        "wrong audience": key.token(aud="https://elsewhere.example.test"),
        "no exp": key.token(exp=...),
        "no sub": key.token(sub=...),
        "no email": key.token(email=...),
        "email not a string": key.token(email=42),
        "image not a string": key.token(image=7),
        "unknown kid": forge({"alg": "EdDSA", "kid": "nope"}, claims, key.private.sign),
        "no kid": forge({"alg": "EdDSA"}, claims, key.private.sign),
        "kid not a string": forge({"alg": "EdDSA", "kid": 3}, claims, key.private.sign),
        "alg none": forge({"alg": "none", "kid": key.kid}, claims, lambda data: b""),
        "HS256 with the public key": forge({"alg": "HS256", "kid": key.kid}, claims, hs256),
        "signed by another key": forge({"alg": "EdDSA", "kid": key.kid}, claims, other.sign),
        "tampered payload": f"{header}.{b64url(json.dumps({**claims, 'sub': 'x'}).encode())}."
        + signature,
        "signature cut": f"{header}.{payload}.{signature[:-4]}",
        "key expired beyond the grace period": old.token(),
    }
    for case, token in cases.items():
        response = client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, case
        assert_unauthenticated(response)
    assert client.get("/api/me", headers={"Authorization": f"Bearer {good}"}).status_code == 200


def test_an_unknown_kid_reads_the_keys_again_at_most_once_per_interval(
    auth_app, database_url
) -> None:
    now = [100.0]
    keys = KeySet(refetch_interval_s=5, clock=lambda: now[0])
    first = signing_key(database_url)
    with auth_app.app_context():
        assert keys.key(first.kid, db.session) is not None and keys.fetches == 1
        assert keys.key(first.kid, db.session) is not None and keys.fetches == 1  # known
        for _ in range(3):  # a flood of forged kids within the interval: no more reads
            assert keys.key("forged", db.session) is None
        assert keys.fetches == 1
        second = signing_key(database_url)  # Better Auth rotated its key
        now[0] = 104.9
        assert keys.key(second.kid, db.session) is None and keys.fetches == 1
        now[0] = 105.0
        assert keys.key(second.kid, db.session) is not None and keys.fetches == 2
        assert keys.key(first.kid, db.session) is not None and keys.fetches == 2
        third = signing_key(database_url)
        now[0] = 200.0  # long after: an unknown kid reads the keys again
        assert keys.key(third.kid, db.session) is not None and keys.fetches == 3
        db.session.rollback()


def test_no_credential_or_secret_reaches_a_log_line_or_an_answer(
    make_app, database_url, capsys
) -> None:
    app = make_app(BETTER_AUTH_URL=AUTH_URL, BETTER_AUTH_SECRET=SECRET, LOG_LEVEL="DEBUG")
    client = app.test_client(use_cookies=False)
    stored = store_session(database_url)
    key = signing_key(database_url)
    wrong = sign(stored.token, "another-secret-0123456789abcdef0123")
    sent = {
        "cookie": {"Cookie": f"{COOKIE}={sign(stored.token, SECRET)}"},
        "wrong cookie": {"Cookie": f"{COOKIE}={wrong}"},
        "bearer": {"Authorization": f"Bearer {sign(stored.token, SECRET)}"},
        "raw bearer": {"Authorization": f"Bearer {stored.token}"},
        "jwt": {"Authorization": f"Bearer {key.token()}"},
        "expired jwt": {"Authorization": f"Bearer {key.token(exp=1)}"},
    }
    bodies = "".join(client.get("/api/me", headers=h).get_data(as_text=True) for h in sent.values())
    output = capsys.readouterr()
    logged = output.out + output.err
    assert "caller refused" in logged  # the reasons are logged, at DEBUG
    for secret in (stored.token, wrong.split(".")[1], key.token().split(".")[2], SECRET):
        assert secret not in logged and secret not in bodies


def test_an_expired_key_verifies_through_the_grace_period_and_a_broken_row_is_skipped(
    client, database_url
) -> None:
    """Better Auth's 30 days of jwks.gracePeriod; a row that is no key costs no caller a 500."""
    run_sql(
        database_url,
        'INSERT INTO jwks (id, "publicKey", "privateKey", "createdAt") VALUES'
        " ('broken-json', 'not json', 'x', now()),"
        " ('broken-jwk', '{\"kty\": \"OKP\"}', 'x', now())",
    )
    recent = signing_key(database_url, expires_at=datetime.now(UTC) - timedelta(days=29))
    for token in (recent.token(), signing_key(database_url).token()):
        assert (
            client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        )


def test_the_sqlite_development_default_verifies_sessions_too(make_app, tmp_path) -> None:
    """SQLite gives naive timestamps: they are UTC, and compared as such."""
    from service.models import Session, User

    app = make_app(
        DATABASE_URL=f"sqlite:///{tmp_path / 'dev.sqlite3'}",
        BETTER_AUTH_URL=AUTH_URL,
        BETTER_AUTH_SECRET=SECRET,
    )
    with app.app_context():
        db.create_all()
        user = User(name="Dev", email="dev@example.test")
        now = datetime.now(UTC)
        db.session.add_all([
            Session(token="live-token", expires_at=now + timedelta(hours=1), user=user),
            Session(token="past-token", expires_at=now - timedelta(seconds=1), user=user),
        ])  # fmt: skip
        db.session.commit()
    client = app.test_client(use_cookies=False)  # Cookie headers as sent
    assert (
        client.get("/api/me", headers=cookie_of("live-token")).get_json()["user"]["name"] == "Dev"
    )
    assert_unauthenticated(client.get("/api/me", headers=cookie_of("past-token")))
