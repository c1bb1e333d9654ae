"""Search plots: per-layer sensitivity curves and the metric-vs-cost of every attempt (needs matplotlib)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .knobs import Knob

log = logging.getLogger("torchslim")


def write_plots(out_dir: Path, knobs: list[Knob], attempts: list[dict[str, Any]], metric: str,
                target_metric: str) -> list[str]:
    """Sensitivity curves per layer and metric-vs-cost of every attempt, as PNGs (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed (pip install 'torchslim[plot]'); no search plots written")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for knob in knobs:
        xs = sorted(knob.points)
        ax.plot(xs, [knob.points[x]["loss"] for x in xs], marker="o", label=f"{knob.template.method}:{knob.layer}")
    ax.set_xlabel("strength")
    ax.set_ylabel(f"{metric} loss (calibration)")
    ax.set_title("per-layer sensitivity")
    if len(knobs) <= 20:
        ax.legend(fontsize=7)
    sens = out_dir / "sensitivity.png"
    fig.tight_layout()
    fig.savefig(sens, dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([a["realized"] for a in attempts], [a[metric] for a in attempts], marker="s")
    for a in attempts:
        ax.annotate(f"#{a['attempt']}", (a["realized"], a[metric]))
    ax.set_xlabel(f"{target_metric} ratio to baseline")
    ax.set_ylabel(metric)
    ax.set_title("search attempts")
    att = out_dir / "attempts.png"
    fig.tight_layout()
    fig.savefig(att, dpi=100)
    plt.close(fig)
    return [str(sens), str(att)]
