"""Saying when a run did not learn: macro-F1, balanced accuracy, majority baseline, predicted
histogram, and the collapse warning (one class for ≥95% of the test set, or balanced accuracy
within a point of chance)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.tasks import classification
from fedlora_cli.federation.evaluate import collapsed, majority_baseline, roc_auc, scores
from fedlora_cli.federation.export import collapse_warning


def one_hot_logits(predictions: list[int], num_labels: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(predictions), num_labels).float()


def test_scores_by_hand():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    result = scores(one_hot_logits([0, 0, 1, 1, 1, 1], 3), labels, 3)
    assert result["accuracy"] == pytest.approx(4 / 6)
    # F1: class 0 = 2·2/(2·2+0+1) = 0.8; class 1 = 2·2/(2·2+2+0) = 2/3; class 2 = 0
    assert result["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    # recalls 2/3, 1, 0
    assert result["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert result["predicted_counts"] == [2, 4, 0] and result["classes_in_test"] == 3


def test_majority_baseline_uses_the_training_majority():
    baseline = majority_baseline([1, 1, 1, 0], torch.tensor([0, 0, 1, 1, 1]), 2)
    assert baseline["majority_class"] == 1
    assert baseline["majority_accuracy"] == pytest.approx(0.6)
    # always answering 1: F1(1) = 2·3/(2·3+2) = 0.75, F1(0) = 0
    assert baseline["majority_macro_f1"] == pytest.approx(0.75 / 2)


@pytest.mark.parametrize(
    "predictions, expected",
    [
        ([0] * 19 + [1], True),  # 95% one class
        ([0] * 10 + [1] * 10, False),
    ],
)
def test_collapse_by_share_of_one_class(predictions, expected):
    labels = torch.tensor([0] * 10 + [1] * 10)
    assert collapsed(scores(one_hot_logits(predictions, 2), labels, 2)) is expected


def test_collapse_when_answers_do_not_depend_on_the_text():
    labels = torch.tensor([0] * 10 + [1] * 10)
    predictions = [0] * 5 + [1] * 5 + [0] * 5 + [1] * 5  # half of each class either way: balanced accuracy 0.5
    result = scores(one_hot_logits(predictions, 2), labels, 2)
    assert max(result["predicted_counts"]) == 10  # the share rule alone would pass it
    assert collapsed(result)


def test_collapse_when_rare_classes_are_never_found():
    labels = torch.tensor([0] * 17 + [1] * 3)  # majority 0.85
    predictions = [0] * 15 + [1] * 2 + [0] * 3  # 90% one class, recalls 15/17 and 0: balanced accuracy 0.44
    assert collapsed(scores(one_hot_logits(predictions, 2), labels, 2))


def test_chance_counts_only_the_classes_the_test_set_has():
    labels = torch.tensor([0] * 10 + [1] * 10)  # a three-label task whose test split lacks label 2
    predictions = [0] * 5 + [1] * 5 + [0] * 5 + [1] * 5  # text-blind: balanced accuracy 0.5, chance 1/2
    result = scores(one_hot_logits(predictions, 3), labels, 3)
    assert result["classes_in_test"] == 2 and result["balanced_accuracy"] == pytest.approx(0.5)
    assert collapsed(result)  # with chance taken as 1/3 it would pass


def test_trading_majority_answers_for_rare_ones_is_not_collapse():
    labels = torch.tensor([0] * 17 + [1] * 3)  # majority 0.85
    predictions = [0] * 15 + [1] * 2 + [1] * 2 + [0]  # accuracy 0.85, recalls 15/17 and 2/3
    result = scores(one_hot_logits(predictions, 2), labels, 2)
    assert result["accuracy"] == pytest.approx(0.85) and result["balanced_accuracy"] > 0.75
    assert not collapsed(result)


def pairwise_auc(score: list[float], positive: list[bool]) -> float:
    """AUC by its definition: the share of (member, non-member) pairs the member wins, ties half."""
    pairs = [(s, t) for s, p in zip(score, positive) if p for t, q in zip(score, positive) if not q]
    return sum(1.0 if s > t else 0.5 if s == t else 0.0 for s, t in pairs) / len(pairs)


def test_roc_auc_against_counting_pairs_with_ties():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randint(-2, 3, (40, 3), generator=generator).float()  # few values: many ties
    labels = torch.randint(0, 3, (40,), generator=generator)
    probabilities = torch.softmax(logits.double(), dim=-1).round(decimals=12)  # rows equal up to a shift tie
    expected = [pairwise_auc(probabilities[:, c].tolist(), (labels == c).tolist()) for c in range(3)]
    assert roc_auc(logits, labels) == pytest.approx(sum(expected) / 3)
    binary = logits[:, :2]
    assert roc_auc(binary, labels % 2) == pytest.approx(pairwise_auc((binary[:, 1] - binary[:, 0]).tolist(), (labels % 2 == 1).tolist()))


def test_roc_auc_sees_ranking_where_the_answers_sit_on_one_class():
    labels = torch.tensor([0] * 8 + [1] * 2)
    # every answer is class 0, but the two class-1 examples get the highest class-1 scores
    logits = torch.stack([torch.full((10,), 3.0), torch.tensor([0.0] * 8 + [1.0, 2.0])], dim=1)
    result = scores(logits, labels, 2)
    assert collapsed(result) and result["auc"] == pytest.approx(1.0)
    assert scores(torch.zeros(10, 2), labels, 2)["auc"] == pytest.approx(0.5)  # text-blind
    assert roc_auc(logits, torch.zeros(10, dtype=torch.long)) is None  # one class: undefined
    confident = torch.stack([torch.zeros(10), 1000.0 + torch.arange(10.0)], dim=1)  # softmax saturates at 1
    assert roc_auc(confident, labels) == pytest.approx(1.0)


def test_a_collapsed_run_warns_and_says_so_in_its_summary(tiny_recipe, tmp_path, monkeypatch):
    def always_first_class(model, data, num_labels, batch_size=64):
        return scores(one_hot_logits([0] * len(data), num_labels), data.labels, num_labels)

    monkeypatch.setattr(classification, "evaluate", always_first_class)  # what the engine scores rounds with
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(tiny_recipe), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["collapsed"] is True
    assert summary["predicted_counts"][0] == sum(summary["predicted_counts"])
    assert "did not learn" in result.stderr
    warning = " ".join(result.stderr.split())
    chance = 1 / summary["classes_in_test"]
    assert f"balanced accuracy {summary['final_balanced_accuracy']:.4f} ({chance:.4f} by chance)" in warning
    assert summary["final_auc"] == pytest.approx(0.5) and "ROC-AUC 0.5000 (0.5 by chance)" in warning
    assert "federation.logit_adjustment=0.75 or 1" in warning and "federation.posthoc_adjustment=0.5" in warning
    assert "privacy.target_epsilon" in warning
    rounds = [json.loads(line) for line in result.stdout.splitlines() if '"round"' in line]
    assert all("eval_macro_f1" in row for row in rounds)

    import fedlora_cli.cli.eval as eval_cli

    monkeypatch.setattr(eval_cli, "wants_json", lambda flag: flag)  # the human output, as in a terminal
    shown = CliRunner().invoke(app, ["eval", str(out)])
    assert shown.exit_code == 0, shown.output
    assert "COLLAPSED: the model did not learn the task" in " ".join(shown.stdout.split())
    assert "ROC-AUC" in shown.stdout


def test_a_run_that_learned_is_not_flagged(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["train", str(tiny_recipe), "privacy.level=none", "federation.rounds=6", "federation.local_steps=10", "federation.lr=1.0", "federation.lr_schedule=constant", "federation.clip_grad_norm=null", "model.pooling=mean", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_accuracy"] > summary["majority_accuracy"] + 0.2, summary
    assert summary["collapsed"] is False
    assert "did not learn" not in result.stderr


def test_the_warning_offers_a_larger_epsilon_only_to_private_runs():
    summary = {"predicted_counts": [20, 0], "final_accuracy": 0.85, "majority_accuracy": 0.85,
               "final_macro_f1": 0.46, "final_balanced_accuracy": 0.5, "classes_in_test": 2}
    private = collapse_warning({**summary, "privacy_level": "sample"})
    client_level = collapse_warning({**summary, "privacy_level": "client"})
    not_private = collapse_warning({**summary, "privacy_level": "none"})
    assert "privacy.target_epsilon" in private and "noise multiplier" in private
    assert "privacy.target_epsilon" in client_level and "noise multiplier" not in client_level  # no per-client σ
    assert "privacy.target_epsilon" not in not_private and "noise multiplier" not in not_private
    assert "federation.posthoc_adjustment" in not_private and "balanced accuracy 0.5000" in not_private
    assert "posthoc_adjustment" not in client_level and "logit_adjustment" not in client_level  # it has no label prior
    assert "did not learn the task" in private  # balanced accuracy at chance: the answers ignore the text


def test_the_warning_says_when_a_flagged_model_did_learn_something():
    # round 9's rt_imb seed 1: 98.5% negative answers, balanced accuracy 0.534, above the majority accuracy
    summary = {"predicted_counts": [985, 15], "final_accuracy": 0.857, "majority_accuracy": 0.850,
               "final_macro_f1": 0.528, "final_balanced_accuracy": 0.534, "classes_in_test": 2, "privacy_level": "sample"}
    warning = collapse_warning(summary)
    assert "did not learn" not in warning
    assert "gives nearly every answer to one class and barely learned the others" in warning
    assert "one class for 98% of the test set" in warning and warning.count("98%") == 1  # said once


def test_the_final_line_gives_the_roc_auc_when_there_is_one():
    from fedlora_cli.report.console import final_scores_line

    summary = {"final_accuracy": 0.857, "final_macro_f1": 0.528, "majority_accuracy": 0.850}
    assert "ROC-AUC 0.7770;" in final_scores_line({**summary, "final_auc": 0.777})
    assert "ROC-AUC" not in final_scores_line({**summary, "final_auc": None})
