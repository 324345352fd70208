"""The privacy policy of a run: everything the round loop asks about privacy, behind one interface.

The round loop (:mod:`fedlora_cli.federation.engine`) never branches on ``privacy.level``; it asks
its policy, in round order:

1. :meth:`PrivacyPolicy.sample` — which clients take part (client level: Poisson at ``q = m/K``,
   what its accountant assumes; otherwise exactly ``m`` of ``K`` without replacement);
2. :meth:`PrivacyPolicy.stop_reason` — whether the round would pass ``privacy.max_epsilon``;
3. :meth:`PrivacyPolicy.noise_for` — each sampled client's DP-SGD setting (sample level only);
4. :meth:`PrivacyPolicy.aggregate` — the method's aggregation, wrapped (client level clips each
   update, averages uniformly and adds noise before the method's server step; Flower's
   ``DifferentialPrivacyServerSideFixedClipping`` strategy wraps a strategy the same way);
5. :meth:`PrivacyPolicy.charge` — what the round cost, when the round is committed;
6. :meth:`PrivacyPolicy.epsilon`, :meth:`report`, :meth:`summary` — what was spent;
7. :meth:`state_dict` / :meth:`load_state_dict` — what a checkpoint keeps.

Before its first round trains, a run with logit adjustment asks
:meth:`PrivacyPolicy.release_label_counts` for the label counts once (exact without DP, noised at
sample level; kept in checkpoints, so a resumed run reuses the release instead of paying twice).

Three policies: :class:`NoPrivacy`, :class:`SampleLevel` (DP-SGD on every client, planned by
:class:`~fedlora_cli.privacy.sample_level.SampleLevelPlan`) and :class:`ClientLevel` (DP-FedAvg,
:class:`~fedlora_cli.privacy.client_level.ClientLevelDP`). A new privacy level is one subclass
and one entry in :data:`POLICIES`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from fedlora_cli.federation.client import ClientNoise
from fedlora_cli.methods.base import State
from fedlora_cli.privacy.client_level import EPSILON_SCOPE, ClientLevelDP, noise_generator
from fedlora_cli.privacy.label_prior import adjustments, noised_label_counts
from fedlora_cli.privacy.sample_level import SampleLevelPlan
from fedlora_cli.recipe import Recipe
from fedlora_cli.seeding import derive_seed


class PrivacyPolicy:
    """The interface; its defaults are the behaviour without privacy. It counts each client's
    local steps (reported in the summary; the unit sample-level DP charges) and aggregates with
    the method as is."""

    level = "none"
    dp_sgd = False  # whether clients train with DP-SGD (the local trainer then wraps the model for Opacus)
    prior_noise_epsilon: float | None = None  # ε of each client's noise on its label counts (None: exact)

    def __init__(self, recipe: Recipe, client_sizes: list[int]):
        self.recipe = recipe
        self.privacy = recipe.privacy
        self.fed = recipe.federation
        self.client_steps = [0] * self.fed.clients
        self.label_counts: list[float] | None = None  # released once, for logit adjustment

    def notes(self) -> list[str]:
        """What the user should know before round 1."""
        return []

    def sample(self, seed: int) -> list[int]:
        """Exactly ``clients_per_round`` of the clients, without replacement, sorted."""
        rng = np.random.default_rng(seed)
        return sorted(rng.choice(self.fed.clients, size=self.fed.clients_per_round, replace=False).tolist())

    def stop_reason(self, round_index: int, sampled: list[int]) -> str | None:
        """Why round ``round_index`` must not run (None: it may)."""
        return None

    def noise_for(self, client: int) -> ClientNoise | None:
        """The DP-SGD setting ``client`` trains with (None: plain training)."""
        return None

    def aggregate(self, method, global_state: State, uploads: list[State], weights: torch.Tensor, round_index: int) -> State:
        """The round's new global state. It may stage privacy state that :meth:`charge` commits."""
        return method.aggregate(global_state, uploads, weights, round_index)

    def round_metrics(self) -> dict:
        """Extra metrics of the round just aggregated."""
        return {}

    def release_label_counts(self, client_labels: list[np.ndarray], num_labels: int, seed: int) -> list[float]:
        """The training labels' class counts, released once (:mod:`~fedlora_cli.privacy.label_prior`):
        every client's histogram plus its own noise of parameter :attr:`prior_noise_epsilon`, summed."""
        if self.label_counts is None:
            generator = noise_generator(self.privacy.secure_mode, seed) if self.prior_noise_epsilon is not None else None
            counts = noised_label_counts(client_labels, num_labels, self.prior_noise_epsilon, generator)
            self.label_counts = counts.tolist()
        return self.label_counts

    def charge(self, steps: dict[int, int], released: bool = True) -> None:
        """Count what a round cost: ``steps[k]`` local steps of client k, and (``released``) the
        aggregate it published. A round abandoned for too few answers, or a late reply, charges
        steps only (``released=False``)."""
        for client, count in steps.items():
            self.client_steps[client] += count

    def epsilon(self) -> float | None:
        """The epsilon spent so far (None without DP)."""
        return None

    def report(self) -> dict:
        """What the run shows about its privacy when it starts."""
        return {}

    def summary(self) -> dict:
        """The privacy fields of ``summary.json``."""
        private = self.level != "none"
        return {
            "privacy_level": self.level,
            "epsilon": self.epsilon(),
            "epsilon_scope": EPSILON_SCOPE.get(self.level),
            "delta": self.privacy.delta if private else None,
            "accountant": self.privacy.accountant if private else None,
            "client_epsilons": None,
            "noise_multipliers": None,
            "label_counts": self.label_counts,
        }

    def state_dict(self) -> dict:
        """JSON-ready state for a checkpoint's ``meta.json``."""
        released = {"label_counts": list(self.label_counts)} if self.label_counts is not None else {}
        return {"client_steps": list(self.client_steps), **released}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint's meta (this policy's keys, plus ``rounds_done``)."""
        self.client_steps = list(state["client_steps"])
        self.label_counts = state.get("label_counts")

    def _target_report(self, noise_multipliers: list[float]) -> dict:
        privacy = self.privacy
        return {
            "noise_multipliers": noise_multipliers,
            "target_epsilon": privacy.target_epsilon,
            "delta": privacy.delta,
            "secure_mode": privacy.secure_mode,
        }


class NoPrivacy(PrivacyPolicy):
    """``privacy.level: none``: the interface's defaults, no noise and no epsilon."""


class SampleLevel(PrivacyPolicy):
    """DP-SGD on every client (Opacus); epsilon per example, the worst client's reported."""

    level = "sample"
    dp_sgd = True

    def __init__(self, recipe: Recipe, client_sizes: list[int]):
        super().__init__(recipe, client_sizes)
        self.plan = SampleLevelPlan.for_recipe(recipe, client_sizes)
        self.prior_noise_epsilon = self.plan.prior_epsilon or None

    def stop_reason(self, round_index: int, sampled: list[int]) -> str | None:
        over = self.plan.would_exceed(sampled, self.fed.local_steps)
        if not over:
            return None
        return f"stopped before round {round_index + 1}: clients {over} would pass privacy.max_epsilon={self.privacy.max_epsilon}"

    def noise_for(self, client: int) -> ClientNoise:
        budget = self.plan.clients[client]
        return ClientNoise(
            budget.sample_rate, budget.noise_multiplier, self.privacy.max_grad_norm, self.privacy.secure_mode, self.privacy.head_clip_share
        )

    def charge(self, steps: dict[int, int], released: bool = True) -> None:
        super().charge(steps, released)
        for client, count in steps.items():
            self.plan.charge(client, count)

    def release_label_counts(self, client_labels: list[np.ndarray], num_labels: int, seed: int) -> list[float]:
        counts = super().release_label_counts(client_labels, num_labels, seed)
        self.plan.prior_released = True
        return counts

    def epsilon(self) -> float:
        """The worst client's epsilon: each client is charged only the steps it took."""
        return self.plan.worst_epsilon()

    def report(self) -> dict:
        return self._target_report(sorted({round(b.noise_multiplier, 4) for b in self.plan.clients}))

    def summary(self) -> dict:
        return {
            **super().summary(),
            "client_epsilons": self.plan.epsilons(),
            "noise_multipliers": [b.noise_multiplier for b in self.plan.clients],
            "prior_epsilon": self.plan.prior_epsilon,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for budget, steps in zip(self.plan.clients, self.client_steps):
            budget.steps = steps
        self.plan.prior_released = self.label_counts is not None


class ClientLevel(PrivacyPolicy):
    """DP-FedAvg on the server: Poisson-sampled clients, clipped updates, uniform noised mean;
    epsilon per client participation, one charge per released round."""

    level = "client"

    def __init__(self, recipe: Recipe, client_sizes: list[int]):
        super().__init__(recipe, client_sizes)
        self.dp = ClientLevelDP.build(self.privacy, self.fed, recipe.method.name)
        self.staged: ClientLevelDP | None = None  # the DP state after the round being computed
        self.round_clip = self.dp.clip  # the clip the round being computed used

    def notes(self) -> list[str]:
        notes = []
        if self.fed.client_weighting != "uniform":
            notes.append(
                "note: privacy.level=client averages client updates uniformly (sensitivity C/m); "
                f"federation.client_weighting={self.fed.client_weighting} is not used"
            )
        asked = [f"federation.{key}={tau}" for key, tau in adjustments(self.recipe).items()]
        if self.recipe.task == "classification" and asked:
            notes.append(
                f"note: privacy.level=client trains on plain cross-entropy and serves f(x): {' and '.join(asked)} "
                "need a label prior, and a client-level private one (a whole client's histogram per unit) is too noisy to use"
            )
        return notes

    def sample(self, seed: int) -> list[int]:
        """Poisson sampling at ``q = clients_per_round/clients`` (may be empty)."""
        return self.dp.sample_clients(self.fed.clients, seed)

    def stop_reason(self, round_index: int, sampled: list[int]) -> str | None:
        if not self.dp.would_exceed():
            return None
        return (
            f"stopped before round {round_index + 1}: it would take the client-level epsilon to "
            f"{self.dp.epsilon(self.dp.rounds_done + 1):.4g}, past privacy.max_epsilon={self.privacy.max_epsilon}"
        )

    def aggregate(self, method, global_state: State, uploads: list[State], weights: torch.Tensor, round_index: int) -> State:
        """Clip, noise and average uniformly (``weights`` unused), then the method's server step.
        The moved clip and round count are staged until :meth:`charge` commits the round."""
        self.staged = replace(self.dp)
        self.round_clip = self.dp.clip
        seed = derive_seed(self.fed.seed, round_index, "server-noise")
        generator = noise_generator(self.privacy.secure_mode, seed, next(iter(global_state.values())).device)
        return self.staged.aggregate(method, global_state, uploads, round_index, generator)

    def round_metrics(self) -> dict:
        return {"client_clip": self.round_clip}

    def charge(self, steps: dict[int, int], released: bool = True) -> None:
        super().charge(steps, released)
        if released:
            self.dp, self.staged = self.staged, None

    def epsilon(self) -> float:
        """Epsilon per client participation after the rounds released so far."""
        return self.dp.epsilon()

    def report(self) -> dict:
        return {
            **self.dp.info(),
            **self._target_report([round(self.dp.noise_multiplier, 4)]),
            "epsilon_scope": EPSILON_SCOPE["client"],
        }

    def summary(self) -> dict:
        return {**super().summary(), "client_dp": self.dp.info()}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "client_clip": self.dp.clip}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.dp.rounds_done = state["rounds_done"]
        self.dp.clip = state.get("client_clip", self.dp.clip)  # checkpoints before adaptive clipping: none


POLICIES: dict[str, type[PrivacyPolicy]] = {"none": NoPrivacy, "sample": SampleLevel, "client": ClientLevel}


def build_policy(recipe: Recipe, client_sizes: list[int]) -> PrivacyPolicy:
    """The policy for ``privacy.level`` (noise calibrated from the recipe's target epsilon)."""
    return POLICIES[recipe.privacy.level](recipe, client_sizes)
