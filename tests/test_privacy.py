"""Privacy: accountants and calibration, clipping proofs, client-level DP, budgets, `fedlora accountant`.

Golden values are pinned under the Opacus version in use and cross-checked against Google's
independent ``dp-accounting`` RDP implementation.
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.errors import InputError
from fedlora_cli.privacy.accountants import ACCOUNTANTS, calibrate_noise, epsilon, epsilon_floor
from fedlora_cli.privacy.client_level import (
    ClientLevelDP,
    clip_update,
    update_noise_multiplier,
    update_norm,
)
from fedlora_cli.methods import METHODS
from fedlora_cli.recipe import FederationConfig, PrivacyConfig, parse_recipe

DELTA = 1e-5
OPACUS_RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def opacus_epsilon(noise: float, rate: float, steps: int, delta: float, accountant: str) -> float:
    """Epsilon from a fresh Opacus accountant, called directly (not through fedlora)."""
    from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant

    cls = {"rdp": RDPAccountant, "prv": PRVAccountant, "gdp": GaussianAccountant}[accountant]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acc = cls()
        for _ in range(steps):
            acc.step(noise_multiplier=noise, sample_rate=rate)
        return float(acc.get_epsilon(delta=delta))


# ------------------------------------------------------------------------------ (a) calibration
@pytest.mark.parametrize(
    "accountant, target, rate, steps",
    [
        ("rdp", 3.0, 0.01, 1000),
        ("rdp", 8.0, 0.25, 6),
        ("prv", 3.0, 0.01, 1000),
        ("prv", 1.0, 0.05, 200),
    ],
)
def test_calibrated_noise_reaches_target_within_one_percent_never_above(accountant, target, rate, steps):
    sigma = calibrate_noise(target, DELTA, rate, steps, accountant)
    spent = opacus_epsilon(sigma, rate, steps, DELTA, accountant)
    assert spent <= target
    assert spent >= 0.99 * target
    # and a little less noise would pass the target: the calibration is not wastefully high
    assert opacus_epsilon(sigma * 0.97, rate, steps, DELTA, accountant) > spent


def test_unreachable_target_is_an_input_error_and_fast():
    import time

    floor = epsilon_floor(DELTA, "rdp")
    # the floor is what huge noise converges to, from above
    assert floor < epsilon(50.0, 0.01, 10, DELTA, "rdp") < 1.2 * floor
    start = time.perf_counter()
    with pytest.raises(InputError, match="cannot be reached"):
        calibrate_noise(0.99 * floor, DELTA, 0.5, 1000, "rdp")
    with pytest.raises(InputError, match="cannot be reached"):
        calibrate_noise(0.005, DELTA, 0.5, 1000, "prv")
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("name", list(ACCOUNTANTS))
def test_every_registered_accountant_equals_its_opacus_accountant_stepped_step_by_step(name):
    """The row every accountant joins: fedlora's epsilon is finite, above the accountant's floor,
    and equal to a fresh Opacus accountant of its class that took the steps one by one through
    the public ``step`` API; one that calibrates finds noise that reaches a target from below."""
    reference = ACCOUNTANTS[name].opacus_class()()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(150):
            reference.step(noise_multiplier=1.1, sample_rate=0.02)
        expected = reference.get_epsilon(delta=DELTA)
    ours = epsilon(1.1, 0.02, 150, DELTA, name)
    assert math.isfinite(ours) and ours > epsilon_floor(DELTA, name)
    assert ours == pytest.approx(expected, rel=1e-9)
    if ACCOUNTANTS[name].calibrates:
        sigma = calibrate_noise(2 * ours, DELTA, 0.02, 150, name)
        assert 0.99 * 2 * ours <= epsilon(sigma, 0.02, 150, DELTA, name) <= 2 * ours


# ------------------------------------------------------------------------------ (b) golden values
GOLDEN = [
    # (accountant, noise multiplier, sample rate, steps, delta, epsilon pinned with Opacus 1.6)
    ("rdp", 1.1, 0.01, 1000, 1e-5, 1.7117700912203435),
    ("prv", 1.1, 0.01, 1000, 1e-5, 1.525472649316146),
    ("gdp", 1.1, 0.01, 1000, 1e-5, 1.3774291008106267),
]


@pytest.mark.parametrize("accountant, noise, rate, steps, delta, pinned", GOLDEN)
def test_golden_epsilons_match_opacus_called_directly(accountant, noise, rate, steps, delta, pinned):
    ours = epsilon(noise, rate, steps, delta, accountant)
    assert ours == pytest.approx(pinned, rel=1e-6)
    if accountant != "prv":  # PRV's discretization depends on the history's shape; checked in bulk above
        assert ours == pytest.approx(opacus_epsilon(noise, rate, steps, delta, accountant), rel=1e-9)


@pytest.mark.parametrize(
    "noise, rate, steps, delta",
    [(1.1, 0.01, 1000, 1e-5), (0.8, 0.05, 300, 1e-6), (2.0, 0.5, 10, 1e-5), (1.0, 1.0, 5, 1e-5), (4.0, 0.25, 50, 1e-3)],
)
def test_rdp_matches_google_dp_accounting_within_one_percent(noise, rate, steps, delta):
    dp_accounting = pytest.importorskip("dp_accounting")
    from dp_accounting import rdp

    acc = rdp.RdpAccountant(orders=OPACUS_RDP_ORDERS)
    event = dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise))
    acc.compose(event, steps)
    google = acc.get_epsilon(delta)
    ours = epsilon(noise, rate, steps, delta, "rdp")
    assert ours == pytest.approx(google, rel=0.01)


def test_calibration_checked_by_google_dp_accounting():
    """Calibrate with fedlora (Opacus RDP), verify the budget with the independent implementation."""
    dp_accounting = pytest.importorskip("dp_accounting")
    from dp_accounting import rdp

    target, rate, steps = 4.0, 0.02, 500
    sigma = calibrate_noise(target, DELTA, rate, steps, "rdp")
    acc = rdp.RdpAccountant(orders=OPACUS_RDP_ORDERS)
    acc.compose(dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(sigma)), steps)
    assert acc.get_epsilon(DELTA) == pytest.approx(target, rel=0.01)
    assert acc.get_epsilon(DELTA) <= target * 1.001


# ------------------------------------------------------------------------------ tiny-model helpers
def tiny_recipe_obj(model_dir: str, **privacy):
    tree = {
        "model": {"name": model_dir, "rank": 4, "alpha": 8, "target_modules": ["query", "value"]},
        "federation": {"clients": 4, "clients_per_round": 2, "rounds": 2, "local_steps": 1, "batch_size": 1, "lr": 1.0,
                       "head_lr": None,  # the head steps at lr too: one learning rate in the equations below
                       "precision": "float32"},  # exact DP math against float32 references
        "method": {"name": "fedavg"},
        "privacy": {"level": "sample", "target_epsilon": None, "noise_multiplier": 0.0, **privacy},
    }
    return parse_recipe(tree)


def outlier_dataset(tokenizer_dir: str):
    """One extreme example: a long run of a rare token, with a label the random head disagrees with."""
    from fedlora_cli.data.batching import TokenizedDataset

    ids = [101] + [29999] * 100 + [102]
    return TokenizedDataset([ids], [[0] * len(ids)], torch.tensor([2]), 0)


def adapter_vector(model) -> torch.Tensor:
    from fedlora_cli.models import adapter_state

    return torch.cat([t.flatten().double() for _, t in sorted(adapter_state(model).items())])


# ------------------------------------------------------------------------------ (c) clipping proof
@pytest.mark.parametrize("optimizer", ["sgd"])
def test_one_outlier_cannot_move_the_adapter_more_than_lr_times_c(tiny_model_dir, optimizer):
    from fedlora_cli.federation.client import ClientNoise, LocalTrainer
    from fedlora_cli.federation.experiment import build_model
    from fedlora_cli.models import load_adapter_state, adapter_state

    clip, lr = 1e-3, 1e4
    recipe = tiny_recipe_obj(tiny_model_dir, max_grad_norm=clip)
    recipe.federation.lr = lr
    recipe.federation.clip_grad_norm = None
    data = outlier_dataset(tiny_model_dir)

    # without DP (and without batch clipping), the same single step moves the adapter far more than lr·C: the outlier is real
    model, _ = build_model(recipe, 3)
    start = adapter_state(model)
    before = adapter_vector(model)
    LocalTrainer(model, recipe.federation, private=False).train(data, 1, seed=0, noise=None)
    unclipped = float((adapter_vector(model) - before).norm())
    assert unclipped > 100 * lr * clip

    # with DP-SGD (noise 0, batch of exactly one: Poisson rate 1 on one example), the step is ≤ lr·C
    model, _ = build_model(recipe, 3)
    load_adapter_state(model, start)
    trainer = LocalTrainer(model, recipe.federation, private=True)
    result = trainer.train(data, 1, seed=0, noise=ClientNoise(1.0, 0.0, clip))
    assert result.examples == 1
    moved = float((adapter_vector(model) - before).norm())
    assert moved <= lr * clip * (1 + 1e-5)
    assert moved >= 0.99 * lr * clip  # clipping bound is tight: the step was clipped, not vanishing


def varied_length_dataset():
    """Seven examples of 3 to 40 tokens, so length-sorted chunks pad very differently."""
    from fedlora_cli.data.batching import TokenizedDataset

    lengths = [12, 3, 40, 7, 25, 5, 18]
    generator = torch.Generator().manual_seed(0)
    ids = [[101] + torch.randint(1000, 20000, (n - 2,), generator=generator).tolist() + [102] for n in lengths]
    return TokenizedDataset(ids, [[0] * len(x) for x in ids], torch.tensor([0, 1, 2, 1, 0, 2, 1]), 0)


def trainable_vector(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().double() for p in model.parameters() if p.requires_grad])


def per_example_gradients(model, data) -> torch.Tensor:
    """Reference per-sample gradients: one backward pass per example, no Opacus."""
    from fedlora_cli.federation.client import classification_loss

    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(len(data)):
        model.zero_grad(set_to_none=True)
        classification_loss(model, data.batch([i])).backward()
        rows.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().double() for p in params]))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


@pytest.mark.parametrize("microbatch_size", [1, 3, 100])
def test_length_chunked_dp_step_equals_the_dp_sgd_equation(tiny_model_dir, microbatch_size):
    """One DP-SGD step (Poisson rate 1, noise 0) run as length-sorted chunks moves the trainable
    parameters by −lr·Σ_i clip_C(g_i)/n, with g_i from one backward pass per example; without DP
    the chunks add up to −lr·mean_i g_i. Dropout is off so both sides see the same network."""
    from fedlora_cli.federation.client import ClientNoise, LocalTrainer
    from fedlora_cli.federation.experiment import build_model

    data = varied_length_dataset()
    recipe = tiny_recipe_obj(tiny_model_dir)
    recipe.federation.lr = 0.5
    recipe.federation.microbatch_size = microbatch_size
    recipe.federation.batch_size = len(data)  # without DP: a fixed-size batch of every example
    for private in (True, False):
        model, _ = build_model(recipe, 3)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model.train()
        grads = per_example_gradients(model, data)
        norms = grads.norm(dim=1)
        clip = float(norms.median())  # some examples are clipped, some are not
        if private:
            expected_step = (grads * (clip / (norms + 1e-6)).clamp(max=1.0)[:, None]).sum(0) / len(data)
        else:
            expected_step = grads.mean(0)
        before = trainable_vector(model)
        noise = ClientNoise(1.0, 0.0, clip) if private else None
        LocalTrainer(model, recipe.federation, private=private).train(data, 1, seed=0, noise=noise)
        moved = trainable_vector(model) - before
        torch.testing.assert_close(moved, -0.5 * expected_step, rtol=1e-4, atol=1e-7)


def test_length_chunks_add_the_dp_noise_once_per_batch(tiny_model_dir):
    """With noise on, chunks of 2 and one chunk of 7 give the same step: clipping is per example
    and the noise σ·C is drawn once, at the batch's step (not once per chunk)."""
    from fedlora_cli.federation.client import ClientNoise, LocalTrainer
    from fedlora_cli.federation.experiment import build_model

    data = varied_length_dataset()
    steps = {}
    for microbatch_size in (2, 7):
        recipe = tiny_recipe_obj(tiny_model_dir)
        recipe.federation.microbatch_size = microbatch_size
        model, _ = build_model(recipe, 3)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        before = trainable_vector(model)
        LocalTrainer(model, recipe.federation, private=True).train(data, 1, seed=3, noise=ClientNoise(1.0, 1.0, 0.05))
        steps[microbatch_size] = trainable_vector(model) - before
    assert steps[2].norm() > 0
    torch.testing.assert_close(steps[2], steps[7], rtol=1e-4, atol=1e-7)


def test_per_sample_gradients_are_float32_before_clipping_under_bf16(tiny_model_dir):
    """bf16 autocast makes Opacus's per-sample grads bf16; fedlora casts them before clipping."""
    import torch.nn.functional as F
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from fedlora_cli.federation.client import grad_samples_to_float32
    from fedlora_cli.federation.experiment import build_model

    recipe = tiny_recipe_obj(tiny_model_dir)
    model, _ = build_model(recipe, 3)
    params = [p for p in model.parameters() if p.requires_grad]
    gsm = GradSampleModule(model, loss_reduction="mean")
    gsm.train()
    batch = outlier_dataset(tiny_model_dir).batch([0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = gsm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    F.cross_entropy(logits.float(), batch["labels"]).backward()
    assert any(p.grad_sample.dtype == torch.bfloat16 for p in params)  # the hazard exists
    grad_samples_to_float32(params)
    assert all(p.grad_sample.dtype == torch.float32 for p in params)
    clip = 1e-3
    opt = DPOptimizer(torch.optim.SGD(params, lr=1.0), noise_multiplier=0.0, max_grad_norm=clip, expected_batch_size=1)
    opt.clip_and_accumulate()
    clipped = torch.cat([p.summed_grad.flatten().double() for p in params]).norm()
    assert float(clipped) <= clip * (1 + 1e-6)


# ------------------------------------------------------------------------------ (d) client level
def make_client_dp(noise=0.0, clip=1.0, m=4, k=8, adaptive=False, count_stddev=None, **extra) -> ClientLevelDP:
    cfg = PrivacyConfig(
        level="client",
        target_epsilon=None,
        noise_multiplier=noise,
        client_clip=clip,
        adaptive_clipping=adaptive,
        clipped_count_stddev=count_stddev,
        **extra,
    )
    fed = FederationConfig(clients=k, clients_per_round=m)
    return ClientLevelDP.build(cfg, fed, "fedavg")


def test_client_clipping_bounds_each_clients_contribution():
    torch.manual_seed(0)
    dp = make_client_dp(noise=0.0, clip=0.5, m=4)
    glob = {"a": torch.zeros(10, 3), "b": torch.zeros(7)}
    huge = {"a": torch.full((10, 3), 100.0), "b": torch.full((7,), -50.0)}
    quiet = {"a": torch.zeros(10, 3), "b": torch.zeros(7)}
    small = {"a": torch.full((10, 3), 0.01), "b": torch.zeros(7)}
    gen = torch.Generator().manual_seed(0)
    new = dp.privatize(glob, [huge, quiet, quiet, quiet], gen)
    moved = update_norm({k: new[k] - glob[k] for k in glob})
    assert moved == pytest.approx(0.5 / 4, rel=1e-6)  # one client moves the mean by at most C/m
    # an update below C is not touched
    clipped, norm = clip_update({k: small[k] - glob[k] for k in glob}, 0.5)
    assert norm < 0.5 and torch.equal(clipped["a"], small["a"].double())
    # direction is kept when clipping
    clipped, norm = clip_update(huge, 0.5)
    assert update_norm(clipped) == pytest.approx(0.5)
    assert torch.allclose(clipped["a"] / clipped["a"].norm(), huge["a"].double() / huge["a"].double().norm())


def test_client_noise_std_matches_sigma_c_over_m_on_zero_updates():
    sigma, clip, m = 1.3, 0.7, 5
    dp = make_client_dp(noise=sigma, clip=clip, m=m, k=10)
    glob = {"w": torch.zeros(200_000)}
    uploads = [{"w": torch.zeros(200_000)} for _ in range(m)]
    new = dp.privatize(glob, uploads, torch.Generator().manual_seed(1234))
    sample = new["w"].double()
    expected = sigma * clip / m
    # sample std of 2e5 Gaussians: relative standard error 1/sqrt(2n) ≈ 0.16%; allow 1%
    assert float(sample.std()) == pytest.approx(expected, rel=0.01)
    assert abs(float(sample.mean())) < 5 * expected / math.sqrt(sample.numel())
    # and the wrong scales are rejected by the same test (it can fail)
    assert float(sample.std()) != pytest.approx(sigma * clip, rel=0.01)
    assert float(sample.std()) != pytest.approx(sigma * clip / math.sqrt(m), rel=0.01)


@pytest.fixture
def urandom_csprng(monkeypatch):
    """torchcsprng when installed; otherwise a stand-in whose generators are seeded from
    os.urandom, enough to test that secure mode ignores the seed (tests/test_secure_mode.py
    checks that fedlora itself refuses secure mode without torchcsprng)."""
    import os
    import sys
    import types

    try:
        import torchcsprng  # noqa: F401
    except ImportError:
        fake = types.ModuleType("torchcsprng")
        fake.create_random_device_generator = lambda device: torch.Generator().manual_seed(
            int.from_bytes(os.urandom(8), "little") >> 1
        )
        monkeypatch.setitem(sys.modules, "torchcsprng", fake)


def test_client_noise_is_reproducible_from_the_seed_and_fresh_in_secure_mode(urandom_csprng):
    from fedlora_cli.privacy.client_level import noise_generator

    dp = make_client_dp(noise=1.0)
    glob = {"w": torch.zeros(50)}
    up = [{"w": torch.zeros(50)} for _ in range(4)]
    a = dp.privatize(glob, up, noise_generator(False, 7))["w"]
    b = dp.privatize(glob, up, noise_generator(False, 7))["w"]
    assert torch.equal(a, b)
    secure = make_client_dp(noise=1.0, secure_mode=True)
    c = secure.privatize(glob, up, noise_generator(True, 7))["w"]
    d = secure.privatize(glob, up, noise_generator(True, 7))["w"]
    assert not torch.equal(c, d)
    assert float(c.double().std()) == pytest.approx(1.0 / 4, rel=0.5)


def test_secure_mode_dp_sgd_noise_is_not_determined_by_the_seed(tiny_model_dir, urandom_csprng):
    """secure_mode: same seed, different noise (and batches); off: bit-identical (resumable)."""
    from fedlora_cli.federation.client import ClientNoise, LocalTrainer
    from fedlora_cli.federation.experiment import build_model
    from fedlora_cli.models import adapter_state, load_adapter_state

    recipe = tiny_recipe_obj(tiny_model_dir)
    model, _ = build_model(recipe, 3)
    start = adapter_state(model)
    trainer = LocalTrainer(model, recipe.federation, private=True)
    data = outlier_dataset(tiny_model_dir)
    runs = {}
    for secure in (False, True):
        for attempt in range(2):
            load_adapter_state(model, start)
            trainer.train(data, 1, seed=5, noise=ClientNoise(1.0, 1.0, 1.0, secure_mode=secure))
            runs[secure, attempt] = adapter_vector(model)
    assert torch.equal(runs[False, 0], runs[False, 1])
    assert not torch.equal(runs[True, 0], runs[True, 1])


def test_update_noise_multiplier_of_adaptive_clipping():
    """σ_Δ from z, checked against z = (σ_Δ⁻² + (2σ_b)⁻²)^(−1/2) (Andrew et al. 2021)."""
    z, sigma_b = 1.0, 0.8
    sigma_delta = update_noise_multiplier(z, sigma_b)
    assert sigma_delta > z
    assert (sigma_delta**-2 + (2 * sigma_b) ** -2) ** -0.5 == pytest.approx(z, rel=1e-12)
    with pytest.raises(InputError, match="clipped_count_stddev"):
        update_noise_multiplier(2.0, 0.9)


def test_adaptive_clip_moves_toward_the_target_quantile():
    m = 20
    norms = torch.linspace(1.0, 10.0, m)  # median 5.5
    dp = make_client_dp(noise=0.5, clip=0.1, m=m, k=40, adaptive=True, count_stddev=0.5, target_quantile=0.5, clip_lr=0.2)
    assert dp.update_noise_multiplier > dp.noise_multiplier  # the count noise takes part of the budget
    glob = {"w": torch.zeros(4)}
    uploads = [{"w": torch.tensor([float(n), 0.0, 0.0, 0.0])} for n in norms]
    history = []
    for round_index in range(80):
        dp.privatize(glob, uploads, torch.Generator().manual_seed(round_index))
        history.append(dp.clip)
    assert history[0] > 0.1  # every update is above C: C grows (b̃ ≈ 0 < γ)
    late = history[-20:]
    assert 4.0 < sum(late) / len(late) < 7.0  # settles near the median 5.5
    # a high target quantile settles higher
    dp90 = make_client_dp(noise=0.5, clip=0.1, m=m, k=40, adaptive=True, count_stddev=0.5, target_quantile=0.9)
    for round_index in range(80):
        dp90.privatize(glob, uploads, torch.Generator().manual_seed(round_index))
    assert dp90.clip > 8.0


def test_client_level_accounting_uses_rounds_and_client_rate():
    dp = make_client_dp(noise=1.0, m=5, k=50)
    assert dp.sample_rate == pytest.approx(0.1)
    assert dp.epsilon(0) == 0
    assert dp.epsilon(30) == pytest.approx(opacus_epsilon(1.0, 0.1, 30, DELTA, "rdp"), rel=1e-9)
    cfg = PrivacyConfig(level="client", target_epsilon=2.0, adaptive_clipping=True)
    fed = FederationConfig(clients=100, clients_per_round=10, rounds=50)
    calibrated = ClientLevelDP.build(cfg, fed, "fedsvd")
    assert 0.99 * 2.0 <= calibrated.epsilon(50) <= 2.0
    assert calibrated.count_stddev == pytest.approx(max(10 / 20, calibrated.noise_multiplier))
    assert calibrated.update_noise_multiplier <= calibrated.noise_multiplier / math.sqrt(0.75) + 1e-12


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_client_level_epsilon_is_that_of_a_poisson_sampled_gaussian_in_dp_accounting(accountant):
    """T rounds of DP-FedAvg = T-fold PoissonSampledDpEvent(q, GaussianDpEvent(z)), q = m/K,
    checked against Google's dp-accounting (RDP for rdp, PLD for the tight prv estimate)."""
    dp_accounting = pytest.importorskip("dp_accounting")
    from dp_accounting import pld, rdp

    rounds = 200
    cfg = PrivacyConfig(level="client", target_epsilon=None, noise_multiplier=1.2, accountant=accountant)
    dp = ClientLevelDP.build(cfg, FederationConfig(clients=100, clients_per_round=5, rounds=rounds), "fedavg")
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(1.2)), rounds
    )
    google = rdp.RdpAccountant(orders=OPACUS_RDP_ORDERS) if accountant == "rdp" else pld.PLDAccountant()
    expected = google.compose(event).get_epsilon(DELTA)
    assert dp.epsilon(rounds) == pytest.approx(expected, rel=0.02)


def test_client_level_sampling_is_poisson_at_rate_q(urandom_csprng):
    """Each client independently with probability q: the count is Binomial(K, q) (variance
    Kq(1−q), not 0 as for exactly m), empty rounds happen at rate (1−q)^K, reproducible from
    the seed, secret in secure_mode."""
    from fedlora_cli.seeding import derive_seed

    k, m, rounds = 10, 2, 3000
    q = m / k
    dp = make_client_dp(noise=1.0, m=m, k=k)
    samples = [dp.sample_clients(k, derive_seed(0, r, "sample")) for r in range(rounds)]
    counts = torch.tensor([len(s) for s in samples], dtype=torch.float64)
    assert float(counts.mean()) == pytest.approx(k * q, abs=0.1)  # standard error 0.023
    assert float(counts.var()) == pytest.approx(k * q * (1 - q), rel=0.1)  # ~3 standard errors
    empty = float((counts == 0).double().mean())
    assert empty == pytest.approx((1 - q) ** k, abs=0.02)  # 0.107, standard error 0.006
    rates = torch.zeros(k, dtype=torch.float64)
    for sample in samples:
        assert sample == sorted(set(sample)) and all(0 <= c < k for c in sample)
        rates[sample] += 1 / rounds
    assert float((rates - q).abs().max()) < 0.03  # each client at q, standard error 0.007
    assert dp.sample_clients(k, 123) == dp.sample_clients(k, 123)
    secure = make_client_dp(noise=1.0, m=500, k=1000, secure_mode=True)  # equal draws: probability 2^-1000
    assert secure.sample_clients(1000, 123) != secure.sample_clients(1000, 123)


def test_an_empty_client_level_round_releases_noise_and_counts():
    """No client sampled: x' = x + N(0, σ_Δ²C²)/m on the exchanged tensors, the clipped count is
    noised too, and the round is charged (skipping it would reveal the empty round)."""
    sigma, clip, m = 1.3, 0.7, 5
    dp = make_client_dp(noise=sigma, clip=clip, m=m, k=10)
    glob = {"w": torch.zeros(200_000), "frozen": torch.ones(3)}
    new = dp.privatize(glob, [], torch.Generator().manual_seed(0), keys=["w"])
    assert set(new) == {"w"} and dp.rounds_done == 1
    assert float(new["w"].double().std()) == pytest.approx(sigma * clip / m, rel=0.01)
    with pytest.raises(ValueError, match="keys"):
        dp.privatize(glob, [], torch.Generator().manual_seed(0))
    adaptive = make_client_dp(noise=1.0, clip=0.7, m=m, k=10, adaptive=True, count_stddev=1.0)
    adaptive.privatize(glob, [], torch.Generator().manual_seed(0), keys=["w"])
    assert adaptive.clip != 0.7 and adaptive.rounds_done == 1


def test_adaptive_clipping_without_noise_counts_exactly():
    """Noise multiplier 0: σ_b = 0 (as TensorFlow Federated), so the clip moves by the exact
    fraction b of unclipped updates, C ← C·exp(−η(b − γ))."""
    dp = make_client_dp(noise=0.0, clip=2.0, m=4, k=8, adaptive=True, target_quantile=0.5, clip_lr=0.2)
    assert dp.count_stddev == 0 and dp.update_noise_multiplier == 0
    glob = {"w": torch.zeros(2)}
    uploads = [{"w": torch.tensor([n, 0.0])} for n in (1.0, 3.0, 5.0, 7.0)]  # one of four below C = 2
    for seed in range(3):
        dp.clip = 2.0
        dp.privatize(glob, uploads, torch.Generator().manual_seed(seed))
        assert dp.clip == pytest.approx(2.0 * math.exp(-0.2 * (0.25 - 0.5)), rel=1e-12)
    assert make_client_dp(noise=0.0, adaptive=True, count_stddev=0.3).count_stddev == 0.3  # an explicit σ_b is kept


@pytest.mark.parametrize("name", sorted(name for name, cls in METHODS.items() if cls.uses_raw_uploads))
def test_methods_with_raw_uploads_are_refused_under_client_level(name):
    tree = {"method": {"name": name}, "privacy": {"level": "client"}}
    with pytest.raises(InputError) as info:
        parse_recipe(tree)
    assert "privacy.level=client" in str(info.value) and f"method.name={name}" in str(info.value)
    with pytest.raises(InputError, match=f"method.name={name}"):
        ClientLevelDP.build(PrivacyConfig(level="client"), FederationConfig(), name)
    tree["privacy"]["level"] = "sample"
    parse_recipe(tree)  # fine at sample level


def test_server_update_only_sees_the_noised_mean():
    """fedsvd's SVD runs on the noised B (post-processing), never on raw uploads."""
    seen = {}

    class Spy:
        def is_trainable(self, key):
            return True

        def server_step(self, global_state, mean, uploads, weights, round_index):  # server optimizer + update
            seen["mean"], seen["uploads"], seen["weights"] = mean, uploads, weights
            return {**global_state, **mean}

    dp = make_client_dp(noise=1.0, clip=1.0, m=2)
    glob = {"b": torch.zeros(3, 2)}
    raw = [{"b": torch.ones(3, 2)}, {"b": -torch.ones(3, 2)}]
    out = dp.aggregate(Spy(), glob, raw, 0, torch.Generator().manual_seed(0))
    assert len(seen["uploads"]) == 1 and seen["uploads"][0] is seen["mean"]
    assert not any(torch.equal(seen["mean"]["b"], r["b"]) for r in raw)
    assert torch.equal(out["b"], seen["mean"]["b"])


# ------------------------------------------------------------------------------ (e) runs and budgets
runner = CliRunner()


def run_train(recipe, *args):
    return runner.invoke(app, ["train", str(recipe), *args, "--json"])


def summary_of(result) -> dict:
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return next(line for line in lines if line["type"] == "summary")


def test_sample_level_run_never_exceeds_its_target(tiny_recipe):
    result = run_train(tiny_recipe)
    assert result.exit_code == 0, result.output
    summary = summary_of(result)
    assert summary["epsilon"] is not None and 0 < summary["epsilon"] <= 8.0
    assert all(e <= 8.0 for e in summary["client_epsilons"])
    assert summary["epsilon"] == max(summary["client_epsilons"])
    assert "example" in summary["epsilon_scope"]
    assert result.stderr.count("secure_mode is off") == 1


def test_client_level_run_reports_per_participation_epsilon_within_target(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    result = run_train(
        tiny_recipe, "privacy.level=client", "privacy.adaptive_clipping=true", "privacy.target_epsilon=5", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    summary = summary_of(result)
    assert 0 < summary["epsilon"] <= 5.0
    assert summary["privacy_level"] == "client"
    assert "participation" in summary["epsilon_scope"]
    assert "Poisson" in summary["client_dp"]["sampling_note"]
    assert summary["client_dp"]["client_weighting"] == "uniform"
    rounds = [json.loads(line) for line in result.stdout.splitlines() if '"type": "round"' in line]
    assert [r["epsilon"] for r in rounds] == sorted(r["epsilon"] for r in rounds)
    assert all(r["client_clip"] > 0 for r in rounds)
    assert rounds[0]["client_clip"] == pytest.approx(0.1)  # privacy.client_clip default, then adapted
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    assert meta["client_clip"] == summary["client_dp"]["client_clip"]  # resume continues the adapted C
    assert result.stderr.count("secure_mode is off") == 1


def test_a_client_level_run_reports_and_charges_an_empty_round(tiny_recipe, tmp_path):
    """Poisson sampling at q = 1/4 of 4 clients: a seed whose round 1 samples nobody. The run
    goes on, reports round 1 with no clients, and its epsilon counts that round."""
    from fedlora_cli.seeding import derive_seed

    dp = make_client_dp(noise=1.0, m=1, k=4)
    seed = next(
        s for s in range(1000)
        if not dp.sample_clients(4, derive_seed(s, 0, "sample")) and dp.sample_clients(4, derive_seed(s, 1, "sample"))
    )
    result = run_train(
        tiny_recipe,
        "privacy.level=client",
        "privacy.target_epsilon=null",
        "privacy.noise_multiplier=1.0",
        "federation.clients_per_round=1",
        f"federation.seed={seed}",
        "--out",
        str(tmp_path / "run"),
    )
    assert result.exit_code == 0, result.output
    rounds = [json.loads(line) for line in result.stdout.splitlines() if '"type": "round"' in line]
    empty, second = rounds
    assert empty["clients"] == [] and empty["train_loss"] is None and empty["bytes_up"] == empty["bytes_down"] == 0
    assert second["clients"] == dp.sample_clients(4, derive_seed(seed, 1, "sample"))
    assert empty["epsilon"] == pytest.approx(opacus_epsilon(1.0, 0.25, 1, DELTA, "rdp"), rel=1e-9)
    assert second["epsilon"] == pytest.approx(opacus_epsilon(1.0, 0.25, 2, DELTA, "rdp"), rel=1e-9)
    summary = summary_of(result)
    assert summary["rounds_completed"] == 2 and sum(summary["client_steps"]) == 3 * len(second["clients"])


def test_max_epsilon_stops_cleanly_before_the_round(tiny_recipe, tmp_path):
    # client level: one round fits under max_epsilon, two do not
    fed = FederationConfig(clients=4, clients_per_round=2, rounds=2)
    dp = ClientLevelDP.build(PrivacyConfig(level="client", target_epsilon=None, noise_multiplier=1.0), fed)
    limit = (dp.epsilon(1) + dp.epsilon(2)) / 2
    out = tmp_path / "run-client"
    result = run_train(
        tiny_recipe,
        "privacy.level=client",
        "privacy.target_epsilon=null",
        "privacy.noise_multiplier=1.0",
        f"privacy.max_epsilon={limit}",
        "--out",
        str(out),
    )
    assert result.exit_code == 3, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 1 and summary["rounds_planned"] == 2
    assert "before round 2" in summary["stopped"] and "privacy.max_epsilon" in summary["stopped"]
    assert summary["epsilon"] <= limit
    assert json.loads((out / "checkpoint" / "meta.json").read_text())["stopped"] == summary["stopped"]

    # sample level: a budget below one round's spend stops before round 1, nothing trained
    out = tmp_path / "run-sample"
    result = run_train(tiny_recipe, "privacy.max_epsilon=0.001", "--out", str(out))
    assert result.exit_code == 3, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 0
    assert "before round 1" in summary["stopped"] and "privacy.max_epsilon=0.001" in summary["stopped"]
    assert summary["epsilon"] == 0.0


# ------------------------------------------------------------------------------ (f) the CLI
def invoke(*args):
    return runner.invoke(app, ["accountant", *args])


def test_accountant_prints_epsilon_json():
    result = invoke("--noise-multiplier", "1.1", "--sample-rate", "0.01", "--steps", "1000", "--delta", "1e-5", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["mode"] == "epsilon"
    assert doc["results"][0]["accountant"] == "rdp"
    assert doc["results"][0]["epsilon"] == pytest.approx(GOLDEN[0][-1], rel=1e-6)


def test_accountant_all_compares_side_by_side_and_target_mode():
    result = invoke("-e", "3", "-q", "0.01", "-t", "1000", "--accountant", "all", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [r["accountant"] for r in doc["results"]] == ["rdp", "prv"]  # gdp does not calibrate
    for row in doc["results"]:
        assert 0.99 * 3 <= row["epsilon"] <= 3
        assert row["epsilon"] == pytest.approx(opacus_epsilon(row["noise_multiplier"], 0.01, 1000, DELTA, row["accountant"]), rel=1e-3)
    sigmas = {r["accountant"]: r["noise_multiplier"] for r in doc["results"]}
    assert sigmas["rdp"] > sigmas["prv"]  # looser accountant, more noise


def test_accountant_human_output_renders_tables():
    from rich.console import Console

    from fedlora_cli.cli.accountant import render
    from fedlora_cli.privacy.planning import direct_plan

    console = Console(record=True, width=200)
    render(
        direct_plan(noise_multiplier=1.1, target_epsilon=None, sample_rate=0.01, steps=1000, delta=DELTA, accountants=["rdp", "gdp"]),
        console,
    )
    text = console.export_text()
    assert "1.712" in text and "1.377" in text and "underestimate" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["-e", "0.01", "-q", "0.5", "-t", "1000", "--json"], "cannot be reached"),
        (["-s", "1", "-e", "1", "-q", "0.1", "-t", "10"], "exactly one of"),
        (["-s", "1", "-q", "1.5", "-t", "10"], "--sample-rate must be in (0, 1]"),
        (["-s", "1", "-t", "10"], "--sample-rate is required"),
        (["-s", "1", "-q", "0.1", "-t", "10", "-a", "moments"], "--accountant must be one of"),
        (["--recipe", "default", "--steps", "3"], "cannot be combined with --recipe"),
        (["-s", "1", "-q", "0.1", "-t", "10", "federation.rounds=3"], "need --recipe"),
    ],
)
def test_accountant_bad_input_exits_2_without_traceback(args, message):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_accountant_for_a_recipe(tiny_recipe):
    # sample level, fixed noise (calibration itself is checked above; it is slow at q < 1)
    fixed = ["privacy.target_epsilon=null", "privacy.noise_multiplier=1.0"]
    result = invoke("--recipe", str(tiny_recipe), *fixed, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["privacy_level"] == "sample" and doc["planned_steps"] == 2 * 3
    assert len(doc["clients"]) == 4 and len(doc["per_round"]) == 2
    for row in doc["clients"]:
        assert row["sample_rate"] == pytest.approx(min(1.0, 8 / row["examples"]))
        # the label prior's share (logit adjustment is on in the recipe) is in every epsilon
        assert row["epsilon"]["rdp"] == pytest.approx(epsilon(1.0, row["sample_rate"], 6, DELTA, "rdp") + doc["prior_epsilon"])
    assert doc["prior_epsilon"] == 0.1
    worst = [r["epsilon"]["rdp"] for r in doc["per_round"]]
    assert worst[0] < worst[1] == pytest.approx(max(row["epsilon"]["rdp"] for row in doc["clients"]))

    # client level, q = clients_per_round / clients, all accountants side by side
    result = invoke("--recipe", str(tiny_recipe), "privacy.level=client", *fixed, "-a", "all", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["client_sample_rate"] == pytest.approx(0.5)
    assert "Poisson" in doc["note"] and "participation" in doc["epsilon_scope"]
    last = doc["per_round"][-1]["epsilon"]
    assert set(last) == {"rdp", "prv", "gdp"}
    assert last["rdp"] == pytest.approx(opacus_epsilon(1.0, 0.5, 2, DELTA, "rdp"))
    assert doc["stops_before_round"] is None

    # client level with a target (every client every round: q = 1, fast to calibrate), and max_epsilon
    target = ["privacy.level=client", "privacy.target_epsilon=2", "federation.clients_per_round=4"]
    result = invoke("--recipe", str(tiny_recipe), *target, "--json")
    doc = json.loads(result.stdout)
    eps = [r["epsilon"]["rdp"] for r in doc["per_round"]]
    assert eps[0] < eps[1] and 0.99 * 2 <= eps[1] <= 2
    result = invoke("--recipe", str(tiny_recipe), *target, f"privacy.max_epsilon={eps[0] * 1.01}", "--json")
    assert json.loads(result.stdout)["stops_before_round"] == 2

    result = invoke("--recipe", str(tiny_recipe), "privacy.target_epsilon=0.001", "--json")
    assert result.exit_code == 2 and "privacy.target_epsilon=0.001" in result.stderr
