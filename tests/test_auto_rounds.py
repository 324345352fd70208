"""``federation.rounds: auto``: as many rounds as ``epochs`` passes over the training set take,
resolved once the data is read, calibrated for, and written into the run directory as a number."""

from __future__ import annotations

import json

import pytest
import yaml
from opacus.accountants import RDPAccountant
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.errors import InputError
from fedlora_cli.recipe import AUTO_ROUNDS_RANGE, load_recipe
from fedlora_cli.validate import check_recipe

runner = CliRunner()


def test_auto_is_epochs_passes_over_the_training_set_and_the_noise_is_calibrated_for_them(tiny_recipe):
    checked = check_recipe(str(tiny_recipe), ["federation.rounds=auto", "federation.epochs=5"])
    fed = checked.recipe.federation
    # 180 rows, 20% held out: 144 training rows; a round takes 2 clients x 3 steps x 8 examples
    assert len(checked.train) == 144
    assert fed.rounds == round(5 * 144 / (2 * 3 * 8)) == 15
    assert checked.privacy.planned_steps == 15 * 3
    for budget in checked.privacy.clients:  # each client's noise spends the target over 45 steps (Opacus's RDP)
        accountant = RDPAccountant()
        accountant.history = [(budget.noise_multiplier, budget.sample_rate, 45)]
        assert accountant.get_epsilon(delta=1e-5) == pytest.approx(8, rel=0.02)


@pytest.mark.parametrize(("epochs", "rounds"), [(0.1, AUTO_ROUNDS_RANGE[0]), (100, AUTO_ROUNDS_RANGE[1])])
def test_auto_stays_within_its_range(tiny_recipe, epochs, rounds):
    checked = check_recipe(str(tiny_recipe), ["federation.rounds=auto", f"federation.epochs={epochs}"])
    assert checked.recipe.federation.rounds == rounds


def test_the_builtin_default_resolves_to_fifteen_rounds_on_bbc_news():
    """BBC News: 1,780 training rows, 6 clients x 5 steps x 32 examples a round, 8 epochs: 14.8."""
    recipe = load_recipe(None)
    assert (recipe.federation.rounds, recipe.federation.epochs) == ("auto", 8)
    assert recipe.federation.resolved_rounds(1780) == 15


@pytest.mark.parametrize("value", ["many", "0", "2.5", "true", "-3"])
def test_rounds_must_be_a_whole_number_or_auto(value):
    with pytest.raises(InputError) as info:
        load_recipe(None, [f"federation.rounds={value}"])
    assert info.value.problems[0].startswith("federation.rounds: expected a whole number of rounds (1 or more) or auto")


def test_the_run_directory_records_the_rounds_auto_chose(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    overrides = ["federation.rounds=auto", "federation.epochs=0.1", "federation.local_steps=1", "federation.eval_every=0"]
    result = runner.invoke(app, ["train", str(tiny_recipe), *overrides, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "recipe.yaml").read_text(encoding="utf-8"))
    assert saved["federation"]["rounds"] == AUTO_ROUNDS_RANGE[0]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["rounds_completed"] == summary["rounds_planned"] == AUTO_ROUNDS_RANGE[0]
    assert check_recipe(str(out / "recipe.yaml"), saved=True).recipe.federation.rounds == AUTO_ROUNDS_RANGE[0]


def test_recipes_validate_reports_the_rounds_auto_chose(tiny_recipe):
    result = runner.invoke(app, ["recipes", "validate", str(tiny_recipe), "federation.rounds=auto", "federation.epochs=5", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)[0]
    assert (report["rounds"], report["local_steps"]) == (15, 3)
