"""benchmarks/threshold_headroom.py: thresholds read off a hand-made set of margins."""

import json

import pytest
import torch

from conftest import load_benchmark


def test_headroom_reads_accuracy_and_majority_share_at_each_threshold():
    headroom = load_benchmark("threshold_headroom").headroom
    # class 0 is the majority; margins (logit_1 − logit_0) sorted, labels beside them
    margins = torch.tensor([-2.0, -1.5, -1.0, -0.5, -0.2, 0.4, 1.0, -0.3, -2.5, -1.2])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 0, 0, 0])
    logits = torch.stack([torch.zeros(10), margins], dim=1)

    found = headroom(logits, labels, majority=0, prior_share=0.7)

    assert found["served"]["accuracy"] == pytest.approx(0.9)  # misses the 1 at −0.2
    assert found["served"]["majority_share"] == pytest.approx(0.8)
    assert found["best"]["accuracy"] == pytest.approx(1.0)  # any offset in (0.2, 0.3) separates them
    assert 0.2 < found["best"]["offset"] < 0.3
    assert found["best_under_line"]["majority_share"] < 0.95
    assert found["prior_matched"]["majority_share"] == pytest.approx(0.7)
    assert found["prior_matched"]["accuracy"] == pytest.approx(1.0)


def test_a_predictions_file_reads_as_the_same_logits(tmp_path):
    tool = load_benchmark("threshold_headroom")
    margins, labels = [-2.0, -0.2, 0.4, -0.3, 1.0], ["neg", "pos", "pos", "neg", "neg"]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"row": i, "label": y, "logits": {"neg": 0.5, "pos": 0.5 + m}}) + "\n"
                            for i, (m, y) in enumerate(zip(margins, labels))), encoding="utf-8")
    expected = tool.headroom(torch.tensor([[0.5, 0.5 + m] for m in margins]), torch.tensor([0, 1, 1, 0, 0]), 0, 0.6)
    assert tool.from_predictions(path) == expected
