"""The `health` blueprint: liveness, readiness and the load balancers' health report."""

from __future__ import annotations

import atexit

from flask import Blueprint, Flask

from service.config import Settings
from service.database import PoolGauge

bp = Blueprint("health", __name__, url_prefix="/api/health")


def init_app(app: Flask, settings: Settings, pool_gauge: PoolGauge, version: str) -> None:
    """Create the app's health monitor; its checker thread starts on first use in a process."""
    from service.health.monitor import HealthMonitor

    monitor = HealthMonitor(settings, pool_gauge, version)
    app.extensions["health"] = monitor
    atexit.register(monitor.stop)


from service.health import routes  # noqa: E402, F401 - attaches the views to bp
