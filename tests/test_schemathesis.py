"""schemathesis, a real client, against the served OpenAPI description in each mode.

A real gunicorn on real PostgreSQL; every check schemathesis has (`--checks all`), 0 failures.
The served document must tell the truth in each mode: in production /api/db/test needs the
bearer token, in development it is open (service/openapi.py's `document_for`).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from harness.better_auth import delete_user, sign, store_session
from harness.service import FAST_HEALTH, ServerFactory
from service.openapi import SPEC_PATH, document_for

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
INSTALL = "pip install -r requirements-dev.txt (schemathesis is pinned there)"


def test_production_serves_the_published_document_and_development_drops_the_guard() -> None:
    assert document_for(production=True) == SPEC_PATH.read_bytes()
    published = json.loads(SPEC_PATH.read_bytes())["paths"]["/api/db/test"]["get"]
    assert published["security"] and {"401", "404"} <= published["responses"].keys()
    open_ = json.loads(document_for(production=False))["paths"]["/api/db/test"]["get"]
    assert "security" not in open_ and not {"401", "404"} & open_["responses"].keys()


@pytest.mark.parametrize("mode", ["development", "production"])
def test_schemathesis_finds_no_failure(
    mode: str, serve: ServerFactory, database_url: str, tmp_path: Path
) -> None:
    if not SCHEMATHESIS.exists():
        pytest.fail(f"schemathesis is not installed ({INSTALL})")
    token = secrets.token_hex(16)
    auth_secret = secrets.token_hex(32)
    env = {
        "APP_ENV": mode,
        "DATABASE_URL": database_url,
        "BETTER_AUTH_URL": "http://127.0.0.1:3000",
        "BETTER_AUTH_SECRET": auth_secret,
        **FAST_HEALTH,
    }
    # A signed-in user, so that /api/me's 200 is checked too; the ops token does not hide the
    # cookie from it (an Authorization that is not Better Auth's is passed over).
    stored = store_session(database_url)
    cookie = f"better-auth.session_token={sign(stored.token, auth_secret)}"
    headers = ["-H", f"Cookie: {cookie}"]
    if mode == "production":
        env |= {"SECRET_KEY": secrets.token_hex(32), "OPS_TOKEN": token}
        headers += ["-H", f"Authorization: Bearer {token}"]
    _, base = serve(env)
    command = [str(SCHEMATHESIS), "run", f"{base}/api/openapi.json", "--checks", "all"]
    try:
        result = subprocess.run(
            [*command, *headers],
            cwd=tmp_path,  # its report folder and caches stay out of the repository
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        delete_user(database_url, stored.user_id)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout, result.stdout[-3000:]
