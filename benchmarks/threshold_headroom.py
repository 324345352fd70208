"""Where a binary head's threshold could sit: the test accuracy of the head proxy's served model at
every offset of its decision margin (a test-set oracle, not something a run can do).

For each run of ``benchmarks/head_proxy.py`` with the default recipe (or ``--set`` overrides) this
prints the served model's accuracy and the share of its answers on the majority class, then three
thresholds read off the test set: the accuracy-optimal one, the most accurate one that keeps the
majority class under the collapse rule's 95% (``evaluate.COLLAPSE_SHARE``), and the one whose
majority share matches the training prior. It answers whether the collapse rule and "within 3
points of the probe" can both hold with the ranking a private head has (docs/learning.md, round 23).
With ``--predictions`` it reads real runs instead: files written by ``fedlora eval RUN
--predictions FILE`` (the majority class and its share are then the test labels').

    python benchmarks/threshold_headroom.py --out proxy --tasks sst2_imb90,rt_imb,imdb_imb,imdb_imbneg,sst2_imb3k,sst2_imb2k
    python benchmarks/threshold_headroom.py --predictions preds/*.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import head_proxy  # noqa: E402
from suite import task_overrides  # noqa: E402

from fedlora_cli.federation.evaluate import COLLAPSE_SHARE  # noqa: E402
from fedlora_cli.recipe import load_recipe  # noqa: E402


def headroom(logits: torch.Tensor, labels: torch.Tensor, majority: int, prior_share: float) -> dict:
    """Accuracy and majority share at each margin offset in [−3, 3] (step 0.01); the served model
    is offset 0. The margin is ``logit_minority − logit_majority``; a positive one answers the minority."""
    margin = logits[:, 1 - majority] - logits[:, majority]
    offsets = torch.linspace(-3, 3, 601)
    minority_answer = margin[None, :] + offsets[:, None] > 0
    correct = torch.where(minority_answer, labels[None, :] != majority, labels[None, :] == majority)
    accuracy, share = correct.float().mean(1), (~minority_answer).float().mean(1)

    def at(index: int) -> dict:
        return {"accuracy": float(accuracy[index]), "majority_share": float(share[index]), "offset": float(offsets[index])}

    under_line = torch.where(share < COLLAPSE_SHARE, accuracy, torch.tensor(-1.0))
    return {"served": at(int(offsets.abs().argmin())), "best": at(int(accuracy.argmax())),
            "best_under_line": at(int(under_line.argmax())), "prior_matched": at(int((share - prior_share).abs().argmin()))}


def cells(found: dict) -> str:
    return " | ".join(f"{found[key]['accuracy']:.3f} / {found[key]['majority_share']:.1%}" for key in ("served", "best", "best_under_line", "prior_matched"))


def from_predictions(path: Path) -> dict:
    """:func:`headroom` of a binary task's ``fedlora eval --predictions`` file (the majority class and
    its share from the test labels)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    names = list(rows[0]["logits"])  # the run's label order
    if len(names) != 2:
        raise SystemExit(f"{path}: {len(names)} classes; the headroom is read for binary tasks")
    labels = torch.tensor([names.index(row["label"]) for row in rows])
    majority = int(torch.bincount(labels, minlength=2).argmax())
    logits = torch.tensor([[row["logits"][name] for name in names] for row in rows])
    return headroom(logits, labels, majority, float((labels == majority).float().mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="", help="binary benchmarks/suite.py task names")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe override (repeatable)")
    parser.add_argument("--out", default=Path("suite"), type=Path, help="where task files and cached features go")
    parser.add_argument("--predictions", nargs="+", type=Path, help="read real runs: `fedlora eval --predictions` files")
    args = parser.parse_args()
    header = "| served: acc / majority share | accuracy-optimal | best under the 95% line | majority share = class prior |"
    if args.predictions:
        print(f"| predictions {header}\n|---|---|---|---|---|")
        for path in args.predictions:
            print(f"| {path.stem} | {cells(from_predictions(path))} |", flush=True)
        return
    served_logits = {}

    def keep_logits(logits, labels, num_labels):
        served_logits["logits"] = logits.clone()
        return scores(logits, labels, num_labels)

    scores, head_proxy.scores = head_proxy.scores, keep_logits
    print(f"| task | seed {header}\n|---|---|---|---|---|---|")
    for task in args.tasks.split(","):
        features = head_proxy.cached_features(task, args.out)
        majority = int(torch.bincount(features["y_train"]).argmax())
        prior_share = float((features["y_train"] == majority).float().mean())
        for seed in [int(s) for s in args.seeds.split(",")]:
            recipe = load_recipe("default", [*task_overrides(task, args.out), *args.set, f"federation.seed={seed}", f"partition.seed={seed}"])
            head_proxy.proxy_run(features, recipe)
            found = headroom(served_logits["logits"], torch.as_tensor(features["y_test"]), majority, prior_share)
            print(f"| {task} | {seed} | {cells(found)} |", flush=True)


if __name__ == "__main__":
    main()
