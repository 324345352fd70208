"""Bad inputs and faults fed to the CLI (issue 15 item 6): each ends in exit code 2 with a message
naming the flag, key or file and the fix, or in a warning, never in a hang or an internal error."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedlora_cli.cli import app
from test_hostile_inputs import limited_fedlora


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize(
    "flags, named",
    [
        (["-s", "nan", "-q", "0.1", "-t", "10"], "--noise-multiplier"),
        (["-s", "inf", "-q", "0.1", "-t", "10"], "--noise-multiplier"),
        (["-e", "inf", "-q", "0.1", "-t", "10"], "--target-epsilon"),
        (["-e", "nan", "-q", "0.1", "-t", "10"], "--target-epsilon"),
        (["-s", "1", "-q", "0.01", "-t", "1000000", "--accountant", "prv"], "--accountant rdp"),
        (["-s", "1", "-q", "0.01", "-t", "1000000", "--accountant", "all"], "--accountant rdp"),
    ],
)
def test_accountant_refuses_non_finite_numbers_and_slow_prv_at_once(flags, named):
    # a hang fails with TimeoutExpired; 120 s because on a loaded 2-core machine starting the CLI alone took over 30
    result = limited_fedlora("accountant", *flags, seconds=120)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr


def test_accountant_warns_that_a_huge_target_epsilon_is_no_guarantee():
    result = invoke("accountant", "-e", "1e9", "-q", "0.1", "-t", "10", "--json")
    assert result.exit_code == 0, result.output
    assert "warning: --target-epsilon=1e+09 is no meaningful privacy guarantee" in result.output
    quiet = invoke("accountant", "-e", "8", "-q", "0.1", "-t", "10", "--json")
    assert "warning" not in quiet.output


def test_accountant_warns_about_a_recipe_with_a_huge_target_epsilon(tiny_recipe):
    result = invoke("accountant", "--recipe", str(tiny_recipe), "privacy.target_epsilon=1e9", "--json")
    assert result.exit_code == 0, result.output
    assert "warning: privacy.target_epsilon=1e+09 is no meaningful privacy guarantee" in result.stderr


def test_dp_with_zero_noise_is_refused_with_the_fix(tiny_recipe):
    result = invoke("recipes", "validate", str(tiny_recipe), "privacy.target_epsilon=null", "privacy.noise_multiplier=0")
    assert result.exit_code == 2, result.output
    assert "epsilon is infinite" in result.output and "privacy.level=none" in result.output
    no_dp = invoke("recipes", "validate", str(tiny_recipe), "privacy.level=none", "privacy.noise_multiplier=0")
    assert no_dp.exit_code == 0, no_dp.output


def test_a_huge_target_epsilon_in_a_recipe_is_warned_about(tiny_recipe):
    result = invoke("recipes", "validate", str(tiny_recipe), "privacy.target_epsilon=1e9", "--json")
    assert result.exit_code == 0, result.output
    [report] = json.loads(result.stdout)
    assert [w["message"] for w in report["warnings"] if w["kind"] == "weak_epsilon"] == [
        "privacy.target_epsilon=1e+09 is no meaningful privacy guarantee (it bounds an attacker's odds by e^1e+09); "
        "choose an epsilon of at most 100, typically 1 to 10"
    ]


@pytest.mark.parametrize("content", [bytes(range(256)) * 2, b"name: x\n\x00\x01\x02\n"], ids=["binary", "control-characters"])
def test_a_binary_recipe_file_is_refused_naming_the_file(tmp_path, content):
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(content)
    result = invoke("recipes", "validate", str(garbage))
    assert result.exit_code == 2, result.output
    assert f"error in {garbage}:" in result.output


@pytest.mark.parametrize("key, value", [("partition.seed", "-1"), ("federation.seed", "-5"), ("data.split_seed", str(2**40))])
def test_out_of_range_seeds_are_refused_naming_the_key(tiny_recipe, key, value):
    result = invoke("recipes", "validate", str(tiny_recipe), f"{key}={value}")
    assert result.exit_code == 2, result.output
    assert f"{key}:" in result.output


@pytest.mark.parametrize("rank", ["33", "1000000000"])
def test_a_rank_larger_than_the_adapted_layers_is_refused_before_building(tiny_recipe, tmp_path, rank):
    result = limited_fedlora("train", str(tiny_recipe), f"model.rank={rank}", "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert f"model.rank={rank} is larger than the adapted layer" in result.stderr
    assert "set model.rank at most 32" in result.stderr
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------- damaged files in a run directory
def trained_run(tiny_recipe: Path, out: Path) -> Path:
    result = invoke("train", str(tiny_recipe), "federation.rounds=1", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    return out


def damaged_copy(run: Path, where: Path, damage) -> Path:
    copy = where / f"copy-{len(list(where.iterdir()))}"
    shutil.copytree(run, copy)
    damage(copy)
    return copy


def set_meta(key, value):
    def damage(run: Path) -> None:
        path = run / "checkpoint" / "meta.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))

    return damage


def test_eval_of_an_empty_or_truncated_adapter_exits_2_naming_the_file(tiny_recipe, tmp_path):
    run = trained_run(tiny_recipe, tmp_path / "run")
    weights = Path("adapter") / "adapter_model.safetensors"
    for size in (0, 100):
        copy = damaged_copy(run, tmp_path, lambda r: os.truncate(r / weights, size))
        result = invoke("eval", str(copy))
        assert result.exit_code == 2, result.output
        assert f"{copy / weights}: cannot be read" in result.output and "train the run again" in result.output


def test_resume_of_a_damaged_checkpoint_exits_2_naming_the_file(tiny_recipe, tmp_path):
    run = trained_run(tiny_recipe, tmp_path / "run")
    (run / "summary.json").unlink()  # as if it stopped before the end
    meta, state = Path("checkpoint") / "meta.json", Path("checkpoint") / "state-00001.safetensors"
    cases = [
        (lambda r: os.truncate(r / meta, 20), meta, "not valid JSON"),
        (set_meta("rounds_done", "one"), meta, "rounds_done must be int"),
        (set_meta("client_steps", 5), meta, "client_steps must be list"),
        (set_meta("client_steps", [1, "x"]), meta, "client_steps must be a list of step counts"),
        (lambda r: (r / meta).write_text("[1, 2]"), meta, "not a JSON object"),
        (lambda r: os.truncate(r / state, 50), state, "cannot be read"),
        (lambda r: (r / state).unlink(), state, "cannot be read"),
        (lambda r: os.truncate(r / "metrics.jsonl", 30), Path("metrics.jsonl"), "line 1 is not valid JSON"),
    ]
    for damage, damaged, says in cases:
        copy = damaged_copy(run, tmp_path, damage)
        result = invoke("train", "--resume", str(copy), "--json")
        assert result.exit_code == 2, (says, result.output)
        assert f"{copy / damaged}: {says}" in result.output and "restore it from a copy" in result.output


def test_compare_with_a_truncated_summary_or_metrics_exits_2_naming_the_file(tiny_recipe, tmp_path):
    run = trained_run(tiny_recipe, tmp_path / "run")
    summary = damaged_copy(run, tmp_path, lambda r: os.truncate(r / "summary.json", 30))
    metrics = damaged_copy(run, tmp_path, lambda r: ((r / "summary.json").unlink(), os.truncate(r / "metrics.jsonl", 30)))
    for copy, damaged in ((summary, "summary.json"), (metrics, "metrics.jsonl")):
        result = invoke("compare", str(run), str(copy))
        assert result.exit_code == 2, result.output
        assert f"{copy / damaged}:" in result.output and "not valid JSON" in result.output


def test_out_that_is_a_file_or_under_one_exits_2_before_loading_anything(tiny_recipe, tmp_path):
    (tmp_path / "afile").write_text("keep\n")
    for out in (tmp_path / "afile", tmp_path / "afile" / "run"):
        result = invoke("train", str(tiny_recipe), "--out", str(out))
        assert result.exit_code == 2, result.output
        assert f"--out {out}: {tmp_path / 'afile'} is a file, not a directory" in result.output
    assert (tmp_path / "afile").read_text() == "keep\n"


@pytest.mark.parametrize("name, says", [("plot.xyz", "cannot write a '.xyz' image"), ("plot", "cannot write a '' image"), ("afile/plot.png", "is a file, not a directory")])
def test_png_with_an_unsupported_extension_or_under_a_file_exits_2(tiny_recipe, tmp_path, name, says):
    (tmp_path / "afile").write_text("keep\n")
    png = tmp_path / name
    result = invoke("partition", str(tiny_recipe), "--png", str(png))
    assert result.exit_code == 2, result.output
    assert f"--png {png}:" in result.output and says in result.output
    assert not png.exists()


def test_resume_after_the_recipe_changed_exits_2_saying_what_changed(tiny_recipe, tmp_path):
    run = trained_run(tiny_recipe, tmp_path / "run")
    (run / "summary.json").unlink()
    recipe = (run / "recipe.yaml").read_text()
    edited = recipe.replace("rank: 4", "rank: 8").replace("rounds: 1", "rounds: 3")
    assert edited.count("rank: 8") == 1 and edited.count("rounds: 3") == 1
    (run / "recipe.yaml").write_text(edited)
    result = invoke("train", "--resume", str(run), "--json")
    assert result.exit_code == 2, result.output
    assert f"{run / 'recipe.yaml'}: changed since the checkpoint (model.rank: 4 -> 8; federation.rounds: 1 -> 3)" in result.output
    (run / "recipe.yaml").write_text(recipe)
    assert invoke("train", "--resume", str(run), "--json").exit_code == 0


def test_a_recipe_that_would_take_prv_minutes_is_refused_at_once(tiny_recipe):
    result = limited_fedlora(
        "recipes", "validate", str(tiny_recipe), "privacy.accountant=prv", "federation.rounds=400000", seconds=60
    )
    assert result.returncode == 2, result.stderr
    assert "privacy.accountant=prv: 1200000 steps" in result.stderr and "privacy.accountant=rdp" in result.stderr
