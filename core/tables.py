"""Text reports of a run: the stage table and per-layer tables (tabulate)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from tabulate import tabulate

if TYPE_CHECKING:  # pragma: no cover
    from .results import RunResult

#: Preferred column order; other metrics follow alphabetically.
METRIC_ORDER = ("accuracy", "params", "nonzeros", "sparsity", "macs", "latency_ms", "size_bytes")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        if abs(value) >= 1e6:
            return f"{value / 1e6:,.2f}M"
        if abs(value) >= 1e4:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 1e6:
        return f"{value / 1e6:,.2f}M"
    return str(value)


def metric_columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    """All metric names in ``rows``: the well-known ones first, then the rest sorted."""
    names = set()
    for row in rows:
        names.update(row)
    return [m for m in METRIC_ORDER if m in names] + sorted(names - set(METRIC_ORDER))


def run_table(result: "RunResult", tablefmt: str = "simple") -> str:
    """One row per stage (baseline, then each step) with every metric and the step's wall time."""
    stages = result.metrics
    columns = metric_columns(stages.values())
    seconds = {f"{r.index} {r.label}": r.seconds for r in result.steps}
    rows = [[stage, *(_fmt(metrics.get(c)) for c in columns), _fmt(seconds.get(stage))]
            for stage, metrics in stages.items()]
    text = tabulate(rows, headers=["stage", *columns, "step_s"], tablefmt=tablefmt, disable_numparse=True)
    if result.constraints:
        lines = [
            f"{'met ' if c['met'] else 'FAILED'} {c['constraint']} <= {c['limit']} (got {_fmt(c['value'])})"
            for c in result.constraints
        ]
        text += "\n\nconstraints:\n" + "\n".join(lines)
    if result.search:
        rows = [{k: v for k, v in a.items() if k not in ("layers", "finetune")} for a in result.search["attempts"]]
        verdict = "met" if result.search["met"] else "NOT met"
        text += (f"\n\nsearch ({result.search['target_metric']} <= {result.search['target']}, {verdict}; "
                 f"{result.search['seconds']:.1f}s):\n" + rows_table(rows, tablefmt=tablefmt))
    return text


def rows_table(rows: list[dict[str, Any]], tablefmt: str = "simple") -> str:
    """A table of homogeneous dict rows (per-layer reports, benchmark results)."""
    if not rows:
        return "(no rows)"
    headers = list(dict.fromkeys(k for row in rows for k in row))
    return tabulate([[_fmt(row.get(h)) for h in headers] for row in rows], headers=headers,
                    tablefmt=tablefmt, disable_numparse=True)
