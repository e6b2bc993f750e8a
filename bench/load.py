"""Load generation with wrk (Debian package `wrk`), which saturates a Python server easily.

A Lua `done` hook prints the totals and latency percentiles as one JSON line, so nothing depends on
wrk's human-readable output. wrk is closed-loop: latency percentiles are those of answered
requests at the chosen concurrency (no coordinated-omission correction).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

LUA_REPORT = Path(__file__).with_name("wrk_report.lua")
LUA_ANSWERS = Path(__file__).with_name("wrk_answers.lua")  # also counts answers by status, code
MARKER = "BENCH_JSON "


class WrkMissing(RuntimeError):
    """wrk is not installed: the bench cannot measure anything without it."""


def wrk_path() -> str:
    """Path of wrk, or a clear error saying how to install it (never a silent skip)."""
    path = shutil.which("wrk")
    if path is None:
        raise WrkMissing(
            "wrk is not installed: the benchmark drives the servers with it. "
            "Install the Debian package: apt-get install -y wrk (`make system-deps` does it)."
        )
    return path


def wrk_version() -> str:
    """wrk's banner line, e.g. 'wrk debian/4.1.0-3+b2 [epoll] ...' (`wrk -v` exits 1)."""
    result = subprocess.run([wrk_path(), "-v"], capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[0].split(" Copyright")[0] if lines else "unknown"


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: throughput, latency percentiles (ms) and error counts."""

    url: str
    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    non_2xx: int
    socket_errors: int
    timeouts: int
    answers: dict[str, int] = field(default_factory=dict)  # by status and code; count_answers

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def run_wrk(
    url: str,
    duration_s: float,
    connections: int,
    *,
    threads: int = 1,
    headers: dict[str, str] | None = None,
    timeout_s: float = 5.0,
    midway: Callable[[], object] | None = None,
    count_answers: bool = False,
) -> WrkResult:
    """Drive `url` for `duration_s` seconds with `connections` keep-alive connections.

    `midway`, if given, is called once half-way through (to look at the servers under load).
    `count_answers` counts the answers by status and error code (a Lua call per response).
    """
    args = [
        wrk_path(),
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        str(LUA_ANSWERS if count_answers else LUA_REPORT),
    ]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    args.append(url)
    with subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        if midway is not None:
            time.sleep(duration_s / 2)
            midway()
        stdout, stderr = process.communicate(timeout=duration_s + 60)
    line = next((ln for ln in stdout.splitlines() if ln.startswith(MARKER)), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{stdout}\n{stderr}")
    raw = json.loads(line[len(MARKER) :])
    seconds = raw["duration_us"] / 1e6
    return WrkResult(
        url=url,
        connections=connections,
        duration_s=round(seconds, 3),
        requests=raw["requests"],
        rps=round(raw["requests"] / seconds, 1) if seconds else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        mean_ms=round(raw["mean_us"] / 1000, 3),
        non_2xx=raw["status"],
        socket_errors=raw["connect"] + raw["read"] + raw["write"],
        timeouts=raw["timeout"],
        answers=raw.get("answers", {}),
    )
