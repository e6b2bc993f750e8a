"""gunicorn's settings and hooks: each setting is declared once, in service/config.py.

The master loads the service's settings here (`process_settings`: its logger reads the same object,
and each worker builds its app from it). Any other gunicorn flag can be given through
GUNICORN_CMD_ARGS. Why these values and this worker: docs/architecture.md ("Serving") and
docs/deployment.md ("Shutdown arithmetic").
"""

import os
import shutil
import sys
import tempfile


def _metrics_dir() -> bool:
    """Give the workers a samples folder, emptied of a previous run's; True if made here.

    prometheus_client picks its mode when first imported, and importing `service` imports it.
    """
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="prometheus-multiproc-")
        return True
    os.makedirs(path, exist_ok=True)
    if "GUNICORN_PID" not in os.environ:  # not a master started by SIGUSR2, whose peers write
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.unlink(os.path.join(path, name))
    return False


_made_metrics_dir = _metrics_dir()

from service import server  # noqa: E402
from service.config import ConfigError, process_settings  # noqa: E402

try:
    process_settings.cache_clear()  # a SIGHUP re-reads this file: read the settings afresh too
    settings = process_settings()
except ConfigError as error:
    sys.exit(f"configuration error: {error}")

wsgi_app = "wsgi:app"
bind = [f"{settings.host}:{settings.port}"]
worker_class = "service.server.Worker"
workers = settings.web_concurrency or max(2, len(os.sched_getaffinity(0)))
worker_connections = settings.gunicorn_worker_connections
timeout = settings.gunicorn_timeout
graceful_timeout = settings.gunicorn_graceful_timeout
keepalive = settings.gunicorn_keepalive
max_requests = settings.gunicorn_max_requests
max_requests_jitter = settings.gunicorn_max_requests_jitter
worker_tmp_dir = settings.gunicorn_worker_tmp_dir if os.path.isdir("/dev/shm") else None
forwarded_allow_ips = settings.forwarded_allow_ips
preload_app = False  # each worker builds its app after gevent's monkey-patching
control_socket_disable = True
accesslog = None if settings.gunicorn_access_log == "off" else settings.gunicorn_access_log
errorlog = settings.gunicorn_error_log
loglevel = settings.gunicorn_log_level
logger_class = server.ServiceLogger


def child_exit(arbiter, worker):
    server.forget_worker(worker.pid)


def on_exit(arbiter):
    if _made_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
