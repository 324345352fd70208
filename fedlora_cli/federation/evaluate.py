"""Scoring a model on a tokenized dataset: accuracy, macro-F1, balanced accuracy, ROC-AUC, mean
cross-entropy, the predicted-class histogram, and whether the model collapsed to one class."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedlora_cli.data.batching import TokenizedDataset
from fedlora_cli.device import model_device


@torch.no_grad()
def predict_logits(model: torch.nn.Module, data: TokenizedDataset, batch_size: int = 64) -> torch.Tensor:
    """Logits for every example, in dataset order (batched by length for speed), on the CPU;
    the model runs on its own device."""
    was_training = model.training
    model.eval()
    logits = None
    for indices in data.length_sorted_batches(batch_size):
        batch = data.batch(indices, model_device(model))
        batch.pop("labels")
        out = model(**batch).logits.float().cpu()
        if logits is None:
            logits = torch.empty((len(data), out.shape[-1]))
        logits[indices] = out
    model.train(was_training)
    return logits


#: A model that gives one class to at least this share of the test set has collapsed.
COLLAPSE_SHARE = 0.95
#: ... and so has one whose balanced accuracy (mean per-class recall) is within this much of
#: chance, 1/K: what any model whose answers do not depend on the text scores, whatever its mix
#: of answers. (Accuracy against the majority class would flag, on an 85/15 set, models that
#: trade majority answers for minority ones, the non-private linear probe among them.)
COLLAPSE_MARGIN = 0.01


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``values`` in ascending order, tied values sharing the mean of their ranks."""
    _, inverse, counts = torch.unique(values, sorted=True, return_inverse=True, return_counts=True)
    last_rank = torch.cumsum(counts, 0).double()
    return (last_rank - (counts.double() - 1) / 2)[inverse]


def roc_auc(logits: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Macro one-vs-rest ROC-AUC of the softmax scores: for each class ``c`` the test holds with both
    members and non-members, the probability that a random member scores higher on ``c`` than a
    random non-member (ties count one half; Mann and Whitney 1947):

        AUC_c = (Σ_{i: y_i = c} rank_i − n_c(n_c + 1)/2) / (n_c · (n − n_c)),

    averaged over those classes (for two classes both give the same number). It does not depend on
    where the decision threshold lies: a model that answers one class almost always but still ranks
    the examples scores well above 0.5, a text-blind one 0.5. None when the labels hold one class.
    Ranked by the log-odds ``−log Σ_{j≠c} exp(f_j − f_c)``: the softmax's order, without its
    saturation at 0 and 1 (and logits equal up to a shift tie exactly)."""
    logits = logits.double()
    aucs = []
    for cls in range(logits.shape[-1]):
        members = labels == cls
        n_members, n_others = int(members.sum()), int((~members).sum())
        if not (n_members and n_others):
            continue
        others = logits - logits[:, cls : cls + 1]
        others[:, cls] = float("-inf")
        log_odds = -torch.logsumexp(others, dim=-1)
        rank_sum = float(average_ranks(log_odds)[members].sum())
        aucs.append((rank_sum - n_members * (n_members + 1) / 2) / (n_members * n_others))
    return sum(aucs) / len(aucs) if aucs else None


def scores(logits: torch.Tensor, labels: torch.Tensor, num_labels: int) -> dict:
    """Accuracy, macro-F1 (unweighted mean of per-class F1), balanced accuracy (mean per-class
    recall over the ``classes_in_test`` classes the labels hold), ROC-AUC (:func:`roc_auc`), mean
    cross-entropy and the predicted-class histogram."""
    predictions = logits.argmax(dim=-1)
    f1s, recalls = [], []
    for cls in range(num_labels):
        tp = int(((predictions == cls) & (labels == cls)).sum())
        fp = int(((predictions == cls) & (labels != cls)).sum())
        fn = int(((predictions != cls) & (labels == cls)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        if tp + fn:
            recalls.append(tp / (tp + fn))
    return {
        "accuracy": float((predictions == labels).float().mean()),
        "macro_f1": sum(f1s) / num_labels,
        "balanced_accuracy": sum(recalls) / len(recalls) if recalls else 0.0,
        "classes_in_test": len(recalls),
        "auc": roc_auc(logits, labels),
        "loss": float(F.cross_entropy(logits, labels)),
        "predicted_counts": torch.bincount(predictions, minlength=num_labels).tolist(),
    }


def majority_baseline(train_labels, test_labels, num_labels: int) -> dict:
    """Always answering the training set's most frequent class: its test accuracy and macro-F1."""
    majority = int(torch.bincount(torch.as_tensor(train_labels), minlength=num_labels).argmax())
    share = float((torch.as_tensor(test_labels) == majority).float().mean())
    # F1 of the majority class is 2·share/(1+share); every other class scores 0
    return {"majority_class": majority, "majority_accuracy": share, "majority_macro_f1": 2 * share / (1 + share) / num_labels}


def chance(classes_in_test: int) -> float:
    """The balanced accuracy of any answer that ignores the text: 1/K over the K classes the test set has."""
    return 1 / classes_in_test


def text_blind(balanced_accuracy: float, classes_in_test: int) -> bool:
    """Balanced accuracy within a point of :func:`chance`: the model learned nothing a text-blind
    answer does not give."""
    return balanced_accuracy <= chance(classes_in_test) + COLLAPSE_MARGIN


def collapsed(result: dict) -> bool:
    """True when the model (``scores`` of it) answers one class for ≥95% of the test set, or is
    ``text_blind``."""
    counts = result["predicted_counts"]
    return max(counts) >= COLLAPSE_SHARE * sum(counts) or text_blind(result["balanced_accuracy"], result["classes_in_test"])


def collapse_verdict(balanced_accuracy: float, classes_in_test: int) -> str:
    """What a collapsed model did, in words: it ignored the text, or it answered one class almost
    always (round 9: such runs can be above chance and even above the majority accuracy). The
    share itself is printed beside it, with the predicted counts."""
    if text_blind(balanced_accuracy, classes_in_test):
        return "did not learn the task"
    return "gives nearly every answer to one class and barely learned the others"


def baseline_and_collapse(result: dict, train_labels, test_labels, num_labels: int) -> dict:
    """The majority-class baseline of a test split beside ``result`` on it, and whether ``result`` collapsed."""
    return {**majority_baseline(train_labels, test_labels, num_labels), "collapsed": collapsed(result)}


def evaluate(model: torch.nn.Module, data: TokenizedDataset, num_labels: int, batch_size: int = 64) -> dict[str, float]:
    return scores(predict_logits(model, data, batch_size), data.labels, num_labels)
