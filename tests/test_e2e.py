"""End to end on the real default model (all-MiniLM-L6-v2) and the real BBC News data, on a slice."""

from __future__ import annotations

import io
import json

import pytest
import torch
from peft import PeftModel

from fedlora_cli.federation.engine import FederatedRun
from fedlora_cli.federation.evaluate import predict_logits
from fedlora_cli.federation.experiment import build_experiment
from fedlora_cli.federation.run_dir import RunDir
from fedlora_cli.models import load_base_model
from fedlora_cli.report.console import JsonLinesReporter
from fedlora_cli.validate import check_recipe

pytestmark = pytest.mark.e2e

SLICE = [
    "data.max_train_samples=300",
    "data.max_test_samples=60",
    "data.max_length=32",
    "partition.min_samples=16",
    "federation.rounds=2",
    "federation.local_steps=2",
    "federation.eval_every=1",
]


def test_default_recipe_runs_privately_and_its_adapter_reloads_identically(tmp_path):
    checked = check_recipe(None, SLICE)
    experiment = build_experiment(checked.recipe, checked.train, checked.test, checked.client_indices)
    stream = io.StringIO()
    run_dir = RunDir.at(tmp_path / "run")
    summary = FederatedRun(experiment, run_dir, JsonLinesReporter(stream=stream)).run()

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["type"] for line in lines] == ["round", "round", "summary"]
    metrics = run_dir.read_metrics()
    assert [m["round"] for m in metrics] == [1, 2]
    for m in metrics:
        assert len(m["clients"]) == checked.recipe.federation.clients_per_round and m["bytes_up"] > 0 and m["bytes_down"] > 0
        assert 0.0 <= m["eval_accuracy"] <= 1.0
    assert 0 < metrics[0]["epsilon"] <= metrics[1]["epsilon"] <= 6.0
    saved = json.loads((run_dir.path / "summary.json").read_text())
    assert saved["final_accuracy"] == metrics[-1]["eval_accuracy"] == summary["final_accuracy"]
    assert saved["epsilon"] == max(saved["client_epsilons"]) <= 6.0
    assert saved["delta"] == 1e-5 and saved["rounds_completed"] == 2

    in_memory = predict_logits(experiment.model, experiment.test_data)
    base = load_base_model("minilm", len(experiment.label_names), checked.recipe.federation.seed)
    reloaded = PeftModel.from_pretrained(base, str(run_dir.adapter_path))
    assert torch.equal(predict_logits(reloaded, experiment.test_data), in_memory)
