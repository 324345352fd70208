"""benchmarks/head_proxy.py's DP step, against per-example gradients clipped and weighted by hand."""

import torch
import torch.nn.functional as F

from conftest import load_benchmark


def test_head_step_clips_each_example_then_weights_it_by_class():
    proxy = load_benchmark("head_proxy")
    generator = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(6, 4, generator=generator)
    y = torch.tensor([0, 0, 0, 0, 0, 1])
    w = 0.1 * torch.randn(2, 5, generator=generator)
    clip, class_weights = 0.5, torch.tensor([0.2, 1.0])

    stepped = proxy.head_steps(w, x, y, steps=1, lr=1.0, sample_rate=1.0, noise=0.0, clip=clip, dp=True,
                               generator=generator, offset=torch.zeros(2), class_weights=class_weights)

    expected = torch.zeros_like(w)
    for xi, yi in zip(x, y):
        features = torch.cat([xi, torch.ones(1)])
        gradient = torch.outer(F.softmax(w @ features, dim=-1) - F.one_hot(yi, 2).float(), features)
        clipped = gradient * min(1.0, clip / float(gradient.norm()))
        assert float((class_weights[yi] * clipped).norm()) <= clip + 1e-6  # sensitivity stays the clip
        expected += class_weights[yi] * clipped
    torch.testing.assert_close(stepped, w - expected / len(x))
