"""gunicorn settings for this service; every value can be overridden from the environment.

Each setting below reads its own variable; any other gunicorn setting can be given through
GUNICORN_CMD_ARGS (for example GUNICORN_CMD_ARGS="--backlog 512"), which gunicorn applies on top.

Worker class: gthread. The service is I/O-bound on PostgreSQL through psycopg2, which blocks;
threads let one worker overlap many database waits without monkey-patching (gevent would also
replace our psycopg2 wait callback, which enforces the database deadlines). Health probes never
block a thread on the database, so a few threads per worker suffice.

Shutdown (SIGTERM): the master closes the listening sockets, each worker stops accepting, finishes
the requests it has (answering a request on a kept-alive connection with `Connection: close`),
then `worker_exit` stops its health checker and closes its connections; the master exits 0.
`graceful_timeout` bounds it; keep it below the orchestrator's grace period minus any preStop
sleep.
"""

import atexit
import os
import shutil
import sys
import tempfile


def _prepare_metrics_dir() -> str | None:
    """Point prometheus_client at a directory for this master; return it if we made it.

    prometheus_client picks in-memory or multiprocess (file-backed) metrics when it is first
    imported, so this runs before the app is imported: every worker writes its samples there and
    the one answering /metrics sums them. Unless PROMETHEUS_MULTIPROC_DIR is given, each master
    makes a fresh one (removed at exit). A given one is emptied at start, since stale files of
    a previous run would be summed in, except by a master started by another one (SIGUSR2), whose
    workers still write there. A reload (SIGHUP) re-reads this file and keeps what it has.
    """
    pid, parent = str(os.getpid()), str(os.getppid())
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    owner, _, made = os.environ.get("_SERVICE_METRICS_DIR_MADE", "").partition(":")
    if given and given != made:
        if os.environ.get("_SERVICE_METRICS_DIR_EMPTIED_BY") not in (pid, parent):
            os.makedirs(given, exist_ok=True)
            for name in os.listdir(given):
                if name.endswith(".db"):
                    os.unlink(os.path.join(given, name))
        os.environ["_SERVICE_METRICS_DIR_EMPTIED_BY"] = pid
        return None
    if given and owner == pid:
        return given
    path = tempfile.mkdtemp(prefix="prometheus-multiproc-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    os.environ["_SERVICE_METRICS_DIR_MADE"] = f"{pid}:{path}"
    # Removed when this process ends, however it ends short of SIGKILL (also `--check-config`,
    # which never calls on_exit); workers run atexit handlers too, hence the pid check.
    atexit.register(_remove_metrics_dir, path, os.getpid())
    return path


def _remove_metrics_dir(path: str, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


_prepare_metrics_dir()

from service.config import ConfigError, load_settings  # noqa: E402 - after the metrics directory is set


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        sys.exit(f"configuration error: {name}: '{raw}' is not a whole number")
    if value < 0:
        sys.exit(f"configuration error: {name}: {value} is below the minimum 0")
    return value


def _env_text(name: str, default: str | None) -> str | None:
    """The variable's value; set but empty means None (for example: no access log)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip() or None


# Validate the service's settings once, in the master, before any worker exists: a bad value
# stops gunicorn with one line instead of a crash loop of workers.
try:
    load_settings(instance_path=os.path.join(os.path.dirname(__file__), "instance"))
except ConfigError as error:
    sys.exit(f"configuration error: {error}")

wsgi_app = "wsgi:app"
bind = [f"{os.environ.get('HOST', '0.0.0.0')}:{_env_int('PORT', 8000)}"]
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
# One process per core; threads (below) overlap the database waits inside each.
workers = _env_int("WEB_CONCURRENCY", max(2, len(os.sched_getaffinity(0))))
threads = _env_int("GUNICORN_THREADS", 4)
# A worker silent this long is killed. Database work is bounded by DB_DEADLINE_S far below it.
timeout = _env_int("GUNICORN_TIMEOUT", 30)
# Below Kubernetes' terminationGracePeriodSeconds (30 s) minus the preStop sleep (5 s).
graceful_timeout = _env_int("GUNICORN_GRACEFUL_TIMEOUT", 20)
# Longer than load balancers' idle timeout (AWS ALB: 60 s), so they close idle connections first.
keepalive = _env_int("GUNICORN_KEEPALIVE", 75)
# Recycle workers now and then (jittered, so not all at once) to bound any slow leak. Health
# probes count too, and each new worker opens a new checker connection (a few set-up queries):
# a low value turns a probe storm into database load. The soak shows no growth to bound.
max_requests = _env_int("GUNICORN_MAX_REQUESTS", 100000)
max_requests_jitter = _env_int("GUNICORN_MAX_REQUESTS_JITTER", 10000)
# The heartbeat file on tmpfs: a slow or full disk must not make the master kill healthy workers.
worker_tmp_dir = _env_text(
    "GUNICORN_WORKER_TMP_DIR", "/dev/shm" if os.path.isdir("/dev/shm") else None
)
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
preload_app = True  # load once in the master; nothing connects before the fork
control_socket_disable = True
# Access lines on stdout, errors on stderr ("-"); GUNICORN_ACCESS_LOG= (empty) turns access off.
accesslog = _env_text("GUNICORN_ACCESS_LOG", "-")
errorlog = _env_text("GUNICORN_ERROR_LOG", "-") or "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
# The app's formatter (JSON in production), redaction and request ids; no probe lines.
logger_class = "service.gunicorn_logging.ServiceLogger"


def post_fork(server, worker):
    """A pooled connection must never cross a fork: forget any the master may hold."""
    from service.extensions import db

    with worker.app.wsgi().app_context():
        db.engine.dispose(close=False)


def post_worker_init(worker):
    """Start this worker's health checker before it serves its first request."""
    from service import metrics

    app = worker.app.wsgi()
    metrics.init_process(app)
    app.extensions["health"].checker.ensure_running()


def worker_exit(server, worker):
    """Stop the checker and close this worker's connections, so none is left on the server."""
    from service.extensions import db

    app = worker.app.wsgi()
    app.extensions["health"].stop()
    with app.app_context():
        db.engine.dispose()


def child_exit(server, worker):
    """In the master: drop the dead worker's live gauges (pool in use, pool size)."""
    from service import metrics

    metrics.mark_process_dead(worker.pid)
