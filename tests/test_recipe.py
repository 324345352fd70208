"""Recipe loading, overrides and the all-problems-at-once error contract of `fedlora train`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.errors import InputError
from fedlora_cli.recipe import load_recipe
from fedlora_cli.validate import check_recipe

runner = CliRunner()


def write(tmp_path: Path, tree: dict, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def test_default_recipe_loads_with_the_documented_settings():
    recipe = load_recipe()
    assert recipe.model.name == "minilm"
    assert recipe.data.source == "bbc_news"
    assert (recipe.partition.method, recipe.partition.alpha) == ("dirichlet", 0.5)
    assert (recipe.federation.clients, recipe.federation.clients_per_round) == (6, 6)
    assert (recipe.federation.rounds, recipe.federation.epochs, recipe.federation.local_steps) == ("auto", 8, 5)
    assert (recipe.federation.server_optimizer, recipe.federation.server_lr) == ("sgd", 2.0)
    assert recipe.method.name == "fedsvd"
    assert (recipe.privacy.level, recipe.privacy.target_epsilon, recipe.privacy.delta) == ("sample", 6, 1e-5)
    assert recipe.model.base_dropout == 0.0


def test_a_recipe_that_names_only_its_data_trains_with_the_builtin_defaults(tmp_path, tiny_csv):
    """Every key a recipe leaves out takes the built-in default recipe's value (README, "Recipes"):
    a user who writes only a data section gets the settings that were measured to learn, not an
    older set (until 2026-12 the schema still said lr 0.5, 3 of 6 clients, 5 rounds, no server step)."""
    data = {"source": str(tiny_csv), "text_column": "text", "label_column": "label"}
    minimal = load_recipe(str(write(tmp_path, {"data": data}))).resolved()
    builtin = load_recipe("default", [f"data.source={tiny_csv}"]).resolved()
    for section in ("model", "partition", "federation", "method", "privacy", "output"):
        assert minimal[section] == builtin[section], section
    assert {k: v for k, v in minimal["data"].items() if k != "source"} == {k: v for k, v in builtin["data"].items() if k != "source"}


def test_overrides_use_dotted_keys_and_yaml_values():
    recipe = load_recipe(None, ["federation.rounds=3", "model.target_modules=[query]", "privacy.level=none"])
    assert recipe.federation.rounds == 3
    assert recipe.model.target_modules == ["query"]
    assert recipe.privacy.level == "none"


def test_every_schema_problem_is_listed_at_once_with_did_you_mean(tmp_path):
    path = write(
        tmp_path,
        {
            "model": {"rnak": 8, "rank": 0},
            "federation": {"clients": 3, "clients_per_round": 5},
            "method": {"name": "fedsdv"},
            "privacy": {"accountant": "moments"},
        },
    )
    with pytest.raises(InputError) as info:
        load_recipe(str(path))
    text = "\n".join(info.value.problems)
    assert "model.rnak: unknown key (did you mean 'rank'?)" in text
    assert "model.rank" in text and "greater than or equal to 1" in text
    assert "clients_per_round (5) is above clients (3)" in text
    assert "method.name" in text and "did you mean 'fedsvd'" in text
    assert "privacy.accountant" in text
    assert len(info.value.problems) == 5


def test_wrong_type_names_the_key(tmp_path):
    path = write(tmp_path, {"federation": {"rounds": "many"}})
    with pytest.raises(InputError) as info:
        load_recipe(str(path))
    assert info.value.problems[0].startswith("federation.rounds:")
    assert "'many'" in info.value.problems[0]


def test_data_problems_are_reported_together_with_schema_problems(tmp_path, tiny_csv):
    path = write(tmp_path, {"model": {"rank": 0}, "data": {"source": str(tiny_csv), "label_column": "lable"}})
    with pytest.raises(InputError) as info:
        check_recipe(str(path))
    text = "\n".join(info.value.problems)
    assert "model.rank" in text
    assert "data.label_column: column 'lable' not in" in text and "did you mean 'label'" in text


def test_missing_data_file_and_too_small_dataset(tmp_path, tiny_csv):
    with pytest.raises(InputError, match="data file not found"):
        check_recipe(str(write(tmp_path, {"data": {"source": str(tmp_path / "nope.csv")}})))
    tree = {"data": {"source": str(tiny_csv)}, "federation": {"clients": 40, "clients_per_round": 2}}
    with pytest.raises(InputError, match="too few for 40 clients"):
        check_recipe(str(write(tmp_path, tree, "small.yaml")))


def test_relative_data_paths_resolve_against_the_recipe_file(tmp_path, tiny_csv):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.csv").write_text(tiny_csv.read_text())
    path = write(tmp_path / "sub", {"data": {"source": "d.csv"}})
    assert Path(load_recipe(str(path)).data.source) == (tmp_path / "sub" / "d.csv").resolve()


def test_bad_recipe_exits_2_without_traceback_or_run_directory(tmp_path):
    out = tmp_path / "runs"
    path = write(tmp_path, {"model": {"rank": 0}, "output": {"dir": str(out)}, "data": {"source": "missing.csv"}})
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "2 problems" in result.output and "model.rank" in result.output and "missing.csv" in result.output
    assert not out.exists()


def test_bad_override_and_unknown_recipe_exit_2(tmp_path):
    result = runner.invoke(app, ["train", "federation.rounds=0", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "federation.rounds" in result.output
    assert not (tmp_path / "o").exists()
    result = runner.invoke(app, ["train", "defualt"])
    assert result.exit_code == 2 and "did you mean 'default'" in result.output


def test_recipes_list_show_validate(tmp_path):
    listed = runner.invoke(app, ["recipes", "list", "--json"])
    assert listed.exit_code == 0 and "default" in listed.output
    shown = runner.invoke(app, ["recipes", "show", "default"])
    assert shown.exit_code == 0 and shown.output.startswith("# fedlora train")
    bad = write(tmp_path, {"federation": {"clientz": 3}})
    checked = runner.invoke(app, ["recipes", "validate", "default", str(bad)])
    assert checked.exit_code == 2
    assert "default: ok" in checked.output and "did you mean 'clients'" in checked.output


def test_recipes_validate_checks_the_rank_against_the_models_layers(tiny_recipe):
    """Training refuses a rank above min(in, out) of an adapted layer; validate says so before any run
    (the tiny BERT's smallest adapted layers are 32×32)."""
    result = runner.invoke(app, ["recipes", "validate", str(tiny_recipe), "model.rank=33", "--json"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (report,) = json.loads(result.output)
    (problem,) = report["problems"]
    assert problem.startswith("model.rank=33 is larger than the adapted layer bert.encoder.layer.0.attention.self.query")
    assert "set model.rank at most 32" in problem
    assert runner.invoke(app, ["recipes", "validate", str(tiny_recipe), "model.rank=32", "--json"]).exit_code == 0


def test_switching_method_by_override_drops_the_files_options_of_the_old_one():
    """default.yaml writes method.svd_period (fedsvd's); `method.name=ffa` (as the README shows) needs no other edit."""
    assert load_recipe("default", ["method.name=ffa"]).method.model_dump() == {"name": "ffa"}
    assert load_recipe("default", ["method.svd_period=3"]).method.svd_period == 3
    with pytest.raises(InputError) as info:
        load_recipe("default", ["method.name=ffa", "method.svd_period=3"])
    assert info.value.problems == [
        "method.svd_period: not an option of method ffa but of fedsvd: remove it, or set method.name=fedsvd; valid keys here: name"
    ]


def test_a_method_section_without_a_name_is_the_default_method():
    assert load_recipe("default", ["method={svd_mode: dense}"]).method.model_dump() == {"name": "fedsvd", "svd_period": 1, "svd_mode": "dense"}


def test_a_choice_that_is_not_a_name_is_an_input_error():
    with pytest.raises(InputError) as info:
        load_recipe("default", ["method.name=[fedavg, ffa]"])
    assert info.value.problems[0].startswith("method.name: unknown method")
