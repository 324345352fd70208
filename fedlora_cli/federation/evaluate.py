"""Scoring a model on a tokenized dataset: accuracy, macro-F1 and mean cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedlora_cli.data.batching import TokenizedDataset


@torch.no_grad()
def predict_logits(model: torch.nn.Module, data: TokenizedDataset, batch_size: int = 64) -> torch.Tensor:
    """Logits for every example, in dataset order (batched by length for speed)."""
    was_training = model.training
    model.eval()
    logits = None
    for indices in data.length_sorted_batches(batch_size):
        batch = data.batch(indices)
        batch.pop("labels")
        out = model(**batch).logits.float()
        if logits is None:
            logits = torch.empty((len(data), out.shape[-1]))
        logits[indices] = out
    model.train(was_training)
    return logits


def scores(logits: torch.Tensor, labels: torch.Tensor, num_labels: int) -> dict[str, float]:
    predictions = logits.argmax(dim=-1)
    f1s = []
    for cls in range(num_labels):
        tp = int(((predictions == cls) & (labels == cls)).sum())
        fp = int(((predictions == cls) & (labels != cls)).sum())
        fn = int(((predictions != cls) & (labels == cls)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {
        "accuracy": float((predictions == labels).float().mean()),
        "macro_f1": sum(f1s) / num_labels,
        "loss": float(F.cross_entropy(logits, labels)),
    }


def evaluate(model: torch.nn.Module, data: TokenizedDataset, num_labels: int, batch_size: int = 64) -> dict[str, float]:
    return scores(predict_logits(model, data, batch_size), data.labels, num_labels)
