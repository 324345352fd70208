"""Partitioners (iid, dirichlet, pathological, shards, quantity) and `fedlora partition`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.data.partition import label_counts, partition
from fedlora_cli.data.partitioners import PARTITIONERS, REGISTRY, PartitionOptions
from fedlora_cli.errors import InputError
from fedlora_cli.recipe import parse_recipe

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# 5 unbalanced labels, 600 samples, shuffled so that label order is not index order
LABELS = np.random.default_rng(123).permutation(np.repeat(np.arange(5), [240, 150, 110, 60, 40]))

# every registered partitioner with its default options (a new partitioner joins these rows), plus settings
CASES = {name: {} for name in PARTITIONERS} | {
    "dirichlet": {"alpha": 0.5},
    "pathological": {"labels_per_client": 2},
    "shards": {"shards_per_client": 3},
    "quantity-power": {"method": "quantity", "size_distribution": "power_law", "power_law_exponent": 1.2},
    "quantity-dirichlet": {"method": "quantity", "size_distribution": "dirichlet", "size_alpha": 0.5},
}


def config(case: str, **extra) -> PartitionOptions:
    return REGISTRY.parse({"method": case, **CASES[case], **extra})


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("clients", [3, 7])
def test_covers_every_sample_exactly_once_and_respects_min(case, clients):
    cfg = config(case, min_samples=12, seed=5)
    parts = partition(LABELS, clients, cfg)
    assert len(parts) == clients
    joined = np.concatenate(parts)
    assert len(joined) == len(LABELS), "a sample was dropped or duplicated"
    assert np.array_equal(np.sort(joined), np.arange(len(LABELS)))
    assert min(len(p) for p in parts) >= 12
    for part in parts:
        assert part.dtype.kind == "i" and np.all(np.diff(part) > 0)


@pytest.mark.parametrize("case", CASES)
def test_deterministic_for_a_seed_and_seed_matters(case):
    first = partition(LABELS, 6, config(case, seed=11, min_samples=4))
    again = partition(LABELS, 6, config(case, seed=11, min_samples=4))
    other = partition(LABELS, 6, config(case, seed=12, min_samples=4))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_gives_exactly_k_labels_per_client(k):
    parts = partition(LABELS, 8, config("pathological", labels_per_client=k, min_samples=1))
    counts = label_counts(LABELS, parts, 5)
    assert [(row > 0).sum() for row in counts] == [k] * 8
    owners = (counts > 0).sum(axis=0)
    assert owners.min() >= 1 and owners.max() - owners.min() <= 1  # cyclic dealing balances owners
    # each label's samples are split equally among its owners
    for label in range(5):
        held = counts[:, label][counts[:, label] > 0]
        assert held.max() - held.min() <= 1


def test_shards_sort_by_label_and_deal_equal_shards():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(5), 40))
    parts = partition(labels, 10, config("shards", shards_per_client=2, min_samples=1, seed=3))
    counts = label_counts(labels, parts, 5)
    assert [len(p) for p in parts] == [20] * 10  # 20 shards of 10, two per client
    assert all((row > 0).sum() <= 2 for row in counts)  # shard size divides class size: one label per shard
    assert np.array_equal(counts.sum(axis=0), [40] * 5)
    assert np.all(counts % 10 == 0)


def test_quantity_power_law_sizes_follow_ranks():
    cfg = config("quantity-power", power_law_exponent=1.0, min_samples=10, seed=2)
    sizes = sorted((len(p) for p in partition(LABELS, 5, cfg)), reverse=True)
    shares = 1 / np.arange(1, 6)
    expected = 10 + shares / shares.sum() * (600 - 50)
    assert np.all(np.abs(np.array(sizes) - expected) <= 1)
    equal = partition(LABELS, 5, config("quantity-power", power_law_exponent=0.0, min_samples=1))
    assert max(len(p) for p in equal) - min(len(p) for p in equal) <= 1


def test_quantity_dirichlet_smaller_alpha_is_more_unequal_and_labels_stay_iid():
    spread = {}
    for alpha in (0.1, 100.0):
        sizes = [
            np.std([len(p) for p in partition(LABELS, 6, config("quantity-dirichlet", size_alpha=alpha, seed=s, min_samples=5))])
            for s in range(5)
        ]
        spread[alpha] = np.mean(sizes)
    assert spread[0.1] > 3 * spread[100.0]
    parts = partition(LABELS, 3, config("quantity-dirichlet", size_alpha=1.0, min_samples=150, seed=0))
    counts = label_counts(LABELS, parts, 5)
    overall = np.bincount(LABELS) / len(LABELS)
    for row in counts:
        assert np.abs(row / row.sum() - overall).max() < 0.15


@pytest.mark.parametrize(
    "case, extra, clients, needle",
    [
        ("pathological", {"labels_per_client": 6}, 4, "partition.labels_per_client to at most 5"),
        ("pathological", {"labels_per_client": 1}, 3, "labels_per_client to at least 2"),
        ("shards", {"shards_per_client": 400}, 2, "lower partition.shards_per_client"),
        ("iid", {"min_samples": 200}, 4, "partition.min_samples"),
        ("quantity-power", {"min_samples": 151}, 4, "partition.min_samples"),
        ("dirichlet", {"alpha": 0.01, "min_samples": 100}, 5, "raise partition.alpha"),
        ("pathological", {"labels_per_client": 1, "min_samples": 50}, 10, "raise partition.labels_per_client"),
    ],
)
def test_impossible_splits_say_what_to_change(case, extra, clients, needle):
    with pytest.raises(InputError) as info:
        partition(LABELS, clients, config(case, **extra))
    assert needle in str(info.value)


def test_recipe_schema_for_partition_fields():
    with pytest.raises(InputError) as info:
        parse_recipe({"partition": {"method": "shard", "shards_per_client": 2}})
    assert "partition.method: unknown partition 'shard' (did you mean 'shards'?)" in str(info.value)
    with pytest.raises(InputError) as info:
        parse_recipe({"partition": {"method": "quantity", "size_distribution": "zipf", "power_law_exponent": -1}})
    assert "partition.size_distribution" in str(info.value) and "partition.power_law_exponent" in str(info.value)
    for name, options in REGISTRY.options.items():
        for field, info in options.model_fields.items():
            assert field == "method" or info.description, f"{name}: partition.{field} has no description"


def test_an_option_of_another_partitioner_names_its_owner():
    with pytest.raises(InputError) as info:
        parse_recipe({"partition": {"method": "iid", "alpha": 0.1}})
    (problem,) = info.value.problems
    assert problem.startswith("partition.alpha: not an option of partition iid but of dirichlet")
    assert "set partition.method=dirichlet" in problem and "valid keys here: method, seed, min_samples" in problem


def test_switching_partitioner_by_override_drops_the_old_options():
    from fedlora_cli.recipe import load_recipe

    recipe = load_recipe("default", ["partition.method=shards", "partition.shards_per_client=3"])
    assert recipe.partition.model_dump() == {"method": "shards", "seed": 0, "min_samples": 32, "shards_per_client": 3}
    with pytest.raises(InputError, match="partition.alpha: not an option of partition shards"):
        load_recipe("default", ["partition.method=shards", "partition.alpha=0.3"])


def test_label_counts_matrix():
    parts = [np.array([0, 1]), np.array([2, 3, 4])]
    assert label_counts([0, 1, 1, 2, 2], parts, 3).tolist() == [[1, 1, 0], [0, 1, 2]]


# ---------------------------------------------------------------------------- the command
runner = CliRunner()


def test_partition_command_json_and_png(tiny_recipe, tmp_path):
    png = tmp_path / "out" / "split.png"
    result = runner.invoke(
        app, ["partition", str(tiny_recipe), "partition.method=pathological", "partition.labels_per_client=1", "--png", str(png), "--json"]
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["method"] == "pathological" and info["png"] == str(png)
    assert info["label_names"] == ["politics", "sports", "tech"]
    assert len(info["clients"]) == 4
    assert sum(c["size"] for c in info["clients"]) == 144  # 180 rows, 20% held out
    assert all(sum(1 for v in c["counts"].values() if v) == 1 for c in info["clients"])
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_partition_command_table_and_default_png(tiny_recipe, tmp_path, monkeypatch):
    import fedlora_cli.cli.partition as partition_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(partition_cli, "wants_json", lambda flag: flag)
    result = runner.invoke(app, ["partition", str(tiny_recipe), "partition.method=shards"])
    assert result.exit_code == 0, result.output
    assert "shards partition" in result.stdout
    for word in ("client", "size", "politics", "sports", "tech", "all", "144"):
        assert word in result.stdout
    assert (tmp_path / "partition.png").read_bytes()[:8] == PNG_MAGIC


def test_partition_command_bad_input_exit_2(tiny_recipe, tmp_path):
    result = runner.invoke(
        app, ["partition", str(tiny_recipe), "partition.method=pathological", "partition.labels_per_client=7", "--png", str(tmp_path / "x.png")]
    )
    assert result.exit_code == 2
    assert "labels_per_client" in result.output
    assert not (tmp_path / "x.png").exists()
