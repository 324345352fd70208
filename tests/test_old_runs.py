"""Run directories written by an older fedlora still evaluate, compare and resume.

Before the option registries, a resolved recipe carried every method's and partitioner's options
(``method.svd_period`` under ``fedavg``); before ``federation.device`` existed it had no device.
"""

import pytest
import yaml

from fedlora_cli.errors import InputError
from fedlora_cli.recipe import dump_recipe, load_recipe, recipe_changes


def older_resolved_recipe(tmp_path):
    current = yaml.safe_load(dump_recipe(load_recipe("default", ["method.name=fedavg", "partition.method=iid"])))
    older = yaml.safe_load(dump_recipe(load_recipe("default", ["method.name=fedavg", "partition.method=iid"])))
    older["method"].update({"svd_period": 1, "svd_mode": "thin", "fedsb_init": "random"})
    older["partition"].update({"alpha": 0.5, "labels_per_client": 2})
    del older["federation"]["device"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(older, sort_keys=False), encoding="utf-8")
    return path, older, current


def test_an_older_run_recipe_loads_as_saved_and_is_refused_as_a_user_file(tmp_path):
    path, _, current = older_resolved_recipe(tmp_path)
    assert load_recipe(str(path), saved=True).resolved() == current
    with pytest.raises(InputError, match="method.svd_period"):
        load_recipe(str(path))


def test_schema_changes_are_not_recipe_changes_but_real_changes_are(tmp_path):
    _, older, current = older_resolved_recipe(tmp_path)
    assert recipe_changes(older, current) == []
    current["model"]["rank"] = 4
    assert recipe_changes(older, current) == ["model.rank: 8 -> 4"]


def default_run_recipe_without(tmp_path, *keys: str):
    """The default recipe as a run directory saves it, minus the dotted ``keys`` (a run saved before they existed)."""
    saved = yaml.safe_load(dump_recipe(load_recipe("default")))
    for key in keys:
        section, name = key.split(".")
        del saved[section][name]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(saved, sort_keys=False), encoding="utf-8")
    return path


def test_a_run_saved_before_base_dropout_keeps_the_checkpoints_dropout(tmp_path):
    path = default_run_recipe_without(tmp_path, "model.base_dropout")
    assert load_recipe(str(path), saved=True).model.base_dropout is None  # as it trained
    assert load_recipe(str(path)).model.base_dropout == 0.0  # a user's recipe gets today's default


def test_a_run_saved_before_head_clip_share_keeps_clipping_jointly(tmp_path):
    path = default_run_recipe_without(tmp_path, "privacy.head_clip_share")
    assert load_recipe(str(path), saved=True).privacy.head_clip_share is None  # one joint clip, as it trained
    assert load_recipe(str(path)).privacy.head_clip_share == 0.95  # a user's recipe gets today's default


def test_a_run_saved_before_pooling_head_lr_and_server_steps_keeps_what_it_trained_with(tmp_path):
    """Runs saved before 2026-11-30 had none of these keys: the CLS pooler, the head at lr, the plain mean."""
    path = default_run_recipe_without(
        tmp_path, "model.pooling", "federation.head_lr", "federation.server_optimizer", "federation.server_lr"
    )
    old = load_recipe(str(path), saved=True)
    assert (old.model.pooling, old.federation.head_lr, old.federation.server_optimizer, old.federation.server_lr) == ("cls", None, "none", 1.0)
    new = load_recipe(str(path))  # a user's recipe gets today's defaults
    assert (new.model.pooling, new.federation.head_lr, new.federation.server_optimizer, new.federation.server_lr) == ("auto", 1.0, "sgd", 2.0)
