"""`fedlora recipes validate FILE key=value ...`: the data report and the warnings (issue 16, item 1).

Every number is checked against an independent reference: label counts read back with the
csv module, token counts built from a one-token word, sampling rates from q = min(1, B/n),
noise multipliers against Opacus's RDP accountant, warnings recomputed from their rules.
"""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest
from opacus.accountants import RDPAccountant
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.data_report import (
    MAX_SIGMA_OVER_BATCH,
    ONE_LABEL_SHARE,
    SMALL_CLIENT_BATCHES,
    client_warnings,
    data_report,
)
from fedlora_cli.models import load_tokenizer
from fedlora_cli.privacy.label_prior import prior_epsilon_of
from fedlora_cli.validate import check_recipe

runner = CliRunner()
# one-label clients of 24 examples (below 2 x batch 32), all sampled whole at epsilon 2: every rule fires
HOPELESS = [
    "partition.method=pathological",
    "partition.labels_per_client=1",
    "federation.clients=6",
    "federation.batch_size=32",
    "privacy.target_epsilon=2",
]


def rdp_epsilon(sigma: float, rate: float, steps: int, delta: float) -> float:
    accountant = RDPAccountant()
    accountant.history = [(sigma, rate, steps)]
    return accountant.get_epsilon(delta=delta)


@pytest.fixture
def lengths_csv(tmp_path):
    """Texts of n copies of the one-token word 'word' (n + 2 tokens with [CLS] and [SEP])."""
    path = tmp_path / "lengths.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(200):
            writer.writerow([" ".join(["word"] * (4 + i % 20)), "ab"[i % 2]])
    return path


def test_rows_labels_and_truncation(tiny_recipe, lengths_csv, tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    assert tokenizer.tokenize("word word") == ["word", "word"]
    checked = check_recipe(str(tiny_recipe), [f"data.source={lengths_csv}", "data.max_length=16", "data.test_fraction=0.25"])
    report = data_report(checked, tokenizer)
    assert report["rows"] == {"train": 150, "test": 50}
    with open(lengths_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert Counter(r["label"] for r in rows) == Counter(
        {row["label"]: row["train"] + row["test"] for row in report["labels"]}
    )
    for row in report["labels"]:
        assert row["train_share"] == row["train"] / 150 and row["test_share"] == row["test"] / 50
    # a text of n words has n + 2 tokens: cut when n > 14
    for split, data in (("train", checked.train), ("test", checked.test)):
        expected = sum(len(text.split()) + 2 > 16 for text in data.texts) / len(data)
        assert report["truncated_share"][split] == expected
        assert 0 < expected < 1


def test_clients_sampling_rate_and_calibrated_noise(tiny_recipe, tiny_model_dir):
    checked = check_recipe(str(tiny_recipe), ["partition.method=iid"])
    report = data_report(checked, load_tokenizer(tiny_model_dir))
    recipe = checked.recipe
    fed, privacy = recipe.federation, recipe.privacy
    assert [c["examples"] for c in report["clients"]] == [len(i) for i in checked.client_indices]
    assert sum(c["examples"] for c in report["clients"]) == report["rows"]["train"]
    for client, indices in zip(report["clients"], checked.client_indices):
        labels = Counter(checked.train.labels[i] for i in indices)
        assert client["label_shares"] == {
            name: labels[k] / len(indices) for k, name in enumerate(checked.train.label_names)
        }
        assert client["sample_rate"] == min(1.0, fed.batch_size / len(indices))
        steps = fed.rounds * fed.local_steps
        reached = rdp_epsilon(client["noise_multiplier"], client["sample_rate"], steps, privacy.delta) + prior_epsilon_of(recipe)
        assert privacy.target_epsilon * 0.99 <= reached <= privacy.target_epsilon
    assert report["warnings"] == []


def test_every_warning_rule(tiny_recipe):
    checked = check_recipe(str(tiny_recipe), HOPELESS)
    warnings = client_warnings(checked)
    expected = set()
    for k, indices in enumerate(checked.client_indices):
        n = len(indices)
        top = max(Counter(checked.train.labels[i] for i in indices).values()) / n
        budget = checked.privacy.clients[k]
        if n < SMALL_CLIENT_BATCHES * 32:
            expected.add(("small_client", k))
        if top >= ONE_LABEL_SHARE:
            expected.add(("one_label_client", k))
        if budget.noise_multiplier / (budget.sample_rate * n) > MAX_SIGMA_OVER_BATCH:
            expected.add(("noise_too_high", k))
    assert {(w["kind"], w["client"]) for w in warnings} == expected
    assert {kind for kind, _ in expected} == {"small_client", "one_label_client", "noise_too_high"}
    assert all(f"client {w['client']}" in w["message"] for w in warnings)


def test_validate_prints_the_report_and_warns_on_stderr(tiny_recipe):
    result = runner.invoke(app, ["recipes", "validate", str(tiny_recipe), *HOPELESS])
    assert result.exit_code == 0, result.output
    assert f"{tiny_recipe}: ok: 144 train and 36 test rows" in result.stdout
    assert "noise multiplier" in result.stdout and "label mix" in result.stdout
    assert "warning:" not in result.stdout
    assert result.stderr.count("warning:") == 18  # 6 clients x 3 rules


def test_validate_json_carries_report_and_warnings(tiny_recipe):
    result = runner.invoke(app, ["recipes", "validate", str(tiny_recipe), *HOPELESS, "--json"])
    assert result.exit_code == 0
    [entry] = json.loads(result.stdout)
    assert entry["ok"] and entry["rows"] == {"train": 144, "test": 36}
    assert len(entry["warnings"]) == 18 and len(entry["clients"]) == 6
    assert result.stderr == ""


def test_train_warns_before_round_one(tiny_recipe, tmp_path, monkeypatch):
    quick = [*HOPELESS, "federation.rounds=1", "federation.local_steps=1"]
    expected = client_warnings(check_recipe(str(tiny_recipe), quick))
    assert len(expected) >= 12  # every client is small and one-label
    result = runner.invoke(app, ["train", str(tiny_recipe), *quick, "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[: len(expected)] == [{"type": "warning", **w} for w in expected]
    assert [line["type"] for line in lines[len(expected) :]] == ["round", "summary"]
    assert not any(w["message"] in result.stderr for w in expected)  # stdout carries them as JSON
    monkeypatch.setattr("fedlora_cli.cli.train.wants_json", lambda flag: flag)  # as on a terminal
    result = runner.invoke(app, ["train", str(tiny_recipe), *quick, "--out", str(tmp_path / "run2"), "--quiet"])
    assert result.exit_code == 0
    client_lines = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert [line for line in client_lines if "did not learn" not in line] == [
        f"warning: {w['message']}" for w in expected
    ]


def test_client_level_reports_one_rate_and_noise(tiny_recipe, tiny_model_dir):
    checked = check_recipe(str(tiny_recipe), ["privacy.level=client", "method.name=fedavg"])
    report = data_report(checked, load_tokenizer(tiny_model_dir))
    fed, privacy = checked.recipe.federation, checked.recipe.privacy
    assert report["client_sample_rate"] == fed.clients_per_round / fed.clients
    reached = rdp_epsilon(report["noise_multiplier"], report["client_sample_rate"], fed.rounds, privacy.delta)
    assert privacy.target_epsilon * 0.99 <= reached <= privacy.target_epsilon
    assert all(c["sample_rate"] is None and c["noise_multiplier"] is None for c in report["clients"])
    assert not any(w["kind"] == "noise_too_high" for w in report["warnings"])
