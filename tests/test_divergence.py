"""A diverged run stops with a clear error (exit 1), keeps the last good checkpoint and writes no
adapter for the broken state (issue 17 item 8)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.federation.client import LocalTrainer


def train(*args: str):
    return CliRunner().invoke(app, ["train", *args, "--json"])


def assert_stopped_without_adapter(result, out, rounds_kept: int) -> None:
    assert result.exit_code == 1, result.output
    assert f"round {rounds_kept + 1}: training diverged" in result.stderr
    assert "lower federation.lr" in result.stderr
    assert "Traceback" not in result.output and "please report" not in result.output
    assert not (out / "adapter").exists() and not (out / "summary.json").exists()
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    assert meta["rounds_done"] == rounds_kept
    assert len((out / "metrics.jsonl").read_text().splitlines()) == rounds_kept


@pytest.mark.parametrize("setting", [["method.name=fedsvd"], ["method.name=fedavg", "privacy.level=none"]])
def test_a_huge_learning_rate_stops_the_run_with_a_clear_error(tiny_recipe, tmp_path, setting):
    out = tmp_path / "run"
    result = train(str(tiny_recipe), "federation.lr=1e30", *setting, "--out", str(out))
    assert_stopped_without_adapter(result, out, rounds_kept=0)


def test_divergence_in_round_two_keeps_round_one(tiny_recipe, tmp_path, monkeypatch):
    original = LocalTrainer.train
    calls = []

    def blows_up_in_round_two(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append(None)
        if len(calls) == 3:  # round 2's first client (2 clients per round)
            next(iter(result.upload.values())).fill_(float("inf"))
        return result

    monkeypatch.setattr(LocalTrainer, "train", blows_up_in_round_two)
    out = tmp_path / "run"
    result = train(str(tiny_recipe), "--out", str(out))
    assert_stopped_without_adapter(result, out, rounds_kept=1)
    state_file = out / "checkpoint" / json.loads((out / "checkpoint" / "meta.json").read_text())["state_file"]
    assert all(torch.isfinite(t).all() for t in load_file(str(state_file)).values())
