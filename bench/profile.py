"""Optional (`--profile`): where a worker's time goes during a probe storm, sampled by py-spy.

py-spy attaches to the gunicorn master with --subprocesses, so workers recycled by max_requests
mid-run are followed too. The raw collapsed stacks are kept for flame-graph tools; the summary
lists the frames with the largest inclusive share of the samples.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def py_spy_path() -> str:
    path = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(path).is_file():
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return path


def start_py_spy(master_pid: int, duration_s: float, raw_path: Path) -> subprocess.Popen[bytes]:
    """Start sampling the master and its workers (the caller drives load meanwhile)."""
    args = [
        py_spy_path(),
        "record",
        "--pid",
        str(master_pid),
        "--subprocesses",
        "--format",
        "raw",
        "--gil",
        "--rate",
        "250",
        "--duration",
        str(max(1, round(duration_s))),
        "--output",
        str(raw_path),
        "--nonblocking",
    ]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def summarise(raw_path: Path, top: int = 30) -> dict[str, Any]:
    """Inclusive share of GIL-holding samples per function, in stacks serving a request.

    `service_frames` lists the service's own functions (service/...): their share times the CPU
    cost of a request is what the service adds on top of Flask and gunicorn.
    """
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit() or "handle_request (" not in stack:
            continue  # the master, the health checker, idle pollers, the gevent hub
        count = int(count_text)
        total += count
        for frame in {_function(frame) for frame in stack.split(";")}:
            inclusive[frame] += count

    def shares(frames: list[tuple[str, int]]) -> list[dict[str, Any]]:
        return [{"frame": f, "share": round(c / total, 3)} for f, c in frames]

    ranked = [(f, c) for f, c in inclusive.most_common() if not f.startswith("process ")]
    return {
        "request_samples": total,
        "top_inclusive": shares(ranked[:top]) if total else [],
        "service_frames": shares([(f, c) for f, c in ranked if "(service/" in f][:top])
        if total
        else [],
    }


def _function(frame: str) -> str:
    """'func (path/module.py:12)' -> 'func (path/module.py)': lines of a function add up."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name
