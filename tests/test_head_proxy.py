"""benchmarks/head_proxy.py's DP step, against per-example gradients clipped and weighted by hand, and its
privately released feature mean with the accounting of that release."""

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


def test_private_feature_mean_is_the_clipped_sum_over_the_rows_plus_each_clients_gaussian_noise():
    proxy = load_benchmark("head_proxy")
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, -10.0]])  # norms 5, 0.5, 10
    parts = [torch.tensor([0, 1]), torch.tensor([2])]
    exact = proxy.private_feature_mean(x, parts, clip=1.0, release_noise=0.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(exact, (torch.tensor([0.6, 0.8]) + torch.tensor([0.3, 0.4]) + torch.tensor([0.0, -1.0])) / 3)

    many = torch.zeros(4000, 2)
    noisy = [proxy.private_feature_mean(many, [torch.arange(2000), torch.arange(2000, 4000)], 2.0, 3.0, torch.Generator().manual_seed(s))
             for s in range(400)]
    spread = torch.stack(noisy).std(0)  # two clients, each N(0, (3·2)²) per coordinate, over 4000 rows
    torch.testing.assert_close(spread, torch.full((2,), 6.0 * 2**0.5 / 4000), rtol=0.1, atol=0.0)


def test_noise_with_release_meets_the_target_under_the_composed_renyi_bound():
    """Against the RDP of the Gaussian mechanism, α/(2σ_m²) (Mironov 2017, Prop. 7), added by hand
    to Opacus's subsampled-Gaussian RDP and converted to epsilon."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    from fedlora_cli.privacy.accountants import calibrate_noise

    proxy = load_benchmark("head_proxy")
    target, delta, rate, steps, release = 3.0, 1e-5, 0.1, 200, 2.0
    orders = RDPAccountant.DEFAULT_ALPHAS

    def composed(sigma):
        rdp = compute_rdp(q=rate, noise_multiplier=sigma, steps=steps, orders=orders) + torch.tensor(orders).numpy() / (2 * release**2)
        return get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0]

    sigma = proxy.noise_with_release(target, delta, rate, steps, release)
    assert composed(sigma) <= target
    assert composed(0.99 * sigma) > target  # the smallest such noise, to the search's precision
    assert sigma > calibrate_noise(target, delta, rate, steps)  # the release is paid for


def test_proxy_moves_the_head_by_the_recipes_server_optimizer():
    """The server step is the recipe's: momentum with β = 0 is FedAvg with the same server step, and the
    plain mean (``none``) and adam serve different heads."""
    from fedlora_cli.recipe import load_recipe

    proxy = load_benchmark("head_proxy")
    generator = torch.Generator().manual_seed(0)
    features = {"x_train": torch.randn(120, 4, generator=generator), "y_train": torch.randint(0, 2, (120,), generator=generator),
                "x_test": torch.randn(40, 4, generator=generator), "y_test": torch.randint(0, 2, (40,), generator=generator)}
    base = ["privacy.level=none", "federation.rounds=3", "federation.clients=2", "federation.clients_per_round=2", "partition.method=iid", "method.svd_period=0"]

    def served(*overrides):
        return proxy.proxy_run(features, load_recipe("default", [*base, *overrides]))

    sgd = served("federation.server_optimizer=sgd", "federation.server_lr=2")
    assert served("federation.server_optimizer=momentum", "federation.server_momentum=0", "federation.server_lr=2") == sgd
    assert served("federation.server_optimizer=none")["loss"] != sgd["loss"]
    assert served("federation.server_optimizer=adam", "federation.server_lr=0.03")["loss"] != sgd["loss"]
