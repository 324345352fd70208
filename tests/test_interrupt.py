"""Ctrl-C at any phase of a round saves a consistent cut: all of the last complete round, none of
the interrupted one, so `--resume` ends exactly where an uninterrupted run ends (issue 17, item 1).

Each test delivers a real SIGINT to this process from inside one phase of round 2 (after that
phase's work is done, the worst moment), runs `fedlora train` in-process, then resumes.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.federation import clients, engine, experiment, run_dir
from fedlora_cli.federation.engine import FederatedRun
from fedlora_cli.methods import METHODS
from fedlora_cli.privacy.sample_level import SampleLevelPlan
from fedlora_cli.tasks import classification
from test_flower import read_run as read_run_with_base
from test_resume import strip_timing

TARGET_EPSILON = 8.0  # tiny_recipe's privacy.target_epsilon
SETTINGS = {  # name: (method, overrides of tiny_recipe)
    "sample": ("fedsvd", []),
    "fedex": ("fedex", []),  # folds every round into the base weights
    "client": ("fedavg", ["privacy.level=client", "privacy.adaptive_clipping=true", "privacy.target_epsilon=20"]),
    "momentum": ("fedsvd", ["federation.server_optimizer=momentum"]),  # server optimizer state, rotated by the SVD
}  # client: DP-FedAvg with adaptive clipping, whose clip moves every round


def overrides(setting: str) -> list[str]:
    method, extra = SETTINGS[setting]
    return ["federation.rounds=3", f"method.name={method}", *extra]


@pytest.fixture(autouse=True)
def sigint_raises_keyboard_interrupt():
    """SIGINT raises KeyboardInterrupt here as in a terminal, whatever this process inherited: a
    job started in the background by a non-interactive shell begins with SIGINT ignored, and a
    library imported by an earlier test may have left its own handler."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def train(*args: str):
    return CliRunner().invoke(app, ["train", *args, "--json"])


def interrupt_after(monkeypatch, owner, name: str, when) -> None:
    """Wrap ``owner.name``: after the real call returns, if ``when(call_number, args)``, send SIGINT."""
    original = getattr(owner, name)
    calls = []

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(None)
        if when(len(calls), args):
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(owner, name, wrapper)


def second_round(index_position: int):
    """``when`` for functions that receive the 0-based round index as positional ``index_position``."""
    return lambda _, args: args[index_position] == 1


PHASES = {
    # after every sampled client of round 2 trained
    "training": lambda mp, setting: interrupt_after(mp, clients.InProcessClients, "train", second_round(1)),
    # after round 2's first client was charged, before the second one is: charging is part of the
    # round's commit, which holds the interrupt back until round 2 is complete
    "accounting": lambda mp, setting: interrupt_after(mp, SampleLevelPlan, "charge", lambda n, _: n == 3),
    # after the server step of round 2 (fedex: the base weights already moved)
    "aggregation": lambda mp, setting: interrupt_after(mp, METHODS[SETTINGS[setting][0]], "server_update", second_round(5)),
    # after round 2's evaluation
    "evaluation": lambda mp, setting: interrupt_after(mp, classification, "evaluate", lambda n, _: n == 2),
    # after round 2's checkpoint tensors are written, before its meta.json
    "checkpoint": lambda mp, setting: interrupt_after(mp, run_dir, "atomic_save_tensors", lambda n, _: n == 2),
}


def read_run(path: Path) -> tuple[list[dict], dict, dict]:
    metrics, summary, tensors = read_run_with_base(path)
    return strip_timing(metrics), summary, tensors


@pytest.fixture(scope="module")
def straight_runs() -> dict:
    """The uninterrupted run of each setting, computed once per module."""
    return {}


def straight(setting: str, recipe: Path, cache: dict, out: Path):
    if setting not in cache:
        result = train(str(recipe), *overrides(setting), "--out", str(out))
        assert result.exit_code == 0, result.output
        cache[setting] = read_run(out)
    return cache[setting]


@pytest.mark.parametrize(
    "setting, phase",
    [("sample", phase) for phase in PHASES] + [("fedex", "aggregation"), ("client", "aggregation"), ("client", "evaluation"),
                                             ("momentum", "evaluation")],
)
def test_ctrl_c_in_any_phase_then_resume_equals_the_uninterrupted_run(
    tiny_recipe, tmp_path, monkeypatch, straight_runs, setting, phase
):
    with monkeypatch.context() as patched:
        PHASES[phase](patched, setting)
        interrupted = train(str(tiny_recipe), *overrides(setting), "--out", str(tmp_path / "interrupted"))
    assert interrupted.exit_code == 130, interrupted.output
    assert "--resume" in interrupted.stderr
    meta = json.loads((tmp_path / "interrupted" / "checkpoint" / "meta.json").read_text())
    assert meta["rounds_done"] == (2 if phase in ("accounting", "checkpoint") else 1)  # the last complete round
    assert len((tmp_path / "interrupted" / "metrics.jsonl").read_text().splitlines()) == meta["rounds_done"]

    resumed = train("--resume", str(tmp_path / "interrupted"))
    assert resumed.exit_code == 0, resumed.output

    metrics_a, summary_a, tensors_a = straight(setting, tiny_recipe, straight_runs, tmp_path / "straight")
    metrics_b, summary_b, tensors_b = read_run(tmp_path / "interrupted")
    assert metrics_b == metrics_a
    assert summary_b["client_steps"] == summary_a["client_steps"]
    assert summary_b["epsilon"] == summary_a["epsilon"]
    assert summary_b["client_epsilons"] == summary_a["client_epsilons"]
    assert summary_b["final_accuracy"] == summary_a["final_accuracy"]
    assert tensors_b.keys() == tensors_a.keys()
    for key in tensors_a:
        assert tensors_b[key].equal(tensors_a[key]), key
    target = 20.0 if setting == "client" else TARGET_EPSILON
    assert summary_b["epsilon"] <= target and all(m["epsilon"] <= target for m in metrics_b)


STOPS = {  # phase: (where SIGINT is delivered, whether a run directory with a checkpoint exists by then)
    "loading": (lambda mp: interrupt_after(mp, experiment, "load_tokenizer", lambda n, _: n == 1), False),
    "training": (lambda mp: interrupt_after(mp, clients.InProcessClients, "train", second_round(1)), True),
    "export": (lambda mp: interrupt_after(mp, run_dir.RunDir, "save_adapter", lambda n, _: n == 1), True),
}


@pytest.mark.parametrize("phase", STOPS)
def test_ctrl_c_saves_a_checkpoint_and_prints_how_to_resume(tiny_recipe, tmp_path, monkeypatch, phase):
    """Ctrl-C stops the run at once in every phase (exit 130, no traceback); once a run directory
    exists, its last checkpoint is kept and stderr says how to resume. The SIGINT is delivered
    from inside the phase, so the test does not depend on timing."""
    deliver, has_run_dir = STOPS[phase]
    out = tmp_path / "interrupted"
    with monkeypatch.context() as patched:
        deliver(patched)
        result = train(str(tiny_recipe), *overrides("sample"), "--out", str(out))
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output
    if has_run_dir:
        assert f"Resume with: fedlora train --resume {out}" in result.stderr
        assert 1 <= json.loads((out / "checkpoint" / "meta.json").read_text())["rounds_done"] <= 3
    else:
        assert "interrupted" in result.stderr and not out.exists()
