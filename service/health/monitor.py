"""The app's health: the checker's latest look, judged now, answered from memory."""

from __future__ import annotations

import json
import logging
import time

from service.config import Settings
from service.health.checker import DatabaseProbe, HealthChecker, Observation, Snapshot
from service.health.report import Verdict, assess, health_document
from service.schema import schema_versions

log = logging.getLogger(__name__)

FIRST_RESULT_WAIT_S = 0.5  # a process's very first probe may wait this long for a first look


class HealthMonitor:
    """One per app: owns the checker, the drain state and the answers of the three probes."""

    def __init__(self, settings: Settings, probe: DatabaseProbe, version: str) -> None:
        self.settings = settings
        self.version = version
        self.schema = schema_versions()
        self.checker = HealthChecker(probe, settings.health_check_interval_s, self._log_change)
        self.draining = False
        self._logged: Verdict | None = None
        # (probe, include_output) -> the last body, with the snapshot and verdict it shows
        self._rendered: dict[tuple[str, bool], tuple[Snapshot | None, Verdict, bytes]] = {}
        interval = settings.health_check_interval_s
        self.cache_control = f"max-age={int(interval)}" if interval >= 1 else "no-cache"

    def current(self) -> tuple[Snapshot | None, Verdict]:
        """The latest snapshot and its verdict now; starts the checker in this process."""
        self.checker.ensure_running()
        if self.checker.snapshot is None:
            wait_s = min(FIRST_RESULT_WAIT_S, self.settings.health_check_timeout_s)
            self.checker.wait_for_first(wait_s)
        snapshot = self.checker.snapshot
        now = time.monotonic()
        return snapshot, assess(snapshot, now, self.schema, self.settings, draining=self.draining)

    def respond(self, probe: str, *, include_output: bool) -> tuple[int, bytes, str]:
        """(HTTP status, JSON body, Cache-Control) of `live`, `ready` or `health`, from memory."""
        if probe == "live":
            return 200, b'{"status": "pass"}', "no-store"
        snapshot, verdict = self.current()
        cache_control = self.cache_control
        if probe == "health" and include_output and self.settings.is_production:
            cache_control = f"private, {cache_control}"
        return (
            verdict.http_status,
            self._body(probe, snapshot, verdict, include_output),
            cache_control,
        )

    def _body(
        self, probe: str, snapshot: Snapshot | None, verdict: Verdict, include_output: bool
    ) -> bytes:
        """The JSON of a probe, rendered once per snapshot: probes far outnumber checks."""
        cached = self._rendered.get((probe, include_output))
        if cached is not None and cached[0] is snapshot and cached[1] == verdict:
            return cached[2]
        if probe == "ready":
            document: dict[str, object] = {"status": verdict.status}
            if verdict.reasons:
                document["notes"] = list(verdict.reasons)
        else:
            document = health_document(
                snapshot,
                verdict,
                self.schema,
                self.settings,
                version=self.version,
                include_output=include_output,
            )
        body = json.dumps(document).encode()
        self._rendered[(probe, include_output)] = (snapshot, verdict, body)
        return body

    def drain(self) -> None:
        """Fail readiness from now on, so load balancers stop sending before the process stops."""
        self.draining = True
        log.info("draining: readiness fails from now on")

    def stop(self) -> None:
        self.checker.stop(self.settings.health_check_timeout_s)

    def _log_change(self, snapshot: Snapshot) -> None:
        verdict = assess(snapshot, time.monotonic(), self.schema, self.settings)
        previous = self._logged
        if previous is not None and previous.status == verdict.status:
            return
        self._logged = verdict
        log.log(
            logging.INFO if verdict.status == "pass" else logging.WARNING,
            "health status %s -> %s (%s)",
            previous.status if previous else "unknown",
            verdict.status,
            ", ".join(verdict.reasons) or "all checks pass",
        )


__all__ = ["HealthMonitor", "Observation"]
