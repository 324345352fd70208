"""Sample-level DP planning: per-client noise calibration and epsilon tracking.

Client k runs DP-SGD with Poisson rate ``q_k = min(1, batch_size / n_k)``. With a target
epsilon, ``σ_k`` is calibrated so that ``ε(σ_k, q_k, rounds·local_steps, δ) ≤ target``: as if
the client took part in every round (conservative). A client's spent epsilon counts only the
steps it actually took, so with partial participation it stays below the target.

With logit adjustment (:mod:`~fedlora_cli.privacy.label_prior`) every client also releases its
noised label counts once, an ``ε_π``-DP release: DP-SGD is calibrated to ``target − ε_π``, and
once the counts are released (before the first round trains) every epsilon reported is the
DP-SGD one plus ``ε_π`` (basic composition).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedlora_cli.privacy.accountants import calibrate_noise, epsilon
from fedlora_cli.privacy.label_prior import prior_epsilon_of
from fedlora_cli.recipe import FederationConfig, PrivacyConfig, Recipe


@dataclass
class ClientBudget:
    sample_rate: float
    noise_multiplier: float
    steps: int = 0


@dataclass
class SampleLevelPlan:
    cfg: PrivacyConfig
    clients: list[ClientBudget]
    planned_steps: int
    prior_epsilon: float = 0.0  # the label prior's share of the budget (0: the run releases none)
    prior_released: bool = False  # whether it has been spent
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, cfg: PrivacyConfig, fed: FederationConfig, client_sizes: list[int], prior_epsilon: float = 0.0) -> "SampleLevelPlan":
        planned = fed.rounds * fed.local_steps
        rates = [min(1.0, fed.batch_size / size) for size in client_sizes]
        sigma_by_rate: dict[float, float] = {}
        for rate in set(rates):
            if cfg.noise_multiplier is not None:
                sigma_by_rate[rate] = cfg.noise_multiplier
            else:
                sigma_by_rate[rate] = calibrate_noise(cfg.target_epsilon - prior_epsilon, cfg.delta, rate, planned, cfg.accountant)
        return cls(cfg, [ClientBudget(rate, sigma_by_rate[rate]) for rate in rates], planned, prior_epsilon)

    @classmethod
    def for_recipe(cls, recipe: Recipe, client_sizes: list[int]) -> "SampleLevelPlan":
        """The plan of a sample-level recipe, the label prior's share included when it trains with one."""
        return cls.build(recipe.privacy, recipe.federation, client_sizes, prior_epsilon_of(recipe))

    def epsilon_of(self, client: int, steps: int | None = None) -> float:
        """Client ``client``'s epsilon after ``steps`` DP-SGD steps (default: those it took), the
        label prior's included once released."""
        budget = self.clients[client]
        steps = budget.steps if steps is None else steps
        key = (budget.noise_multiplier, budget.sample_rate, steps)
        if key not in self._cache:
            self._cache[key] = epsilon(budget.noise_multiplier, budget.sample_rate, steps, self.cfg.delta, self.cfg.accountant)
        return self._cache[key] + (self.prior_epsilon if self.prior_released else 0.0)

    def epsilons(self) -> list[float]:
        return [self.epsilon_of(k) for k in range(len(self.clients))]

    def worst_epsilon(self) -> float:
        return max(self.epsilons())

    def would_exceed(self, sampled: list[int], local_steps: int) -> list[int]:
        """The sampled clients whose epsilon would pass ``max_epsilon`` after this round."""
        limit = self.cfg.max_epsilon
        if limit is None:
            return []
        unreleased = 0.0 if self.prior_released else self.prior_epsilon  # released before the round trains
        return [k for k in sampled if self.epsilon_of(k, self.clients[k].steps + local_steps) + unreleased > limit]

    def charge(self, client: int, steps: int) -> None:
        self.clients[client].steps += steps
