"""benchmarks/suite.py's table: issue 13's targets (collapsed runs, the largest class, the gap to the probe)."""

from __future__ import annotations

from conftest import load_benchmark


def summary(accuracy: float, counts: list[int], collapsed: bool, auc: float | None = None) -> dict:
    return {"final_accuracy": accuracy, "final_macro_f1": accuracy - 0.2, "predicted_counts": counts, "collapsed": collapsed,
            "final_auc": auc}


def test_table_reports_collapsed_runs_largest_class_and_gap_to_probe():
    suite = load_benchmark("suite")
    runs = [summary(0.86, [40, 960], True, 0.70), summary(0.88, [100, 900], False, 0.80), None]  # the third run did not finish
    probes = {"rt_imb": {"majority_accuracy": 0.85, "probe_accuracy": 0.90, "probe_macro_f1": 0.70}}
    row = suite.table({("rt_imb", "fedsvd", "6"): runs}, probes).splitlines()[2]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:4] == ["rt_imb", "fedsvd", "ε=6", "2"]
    assert cells[5] == "0.860 0.880"
    assert cells[7] == "0.750"  # mean ROC-AUC
    assert cells[8] == "1/2"  # collapsed
    assert cells[9] == "96.0%"  # the most one class took of any run's answers
    assert cells[10] == "0.850"
    assert cells[12] == "-3.0"  # mean 0.870 against the probe's 0.900, in points


def test_table_skips_cells_with_no_finished_run():
    suite = load_benchmark("suite")
    probes = {"bbc": {"majority_accuracy": 0.2, "probe_accuracy": 0.96, "probe_macro_f1": 0.95}}
    assert len(suite.table({("bbc", "ffa", "none"): [None]}, probes).splitlines()) == 2


def test_table_says_na_for_auc_when_a_run_predates_it():
    suite = load_benchmark("suite")
    probes = {"rt": {"majority_accuracy": 0.5, "probe_accuracy": 0.73, "probe_macro_f1": 0.73}}
    older = {key: value for key, value in summary(0.71, [500, 500], False).items() if key != "final_auc"}  # no such key then
    runs = [summary(0.72, [500, 500], False, 0.80), older]
    row = suite.table({("rt", "fedsvd", "6"): runs}, probes).splitlines()[2]
    assert [cell.strip() for cell in row.strip("|").split("|")][7] == "n/a"


def test_paired_table_pairs_runs_by_seed_and_skips_unfinished_pairs():
    suite = load_benchmark("suite")
    results = {
        ("rt", "fedsvd", "3"): [summary(0.71, [1, 1], False), summary(0.70, [1, 1], False), summary(0.72, [1, 1], False)],
        ("rt", "fedavg", "3"): [summary(0.70, [1, 1], False), None, summary(0.75, [1, 1], False)],  # seed 1 unfinished
        ("rt", "ffa", "6"): [summary(0.70, [1, 1], False)],  # no fedsvd cell at ε=6 to pair with
    }
    lines = suite.paired_table(results, ["fedsvd", "fedavg", "ffa"]).splitlines()
    assert len(lines) == 3
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert cells[:4] == ["rt", "ε=3", "fedsvd − fedavg", "2"]
    # seed 0: +1.0, seed 2: −3.0 points; mean −1.0, t(0.975, 1) = 12.706 times stdev 2.828 / √2
    assert cells[5] == "+1.0 -3.0"
    assert cells[4] == "-1.0 ± 25.4"


def test_signed_points_never_print_minus_zero():
    suite = load_benchmark("suite")
    assert [suite.signed(x) for x in (-0.04, 0.04, -0.06, 1.25)] == ["+0.0", "+0.0", "-0.1", "+1.2"]
