"""The benchmark still runs end to end: `python -m bench --smoke` (one to two minutes).

Numbers are not compared with the targets here, nor are probe latencies (the guarantees under
each scenario are test_worst_day.py's; docs/performance.md holds the targets). This proves that
every section is produced, for both designs (gthread's, checked out from git history by the
bench, and this tree's), with values that make sense, so a change to the service,
gunicorn.conf.py or the harness cannot silently break the benchmark. It asserts no timing, so it
runs beside the other tests (make test hands each module to one xdist process: one bench run).
wrk is required: without it the bench exits 2 with the install command, and this test fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PHASES = ["healthy", "frozen", "thawed", "stopped", "restarted"]
DESIGNS = ("gthread", "new")
SERVERS = [f"{design}-{role}" for design in DESIGNS for role in ("service", "floor")]
SCENARIOS = ("frozen", "slow_clients", "saturation")
PROBES = ("/api/health/live", "/api/health/ready")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=PROJECT_ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"python -m bench --smoke failed:\n{output}"
    assert out.with_suffix(".png").stat().st_size > 10_000, "no fault-timeline plot"
    assert "targets" in result.stdout  # the readable table was printed
    return json.loads(out.read_text())


pytestmark = pytest.mark.timeout(300)


def test_meta_records_the_machine_and_both_designs(smoke: dict) -> None:
    meta = smoke["meta"]
    assert meta["mode"] == "smoke"
    assert meta["machine"]["nproc"] >= 1
    assert meta["machine"]["versions"]["wrk"].startswith("wrk")
    assert not meta["gthread_skipped"], "the gthread design was not checked out from git history"
    assert list(meta["designs"]) == list(DESIGNS)
    assert meta["designs"]["gthread"]["gunicorn"]["worker_class"] == "gthread"
    assert meta["designs"]["new"]["gunicorn"]["worker_class"] == "service.server.Worker"
    for design in meta["designs"].values():
        assert design["gunicorn"]["workers_running"] >= 1
    assert meta["settings"]["HEALTH_STALE_AFTER_S"] > meta["settings"]["HEALTH_CHECK_INTERVAL_S"]
    assert meta["elapsed_s"] > 0


def test_who_is_calling_is_measured_beside_the_database_test(smoke: dict) -> None:
    """/api/me with a signed cookie: every answer a 200, both endpoints measured, the ratios."""
    section = smoke["who_is_calling"]
    for path in ("/api/me", "/api/db/test"):
        endpoint = section["endpoints"][path]
        assert endpoint["non_2xx"] == 0, path
        assert endpoint["rps"] > 0 and 0 < endpoint["p50_ms"] <= endpoint["p99_ms"], path
    assert section["me_vs_db_test"]["rps"] > 0 and section["me_vs_db_test"]["p50"] > 0


def test_every_server_was_driven(smoke: dict) -> None:
    health = smoke["health_throughput"]
    assert len(health["rounds"]) == 1
    for run in health["rounds"]:
        assert sorted(run["runs"]) == sorted(SERVERS)
        for server in SERVERS:
            assert run["runs"][server]["requests"] > 0
            assert run["runs"][server]["non_2xx"] == 0
            assert 0 < run["runs"][server]["p50_ms"] <= run["runs"][server]["p99_ms"]
    for design in DESIGNS:
        assert health["summary"]["designs"][design]["ratio_median"] > 0
        assert health["summary"]["designs"][design]["cpu_ratio_overall"] > 0
    assert health["summary"]["new_vs_gthread"]["ratio_median"] > 0


def test_probe_storm_counted_transactions_per_design(smoke: dict) -> None:
    for design in DESIGNS:
        storm = smoke["probe_storm"][design]
        assert storm["health_requests"] > 0
        assert storm["seconds"] > 0
        assert storm["xacts"] >= 0
        assert storm["expected_per_s"] > 0


def test_db_test_answered_by_both_designs(smoke: dict) -> None:
    for design in DESIGNS:
        for key in ("latency", "loaded"):
            db_test = smoke["db_test"]["designs"][design][key]
            assert db_test["non_2xx"] == 0
            assert 0 < db_test["p50_ms"] <= db_test["p99_ms"]
    assert smoke["db_test"]["new_vs_gthread"]["ratio_median"] > 0


def test_every_scenario_sampled_probes_of_both_designs(smoke: dict) -> None:
    for name in SCENARIOS:
        for design in DESIGNS:
            probes = smoke["scenarios"][name][design]["probes"]
            for path in PROBES:
                assert probes[path]["requests"] > 0
                assert probes[path]["p50_ms"] is not None
                assert probes[path]["p50_ms"] <= probes[path]["p99_ms"] <= probes[path]["max_ms"]
    for design in DESIGNS:
        held = smoke["scenarios"]["slow_clients"][design]["held"]
        assert held["min_open"] == {"slow": 500, "idle": 1000}


def test_new_design_answers_are_counted_by_status_and_code(smoke: dict) -> None:
    outage = {"503 overloaded", "503 timeout", "503 database_unavailable"}
    frozen = smoke["scenarios"]["frozen"]["new"]["db_test"]
    assert frozen["requests"] > 0
    assert frozen["answers"] and set(frozen["answers"]) <= outage
    saturated = smoke["scenarios"]["saturation"]["new"]["db_test"]
    assert saturated["answers"].get("200", 0) > 0
    assert set(saturated["answers"]) <= {"200", *outage}


def test_fault_timeline_walked_every_phase(smoke: dict) -> None:
    timeline = smoke["fault_timeline"]
    assert [phase["name"] for phase in timeline["phases"]] == PHASES
    per_phase = timeline["analysis"]["per_phase"]
    for endpoint in ("/api/health", "/api/db/test"):
        assert set(per_phase[endpoint]) == set(PHASES)
        assert per_phase[endpoint]["healthy"]["statuses"].get("200", 0) > 0
        assert per_phase[endpoint]["stopped"]["requests"] > 0
    faults = timeline["analysis"]["faults"]["/api/health"]
    assert set(faults) == {"frozen", "stopped"}
    assert len(timeline["samples"]) > 100


def test_memory_and_targets_are_reported(smoke: dict) -> None:
    for server in SERVERS:
        memory = smoke["memory"][server]
        assert memory["worker_count"] >= 1
        assert 0 < memory["worker_pss_mib"] <= memory["worker_rss_mib"]
    assert len(smoke["targets"]) >= 15
    assert all(isinstance(target["pass"], bool) for target in smoke["targets"])
