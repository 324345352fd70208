"""A run killed with SIGKILL mid-round and resumed ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from fedlora_cli.federation.engine import TIMING_KEYS

OVERRIDES = ["federation.rounds=4", "federation.local_steps=15", "federation.eval_every=2"]


def fedlora(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedlora_cli", "train", *args, "--json"]


def strip_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def read_run(path: Path) -> tuple[list[dict], dict, dict]:
    metrics = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((path / "summary.json").read_text())
    adapter = load_file(str(path / "adapter" / "adapter_model.safetensors"))
    return metrics, summary, adapter


def rounds_done(path: Path) -> int:
    meta = path / "checkpoint" / "meta.json"
    try:
        return json.loads(meta.read_text())["rounds_done"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_sigkill_mid_round_then_resume_is_bit_identical(tiny_recipe, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(fedlora(str(tiny_recipe), *OVERRIDES, "--out", str(straight)), env=env, check=True, capture_output=True)

    process = subprocess.Popen(
        fedlora(str(tiny_recipe), *OVERRIDES, "--out", str(killed)), env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while rounds_done(killed) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # well inside round 2 (each round is many local steps)
    assert process.poll() is None, "the run finished before it could be killed; make rounds longer"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert 1 <= rounds_done(killed) < 4
    assert not (killed / "summary.json").exists()

    resumed = subprocess.run(fedlora("--resume", str(killed)), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr

    metrics_a, summary_a, adapter_a = read_run(straight)
    metrics_b, summary_b, adapter_b = read_run(killed)
    assert strip_timing(metrics_a) == strip_timing(metrics_b)
    assert summary_a["final_accuracy"] == summary_b["final_accuracy"]
    assert summary_a["client_epsilons"] == summary_b["client_epsilons"]
    assert adapter_a.keys() == adapter_b.keys()
    for key in adapter_a:
        assert adapter_a[key].equal(adapter_b[key]), key
