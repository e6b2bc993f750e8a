"""gunicorn settings for this service; every value can be overridden from the environment.

Worker class: gthread. The service is I/O-bound on PostgreSQL through psycopg2, which blocks;
threads let one worker overlap many database waits without monkey-patching (gevent would also
replace our psycopg2 wait callback, which enforces the database deadlines). Health probes never
block a thread on the database, so a few threads per worker suffice.
"""

import os
import sys

from service.config import ConfigError, load_settings


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


# Validate the service's settings once, in the master, before any worker exists: a bad value
# stops gunicorn with one line instead of a crash loop of workers.
try:
    load_settings(instance_path=os.path.join(os.path.dirname(__file__), "instance"))
except ConfigError as error:
    sys.exit(f"configuration error: {error}")

wsgi_app = "wsgi:app"
bind = [f"{os.environ.get('HOST', '0.0.0.0')}:{_env_int('PORT', 8000)}"]
worker_class = "gthread"
workers = _env_int("WEB_CONCURRENCY", max(2, len(os.sched_getaffinity(0))))
threads = _env_int("GUNICORN_THREADS", 4)
# A worker silent this long is killed. Database work is bounded by DB_DEADLINE_S far below it.
timeout = _env_int("GUNICORN_TIMEOUT", 30)
# Below Kubernetes' terminationGracePeriodSeconds (30 s) minus the preStop sleep (5 s).
graceful_timeout = _env_int("GUNICORN_GRACEFUL_TIMEOUT", 20)
# Longer than load balancers' idle timeout (AWS ALB: 60 s), so they close idle connections first.
keepalive = _env_int("GUNICORN_KEEPALIVE", 75)
max_requests = _env_int("GUNICORN_MAX_REQUESTS", 10000)
max_requests_jitter = _env_int("GUNICORN_MAX_REQUESTS_JITTER", 1000)
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
preload_app = True  # load once in the master; nothing connects before the fork
control_socket_disable = True
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")


def post_fork(server, worker):
    """A pooled connection must never cross a fork: forget any the master may hold."""
    from service.extensions import db

    with worker.app.wsgi().app_context():
        db.engine.dispose(close=False)


def post_worker_init(worker):
    """Start this worker's health checker before it serves its first request."""
    worker.app.wsgi().extensions["health"].checker.ensure_running()


def worker_exit(server, worker):
    """Stop the checker and close this worker's connections, so none is left on the server."""
    from service.extensions import db

    app = worker.app.wsgi()
    app.extensions["health"].stop()
    with app.app_context():
        db.engine.dispose()
