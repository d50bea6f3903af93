"""`demo --plot PATH`: the Knight replay as one chart (SVG or PNG, by the file's suffix).

Top: orders per second attempted by each host and by the whole node, the onset of the
legacy path, the "rollback" and the instant killswitch tripped; the node's allowed flow shows
the kill taking hold. Bottom: the orders each monitor let through after the onset (log
scale). Drawing only: it reads the demo's result document and never runs anything.
matplotlib is an optional dependency (`pip install 'killswitch[plot]'`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SUFFIXES = (".svg", ".png")
LABELS = {
    "per_host_limit": "per-host limit",
    "prometheus_alert": "Prometheus-style alert",
    "killswitch": "killswitch",
}


class PlotError(Exception):
    """The chart cannot be written (bad suffix, matplotlib missing): one line for the user."""


def check_path(path: str) -> Path:
    """Refuse what cannot be written before the demo runs (exit 2 from the CLI)."""
    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise PlotError(f"--plot {path}: the file name must end in .svg or .png")
    if not p.parent.is_dir():
        raise PlotError(f"--plot {path}: directory {p.parent} does not exist")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotError(
            "--plot needs matplotlib: pip install 'killswitch[plot]' (or matplotlib)"
        ) from None
    return p


def write_plot(doc: dict[str, Any], path: Path) -> None:
    """Draw the replay in `doc` (run_demo's result) into `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must come before pyplot
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: searchable, and small
    import matplotlib.pyplot as plt

    sc, ser = doc["scenario"], doc["series"]
    step = float(ser["bucket_s"])
    attempted: dict[str, list[float]] = ser["attempted_per_s"]
    allowed: dict[str, list[float]] = ser["allowed_per_s"]
    # the last bucket is cut short by the end of the replay: left out, not drawn as a drop
    n = max(len(next(iter(attempted.values()), [])) - 1, 1)
    t = [i * step for i in range(n)]
    node = [sum(v[i] for v in attempted.values()) for i in range(n)]
    node_allowed = [sum(v[i] for v in allowed.values()) for i in range(n)]

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 7.5), gridspec_kw={"height_ratios": [3, 1.4]}
    )
    for host, values in sorted(attempted.items()):
        haunted = host == sc["haunted"]
        top.plot(
            t, values[:n], color="#d62728" if haunted else "#9e9e9e",
            linewidth=1.6 if haunted else 0.8,
            label=f"{host} (legacy path)" if haunted else None,
        )  # fmt: skip
    top.plot(t, node, color="black", linewidth=2.2, label="node: attempted")
    top.plot(t, node_allowed, color="#2ca02c", linewidth=1.6, label="node: allowed by the gates")
    marks = [
        (sc["onset_s"], "#d62728", f"or-08 on legacy path ({sc['onset_s']:g} s)"),
        (sc["rollback_s"], "#ff7f0e", f"'rollback': all eight ({sc['rollback_s']:g} s)"),
    ]
    if ser["trip_s"] is not None:
        after = ser["trip_s"] - sc["onset_s"]
        marks.append((ser["trip_s"], "#1f77b4", f"killswitch trips (+{after:.1f} s)"))
    for x, color, label in marks:
        top.axvline(x, color=color, linestyle="--", linewidth=1.2, label=label)
    top.set_xlim(0, max(t[-1] if t else 1.0, 1.0))
    top.set_ylim(bottom=0)
    top.set_xlabel(f"seconds since the replay began (compressed {sc['compression']:g}x)")
    top.set_ylabel("orders per second")
    top.set_title(
        f"Knight Capital replay: node volume, {len(attempted)} hosts, {sc['window_s']:g} s windows"
    )
    top.legend(loc="upper left", fontsize=8, ncol=2)
    top.grid(alpha=0.3)

    monitors = doc["monitors"]
    names = [LABELS.get(m["monitor"], m["monitor"]) for m in monitors]
    counts = [max(int(m["orders_after_onset"]), 1) for m in monitors]
    colors = ["#1f77b4" if m["monitor"] == "killswitch" else "#9e9e9e" for m in monitors]
    bars = bottom.barh(names, counts, color=colors)
    bottom.set_xscale("log")
    bottom.set_xlabel("orders let through after the onset (log scale)")
    for bar, m in zip(bars, monitors, strict=True):
        acted = m.get("acted_after_s")
        when = "never acted" if acted is None else f"acted +{acted:g} s"
        bottom.annotate(
            f" {int(m['orders_after_onset']):,} ({when})",
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            va="center", fontsize=8,
        )  # fmt: skip
    bottom.set_xlim(left=10, right=max(counts) * 30)
    bottom.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
