"""fedlora on Flower's deployment engine: a real SuperLink and three SuperNodes on loopback.

The process tests start ``flower-superlink`` and three ``flower-supernode`` processes (one per
client, ``partition-id`` 0..2) on free loopback ports, submit the tiny recipe with
``fedlora flower run --superlink ... --insecure``, and compare the run directory with the
in-process engine's on the same recipe and seed:

- without DP noise, the final adapter (and base weights: FLoRA folds every round into them)
  equals ``fedlora train``'s;
- with sample-level DP, a SuperNode killed while round 2 runs does not sink the round: the
  two clients that answered are aggregated, and the result, the metrics and every client's
  epsilon equal an in-process run in which that client drops out of round 2 (so the accountant
  charged only the clients that trained).

Every process is stopped in a ``finally`` block. They are skipped only when flwr is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fedlora_cli.errors import RunError
from fedlora_cli.federation.client import LocalTrainer
from fedlora_cli.federation.clients import InProcessClients
from fedlora_cli.federation.engine import FederatedRun
from fedlora_cli.federation.experiment import build_experiment
from fedlora_cli.federation.run_dir import RunDir
from fedlora_cli.recipe import dump_recipe
from fedlora_cli.report.console import NullReporter
from fedlora_cli.validate import check_recipe

needs_flwr = pytest.mark.skipif(
    importlib.util.find_spec("flwr") is None, reason="flwr is not installed (pip install 'fedlora[flower]')"
)

THREE_CLIENTS = ["federation.clients=3", "federation.rounds=2"]
EXACT = [*THREE_CLIENTS, "privacy.level=none", "method.name=flora"]
DROPOUT = [*THREE_CLIENTS, "federation.clients_per_round=3", "federation.min_clients_per_round=2"]
RUN_SECONDS = 420  # hard limit per Flower run; a loaded 2-core machine needs ~3 min at worst


class DroppingClients(InProcessClients):
    """In-process clients, except that ``drop[round_index]`` clients never answer."""

    def __init__(self, experiment, drop: dict[int, set[int]]):
        fed = experiment.recipe.federation
        trainer = LocalTrainer(experiment.model, fed, private=experiment.recipe.privacy.level == "sample")
        super().__init__(trainer, experiment.client_data, fed.local_steps)
        self.drop = drop

    def train(self, round_index, tasks, global_state, base):
        kept = [task for task in tasks if task.client not in self.drop.get(round_index, set())]
        return super().train(round_index, kept, global_state, base)


def in_process_run(recipe: Path, overrides: list[str], out: Path, drop: dict[int, set[int]] | None = None) -> dict:
    checked = check_recipe(str(recipe), overrides)
    experiment = build_experiment(checked.recipe, checked.train, checked.test, checked.client_indices)
    run_dir = RunDir.at(out)
    run_dir.write_recipe(dump_recipe(checked.recipe))
    clients = DroppingClients(experiment, drop) if drop else None
    return FederatedRun(experiment, run_dir, NullReporter(), clients=clients).run()


def read_run(path: Path) -> tuple[list[dict], dict, dict]:
    metrics = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((path / "summary.json").read_text())
    tensors = load_file(str(path / "adapter" / "adapter_model.safetensors"))
    base = path / "adapter" / "base_weights.safetensors"
    if base.exists():
        tensors.update({f"base::{k}": v for k, v in load_file(str(base)).items()})
    return metrics, summary, tensors


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert (a[key].double() - b[key].double()).abs().max().item() <= 1e-6, key


def flower_run_command(recipe: Path, overrides: list[str], address: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "fedlora_cli", "flower", "run", str(recipe), *overrides,
        "--superlink", address, "--insecure", "--out", str(out), "--json", *extra,
    ]  # fmt: skip


def follow(process: subprocess.Popen, on_event=None) -> list[dict]:
    """The JSON objects ``process`` prints, calling ``on_event`` on each; killed after RUN_SECONDS."""
    watchdog = threading.Timer(RUN_SECONDS, process.kill)
    watchdog.start()
    events = []
    try:
        for line in process.stdout:
            if line.startswith("{"):
                events.append(json.loads(line))
                if on_event is not None:
                    on_event(events[-1])
        process.wait()
    finally:
        watchdog.cancel()
    return events


@pytest.fixture
def flower_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return dict(os.environ)


@needs_flwr
def test_wire_round_trip_is_bit_exact():
    import torch

    from fedlora_cli.federation.client import ClientNoise, LocalResult
    from fedlora_cli.federation.clients import ClientTask
    from fedlora_cli.flower import wire
    from flwr.app import ArrayRecord

    state = {"a.lora_A.default.weight": torch.randn(4, 6), "b.lora_B.default.weight": torch.randn(6, 4).T}
    for noise in (ClientNoise(0.125, 1.7, 1.0, False, head_clip_share=0.95), ClientNoise(0.125, 1.7, 1.0, False)):
        task = ClientTask(2, 2**62 + 12345, noise)
        content = wire.train_request("name: x\n", 3, 5, task, ArrayRecord({k: v.contiguous() for k, v in state.items()}), None)
        config, received, base = wire.read_train_request(content)
        assert base is None and int(config["seed"]) == task.seed and config["client"] == 2 and config["local-steps"] == 5
        assert wire.noise_of(config) == task.noise
    assert all(received[k].equal(state[k]) for k in state)
    client, result = wire.read_train_reply(wire.train_reply(2, LocalResult(state, float("nan"), 5, 40)))
    assert client == 2 and result.steps == 5 and result.examples == 40
    assert all(result.upload[k].equal(state[k]) for k in state)


def test_dropped_clients_are_not_aggregated_or_charged(tiny_recipe, tmp_path):
    """The engine side of a dropout, in-process: fewer answers than sampled, above the minimum."""
    overrides = [*DROPOUT, "federation.rounds=2"]
    summary = in_process_run(tiny_recipe, overrides, tmp_path / "drop", {1: {2}})
    metrics, _, _ = read_run(tmp_path / "drop")
    assert [m["clients"] for m in metrics] == [[0, 1, 2], [0, 1]]
    assert "dropped" not in metrics[0] and metrics[1]["dropped"] == [2]
    assert summary["client_steps"] == [6, 6, 3]
    assert summary["client_epsilons"][2] < summary["client_epsilons"][0]


def test_too_few_answers_fail_the_round_and_keep_the_charges(tiny_recipe, tmp_path):
    overrides = [*DROPOUT, "federation.min_clients_per_round=3"]
    checked = check_recipe(str(tiny_recipe), overrides)
    experiment = build_experiment(checked.recipe, checked.train, checked.test, checked.client_indices)
    run = FederatedRun(experiment, RunDir.at(tmp_path / "few"), NullReporter(), clients=DroppingClients(experiment, {1: {0}}))
    with pytest.raises(RunError, match="only 2 of 3 sampled clients answered"):
        run.run()
    assert run.state.rounds_done == 1
    assert run.policy.client_steps == [3, 6, 6]  # round 2's answers are charged although not aggregated
    assert json.loads((tmp_path / "few" / "checkpoint" / "meta.json").read_text())["client_steps"] == [3, 6, 6]


@needs_flwr
def test_flower_commands_refuse_bad_input_before_starting_anything(tiny_recipe):
    from typer.testing import CliRunner

    from fedlora_cli.cli import app

    runner = CliRunner()
    no_tls = runner.invoke(app, ["flower", "run", str(tiny_recipe), "--superlink", "127.0.0.1:1"])
    assert no_tls.exit_code == 2 and "--root-certificates" in no_tls.output
    nodes = runner.invoke(app, ["flower", "local", str(tiny_recipe), *THREE_CLIENTS, "--nodes", "2"])
    assert nodes.exit_code == 2 and "federation.clients=3" in nodes.output
    minimum = runner.invoke(app, ["flower", "local", str(tiny_recipe), "federation.min_clients_per_round=3"])
    assert minimum.exit_code == 2 and "federation.min_clients_per_round" in minimum.output


def run_on_local_flower(recipe: Path, overrides: list[str], tmp_path: Path, flower_env: dict) -> list[dict]:
    """``fedlora flower run`` on 3 local SuperNodes into ``tmp_path/on-flower``; its JSON events."""
    from fedlora_cli.flower.launch import LocalFederation

    federation = LocalFederation(tmp_path / "flower", nodes=3)
    process = None
    try:
        federation.start()
        command = flower_run_command(recipe, overrides, federation.address, tmp_path / "on-flower")
        process = subprocess.Popen(command, env=flower_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        events = follow(process)
        assert process.returncode == 0, process.stderr.read() + federation.log_tail("superlink")
    finally:
        if process is not None and process.poll() is None:
            process.kill()
        federation.stop()
    return events


@needs_flwr
def test_flower_run_equals_in_process_run(tiny_recipe, tmp_path, flower_env):
    in_process_run(tiny_recipe, EXACT, tmp_path / "in-process")
    events = run_on_local_flower(tiny_recipe, EXACT, tmp_path, flower_env)
    assert [e["type"] for e in events] == ["round", "round", "summary"]

    metrics_a, summary_a, adapter_a = read_run(tmp_path / "in-process")
    metrics_b, summary_b, adapter_b = read_run(tmp_path / "on-flower")
    assert any(key.startswith("base::") for key in adapter_a)
    assert_same_tensors(adapter_a, adapter_b)
    assert [m["clients"] for m in metrics_a] == [m["clients"] for m in metrics_b]
    assert [m["train_loss"] for m in metrics_b] == pytest.approx([m["train_loss"] for m in metrics_a], abs=1e-6)
    assert summary_b["final_accuracy"] == pytest.approx(summary_a["final_accuracy"], abs=1e-6)
    assert summary_b["client_steps"] == summary_a["client_steps"]
    assert summary_b["rounds_completed"] == 2


@needs_flwr
def test_supernode_killed_mid_round_does_not_sink_the_round(tiny_recipe, tmp_path, flower_env):
    from fedlora_cli.flower.launch import LocalFederation

    in_process_run(tiny_recipe, DROPOUT, tmp_path / "in-process", {1: {2}})
    federation = LocalFederation(tmp_path / "flower", nodes=3)
    process = None
    killed = []

    meta = tmp_path / "on-flower" / "checkpoint" / "meta.json"
    watching = threading.Event()

    def kill_node_2_when_round_2_starts() -> None:
        # The server checkpoints round 1 just before it sends round 2. Its streamed round event
        # can arrive seconds later (after node 2 already answered), so watch the file instead.
        while watching.is_set():
            try:
                if json.loads(meta.read_text())["rounds_done"] >= 1:
                    federation.stop_process("node-2", grace=0)
                    killed.append(True)
                    return
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_node_2_when_round_2_starts, daemon=True)
    try:
        federation.start()
        command = flower_run_command(
            tiny_recipe, DROPOUT, federation.address, tmp_path / "on-flower", "--round-timeout", "90"
        )
        process = subprocess.Popen(command, env=flower_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        watching.set()
        watcher.start()
        follow(process)
        watching.clear()
        stderr = process.stderr.read()
        assert process.returncode == 0, stderr + federation.log_tail("superlink")
    finally:
        watching.clear()
        if process is not None and process.poll() is None:
            process.kill()
        federation.stop()
    assert killed
    assert "round 2: client 2" in stderr  # "did not answer" (timeout) or "failed" (node unavailable)

    metrics_a, summary_a, adapter_a = read_run(tmp_path / "in-process")
    metrics_b, summary_b, adapter_b = read_run(tmp_path / "on-flower")
    assert [m["clients"] for m in metrics_b] == [[0, 1, 2], [0, 1]]
    assert metrics_b[1]["dropped"] == [2]
    assert summary_b["client_steps"] == [6, 6, 3]
    assert summary_b["client_epsilons"] == pytest.approx(summary_a["client_epsilons"])
    assert summary_b["client_epsilons"][2] < summary_b["client_epsilons"][0]
    assert_same_tensors(adapter_a, adapter_b)
    for a, b in zip(metrics_a, metrics_b):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-6)
        assert b["eval_accuracy"] == pytest.approx(a["eval_accuracy"], abs=1e-6)
        assert b["epsilon"] == pytest.approx(a["epsilon"])


@needs_flwr
def test_flower_carries_a_causal_lm_recipe_unchanged(tmp_path, tiny_llama_dir, tiny_sft_jsonl, flower_env):
    """A private SFT run of a tiny Llama on Flower (3 SuperNodes) equals the same run in process."""
    from tests.test_causal_lm import causal_recipe

    recipe = causal_recipe(tmp_path, tiny_llama_dir, tiny_sft_jsonl, causal="max_new_tokens: 4, generate_samples: 2")
    in_process_run(recipe, THREE_CLIENTS, tmp_path / "in-process")
    run_on_local_flower(recipe, THREE_CLIENTS, tmp_path, flower_env)
    metrics_a, summary_a, adapter_a = read_run(tmp_path / "in-process")
    metrics_b, summary_b, adapter_b = read_run(tmp_path / "on-flower")
    assert_same_tensors(adapter_a, adapter_b)
    assert [m["train_loss"] for m in metrics_b] == pytest.approx([m["train_loss"] for m in metrics_a], abs=1e-6)
    assert summary_b["final_loss"] == pytest.approx(summary_a["final_loss"], abs=1e-6)
    assert summary_b["final_perplexity"] == pytest.approx(summary_a["final_perplexity"], rel=1e-6)
    assert summary_b["epsilon"] == pytest.approx(summary_a["epsilon"])
