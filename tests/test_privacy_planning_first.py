"""Privacy planning happens before anything is written (issue 17, item 7).

A plan that cannot be made (target epsilon below the accountant's floor, a clipped-count noise
too small for adaptive clipping, an infinite noise multiplier) is a bad-input error from
`recipes validate` and from `fedlora train`, and leaves no run directory behind.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.errors import InputError
from fedlora_cli.privacy.accountants import epsilon_floor
from fedlora_cli.validate import check_recipe

runner = CliRunner()

UNPLANNABLE = {
    "below the rdp floor": (
        ["privacy.target_epsilon=0.01", "federation.logit_adjustment=0"],  # else the label prior's share is refused first
        "privacy.target_epsilon=0.01: cannot be reached",
    ),
    "count noise too small": (
        [
            "privacy.level=client",
            "method.name=fedavg",
            "privacy.adaptive_clipping=true",
            "privacy.clipped_count_stddev=0.01",
        ],
        "privacy.clipped_count_stddev=0.01 is too small",
    ),
    "infinite noise": (["privacy.target_epsilon=null", "privacy.noise_multiplier=.inf"], "privacy.noise_multiplier: must be a finite number"),
    "infinite target": (["privacy.target_epsilon=.inf"], "privacy.target_epsilon: must be a finite number"),
}


def test_the_floor_used_above_is_really_unreachable():
    assert epsilon_floor(1e-5, "rdp") > 0.01


@pytest.mark.parametrize("case", sorted(UNPLANNABLE))
def test_check_recipe_refuses_a_plan_that_cannot_be_made(tiny_recipe, case):
    overrides, message = UNPLANNABLE[case]
    with pytest.raises(InputError) as info:
        check_recipe(str(tiny_recipe), overrides)
    assert message in "\n".join(info.value.problems)
    assert info.value.source == str(tiny_recipe)


@pytest.mark.parametrize("case", sorted(UNPLANNABLE))
def test_validate_does_not_call_it_ok(tiny_recipe, case):
    overrides, message = UNPLANNABLE[case]
    result = runner.invoke(app, ["recipes", "validate", str(tiny_recipe), *overrides, "--json"])
    assert result.exit_code == 2, result.output
    [entry] = json.loads(result.stdout)
    assert entry["ok"] is False and any(message in p for p in entry["problems"])


def test_train_refuses_before_creating_the_run_directory_and_a_retry_works(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    bad = runner.invoke(
        app, ["train", str(tiny_recipe), "privacy.target_epsilon=0.01", "federation.logit_adjustment=0", "--out", str(out), "--json"]
    )
    assert bad.exit_code == 2
    assert "privacy.target_epsilon=0.01" in bad.stderr and "raise the target or delta" in bad.stderr
    assert "Traceback" not in bad.output
    assert not out.exists()
    good = runner.invoke(
        app, ["train", str(tiny_recipe), "federation.rounds=1", "federation.local_steps=1", "--out", str(out), "--json"]
    )
    assert good.exit_code == 0, good.output
    assert (out / "summary.json").is_file()
