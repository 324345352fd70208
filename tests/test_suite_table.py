"""benchmarks/suite.py's table: issue 13's targets (collapsed runs, the largest class, the gap to the probe)."""

from __future__ import annotations

from conftest import load_benchmark


def summary(accuracy: float, counts: list[int], collapsed: bool) -> dict:
    return {"final_accuracy": accuracy, "final_macro_f1": accuracy - 0.2, "predicted_counts": counts, "collapsed": collapsed}


def test_table_reports_collapsed_runs_largest_class_and_gap_to_probe():
    suite = load_benchmark("suite")
    runs = [summary(0.86, [40, 960], True), summary(0.88, [100, 900], False), None]  # the third run did not finish
    probes = {"rt_imb": {"majority_accuracy": 0.85, "probe_accuracy": 0.90, "probe_macro_f1": 0.70}}
    row = suite.table({("rt_imb", "fedsvd", "6"): runs}, probes).splitlines()[2]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:4] == ["rt_imb", "fedsvd", "ε=6", "2"]
    assert cells[5] == "0.860 0.880"
    assert cells[7] == "1/2"  # collapsed
    assert cells[8] == "96.0%"  # the most one class took of any run's answers
    assert cells[9] == "0.850"
    assert cells[11] == "-3.0"  # mean 0.870 against the probe's 0.900, in points


def test_table_skips_cells_with_no_finished_run():
    suite = load_benchmark("suite")
    probes = {"bbc": {"majority_accuracy": 0.2, "probe_accuracy": 0.96, "probe_macro_f1": 0.95}}
    assert len(suite.table({("bbc", "ffa", "none"): [None]}, probes).splitlines()) == 2
