"""The servers under test, each started by gunicorn with its own tree's gunicorn.conf.py.

Per design (bench/designs.py), the service is `wsgi:app` (the conf's wsgi_app) and the floor is
`bench.floor_app:app` of the same tree, given on the command line, which overrides wsgi_app and
nothing else. Both get the same environment, so the conf validates the same settings and sizes
both alike (workers, threads or connections, keepalive, recycling).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from harness.processes import ServerProcess, children_of, free_port, wait_for

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FLOOR_APP = "bench.floor_app:app"

# Variables the bench always sets itself; a developer's shell must not redirect them (a stray
# MIGRATION_DATABASE_URL would migrate some other database). Tuning knobs such as
# WEB_CONCURRENCY, GUNICORN_THREADS or HEALTH_CHECK_INTERVAL_S pass through on purpose.
OWNED_VARIABLES = (
    "APP_ENV",
    "DATABASE_URL",
    "MIGRATION_DATABASE_URL",
    "SECRET_KEY",
    "OPS_TOKEN",
    "HOST",
    "PORT",
)


def service_environment(base: dict[str, str], database_url: str, ops_token: str) -> dict[str, str]:
    """Production settings, as deployed: JSON logs, ops-only /api/db/test behind OPS_TOKEN."""
    env = {k: v for k, v in base.items() if k not in OWNED_VARIABLES}
    return {
        **env,
        "APP_ENV": "production",
        "DATABASE_URL": database_url,
        "SECRET_KEY": secrets.token_hex(32),
        "OPS_TOKEN": ops_token,
        "HOST": "127.0.0.1",
    }


@dataclass
class Gunicorn:
    """One gunicorn master and its workers, found through /proc."""

    name: str
    process: ServerProcess
    base_url: str

    @property
    def master_pid(self) -> int:
        return self.process.pid

    def worker_pids(self) -> list[int]:
        return sorted(children_of(self.process.pid))

    def worker_boots(self) -> int:
        """Workers booted so far, first ones included (max_requests recycles them under load)."""
        return self.process.log_text().count("Booting worker with pid")

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def cpu_seconds(self) -> float:
        """CPU time used so far by the master and every worker, recycled ones included.

        Reaped workers' time is in the master's cutime/cstime, so a worker replaced by max_requests
        mid-run is still counted; live workers are added from their own stat.
        """
        total = sum(_cpu_ticks(self.master_pid, children=True))
        for pid in self.worker_pids():
            total += sum(_cpu_ticks(pid, children=False))
        return total / os.sysconf("SC_CLK_TCK")

    def connections_per_worker(self) -> list[int]:
        """Established client connections held by each worker now, most loaded first (via ss)."""
        result = subprocess.run(
            ["ss", "-tnpH", "state", "established", f"( sport = :{self.port} )"],
            capture_output=True,
            text=True,
            check=False,
        )
        held = Counter(int(pid) for pid in re.findall(r"pid=(\d+)", result.stdout))
        return sorted((held.get(pid, 0) for pid in self.worker_pids()), reverse=True)

    def error_tail(self, lines: int = 15) -> str:
        """The last lines of gunicorn's own log, without the access log's lines."""
        own = [ln for ln in self.process.log_text().splitlines() if "gunicorn.access" not in ln]
        return "\n".join(own[-lines:])

    def stop(self) -> None:
        """SIGINT: gunicorn's quick shutdown (the bench does not measure a graceful one)."""
        self.process.terminate(signal.SIGINT, timeout=30)


def start_gunicorn(
    name: str,
    env: dict[str, str],
    log_dir: Path,
    app_uri: str | None = None,
    root: Path = PROJECT_ROOT,
) -> Gunicorn:
    """Start gunicorn -c gunicorn.conf.py [APP] in `root`; return at once (see `wait_serving`).

    `python -m` puts the working directory first on sys.path, so `root`'s own service, wsgi and
    bench packages are the ones imported, whatever tree this bench runs from.
    """
    port = free_port()
    args = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
    if app_uri is not None:
        args.append(app_uri)
    process = ServerProcess(
        args, env={**env, "PORT": str(port)}, cwd=root, log_path=log_dir / f"{name}.log"
    ).start()
    return Gunicorn(name, process, f"http://127.0.0.1:{port}")


def wait_serving(server: Gunicorn) -> None:
    """Return once the server answers and every worker has booted; stop it if it never does."""
    try:
        server.process.wait_http_ok(f"{server.base_url}/api/health", timeout=60)
        _wait_workers_settled(server)
    except BaseException:
        server.stop()
        raise


def _cpu_ticks(pid: int, *, children: bool) -> tuple[int, ...]:
    """utime, stime (and cutime, cstime) of `pid` in clock ticks; zeros if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return (0,)
    fields = stat[stat.rfind(")") + 2 :].split()
    return tuple(int(v) for v in fields[11 : 15 if children else 13])


def _wait_workers_settled(server: Gunicorn, quiet_s: float = 0.5) -> None:
    """The master forks its workers one by one: wait until their number stops changing."""
    seen: list[tuple[float, int]] = []

    def settled() -> bool:
        count = len(server.worker_pids())
        now = time.monotonic()
        if not seen or seen[-1][1] != count:
            seen.append((now, count))
        return count > 0 and now - seen[-1][0] >= quiet_s

    wait_for(settled, timeout=30, interval=0.1, description=f"{server.name} workers to boot")


def memory_of(pid: int) -> dict[str, int]:
    """RSS, PSS and USS (private pages) in KiB, from /proc/PID/smaps_rollup.

    PSS splits pages shared with the master (preload_app forks copy-on-write) fairly between the
    processes sharing them, so the sum of PSS is what the whole server really costs.
    """
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[key] = int(parts[0])
    return {
        "rss_kib": fields.get("Rss", 0),
        "pss_kib": fields.get("Pss", 0),
        "uss_kib": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
    }


def server_memory(server: Gunicorn) -> dict[str, object]:
    """Memory of the master and of each worker now."""
    workers = []
    for pid in server.worker_pids():
        try:
            workers.append({"pid": pid, **memory_of(pid)})
        except OSError:
            continue  # recycled meanwhile
    return {
        "master": {"pid": server.master_pid, **memory_of(server.master_pid)},
        "workers": workers,
    }
