"""What a run ran on and with: the machine, the versions, and gunicorn's effective settings.

Numbers from a benchmark mean little without these, so every result file records them.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.load import wrk_version

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gunicorn", "Flask", "Werkzeug", "SQLAlchemy", "psycopg2-binary", "matplotlib")
GUNICORN_KEYS = (
    "wsgi_app",
    "worker_class",
    "workers",
    "threads",
    "worker_connections",
    "keepalive",
    "timeout",
    "max_requests",
    "max_requests_jitter",
    "preload_app",
    "accesslog",
)

# Executes gunicorn.conf.py the way gunicorn does (as a module, with the servers' environment),
# so the record follows the conf as it evolves instead of repeating its defaults here.
_CONF_PROBE = (
    "import json, runpy, sys; conf = runpy.run_path('gunicorn.conf.py'); "
    "print(json.dumps({k: conf.get(k) for k in json.loads(sys.argv[1])}))"
)


def gunicorn_settings(env: dict[str, str], root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The effective values of `root`'s gunicorn.conf.py under `env` (workers, threads...)."""
    result = subprocess.run(
        [sys.executable, "-c", _CONF_PROBE, json.dumps(GUNICORN_KEYS)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"gunicorn.conf.py did not load:\n{result.stdout}\n{result.stderr}")
    settings: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return settings


def describe(postgres_version: str) -> dict[str, Any]:
    """nproc, CPU model, kernel, OS, and the versions of everything on the measured path."""
    versions = {"python": platform.python_version(), "postgresql": postgres_version}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    versions["wrk"] = wrk_version()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "versions": versions,
    }


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages: other work on the machine shows up here."""
    return [round(v, 2) for v in os.getloadavg()]


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.partition("=")[2].strip('"')
    except OSError:
        pass
    return sys.platform
