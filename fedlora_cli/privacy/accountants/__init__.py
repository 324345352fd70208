"""Privacy accounting and noise calibration through Opacus's accountants.

A client that ran ``steps`` DP-SGD steps with Poisson rate ``q`` and noise multiplier ``σ``
has spent ``ε(σ, q, steps, δ)`` as computed by the chosen accountant. The accountants are one
module each in this package (``rdp``: Mironov 2017 / Mironov et al. 2019; ``prv``: Gopi et
al. 2021; ``gdp``: Dong et al. 2019), registered in :data:`ACCOUNTANTS`. Opacus loads only when
an epsilon or a noise multiplier is computed.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

from fedlora_cli.errors import InputError
from fedlora_cli.privacy.accountants.base import ACCOUNTANTS, DEFAULT_ACCOUNTANT, get_accountant
from fedlora_cli.registry import discover

discover(__name__)

#: upper bounds that may calibrate noise (gdp's CLT approximation can fall below the true epsilon)
CALIBRATION_ACCOUNTANTS = tuple(name for name, cls in ACCOUNTANTS.items() if cls.calibrates)
CALIBRATION_TOLERANCE = 0.005
_CALIBRATIONS: dict[str, float] = {}  # in-process memo of calibrate_noise


def check_parameters(
    *,
    sample_rate: float,
    steps: int,
    delta: float,
    accountants: list[str],
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    names: dict[str, str] | None = None,
) -> None:
    """Raise one InputError listing every out-of-range accounting parameter: non-finite numbers,
    and more steps than one of ``accountants`` allows (its ``max_steps``: prv takes minutes beyond it).

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
    for accountant in accountants:
        if accountant not in ACCOUNTANTS:
            problems.append(f"{label('accountant')} must be one of {', '.join(ACCOUNTANTS)} (got {accountant!r})")
        elif too_many_steps(accountant, steps, label("accountant") + " "):
            problems.append(f"{label('steps')}={steps}: {too_many_steps(accountant, steps, label('accountant') + ' ')}")
    if noise_multiplier is not None and not 0 <= noise_multiplier < math.inf:
        problems.append(f"{label('noise_multiplier')} must be a finite number of at least 0 (got {noise_multiplier})")
    if target_epsilon is not None and not 0 < target_epsilon < math.inf:
        problems.append(f"{label('target_epsilon')} must be a finite number above 0 (got {target_epsilon})")
    if problems:
        raise InputError(problems)


def too_many_steps(accountant: str, steps: int, setting: str = "privacy.accountant=") -> str | None:
    """Why ``steps`` steps are refused for ``accountant`` (beyond its ``max_steps``: minutes), else
    None; ``setting`` is how the caller spells choosing an accountant (a recipe key or a flag)."""
    limit = ACCOUNTANTS[accountant].max_steps
    if limit is None or steps <= limit:
        return None
    fast = next(name for name, cls in ACCOUNTANTS.items() if cls.max_steps is None and cls.calibrates)
    return f"the {accountant} accountant takes minutes beyond {limit} steps; use {setting}{fast} (fast, slightly looser) or fewer steps"


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = DEFAULT_ACCOUNTANT) -> float:
    """Epsilon after ``steps`` Poisson-sampled Gaussian steps (0 for no steps, inf for no noise)."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    return get_accountant(accountant).epsilon(noise_multiplier, sample_rate, steps, delta)


def epsilon_floor(delta: float, accountant: str) -> float:
    """The epsilon no amount of noise gets below (the limit σ → ∞), for a fast "unreachable"."""
    return get_accountant(accountant).floor(delta)


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


def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = DEFAULT_ACCOUNTANT) -> float:
    """The smallest noise multiplier (within 0.5% in epsilon) whose epsilon stays at or below the target.

    Only the accountants in ``CALIBRATION_ACCOUNTANTS`` calibrate; ``gdp`` is an InputError.
    The search takes seconds per call (Opacus's fractional RDP orders), so results are memoized
    in the process and in ``~/.cache/fedlora/noise_calibration.json`` (``FEDLORA_CACHE_DIR``
    overrides), keyed by every input and the Opacus version. A cached value is only ever used
    for exactly the inputs it was computed for, and only after :func:`_checked_cached_noise`
    re-verified it; anything else is recalibrated and the cache entry rewritten.
    """
    import opacus

    if accountant not in CALIBRATION_ACCOUNTANTS:
        raise InputError(gdp_calibration_refusal(f"privacy.accountant={accountant}"))
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
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=get_accountant(accountant).opacus_class().mechanism(),
                    epsilon_tolerance=CALIBRATION_TOLERANCE * target_epsilon,
                )
            )
    except ValueError as exc:
        raise InputError(
            f"privacy.target_epsilon={target_epsilon}: cannot be reached with delta={delta}, "
            f"sample rate {sample_rate:.4g} and {steps} steps ({exc}); raise the target or delta"
        ) from None
