"""The fault timeline: probe both endpoints continuously while the database freezes and stops.

Two prober threads (one per endpoint, closed loop: at most one request in flight each, a new one
every `period_s`, a `timeout_s` client deadline) record every answer, while the main thread walks
the phases healthy -> frozen -> thawed -> stopped -> restarted. Each request opens a new connection,
as load-balancer probes do, so both workers are sampled.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from harness.pgcluster import TemporaryCluster

ENDPOINTS = ("/api/health", "/api/db/test")


@dataclass(frozen=True)
class Sample:
    """One request: when it was sent (s since the timeline began), how long, and the answer."""

    endpoint: str
    t: float
    latency_ms: float
    status: int  # 0: no answer within the client timeout, or the connection failed
    verdict: str | None  # the health document's "status" (pass/warn/fail)

    @property
    def done(self) -> float:
        """When the answer arrived, in the timeline's seconds."""
        return self.t + self.latency_ms / 1000


@dataclass(frozen=True)
class Phase:
    """A phase begins when its action is issued (`start`); `ready` is when the action returned."""

    name: str
    start: float
    ready: float
    end: float


class Prober(threading.Thread):
    """Sends GET `path` every `period_s` (closed loop) and records a Sample per request."""

    def __init__(
        self,
        base_url: str,
        path: str,
        headers: dict[str, str],
        origin: float,
        stop: threading.Event,
        period_s: float,
        timeout_s: float,
    ) -> None:
        super().__init__(name=f"prober {path}", daemon=True)
        parts = urlsplit(base_url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._path, self._headers = path, headers
        self._origin, self._halt = origin, stop
        self._period_s, self._timeout_s = period_s, timeout_s
        self.samples: list[Sample] = []

    def run(self) -> None:
        while not self._halt.is_set():
            started = time.monotonic()
            status, verdict = self._request()
            finished = time.monotonic()
            self.samples.append(
                Sample(
                    endpoint=self._path,
                    t=round(started - self._origin, 4),
                    latency_ms=round((finished - started) * 1000, 3),
                    status=status,
                    verdict=verdict,
                )
            )
            self._halt.wait(max(0.0, self._period_s - (finished - started)))

    def _request(self) -> tuple[int, str | None]:
        connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)
        try:
            connection.request("GET", self._path, headers=self._headers)
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            return 0, None
        finally:
            connection.close()
        verdict = None
        with contextlib.suppress(ValueError, AttributeError):
            verdict = json.loads(body).get("status")
        return response.status, verdict if isinstance(verdict, str) else None


def run_timeline(
    cluster: TemporaryCluster,
    base_url: str,
    headers: dict[str, str],
    phase_s: dict[str, float],
    *,
    period_s: float = 0.05,
    timeout_s: float = 5.0,
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    """Walk the phases while probing; return the samples, the phases and what they show."""
    actions: list[tuple[str, Callable[[], object]]] = [
        ("healthy", lambda: None),
        ("frozen", cluster.freeze),
        ("thawed", cluster.thaw),
        ("stopped", lambda: cluster.stop("fast")),
        ("restarted", cluster.start),
    ]
    origin = time.monotonic()
    stop = threading.Event()
    probers = [
        Prober(base_url, path, headers, origin, stop, period_s, timeout_s) for path in ENDPOINTS
    ]
    for prober in probers:
        prober.start()
    phases: list[Phase] = []
    try:
        for name, action in actions:
            start = time.monotonic() - origin
            action()
            ready = time.monotonic() - origin
            log(f"  fault timeline: {name} at {start:.2f} s (ready at {ready:.2f} s)")
            time.sleep(max(0.0, phase_s[name] - (ready - start)))
            phases.append(Phase(name, round(start, 4), round(ready, 4), 0.0))
    finally:
        if cluster.is_frozen:
            cluster.thaw()
        if not cluster.is_running:
            cluster.start()
        stop.set()
        for prober in probers:
            prober.join(timeout_s + 1)
    end = time.monotonic() - origin
    phases = [
        Phase(p.name, p.start, p.ready, phases[i + 1].start if i + 1 < len(phases) else end)
        for i, p in enumerate(phases)
    ]
    samples = sorted((s for p in probers for s in p.samples), key=lambda s: s.t)
    return {
        "period_s": period_s,
        "client_timeout_s": timeout_s,
        "phases": [asdict(p) for p in phases],
        "analysis": analyse(samples, phases),
        "samples": [asdict(s) for s in samples],
    }


def analyse(samples: list[Sample], phases: list[Phase]) -> dict[str, object]:
    """Detection and recovery times per fault and endpoint, and per-phase answer statistics.

    Detection: the first non-200 answer arriving after the fault was issued. Recovery: the first
    200 arriving after the database is back (thaw returned; restart accepted connections), and
    `stable_s`, after which every answer in the phase was 200.
    """
    by_name = {p.name: p for p in phases}
    result: dict[str, object] = {"per_phase": {}, "faults": {}}
    for endpoint in ENDPOINTS:
        mine = [s for s in samples if s.endpoint == endpoint]
        per_phase = {}
        for phase in phases:
            inside = [s for s in mine if phase.start <= s.t < phase.end]
            per_phase[phase.name] = summarise_probes(inside)
        result["per_phase"][endpoint] = per_phase  # type: ignore[index]
        faults = {}
        for fault, recovery in (("frozen", "thawed"), ("stopped", "restarted")):
            if fault not in by_name or recovery not in by_name:
                continue
            faults[fault] = {
                "detect_s": _first_after(mine, by_name[fault].start, lambda s: s.status != 200),
                "recover_s": _first_after(mine, by_name[recovery].ready, lambda s: s.status == 200),
                "stable_s": _stable_after(mine, by_name[recovery]),
                "restart_took_s": round(by_name[recovery].ready - by_name[recovery].start, 3),
            }
        result["faults"][endpoint] = faults  # type: ignore[index]
    return result


def summarise_probes(samples: list[Sample]) -> dict[str, Any]:
    """Latency percentiles of every probe sent; `unanswered`: no answer within the timeout."""
    latencies = sorted(s.latency_ms for s in samples)
    statuses: dict[str, int] = {}
    for s in samples:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    return {
        "requests": len(samples),
        "statuses": statuses,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else None,
        "unanswered": sum(1 for s in samples if s.status == 0),
        "over_1s": sum(1 for v in latencies if v >= 1000),
    }


def _first_after(
    samples: list[Sample], since: float, matches: Callable[[Sample], bool]
) -> float | None:
    """Seconds from `since` to the arrival of the first matching answer that arrived after it."""
    arrivals = sorted((s.done, s) for s in samples if s.done >= since and matches(s))
    return round(arrivals[0][0] - since, 3) if arrivals else None


def _stable_after(samples: list[Sample], phase: Phase) -> float | None:
    """Seconds from `phase.ready` until answers stayed 200 for the rest of the phase."""
    inside = sorted((s for s in samples if phase.start <= s.t < phase.end), key=lambda s: s.done)
    last_bad = max((s.done for s in inside if s.status != 200), default=None)
    if last_bad is None:
        return 0.0
    later = [s.done for s in inside if s.status == 200 and s.done > last_bad]
    return round(max(0.0, min(later) - phase.ready), 3) if later else None


def percentile(sorted_values: list[float], pct: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]
