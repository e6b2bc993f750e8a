"""A real Better Auth 1.7 server (tests/better_auth/server.mjs, Node) and a client of its HTTP API.

One Node process serves several Better Auth instances on one database, each on a free 127.0.0.1
port with its own base URL and secret(s); credentials are issued over HTTP exactly as a browser or
another service would get them: the session cookie (Set-Cookie, as sent back verbatim), the signed
bearer token (`set-auth-token`) and the JWT (`/api/auth/token`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import jwt
import psycopg2
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.processes import ServerProcess, StartedResource, free_port, wait_for

HARNESS_DIR = Path(__file__).resolve().parent.parent / "tests" / "better_auth"
TIMEOUT_S = 10.0
PASSWORD = "a-password-of-the-tests"  # the users exist only in a test database


@dataclass(frozen=True)
class Credentials:
    """What one sign-in gave: the Cookie header pair, the bearer, the user's id."""

    cookie: str  # `name=value`, exactly as Set-Cookie gave it
    bearer: str  # the set-auth-token header
    user_id: str


@dataclass(frozen=True)
class StoredSession:
    """A user and a session row written as Better Auth writes them."""

    user_id: str
    session_id: str
    token: str


def sign(token: str, secret: str) -> str:
    """The cookie value better-call's signCookieValue makes: `token.base64(HMAC)`, then
    encodeURIComponent (checked against its golden vector and the real server in the tests)."""
    mac = hmac.new(secret.encode(), token.encode(), hashlib.sha256).digest()
    return quote(f"{token}.{base64.b64encode(mac).decode()}", safe="")


def new_token() -> str:
    """32 letters and digits, the shape of Better Auth's ids and session tokens."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


def store_session(database_url: str, expires_in: timedelta = timedelta(days=7)) -> StoredSession:
    """Insert a new user and one session of it (`expires_in` may be negative: already expired)."""
    stored = StoredSession(new_token(), new_token(), new_token())
    now = datetime.now(UTC)
    connection = psycopg2.connect(database_url, connect_timeout=5)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(
                'INSERT INTO "user" (id, name, email, "emailVerified") VALUES (%s, %s, %s, true)',
                (stored.user_id, "Stored User", f"{stored.user_id.lower()}@example.test"),
            )
            cursor.execute(
                'INSERT INTO session (id, "expiresAt", token, "updatedAt", "userId")'
                " VALUES (%s, %s, %s, %s, %s)",
                (stored.session_id, now + expires_in, stored.token, now, stored.user_id),
            )
    finally:
        connection.close()
    return stored


def delete_user(database_url: str, user_id: str) -> None:
    """Delete a user; its sessions and accounts go with it (on delete cascade)."""
    connection = psycopg2.connect(database_url, connect_timeout=5)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute('DELETE FROM "user" WHERE id = %s', (user_id,))
    finally:
        connection.close()


class SigningKey:
    """An Ed25519 key stored in `jwks` as the jwt plugin stores it, and JWTs signed with it."""

    def __init__(self, database_url: str, issuer: str, expires_at: datetime | None = None) -> None:
        self.private = Ed25519PrivateKey.generate()
        self.kid = new_token()
        self.issuer = issuer
        public = jwt.algorithms.OKPAlgorithm.to_jwk(self.private.public_key())
        connection = psycopg2.connect(database_url, connect_timeout=5)
        try:
            with connection, connection.cursor() as cursor:
                cursor.execute(
                    'INSERT INTO jwks (id, "publicKey", "privateKey", "createdAt", "expiresAt")'
                    " VALUES (%s, %s, 'encrypted', now(), %s)",
                    (self.kid, public, expires_at),
                )
        finally:
            connection.close()

    def token(self, **overrides: Any) -> str:
        """The plugin's claims for a user `user-1`; an override of `...` removes the claim."""
        now = int(datetime.now(UTC).timestamp())
        claims = {
            "sub": "user-1", "id": "user-1", "name": "Jay", "email": "jay@example.test",
            "emailVerified": True, "image": None, "iat": now, "exp": now + 900,
            "iss": self.issuer, "aud": self.issuer,
        }  # fmt: skip
        claims = {k: v for k, v in {**claims, **overrides}.items() if v is not ...}
        return jwt.encode(claims, self.private, algorithm="EdDSA", headers={"kid": self.kid})


class BetterAuthServer(StartedResource):
    """`instances` maps a name to its options: `secret` or `secrets` ([{version, value}]), and
    `baseURL` (default: its own http://127.0.0.1:<port>)."""

    def __init__(self, database_url: str, instances: dict[str, dict[str, Any]], log_path: Path):
        self.database_url = database_url
        self.ports = {name: free_port() for name in instances}
        self.instances = {
            name: {"baseURL": f"http://127.0.0.1:{self.ports[name]}", **options}
            for name, options in instances.items()
        }
        self.log_path = log_path
        self.process: ServerProcess | None = None

    def start(self) -> Self:
        node = shutil.which("node")
        assert node, "Node.js is required: install it (make test does)"
        assert (HARNESS_DIR / "node_modules" / "better-auth").is_dir(), (
            "run `npm ci` in tests/better_auth first (make test does)"
        )
        config = [
            {"name": name, "port": self.ports[name], **options}
            for name, options in self.instances.items()
        ]
        env = {**os.environ, "DATABASE_URL": self.database_url, "INSTANCES": json.dumps(config)}
        env.pop("BETTER_AUTH_SECRET", None)
        env.pop("BETTER_AUTH_SECRETS", None)
        env.pop("BETTER_AUTH_URL", None)
        self.process = ServerProcess(
            [node, "server.mjs"], env=env, cwd=HARNESS_DIR, log_path=self.log_path
        ).start()

        def listening() -> bool:
            if not self.process.is_running():
                raise RuntimeError(f"Better Auth exited:\n{self.process.log_tail()}")
            return '"listening"' in self.process.log_text()

        wait_for(listening, 30, description="Better Auth to listen")
        return self

    def cleanup(self) -> None:
        if self.process is not None:
            self.process.terminate(timeout=5)

    def base_url(self, name: str) -> str:
        """The instance's configured base URL: the service's BETTER_AUTH_URL."""
        return self.instances[name]["baseURL"]

    def _url(self, name: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/api/auth{path}"

    def _origin(self, name: str) -> dict[str, str]:
        return {"Origin": self.base_url(name)}

    def sign_up(self, name: str, email: str = "", password: str = "") -> Credentials:
        """A new user (a random email unless given), signed in by signing up."""
        email = email or f"user-{secrets.token_hex(6)}@example.test"
        body = {"email": email, "password": password or PASSWORD, "name": "Test User"}
        response = requests.post(
            self._url(name, "/sign-up/email"), json=body, headers=self._origin(name),
            timeout=TIMEOUT_S,
        )  # fmt: skip
        return self._credentials(name, response)

    def sign_in(self, name: str, email: str, password: str) -> Credentials:
        response = requests.post(
            self._url(name, "/sign-in/email"), json={"email": email, "password": password},
            headers=self._origin(name), timeout=TIMEOUT_S,
        )  # fmt: skip
        return self._credentials(name, response)

    def _credentials(self, name: str, response: requests.Response) -> Credentials:
        assert response.status_code == 200, response.text
        cookies = response.raw.headers.getlist("Set-Cookie")
        session = next(c for c in cookies if "session_token=" in c.split(";")[0])
        return Credentials(
            cookie=session.split(";")[0],
            bearer=response.headers["set-auth-token"],
            user_id=response.json()["user"]["id"],
        )

    def jwt(self, name: str, cookie: str) -> str:
        response = requests.get(
            self._url(name, "/token"), headers={"Cookie": cookie}, timeout=TIMEOUT_S
        )
        assert response.status_code == 200, response.text
        return response.json()["token"]

    def get_session(self, name: str, cookie: str) -> Any:
        """Better Auth's own answer for this cookie (None when it sees no session)."""
        response = requests.get(
            self._url(name, "/get-session"), headers={"Cookie": cookie}, timeout=TIMEOUT_S
        )
        assert response.status_code == 200, response.text
        return response.json()

    def sign_out(self, name: str, cookie: str) -> None:
        response = requests.post(
            self._url(name, "/sign-out"), headers={"Cookie": cookie, **self._origin(name)},
            json={}, timeout=TIMEOUT_S,
        )  # fmt: skip
        assert response.status_code == 200, response.text
