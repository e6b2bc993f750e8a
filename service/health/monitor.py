"""Glue between the checker and the endpoints: verdicts, rendered bodies, status-change logs."""

from __future__ import annotations

import json
import logging
import threading
import time

from service.config import Settings
from service.database import PoolGauge
from service.health.checker import DatabaseProbe, HealthChecker, Snapshot
from service.health.report import MEDIA_TYPE, Verdict, assess, health_document
from service.schema import schema_versions

log = logging.getLogger(__name__)

FIRST_RESULT_WAIT_S = 0.5  # a process's very first probe may wait this long for a first look
LIVE_BODY = json.dumps({"status": "pass"}).encode()
PROBES = ("live", "ready", "health")  # what respond() answers


class HealthMonitor:
    """One per app: owns the checker and answers `verdict()` and `report()` from memory."""

    def __init__(self, settings: Settings, pool_gauge: PoolGauge, version: str) -> None:
        self.settings = settings
        self.version = version
        self.schema = schema_versions()
        self.checker = HealthChecker(
            DatabaseProbe(settings, pool_gauge),
            settings.health_check_interval_s,
            on_snapshot=self._log_changes,
        )
        self._logged_verdict: Verdict | None = None
        self._rendered: dict[tuple[int, Verdict, bool], bytes] = {}
        self._ready_bodies: dict[Verdict, bytes] = {}  # few: one per distinct verdict
        self._render_lock = threading.Lock()
        interval = settings.health_check_interval_s
        self.cache_control = f"max-age={int(interval)}" if interval >= 1 else "no-cache"

    def current(self) -> tuple[Snapshot | None, Verdict]:
        """The latest snapshot and its verdict now; starts the checker in this process."""
        self.checker.ensure_running()
        if self.checker.snapshot is None:
            self.checker.wait_for_first(
                min(FIRST_RESULT_WAIT_S, self.settings.health_check_timeout_s)
            )
        snapshot = self.checker.snapshot
        return snapshot, assess(snapshot, time.monotonic(), self.schema, self.settings)

    def respond(self, probe: str, *, include_output: bool) -> tuple[int, bytes, str]:
        """(HTTP status, JSON body, Cache-Control) of a probe, from memory only.

        The one implementation behind both the Flask views and the WSGI fast path, so the two
        cannot answer differently.
        """
        if probe == "live":
            return 200, LIVE_BODY, "no-store"
        if probe == "ready":
            _, verdict = self.current()
            body = self._ready_bodies.get(verdict)
            if body is None:
                document: dict[str, object] = {"status": verdict.status}
                if verdict.reasons:
                    document["notes"] = list(verdict.reasons)
                body = self._ready_bodies.setdefault(verdict, json.dumps(document).encode())
            return verdict.http_status, body, self.cache_control
        body, verdict = self.report(include_output=include_output)
        private = include_output and self.settings.is_production
        cache_control = f"private, {self.cache_control}" if private else self.cache_control
        return verdict.http_status, body, cache_control

    def report(self, *, include_output: bool) -> tuple[bytes, Verdict]:
        """The health document as JSON bytes, rendered once per snapshot and verdict."""
        snapshot, verdict = self.current()
        key = (snapshot.generation if snapshot else 0, verdict, include_output)
        body = self._rendered.get(key)
        if body is None:
            document = health_document(
                snapshot,
                verdict,
                self.schema,
                self.settings,
                version=self.version,
                include_output=include_output,
            )
            body = json.dumps(document, separators=(",", ":")).encode()
            with self._render_lock:
                if len(self._rendered) > 16:  # only the latest generations matter
                    self._rendered.clear()
                self._rendered[key] = body
        return body, verdict

    def stop(self) -> None:
        self.checker.stop()

    def _log_changes(self, snapshot: Snapshot) -> None:
        verdict = assess(snapshot, time.monotonic(), self.schema, self.settings)
        previous = self._logged_verdict
        if previous is not None and previous.status == verdict.status:
            return
        self._logged_verdict = verdict
        level = logging.INFO if verdict.status == "pass" else logging.WARNING
        log.log(
            level,
            "health status %s -> %s (%s)",
            previous.status if previous else "unknown",
            verdict.status,
            ", ".join(verdict.reasons) or "all checks pass",
        )


__all__ = ["MEDIA_TYPE", "HealthMonitor"]
