"""The table of a job=sts sweep made with sts.select_on, every cell chosen on the selection pairs.

Per run (a prompt) and variant: the evaluated split's Spearman of the chunk chosen on the selection
pairs among the blocks' mean, and of the block and chunk chosen there among every block; each run's
own choice minus the first run's, paired; then the one choice over all runs.

Only the selection pairs' records (`selection.records` of sts.json) choose; the evaluated split's
records are read for the chosen cells alone.

    python -m actexp.report.sts_choices multirun/sts/<date>_<pid> [more runs ...] [--variants raw,centered,...]
"""

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from omegaconf import OmegaConf

from ..maths import bootstrap
from ..config.schema import CONF
from ..maths.bootstrap import Bootstrap


def label(run: dict) -> str:
    """A run's prompt as the table names it: the prompt group's name, and its template and span where
    they are not the group's own (conf/prompt), so two runs of one group never share a label."""
    prompt = run.get("prompt") or {}
    name = prompt.get("name") or "none"
    own = OmegaConf.load(CONF / "prompt" / f"{name}.yaml") if (CONF / "prompt" / f"{name}.yaml").is_file() else {}
    changed = [f"{key} {json.dumps(prompt.get(key))}" for key in ("template", "chat", "span")
               if key in prompt and prompt.get(key) != own.get(key, {"chat": False, "span": "text"}.get(key))]
    return name + (f" ({', '.join(changed)})" if changed else "")


def _best(dev: Dict[Tuple[str, str], float], keep) -> Optional[Tuple[str, str]]:
    candidates = [k for k, v in dev.items() if v is not None and keep(*k)]
    return max(candidates, key=lambda k: dev[k]) if candidates else None


def _cell(test: dict, key: Optional[Tuple[str, str]], dev: dict, name_chunk: bool) -> str:
    if key is None or test.get(key) is None:
        return "-"
    r = test[key]
    interval = f" [{100 * r['interval'][0]:.2f}, {100 * r['interval'][1]:.2f}]" if r.get("interval") else ""
    where = f" ({key[1]}; dev {100 * dev[key]:.2f})" if name_chunk else ""
    return f"{100 * r['value']:.2f}{interval}{where}"


def rows(sts_runs: List[dict], variants: List[str]) -> Tuple[List[List[str]], Tuple[str, str, str, float, dict]]:
    """Table rows [prompt, variant, blocks' mean, best block] and the overall choice (prompt, variant,
    chunk, its dev Spearman, its test record) over every run."""
    out, overall = [], None
    for run in sts_runs:
        selection = run.get("selection")
        if not selection:
            raise ValueError("a run without sts.select_on: its choices cannot be made on other pairs; "
                             "run the sweep with sts.select_on=dev")
        prompt = label(run)
        dev = {(r["variant"], r["chunk"]): r["value"] for r in selection["records"]}
        test = {(r["variant"], r["chunk"]): r for r in run["records"] if r["metric"] == "spearman"}
        per_block = any(chunk.startswith("b") and "/" in chunk for _, chunk in dev)
        for variant in variants:
            if not any(v == variant for v, _ in dev):
                continue
            mean_of_blocks = _best(dev, lambda v, c: v == variant and (c.startswith("mean/") or not per_block))
            best_block = _best(dev, lambda v, c: v == variant) if per_block else None
            out.append([prompt, variant, _cell(test, mean_of_blocks, dev, True),
                        _cell(test, best_block, dev, True) if per_block else "-"])
        if selection["source"]["sha256"] != sts_runs[0]["selection"]["source"]["sha256"]:
            raise ValueError("the runs chose on different selection pairs: one choice over all of them needs the same")
        key = (selection["variant"], selection["chunk"])
        if overall is None or selection["chosen_by"] > overall[3]:
            overall = (prompt, *key, selection["chosen_by"], test[key])
    return out, overall


def against_first(sts_runs: List[dict]) -> List[List[str]]:
    """Per run: its choice on dev, the evaluated split's Spearman of it, and minus the first run's
    (prompt=none in the README) with a paired interval: both runs' cosines on the same resamples of
    the same pairs, drawn as the runs drew theirs."""
    first = sts_runs[0]
    boot = first["bootstrap"]
    draw = Bootstrap(boot["resamples"], boot["seed"], boot["level"])
    counts = draw.counts(len(first["selection"]["cosines"]))  # [B, P]
    gold = np.asarray(first["selection"]["gold"])  # [P]
    out = []
    for run in sts_runs:
        if (run["pairs"]["sha256"], run["selection"]["gold"], run["bootstrap"]) != (first["pairs"]["sha256"],
                                                                                   first["selection"]["gold"], boot):
            raise ValueError("the runs evaluated other pairs or drew other resamples: no paired difference")
        s = run["selection"]
        cells = [label(run), f"{s['variant']}, {s['chunk']}",
                 f"{100 * s['chosen_by']:.2f}", _interval_text(s["spearman"], s["interval"])]
        if run is not first:
            mine = bootstrap.spearman(np.asarray(s["cosines"]), gold, counts)
            theirs = bootstrap.spearman(np.asarray(first["selection"]["cosines"]), gold, counts)
            cells.append(_interval_text(s["spearman"] - first["selection"]["spearman"], draw.interval(mine - theirs)))
        else:
            cells.append("")
        out.append(cells)
    return out


def _interval_text(value: float, interval) -> str:
    return f"{100 * value:.2f}" + (f" [{100 * interval[0]:.2f}, {100 * interval[1]:.2f}]" if interval else "")


def markdown(sts_runs: List[dict], variants: List[str]) -> str:
    table, (prompt, variant, chunk, dev, record) = rows(sts_runs, variants)
    lines = ["| prompt | variant | blocks' mean (chunk chosen on dev) | best block and chunk on dev |",
             "|---|---|---:|---:|"] + [f"| {' | '.join(r)} |" for r in table]
    lines += ["", "| prompt | chosen on dev | dev | test | minus the first row (paired) |", "|---|---|---:|---:|---:|"]
    lines += [f"| {' | '.join(r)} |" for r in against_first(sts_runs)]
    lines.append("\nTemplates: " + "; ".join(_template(run) for run in sts_runs))
    low, high = record["interval"] or (float("nan"), float("nan"))
    lines.append(f"\nChosen on dev over every prompt, variant, block and chunk: {prompt}, {variant}, {chunk} "
                 f"(dev {100 * dev:.2f}) -> {record['split']} {100 * record['value']:.2f} [{100 * low:.2f}, {100 * high:.2f}]")
    return "\n".join(lines)


def _template(run: dict) -> str:
    """What a run's model read and pooled: 'echo: "Rewrite ... {text}", span text'."""
    prompt = run["model"].get("prompt") or {}
    chat = " in the chat template" if prompt.get("chat") else ""
    return f"{label(run)}: {json.dumps(prompt.get('template'))}{chat}, span {prompt.get('span', 'text')}"


def _fail(message: str) -> None:
    """Bad input: one line on stderr, exit 2 (as the CLI's)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", type=Path, nargs="+",
                        help="multirun folders of job=sts runs, runs' folders or their sts.json, in the table's order")
    parser.add_argument("--variants", help="the variants of the first table, comma-separated (default: those "
                                           "the runs scored, in the first run's order)")
    args = parser.parse_args(argv)
    found = []
    for sweep in args.sweeps:
        folder = sweep.parent if sweep.is_file() and sweep.name == "sts.json" else sweep
        # In the sweep's order: job 10 after job 9.
        mine = sorted(folder.glob("**/sts.json"), key=lambda p: [int(x) if x.isdigit() else x
                                                                 for x in re.split(r"(\d+)", str(p))])
        if not mine:
            _fail(f"no sts.json under {sweep}: give the folder of a job=sts run or sweep")
        found += mine
    try:
        runs = [json.loads(p.read_text()) for p in found]
    except ValueError as e:
        _fail(f"a sts.json there is not JSON ({e}): run its job again")
    unselected = [str(p) for p, run in zip(found, runs) if not run.get("selection")]
    if unselected:
        _fail(f"{unselected[0]} was run without sts.select_on: its choices cannot be made on other pairs; "
              "run it with sts.select_on=dev")
    scored = list(dict.fromkeys(r["variant"] for run in runs for r in run["records"]))  # first run's order
    variants = args.variants.split(",") if args.variants else scored
    unknown = [v for v in variants if v not in scored]
    if unknown:
        _fail(f"--variants {','.join(unknown)}: the runs scored {', '.join(sorted(scored))}")
    try:
        print(markdown(runs, variants))
    except ValueError as e:
        _fail(str(e))


if __name__ == "__main__":
    main()
