"""The honest reference row: a non-private linear probe on the frozen model's features.

For a recipe's data and model, the features the classifier head reads (``model.pooling``: the
masked token mean or the CLS pooler) are computed once with the frozen encoder; a multinomial
logistic regression is fitted on all training rows (L-BFGS, L2 strength picked on a seeded 10%
validation split from {1e-4, 1e-3, 1e-2}, then refitted on everything) and scored on the test
split. Also prints the majority-class baseline (the training set's most frequent label, scored
on the test split). No DP, no federation: if fine-tuning does not beat this, it did not help.

    python benchmarks/linear_probe.py default
    python benchmarks/linear_probe.py recipes/sst2.yaml model.pooling=cls --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedlora_cli.data.batching import TokenizedDataset, tokenize  # noqa: E402
from fedlora_cli.data.sources import load_datasets  # noqa: E402
from fedlora_cli.federation.evaluate import collapsed, majority_baseline, scores  # noqa: E402
from fedlora_cli.models import load_base_model, load_tokenizer  # noqa: E402
from fedlora_cli.recipe import Recipe, load_recipe  # noqa: E402

L2_CHOICES = (1e-4, 1e-3, 1e-2)


@torch.no_grad()
def head_features(model: torch.nn.Module, data: TokenizedDataset, batch_size: int = 128) -> torch.Tensor:
    """What the classifier head reads (the encoder's pooled output), for every example in order."""
    model.eval()
    features = None
    for indices in data.length_sorted_batches(batch_size):
        batch = data.batch(indices)
        batch.pop("labels")
        pooled = model.base_model(**batch).pooler_output.float()
        if features is None:
            features = torch.empty((len(data), pooled.shape[-1]))
        features[indices] = pooled
    return features


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_labels: int, l2: float) -> torch.nn.Linear:
    """Multinomial logistic regression, ``mean CE + l2·‖W‖²``, by full-batch L-BFGS on standardized x."""
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], num_labels)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(head(x), y) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return head


def frozen_features(recipe: Recipe):
    """A recipe's train and test sets and what the head reads for each row (frozen model):
    ``(train, test, x_train, x_test)``."""
    train, test = load_datasets(recipe.data)
    tokenizer = load_tokenizer(recipe.model.name)
    model = load_base_model(recipe.model.name, len(train.label_names), recipe.federation.seed, recipe.model.pooling)
    x_train = head_features(model, tokenize(train, tokenizer, recipe.data.max_length))
    x_test = head_features(model, tokenize(test, tokenizer, recipe.data.max_length))
    return train, test, x_train, x_test


def probe(recipe: Recipe) -> dict:
    start = time.perf_counter()
    train, test, x_train, x_test = frozen_features(recipe)
    num_labels = len(train.label_names)
    y_train, y_test = torch.tensor(train.labels), torch.tensor(test.labels)
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std

    order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(0))
    cut = max(1, len(order) // 10)
    val, fit = order[:cut], order[cut:]
    val_acc = {}
    for l2 in L2_CHOICES:
        head = fit_logistic(x_train[fit], y_train[fit], num_labels, l2)
        with torch.no_grad():
            val_acc[l2] = float((head(x_train[val]).argmax(-1) == y_train[val]).float().mean())
    best = max(L2_CHOICES, key=lambda l2: (val_acc[l2], l2))
    head = fit_logistic(x_train, y_train, num_labels, best)
    with torch.no_grad():
        result = scores(head(x_test), y_test, num_labels)
    return {
        "task_train_rows": len(train),
        "task_test_rows": len(test),
        "pooling": recipe.model.pooling,
        "l2": best,
        "probe_accuracy": result["accuracy"],
        "probe_macro_f1": result["macro_f1"],
        "probe_balanced_accuracy": result["balanced_accuracy"],
        "probe_auc": result["auc"],
        "probe_predicted_counts": result["predicted_counts"],
        "probe_collapsed": collapsed(result),  # the rule a run is flagged by, applied to the reference
        **majority_baseline(train.labels, y_test, num_labels),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="recipe file or builtin name")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = probe(load_recipe(args.recipe, args.overrides))
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
