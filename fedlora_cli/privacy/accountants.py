"""Privacy accounting and noise calibration through Opacus's accountants.

A client that ran ``steps`` DP-SGD steps with Poisson rate ``q`` and noise multiplier ``σ``
has spent ``ε(σ, q, steps, δ)`` as computed by the chosen Opacus accountant (``rdp``: Mironov
2017 / Mironov et al. 2019; ``prv``: Gopi et al. 2021; ``gdp``: Dong et al. 2019).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import opacus

from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis.rdp import get_privacy_spent as rdp_privacy_spent
from opacus.accountants.utils import get_noise_multiplier

from fedlora_cli.errors import InputError
from fedlora_cli.privacy.limits import PRV_MAX_STEPS

ACCOUNTANTS = ("rdp", "prv", "gdp")
CALIBRATION_ACCOUNTANTS = ("rdp", "prv")  # upper bounds; gdp's CLT approximation can fall below the true epsilon
CALIBRATION_TOLERANCE = 0.005
PRV_EPS_ERROR = 0.01  # Opacus PRVAccountant.get_epsilon's default eps_error
_CALIBRATIONS: dict[str, float] = {}  # in-process memo of calibrate_noise


def check_parameters(
    *,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    names: dict[str, str] | None = None,
) -> None:
    """Raise one InputError listing every out-of-range accounting parameter: non-finite numbers,
    and more than ``PRV_MAX_STEPS`` steps for the prv accountant.

    ``names`` maps a parameter to how the caller calls it (a flag or a recipe key).
    """
    names = names or {}
    label = lambda key: names.get(key, key)  # noqa: E731
    problems = []
    if not 0 < sample_rate <= 1:
        problems.append(f"{label('sample_rate')} must be in (0, 1] (got {sample_rate})")
    if steps < 1:
        problems.append(f"{label('steps')} must be at least 1 (got {steps})")
    if not 0 < delta < 1:
        problems.append(f"{label('delta')} must be in (0, 1) (got {delta})")
    if accountant not in ACCOUNTANTS:
        problems.append(f"{label('accountant')} must be one of {', '.join(ACCOUNTANTS)} (got {accountant!r})")
    if accountant == "prv" and steps > PRV_MAX_STEPS:
        problems.append(
            f"{label('steps')}={steps}: the prv accountant takes minutes beyond {PRV_MAX_STEPS} steps; "
            f"use {label('accountant')} rdp (fast, slightly looser) or fewer steps"
        )
    if noise_multiplier is not None and not 0 <= noise_multiplier < math.inf:
        problems.append(f"{label('noise_multiplier')} must be a finite number of at least 0 (got {noise_multiplier})")
    if target_epsilon is not None and not 0 < target_epsilon < math.inf:
        problems.append(f"{label('target_epsilon')} must be a finite number above 0 (got {target_epsilon})")
    if problems:
        raise InputError(problems)


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """Epsilon after ``steps`` Poisson-sampled Gaussian steps (0 for no steps, inf for no noise)."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gdp warns on every use; the CLI states its caveat once
        acc = create_accountant(accountant)
        acc.history = [(noise_multiplier, sample_rate, steps)]
        return float(acc.get_epsilon(delta=delta))


def epsilon_floor(delta: float, accountant: str) -> float:
    """The epsilon no amount of noise gets below (the limit σ → ∞), for a fast "unreachable".

    ``rdp``: with zero Rényi divergence the conversion of Balle et al. 2020 (as Opacus does it)
    still gives ``min_α [log((α−1)/α) − (log δ + log α)/(α−1)] > 0`` over Opacus's orders α.
    ``prv``: Opacus reports the PRV estimate plus its ``eps_error`` (0.01). ``gdp``: 0.
    """
    if accountant == "rdp":
        orders = RDPAccountant.DEFAULT_ALPHAS
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "optimal order is the largest alpha": expected in the limit
            eps, _ = rdp_privacy_spent(orders=orders, rdp=[0.0] * len(orders), delta=delta)
        return float(eps)
    if accountant == "prv":
        return PRV_EPS_ERROR
    return 0.0


def _cache_path() -> Path:
    root = os.environ.get("FEDLORA_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedlora"
    return Path(root) / "noise_calibration.json"


def _read_cache(path: Path) -> dict:
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def gdp_calibration_refusal(
    setting: str = "privacy.accountant=gdp",
    noise_setting: str = "privacy.noise_multiplier (with privacy.target_epsilon=null)",
) -> str:
    """Why noise is never calibrated with ``gdp`` (``setting``, ``noise_setting``: how the caller
    spells choosing gdp and giving a fixed noise multiplier; a recipe's keys by default)."""
    return (
        f"{setting} cannot calibrate noise to a target epsilon: its central-limit approximation "
        "can underestimate epsilon (the gdp noise for epsilon 3 at q=0.01, T=1000 is 0.742, which spends 3.88 "
        f"by the tight prv accountant); calibrate with prv (tight) or rdp, or give {noise_setting} "
        "and let gdp report its approximate epsilon"
    )


def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp") -> float:
    """The smallest noise multiplier (within 0.5% in epsilon) whose epsilon stays at or below the target.

    Only the accountants in ``CALIBRATION_ACCOUNTANTS`` calibrate; ``gdp`` is an InputError.
    The search takes seconds per call (Opacus's fractional RDP orders), so results are memoized
    in the process and in ``~/.cache/fedlora/noise_calibration.json`` (``FEDLORA_CACHE_DIR``
    overrides), keyed by every input and the Opacus version. A cached value is only ever used
    for exactly the inputs it was computed for, and only after :func:`_checked_cached_noise`
    re-verified it; anything else is recalibrated and the cache entry rewritten.
    """
    if accountant not in CALIBRATION_ACCOUNTANTS:
        raise InputError(gdp_calibration_refusal())
    key = f"opacus={opacus.__version__}|{accountant}|eps={target_epsilon!r}|delta={delta!r}|q={sample_rate!r}|T={steps}|tol={CALIBRATION_TOLERANCE}"
    if key not in _CALIBRATIONS:
        path = _cache_path()
        cached = _checked_cached_noise(_read_cache(path).get(key), target_epsilon, delta, sample_rate, steps, accountant)
        if cached is not None:
            _CALIBRATIONS[key] = cached
        else:
            _CALIBRATIONS[key] = _search_noise(target_epsilon, delta, sample_rate, steps, accountant)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps({**_read_cache(path), key: _CALIBRATIONS[key]}), encoding="utf-8")
                os.replace(tmp, path)
            except OSError:
                pass  # a read-only home only costs speed
    return _CALIBRATIONS[key]


def _checked_cached_noise(value, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float | None:
    """A cached noise multiplier if it still keeps the search's promise, else None.

    The search returns σ with ``target·(1 − CALIBRATION_TOLERANCE) ≤ ε(σ) ≤ target``; a cached σ
    must be a finite positive number that satisfies the same (ε is recomputed, which is cheap).
    A σ above target breaks privacy; one far below it wastes utility; anything else is malformed.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    spent = epsilon(float(value), sample_rate, steps, delta, accountant)
    return float(value) if target_epsilon * (1 - CALIBRATION_TOLERANCE) <= spent <= target_epsilon else None


def _search_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """Binary search with Opacus's ``get_noise_multiplier``; a target at or below
    :func:`epsilon_floor` is refused at once (the search would otherwise grow σ to 10⁶)."""
    floor = epsilon_floor(delta, accountant)
    if target_epsilon <= floor:
        raise InputError(
            f"privacy.target_epsilon={target_epsilon}: cannot be reached with the {accountant} accountant at "
            f"delta={delta} whatever the noise (its floor is {floor:.4g}); raise the target or delta"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=accountant,
                    epsilon_tolerance=CALIBRATION_TOLERANCE * target_epsilon,
                )
            )
    except ValueError as exc:
        raise InputError(
            f"privacy.target_epsilon={target_epsilon}: cannot be reached with delta={delta}, "
            f"sample rate {sample_rate:.4g} and {steps} steps ({exc}); raise the target or delta"
        ) from None


def epsilon_curve(noise_multiplier: float, sample_rate: float, steps: list[int], delta: float, accountant: str = "rdp") -> list[float]:
    """Epsilon after each of the step counts in ``steps`` (e.g. after every round)."""
    return [epsilon(noise_multiplier, sample_rate, count, delta, accountant) for count in steps]
