"""The benchmark still runs end to end: `python -m bench --smoke` (about 40 s).

Numbers are not compared with the targets here (CI machines are noisy; docs/performance.md holds
the targets). This only proves that every section is produced with values that make sense, so a
change to the service, gunicorn.conf.py or the test support cannot silently break the benchmark.
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


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=PROJECT_ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"python -m bench --smoke failed:\n{output}"
    assert out.with_suffix(".png").stat().st_size > 10_000, "no fault-timeline plot"
    assert "targets" in result.stdout  # the readable table was printed
    return json.loads(out.read_text())


pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_meta_records_the_machine_and_settings(smoke: dict) -> None:
    meta = smoke["meta"]
    assert meta["mode"] == "smoke"
    assert meta["machine"]["nproc"] >= 1
    assert meta["machine"]["versions"]["wrk"].startswith("wrk")
    assert meta["gunicorn"]["workers_running"] >= 1
    assert meta["settings"]["HEALTH_STALE_AFTER_S"] > meta["settings"]["HEALTH_CHECK_INTERVAL_S"]
    assert meta["elapsed_s"] < 90


def test_health_and_floor_were_both_driven(smoke: dict) -> None:
    health = smoke["health_throughput"]
    assert len(health["rounds"]) == 2
    for run in health["rounds"]:
        for server in ("service", "floor"):
            assert run[server]["requests"] > 0
            assert run[server]["non_2xx"] == 0
            assert 0 < run[server]["p50_ms"] <= run[server]["p99_ms"]
    assert health["summary"]["ratio_median"] > 0
    assert health["summary"]["cpu_ratio_overall"] > 0


def test_probe_storm_counted_transactions(smoke: dict) -> None:
    storm = smoke["probe_storm"]
    assert storm["health_requests"] > 0
    assert storm["seconds"] > 0
    assert storm["xacts"] >= 0
    assert storm["expected_per_s"] > 0


def test_db_test_answered(smoke: dict) -> None:
    for key in ("latency", "loaded"):
        db_test = smoke["db_test"][key]
        assert db_test["non_2xx"] == 0
        assert 0 < db_test["p50_ms"] <= db_test["p99_ms"]


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
    for server in ("service", "floor"):
        memory = smoke["memory"][server]
        assert memory["worker_count"] >= 1
        assert 0 < memory["worker_pss_mib"] <= memory["worker_rss_mib"]
    assert len(smoke["targets"]) >= 8
    assert all(isinstance(target["pass"], bool) for target in smoke["targets"])
