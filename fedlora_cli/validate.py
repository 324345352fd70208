"""Whole-recipe validation: schema, data files, client split and privacy plan, every problem at once.

Everything a run can refuse is found here, before a run directory exists: a failing plan (a
target epsilon below the accountant's floor, a too small ``clipped_count_stddev``, an infinite
noise multiplier) is an input error like a missing column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from fedlora_cli.data.partition import partition
from fedlora_cli.data.partitioners import REGISTRY as PARTITIONERS, PartitionOptions
from fedlora_cli.data.sources import BUILTIN_SOURCES, TextDataset, load_datasets
from fedlora_cli.device import device_problems
from fedlora_cli.errors import InputError
from fedlora_cli.privacy.accountants import ACCOUNTANTS, gdp_calibration_refusal, too_many_steps
from fedlora_cli.privacy.secure_random import secure_mode_problem
from fedlora_cli.tasks import load_task_datasets
from fedlora_cli.recipe import (
    DataConfig,
    FederationConfig,
    ModelConfig,
    Recipe,
    apply_overrides,
    parse_recipe,
    read_recipe_tree,
    resolve_recipe_path,
    _resolve_data_paths,
)


@dataclass
class CheckedRecipe:
    recipe: Recipe
    source: Path
    train: TextDataset
    test: TextDataset
    client_indices: list[np.ndarray]
    privacy: Any  # SampleLevelPlan (sample level), ClientLevelDP (client level) or None


def _missing_data_paths(data: DataConfig, recipe_dir: Path) -> list[str]:
    """A not-found problem for each data path that exists nowhere, naming the absolute paths tried.

    :func:`~fedlora_cli.recipe._resolve_data_paths` makes every data path it finds absolute,
    trying the current directory first and the recipe file's folder second; a relative path
    left unresolved was found in neither.
    """
    problems = []
    for key in ("source", "test_path"):
        value = getattr(data, key)
        if value is None or value in BUILTIN_SOURCES or Path(value).exists():
            continue
        tried = dict.fromkeys(str(p.resolve()) for p in (Path(value), recipe_dir / value))
        problems.append(
            f"data.{key}: data file not found: {value} (looked for {' and '.join(tried)}; a relative path is read "
            "from the current directory, else from the recipe file's folder); fix the path in the recipe"
        )
    return problems


def _non_finite_privacy(recipe: Recipe) -> list[str]:
    privacy = recipe.privacy
    return [
        f"privacy.{key}: must be a finite number (got {value}); set a finite one, e.g. privacy.{key}={example}"
        for key, value, example in (
            ("noise_multiplier", privacy.noise_multiplier, 1.0),
            ("target_epsilon", privacy.target_epsilon, 6),
        )
        if value is not None and not math.isfinite(value)
    ]


def _prior_over_budget(recipe: Recipe) -> list[str]:
    """The label prior's share must leave DP-SGD some of ``target_epsilon``."""
    from fedlora_cli.privacy.label_prior import adjustments, prior_epsilon_of

    prior, target = prior_epsilon_of(recipe), recipe.privacy.target_epsilon
    if not prior or target is None or prior < target:
        return []
    return [
        f"privacy.prior_epsilon={prior} leaves nothing of privacy.target_epsilon={target} for DP-SGD; "
        f"lower it (e.g. privacy.prior_epsilon={target / 60:.3g}) or set {' and '.join(f'federation.{key}=0' for key in adjustments(recipe))}"
    ]


def _slow_accountant(recipe: Recipe) -> list[str]:
    """An accountant over more than its ``max_steps`` (a client's rounds x local_steps at sample
    level, the rounds at client level) would take minutes (prv): refused."""
    fed, privacy = recipe.federation, recipe.privacy
    steps = fed.rounds * (fed.local_steps if privacy.level == "sample" else 1)
    problem = too_many_steps(privacy.accountant, steps)
    return [f"privacy.accountant={privacy.accountant}: {steps} steps (federation.rounds x local_steps): {problem}"] if problem else []


def plan_privacy(recipe: Recipe, client_sizes: list[int]):
    """The run's privacy plan, exactly as the round loop builds it (noise calibrated per client
    size at sample level, per round at client level), or None without DP. Raises InputError.

    A ``privacy.max_epsilon`` below what one round costs is not a planning error: the run stops
    before round 1 with exit code 3, as at any other round.
    """
    if recipe.privacy.level == "none":
        return None
    problems = _non_finite_privacy(recipe) + _prior_over_budget(recipe) + _slow_accountant(recipe)
    if problems:
        raise InputError(problems)
    # opacus loads only when a recipe asks for DP
    from fedlora_cli.privacy.client_level import ClientLevelDP
    from fedlora_cli.privacy.sample_level import SampleLevelPlan

    if recipe.privacy.level == "sample":
        return SampleLevelPlan.for_recipe(recipe, client_sizes)
    return ClientLevelDP.build(recipe.privacy, recipe.federation, recipe.method.name)


def check_rank(model_cfg: ModelConfig, task: str = "classification") -> None:
    """``model.rank`` against the adapted layers' shapes, as training checks it
    (:func:`fedlora_cli.models._check_rank`), on a skeleton of the model built from its config on
    the meta device (no weights are read or allocated). Raises InputError naming the layer and the
    largest allowed rank; a model that cannot be loaded is left to the loader's own error."""
    import torch
    from peft import LoraConfig
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from fedlora_cli.models import LOCAL_CODE_FREE, _check_rank, resolve_model_path

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(model_cfg.name), **LOCAL_CODE_FREE)
    except (OSError, ValueError):
        return
    with torch.device("meta"):
        auto_class = AutoModelForCausalLM if task == "causal_lm" else AutoModelForSequenceClassification
        skeleton = auto_class.from_config(config)
    _check_rank(skeleton, LoraConfig(r=model_cfg.rank, target_modules=list(model_cfg.target_modules)))


def _data_problems(data: DataConfig, fed: FederationConfig | None, part: PartitionOptions | None, recipe: Recipe | None):
    """Data and split problems, and the loaded data when there are none (read as the recipe's task
    reads it; without a valid recipe, as classification data)."""
    try:
        train, test = load_task_datasets(recipe) if recipe is not None else load_datasets(data)
    except InputError as exc:
        return exc.problems, None
    if fed is None or part is None:
        return [], None
    try:
        clients = partition(np.asarray(train.labels), fed.clients, part)
    except InputError as exc:
        return exc.problems, None
    return [], (train, test, clients)


def _section(validate, tree: dict, key: str):
    """The section ``key`` validated on its own by ``validate``, or None when it is invalid."""
    try:
        return validate(tree.get(key) or {})
    except ValidationError:
        return None


def check_recipe(name_or_path: str | None, overrides: list[str] | None = None, *, saved: bool = False) -> CheckedRecipe:
    """Load, override and validate a recipe, read its data, split it into clients and plan its privacy.
    ``federation.rounds: auto`` becomes the number it stands for here (it needs the data's size),
    so the returned recipe, and the run directory's copy of it, carry a whole number.

    Raises one :class:`InputError` listing every problem: schema problems and, whenever the
    data section itself is valid, the data and partition problems too; the privacy plan is
    made once the rest is sound (it needs the client sizes).
    """
    path = resolve_recipe_path(name_or_path)
    tree = read_recipe_tree(path, saved=saved)
    problems = apply_overrides(tree, overrides or [])
    recipe = None
    try:
        recipe = parse_recipe(tree, source=str(path), base_dir=path.parent)
    except InputError as exc:
        problems += exc.problems
    if recipe is not None:
        data_cfg, fed, part = recipe.data, recipe.federation, recipe.partition
        privacy = recipe.privacy
        if privacy.level != "none" and privacy.secure_mode and secure_mode_problem():
            problems.append(secure_mode_problem())
        problems += device_problems(fed.device, privacy.level != "none" and privacy.secure_mode)
        if privacy.level != "none" and privacy.noise_multiplier == 0:
            problems.append(
                f"privacy.noise_multiplier=0 with privacy.level={privacy.level} adds no noise: epsilon is infinite; "
                "set privacy.level=none to train without DP, or a noise multiplier above 0"
            )
        if privacy.level != "none" and privacy.target_epsilon is not None and not ACCOUNTANTS[privacy.accountant].calibrates:
            problems.append(gdp_calibration_refusal(f"privacy.accountant={privacy.accountant}"))
    else:
        data_cfg = _section(DataConfig.model_validate, tree, "data")
        if data_cfg is not None:
            _resolve_data_paths(data_cfg, path.parent)
        fed = _section(FederationConfig.model_validate, tree, "federation")
        part = _section(PARTITIONERS.parse, tree, "partition")
    loaded = None
    if data_cfg is not None and (recipe is not None or tree.get("task") != "causal_lm"):
        missing = _missing_data_paths(data_cfg, path.parent)
        data_problems, loaded = (missing, None) if missing else _data_problems(data_cfg, fed, part, recipe)
        problems += data_problems
    if problems:
        raise InputError(problems, source=str(path))
    train, test, clients = loaded
    recipe.federation.rounds = recipe.federation.resolved_rounds(len(train))
    try:
        privacy = plan_privacy(recipe, [len(indices) for indices in clients])
    except InputError as exc:
        raise InputError(exc.problems, source=str(path)) from None
    return CheckedRecipe(recipe, path, train, test, clients, privacy)
