"""Data paths: relative ones are read from the current directory, else from the recipe's folder,
and a file found in neither is reported with the absolute paths that were tried."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.errors import InputError
from fedlora_cli.validate import check_recipe


def recipe_in(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "r.yaml"
    path.write_text(yaml.safe_dump({"data": data, "partition": {"min_samples": 8}, "privacy": {"level": "none"}}), encoding="utf-8")
    return path


def test_current_directory_wins_over_the_recipe_folder(tmp_path, tiny_csv, monkeypatch):
    here, there = tmp_path / "here", tmp_path / "there"
    recipe = recipe_in(there, {"source": "d.csv"})
    (there / "d.csv").write_text(tiny_csv.read_text())
    here.mkdir()
    monkeypatch.chdir(here)
    assert Path(check_recipe(str(recipe)).recipe.data.source) == there / "d.csv"
    (here / "d.csv").write_text(tiny_csv.read_text())
    assert Path(check_recipe(str(recipe)).recipe.data.source) == here / "d.csv"


def test_not_found_names_every_absolute_path_tried(tmp_path, tiny_csv, monkeypatch):
    recipe = recipe_in(tmp_path / "recipes", {"source": "data/nope.csv", "test_path": str(tmp_path / "gone.csv")})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as info:
        check_recipe("recipes/r.yaml")
    source, test = info.value.problems
    assert source.startswith("data.source: data file not found: data/nope.csv")
    assert str(tmp_path / "data" / "nope.csv") in source and str(tmp_path / "recipes" / "data" / "nope.csv") in source
    assert test.startswith(f"data.test_path: data file not found: {tmp_path / 'gone.csv'}")


def test_train_shows_the_paths_and_exits_2(tmp_path, monkeypatch):
    recipe = recipe_in(tmp_path / "recipes", {"source": "nope.csv"})
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", str(recipe), "--json"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert str(tmp_path / "nope.csv") in result.stderr and str(tmp_path / "recipes" / "nope.csv") in result.stderr


@pytest.mark.parametrize(
    "args, what, missing",
    [
        (["eval", "runs/gone"], "RUN_DIR", "runs/gone"),
        (["eval", "--adapter", "gone", "--recipe", "default"], "--adapter", "gone"),
        (["train", "--resume", "runs/gone"], "--resume", "runs/gone"),
    ],
)
def test_missing_paths_on_the_command_line_show_the_absolute_path(tmp_path, monkeypatch, args, what, missing):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{what} {missing}: not found (looked for {tmp_path / missing})" in result.stderr


def test_eval_data_file_missing(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["eval", "run", "--data", "other.csv"])
    assert result.exit_code == 2
    assert f"--data other.csv: not found (looked for {tmp_path / 'other.csv'})" in result.stderr


def test_a_missing_recipe_file_shows_the_absolute_path_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "recipes/mine.yaml"])
    assert result.exit_code == 2
    assert str(tmp_path / "recipes" / "mine.yaml") in result.output.replace("\n", "")
