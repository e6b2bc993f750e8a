"""The test of done for the schema: Better Auth itself, on a database migrated only by us.

Runs Better Auth 1.7's own migrator and server API (tests/better_auth/check.mjs, Node) against a
fresh database that only `flask db upgrade` has touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from harness.service import PROJECT_ROOT, migrate, run_flask
from service.extensions import db
from service.models import User

HARNESS = PROJECT_ROOT / "tests" / "better_auth"


def better_auth(command: str, database_url: str) -> tuple[int, dict]:
    assert shutil.which("node"), "Node.js is required: install it (make test does)"
    assert (HARNESS / "node_modules" / "better-auth").is_dir(), (
        "run `npm ci` in tests/better_auth first (make test does)"
    )
    result = subprocess.run(
        ["node", "check.mjs", command],
        cwd=HARNESS,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def migrated_url(databases) -> str:
    url = databases.create("svc_better_auth")
    migrate(url)
    return url


def test_better_auth_finds_nothing_to_create_or_add(migrated_url):
    code, plan = better_auth("plan", migrated_url)
    assert code == 0, plan
    assert plan["toBeCreated"] == []
    assert plan["toBeAdded"] == []
    assert plan["toBeAddedIndexes"] == []
    assert plan["schemaProblems"] == []
    assert plan["warnings"] == []  # a wrong type or nullability only warns


def test_the_harness_does_see_a_missing_schema(databases):
    """Guards the test above: on an empty database Better Auth plans all five tables (the jwt
    plugin's `jwks` included, so the plugins are on)."""
    code, plan = better_auth("plan", databases.create("svc_empty"))
    assert code == 0, plan
    assert sorted(plan["toBeCreated"]) == ["account", "jwks", "session", "user", "verification"]


def test_better_auth_plans_the_jwks_table_on_a_database_at_0001(databases):
    """The jwks table is what revision 0002 adds: a database at 0001 lacks exactly it."""
    url = databases.create("svc_at_0001")
    result = run_flask(["db", "upgrade", "0001"], {"DATABASE_URL": url})
    assert result.returncode == 0, result.stderr
    code, plan = better_auth("plan", url)
    assert code == 0, plan
    assert plan["toBeCreated"] == ["jwks"] and plan["toBeAdded"] == []


def test_better_auth_signs_up_and_in_and_our_models_read_its_rows(migrated_url, make_app):
    code, result = better_auth("exercise", migrated_url)
    assert code == 0, result
    assert result == {**result, "signUp": True, "signIn": True, "getSession": True}
    assert result["duplicateRefused"] is True

    app = make_app(DATABASE_URL=migrated_url)
    with app.app_context():
        user = db.session.get(User, result["userId"])
        assert user is not None and user.email_verified is False
        assert user.created_at.tzinfo is not None
        assert len(user.sessions) == 2  # one from signing up, one from signing in
        assert len(user.accounts) == 1
        assert user.accounts[0].provider_id == "credential"
        assert user.accounts[0].password  # Better Auth stored a hash, not nothing
