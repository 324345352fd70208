"""Logit-adjusted training (federation.logit_adjustment) and the label prior it releases
(fedlora_cli.privacy.label_prior): the loss against its equation, the discrete Laplace noise
against its pmf, the privacy cost in the plan against Opacus's own accountant, and the release
kept across a resume and carried over Flower."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedlora_cli.errors import InputError
from fedlora_cli.federation.client import ClientNoise, LocalTrainer, classification_loss
from fedlora_cli.federation.clients import ClientTask
from fedlora_cli.federation.experiment import build_model
from fedlora_cli.privacy.label_prior import (
    geometric_noise,
    logit_offset,
    noise_std,
    noised_label_counts,
    prior_epsilon_of,
    uses_label_prior,
)
from fedlora_cli.privacy.policy import build_policy
from fedlora_cli.privacy.sample_level import SampleLevelPlan
from fedlora_cli.recipe import load_recipe, parse_recipe
from tests.test_privacy import opacus_epsilon, run_train, summary_of, tiny_recipe_obj, varied_length_dataset


def test_the_noise_follows_the_two_sided_geometric_pmf():
    """P(Z = z) = (1 − e^{−ε})/(1 + e^{−ε})·e^{−ε|z|}: checked at z = 0, ±1, ±2 on 400k draws."""
    epsilon = 0.7
    draws = geometric_noise(400_000, epsilon, torch.Generator().manual_seed(0))
    assert torch.equal(draws, draws.round())  # integer-valued
    norm = (1 - math.exp(-epsilon)) / (1 + math.exp(-epsilon))
    for z in (-2, -1, 0, 1, 2):
        observed = float((draws == z).double().mean())
        assert observed == pytest.approx(norm * math.exp(-epsilon * abs(z)), abs=0.003)
    assert float(draws.mean()) == pytest.approx(0.0, abs=0.02)


def test_counts_are_exact_without_dp_and_each_client_adds_its_own_noise():
    clients = [np.array([0, 0, 1]), np.array([1, 2, 2, 2]), np.array([0])]
    assert noised_label_counts(clients, 3, None, None).tolist() == [3.0, 2.0, 3.0]
    generator = torch.Generator().manual_seed(5)
    noised = noised_label_counts(clients, 3, 0.5, generator)
    replay = torch.Generator().manual_seed(5)
    expected = torch.tensor([3.0, 2.0, 3.0], dtype=torch.float64) + sum(geometric_noise(3, 0.5, replay) for _ in clients)
    assert torch.equal(noised, expected)


def test_the_offset_is_tau_log_prior_with_counts_floored():
    counts = torch.tensor([30.0, 10.0, -4.0], dtype=torch.float64)
    assert logit_offset(counts, 0.5) == pytest.approx([0.5 * math.log(30 / 41), 0.5 * math.log(10 / 41), 0.5 * math.log(1 / 41)])
    assert logit_offset(counts, 1.0, floor=12.0) == pytest.approx([math.log(30 / 54), math.log(12 / 54), math.log(12 / 54)])


def test_the_floor_is_the_standard_deviation_of_the_summed_noise():
    generator = torch.Generator().manual_seed(1)
    sums = sum(geometric_noise(100_000, 0.3, generator) for _ in range(6))
    assert float(sums.std()) == pytest.approx(noise_std(0.3, 6), rel=0.01)
    assert noise_std(None, 6) == 0.0


def test_the_loss_is_cross_entropy_of_the_shifted_logits(tiny_model_dir):
    recipe = tiny_recipe_obj(tiny_model_dir)
    model, _ = build_model(recipe, 3)
    model.eval()
    batch = varied_length_dataset().batch([0, 1, 2, 3])
    offset = torch.tensor([-0.1, -1.2, -2.0])
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        expected = F.cross_entropy(logits + offset, batch["labels"])
        assert float(classification_loss(model, batch, logit_offset=offset)) == pytest.approx(float(expected), rel=1e-6)
        assert float(classification_loss(model, batch)) == pytest.approx(float(F.cross_entropy(logits, batch["labels"])), rel=1e-6)


@pytest.mark.parametrize("private", [False, True])
def test_a_uniform_prior_trains_exactly_as_plain_cross_entropy_and_a_skewed_one_does_not(tiny_model_dir, private):
    """log of a uniform π shifts every logit equally, which softmax ignores: identical uploads."""
    recipe = tiny_recipe_obj(tiny_model_dir, noise_multiplier=0.5)
    data = varied_length_dataset()
    noise = ClientNoise(0.5, 0.5, 1.0, False) if private else None

    def upload(offset):
        model, _ = build_model(recipe, 3)
        return LocalTrainer(model, recipe.federation, private=private).train(data, 2, 11, noise, offset).upload

    plain, uniform, skewed = upload(None), upload([math.log(1 / 3)] * 3), upload([-0.1, -1.5, -2.5])
    assert all(torch.allclose(plain[k], uniform[k], atol=1e-6) for k in plain)
    assert any(not torch.allclose(plain[k], skewed[k], atol=1e-4) for k in plain)


def default_recipe(*overrides):
    return load_recipe("default", ["federation.rounds=10", *overrides])


def test_the_prior_is_paid_from_the_target_and_the_total_stays_within_it():
    """DP-SGD is calibrated to target − ε_π; the epsilon reported after every planned step is
    Opacus's RDP epsilon of that noise plus ε_π, at most the target."""
    recipe = default_recipe("privacy.prior_epsilon=0.2")
    assert uses_label_prior(recipe) and prior_epsilon_of(recipe) == 0.2
    sizes = [300, 120, 500]
    plan = SampleLevelPlan.for_recipe(recipe, sizes)
    without = SampleLevelPlan.for_recipe(default_recipe("federation.logit_adjustment=0"), sizes)
    plan.clients[0].steps = plan.planned_steps
    assert plan.epsilon_of(0) < 5.81  # not yet released
    plan.prior_released = True
    for client, budget in enumerate(plan.clients):
        budget.steps = plan.planned_steps
        dp_sgd = opacus_epsilon(budget.noise_multiplier, budget.sample_rate, plan.planned_steps, recipe.privacy.delta, "rdp")
        assert plan.epsilon_of(client) == pytest.approx(dp_sgd + 0.2, rel=1e-9)
        assert 5.9 <= plan.epsilon_of(client) <= 6.0
        assert budget.noise_multiplier > without.clients[client].noise_multiplier  # the prior's share is not free


def test_only_sample_level_pays_and_client_level_trains_plain_with_a_note():
    assert prior_epsilon_of(default_recipe("privacy.level=none")) == 0.0
    assert uses_label_prior(default_recipe("privacy.level=none"))
    client = default_recipe("privacy.level=client", "privacy.target_epsilon=6")
    assert not uses_label_prior(client) and prior_epsilon_of(client) == 0.0
    notes = build_policy(client, [100] * 6).notes()
    assert any("logit_adjustment" in note for note in notes)
    assert not uses_label_prior(default_recipe("federation.logit_adjustment=0"))


def test_a_prior_that_takes_the_whole_budget_is_refused(tiny_recipe):
    result = run_train(tiny_recipe, "federation.logit_adjustment=0.5", "privacy.prior_epsilon=8")
    assert result.exit_code == 2
    assert "privacy.prior_epsilon=8" in result.output and "Traceback" not in result.output


def test_the_release_happens_once_and_a_checkpoint_keeps_it():
    recipe = default_recipe()
    labels = [np.array([0, 1, 1, 2, 3, 4] * 20), np.array([4, 4, 0] * 30)]
    policy = build_policy(recipe, [len(x) for x in labels])
    assert policy.epsilon() == 0.0  # nothing released, nothing trained
    first = policy.release_label_counts(labels, 5, seed=1)
    assert policy.epsilon() == recipe.privacy.prior_epsilon
    assert policy.release_label_counts(labels, 5, seed=2) == first  # no second draw
    resumed = build_policy(recipe, [len(x) for x in labels])
    resumed.load_state_dict({**json.loads(json.dumps(policy.state_dict())), "rounds_done": 3})
    assert resumed.epsilon() == recipe.privacy.prior_epsilon
    assert resumed.release_label_counts(labels, 5, seed=2) == first
    assert resumed.summary()["label_counts"] == first and resumed.summary()["prior_epsilon"] == recipe.privacy.prior_epsilon


def test_a_run_trains_with_the_released_prior_and_reports_it(tiny_recipe):
    result = run_train(tiny_recipe, "federation.logit_adjustment=0.5", "privacy.prior_epsilon=0.5")
    assert result.exit_code == 0, result.output
    summary = summary_of(result)
    assert summary["prior_epsilon"] == 0.5 and len(summary["label_counts"]) == 3
    assert summary["epsilon"] <= 8.0 and summary["epsilon"] == max(summary["client_epsilons"])
    assert min(summary["client_epsilons"]) >= 0.5


def test_the_offset_travels_over_the_flower_wire():
    from flwr.app import ArrayRecord

    from fedlora_cli.flower import wire

    task = ClientTask(1, 7, None, (-0.25, -1.5))
    config, _, _ = wire.read_train_request(wire.train_request("name: x", 0, 2, task, ArrayRecord({}), None))
    assert wire.logit_offset_of(config) == (-0.25, -1.5)
    plain, _, _ = wire.read_train_request(wire.train_request("name: x", 0, 2, ClientTask(1, 7, None), ArrayRecord({}), None))
    assert wire.logit_offset_of(plain) is None


def test_runs_saved_before_the_key_trained_on_plain_cross_entropy():
    from fedlora_cli.recipe import with_former_defaults

    tree = with_former_defaults({"federation": {"clients": 4, "clients_per_round": 2}, "privacy": {"level": "sample"}})
    assert parse_recipe(tree).federation.logit_adjustment == 0.0


def test_posthoc_alone_releases_the_prior_and_its_tau_costs_nothing_more():
    """The served adjustment is post-processing of the released prior: the plan (noise, epsilon)
    is the same for any τ' > 0, and a run with only τ' still pays ε_π once."""
    sizes = [300, 120, 500]
    only_posthoc = default_recipe("federation.logit_adjustment=0", "federation.posthoc_adjustment=0.25")
    assert uses_label_prior(only_posthoc) and prior_epsilon_of(only_posthoc) == only_posthoc.privacy.prior_epsilon
    assert not uses_label_prior(default_recipe("federation.logit_adjustment=0"))
    plans = [SampleLevelPlan.for_recipe(default_recipe(f"federation.posthoc_adjustment={tau}"), sizes) for tau in (0.25, 1, 3)]
    assert len({tuple(b.noise_multiplier for b in plan.clients) for plan in plans}) == 1
    client = default_recipe("privacy.level=client", "privacy.target_epsilon=6", "federation.posthoc_adjustment=0.25")
    assert any("logit_adjustment=0.5 and federation.posthoc_adjustment=0.25" in note for note in build_policy(client, [100] * 6).notes())


def test_the_served_state_takes_the_offset_from_the_head_bias_only(tiny_model_dir):
    from fedlora_cli.models import adapter_state, head_bias_name
    from fedlora_cli.privacy.label_prior import served_state

    model, _ = build_model(tiny_recipe_obj(tiny_model_dir), 3)
    state = adapter_state(model)
    bias = head_bias_name(state, 3)
    assert bias is not None and "classifier" in bias and "modules_to_save" in bias
    served = served_state(state, bias, [-0.1, -1.0, -2.5])
    assert torch.allclose(served[bias], state[bias] + torch.tensor([0.1, 1.0, 2.5]))
    assert all(served[k] is state[k] for k in state if k != bias)  # nothing else changes, state is not edited
    assert served_state(state, bias, None) is state and served_state(state, None, [0.0, 1.0, 2.0]) is state


def test_a_decoder_classifier_has_no_head_bias_to_adjust():
    """GPT-2 / Llama sequence classifiers end in ``score``, a linear layer without bias: the run
    serves f(x) and says so (FederatedRun notes)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from fedlora_cli.models import adapter_state, head_bias_name

    base = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=100, num_labels=3))
    model = get_peft_model(base, LoraConfig(task_type=TaskType.SEQ_CLS, r=2, target_modules=["c_attn"]))
    state = adapter_state(model)
    assert any("score" in name for name in state) and head_bias_name(state, 3) is None


@pytest.mark.parametrize("tau", [0.0, 1.0])
def test_the_served_model_predicts_f_minus_tau_log_prior_and_the_checkpoint_keeps_f(tiny_recipe, tau):
    """Menon et al. 2021, eq. 9: the saved adapter (and every evaluation) predicts with
    f(x) − τ'·log π, π the released counts floored as in training; the checkpoint, which clients
    and a resume start from, holds the trained f."""
    from safetensors.torch import load_file

    from fedlora_cli.federation.artifacts import load_adapter_model, resolve_target
    from fedlora_cli.federation.evaluate import predict_logits, scores
    from fedlora_cli.models import head_bias_name, load_adapter_state, load_tokenizer
    from fedlora_cli.tasks import get_task, load_task_datasets

    result = run_train(tiny_recipe, f"federation.posthoc_adjustment={tau}", "privacy.prior_epsilon=0.5")
    assert result.exit_code == 0, result.output
    summary = summary_of(result)
    target = resolve_target(summary["run_dir"], None, None)
    checkpoint = next((target.run_dir / "checkpoint").glob("state-*.safetensors"))
    trained = load_file(checkpoint)
    offset = torch.tensor(logit_offset(torch.tensor(summary["label_counts"], dtype=torch.float64), tau, noise_std(0.5, 4)))

    model = load_adapter_model(target.recipe, target.adapter_dir, 3)  # the served model, as saved
    bias = head_bias_name(trained, 3)
    served_bias = dict(model.named_parameters())[bias].detach()
    assert torch.allclose(served_bias, trained[bias] - offset.float(), atol=1e-6)
    _, test = load_task_datasets(target.recipe)
    data = get_task(target.recipe, load_tokenizer(target.recipe.model.name)).tokenize(test)
    served_logits = predict_logits(model, data)
    load_adapter_state(model, trained)  # f itself
    trained_logits = predict_logits(model, data)
    assert torch.allclose(served_logits, trained_logits - offset.float(), atol=1e-5)
    expected = scores(trained_logits - offset.float(), data.labels, 3)
    assert summary["final_accuracy"] == pytest.approx(expected["accuracy"])
    assert summary["predicted_counts"] == expected["predicted_counts"]


def test_a_posthoc_only_run_pays_for_the_prior_from_its_first_round(tiny_recipe):
    """Without logit-adjusted training the prior is still released before round 1 trains, so the
    epsilon of every round (evaluated or not) is that of a run that trains with it: the same
    DP-SGD noise, plus ε_π."""

    def epsilons(*overrides):
        result = run_train(tiny_recipe, *overrides, "privacy.prior_epsilon=0.5", "federation.eval_every=2", "federation.rounds=3")
        assert result.exit_code == 0, result.output
        assert len(summary_of(result)["label_counts"]) == 3
        return [json.loads(line)["epsilon"] for line in result.stdout.splitlines() if line.startswith('{"type": "round"')]

    posthoc_only = epsilons("federation.logit_adjustment=0", "federation.posthoc_adjustment=0.5")
    assert len(posthoc_only) == 3 and posthoc_only == epsilons("federation.logit_adjustment=0.5")
