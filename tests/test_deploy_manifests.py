"""The Kubernetes manifests under deploy/kubernetes, checked against the app and the image.

- Every object validates against the Kubernetes API schema (kubernetes-validate, offline, strict).
- The probes hit routes that exist in the app's URL map, and the right ones: liveness and startup
  the database-free /api/health/live, readiness /api/health/ready (or /api/health).
- Shutdown timing: terminationGracePeriodSeconds >= preStop sleep + gunicorn's graceful_timeout,
  as gunicorn.conf.py computes it from the environment the manifest sets.
- Secrets only through secretKeyRef; the Secret template holds placeholders only; pods run as the
  image's non-root user; the migration Job runs what compose's `migrate` runs.
- docs/deployment.md: it names every manifest, and its least-privilege SQL works as written: run
  by a non-superuser administrator (as on a managed service), then migrated as the migration role
  and served as the runtime role, which cannot change the schema.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml
from flask import Flask
from psycopg2 import errors, sql
from sqlalchemy.engine import make_url

from harness.service import ADMIN_URL, PROJECT_ROOT, AppFactory, admin_execute, run_command
from service.health import ROUTES
from tests.test_containers import (
    SECRET_NAME,
    compose_source,
    image_exposed_ports,
    image_user,
)

MANIFESTS = PROJECT_ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")  # the oldest we document, and the newest known
SECRET_VARIABLES = ("DATABASE_URL", "MIGRATION_DATABASE_URL", "SECRET_KEY", "OPS_TOKEN")
VALIDATE_INSTALL = "pip install kubernetes-validate==1.37.0 (requirements-dev.txt)"


def manifest_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")


def load_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in manifest_files():
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                key = (document["kind"], document["metadata"]["name"])
                assert key not in objects, f"{key} defined twice"
                objects[key] = document
    return objects


OBJECTS = load_objects()
API = OBJECTS[("Deployment", "db-service")]
JOB = OBJECTS[("Job", "db-service-migrate")]
SECRET = OBJECTS[("Secret", "db-service")]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1
    return containers[0]


def literal_env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def workloads() -> list[dict[str, Any]]:
    return [o for o in OBJECTS.values() if o["kind"] in ("Deployment", "Job")]


def test_every_object_validates_against_the_kubernetes_schema() -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(
            f"kubernetes-validate is not installed (CI must install it: {VALIDATE_INSTALL})"
        )
    for version in KUBERNETES_VERSIONS:
        for (kind, name), document in OBJECTS.items():
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{kind}/{name} is invalid for Kubernetes {version}: {error}")


def test_kustomization_lists_existing_files_and_the_deployments_image() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (MANIFESTS / resource).is_file(), resource
    assert "secret.example.yaml" not in kustomization["resources"], "a template is not a Secret"
    image = container(API)["image"]
    assert image.split(":")[0] in {i["name"] for i in kustomization["images"]}
    assert container(JOB)["image"] == image, "the Job must migrate with the release's image"


def probe_endpoint(app: Flask, path: str) -> str:
    """The probe a path reaches, as the app's metrics name it."""
    response = app.test_client().get(path)
    assert response.status_code in (200, 503), f"probe path {path} is not a probe of the app"
    route = ROUTES.get(path)
    assert route is not None, f"probe path {path} is not a probe of the app"
    return route[1]


def test_probes_hit_the_right_routes_of_the_app(app: Flask) -> None:
    api = container(API)
    startup = api["startupProbe"]["httpGet"]["path"]
    liveness = api["livenessProbe"]["httpGet"]["path"]
    readiness = api["readinessProbe"]["httpGet"]["path"]
    # Liveness never depends on the database: an outage must not restart every pod at once.
    assert liveness == "/api/health/live" and probe_endpoint(app, liveness) == "health.live"
    assert startup == "/api/health/live" and probe_endpoint(app, startup) == "health.live"
    assert readiness in ("/api/health/ready", "/api/health")
    assert probe_endpoint(app, readiness) in ("health.ready", "health.health")


def test_probe_timings_are_sane() -> None:
    api = container(API)
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert set(ports.values()) <= image_exposed_ports(), "the pod must use the image's port"
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = api[kind]
        period = probe.get("periodSeconds", 10)
        timeout = probe.get("timeoutSeconds", 1)
        threshold = probe.get("failureThreshold", 3)
        assert probe["httpGet"]["port"] in ports, f"{kind} uses an unknown port"
        assert 1 <= timeout <= 5 and timeout <= period, (
            f"{kind}: timeout {timeout}, period {period}"
        )
        assert threshold >= 2, f"{kind}: one slow answer must not be enough to act"
    startup = api["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30, "too little time to boot"
    liveness = api["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 20, "restarts too eagerly"
    assert "initialDelaySeconds" not in liveness, "the startup probe holds liveness off instead"


def prestop_sleep_seconds(c: dict[str, Any]) -> int:
    pre_stop = c.get("lifecycle", {}).get("preStop")
    if pre_stop is None:
        return 0
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return int(command[1])


def gunicorn_settings_for(env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """gunicorn.conf.py's values given this environment (secrets filled with placeholders).

    Loading the file also runs the service's own validation, so the manifest's settings must pass.
    """
    placeholders = {
        "DATABASE_URL": "postgresql://user@db.example.internal:5432/app",
        "SECRET_KEY": "x" * 32,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    script = (
        "import json, runpy; s = runpy.run_path('gunicorn.conf.py'); "
        "print(json.dumps({k: s[k] for k in ('graceful_timeout', 'timeout', 'workers')}"
        " | {'drain': s['settings'].shutdown_drain_s}))"
    )
    result = run_command([sys.executable, "-c", script], {**placeholders, **env}, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_termination_grace_covers_the_drain_and_gunicorn_graceful_timeout(
    tmp_path: Path,
) -> None:
    """SIGTERM at once (no preStop), the service's own drain, then SIGKILL only after it all."""
    api = container(API)
    grace = pod_spec(API)["terminationGracePeriodSeconds"]
    sleep = prestop_sleep_seconds(api)
    settings = gunicorn_settings_for(literal_env(api), tmp_path)
    assert sleep == 0, "the drain replaces a preStop sleep"
    assert 0 < settings["drain"] < settings["graceful_timeout"]
    assert grace >= sleep + settings["graceful_timeout"], (
        f"SIGKILL after {grace}s, but draining takes {sleep}s + {settings['graceful_timeout']}s"
    )
    assert settings["workers"] == int(literal_env(api)["WEB_CONCURRENCY"])


def test_secrets_come_only_from_secret_refs() -> None:
    secret_keys = set(SECRET["stringData"])
    for workload in workloads():
        for c in pod_spec(workload)["containers"]:
            for entry in c.get("env", []):
                name = entry["name"]
                if name in SECRET_VARIABLES or SECRET_NAME.search(name):
                    assert "value" not in entry, f"{c['name']}: {name} is a literal"
                    ref = entry["valueFrom"]["secretKeyRef"]
                    assert ref["name"] == SECRET["metadata"]["name"]
                    assert ref["key"] in secret_keys, f"{name}: no key {ref['key']} in the template"
                elif "value" in entry:
                    assert "://" not in entry["value"], f"{name}: a URL belongs in the Secret"
            assert "envFrom" not in c, "every variable is listed, so the tests can read it"


def test_secret_template_holds_placeholders_only() -> None:
    assert SECRET["type"] == "Opaque" and "data" not in SECRET
    for key, value in SECRET["stringData"].items():
        assert "change-me" in value, f"{key} looks like a real value"
    for key in ("database-url", "migration-database-url"):
        url = SECRET["stringData"][key]
        assert "sslmode=verify-full" in url and "sslrootcert=" in url, key


def test_pods_run_as_the_images_non_root_user_with_limits() -> None:
    uid, gid = image_user()
    for workload in (API, JOB):
        spec = pod_spec(workload)
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == uid and security.get("runAsGroup", gid) == gid
        assert spec.get("automountServiceAccountToken") is False
        c = container(workload)
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        # A read-only root needs a writable /tmp (gunicorn's metrics folder, tempfile).
        assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}  # noqa: S108
        resources = c["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys()
        assert "memory" in resources["limits"]


def test_rollout_never_drops_below_the_replica_count() -> None:
    strategy = API["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert str(strategy["rollingUpdate"]["maxUnavailable"]) in ("0", "0%")
    env = literal_env(container(API))
    assert "WEB_CONCURRENCY" in env, "a container sees the node's cores: set the worker count"


def test_service_selects_the_api_pods_on_the_named_port() -> None:
    service = OBJECTS[("Service", "db-service")]
    labels = API["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in container(API)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    budget = OBJECTS[("PodDisruptionBudget", "db-service")]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_migration_job_runs_composes_migrate_command_once() -> None:
    job = JOB["spec"]
    c = container(JOB)
    assert c["command"] == compose_source()["services"]["migrate"]["command"]
    assert pod_spec(JOB)["restartPolicy"] == "Never"
    assert job["backoffLimit"] <= 3
    env = literal_env(c)
    waits = float(env.get("DB_WAIT_TIMEOUT_S", 60)) + float(
        env.get("DB_MIGRATION_LOCK_TIMEOUT_S", 300)
    )
    assert job["activeDeadlineSeconds"] > waits, "the deadline would cut a legitimate wait"
    database = next(e for e in c["env"] if e["name"] == "DATABASE_URL")
    assert database["valueFrom"]["secretKeyRef"]["key"] == "migration-database-url"


def test_optional_pgbouncer_pools_transactions_and_talks_tls() -> None:
    bouncer = container(OBJECTS[("Deployment", "db-service-pgbouncer")])
    env = literal_env(bouncer)
    assert env["POOL_MODE"] == "transaction"
    assert env["SERVER_TLS_SSLMODE"] == "verify-full"
    assert re.fullmatch(r"edoburu/pgbouncer:v\d+\.\d+\.\d+-p\d+", bouncer["image"])
    assert OBJECTS[("Service", "db-service-pgbouncer")]["spec"]["ports"][0]["port"] == int(
        env["LISTEN_PORT"]
    )


def test_docs_reference_every_manifest() -> None:
    guide = (PROJECT_ROOT / "docs" / "deployment.md").read_text()
    for path in [*manifest_files(), MANIFESTS / "kustomization.yaml"]:
        assert path.name in guide, f"docs/deployment.md never mentions {path.name}"


def guide_sql_blocks(heading: str) -> list[str]:
    """The ```sql blocks of one section of docs/deployment.md, in order."""
    guide = (PROJECT_ROOT / "docs" / "deployment.md").read_text()
    section = guide.split(f"### {heading}", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, re.DOTALL)


def run_psql(url: str, script: str) -> None:
    psql = shutil.which("psql")
    if psql is None:
        pytest.fail("psql is not installed (CI must install it: apt-get install postgresql-client)")
    result = subprocess.run(
        [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_least_privilege_roles_from_the_guide_work(make_app: AppFactory) -> None:
    admin_sql, migrator_sql = guide_sql_blocks("Least-privilege roles")
    suffix = secrets.token_hex(4)
    names = {
        "app_migrator": f"app_migrator_{suffix}",
        "app_runtime": f"app_runtime_{suffix}",
        "app": f"svc_roles_{suffix}",
    }
    admin, admin_password = f"provider_admin_{suffix}", secrets.token_hex(12)

    def rename(text: str) -> str:
        return re.sub(r"\b(app_migrator|app_runtime|app)\b", lambda m: names[m[1]], text)

    passwords = dict(re.findall(r"ROLE (app_\w+) LOGIN PASSWORD '([^']+)'", admin_sql))
    server = make_url(ADMIN_URL)

    def url(user: str, password: str, database: str) -> str:
        return server.set(username=user, password=password, database=database).render_as_string(
            hide_password=False
        )

    # A managed service's administrator is no superuser: it may create roles and databases.
    admin_execute(
        sql.SQL("CREATE ROLE {} LOGIN CREATEDB CREATEROLE PASSWORD {}").format(
            sql.Identifier(admin), sql.Literal(admin_password)
        )
    )
    try:
        run_psql(url(admin, admin_password, server.database or "postgres"), rename(admin_sql))
        migrator_url = url(names["app_migrator"], passwords["app_migrator"], names["app"])
        runtime_url = url(names["app_runtime"], passwords["app_runtime"], names["app"])
        run_psql(migrator_url, rename(migrator_sql))

        # Migrated as the migration role, exactly as operators do; served as the runtime role.
        migrate_env = {"DATABASE_URL": runtime_url, "MIGRATION_DATABASE_URL": migrator_url}
        result = run_command(
            [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], migrate_env
        )
        assert result.returncode == 0, result.stderr
        client = make_app(DATABASE_URL=runtime_url).test_client()
        verified = client.get("/api/db/test")
        assert verified.status_code == 200, verified.get_json()

        connection = psycopg2.connect(runtime_url, connect_timeout=5)
        try:
            for statement in ("CREATE TABLE intruder (id int)", 'DROP TABLE "verification"'):
                with pytest.raises(errors.InsufficientPrivilege), connection.cursor() as cursor:
                    cursor.execute(statement)
                connection.rollback()
        finally:
            connection.close()
    finally:
        admin_execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(names["app"]))
        )
        for role in (names["app_migrator"], names["app_runtime"], admin):
            admin_execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
