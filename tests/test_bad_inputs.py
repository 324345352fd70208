"""Bad inputs and faults fed to the CLI (issue 15 item 6): each ends in exit code 2 with a message
naming the flag, key or file and the fix, or in a warning, never in a hang or an internal error."""

from __future__ import annotations

import json

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
    result = limited_fedlora("accountant", *flags, seconds=30)  # a hang fails with TimeoutExpired
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr


def test_accountant_warns_that_a_huge_target_epsilon_is_no_guarantee():
    result = invoke("accountant", "-e", "1e9", "-q", "0.1", "-t", "10", "--json")
    assert result.exit_code == 0, result.output
    assert "warning: --target-epsilon=1e+09 is no meaningful privacy guarantee" in result.output
    quiet = invoke("accountant", "-e", "8", "-q", "0.1", "-t", "10", "--json")
    assert "warning" not in quiet.output


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
