"""Noise calibration trusts nothing it did not just compute (issue 17 item 2, issue 15).

A cached noise multiplier is re-checked before use, and the gdp accountant (a central-limit
approximation that can underestimate epsilon) never calibrates. References: Opacus's
accountants called directly and Google's independent ``dp-accounting`` PLD accountant.
"""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.errors import InputError
from fedlora_cli.privacy import accountants
from fedlora_cli.privacy.accountants import calibrate_noise, epsilon

DELTA = 1e-5
TARGET, RATE, STEPS = 8.0, 0.25, 6  # a calibration that takes about a second


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty calibration cache directory and an empty in-process memo."""
    monkeypatch.setenv("FEDLORA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(accountants, "_CALIBRATIONS", {})
    return tmp_path / "cache" / "noise_calibration.json"


def pld_epsilon(noise: float, rate: float, steps: int, delta: float) -> float:
    """Epsilon by dp-accounting's privacy-loss-distribution accountant (independent of Opacus)."""
    dp_accounting = pytest.importorskip("dp_accounting")
    from dp_accounting.pld import pld_privacy_accountant

    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    accountant.compose(dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise)), steps)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("planted", [0.01, 1e6, -1.0, 0.0, math.nan, "0.8", None, [0.8]])
def test_a_planted_bad_cache_entry_is_recalibrated_and_rewritten(fresh_cache, monkeypatch, planted):
    good = calibrate_noise(TARGET, DELTA, RATE, STEPS, "rdp")
    (key,) = json.loads(fresh_cache.read_text())
    fresh_cache.write_text(json.dumps({key: planted}))  # 0.01: epsilon in the thousands; 1e6: useless noise
    monkeypatch.setattr(accountants, "_CALIBRATIONS", {})

    sigma = calibrate_noise(TARGET, DELTA, RATE, STEPS, "rdp")
    assert sigma == good
    assert TARGET * 0.99 <= epsilon(sigma, RATE, STEPS, DELTA, "rdp") <= TARGET
    assert json.loads(fresh_cache.read_text()) == {key: good}


def test_a_cache_file_that_is_not_an_object_is_ignored(fresh_cache):
    fresh_cache.parent.mkdir(parents=True)
    fresh_cache.write_text("[1, 2, 3]")
    sigma = calibrate_noise(TARGET, DELTA, RATE, STEPS, "rdp")
    assert epsilon(sigma, RATE, STEPS, DELTA, "rdp") <= TARGET
    assert list(json.loads(fresh_cache.read_text()).values()) == [sigma]


def test_a_good_cache_entry_is_used_without_searching(fresh_cache, monkeypatch):
    good = calibrate_noise(TARGET, DELTA, RATE, STEPS, "rdp")
    monkeypatch.setattr(accountants, "_CALIBRATIONS", {})

    def no_search(*args):
        raise AssertionError("a valid cache entry was recalibrated")

    monkeypatch.setattr(accountants, "_search_noise", no_search)
    assert calibrate_noise(TARGET, DELTA, RATE, STEPS, "rdp") == good


def test_gdp_does_not_calibrate_because_it_underestimates_epsilon(fresh_cache):
    from opacus.accountants.utils import get_noise_multiplier

    # the reason: gdp's own calibration for epsilon 3 spends more than 3 by the PLD accountant
    gdp_sigma = get_noise_multiplier(
        target_epsilon=3.0, target_delta=DELTA, sample_rate=0.01, steps=1000, accountant="gdp", epsilon_tolerance=0.015
    )
    assert gdp_sigma == pytest.approx(0.742, abs=1e-3)
    assert pld_epsilon(gdp_sigma, 0.01, 1000, DELTA) == pytest.approx(3.88, abs=0.01)

    with pytest.raises(InputError, match="privacy.accountant=gdp cannot calibrate noise.*privacy.noise_multiplier"):
        calibrate_noise(3.0, DELTA, 0.01, 1000, "gdp")
    assert not fresh_cache.exists()


def test_accountant_cli_refuses_gdp_for_a_target_and_all_calibrates_with_upper_bounds(fresh_cache):
    runner = CliRunner()
    refused = runner.invoke(app, ["accountant", "-e", "3", "-q", "0.01", "-t", "1000", "--accountant", "gdp"])
    assert refused.exit_code == 2, refused.output
    assert "--accountant gdp cannot calibrate noise" in refused.stderr and "--noise-multiplier" in refused.stderr
    assert "Traceback" not in refused.output

    both = runner.invoke(app, ["accountant", "-e", "3", "-q", "0.01", "-t", "1000", "--accountant", "all", "--json"])
    assert both.exit_code == 0, both.output
    rows = json.loads(both.stdout)["results"]
    assert [row["accountant"] for row in rows] == ["rdp", "prv"]
    for row in rows:
        assert pld_epsilon(row["noise_multiplier"], 0.01, 1000, DELTA) <= 3.0

    reported = runner.invoke(app, ["accountant", "-s", "0.742", "-q", "0.01", "-t", "1000", "-a", "gdp"])
    assert reported.exit_code == 0, reported.output
    assert "underestimate" in reported.stdout


@pytest.mark.parametrize("command", [["accountant", "--recipe"], ["train"]])
def test_a_recipe_calibrating_with_gdp_is_refused_before_anything_is_written(tiny_recipe, tmp_path, fresh_cache, command):
    out = ["--out", str(tmp_path / "run")] if command == ["train"] else []
    result = CliRunner().invoke(app, [*command, str(tiny_recipe), "privacy.accountant=gdp", *out])
    assert result.exit_code == 2, result.output
    assert "privacy.accountant=gdp cannot calibrate noise" in result.stderr
    assert not (tmp_path / "run").exists()


def test_gdp_still_reports_epsilon_for_a_recipe_with_a_fixed_noise_multiplier(tiny_recipe, fresh_cache):
    fixed = ["privacy.accountant=gdp", "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0"]
    result = CliRunner().invoke(app, ["accountant", "--recipe", str(tiny_recipe), *fixed, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["calibrated_with"] == "gdp"
