"""federation.threads, else OMP_NUM_THREADS, else the cores this process may use (issue 16, item 5)."""

from __future__ import annotations

import os

import pytest
import torch
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.recipe import load_recipe
from fedlora_cli.threads import available_cores, thread_count


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_default_honours_omp_num_threads_then_the_affinity_mask(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert thread_count(None) == 3
    assert thread_count(2) == 2
    for unusable in ("", "0", "four"):
        monkeypatch.setenv("OMP_NUM_THREADS", unusable)
        assert thread_count(None) == available_cores()
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert thread_count(None) == available_cores() == len(os.sched_getaffinity(0))


def test_threads_is_a_recipe_key_with_a_checked_range():
    assert load_recipe(None, ["federation.threads=2"]).federation.threads == 2
    assert load_recipe().federation.threads is None
    result = CliRunner().invoke(app, ["train", "federation.threads=0"])
    assert result.exit_code == 2 and "federation.threads" in result.stderr


@pytest.mark.parametrize("setting, env, expected", [(["federation.threads=2"], "1", 2), ([], "1", 1)])
def test_train_and_eval_apply_it(tiny_recipe, tmp_path, monkeypatch, restore_threads, setting, env, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", env)
    torch.set_num_threads(3)
    out = tmp_path / "run"
    quick = ["federation.rounds=1", "federation.local_steps=1", "privacy.level=none", *setting]
    result = CliRunner().invoke(app, ["train", str(tiny_recipe), *quick, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == expected
    torch.set_num_threads(3)
    assert CliRunner().invoke(app, ["eval", str(out), "--json"]).exit_code == 0
    assert torch.get_num_threads() == expected
