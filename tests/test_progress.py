"""Progress on stderr for the slow phases (issue 16, item 4): model loading, tokenizing, scoring;
nothing on stderr under --json."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.cli.common import progress
from fedlora_cli.federation.artifacts import evaluate_adapter, resolve_target
from fedlora_cli.federation.experiment import build_experiment
from fedlora_cli.validate import check_recipe


def test_build_experiment_names_its_phases(tiny_recipe):
    checked = check_recipe(str(tiny_recipe))
    phases = []
    build_experiment(checked.recipe, checked.train, checked.test, checked.client_indices, phases.append)
    assert phases == [
        f"loading the tokenizer and model {checked.recipe.model.name}",
        f"tokenizing {len(checked.train)} training and {len(checked.test)} test texts",
    ]


def test_eval_names_its_phases_and_is_silent_under_json(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    quick = ["federation.rounds=1", "federation.local_steps=1", "privacy.level=none"]
    assert CliRunner().invoke(app, ["train", str(tiny_recipe), *quick, "--out", str(out), "--json"]).exit_code == 0
    phases = []
    evaluate_adapter(resolve_target(out, None, None), per_client=True, phase=phases.append)
    checked = check_recipe(str(out / "recipe.yaml"))
    assert phases[:3] == [
        "reading the data",
        f"loading the tokenizer, model {checked.recipe.model.name} and adapter",
        f"tokenizing and scoring the test split ({len(checked.test)} texts)",
    ]
    assert phases[3:] == [
        f"tokenizing and scoring client {k} ({len(idx)} texts)" for k, idx in enumerate(checked.client_indices)
    ]
    # the real command (its entry point also silences library progress bars), stdout a pipe
    result = subprocess.run([sys.executable, "-m", "fedlora_cli", "eval", str(out)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == ""
    assert json.loads(result.stdout)["test"]["samples"] == len(checked.test)


def test_progress_hidden_is_a_no_op(capsys):
    with progress("working", show=False) as phase:
        phase("next")
    assert capsys.readouterr() == ("", "")
