"""Whole-recipe validation: schema, data files and client split, every problem at once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from fedlora_cli.data.partition import partition
from fedlora_cli.data.sources import TextDataset, load_datasets
from fedlora_cli.errors import InputError
from fedlora_cli.privacy.secure_random import secure_mode_problem
from fedlora_cli.recipe import (
    DataConfig,
    FederationConfig,
    PartitionConfig,
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


def _data_problems(data: DataConfig, fed: FederationConfig | None, part: PartitionConfig | None):
    """Data and split problems, and the loaded data when there are none."""
    try:
        train, test = load_datasets(data)
    except InputError as exc:
        return exc.problems, None
    if fed is None or part is None:
        return [], None
    try:
        clients = partition(np.asarray(train.labels), fed.clients, part)
    except InputError as exc:
        return exc.problems, None
    return [], (train, test, clients)


def _section(model_cls, tree: dict, key: str):
    try:
        return model_cls.model_validate(tree.get(key) or {})
    except ValidationError:
        return None


def check_recipe(name_or_path: str | None, overrides: list[str] | None = None) -> CheckedRecipe:
    """Load, override and validate a recipe, then read its data and split it into clients.

    Raises one :class:`InputError` listing every problem: schema problems and, whenever the
    data section itself is valid, the data and partition problems too.
    """
    path = resolve_recipe_path(name_or_path)
    tree = read_recipe_tree(path)
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
        if privacy.level != "none" and privacy.target_epsilon is not None and privacy.accountant == "gdp":
            from fedlora_cli.privacy.accountants import gdp_calibration_refusal  # loads opacus: only here

            problems.append(gdp_calibration_refusal())
    else:
        data_cfg = _section(DataConfig, tree, "data")
        if data_cfg is not None:
            _resolve_data_paths(data_cfg, path.parent)
        fed, part = _section(FederationConfig, tree, "federation"), _section(PartitionConfig, tree, "partition")
    loaded = None
    if data_cfg is not None:
        data_problems, loaded = _data_problems(data_cfg, fed, part)
        problems += data_problems
    if problems:
        raise InputError(problems, source=str(path))
    train, test, clients = loaded
    return CheckedRecipe(recipe, path, train, test, clients)
