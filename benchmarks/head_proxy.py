"""A fast proxy for choosing defaults: the classifier head alone, trained federated under DP-SGD
on the frozen model's features, in seconds per run instead of minutes.

Under DP most of the learning is the head's (docs/learning.md, "What LoRA adds under DP here"),
so a run of the head alone on fixed features, with the recipe's federation and privacy settings,
predicts how a setting moves a real run. What it simulates, per round: every client (all of them
take part, as in the default) runs ``local_steps`` DP-SGD steps on a softmax head over its own
features — Poisson batches of expected size ``batch_size``, the per-example gradient
``(p − e_y)⊗[h, 1]`` clipped to the head's part of the clip (``head_clip_share·max_grad_norm``),
Gaussian noise with the multiplier fedlora calibrates for that client
(:func:`~fedlora_cli.privacy.accountants.calibrate_noise`, the same epsilon left after the label
prior, sample rate and step count), on the logit-adjusted loss ``CE(f + τ·log π, y)`` with π from
the label counts noised as fedlora releases them (:mod:`fedlora_cli.privacy.label_prior`) — and
the server applies the recipe's ``server_optimizer`` to the size-weighted mean update (the
default: ``server_lr`` times it, FedAvg with a server step size; momentum and the adaptive ones
as :mod:`fedlora_cli.methods.server_optimizer` applies them to the head). The test scores are the
served model's (``f − τ'·log π`` with ``posthoc_adjustment``).
Without DP the batch gradient is clipped to ``clip_grad_norm`` as fedlora does. The clients are
the recipe's partition of the task. Not simulated: LoRA (the features stay the frozen model's:
round 11 found the LoRA factors' DP noise is most of what real runs of small 85/15 sets lose to
the proxy) and FedSVD's re-factorization.

Besides recipe overrides a candidate may set ``proxy.client_prior=λ``: client k trains on
``CE(f + τ·log π + λ·(log π_k − log π), y)`` with π_k from its own noised counts (the client's
own label mix, as FedLC, Zhang et al. 2022; docs/learning.md, round 12). fedlora does not
implement it. Two more levers fedlora does not implement (docs/learning.md, round 20):
``proxy.class_weight=β`` weights each example's clipped gradient by ``w_y = (min_c π_c / π_y)^β``
(≤ 1, so the sensitivity stays ``C``: a rare class is no longer outvoted by the clipped majority),
and ``proxy.center=true`` trains on features minus their exact training mean (not private: an
upper bound on what a privately released mean could give). ``proxy.center=private`` releases the
mean as a run would have to (docs/learning.md, round 23): each client adds Gaussian noise
``N(0, (σ_m R)² I)`` to its sum of features clipped to norm ``R`` (``proxy.mean_noise=σ_m``,
``proxy.feature_clip=R``; L2 sensitivity ``R``), the centre is ``Σ_k S_k / Σ_k n_k``, and the
release is composed with DP-SGD under RDP as one more Gaussian step at sample rate 1: DP-SGD's
noise is calibrated so that the composition meets the recipe's epsilon.

Checked against real runs of the round-2 default (8 rounds; fedsvd, ε=6, seeds 0 / 1 / 2):
SST-2 proxy 0.776 / 0.761 / 0.765 vs real 0.755 / 0.763 / 0.775; BBC 0.910 / 0.924 vs real
0.930 / 0.937; sst2_imb at the majority class in both. With the defaults of round 12 (seeds
0–2) sst2_imb3k gives 0.871 0.865 0.887, no seed flagged, where real runs give 0.877 0.867
0.875, one flagged (0.877 0.875 0.881, none flagged, with the LoRA factors frozen). Candidates are
simulated on the default recipe of the day: rank them with it, then confirm the chosen one with
real runs (benchmarks/suite.py) on tasks it was not chosen on (docs/learning.md, round 3).

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
from fedlora_cli.federation.evaluate import collapsed, scores  # noqa: E402
from fedlora_cli.methods.server_optimizer import ServerOptimizer  # noqa: E402
from fedlora_cli.privacy.accountants import calibrate_noise  # noqa: E402
from fedlora_cli.privacy.label_prior import logit_offset, noised_label_counts, noise_std, prior_epsilon_of, prior_offset  # noqa: E402
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


def head_steps(w, x, y, steps, lr, sample_rate, noise, clip, dp, generator, offset, class_weights=None):
    """``steps`` local steps of (DP-)SGD on the softmax head ``w`` ((K, d+1), bias last column),
    on the loss ``CE(x·wᵀ + offset, y)``; under DP each clipped example gradient is scaled by
    ``class_weights[y]`` when given."""
    w = w.clone()
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    for _ in range(steps):
        batch = torch.rand(len(x), generator=generator) < sample_rate
        xb, yb = x[batch], y[batch]
        error = F.softmax(xb @ w.T + offset, dim=-1) - F.one_hot(yb, w.shape[0]).float()  # per-example grad: error ⊗ x
        if dp:
            norms = error.norm(dim=1) * xb.norm(dim=1)
            error = error * (clip / norms.clamp(min=1e-12)).clamp(max=1.0)[:, None]
            if class_weights is not None:
                error = error * class_weights[yb][:, None]
            grad = (error.T @ xb + noise * clip * torch.randn(w.shape, generator=generator)) / (sample_rate * len(x))
        else:
            grad = error.T @ xb / max(1, len(xb))
            grad = grad * (clip / grad.norm().clamp(min=1e-12)).clamp(max=1.0)
        w -= lr * grad
    return w


def noise_with_release(target_epsilon: float, delta: float, sample_rate: float, steps: int, release_noise: float) -> float:
    """The smallest DP-SGD noise multiplier (to 0.1%) whose RDP composition with one Gaussian
    release of noise multiplier ``release_noise`` (a step at sample rate 1) stays within
    ``target_epsilon``: the RDP accountant's history is ``[(σ_m, 1, 1), (σ, q, steps)]`` (RDP
    whatever the recipe's accountant: the proxy's candidates are compared under one bound)."""
    from opacus.accountants import RDPAccountant

    def spent(sigma: float) -> float:
        accountant = RDPAccountant()
        accountant.history = [(release_noise, 1.0, 1), (sigma, sample_rate, steps)]
        return accountant.get_epsilon(delta=delta)

    low, high = 0.01, 100.0
    if spent(high) > target_epsilon:
        raise ValueError(f"epsilon {target_epsilon} is out of reach with a release of noise multiplier {release_noise}")
    while high - low > 1e-3 * low:
        middle = (low + high) / 2
        low, high = (middle, high) if spent(middle) > target_epsilon else (low, middle)
    return high


def private_feature_mean(x: torch.Tensor, parts: list[torch.Tensor], clip: float, release_noise: float, generator: torch.Generator) -> torch.Tensor:
    """``Σ_k (Σ_{i∈k} clip_R(x_i) + N(0, (σ_m R)² I)) / Σ_k n_k``: every client's clipped feature
    sum with its own Gaussian noise, summed by the server."""
    clipped = x * (clip / x.norm(dim=1, keepdim=True).clamp(min=1e-12)).clamp(max=1.0)
    total = sum(clipped[part].sum(0) + release_noise * clip * torch.randn(x.shape[1], generator=generator) for part in parts)
    return total / sum(len(part) for part in parts)


def proxy_run(features: dict, recipe: Recipe, client_prior: float = 0.0, class_weight: float = 0.0, center: str = "",
              mean_noise: float = 0.0, feature_clip: float = 5.0) -> dict:
    """One federated run of the head alone with ``recipe``'s settings; test scores of the served head
    (``client_prior``: λ, ``class_weight``: β of the module docstring; ``center``: "true" subtracts the
    exact training mean from every feature, "private" a mean released with ``mean_noise`` σ_m and
    ``feature_clip`` R)."""
    fed, privacy = recipe.federation, recipe.privacy
    x, y, x_test = features["x_train"], features["y_train"], features["x_test"]
    num_labels = int(max(y.max(), features["y_test"].max())) + 1
    parts = [torch.as_tensor(p) for p in partition(y.numpy(), fed.clients, recipe.partition)]
    sizes = torch.tensor([len(p) for p in parts], dtype=torch.float64)
    generator = torch.Generator().manual_seed(fed.seed)
    dp = privacy.level == "sample"
    if center:
        feature_mean = private_feature_mean(x, parts, feature_clip, mean_noise, generator) if center == "private" else x.mean(0)
        x, x_test = x - feature_mean, x_test - feature_mean
    clip = privacy.max_grad_norm * (privacy.head_clip_share or 1.0) if dp else fed.clip_grad_norm
    rounds = fed.resolved_rounds(len(y))
    steps = rounds * fed.local_steps
    rates = [min(1.0, fed.batch_size / len(part)) for part in parts]
    prior_epsilon = prior_epsilon_of(recipe)  # what the label prior's release costs (0: none released)
    if dp and center == "private":
        noises = [noise_with_release(privacy.target_epsilon - prior_epsilon, privacy.delta, rate, steps, mean_noise) for rate in rates]
    else:
        noises = [calibrate_noise(privacy.target_epsilon - prior_epsilon, privacy.delta, rate, steps, privacy.accountant) if dp else 0.0 for rate in rates]
    prior_noise = prior_epsilon or None  # ε of each client's noise on its counts (None: exact)
    client_counts = [noised_label_counts([y[part].numpy()], num_labels, prior_noise, generator) for part in parts]
    counts = torch.stack(client_counts).sum(0)
    log_prior = torch.tensor(prior_offset(counts.tolist(), 1.0, prior_noise, len(parts)))  # log π, as fedlora floors it
    client_log_priors = [torch.tensor(logit_offset(c, 1.0, noise_std(prior_noise, 1))) for c in client_counts]
    offsets = [fed.logit_adjustment * log_prior + client_prior * (log_pi_k - log_prior) for log_pi_k in client_log_priors]
    w = torch.zeros(num_labels, x.shape[1] + 1)
    class_weights = torch.exp(class_weight * (log_prior.min() - log_prior)).float() if class_weight else None
    server = ServerOptimizer.from_config(fed)
    for _ in range(rounds):
        update = torch.zeros_like(w)
        for part, size, rate, noise, client_offset in zip(parts, sizes, rates, noises, offsets):
            local = head_steps(w, x[part], y[part], fed.local_steps, fed.head_lr, rate, noise, clip, dp, generator, client_offset, class_weights)
            update += float(size / sizes.sum()) * (local - w)
        w = server.step({"head": w}, {"head": w + update})["head"] if server else w + update
    x_test = torch.cat([x_test, torch.ones(len(x_test), 1)], dim=1)
    served = x_test @ w.T - fed.posthoc_adjustment * log_prior
    return scores(served, features["y_test"], num_labels)


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
    print("| task | candidate | accuracy per seed (mean) | macro-F1 | balanced acc | ROC-AUC | largest predicted class per seed | flagged |")
    print("|---|---|---|---|---|---|---|---|")
    for task in args.tasks.split(","):
        features = cached_features(task, args.out)
        for name, overrides in configs:
            proxy_options = dict(o.removeprefix("proxy.").split("=", 1) for o in overrides if o.startswith("proxy."))
            recipe_overrides = [o for o in overrides if not o.startswith("proxy.")]
            results = []
            for seed in seeds:
                recipe = load_recipe("default", [*task_overrides(task, args.out), *recipe_overrides, f"federation.seed={seed}", f"partition.seed={seed}"])
                results.append(proxy_run(features, recipe, float(proxy_options.get("client_prior", 0.0)),
                                         float(proxy_options.get("class_weight", 0.0)), proxy_options.get("center", ""),
                                         float(proxy_options.get("mean_noise", 0.0)), float(proxy_options.get("feature_clip", 5.0))))
            mean = lambda key: sum(r[key] for r in results) / len(results)  # noqa: E731
            accuracies = " ".join(f"{r['accuracy']:.3f}" for r in results)
            shares = " ".join(f"{max(r['predicted_counts']) / sum(r['predicted_counts']):.1%}" for r in results)
            print(f"| {task} | {name} | {accuracies} ({mean('accuracy'):.3f}) | {mean('macro_f1'):.3f} "
                  f"| {mean('balanced_accuracy'):.3f} | {mean('auc'):.3f} | {shares} | {sum(collapsed(r) for r in results)}/{len(results)} |", flush=True)


if __name__ == "__main__":
    main()
