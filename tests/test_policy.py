"""The privacy policies behind the round loop (fedlora_cli/privacy/policy.py), checked against
Opacus's accountants called directly and against the DP-FedAvg equations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from fedlora_cli.privacy.policy import POLICIES, ClientLevel, NoPrivacy, SampleLevel, build_policy
from fedlora_cli.recipe import Recipe

DELTA = 1e-5
SIZES = [40, 80, 16, 64]  # examples per client


def recipe(level: str, **privacy) -> Recipe:
    return Recipe.model_validate(
        {
            "model": {"name": "unused", "rank": 4},
            "method": {"name": "fedavg"},
            # no label prior: these tests check DP-SGD's charges alone (tests/test_logit_adjustment.py adds it)
            "federation": {"clients": 4, "clients_per_round": 2, "rounds": 5, "local_steps": 3, "batch_size": 8, "logit_adjustment": 0},
            "privacy": {"level": level, "delta": DELTA, "target_epsilon": None, "noise_multiplier": 1.1, **privacy}
            if level != "none"
            else {"level": "none"},
        }
    )


def opacus_epsilon(noise: float, rate: float, steps: int) -> float:
    """Epsilon from a fresh Opacus RDP accountant, called directly (not through fedlora)."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            accountant.step(noise_multiplier=noise, sample_rate=rate)
        return float(accountant.get_epsilon(delta=DELTA))


class Mean:
    """A method stand-in: every key trainable, the server step takes the mean as is."""

    def is_trainable(self, key):
        return True

    def server_step(self, global_state, mean, uploads, weights, round_index):
        return {**global_state, **mean}

    def aggregate(self, global_state, uploads, weights, round_index):
        return {key: sum(w * u[key] for w, u in zip(weights.tolist(), uploads)) for key in global_state}


def test_every_level_has_a_policy():
    assert set(POLICIES) == {"none", "sample", "client"}
    for level, cls in POLICIES.items():
        policy = build_policy(recipe(level), SIZES)
        assert isinstance(policy, cls) and policy.level == level


def test_no_privacy_samples_exactly_m_and_counts_steps_without_epsilon():
    policy = build_policy(recipe("none"), SIZES)
    assert isinstance(policy, NoPrivacy)
    reference = sorted(np.random.default_rng(7).choice(4, size=2, replace=False).tolist())
    assert policy.sample(7) == reference
    assert policy.noise_for(0) is None and policy.stop_reason(0, [0, 1]) is None
    policy.charge({0: 3, 2: 3})
    assert policy.client_steps == [3, 0, 3, 0] and policy.epsilon() is None
    assert policy.summary()["delta"] is None and policy.summary()["epsilon_scope"] is None


def test_sample_level_charges_only_the_steps_taken_as_opacus_counts_them():
    policy = build_policy(recipe("sample"), SIZES)
    assert isinstance(policy, SampleLevel) and policy.dp_sgd
    noise = policy.noise_for(2)
    assert noise.sample_rate == pytest.approx(8 / 16) and noise.noise_multiplier == 1.1
    policy.charge({0: 3, 2: 3})
    policy.charge({2: 3}, released=False)  # a late reply: its steps count all the same
    assert policy.client_steps == [3, 0, 6, 0]
    assert policy.summary()["client_epsilons"][0] == pytest.approx(opacus_epsilon(1.1, 8 / 40, 3), rel=1e-9)
    assert policy.epsilon() == pytest.approx(opacus_epsilon(1.1, 8 / 16, 6), rel=1e-9)  # the worst client


def test_sample_level_stops_before_a_round_that_would_pass_max_epsilon():
    limit = (opacus_epsilon(1.1, 0.5, 3) + opacus_epsilon(1.1, 0.5, 6)) / 2  # client 2 fits one round, not two
    policy = build_policy(recipe("sample", max_epsilon=limit), SIZES)
    assert policy.stop_reason(0, [1, 2]) is None
    policy.charge({1: 3, 2: 3})
    reason = policy.stop_reason(1, [1, 2])
    assert reason.startswith("stopped before round 2: clients [2] would pass privacy.max_epsilon")


def test_sample_level_state_round_trips_through_a_checkpoint():
    policy = build_policy(recipe("sample"), SIZES)
    policy.charge({0: 3, 3: 6})
    resumed = build_policy(recipe("sample"), SIZES)
    resumed.load_state_dict({**policy.state_dict(), "rounds_done": 2})
    assert resumed.client_steps == policy.client_steps and resumed.summary() == policy.summary()


def test_client_level_samples_by_poisson_at_rate_m_over_k():
    policy = build_policy(recipe("client"), SIZES)
    for seed in range(20):
        draws = torch.rand(4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        assert policy.sample(seed) == torch.nonzero(draws < 0.5).flatten().tolist()


def test_client_level_aggregate_is_the_clipped_uniform_mean_committed_by_the_charge():
    """Noise 0: x' = x + Σ_k Δ_k·min(1, C/‖Δ_k‖)/m with m = clients_per_round, whatever the weights;
    the round counts for the accountant only once charged as released."""
    policy = build_policy(recipe("client", noise_multiplier=0.0, client_clip=1.0), SIZES)
    assert isinstance(policy, ClientLevel) and not policy.dp_sgd
    x = {"b": torch.zeros(2)}
    uploads = [{"b": torch.tensor([3.0, 4.0])}, {"b": torch.tensor([0.3, 0.4])}]  # norms 5 (clipped) and 0.5
    new = policy.aggregate(Mean(), x, uploads, torch.tensor([0.9, 0.1], dtype=torch.float64), 0)
    expected = (torch.tensor([0.6, 0.8]) + torch.tensor([0.3, 0.4])) / 2
    torch.testing.assert_close(new["b"], expected)
    assert policy.round_metrics() == {"client_clip": 1.0}
    assert policy.dp.rounds_done == 0  # staged, not committed
    policy.charge({0: 3, 1: 3})
    assert policy.dp.rounds_done == 1 and policy.client_steps == [3, 3, 0, 0]


def test_client_level_epsilon_counts_released_rounds_only():
    policy = build_policy(recipe("client"), SIZES)
    uploads = [{"b": torch.ones(2)}]
    policy.charge({0: 3}, released=False)  # an abandoned round: steps only
    assert policy.epsilon() == 0
    for round_index in range(2):
        policy.aggregate(Mean(), {"b": torch.zeros(2)}, uploads, torch.ones(1, dtype=torch.float64), round_index)
        policy.charge({0: 3})
    assert policy.epsilon() == pytest.approx(opacus_epsilon(1.1, 0.5, 2), rel=1e-9)


def test_client_level_adaptive_clip_moves_only_when_the_round_is_committed():
    policy = build_policy(recipe("client", adaptive_clipping=True, noise_multiplier=0.0, client_clip=1.0), SIZES)
    uploads = [{"b": torch.tensor([0.1, 0.0])}, {"b": torch.tensor([0.2, 0.0])}]  # both below C: the clip shrinks
    policy.aggregate(Mean(), {"b": torch.zeros(2)}, uploads, torch.ones(2, dtype=torch.float64) / 2, 0)
    assert policy.state_dict()["client_clip"] == 1.0  # a checkpoint now holds the committed clip
    policy.charge({0: 3, 1: 3})
    # b̃ = 1/2 + (2 − 2/2)/m = 1, C ← C·exp(−η(b̃ − γ)) with η = 0.2, γ = 0.5
    assert policy.state_dict()["client_clip"] == pytest.approx(math.exp(-0.2 * 0.5))
    resumed = build_policy(recipe("client", adaptive_clipping=True, noise_multiplier=0.0, client_clip=1.0), SIZES)
    resumed.load_state_dict({**policy.state_dict(), "rounds_done": 1})
    assert resumed.dp.clip == policy.dp.clip and resumed.dp.rounds_done == 1


def test_client_level_notes_that_it_ignores_client_weighting():
    assert build_policy(recipe("client"), SIZES).notes()  # the default weighting is by size
    uniform = recipe("client").model_copy(deep=True)
    uniform.federation.client_weighting = "uniform"
    assert build_policy(uniform, SIZES).notes() == []


def test_a_new_level_is_one_subclass_and_the_round_loop_asks_it_in_order(tiny_recipe, tmp_path, monkeypatch):
    """The round loop calls only the policy interface: a policy registered under a level runs
    a real (tiny) run, and its hooks are called in the order of the algorithm."""
    from fedlora_cli.federation.engine import FederatedRun
    from fedlora_cli.federation.experiment import build_experiment
    from fedlora_cli.federation.run_dir import RunDir
    from fedlora_cli.privacy import policy as policies
    from fedlora_cli.report.console import NullReporter
    from fedlora_cli.validate import check_recipe

    calls = []

    class Recording(NoPrivacy):
        def sample(self, seed):
            calls.append("sample")
            return super().sample(seed)

        def stop_reason(self, round_index, sampled):
            calls.append("stop_reason")
            return "stopped before round 2: recorded" if round_index == 1 else None

        def noise_for(self, client):
            calls.append("noise_for")
            return None

        def aggregate(self, method, global_state, uploads, weights, round_index):
            calls.append("aggregate")
            return super().aggregate(method, global_state, uploads, weights, round_index)

        def charge(self, steps, released=True):
            calls.append(("charge", released, sorted(steps)))
            super().charge(steps, released)

    monkeypatch.setitem(policies.POLICIES, "none", Recording)
    checked = check_recipe(str(tiny_recipe), ["privacy.level=none", "federation.rounds=3"])
    experiment = build_experiment(checked.recipe, checked.train, checked.test, checked.client_indices)
    run = FederatedRun(experiment, RunDir.at(tmp_path / "run"), NullReporter())
    summary = run.run()
    charge = [call for call in calls if call[0] == "charge"]
    assert len(charge) == 2 and charge[0][1] is False and charge[0][2] == []  # late replies: none in-process
    sampled = charge[1][2]
    assert calls == ["sample", "stop_reason", "noise_for", "noise_for", charge[0], "aggregate", charge[1], "sample", "stop_reason"]
    assert summary["stopped"] == "stopped before round 2: recorded" and summary["rounds_completed"] == 1
    assert summary["client_steps"] == [3 if k in sampled else 0 for k in range(4)]
