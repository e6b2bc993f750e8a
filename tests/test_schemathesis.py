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
    env = {"APP_ENV": mode, "DATABASE_URL": database_url, **FAST_HEALTH}
    headers: list[str] = []
    if mode == "production":
        env |= {"SECRET_KEY": secrets.token_hex(32), "OPS_TOKEN": token}
        headers = ["-H", f"Authorization: Bearer {token}"]
    _, base = serve(env)
    command = [str(SCHEMATHESIS), "run", f"{base}/api/openapi.json", "--checks", "all"]
    result = subprocess.run(
        [*command, *headers],
        cwd=tmp_path,  # its report folder and caches stay out of the repository
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout, result.stdout[-3000:]
