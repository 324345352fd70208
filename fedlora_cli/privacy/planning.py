"""Budget planning behind ``fedlora accountant``: plain data, no printing.

Three questions, each answered with the registered accountants
(:data:`~fedlora_cli.privacy.accountants.ACCOUNTANTS`: ``rdp``, ``prv``, ``gdp``):

- epsilon of ``T`` steps of the Poisson-sampled Gaussian mechanism with noise multiplier
  ``σ`` and rate ``q`` at ``δ``: :func:`epsilons_for`;
- the smallest ``σ`` whose epsilon stays at or below a target: :func:`noise_for`;
- what a recipe spends, round by round: :func:`recipe_plan`. Sample level (DP-SGD on each
  client, Poisson rate ``q_k = batch_size/n_k``, ``local_steps`` steps per round) reports the
  worst client as if it took part in every round, which is what the calibration assumes;
  client level (DP-FedAvg, rate ``q = clients_per_round/clients``, one step per round) reports
  the per-participation epsilon.
"""

from __future__ import annotations

from fedlora_cli.errors import InputError
from fedlora_cli.privacy.accountants import (
    ACCOUNTANTS,
    calibrate_noise,
    check_parameters,
    epsilon,
    gdp_calibration_refusal,
)
from fedlora_cli.privacy.client_level import EPSILON_SCOPE, SAMPLING_NOTE, ClientLevelDP
from fedlora_cli.privacy.sample_level import SampleLevelPlan

def accountant_list(choice: str) -> list[str]:
    """``all`` or one accountant name, as a list (InputError for anything else)."""
    if choice == "all":
        return list(ACCOUNTANTS)
    if choice not in ACCOUNTANTS:
        raise InputError(f"--accountant must be one of {', '.join(ACCOUNTANTS)} or all (got {choice!r})")
    return [choice]


def epsilons_for(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountants: list[str]) -> list[dict]:
    """``[{accountant, epsilon}]`` for every accountant in ``accountants``."""
    return [
        {"accountant": name, "epsilon": epsilon(noise_multiplier, sample_rate, steps, delta, name)}
        for name in accountants
    ]


def noise_for(target_epsilon: float, sample_rate: float, steps: int, delta: float, accountants: list[str]) -> list[dict]:
    """``[{accountant, noise_multiplier, epsilon}]``: the calibrated σ and the epsilon it reaches.

    Raises one InputError naming every accountant for which the target cannot be reached, and
    refuses ``gdp``, which reports epsilon but never calibrates.
    """
    for name in accountants:
        if not ACCOUNTANTS[name].calibrates:
            raise InputError(gdp_calibration_refusal(f"--accountant {name}", "--noise-multiplier"))
    results, problems = [], []
    for name in accountants:
        try:
            sigma = calibrate_noise(target_epsilon, delta, sample_rate, steps, name)
        except InputError:
            problems.append(
                f"target epsilon {target_epsilon} cannot be reached with the {name} accountant at delta={delta}, "
                f"sample rate {sample_rate:.4g} and {steps} steps, whatever the noise; "
                "raise --target-epsilon or --delta, or lower --sample-rate or --steps"
            )
            continue
        results.append(
            {"accountant": name, "noise_multiplier": sigma, "epsilon": epsilon(sigma, sample_rate, steps, delta, name)}
        )
    if problems:
        raise InputError(problems)
    return results


def recipe_plan(recipe, client_sizes: list[int], accountants: list[str]) -> dict:
    """What a recipe will spend, as one JSON-ready document.

    The noise is calibrated (or taken from ``privacy.noise_multiplier``) with the recipe's
    ``privacy.accountant``; every accountant in ``accountants`` then evaluates that noise.
    """
    privacy, fed = recipe.privacy, recipe.federation
    if privacy.level == "none":
        raise InputError("privacy.level is none in this recipe: there is no budget to plan; set privacy.level=sample or client")
    doc = {
        "mode": "recipe",
        "recipe": recipe.name,
        "privacy_level": privacy.level,
        "delta": privacy.delta,
        "target_epsilon": privacy.target_epsilon,
        "max_epsilon": privacy.max_epsilon,
        "calibrated_with": privacy.accountant,
        "accountants": accountants,
        "epsilon_scope": EPSILON_SCOPE[privacy.level],
        "rounds": fed.rounds,
        "secure_mode": privacy.secure_mode,
    }
    if privacy.level == "sample":
        plan = SampleLevelPlan.for_recipe(recipe, client_sizes)
        groups = sorted({(b.noise_multiplier, b.sample_rate) for b in plan.clients})
        curves = {
            (sigma, rate, name): [
                epsilon(sigma, rate, t * fed.local_steps, privacy.delta, name) + plan.prior_epsilon for t in range(1, fed.rounds + 1)
            ]
            for sigma, rate in groups
            for name in accountants
        }
        doc["planned_steps"] = plan.planned_steps
        doc["local_steps"] = fed.local_steps
        doc["prior_epsilon"] = plan.prior_epsilon  # the label prior's release (logit adjustment), in every epsilon below
        doc["clients"] = [
            {
                "client": k,
                "examples": size,
                "sample_rate": budget.sample_rate,
                "noise_multiplier": budget.noise_multiplier,
                "planned_steps": plan.planned_steps,
                "epsilon": {name: curves[(budget.noise_multiplier, budget.sample_rate, name)][-1] for name in accountants},
            }
            for k, (size, budget) in enumerate(zip(client_sizes, plan.clients))
        ]
        doc["per_round"] = [
            {
                "round": t,
                "steps": t * fed.local_steps,
                "epsilon": {
                    name: max(curves[(sigma, rate, name)][t - 1] for sigma, rate in groups) for name in accountants
                },
            }
            for t in range(1, fed.rounds + 1)
        ]
        doc["note"] = "epsilon of the worst client, as if it took part in every round (the calibration assumption)"
    else:
        dp = ClientLevelDP.build(privacy, fed, recipe.method.name)
        doc["planned_steps"] = fed.rounds
        doc["client_sample_rate"] = dp.sample_rate
        doc["noise_multiplier"] = dp.noise_multiplier
        doc["update_noise_multiplier"] = dp.update_noise_multiplier
        doc["adaptive_clipping"] = dp.adaptive
        doc["client_clip"] = dp.clip
        doc["clipped_count_stddev"] = dp.count_stddev
        doc["clients"] = [
            {"client": k, "examples": size, "sample_rate": dp.sample_rate, "noise_multiplier": dp.noise_multiplier}
            for k, size in enumerate(client_sizes)
        ]
        doc["per_round"] = [
            {
                "round": t,
                "steps": t,
                "epsilon": {
                    name: epsilon(dp.noise_multiplier, dp.sample_rate, t, privacy.delta, name) for name in accountants
                },
            }
            for t in range(1, fed.rounds + 1)
        ]
        doc["note"] = SAMPLING_NOTE
    doc["stops_before_round"] = None
    if privacy.max_epsilon is not None:
        over = [row["round"] for row in doc["per_round"] if row["epsilon"][privacy.accountant] > privacy.max_epsilon]
        doc["stops_before_round"] = over[0] if over else None
    return doc


def direct_plan(
    *,
    noise_multiplier: float | None,
    target_epsilon: float | None,
    sample_rate: float,
    steps: int,
    delta: float,
    accountants: list[str],
) -> dict:
    """Epsilon for a noise multiplier, or the noise multiplier for a target epsilon."""
    check_parameters(
        sample_rate=sample_rate,
        steps=steps,
        delta=delta,
        accountants=accountants,
        noise_multiplier=noise_multiplier,
        target_epsilon=target_epsilon,
        names={
            "sample_rate": "--sample-rate",
            "steps": "--steps",
            "delta": "--delta",
            "noise_multiplier": "--noise-multiplier",
            "target_epsilon": "--target-epsilon",
            "accountant": "--accountant",
        },
    )
    doc = {"sample_rate": sample_rate, "steps": steps, "delta": delta, "accountants": accountants}
    if noise_multiplier is not None:
        doc.update(mode="epsilon", noise_multiplier=noise_multiplier)
        doc["results"] = epsilons_for(noise_multiplier, sample_rate, steps, delta, accountants)
    else:
        doc.update(mode="noise_multiplier", target_epsilon=target_epsilon)
        doc["results"] = noise_for(target_epsilon, sample_rate, steps, delta, accountants)
    doc["notes"] = {name: ACCOUNTANTS[name].note for name in accountants}
    return doc
