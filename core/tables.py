"""Text reports of a run: the stage table and per-layer tables (tabulate)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from tabulate import tabulate

from .masks import masked_parameters

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
    """One row per stage (baseline, then each step) with every metric and the step's wall time.

    A step's cell shows the change against the baseline (``x0.50`` for a cost, ``-0.011`` for a score);
    metrics no stage changed are listed once under the table instead of as constant columns. Under it
    come the example inputs the costs were measured on, each step's warnings and the constraints.
    """
    stages = result.metrics
    columns = metric_columns(stages.values())
    constant = [c for c in columns if len({repr(m.get(c)) for m in stages.values()}) == 1 and len(stages) > 1]
    shown = [c for c in columns if c not in constant]
    seconds = {f"{r.index} {r.label}": r.seconds for r in result.steps}
    rows = []
    for stage, metrics in stages.items():
        cells = [_cell(metrics.get(c), result.baseline.get(c), result.directions.get(c), stage == "baseline")
                 for c in shown]
        rows.append([stage, *cells, _fmt(seconds.get(stage))])
    text = tabulate(rows, headers=["stage", *shown, "step_s"], tablefmt=tablefmt, disable_numparse=True)
    notes = []
    if constant:
        notes.append("unchanged: " + ", ".join(f"{c} {_fmt(result.baseline.get(c))}" for c in constant))
    if result.example_inputs:
        notes.append(f"costs (macs, latency) measured on the example inputs: {result.example_inputs}")
    notes += _latency_note(result)
    if notes:
        text += "\n\n" + "\n".join(notes)
    if result.warnings:
        text += "\n\nwarnings:\n" + "\n".join(f"- {w}" for w in result.warnings)
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


def _cell(value: Any, baseline: Any, direction: str | None, is_baseline: bool) -> str:
    """``value`` with its change against the baseline: a ratio for costs, a difference for scores."""
    text = _fmt(value)
    if is_baseline or not isinstance(value, (int, float)) or not isinstance(baseline, (int, float)):
        return text
    if direction == "lower" and baseline:
        return f"{text} (x{value / baseline:.2f})"
    if direction == "higher":
        return f"{text} ({value - baseline:+.3g})"
    return text


def _latency_note(result: "RunResult") -> list[str]:
    """Why latency can rise after pruning: masks are applied on every forward and zeros run dense."""
    base = result.baseline.get("latency_ms")
    rose = any((r.metrics.get("latency_ms") or 0) > (base or float("inf")) for r in result.steps)
    if not rose or not masked_parameters(result.model):
        return []
    return ["latency rises after pruning: the masks are applied on every forward and dense kernels do not skip "
            "zeros; bake_masks: true (or torchslim.masks.finalize) removes the masking cost, and a deploy step "
            "or svd/channel turn the cut into speed"]


def rows_table(rows: list[dict[str, Any]], tablefmt: str = "simple") -> str:
    """A table of homogeneous dict rows (per-layer reports, benchmark results)."""
    if not rows:
        return "(no rows)"
    headers = list(dict.fromkeys(k for row in rows for k in row))
    return tabulate([[_fmt(row.get(h)) for h in headers] for row in rows], headers=headers,
                    tablefmt=tablefmt, disable_numparse=True)
