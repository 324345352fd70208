"""`fedlora eval`, `fedlora compare`, run plots, `recipes copy` and NO_COLOR, on tiny real runs."""

from __future__ import annotations

import io
import json

import pytest
import torch
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.federation.artifacts import fairness, load_adapter_model
from fedlora_cli.federation.run_dir import RunDir
from fedlora_cli.recipe import builtin_recipes, load_recipe

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_train_eval_compare_on_tiny_runs(tiny_recipe, tiny_csv, tmp_path, monkeypatch):
    private, plain = tmp_path / "private", tmp_path / "plain"
    # DP-SGD with a fixed noise multiplier: calibrating one per client costs more than the run itself
    result = invoke("train", tiny_recipe, "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0", "--out", private, "--json")
    assert result.exit_code == 0, result.output
    summary = last_json(result.stdout)
    assert summary["type"] == "summary" and summary["epsilon"] > 0
    result = invoke("train", tiny_recipe, "method.name=fedavg", "privacy.level=none", "--out", plain, "--json")
    assert result.exit_code == 0, result.output
    plain_summary = last_json(result.stdout)

    # the run plot is written at the end of every run
    for run in (private, plain):
        assert (run / "metrics.png").read_bytes()[:8] == PNG_MAGIC

    # eval of the final adapter reproduces the run's own final test score exactly
    result = invoke("eval", private, "--json")
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout)
    assert scored["test"]["accuracy"] == summary["final_accuracy"]
    assert scored["test"]["loss"] == pytest.approx(summary["final_loss"], abs=1e-6)
    assert scored["test"]["samples"] == 36 and 0 <= scored["test"]["macro_f1"] <= 1
    assert scored["method"] == "fedsvd"

    # --predictions: every test example's prediction, from the logits that give the same scores
    predictions = tmp_path / "predictions.jsonl"
    result = invoke("eval", private, "--predictions", predictions, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["test"] == scored["test"] and json.loads(result.stdout)["predictions"] == str(predictions)
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    names = scored["label_names"]
    assert [r["row"] for r in rows] == list(range(36)) and all(r["text"] for r in rows)
    for r in rows:
        assert list(r["logits"]) == names and list(r["probabilities"]) == names
        assert r["predicted"] == max(names, key=r["logits"].__getitem__)
        logits = torch.tensor([r["logits"][n] for n in names])
        assert [r["probabilities"][n] for n in names] == pytest.approx(torch.softmax(logits, 0).tolist(), abs=1e-5)
    assert sum(r["predicted"] == r["label"] for r in rows) / 36 == summary["final_accuracy"]  # the run's own model, in memory
    assert [sum(r["predicted"] == n for r in rows) for n in names] == scored["test"]["predicted_counts"]

    # --adapter/--recipe is the same evaluation; --per-client and --data add sections
    result = invoke(
        "eval", "--adapter", private / "adapter", "--recipe", private / "recipe.yaml", "--per-client", "--data", tiny_csv, "--json"
    )
    assert result.exit_code == 0, result.output
    full = json.loads(result.stdout)
    assert full["test"] == scored["test"]
    assert [c["samples"] for c in full["clients"]] == summary["client_sizes"]
    accuracies = [c["accuracy"] for c in full["clients"]]
    assert full["fairness"]["worst_accuracy"] == min(accuracies)
    assert full["fairness"]["mean_accuracy"] == pytest.approx(sum(accuracies) / len(accuracies))
    assert full["data"]["samples"] == 180

    # human output: a table and the fairness line
    import fedlora_cli.cli.eval as eval_cli

    monkeypatch.setattr(eval_cli, "wants_json", lambda flag: flag)
    result = invoke("eval", plain, "--per-client", "--predictions", tmp_path / "plain.jsonl")
    assert result.exit_code == 0, result.output
    assert "predictions: 36 rows in" in result.stdout and len((tmp_path / "plain.jsonl").read_text().splitlines()) == 36
    assert "accuracy" in result.stdout and "macro-F1" in result.stdout and "client 3" in result.stdout
    assert "worst" in result.stdout and "spread" in result.stdout
    assert f"{plain_summary['final_accuracy']:.4f}" in result.stdout

    # compare: one plot, one side-by-side table
    png = tmp_path / "cmp.png"
    result = invoke("compare", private, plain, "--png", png, "--json")
    assert result.exit_code == 0, result.output
    compared = json.loads(result.stdout)
    assert png.read_bytes()[:8] == PNG_MAGIC
    runs = {r["label"]: r for r in compared["runs"]}
    assert runs["private"]["final_accuracy"] == summary["final_accuracy"]
    assert runs["private"]["epsilon"] == summary["epsilon"]
    assert runs["plain"]["epsilon"] is None and runs["plain"]["method"] == "fedavg"
    assert runs["plain"]["bytes_up_total"] == plain_summary["bytes_up_total"]
    assert runs["plain"]["wall_seconds"] == plain_summary["wall_seconds"]
    assert all(r["finished"] for r in compared["runs"])

    import fedlora_cli.cli.compare as compare_cli

    monkeypatch.setattr(compare_cli, "wants_json", lambda flag: flag)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    result = invoke("compare", private, plain)
    assert result.exit_code == 0, result.output
    assert "private" in result.stdout and "plain" in result.stdout and "fedsvd" in result.stdout
    assert (tmp_path / "compare.png").read_bytes()[:8] == PNG_MAGIC

    # an unfinished run (no summary.json) is compared from its rounds
    (plain / "summary.json").unlink()
    monkeypatch.setattr(compare_cli, "wants_json", lambda flag: True)
    result = invoke("compare", plain, "--png", png)
    record = json.loads(result.stdout)["runs"][0]
    assert record["finished"] is False and record["final_accuracy"] == plain_summary["final_accuracy"]
    assert record["rounds_completed"] == 2


def test_base_weights_are_copied_into_the_lora_modules(tiny_recipe, tmp_path):
    """fedex/flora fold updates into W0; eval must restore them from base_weights.safetensors."""
    from fedlora_cli.federation.experiment import build_model
    from fedlora_cli.models import lora_modules

    recipe = load_recipe(str(tiny_recipe), ["method.name=fedavg", "privacy.level=none"])
    model, _ = build_model(recipe, 3)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
        for module in lora_modules(model):
            module.base_weight.add_(torch.randn(module.base_weight.shape, generator=generator) * 0.5)
    run = RunDir.at(tmp_path / "run")
    run.save_adapter(model, {m.name: m.base_weight for m in lora_modules(model)})
    inputs = {"input_ids": torch.tensor([[101, 2054, 2003, 1037, 3231, 102]]), "attention_mask": torch.ones(1, 6, dtype=torch.long)}
    model.eval()
    expected = model(**inputs).logits

    loaded = load_adapter_model(recipe, run.adapter_path, 3)
    assert torch.equal(loaded(**inputs).logits, expected)

    (run.adapter_path / "base_weights.safetensors").unlink()
    without = load_adapter_model(recipe, run.adapter_path, 3)
    assert not torch.allclose(without(**inputs).logits, expected)


def test_eval_bad_input_exit_2(tiny_recipe, tmp_path):
    result = invoke("eval")
    assert result.exit_code == 2 and "RUN_DIR" in result.output
    result = invoke("eval", tmp_path)
    assert result.exit_code == 2 and "not a fedlora run directory" in result.output
    (tmp_path / "recipe.yaml").write_text(tiny_recipe.read_text())
    result = invoke("eval", tmp_path)
    assert result.exit_code == 2 and "no final adapter" in result.output and "--resume" in result.output
    result = invoke("eval", "--adapter", tmp_path, "--recipe", tiny_recipe)
    assert result.exit_code == 2 and "adapter_config.json" in result.output
    result = invoke("eval", tmp_path, "--adapter", tmp_path)
    assert result.exit_code == 2 and "not both" in result.output
    result = invoke("compare", tmp_path / "missing")
    assert result.exit_code == 2 and "not a fedlora run directory" in result.output
    result = invoke("eval", tmp_path, "--predictions", tmp_path)
    assert result.exit_code == 2 and "--predictions" in result.output and "is a directory" in result.output
    result = invoke("eval", tmp_path, "--predictions", tmp_path / "missing" / "p.jsonl")
    assert result.exit_code == 2 and "does not exist" in result.output and not (tmp_path / "missing").exists()


def test_fairness_numbers():
    fair = fairness([{"accuracy": 0.5}, {"accuracy": 0.9}, {"accuracy": 0.7}])
    assert fair["worst_accuracy"] == 0.5 and fair["best_accuracy"] == 0.9 and fair["worst_client"] == 0
    assert fair["spread"] == pytest.approx(0.4) and fair["mean_accuracy"] == pytest.approx(0.7)


def test_plot_run_without_rounds_writes_nothing(tmp_path):
    from fedlora_cli.report.plots import plot_run

    assert plot_run(tmp_path) is None
    assert not (tmp_path / "metrics.png").exists()
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"round": 1, "eval_accuracy": 0.5, "epsilon": None}) + "\n"
        + json.dumps({"round": 2, "eval_accuracy": None, "epsilon": None}) + "\n"
    )
    assert plot_run(tmp_path) == tmp_path / "metrics.png"
    assert (tmp_path / "metrics.png").read_bytes()[:8] == PNG_MAGIC


# ------------------------------------------------------------------------ recipes copy
def test_recipes_copy(tmp_path, monkeypatch):
    source = builtin_recipes()["default"]
    dest = tmp_path / "mine.yaml"
    result = invoke("recipes", "copy", "default", dest)
    assert result.exit_code == 0, result.output
    assert dest.read_text() == source.read_text() and str(dest) in result.stdout
    result = invoke("recipes", "copy", "default", dest)
    assert result.exit_code == 2 and "exists" in result.output
    folder = tmp_path / "folder"
    folder.mkdir()
    assert invoke("recipes", "copy", "default", folder).exit_code == 0
    assert (folder / "default.yaml").read_text() == source.read_text()
    monkeypatch.chdir(tmp_path)
    assert invoke("recipes", "copy", "default").exit_code == 0
    assert (tmp_path / "default.yaml").is_file()
    result = invoke("recipes", "copy", "defualt", tmp_path / "x.yaml")
    assert result.exit_code == 2 and "did you mean 'default'" in result.output


# ------------------------------------------------------------------------------ NO_COLOR
@pytest.mark.parametrize("no_color", [False, True])
def test_no_color_is_honoured_by_the_consoles_commands_use(monkeypatch, no_color):
    from rich.console import Console

    from fedlora_cli.cli.common import err_console

    monkeypatch.setenv("FORCE_COLOR", "1")
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    for console in (Console(), err_console()):
        console.file = io.StringIO()
        console.print("[red]red[/red] [green]0.93[/green]")
        text = console.file.getvalue()
        assert ("\x1b[31m" in text) is (not no_color)
        assert "red" in text and "0.93" in text
