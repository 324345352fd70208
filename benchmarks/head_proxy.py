"""A fast proxy for choosing defaults: the classifier head alone, trained federated under DP-SGD
on the frozen model's features, in seconds per run instead of minutes.

Under DP most of the learning is the head's (docs/learning.md, "What LoRA adds under DP here"),
so a run of the head alone on fixed features, with the recipe's federation and privacy settings,
predicts how a setting moves a real run. What it simulates, per round: every client (all of them
take part, as in the default) runs ``local_steps`` DP-SGD steps on a softmax head over its own
features — Poisson batches of expected size ``batch_size``, the per-example gradient
``(p − e_y)⊗[h, 1]`` clipped to ``max_grad_norm``, Gaussian noise with the multiplier fedlora
calibrates for that client (:func:`~fedlora_cli.privacy.accountants.calibrate_noise`, the same
target epsilon, sample rate and step count) — and the server moves ``server_lr`` times the
size-weighted mean update (FedAvg with a server step size). Without DP the batch gradient is
clipped to ``clip_grad_norm`` as fedlora does. The clients are the recipe's partition of the
task. Not simulated: LoRA (the features stay the frozen model's) and FedSVD's re-factorization.

Checked against real runs of the round-2 default (8 rounds; fedsvd, ε=6, seeds 0 / 1 / 2):
SST-2 proxy 0.776 / 0.761 / 0.765 vs real 0.755 / 0.763 / 0.775; BBC 0.910 / 0.924 vs real
0.930 / 0.937; sst2_imb at the majority class in both. Real runs of the 85/15 task trail the
proxy by a point or two. Use it to rank candidates, then confirm the chosen one with real runs
(benchmarks/suite.py) on tasks it was not chosen on (docs/learning.md, round 3).

    python benchmarks/head_proxy.py --out suite --tasks sst2_imb,sst2,bbc \\
        --config "8 rounds:federation.rounds=8" --config "default:" --config "32 rounds:federation.rounds=32"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from linear_probe import frozen_features  # noqa: E402
from suite import task_overrides  # noqa: E402

from fedlora_cli.data.partition import partition  # noqa: E402
from fedlora_cli.federation.evaluate import scores  # noqa: E402
from fedlora_cli.privacy.accountants import calibrate_noise  # noqa: E402
from fedlora_cli.recipe import Recipe, load_recipe  # noqa: E402


def cached_features(task: str, out: Path) -> dict:
    """Frozen-model features of a task's train and test rows (computed once, kept under ``out``)."""
    path = out / "features" / f"{task}.pt"
    if path.is_file():
        return torch.load(path)
    train, test, x_train, x_test = frozen_features(load_recipe("default", task_overrides(task, out)))
    features = {"x_train": x_train, "y_train": torch.tensor(train.labels), "x_test": x_test, "y_test": torch.tensor(test.labels)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(features, path)
    return features


def head_steps(w, x, y, steps, lr, sample_rate, noise, clip, dp, generator):
    """``steps`` local steps of (DP-)SGD on the softmax head ``w`` ((K, d+1), bias last column)."""
    w = w.clone()
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    for _ in range(steps):
        batch = torch.rand(len(x), generator=generator) < sample_rate
        xb, yb = x[batch], y[batch]
        error = F.softmax(xb @ w.T, dim=-1) - F.one_hot(yb, w.shape[0]).float()  # per-example grad: error ⊗ x
        if dp:
            norms = error.norm(dim=1) * xb.norm(dim=1)
            error = error * (clip / norms.clamp(min=1e-12)).clamp(max=1.0)[:, None]
            grad = (error.T @ xb + noise * clip * torch.randn(w.shape, generator=generator)) / (sample_rate * len(x))
        else:
            grad = error.T @ xb / max(1, len(xb))
            grad = grad * (clip / grad.norm().clamp(min=1e-12)).clamp(max=1.0)
        w -= lr * grad
    return w


def proxy_run(features: dict, recipe: Recipe) -> dict:
    """One federated run of the head alone with ``recipe``'s settings; test scores of the final head."""
    fed, privacy = recipe.federation, recipe.privacy
    x, y = features["x_train"], features["y_train"]
    num_labels = int(max(y.max(), features["y_test"].max())) + 1
    parts = [torch.as_tensor(p) for p in partition(y.numpy(), fed.clients, recipe.partition)]
    sizes = torch.tensor([len(p) for p in parts], dtype=torch.float64)
    generator = torch.Generator().manual_seed(fed.seed)
    dp = privacy.level == "sample"
    clip = privacy.max_grad_norm if dp else fed.clip_grad_norm
    rounds = fed.resolved_rounds(len(y))
    steps = rounds * fed.local_steps
    rates = [min(1.0, fed.batch_size / len(part)) for part in parts]
    noises = [calibrate_noise(privacy.target_epsilon, privacy.delta, rate, steps, privacy.accountant) if dp else 0.0 for rate in rates]
    w = torch.zeros(num_labels, x.shape[1] + 1)
    for _ in range(rounds):
        update = torch.zeros_like(w)
        for part, size, rate, noise in zip(parts, sizes, rates, noises):
            local = head_steps(w, x[part], y[part], fed.local_steps, fed.head_lr, rate, noise, clip, dp, generator)
            update += float(size / sizes.sum()) * (local - w)
        w += (fed.server_lr if fed.server_optimizer == "sgd" else 1.0) * update
    x_test = torch.cat([features["x_test"], torch.ones(len(features["x_test"]), 1)], dim=1)
    return scores(x_test @ w.T, features["y_test"], num_labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="sst2_imb,sst2,bbc", help="benchmarks/suite.py task names")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--config", action="append", default=[], metavar="NAME:k=v,k=v",
                        help="a candidate: overrides of the default recipe (repeatable; 'current:' is the default)")
    parser.add_argument("--out", default=Path("suite"), type=Path, help="where task files and cached features go")
    args = parser.parse_args()
    configs = [(spec.split(":", 1)[0], [o for o in spec.split(":", 1)[1].split(",") if o]) for spec in args.config or ["current:"]]
    seeds = [int(s) for s in args.seeds.split(",")]
    print("| task | candidate | accuracy per seed | macro-F1 per seed | mean acc / F1 |")
    print("|---|---|---|---|---|")
    for task in args.tasks.split(","):
        features = cached_features(task, args.out)
        for name, overrides in configs:
            results = []
            for seed in seeds:
                recipe = load_recipe("default", [*task_overrides(task, args.out), *overrides, f"federation.seed={seed}", f"partition.seed={seed}"])
                results.append(proxy_run(features, recipe))
            acc = [r["accuracy"] for r in results]
            f1 = [r["macro_f1"] for r in results]
            print(f"| {task} | {name} | {' '.join(f'{a:.3f}' for a in acc)} | {' '.join(f'{f:.3f}' for f in f1)} "
                  f"| {sum(acc) / len(acc):.3f} / {sum(f1) / len(f1):.3f} |", flush=True)


if __name__ == "__main__":
    main()
