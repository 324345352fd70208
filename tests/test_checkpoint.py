"""Checkpoint and resume (fedlora_cli/federation/checkpoint.py): the consistent cut around a
server step, and a checkpoint whose meta.json is missing."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.federation.checkpoint import BASE_PREFIX, Checkpoint, RunState
from fedlora_cli.federation.experiment import build_model
from fedlora_cli.federation.run_dir import RunDir
from fedlora_cli.models import adapter_state
from fedlora_cli.privacy.policy import build_policy
from fedlora_cli.recipe import Recipe


def train(*args: str):
    return CliRunner().invoke(app, ["train", *args, "--json"])


def one_round_run(tiny_recipe, out):
    result = train(str(tiny_recipe), "federation.rounds=2", "--out", str(out))
    assert result.exit_code == 0, result.output
    (out / "summary.json").unlink()  # as if it stopped before the end
    return out


def test_resume_without_meta_json_but_with_a_state_file_exits_2_and_writes_nothing(tiny_recipe, tmp_path):
    run = one_round_run(tiny_recipe, tmp_path / "run")
    meta = run / "checkpoint" / "meta.json"
    meta.unlink()
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    result = train("--resume", str(run))
    assert result.exit_code == 2, result.output
    assert f"{meta}: missing, but {run / 'checkpoint'} holds state-00002.safetensors" in result.output
    assert "Restore meta.json from a copy, or delete" in result.output and "Traceback" not in result.output
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before


def test_resume_without_any_checkpoint_starts_again_from_round_0(tiny_recipe, tmp_path):
    run = one_round_run(tiny_recipe, tmp_path / "run")
    shutil.rmtree(run / "checkpoint")
    result = train("--resume", str(run))
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds_completed"] == 2 and len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_checkpoint_during_a_server_step_holds_the_committed_base_weights(tiny_model_dir, tmp_path):
    """fedex folds each round into the base weights in place: between hold() and release() a
    checkpoint keeps the weights from before the server step."""
    recipe = Recipe.model_validate(
        {
            "model": {"name": tiny_model_dir, "rank": 4, "target_modules": ["query", "value"]},
            "method": {"name": "fedex"},
            "federation": {"clients": 4, "clients_per_round": 2},
            "privacy": {"level": "none"},
        }
    )
    model, method = build_model(recipe, num_labels=3)
    run_dir = RunDir.at(tmp_path / "run")
    checkpoint = Checkpoint(run_dir, recipe, method, build_policy(recipe, [10, 10, 10, 10]))
    committed = {m.name: m.base_weight.clone() for m in method.modules}
    checkpoint.hold()
    for module in method.modules:
        module.base_weight.add_(1.0)  # what the server step does to the live weights
    checkpoint.save(adapter_state(model), RunState(rounds_done=1))

    def saved_base() -> dict[str, torch.Tensor]:
        state = json.loads((run_dir.checkpoint_path / "meta.json").read_text())["state_file"]
        tensors = load_file(str(run_dir.checkpoint_path / state))
        return {k.removeprefix(BASE_PREFIX): v for k, v in tensors.items() if k.startswith(BASE_PREFIX)}

    assert saved_base().keys() == committed.keys()
    assert all(saved_base()[name].equal(weight) for name, weight in committed.items())
    checkpoint.release()
    checkpoint.save(adapter_state(model), RunState(rounds_done=1))
    assert all(saved_base()[m.name].equal(m.base_weight) for m in method.modules)
