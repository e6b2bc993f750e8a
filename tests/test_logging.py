"""Logs: each request's id in its lines, JSON when asked, and no password in any line, ever.

The password test breaks things on purpose (an unreachable database whose URL holds a password)
and collects every byte the service prints: the app under the real gunicorn in both formats,
`flask db upgrade`, `flask db current` and `flask db wait`.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
import requests
from flask import Flask

from harness.processes import free_port, wait_for
from harness.service import FAST_HEALTH, AppFactory, ServerFactory, run_flask

PASSWORD = "Pw-7c1d9e4b-never-log-me"
OPS_TOKEN = "ops-token-never-log-me-0123"


def unreachable_url() -> str:
    return f"postgresql://svc_user:{PASSWORD}@127.0.0.1:{free_port()}/svc_db"


def test_a_requests_id_is_in_each_of_its_log_lines(
    make_app: AppFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    app = make_app(DATABASE_URL=unreachable_url(), LOG_FORMAT="json")
    response = app.test_client().get("/api/db/test", headers={"X-Request-ID": "req-abc-123"})
    assert response.status_code == 503
    assert response.headers["X-Request-ID"] == "req-abc-123"
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    during = [r for r in records if "database outage" in r["message"]]
    assert during and all(r["request_id"] == "req-abc-123" for r in during)
    outside = [r for r in records if "service ready" in r["message"]]
    assert outside and outside[0]["request_id"] == "-"
    for record in records:
        assert {"time", "level", "name", "request_id", "message"} <= record.keys()


def test_a_traceback_is_redacted_too(
    make_app: AppFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    app: Flask = make_app(DATABASE_URL=unreachable_url(), OPS_TOKEN=OPS_TOKEN)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError(f"cannot use {unreachable_url()} with token {OPS_TOKEN}")

    response = app.test_client().get("/boom", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    output = capsys.readouterr()
    assert "Traceback" in output.out and "[boom-1]" in output.out
    assert PASSWORD not in output.out + output.err
    assert OPS_TOKEN not in output.out + output.err
    assert "svc_user:***@" in output.out


def test_a_short_password_is_masked_in_urls_without_mangling_every_line(
    make_app: AppFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    make_app(DATABASE_URL=f"postgresql://svc:p@127.0.0.1:{free_port()}/svc")
    line = next(line for line in capsys.readouterr().out.splitlines() if "service ready" in line)
    assert "svc:***@127.0.0.1" in line and "pool=queue" in line


def test_no_password_in_any_output_when_the_database_is_unreachable(
    serve: ServerFactory,
) -> None:
    url = unreachable_url()
    secrets_env = {"DATABASE_URL": url, "OPS_TOKEN": OPS_TOKEN, "LOG_LEVEL": "DEBUG"}
    outputs: dict[str, str] = {}

    for log_format in ("json", "text"):
        process, base = serve({**secrets_env, "LOG_FORMAT": log_format, **FAST_HEALTH})
        auth = {"Authorization": f"Bearer {OPS_TOKEN}", "X-Request-ID": f"no-pw-{log_format}"}
        for path in ("/api/health", "/api/health/ready", "/api/db/test", "/metrics", "/nope"):
            response = requests.get(f"{base}{path}", headers=auth, timeout=10)
            assert response.status_code in (200, 404, 503)
            assert PASSWORD not in response.text
        wait_for(lambda p=process: "database outage" in p.log_text(), 5)
        time.sleep(0.5)  # a few failed background checks
        process.terminate(signal.SIGINT, timeout=15)
        outputs[f"gunicorn {log_format}"] = process.log_text()

    for args in (["db", "upgrade"], ["db", "current"], ["db", "wait", "--timeout", "1"]):
        result = run_flask(args, {**secrets_env, "LOG_FORMAT": "text"})
        assert result.returncode != 0
        outputs[" ".join(args)] = result.stdout + result.stderr

    for name, output in outputs.items():
        assert PASSWORD not in output, f"the password leaked in {name}"
        assert OPS_TOKEN not in output, f"the ops token leaked in {name}"
        assert "svc_user:***@" in output, f"{name} does not say which database (masked)"
    # The failing request's lines carry its id: the app's warning and gunicorn's access line.
    text_lines = [line for line in outputs["gunicorn text"].splitlines() if "[no-pw-text]" in line]
    assert any("database outage" in line for line in text_lines)
    assert any(
        '[gunicorn.access] [no-pw-text] 127.0.0.1 "GET /api/db/test' in line for line in text_lines
    )
    json_records = [json.loads(line) for line in outputs["gunicorn json"].splitlines()]
    assert any(r["request_id"] == "no-pw-json" for r in json_records)
