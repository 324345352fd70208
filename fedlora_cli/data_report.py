"""What a checked recipe's data and client split look like, and what would make a run hopeless.

The report (``fedlora recipes validate``): rows per split; every label's count and share in
train and test; the share of texts longer than ``data.max_length`` tokens (they are cut); per
client its examples and label mix and, under sample-level DP, its Poisson rate
``q_k = min(1, B/n_k)`` and calibrated noise multiplier ``σ_k`` (``B`` = federation.batch_size).

Warnings (also printed by ``fedlora train`` before round 1):

- **small client**, ``n_k < 2·B``: every step samples more than half of its data, so
  subsampling barely amplifies privacy (high ``σ_k``) and its local steps revisit the same few
  examples.
- **one-label client**, one label ``≥ 95%`` of its examples: its update pulls the shared model
  towards always predicting that label.
- **noise too high** (sample level), ``σ_k / B_k > 1/8`` with ``B_k = q_k·n_k`` the client's
  expected batch: a DP-SGD step adds noise of std ``σ_k·C/B_k`` per coordinate to a mean
  clipped gradient whose whole norm is at most ``C``, and at a fixed number of steps utility
  follows ``σ/B`` (Sander et al., "TAN without a burn", ICML 2023). ``1/8`` is ``σ = 4`` at
  batch 32, between a client reported not to learn in issue 16 (40 examples, ``σ = 5.9``, 0.18)
  and the smallest client of the default recipe (81 examples, ``σ = 3.06``, 0.096).
"""

from __future__ import annotations

import numpy as np

from fedlora_cli.privacy.limits import weak_epsilon_warning
from fedlora_cli.validate import CheckedRecipe

SMALL_CLIENT_BATCHES = 2
ONE_LABEL_SHARE = 0.95
MAX_SIGMA_OVER_BATCH = 1 / 8


def _label_counts(labels, names: list[str]) -> dict[str, int]:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names))
    return {name: int(count) for name, count in zip(names, counts)}


def _label_shares(labels, names: list[str]) -> dict[str, float]:
    return {name: count / len(labels) for name, count in _label_counts(labels, names).items()}


def client_rows(checked: CheckedRecipe) -> list[dict]:
    """Per client: examples, label shares and (sample-level DP) sampling rate and noise multiplier."""
    names = checked.train.label_names
    sample_level = checked.recipe.privacy.level == "sample"
    rows = []
    for k, indices in enumerate(checked.client_indices):
        budget = checked.privacy.clients[k] if sample_level else None
        rows.append(
            {
                "client": k,
                "examples": len(indices),
                "label_shares": _label_shares(np.asarray(checked.train.labels)[indices], names),
                "sample_rate": budget.sample_rate if budget else None,
                "noise_multiplier": budget.noise_multiplier if budget else None,
            }
        )
    return rows


def client_warnings(checked: CheckedRecipe, rows: list[dict] | None = None) -> list[dict]:
    """``[{kind, client, message}]`` for small, one-label and too-noisy clients (module docstring),
    after one (client None) for a target epsilon too large to be a guarantee."""
    batch_size = checked.recipe.federation.batch_size
    warnings = []
    privacy = checked.recipe.privacy
    weak = privacy.level != "none" and privacy.target_epsilon is not None and weak_epsilon_warning(
        privacy.target_epsilon, "privacy.target_epsilon"
    )
    if weak:
        warnings.append({"kind": "weak_epsilon", "client": None, "message": weak})
    for row in rows if rows is not None else client_rows(checked):
        k, size = row["client"], row["examples"]
        if size < SMALL_CLIENT_BATCHES * batch_size:
            warnings.append(
                {
                    "kind": "small_client",
                    "client": k,
                    "message": f"client {k} has {size} examples, fewer than {SMALL_CLIENT_BATCHES}x federation.batch_size "
                    f"({batch_size}): give it more data (fewer federation.clients, a higher partition.min_samples) or lower federation.batch_size",
                }
            )
        label, share = max(row["label_shares"].items(), key=lambda item: item[1])
        if share >= ONE_LABEL_SHARE and len(checked.train.label_names) > 1:  # free-form causal_lm data has one "label"
            warnings.append(
                {
                    "kind": "one_label_client",
                    "client": k,
                    "message": f"client {k} is {share:.0%} '{label}': it pulls the model towards that label "
                    "(raise partition.alpha or use partition.method=iid if your clients are not really like this)",
                }
            )
        if row["noise_multiplier"] is not None:
            expected_batch = row["sample_rate"] * size
            sigma_over_batch = row["noise_multiplier"] / expected_batch
            if sigma_over_batch > MAX_SIGMA_OVER_BATCH:
                warnings.append(
                    {
                        "kind": "noise_too_high",
                        "client": k,
                        "message": f"client {k}: noise multiplier {row['noise_multiplier']:.3g} on an expected batch of "
                        f"{expected_batch:.3g} (sigma/batch {sigma_over_batch:.3g} > {MAX_SIGMA_OVER_BATCH:.3g}) is too noisy to "
                        "learn from; give it more data, raise privacy.target_epsilon or lower federation.rounds/local_steps",
                    }
                )
    return warnings


def truncated_share(texts: list[str], pairs: list[str] | None, tokenizer, max_length: int) -> float:
    """The share of examples with more than ``max_length`` tokens (special tokens included)."""
    encoded = tokenizer(texts, pairs, truncation=False, padding=False, verbose=False)
    return sum(1 for ids in encoded["input_ids"] if len(ids) > max_length) / len(texts)


def _truncated(recipe, dataset, tokenizer) -> float:
    """:func:`truncated_share` of a split; for causal_lm, of its prompt + response sequences."""
    if recipe.task == "causal_lm":
        from fedlora_cli.data.sft import tokenize_sft

        return tokenize_sft(dataset, tokenizer, recipe.data.max_length).truncated / len(dataset)
    return truncated_share(dataset.texts, dataset.text_pairs, tokenizer, recipe.data.max_length)


def data_report(checked: CheckedRecipe, tokenizer) -> dict:
    """Splits, labels, truncation, clients, privacy and warnings of a checked recipe (JSON-ready)."""
    train, test, recipe = checked.train, checked.test, checked.recipe
    names = train.label_names
    train_counts, test_counts = _label_counts(train.labels, names), _label_counts(test.labels, names)
    max_length = recipe.data.max_length
    clients = client_rows(checked)
    report = {
        "rows": {"train": len(train), "test": len(test)},
        "labels": [
            {
                "label": name,
                "train": train_counts[name],
                "train_share": train_counts[name] / len(train),
                "test": test_counts[name],
                "test_share": test_counts[name] / len(test),
            }
            for name in names
        ],
        "max_length": max_length,
        "truncated_share": {"train": _truncated(recipe, train, tokenizer), "test": _truncated(recipe, test, tokenizer)},
        "privacy_level": recipe.privacy.level,
        "rounds": recipe.federation.rounds,
        "local_steps": recipe.federation.local_steps,
        "clients": clients,
        "warnings": client_warnings(checked, clients),
    }
    if recipe.privacy.level == "client":
        report["client_sample_rate"] = checked.privacy.sample_rate
        report["noise_multiplier"] = checked.privacy.noise_multiplier
    return report
