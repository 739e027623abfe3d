"""`mlrec report RUN_DIR...`: runs side by side, per language: a markdown table and PNG charts of
AUC and nDCG@10 (`<run>/eval/metrics.json`) and translation retrieval top-1
(`<run>/eval/retrieval.json`, written by `mlrec align`; the teacher's figures appear as a run of
their own). Charts need matplotlib (`pip install 'mlrec[xling]'`); without it only the table is
written."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mlrec.evaluation.retrieval import RETRIEVAL_FILE

log = logging.getLogger(__name__)

CHARTS = {"auc": "AUC", "ndcg@10": "nDCG@10"}


def load_run(run: Path) -> dict[str, Any]:
    """A run's per-language figures: {"metrics": {lang: {metric: v}}, "retrieval": {lang: v}}."""
    metrics_file, retrieval_file = run / "eval" / "metrics.json", run / "eval" / RETRIEVAL_FILE
    if not metrics_file.is_file() and not retrieval_file.is_file():
        raise FileNotFoundError(
            f"{run} has neither eval/metrics.json nor eval/{RETRIEVAL_FILE}: is it an mlrec run "
            "that was trained (mlrec train/distill) or aligned (mlrec align)?"
        )
    out: dict[str, Any] = {"metrics": {}, "retrieval": {}, "teacher_retrieval": {}}
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        out["metrics"] = {**metrics["by_language"], "overall": metrics["overall"]}
    if retrieval_file.is_file():
        retrieval = json.loads(retrieval_file.read_text())
        out["retrieval"] = retrieval.get("student", {})
        out["teacher_retrieval"] = retrieval.get("teacher", {})
    return out


def _names(runs: list[Path]) -> list[str]:
    """Short unique labels: the folder names, or the paths when two folders share a name."""
    names = [r.name for r in runs]
    return names if len(set(names)) == len(names) else [str(r) for r in runs]


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def markdown(runs: dict[str, dict[str, Any]]) -> str:
    lines = []
    langs = sorted({lang for r in runs.values() for lang in r["metrics"]} - {"overall"})
    for metric, title in CHARTS.items():
        if not langs:
            break
        lines += [f"## {title} per language", ""]
        lines.append("| run | " + " | ".join([*langs, "overall"]) + " |")
        lines.append("|---" * (len(langs) + 2) + "|")
        for name, run in runs.items():
            row = [_cell(run["metrics"].get(lang, {}).get(metric)) for lang in [*langs, "overall"]]
            lines.append(f"| {name} | " + " | ".join(row) + " |")
        lines.append("")
    rows = _retrieval_rows(runs)
    langs = sorted({lang for r in rows.values() for lang in r} - {"mean"})
    if langs:
        lines += ["## Translation retrieval top-1 (source -> target, held-out pairs)", ""]
        lines.append("| run | " + " | ".join([*langs, "mean"]) + " |")
        lines.append("|---" * (len(langs) + 2) + "|")
        for name, row in rows.items():
            lines.append(f"| {name} | " + " | ".join(_cell(row.get(k)) for k in [*langs, "mean"]))
            lines[-1] += " |"
        lines.append("")
    return "\n".join(lines)


def _retrieval_rows(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    for name, run in runs.items():
        if run["retrieval"]:
            rows[name] = run["retrieval"]
        if run["teacher_retrieval"]:
            rows[f"{name} (teacher)"] = run["teacher_retrieval"]
    return rows


def _bar_chart(path: Path, title: str, series: dict[str, dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({k for s in series.values() for k in s})
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels) * max(len(series), 1)), 4))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + i * width for j in range(len(labels))]
        ax.bar(xs, [values.get(k, 0.0) for k in labels], width, label=name)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(labels))], labels)
    ax.set_title(title)
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(run_dirs: list[Path], out: Path) -> Path:
    """report.md (and PNG charts when matplotlib is installed) in `out`; returns report.md."""
    runs = {name: load_run(r) for name, r in zip(_names(run_dirs), run_dirs, strict=True)}
    out.mkdir(parents=True, exist_ok=True)
    text = "# mlrec report\n\nRuns: " + ", ".join(f"`{r}`" for r in run_dirs) + "\n\n"
    text += markdown(runs)
    charts: list[str] = []
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'mlrec[xling]'): no charts")
    else:
        for metric, title in CHARTS.items():
            series = {
                n: {k: v[metric] for k, v in r["metrics"].items()}
                for n, r in runs.items()
                if r["metrics"]
            }
            if series:
                name = f"{metric.replace('@', '_at_')}.png"
                _bar_chart(out / name, f"{title} per language", series)
                charts.append(name)
        rows = _retrieval_rows(runs)
        if rows:
            _bar_chart(out / "retrieval.png", "Translation retrieval top-1", rows)
            charts.append("retrieval.png")
    text += "".join(f"\n![{c}]({c})\n" for c in charts)
    (out / "report.md").write_text(text, encoding="utf-8")
    return out / "report.md"
