"""Bytes each method exchanges per round, and a short real run of every method through the CLI
whose saved adapter reloads into a fresh base model and predicts like the in-memory one."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.federation import engine
from fedlora_cli.federation.engine import FederatedRun
from fedlora_cli.federation.evaluate import predict_logits
from fedlora_cli.federation.experiment import build_model
from fedlora_cli.methods import METHODS
from fedlora_cli.models import adapter_state, load_base_model
from fedlora_cli.recipe import Recipe

RANK = 4
FLOAT = 4  # bytes per float32


def make(tiny_model_dir, method, targets, clients_per_round=3):
    recipe = Recipe.model_validate(
        {
            "model": {"name": tiny_model_dir, "rank": RANK, "alpha": 8, "target_modules": targets, "train_head": False},
            "method": {"name": method},
            "federation": {"clients": 4, "clients_per_round": clients_per_round},
            "privacy": {"level": "none"},
        }
    )
    return build_model(recipe, num_labels=3)


def upload_bytes(model) -> int:
    """What a client uploads: every tensor it trains (LocalTrainer reads back requires_grad params)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def shapes(method) -> list[tuple[int, int]]:
    return [tuple(m.base_weight.shape) for m in method.modules]


def expected_upload(name: str, dims: list[tuple[int, int]]) -> int:
    per_module = {
        "fedavg": lambda o, i: (o + i) * RANK,
        "fedex": lambda o, i: (o + i) * RANK,
        "flora": lambda o, i: (o + i) * RANK,
        "ffa": lambda o, i: o * RANK,
        "fedsvd": lambda o, i: o * RANK,
        "fedsb": lambda o, i: RANK * RANK,
    }[name]
    return FLOAT * sum(per_module(o, i) for o, i in dims)


def expected_download(name: str, dims: list[tuple[int, int]], round_index: int, clients_per_round: int) -> int:
    factors = FLOAT * sum((o + i) * RANK for o, i in dims)
    if name in ("fedavg", "fedsvd"):  # fedsvd (svd_period 1) also sends the re-factorized A
        return factors
    if name == "fedex":
        return factors + (FLOAT * sum(o * i for o, i in dims) if round_index else 0)
    if name == "flora":
        return clients_per_round * factors if round_index else 0
    return expected_upload(name, dims)  # ffa: B; fedsb: R


@pytest.mark.parametrize("name", sorted(METHODS))
def test_upload_and_download_bytes_follow_each_methods_exchange(tiny_model_dir, name):
    model, method = make(tiny_model_dir, name, ["query", "value", "intermediate.dense"])
    dims = shapes(method)
    assert (48, 32) in dims
    assert upload_bytes(model) == expected_upload(name, dims)
    state = adapter_state(model)
    for round_index in (0, 1, 5):
        assert method.download_bytes(state, round_index) == expected_download(name, dims, round_index, 3)


def test_b_only_methods_upload_half_of_fedavg_and_fedsb_r_squared(tiny_model_dir):
    square = ["query", "value"]
    uploads = {name: upload_bytes(make(tiny_model_dir, name, square)[0]) for name in METHODS}
    assert uploads["ffa"] * 2 == uploads["fedsvd"] * 2 == uploads["fedavg"]
    assert uploads["fedex"] == uploads["flora"] == uploads["fedavg"]
    assert uploads["fedsb"] == FLOAT * RANK * RANK * 4  # 2 layers × (query, value)


@pytest.fixture
def recorded_runs(monkeypatch):
    """The FederatedRun each CLI invocation builds, for comparing with its saved files."""
    runs = []

    class RecordingRun(FederatedRun):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            runs.append(self)

    monkeypatch.setattr(engine, "FederatedRun", RecordingRun)  # `fedlora train` imports it when it runs
    return runs


@pytest.mark.parametrize("name", sorted(METHODS))
def test_short_run_of_every_method_counts_bytes_and_its_adapter_reloads(
    tiny_recipe, tiny_model_dir, tmp_path, recorded_runs, name
):
    # fedsb runs DP-SGD (fixed noise, no calibration) so Opacus meets its R layers in a real run.
    privacy = ["privacy.target_epsilon=null", "privacy.noise_multiplier=1.0"] if name == "fedsb" else ["privacy.level=none"]
    out = tmp_path / "run"
    # One lr for both rounds: with the default cosine the second round steps at half the rate, and
    # FedEx's residual (second order in the steps) then falls under float32's resolution of the weights.
    schedule = "federation.lr_schedule=constant"
    args = ["train", str(tiny_recipe), f"method.name={name}", "model.train_head=false", "federation.eval_every=0", schedule, *privacy, "--json", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    lines = [json.loads(line) for line in result.stdout.splitlines()]
    rounds = [line for line in lines if line["type"] == "round"]
    # the tiny split has a client of 8 examples: its "small client" warnings come first
    assert [line["type"] for line in lines if line["type"] != "warning"] == ["round", "round", "summary"]
    (run,) = recorded_runs
    dims = shapes(run.method)
    per_round = run.fed.clients_per_round
    for round_index, metrics in enumerate(rounds):
        assert metrics["bytes_up"] == per_round * expected_upload(name, dims)
        assert metrics["bytes_down"] == per_round * expected_download(name, dims, round_index, per_round)
        assert metrics["aggregation_seconds"] >= 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bytes_up_total"] == sum(m["bytes_up"] for m in rounds)
    assert summary["bytes_down_total"] == sum(m["bytes_down"] for m in rounds)
    assert [json.loads(line)["bytes_up"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [
        m["bytes_up"] for m in rounds
    ]

    base = load_base_model(tiny_model_dir, len(run.exp.label_names), run.recipe.federation.seed)
    reloaded = PeftModel.from_pretrained(base, str(out / "adapter"))
    base_file = out / "adapter" / "base_weights.safetensors"
    assert base_file.exists() == run.method.modifies_base
    if base_file.exists():
        with torch.no_grad():
            for module_name, weight in load_file(str(base_file)).items():
                reloaded.get_submodule(module_name).get_base_layer().weight.copy_(weight)
    in_memory = predict_logits(run.model, run.exp.test_data)
    torch.testing.assert_close(predict_logits(reloaded, run.exp.test_data), in_memory, atol=1e-5, rtol=1e-5)
    if run.method.modifies_base:  # the run did change the frozen weights it saved
        pretrained = load_base_model(tiny_model_dir, 3, run.recipe.federation.seed)
        changed = []
        for module_name, weight in load_file(str(base_file)).items():
            original = pretrained.get_submodule(module_name.removeprefix("base_model.model.")).weight
            assert weight.shape == original.shape
            changed.append(not torch.equal(weight, original))
        assert any(changed)
