"""benchmarks/threshold_headroom.py: thresholds read off a hand-made set of margins."""

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
