"""Server optimizers keep every exact method exact, and cost no privacy.

Reference: with server momentum, an exact method must serve what FedAvgM does in weight space,
``M ← β·M + (Σ p_k W_k − W)``, ``W ← W + η·M`` (W: a layer's effective weight, read off the
real peft forward pass; W_k: client k's). FedSVD's momentum lives in B's coordinates and is
carried through each re-factorization; the reference knows nothing of that.
"""

from __future__ import annotations

import json

import pytest
import torch

from fedlora_cli.errors import InputError
from fedlora_cli.federation.experiment import build_model
from fedlora_cli.methods.server_optimizer import ServerOptimizer
from fedlora_cli.models import adapter_state, is_head_parameter, load_adapter_state
from fedlora_cli.recipe import Recipe, parse_recipe
from tests.test_methods import WEIGHTS, client_round, effective_weight, rel_err, weighted

LR, BETA = 0.7, 0.8


def make(tiny_model_dir: str, method: str, optimizer: str, **method_options):
    recipe = Recipe.model_validate(
        {
            "model": {"name": tiny_model_dir, "rank": 4, "alpha": 8, "target_modules": ["query", "value", "intermediate.dense"]},
            "method": {"name": method, **method_options},
            "federation": {"server_optimizer": optimizer, "server_lr": LR, "server_momentum": BETA},
            "privacy": {"level": "none"},
        }
    )
    model, m = build_model(recipe, num_labels=3)
    model.eval()
    return model, m


@pytest.mark.parametrize("optimizer, beta", [("momentum", BETA), ("sgd", 0.0)])
@pytest.mark.parametrize("name", ["ffa", "fedsvd", "fedsb"])
def test_server_momentum_serves_weight_space_fedavgm(tiny_model_dir, name, optimizer, beta):
    """FedAvgM, and FedAvg with a server learning rate (``sgd``: the same with β = 0)."""
    model, method = make(tiny_model_dir, name, optimizer)
    generator = torch.Generator().manual_seed(3)
    state = adapter_state(model)
    served = {m.name: effective_weight(m) for m in method.modules}
    momentum = {m.name: torch.zeros_like(w) for m, w in zip(method.modules, served.values())}
    head_momentum: dict[str, torch.Tensor] = {}
    for round_index in range(3):
        uploads, effective = client_round(model, method, state, generator)
        previous = state
        state = method.aggregate(state, uploads, WEIGHTS, round_index)
        load_adapter_state(model, state)
        for module in method.modules:
            mean = weighted([e[module.name] for e in effective])
            momentum[module.name] = beta * momentum[module.name] + (mean - served[module.name])
            served[module.name] = served[module.name] + LR * momentum[module.name]
            assert rel_err(effective_weight(module), served[module.name]) < 1e-5, (name, round_index, module.name)
        for key in [k for k in uploads[0] if is_head_parameter(k)]:
            delta = weighted([u[key].double() for u in uploads]) - previous[key].double()
            head_momentum[key] = beta * head_momentum.get(key, torch.zeros_like(delta)) + delta
            expected = previous[key].double() + LR * head_momentum[key]
            torch.testing.assert_close(state[key].double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["adam", "yogi", "adagrad"])
def test_adaptive_optimizers_follow_reddi_et_al(tiny_model_dir, name):
    """FFA with FedAdam/FedYogi/FedAdagrad: B ← B + η·m/(√v + τ), by hand, and W = W0 + s·B·A."""
    model, method = make(tiny_model_dir, "ffa", name)
    generator = torch.Generator().manual_seed(4)
    state = adapter_state(model)
    m: dict[str, torch.Tensor] = {}
    v: dict[str, torch.Tensor] = {}
    beta2, tau = 0.99, 1e-3
    for round_index in range(3):
        uploads, _ = client_round(model, method, state, generator)
        previous = state
        state = method.aggregate(state, uploads, WEIGHTS, round_index)
        for key in uploads[0]:
            delta = weighted([u[key].double() for u in uploads]) - previous[key].double()
            m[key] = BETA * m.get(key, torch.zeros_like(delta)) + (1 - BETA) * delta
            v0 = v.get(key, torch.zeros_like(delta))
            v[key] = {
                "adam": beta2 * v0 + (1 - beta2) * delta**2,
                "adagrad": v0 + delta**2,
                "yogi": v0 - (1 - beta2) * delta**2 * torch.sign(v0 - delta**2),
            }[name]
            expected = previous[key].double() + LR * m[key] / (v[key].sqrt() + tau)
            torch.testing.assert_close(state[key].double(), expected, rtol=1e-5, atol=1e-6)
        load_adapter_state(model, state)
        for module in method.modules:  # A never moves: the served weight is W0 + s·B·A with the stepped B
            expected = module.base_weight.double() + module.scaling * state[module.b_key].double() @ state[module.a_key].double()
            assert rel_err(effective_weight(module), expected) < 1e-5


def test_zero_momentum_and_unit_step_is_plain_averaging(tiny_model_dir):
    _, method = make(tiny_model_dir, "fedsvd", "none")
    model, with_optimizer = make(tiny_model_dir, "fedsvd", "momentum")
    with_optimizer.server_optimizer = ServerOptimizer("momentum", lr=1.0, momentum=0.0, beta2=0.99, tau=1e-3)
    state = adapter_state(model)
    uploads, _ = client_round(model, method, state, torch.Generator().manual_seed(5))
    plain = method.aggregate(state, uploads, WEIGHTS, 0)
    stepped = with_optimizer.aggregate(state, uploads, WEIGHTS, 0)
    for key in plain:
        torch.testing.assert_close(stepped[key], plain[key])


@pytest.mark.parametrize(
    "tree, key",
    [
        ({"method": {"name": "fedex"}, "federation": {"server_optimizer": "momentum"}}, "fedex"),
        ({"method": {"name": "flora"}, "federation": {"server_optimizer": "adam"}}, "flora"),
        ({"method": {"name": "fedsvd"}, "federation": {"server_optimizer": "adam"}}, "svd_period=0"),
    ],
)
def test_combinations_that_would_break_the_method_are_refused(tree, key):
    with pytest.raises(InputError) as caught:
        parse_recipe(tree)
    assert key in str(caught.value)


def test_server_optimizer_costs_no_privacy(tiny_recipe, tmp_path):
    """Same recipe with and without FedAvgM: identical noise multipliers, steps and epsilons."""
    from typer.testing import CliRunner

    from fedlora_cli.cli import app

    summaries = []
    for optimizer in ("none", "momentum"):
        out = tmp_path / optimizer
        result = CliRunner().invoke(
            app, ["train", str(tiny_recipe), f"federation.server_optimizer={optimizer}", "--out", str(out), "--json"]
        )
        assert result.exit_code == 0, result.output
        summaries.append(json.loads((out / "summary.json").read_text()))
    plain, momentum = summaries
    for key in ("epsilon", "client_epsilons", "noise_multipliers", "client_steps", "delta"):
        assert momentum[key] == plain[key], key
