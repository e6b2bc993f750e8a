"""The pictures: the fault timeline (latency and status of both endpoints, phases shaded), and
probe latency per scenario for both designs.

A reader should see at a glance when the database froze or stopped, when the 503s began, how
fast 200s came back, and which design's probes starved. matplotlib's Agg renders without a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PHASE_COLOURS = {
    "healthy": "#ffffff",
    "frozen": "#cfe2ff",
    "thawed": "#e9f7ef",
    "stopped": "#f8d7da",
    "restarted": "#e9f7ef",
}
STATUS_STYLE = {  # status -> (label, colour, marker)
    200: ("200", "#2e7d32", "o"),
    503: ("503", "#c62828", "x"),
    0: ("no answer", "#000000", "v"),
}


def plot_timeline(timeline: dict[str, Any], settings: dict[str, Any], path: Path) -> Path:
    """Draw one panel per endpoint (latency on a log scale, coloured by status); save a PNG."""
    plt = _pyplot()
    samples = timeline["samples"]
    phases = timeline["phases"]
    faults = timeline["analysis"]["faults"]
    endpoints = ("/api/health", "/api/db/test")
    figure, axes = plt.subplots(len(endpoints), 1, figsize=(11, 6.5), sharex=True)
    for axis, endpoint in zip(axes, endpoints, strict=True):
        for phase in phases:
            axis.axvspan(phase["start"], phase["end"], color=PHASE_COLOURS.get(phase["name"]))
            axis.axvline(phase["start"], color="#888888", linewidth=0.6)
        mine = [s for s in samples if s["endpoint"] == endpoint]
        for status in sorted({s["status"] for s in mine}):
            label, colour, marker = STATUS_STYLE.get(status, (str(status), "#ef6c00", "s"))
            points = [s for s in mine if s["status"] == status]
            axis.scatter(
                [s["t"] for s in points],
                [max(s["latency_ms"], 0.1) for s in points],
                s=9,
                c=colour,
                marker=marker,
                label=label,
                linewidths=0.8,
            )
        if endpoint == "/api/health":
            axis.axhline(1000, color="#c62828", linestyle="--", linewidth=0.8)
            axis.text(
                0.5,
                1000,
                "Kubernetes probe timeout (1 s)",
                fontsize=7,
                color="#c62828",
                ha="center",
                va="bottom",
                transform=axis.get_yaxis_transform(),
            )
        axis.set_yscale("log")
        axis.set_ylabel(f"{endpoint}\nlatency (ms)")
        axis.legend(loc="upper left", fontsize=7, markerscale=1.5, framealpha=0.9)
        notes = []
        for fault, values in faults[endpoint].items():
            notes.append(
                f"{fault}: detected {_s(values['detect_s'])}, recovered {_s(values['recover_s'])}"
            )
        axis.text(
            0.99,
            0.95,
            "\n".join(notes),
            transform=axis.transAxes,
            ha="right",
            va="top",
            fontsize=7,
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "#bbbbbb"},
        )
    top = axes[0]
    for phase in phases:
        top.text(
            (phase["start"] + phase["end"]) / 2,
            1.02,
            phase["name"],
            ha="center",
            va="bottom",
            fontsize=8,
            transform=top.get_xaxis_transform(),
        )
    axes[-1].set_xlabel("seconds since the timeline began")
    figure.suptitle(
        "Health and database check through database faults "
        f"(check every {settings['HEALTH_CHECK_INTERVAL_S']:g} s, "
        f"stale after {settings['HEALTH_STALE_AFTER_S']:g} s, "
        f"request deadline {settings['DB_DEADLINE_S']:g} s)",
        fontsize=10,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


DESIGN_STYLE = {"gthread": ("gthread (ee7ba07)", "#ef6c00"), "new": ("new (gevent)", "#1565c0")}


def plot_scenarios(scenarios: dict[str, Any], path: Path) -> Path:
    """One panel per scenario: every probe's latency over time, both designs; unanswered probes
    (no answer within the client timeout) drawn as crosses at the timeout."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(scenarios), figsize=(12, 4), sharey=True)
    for axis, (name, designs) in zip(axes, scenarios.items(), strict=True):
        for key, scenario in designs.items():
            label, colour = DESIGN_STYLE.get(key, (key, "#555555"))
            answered = [s for s in scenario["samples"] if s["status"] != 0]
            lost = [s for s in scenario["samples"] if s["status"] == 0]
            axis.scatter(
                [s["t"] for s in answered],
                [max(s["latency_ms"], 0.1) for s in answered],
                s=6,
                c=colour,
                label=f"{label}",
            )
            axis.scatter(
                [s["t"] for s in lost],
                [s["latency_ms"] for s in lost],
                s=20,
                c=colour,
                marker="x",
                label=f"{label}: no answer ({len(lost)})",
            )
        axis.axhline(1000, color="#c62828", linestyle="--", linewidth=0.8)
        axis.set_yscale("log")
        axis.set_title(name.replace("_", " "), fontsize=10)
        axis.set_xlabel("seconds into the scenario")
        axis.legend(loc="best", fontsize=7, framealpha=0.9)
    axes[0].set_ylabel("probe latency (ms), live and ready")
    figure.suptitle(
        "Health probes (20/s each of live and ready, 1 s timeout) under a frozen database with "
        "200 clients, 1,500 slow or idle connections, and 200 clients on a healthy database",
        fontsize=9,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def check_available() -> None:
    """Fail before a run, not after it, when matplotlib is missing."""
    _pyplot()


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or a clear error saying how to get it."""
    try:
        import matplotlib
    except ImportError as error:
        raise RuntimeError(
            "the bench plots with matplotlib: .venv/bin/pip install -r requirements-dev.txt"
        ) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _s(value: float | None) -> str:
    return "never" if value is None else f"in {value:.2f} s"
