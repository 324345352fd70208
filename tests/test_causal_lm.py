"""task: causal_lm end to end on tiny decoders (Llama and GPT-2 built from configs), with DP."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedlora_cli.cli import app


def causal_recipe(tmp_path: Path, model_dir: str, data: Path, target_modules: str = "[q_proj, v_proj]", extra: str = "") -> Path:
    text = f"""
name: tiny-sft
task: causal_lm
model: {{name: "{model_dir}", rank: 4, alpha: 8, target_modules: {target_modules}}}
data: {{source: "{data}", test_fraction: 0.2, max_length: 48}}
causal_lm: {{max_new_tokens: 6, generate_samples: 4{extra}}}
partition: {{method: iid, seed: 0, min_samples: 8}}
federation: {{clients: 4, clients_per_round: 2, rounds: 2, local_steps: 2, batch_size: 8, lr: 0.1, eval_every: 1}}
method: {{name: fedavg}}
privacy: {{level: sample, target_epsilon: 8, delta: 1.0e-5, max_grad_norm: 1.0}}
output: {{dir: "{tmp_path / 'runs'}"}}
"""
    path = tmp_path / "sft.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def train_json(recipe: Path) -> dict:
    result = CliRunner().invoke(app, ["train", str(recipe), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return next(line for line in lines if line["type"] == "summary")


@pytest.mark.parametrize("model_fixture,targets", [("tiny_llama_dir", "[q_proj, v_proj]"), ("tiny_gpt2_dir", "[c_attn]")])
def test_private_federated_sft_runs_and_evaluates(request, tmp_path, tiny_sft_jsonl, model_fixture, targets):
    recipe = causal_recipe(tmp_path, request.getfixturevalue(model_fixture), tiny_sft_jsonl, targets)
    summary = train_json(recipe)
    assert summary["rounds_completed"] == 2 and summary["epsilon"] <= 8
    assert math.isfinite(summary["final_loss"]) and summary["final_perplexity"] == pytest.approx(math.exp(summary["final_loss"]))
    assert summary["final_generated"] == 4 and 0 <= summary["final_exact_match"] <= 1
    assert "collapsed" not in summary

    result = CliRunner().invoke(app, ["eval", summary["run_dir"], "--json"])
    assert result.exit_code == 0, result.output
    test = json.loads(result.stdout)["test"]
    assert test["loss"] == pytest.approx(summary["final_loss"]) and test["exact_match"] == summary["final_exact_match"]
