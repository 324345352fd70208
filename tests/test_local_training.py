"""Client steps without sample-level DP: the batch gradient is clipped to
``federation.clip_grad_norm`` (as HF Trainer's max_grad_norm), and the head has its own lr."""

from __future__ import annotations

import torch

from fedlora_cli.federation.client import LocalTrainer, make_optimizer
from fedlora_cli.federation.experiment import build_model
from fedlora_cli.models import is_head_parameter
from tests.test_privacy import outlier_dataset, tiny_recipe_obj


def trainable(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone().double() for name, p in model.named_parameters() if p.requires_grad}


def test_a_non_dp_step_moves_the_adapter_by_at_most_lr_times_the_clip_norm(tiny_model_dir):
    recipe = tiny_recipe_obj(tiny_model_dir)
    recipe.federation.lr, recipe.federation.clip_grad_norm = 100.0, 0.01
    model, _ = build_model(recipe, 3)
    before = trainable(model)
    LocalTrainer(model, recipe.federation, private=False).train(outlier_dataset(tiny_model_dir), 1, seed=0, noise=None)
    after = trainable(model)
    moved = torch.cat([(after[k] - before[k]).flatten() for k in before]).norm()
    assert 0.99 * 100 * 0.01 <= moved <= 100 * 0.01 * (1 + 1e-5)  # clipped, and the clip was active


def test_the_head_gets_its_own_learning_rate(tiny_model_dir):
    recipe = tiny_recipe_obj(tiny_model_dir)
    recipe.federation.lr, recipe.federation.head_lr = 0.01, 0.3
    model, _ = build_model(recipe, 3)
    optimizer = make_optimizer(list(model.named_parameters()), recipe.federation)
    rates = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            rates[id(p)] = group["lr"]
    for name, p in model.named_parameters():
        assert rates[id(p)] == (0.3 if is_head_parameter(name) else 0.01), name
