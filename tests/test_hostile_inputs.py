"""Hostile files in a run directory: planted symlinks and a checkpoint naming a file outside
``checkpoint/`` (issue 17 item 5). fedlora never writes (or reads run state) through a link."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.errors import InputError
from fedlora_cli.federation.run_dir import RunDir, atomic_save_tensors, atomic_write_text


def train(*args: str):
    return CliRunner().invoke(app, ["train", *args, "--json"])


@pytest.fixture
def outside(tmp_path) -> Path:
    """A directory outside the run directory that must stay untouched."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "victim").write_text("precious\n")
    return path


def untouched(outside: Path) -> bool:
    return sorted(p.name for p in outside.iterdir()) == ["victim"] and (outside / "victim").read_text() == "precious\n"


@pytest.mark.parametrize("planted", ["summary.json", ".summary.json.tmp", "metrics.jsonl"])
def test_atomic_writes_replace_planted_links_instead_of_following_them(tmp_path, outside, planted):
    run = tmp_path / "run"
    run.mkdir()
    (run / planted).symlink_to(outside / "victim")
    atomic_write_text(run / "summary.json", "{}\n")
    atomic_write_text(run / "metrics.jsonl", "\n")
    atomic_save_tensors(run / "state.safetensors", {"w": torch.ones(2)})
    assert untouched(outside)
    assert not (run / "summary.json").is_symlink() and (run / "summary.json").read_text() == "{}\n"


def finished_run(tiny_recipe: Path, out: Path) -> None:
    result = train(str(tiny_recipe), "federation.rounds=1", "--out", str(out))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("planted", [".adapter.tmp", ".adapter.old", ".metrics.tmp.png", "metrics.png", "summary.json"])
def test_resume_with_planted_links_writes_nothing_outside_the_run(tiny_recipe, tmp_path, outside, planted):
    out = tmp_path / "run"
    finished_run(tiny_recipe, out)
    (out / "summary.json").unlink()  # as if it stopped before the end
    (out / planted).unlink(missing_ok=True)
    (out / planted).symlink_to(outside if planted.startswith(".adapter") else outside / "victim")
    result = train("--resume", str(out))
    assert result.exit_code == 0, result.output
    assert untouched(outside)
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and not (out / "adapter").is_symlink()


@pytest.mark.parametrize("linked", ["checkpoint", "adapter"])
def test_a_linked_checkpoint_or_adapter_directory_is_refused(tiny_recipe, tmp_path, outside, linked):
    out = tmp_path / "run"
    finished_run(tiny_recipe, out)
    os.rename(out / linked, outside / linked)
    (out / linked).symlink_to(outside / linked)
    result = train("--resume", str(out))
    assert result.exit_code == 2, result.output
    assert f"{out / linked} is a symbolic link" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("state_file", ["../../etc/passwd", "/etc/passwd", "../recipe.yaml", "state-1.bin", 7, None])
def test_checkpoint_state_file_must_stay_in_the_checkpoint_directory(tmp_path, state_file):
    run = RunDir(tmp_path)
    run.save_checkpoint({"w": torch.ones(2)}, {"rounds_done": 1})
    meta_path = run.checkpoint_path / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert run.load_checkpoint()[1] == meta  # the real one loads
    meta_path.write_text(json.dumps({**meta, "state_file": state_file}))
    with pytest.raises(InputError, match="state_file must name a state-NNNNN.safetensors file"):
        run.load_checkpoint()


def test_resume_of_a_checkpoint_naming_etc_passwd_exits_2(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    finished_run(tiny_recipe, out)
    (out / "summary.json").unlink()
    meta_path = out / "checkpoint" / "meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "state_file": "../../../etc/passwd"}))
    result = train("--resume", str(out))
    assert result.exit_code == 2, result.output
    assert "state_file must name" in result.stderr and "Traceback" not in result.output


# ------------------------------------------------------------------------------ YAML alias bombs
def billion_laughs(levels: int = 9) -> str:
    """The classic alias bomb: ``levels`` lists of 9 references to the previous one (9**9 values
    in about 350 bytes), used where an error message would echo it."""
    names = "abcdefghijklmnop"[:levels]
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['lol'] * 9)}]"]
    lines += [f"{cur}: &{cur} [{','.join(['*' + prev] * 9)}]" for prev, cur in zip(names, names[1:])]
    return "\n".join(lines) + f"\nmodel: {{name: *{names[-1]}}}\n"


def limited_fedlora(*args: str, memory_bytes: int = 3 << 30, seconds: int = 60):
    """The CLI in a child process that cannot take the machine's memory (or time) with it."""
    import resource
    import subprocess
    import sys

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    return subprocess.run(
        [sys.executable, "-m", "fedlora_cli", *args], capture_output=True, text=True, timeout=seconds, preexec_fn=limit
    )


def test_a_yaml_alias_bomb_is_refused_quickly_with_a_short_message(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(billion_laughs())
    assert len(bomb.read_bytes()) < 500
    for command in (["recipes", "validate", str(bomb)], ["train", str(bomb), "--out", str(tmp_path / "run")]):
        result = limited_fedlora(*command)
        assert result.returncode == 2, result.stderr[:2000]
        assert "expands to more than 10,000 values through YAML aliases" in result.stderr
        assert len(result.stderr) < 1000 and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def naive_size(node) -> int:
    """The reference: walk the expanded tree (only for small trees)."""
    if isinstance(node, dict):
        return 1 + sum(naive_size(k) + naive_size(v) for k, v in node.items())
    if isinstance(node, list):
        return 1 + sum(naive_size(child) for child in node)
    return 1


def test_expanded_size_counts_shared_subtrees_each_time_without_expanding():
    import yaml

    from fedlora_cli.bounded import expanded_size

    small = yaml.safe_load(billion_laughs(levels=3))  # 9**3 leaves
    assert expanded_size(small, 10_000) == naive_size(small)
    assert expanded_size(small, naive_size(small) - 1) is None
    assert expanded_size(yaml.safe_load(billion_laughs()), 10_000) is None
    looped = yaml.safe_load("a: &a [1, *a]")
    assert expanded_size(looped, 10_000) is None


def test_a_recipe_that_contains_itself_is_refused(tmp_path):
    from fedlora_cli.recipe import read_recipe_tree

    path = tmp_path / "loop.yaml"
    path.write_text("model: &m {name: x, target_modules: [*m]}\n")
    with pytest.raises(InputError, match="contains itself"):
        read_recipe_tree(path)


@pytest.mark.parametrize("value", ["x" * 100_000, list(range(100_000)), [[["deep"] * 50] * 50] * 50])
def test_error_messages_echo_at_most_a_short_prefix_of_the_input(value):
    from fedlora_cli.recipe import parse_recipe

    with pytest.raises(InputError) as caught:
        parse_recipe({"federation": {"rounds": value}})
    (problem,) = caught.value.problems
    assert problem.startswith("federation.rounds:") and len(problem) < 250
