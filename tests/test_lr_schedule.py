"""federation.lr_schedule: the LoRA factors' learning rate over the rounds, the head's unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from fedlora_cli.federation import clients
from fedlora_cli.federation.client import LocalTrainer, make_optimizer
from fedlora_cli.federation.clients import ClientTask
from fedlora_cli.federation.experiment import build_model
from fedlora_cli.federation.lr_schedule import lora_lr_scale
from fedlora_cli.models import is_head_parameter
from fedlora_cli.recipe import parse_recipe, with_former_defaults
from tests.test_privacy import outlier_dataset, run_train, tiny_recipe_obj


@pytest.mark.parametrize("rounds", [1, 4, 15, 64])
def test_the_factor_follows_its_equation(rounds):
    for t in range(rounds):
        assert lora_lr_scale("constant", t, rounds) == 1.0
        assert lora_lr_scale("cosine", t, rounds) == pytest.approx((1 + math.cos(math.pi * t / rounds)) / 2, abs=1e-15)
        assert lora_lr_scale("linear", t, rounds) == pytest.approx((rounds - t) / rounds, abs=1e-15)
    for schedule in ("cosine", "linear"):  # starts at lr, falls every round, never reaches 0
        factors = [lora_lr_scale(schedule, t, rounds) for t in range(rounds)]
        assert factors[0] == 1.0 and all(a > b for a, b in zip(factors, factors[1:])) and factors[-1] > 0
    if rounds % 2 == 0:
        assert lora_lr_scale("cosine", rounds // 2, rounds) == pytest.approx(0.5)
    frozen = rounds // 2  # probe_then_cosine: the factors wait half the run, then a cosine over the rest
    for t in range(rounds):
        expected = 0.0 if t < frozen else (1 + math.cos(math.pi * (t - frozen) / (rounds - frozen))) / 2
        assert lora_lr_scale("probe_then_cosine", t, rounds) == pytest.approx(expected, abs=1e-15)
    assert lora_lr_scale("probe_then_cosine", frozen, rounds) == 1.0


def test_rounds_outside_the_run_and_unknown_schedules_are_refused():
    with pytest.raises(ValueError, match="outside"):
        lora_lr_scale("cosine", 4, 4)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lora_lr_scale("step", 0, 4)


def test_only_the_lora_group_is_scaled(tiny_model_dir):
    recipe = tiny_recipe_obj(tiny_model_dir)
    recipe.federation.lr, recipe.federation.head_lr = 0.1, 0.3
    model, _ = build_model(recipe, 3)
    optimizer = make_optimizer(list(model.named_parameters()), recipe.federation, lora_lr_scale=0.25)
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert rates[id(p)] == pytest.approx(0.3 if is_head_parameter(name) else 0.025), name


def test_a_scaled_step_moves_the_factors_by_the_factor_and_the_head_as_before(tiny_model_dir):
    """One plain SGD step is ``−lr·s·g`` on the factors and ``−head_lr·g`` on the head: the same
    batch and seed with ``s = 0.5`` moves the factors half as far and the head just as far."""
    recipe = tiny_recipe_obj(tiny_model_dir)
    recipe.federation.lr, recipe.federation.head_lr, recipe.federation.clip_grad_norm = 0.1, 0.3, None
    moves = {}
    for scale in (1.0, 0.5):
        torch.manual_seed(0)
        model, _ = build_model(recipe, 3)
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        LocalTrainer(model, recipe.federation, private=False).train(outlier_dataset(tiny_model_dir), 1, 0, None, lora_lr_scale=scale)
        moves[scale] = {n: p.detach() - before[n] for n, p in model.named_parameters() if p.requires_grad}
    lora = [n for n in moves[1.0] if not is_head_parameter(n) and moves[1.0][n].abs().max() > 0]
    head = [n for n in moves[1.0] if is_head_parameter(n)]
    assert lora and head
    for name in lora:
        torch.testing.assert_close(moves[0.5][name], 0.5 * moves[1.0][name], rtol=1e-5, atol=1e-8)
    for name in head:
        torch.testing.assert_close(moves[0.5][name], moves[1.0][name], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(("schedule", "expected"), [("cosine", [1.0, 0.75, 0.25]), ("probe_then_cosine", [0.0, 1.0, 0.5])])
def test_a_run_gives_every_client_its_rounds_factor(tiny_recipe, monkeypatch, schedule, expected):
    seen: dict[int, list[float]] = {}
    real_train = clients.InProcessClients.train

    def recording_train(self, round_index, tasks, global_state, base):
        seen[round_index] = [task.lora_lr_scale for task in tasks]
        return real_train(self, round_index, tasks, global_state, base)

    monkeypatch.setattr(clients.InProcessClients, "train", recording_train)
    result = run_train(tiny_recipe, f"federation.lr_schedule={schedule}", "federation.rounds=3")
    assert result.exit_code == 0, result.output
    assert sorted(seen) == [0, 1, 2]
    for t, factors in seen.items():  # 2 clients per round, the same factor
        assert factors == pytest.approx([expected[t]] * 2)


def test_frozen_factors_stay_where_they_started_under_dp(tiny_recipe, monkeypatch):
    """probe_then_cosine under DP-SGD with fedsvd: after the frozen round the server still sends
    B = 0 and the initial A (noise reaches the factors' gradients, a zero rate keeps it out of the
    weights); the head has moved; the factors move once their rate is above zero."""
    sent: dict[int, dict[str, torch.Tensor]] = {}
    real_train = clients.InProcessClients.train

    def recording_train(self, round_index, tasks, global_state, base):
        sent[round_index] = {key: value.clone() for key, value in global_state.items()}
        return real_train(self, round_index, tasks, global_state, base)

    monkeypatch.setattr(clients.InProcessClients, "train", recording_train)
    result = run_train(tiny_recipe, "federation.lr_schedule=probe_then_cosine", "federation.rounds=3", "method.name=fedsvd")
    assert result.exit_code == 0, result.output
    factors = [key for key in sent[0] if not is_head_parameter(key)]
    head = [key for key in sent[0] if is_head_parameter(key)]
    assert any(".lora_A." in key for key in factors) and any(".lora_B." in key for key in factors) and head
    for key in factors:
        assert torch.equal(sent[1][key], sent[0][key]), key
    assert all(not sent[1][key].any() for key in factors if ".lora_B." in key)
    assert any(not torch.equal(sent[1][key], sent[0][key]) for key in head)
    assert any(sent[2][key].any() for key in factors if ".lora_B." in key)


def test_the_factor_travels_over_the_flower_wire():
    from flwr.app import ArrayRecord

    from fedlora_cli.flower import wire

    def sent(task):
        config, _, _ = wire.read_train_request(wire.train_request("name: x", 0, 2, task, ArrayRecord({}), None))
        return wire.lora_lr_scale_of(config)

    assert sent(ClientTask(1, 7, None, None, 0.375)) == 0.375
    assert sent(ClientTask(1, 7, None, None, 0.0)) == 0.0  # probe_then_cosine's frozen rounds: 0 is not "absent"
    assert sent(ClientTask(1, 7, None)) == 1.0


def test_an_unknown_schedule_names_the_key(tiny_recipe):
    result = run_train(tiny_recipe, "federation.lr_schedule=step")
    assert result.exit_code == 2 and "federation.lr_schedule" in result.output and "Traceback" not in result.output


def test_the_default_decays_and_runs_saved_before_the_key_keep_one_rate():
    tree = {"federation": {"clients": 4, "clients_per_round": 2}, "privacy": {"level": "sample"}}
    assert parse_recipe(tree).federation.lr_schedule == "cosine"
    assert parse_recipe(with_former_defaults(tree)).federation.lr_schedule == "constant"
