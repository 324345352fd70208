"""The label prior that logit-adjusted training needs, released with its privacy cost counted.

Logit adjustment (Menon et al. 2021, "Long-tail learning via logit adjustment", ICLR) trains a
classifier on ``CE(f(x) + τ·log π, y)``, where π is the training set's label distribution, and
predicts with ``f(x)`` alone: the rare classes must win by a margin while training, which moves
the decision boundary towards the balanced one. Under DP-SGD this matters more than a reweighted
loss would: per-example clipping caps each example's influence at C whatever its weight, while
the adjusted logits change the *direction* of the frequent classes' gradients (their examples
already fit, so their gradients shrink). Under DP the head stays under-fit and the boundary moves
only part of the way, so the served model may also apply the paper's *post-hoc* adjustment,
``argmax_y f_y(x) − τ'·log π_y`` (``federation.posthoc_adjustment``; :func:`served_state`).

π is a statistic of every client's labels, so it is released privately. Each client adds
two-sided geometric noise (the discrete Laplace mechanism, Ghosh et al. 2009) of parameter
``ε_π`` to each of its K class counts: adding or removing one example changes one count by one
(L1 sensitivity 1), so the release is ``ε_π``-DP for every example, pure DP with no δ. The
server sums the noised counts; by basic composition a run that also spends ``(ε, δ)`` on DP-SGD
is ``(ε + ε_π, δ)``-DP. Integer noise keeps the counts integers (no floating-point leak of the
kind Mironov 2012 showed for the continuous Laplace). Without DP the exact counts are used.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedlora_cli.recipe import Recipe


def label_counts(labels: np.ndarray | list[int], num_labels: int) -> torch.Tensor:
    """Examples per class, as float64."""
    return torch.bincount(torch.as_tensor(np.asarray(labels), dtype=torch.long), minlength=num_labels).to(torch.float64)


def geometric_noise(shape: int, epsilon: float, generator: torch.Generator) -> torch.Tensor:
    """Two-sided geometric noise, ``P(Z = z) ∝ exp(−ε|z|)``: the difference of two geometric
    variables ``⌊E/ε⌋`` with ``E ~ Exp(1)`` (``P(⌊E/ε⌋ ≥ k) = e^{−εk}``)."""
    exponentials = -torch.log1p(-torch.rand(2, shape, generator=generator, dtype=torch.float64))
    geometric = torch.floor(exponentials / epsilon)
    return geometric[0] - geometric[1]


def noise_std(epsilon: float | None, clients: int) -> float:
    """Standard deviation of the summed noise on one class count: ``√(clients · 2e^{−ε}/(1 − e^{−ε})²)``
    (the two-sided geometric's variance, per client; 0 without noise)."""
    if epsilon is None:
        return 0.0
    return math.sqrt(clients * 2 * math.exp(-epsilon) / (1 - math.exp(-epsilon)) ** 2)


def noised_label_counts(
    client_labels: list[np.ndarray], num_labels: int, epsilon: float | None, generator: torch.Generator | None
) -> torch.Tensor:
    """``Σ_k (h_k + Z_k)``: every client's class histogram ``h_k`` plus its own two-sided geometric
    noise ``Z_k`` of parameter ``epsilon`` (None: no noise, the exact counts)."""
    total = torch.zeros(num_labels, dtype=torch.float64)
    for labels in client_labels:
        counts = label_counts(labels, num_labels)
        if epsilon is not None:
            counts = counts + geometric_noise(num_labels, epsilon, generator)
        total += counts
    return total


def logit_offset(counts: torch.Tensor, tau: float, floor: float = 1.0) -> list[float]:
    """``τ·log π`` with ``π = max(counts, floor)/Σ max(counts, floor)`` (post-processing of the
    release). Noised counts are floored at the noise's standard deviation (:func:`noise_std`, at
    least 1): a class whose count is lost in the noise is not taken for rarer than the noise can
    tell, which would give it an unbounded margin."""
    floored = counts.clamp(min=max(1.0, floor))
    return [tau * math.log(float(c / floored.sum())) for c in floored]


def prior_offset(counts: list[float], tau: float, prior_epsilon: float | None, clients: int) -> list[float]:
    """``τ·log π`` from a run's released ``counts``: :func:`logit_offset` with the floor at the
    summed noise's standard deviation (``prior_epsilon`` None or 0: exact counts, floor 1)."""
    return logit_offset(torch.tensor(counts, dtype=torch.float64), tau, noise_std(prior_epsilon or None, clients))


def adjustments(recipe: Recipe) -> dict[str, float]:
    """The logit adjustments a recipe turns on (``federation.<key>``: τ > 0), training and post hoc."""
    fed = recipe.federation
    return {key: tau for key, tau in (("logit_adjustment", fed.logit_adjustment), ("posthoc_adjustment", fed.posthoc_adjustment)) if tau > 0}


def uses_label_prior(recipe: Recipe) -> bool:
    """Whether a run releases a label prior: a classification recipe with logit adjustment (in
    training or post hoc), at privacy level none (exact counts) or sample (noised counts). Client
    level has none: a client's whole histogram is its unit of privacy, too noisy to be of use with
    a handful of clients."""
    return recipe.task == "classification" and bool(adjustments(recipe)) and recipe.privacy.level != "client"


def served_state(state: dict[str, torch.Tensor], head_bias: str | None, offset: list[float] | None) -> dict[str, torch.Tensor]:
    """The adapter a run serves (evaluates and saves) under post-hoc logit adjustment (Menon et
    al. 2021, eq. 9): ``f(x) − τ'·log π`` is the head with its bias ``b`` replaced by
    ``b − τ'·log π``, where ``offset`` is ``τ'·log π`` (:func:`logit_offset`). A copy of
    ``state`` with that bias; ``state`` itself without an offset or a ``head_bias`` to fold it into."""
    if offset is None or head_bias is None:
        return state
    bias = state[head_bias]
    return {**state, head_bias: bias - torch.tensor(offset, dtype=bias.dtype, device=bias.device)}


def prior_epsilon_of(recipe: Recipe) -> float:
    """What the label prior costs a sample-level run (0 when it releases none)."""
    return recipe.privacy.prior_epsilon if recipe.privacy.level == "sample" and uses_label_prior(recipe) else 0.0
