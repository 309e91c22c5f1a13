"""The end of a -m sweep: one table of its jobs (number, overrides, status, result, folder).

A Hydra callback (conf/config.yaml, hydra.callbacks). It reads each job's metrics.json, which
run.py writes however the job ends, because with hydra/launcher=joblib the jobs ran in other
processes.
"""

import json
from pathlib import Path
from typing import List

from hydra.experimental.callback import Callback

# The number a sweep over a job is usually about.
HEADLINE = {"extract": "norm", "similarity": "cosine", "mean": "tokens", "store": "docs", "csv": "tokens",
            "compare": "worst_rel_error", "plot": "cosine_offdiag_mean", "visualize": None,
            "pipeline": "plot/cosine_offdiag_mean", "bench": "extract_vs_bare"}


def headline(record: dict) -> str:
    metrics = record.get("metrics") or {}
    key = HEADLINE.get(record.get("job")) or next((k for k, v in metrics.items() if isinstance(v, float)), None)
    if key is None or key not in metrics:
        return record.get("error", "")
    value = metrics[key]
    return f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"


def summary_table(sweep_dir: Path) -> str:
    """The table, with only the overrides that differ between the jobs (the rest is the command's)."""
    folders = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.split("_")[0].isdigit()),
                     key=lambda p: int(p.name.split("_")[0]))
    records = [json.loads((f / "metrics.json").read_text()) if (f / "metrics.json").is_file()
               else {"status": "no record"} for f in folders]
    shared = set.intersection(*(set(r.get("overrides", [])) for r in records)) if records else set()
    rows = [("#", "overrides", "status", "result", "folder")]
    for folder, record in zip(folders, records):
        own = [o for o in record.get("overrides", []) if o not in shared]
        rows.append((folder.name.split("_")[0], " ".join(own) or "(as the command)", record["status"],
                     headline(record)[:60], folder.name))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows)


_running: List[Path] = []  # the sweep under way in this process, if any


def print_summary() -> None:
    """Print the table of the sweep under way (at its end, or when a failed job ends it early)."""
    while _running:
        sweep_dir = _running.pop()
        if sweep_dir.is_dir():
            print(f"sweep {sweep_dir.resolve()}:\n{summary_table(sweep_dir)}", flush=True)


class SweepSummary(Callback):
    """Hydra raises a failed job's error before on_multirun_end: run.main() then prints the table."""

    def on_multirun_start(self, config, **kwargs) -> None:
        _running.append(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config, **kwargs) -> None:
        print_summary()
