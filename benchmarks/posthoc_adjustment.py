"""What finished classification runs would have scored at other `federation.posthoc_adjustment` τ'.

The served model predicts ``argmax_y f_y(x) − τ'·log π_y`` (Menon et al. 2021, post hoc; π the
label prior the run released, floored as in training), and training does not depend on τ', so one
pass over each run's test split gives every τ': the saved adapter's logits plus the run's own
``τ'_saved·log π`` are ``f(x)``, re-scored at each τ' of the grid. Runs are grouped by directory
name without its ``-seedN`` suffix (benchmarks/suite.py names), and each group shows mean accuracy,
macro-F1, balanced accuracy, how many runs the collapse rule flags, and the largest one-class share.

    python benchmarks/posthoc_adjustment.py suite/runs/sst2_imb3k-fedsvd-eps6-seed* --taus 0,0.25,0.5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fedlora_cli.federation.artifacts import load_adapter_model, resolve_target  # noqa: E402
from fedlora_cli.federation.evaluate import collapsed, predict_logits, scores  # noqa: E402
from fedlora_cli.models import load_tokenizer  # noqa: E402
from fedlora_cli.privacy.label_prior import prior_offset  # noqa: E402
from fedlora_cli.tasks import get_task, load_task_datasets  # noqa: E402


def trained_logits(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``f(x)`` on the run's test split, its labels, and the run's ``log π``."""
    target = resolve_target(run_dir, None, None)
    recipe = target.recipe
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    if not summary.get("label_counts"):
        raise SystemExit(f"{run_dir}: released no label prior (client level, or no adjustment at all)")
    _, test = load_task_datasets(recipe)
    task = get_task(recipe, load_tokenizer(recipe.model.name))
    model = load_adapter_model(recipe, target.adapter_dir, len(test.label_names))
    data = task.tokenize(test)
    prior = torch.tensor(prior_offset(summary["label_counts"], 1.0, summary.get("prior_epsilon"), recipe.federation.clients))
    return predict_logits(model, data) + recipe.federation.posthoc_adjustment * prior, data.labels, prior


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--taus", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--json", action="store_true", help="one JSON object per run and τ' instead of the table")
    args = parser.parse_args()
    taus = [float(t) for t in args.taus.split(",")]
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in args.runs:
        logits, labels, prior = trained_logits(run)
        for tau in taus:
            result = scores(logits - tau * prior, labels, logits.shape[1])
            counts = result["predicted_counts"]
            row = {"run": run.name, "tau": tau, **result, "collapsed": collapsed(result), "one_class_share": max(counts) / sum(counts)}
            groups[re.sub(r"-seed\d+$", "", run.name)].append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    if args.json:
        return
    print("| runs | τ' | n | accuracy | macro-F1 | balanced acc | flagged | largest one-class share |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in groups.items():
        for tau in taus:
            at = [r for r in rows if r["tau"] == tau]
            mean = {k: sum(r[k] for r in at) / len(at) for k in ("accuracy", "macro_f1", "balanced_accuracy")}
            print(f"| {name} | {tau:g} | {len(at)} | {mean['accuracy']:.3f} | {mean['macro_f1']:.3f} | "
                  f"{mean['balanced_accuracy']:.3f} | {sum(r['collapsed'] for r in at)}/{len(at)} | "
                  f"{max(r['one_class_share'] for r in at):.1%} |")


if __name__ == "__main__":
    main()
