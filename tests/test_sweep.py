"""`fedlora sweep`: a grid x seeds, tables with mean and 95% CI, and pick-up after interruption."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.federation.sweep import mean_ci95

runner = CliRunner()


def test_mean_ci95_matches_student_t():
    mean, half = mean_ci95([0.5, 0.7, 0.6])
    assert mean == pytest.approx(0.6)
    assert half == pytest.approx(4.302653 * 0.1 / 3**0.5, rel=1e-5)
    assert mean_ci95([0.4]) == (0.4, 0.0)


def test_sweep_grid_tables_and_resume(tiny_recipe, tmp_path):
    out = tmp_path / "sweep"
    args = [
        "sweep", str(tiny_recipe), "federation.rounds=1",
        "--grid", "method=fedavg,ffa", "--grid", "privacy.target_epsilon=none,8",
        "--seeds", "2", "--out", str(out), "--json",
    ]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    lines = [json.loads(line) for line in first.stdout.splitlines()]
    runs = [line for line in lines if line["type"] == "run"]
    assert len(runs) == 8
    assert all((r["epsilon"] is None) == ("target_epsilon=none" in r["cell"]) for r in runs)
    assert all(r["epsilon"] is None or r["epsilon"] <= 8 for r in runs)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and all(row["seeds"] == "2" for row in rows)
    assert (out / "results.md").exists() and (out / "results.png").stat().st_size > 0
    assert len(list(out.glob("*_seed-*/metrics.png"))) == 8

    finished = sorted(out.glob("*_seed-*/summary.json"))
    mtimes = {p: p.stat().st_mtime_ns for p in finished}
    interrupted = finished[0]
    interrupted.unlink()  # as if killed after its last checkpoint
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert interrupted.exists()
    assert all(p.stat().st_mtime_ns == mtimes[p] for p in finished[1:])
    again = [json.loads(line) for line in second.stdout.splitlines()]
    assert [r["final_accuracy"] for r in again if r["type"] == "run"] == [r["final_accuracy"] for r in runs]


def test_sweep_rejects_a_bad_grid_before_running(tiny_recipe, tmp_path):
    result = runner.invoke(app, ["sweep", str(tiny_recipe), "--grid", "method=fedavg,fedsdv", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "did you mean 'fedsvd'" in result.output
    assert not (tmp_path / "s").exists()


def test_sweep_workers_split_the_plan_and_match_one_process(tiny_recipe, tmp_path):
    """--workers 2 runs the plan as two --shard processes; the runs equal the one-process sweep."""
    common = ["federation.rounds=1", "--grid", "method=fedavg,fedsvd", "--seeds", "2", "--json"]
    one = runner.invoke(app, ["sweep", str(tiny_recipe), *common, "--out", str(tmp_path / "one")])
    two = runner.invoke(app, ["sweep", str(tiny_recipe), *common, "--out", str(tmp_path / "two"), "--workers", "2"])
    assert one.exit_code == 0 and two.exit_code == 0, two.output
    for run in (tmp_path / "one").glob("*_seed-*"):
        first = json.loads((run / "summary.json").read_text())
        second = json.loads((tmp_path / "two" / run.name / "summary.json").read_text())
        assert second["final_accuracy"] == first["final_accuracy"]
        assert second["client_epsilons"] == first["client_epsilons"]
    tables = [list(csv.DictReader((tmp_path / name / "results.csv").open())) for name in ("one", "two")]
    drop_time = [[{k: v for k, v in row.items() if k != "wall_seconds_mean"} for row in table] for table in tables]
    assert drop_time[0] == drop_time[1] and len(drop_time[0]) == 2


def test_sweep_shard_runs_its_share_and_leaves_the_table_to_the_last(tiny_recipe, tmp_path):
    out = tmp_path / "s"
    args = ["sweep", str(tiny_recipe), "federation.rounds=1", "--grid", "method=fedavg,ffa,fedsvd", "--out", str(out)]
    first = runner.invoke(app, [*args, "--shard", "2/2"])
    assert first.exit_code == 0, first.output
    assert len(list(out.glob("*_seed-0/summary.json"))) == 1 and not (out / "results.csv").exists()
    assert "not finished" in first.output
    last = runner.invoke(app, [*args, "--shard", "1/2"])
    assert last.exit_code == 0, last.output
    assert last.output.count('"type": "run"') == 2  # its own runs 1 and 3; run 2 was reported by 2/2
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 3
    bad = runner.invoke(app, [*args, "--shard", "3/2"])
    assert bad.exit_code == 2 and "--shard" in bad.output


def test_more_seeds_or_a_sub_grid_reuse_the_runs_already_done(tiny_recipe, tmp_path):
    out = tmp_path / "s"
    base = ["sweep", str(tiny_recipe), "federation.rounds=1", "--out", str(out), "--json"]
    first = runner.invoke(app, [*base, "--grid", "method=fedavg,ffa"])
    assert first.exit_code == 0, first.output
    done = {p: p.stat().st_mtime_ns for p in out.glob("*_seed-0/summary.json")}
    assert len(done) == 2
    more = runner.invoke(app, [*base, "--grid", "method=ffa", "--seeds", "2"])
    assert more.exit_code == 0, more.output
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in done.items())  # not run again
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(row["cell"], row["seeds"]) for row in rows] == [("method.name=ffa", "2")]
    per_seed = [float(a) for a in rows[0]["accuracy_per_seed"].split()]
    assert len(per_seed) == 2 and sum(per_seed) / 2 == pytest.approx(float(rows[0]["accuracy_mean"]), abs=1e-4)
    other = runner.invoke(app, ["sweep", str(tiny_recipe), "federation.rounds=2", "--out", str(out), "--grid", "method=ffa"])
    assert other.exit_code == 2 and "another --out" in other.output
