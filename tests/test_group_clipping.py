"""Split clipping (privacy.head_clip_share): each example's head gradient clipped to share·C and its
LoRA gradient to √(1−share²)·C, noise σ·C, checked against per-example reference gradients."""

from __future__ import annotations

import pytest
import torch

from fedlora_cli.federation.client import ClientNoise, LocalTrainer
from fedlora_cli.federation.experiment import build_model
from fedlora_cli.models import is_head_parameter
from fedlora_cli.privacy.group_clipping import GroupClippingDPOptimizer, split_clip_norms
from tests.test_privacy import outlier_dataset, per_example_gradients, tiny_recipe_obj, trainable_vector, varied_length_dataset


def head_mask(model) -> torch.Tensor:
    """True for the coordinates of trainable_vector(model) that belong to the classifier head."""
    return torch.cat([
        torch.full((p.numel(),), is_head_parameter(name)) for name, p in model.named_parameters() if p.requires_grad
    ])


def model_without_dropout(recipe):
    model, _ = build_model(recipe, 3)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.train()
    return model


def test_split_norms_keep_the_total_sensitivity():
    lora, head = split_clip_norms(2.0, 0.6)
    assert head == pytest.approx(1.2)
    assert lora == pytest.approx(1.6)
    assert (lora**2 + head**2) ** 0.5 == pytest.approx(2.0)


@pytest.mark.parametrize("microbatch_size", [1, 3, 100])
def test_a_split_clipped_dp_step_equals_the_group_clipping_equation(tiny_model_dir, microbatch_size):
    """One DP-SGD step (Poisson rate 1, noise 0) moves the trainable tensors by
    −lr·Σ_i (clip_{C_head}(g_i,head), clip_{C_lora}(g_i,lora))/n, g_i from one backward pass per example."""
    data = varied_length_dataset()
    recipe = tiny_recipe_obj(tiny_model_dir)
    recipe.federation.lr = 0.5
    recipe.federation.microbatch_size = microbatch_size
    model = model_without_dropout(recipe)
    grads = per_example_gradients(model, data)
    head = head_mask(model)
    assert head.any() and (~head).any()
    median_head, median_lora = float(grads[:, head].norm(dim=1).median()), float(grads[:, ~head].norm(dim=1).median())
    clip = (median_head**2 + median_lora**2) ** 0.5
    share = median_head / clip  # so that each group's bound is active for some examples
    lora_clip, head_clip = split_clip_norms(clip, share)
    expected = torch.zeros_like(grads)
    for part, bound in ((head, head_clip), (~head, lora_clip)):
        norms = grads[:, part].norm(dim=1)
        factors = (bound / (norms + 1e-6)).clamp(max=1.0)
        assert (factors < 1).any()  # the bound is active for some examples
        expected[:, part] = grads[:, part] * factors[:, None]
    before = trainable_vector(model)
    LocalTrainer(model, recipe.federation, private=True).train(data, 1, seed=0, noise=ClientNoise(1.0, 0.0, clip, head_clip_share=share))
    torch.testing.assert_close(trainable_vector(model) - before, -0.5 * expected.sum(0) / len(data), rtol=1e-4, atol=1e-7)


def test_one_outlier_moves_the_head_at_most_lr_share_c_and_everything_at_most_lr_c(tiny_model_dir):
    clip, lr, share = 1e-3, 1e4, 0.6
    recipe = tiny_recipe_obj(tiny_model_dir, max_grad_norm=clip)
    recipe.federation.lr = lr
    model = model_without_dropout(recipe)
    head = head_mask(model)
    before = trainable_vector(model)
    LocalTrainer(model, recipe.federation, private=True).train(
        outlier_dataset(tiny_model_dir), 1, seed=0, noise=ClientNoise(1.0, 0.0, clip, head_clip_share=share)
    )
    moved = trainable_vector(model) - before
    assert 0.99 * lr * clip * share <= moved[head].norm() <= lr * clip * share * (1 + 1e-5)  # clipped, tight
    assert moved.norm() <= lr * clip * (1 + 1e-5)


def test_the_noise_is_sigma_times_the_total_clip_norm_on_every_coordinate(tiny_model_dir):
    """The step with noise minus the same step without it has a per-coordinate std of lr·σ·C/n,
    for head and LoRA coordinates alike: the split does not change the noise."""
    data = varied_length_dataset()
    recipe = tiny_recipe_obj(tiny_model_dir)
    recipe.federation.lr = 1.0
    clip, sigma = 0.05, 2.0
    steps = {}
    for noise_multiplier in (0.0, sigma):
        model = model_without_dropout(recipe)
        before = trainable_vector(model)
        LocalTrainer(model, recipe.federation, private=True).train(
            data, 1, seed=5, noise=ClientNoise(1.0, noise_multiplier, clip, head_clip_share=0.9)
        )
        steps[noise_multiplier] = trainable_vector(model) - before
    noise = steps[sigma] - steps[0.0]
    head = head_mask(model)
    expected_std = sigma * clip / len(data)
    assert float(noise[~head].std()) == pytest.approx(expected_std, rel=0.05)
    assert float(noise[head].std()) == pytest.approx(expected_std, rel=0.25)  # fewer head coordinates


def test_without_a_head_the_share_is_ignored_and_the_clip_is_joint():
    """A model whose optimizer has no head group (no trained head) gets Opacus's plain DPOptimizer;
    the split follows the groups' ``part`` names, whatever their order."""
    from opacus.optimizers import DPOptimizer

    from fedlora_cli.federation.client import dp_optimizer

    layer = torch.nn.Linear(3, 2)
    noise = ClientNoise(1.0, 1.0, 1.0, head_clip_share=0.9)
    optimizer = dp_optimizer(torch.optim.SGD(layer.parameters(), lr=1.0), noise, 4, None)
    assert type(optimizer) is DPOptimizer and optimizer.max_grad_norm == 1.0
    unnamed = torch.optim.SGD([{"params": [layer.weight]}, {"params": [layer.bias]}], lr=1.0)
    assert type(dp_optimizer(unnamed, noise, 4, None)) is DPOptimizer
    head_first = torch.optim.SGD([{"params": [layer.weight], "part": "head"}, {"params": [layer.bias], "part": "lora"}], lr=1.0)
    optimizer = dp_optimizer(head_first, noise, 4, None)
    assert isinstance(optimizer, GroupClippingDPOptimizer) and optimizer.max_grad_norm == pytest.approx(1.0)
    lora, head = split_clip_norms(1.0, 0.9)
    assert optimizer.group_norms == pytest.approx([head, lora])


def test_the_recipe_share_reaches_every_client(tiny_model_dir):
    from fedlora_cli.privacy.policy import build_policy

    recipe = tiny_recipe_obj(tiny_model_dir, head_clip_share=0.7)
    policy = build_policy(recipe, [10, 20, 30, 40])
    assert all(policy.noise_for(k).head_clip_share == 0.7 for k in range(4))
