"""The end of a -m sweep: one table of its jobs (number, overrides, status, results, folder).

A Hydra callback (conf/config.yaml, hydra.callbacks). It reads each job's metrics.json, which
run.py writes however the job ends, because with hydra/launcher=joblib the jobs ran in other
processes. For pipeline and analyze jobs the table answers the research question: recall@1, MRR
and anisotropy of all chunks together, raw -> centred, with the best row of each marked *.
"""

import contextlib
import json
import math
import shutil
from pathlib import Path
from typing import List, Optional

from hydra.experimental.callback import Callback

from .console import metric_with_interval

# The number a sweep over a job is usually about.
HEADLINE = {"extract": "norm", "similarity": "cosine", "mean": "tokens", "store": "docs", "csv": "tokens",
            "compare": "worst_rel_error", "plot": None, "visualize": None,
            "bench": "extract_vs_bare", "neighbors": "queries", "sts": "best"}
# (column, metric key after the job's prefix, whether higher is better); anisotropy: nearer 0 is better.
QUESTION = [("recall@1", "eval/recall@1", True), ("MRR", "eval/mrr", True), ("anisotropy", "geometry/anisotropy", False)]
PREFIX = {"pipeline": "", "analyze": ""}  # the pipeline names its analysis as job=analyze does


def headline(record: dict) -> str:
    metrics = record.get("metrics") or {}
    key = HEADLINE.get(record.get("job")) or next((k for k, v in metrics.items() if isinstance(v, float)), None)
    if key is None or key not in metrics:
        return record.get("error") or ""
    value = metrics[key]
    return f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"


def _with_interval(metrics: dict, name: str) -> str:
    """Spearman x 100 of `name` with its interval, or "-"."""
    return metric_with_interval(metrics, name, 100, 2)


def sts_result(metrics: dict) -> str:
    """An STS row: its best, and the centred Spearman of all chunks with its interval and minus raw's
    with its paired one (a sweep over the mean's corpus or min_count is read in this column)."""
    line = metrics.get("best", "")
    if "selected_spearman" in metrics:  # chosen on other pairs (sts.select_on): the row's result
        line = f"selected {metrics['selected']} {_with_interval(metrics, 'selected_spearman')}"
    for main in ("all", "mean/all"):  # mean/all: the blocks' mean of model.layers=each
        if f"sts/spearman/centered/{main}" in metrics:
            line += (f"; centered {_with_interval(metrics, f'sts/spearman/centered/{main}')}, minus raw "
                     f"{_with_interval(metrics, f'sts/spearman/centered-raw/{main}')}")
    return line


def _variants(record: dict, metric: str) -> List[float]:
    """The metric of all chunks, raw then centred (those the job computed)."""
    prefix = PREFIX.get(record.get("job"))
    metrics = record.get("metrics") or {}
    if prefix is None:
        return []
    values = [metrics.get(f"{prefix}{metric}/{v}/all") for v in ("raw", "centered")]
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _score(values: List[float], higher: bool) -> Optional[float]:
    """What ranks a row: its last variant (centred when there is one); larger is better."""
    if not values:
        return None
    return values[-1] if higher else -abs(values[-1])


def summary_table(sweep_dir: Path) -> str:
    """The table, with only the overrides that differ between the jobs (the rest is the command's)."""
    folders = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.split("_")[0].isdigit()),
                     key=lambda p: int(p.name.split("_")[0]))
    records = [json.loads((f / "metrics.json").read_text()) if (f / "metrics.json").is_file()
               else {"status": "no record"} for f in folders]
    shared = set.intersection(*(set(r.get("overrides", [])) for r in records)) if records else set()
    answers = any(_variants(r, QUESTION[0][1]) or _variants(r, QUESTION[2][1]) for r in records)
    # The question's columns, and `result` for the rows that lack them (other jobs, failures).
    columns = [f"{name} raw -> centred" for name, _, _ in QUESTION] + ["result"] if answers else ["result"]
    rows = [["#", "overrides", "status", *columns]]
    best = {}
    if answers:
        for name, metric, higher in QUESTION:
            scores = [_score(_variants(r, metric), higher) for r in records]
            top = max((x for x in scores if x is not None), default=None)
            best[name] = [top is not None and x is not None and abs(x - top) < 1e-12 and len(records) > 1 for x in scores]
    for n, (folder, record) in enumerate(zip(folders, records)):
        own = [o for o in record.get("overrides", []) if o not in shared]
        cells = [folder.name.split("_")[0], " ".join(own) or "(as the command)", record["status"]]
        shown = False
        if answers:
            for name, metric, _ in QUESTION:
                values = _variants(record, metric)
                shown = shown or bool(values)
                text = " -> ".join(f"{v:.3f}" for v in values) if values else "-"
                cells.append(text + (" *" if best[name][n] else ""))
        is_sts = record.get("job") == "sts" and record.get("metrics")
        # A failure's whole line: it says how to fix it.
        result = headline(record) if record.get("status") != "ok" else headline(record)[:60]
        cells.append("" if shown else sts_result(record["metrics"]) if is_sts else result)
        rows.append(cells)
    # The best row: under sts.select_on by the score on the selection pairs of each row's choice (a
    # sweep over prompts then chooses its prompt on dev too); else by the split's own best.
    ok = [r for r in records if r.get("job") == "sts" and r.get("status") == "ok"]  # a failed run chose nothing
    chosen = bool(ok) and all("selected_chosen_by" in (r.get("metrics") or {}) for r in ok)
    key = "selected_chosen_by" if chosen else "best_spearman"
    sts = [(r.get("metrics") or {}).get(key) if r.get("job") == "sts" else None for r in records]
    if sum(x is not None for x in sts) > 1:  # an STS sweep (e.g. over prompts or model.layers): * on its best row
        top = max(x for x in sts if x is not None)
        for cells, x in zip(rows[1:], sts):
            cells[-1] += " *" if x == top else ""
        by = "the score of its choice on the selection pairs" if chosen else "its best score on the evaluated split"
        lines_after = [f"(* the best row by {by})"]
    else:
        lines_after = []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + (f.name if i else "folder")
             for i, (r, f) in enumerate(zip(rows, [None, *folders]))]
    lines += lines_after
    if answers:
        lines.append("(all chunks; * the best row of a column by its last value: highest recall@1 and MRR, "
                     "anisotropy nearest 0)")
    return "\n".join(lines)


_running: List[Path] = []  # the sweep under way in this process, if any


def print_summary() -> None:
    """Print the table of the sweep under way (at its end, or when a failed job ends it early). A sweep
    refused before any job ran (an unknown option among its values) leaves no folder: Hydra wrote only
    its multirun.yaml."""
    while _running:
        sweep_dir = _running.pop()
        if not sweep_dir.is_dir():
            continue
        if any(p.is_dir() and p.name.split("_")[0].isdigit() for p in sweep_dir.iterdir()):
            print(f"sweep {sweep_dir.resolve()}:\n{summary_table(sweep_dir)}", flush=True)
        elif {p.name for p in sweep_dir.iterdir()} <= {"multirun.yaml"}:
            shutil.rmtree(sweep_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                sweep_dir.parent.rmdir()  # multirun/<name>/ when this was its only sweep


class SweepSummary(Callback):
    """Hydra raises a failed job's error before on_multirun_end: run.main() then prints the table."""

    def on_multirun_start(self, config, **kwargs) -> None:
        _running.append(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config, **kwargs) -> None:
        print_summary()
