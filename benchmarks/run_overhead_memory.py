"""Orchestration overhead and memory of whole runs: 6 clients vs 1,000 clients.

Runs ``fedlora train`` as a child process per configuration on SST-2 (default model, DP-SGD,
iid split so 1,000 clients all get data)
and reports, from the run's own metrics:

* the fraction of wall time spent outside client compute
  (``1 − Σ client_seconds / wall_seconds``: sampling, aggregation, accounting, evaluation,
  checkpointing, the final save and reload check, reporting; model loading and tokenization
  happen before the run's clock starts), the same without test-set evaluation, and the share
  of the whole process's wall time (start-up included) that is not client compute;
* the child's peak resident memory (``ru_maxrss`` from ``wait4``).

    python benchmarks/run_overhead_memory.py --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"

CONFIGS = {
    "6 clients, 3 per round": ["federation.clients=6", "federation.clients_per_round=3"],
    "1000 clients, 10 per round": ["federation.clients=1000", "federation.clients_per_round=10"],
}


def run(overrides: list[str], out: Path) -> dict:
    command = [sys.executable, "-m", "fedlora_cli", "train", "default", *overrides, "--out", str(out), "--json"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    _, status, usage = os.wait4(process.pid, 0)
    process_seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"run failed: {' '.join(command)}\n{process.stderr.read().decode()}")
    summary = json.loads((out / "summary.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    client_seconds = sum(m["client_seconds"] for m in metrics)
    eval_seconds = sum(m.get("eval_seconds", 0.0) for m in metrics)
    return {
        "wall_seconds": summary["wall_seconds"],
        "client_seconds": client_seconds,
        "eval_seconds": eval_seconds,
        "outside_client_fraction": 1 - client_seconds / summary["wall_seconds"],
        "outside_client_and_eval_fraction": 1 - (client_seconds + eval_seconds) / summary["wall_seconds"],
        "process_seconds": process_seconds,
        "outside_client_fraction_of_process": 1 - client_seconds / process_seconds,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "final_accuracy": summary["final_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--local-steps", type=int, default=4)
    args = parser.parse_args()
    common = [
        f"data.source={SST2 / 'train.tsv'}",
        f"data.test_path={SST2 / 'test.tsv'}",
        "data.text_column=sentence",
        "data.max_train_samples=30000",
        "data.max_length=64",
        "partition.method=iid",
        "partition.min_samples=8",
        f"federation.rounds={args.rounds}",
        f"federation.local_steps={args.local_steps}",
        "federation.batch_size=16",
        f"federation.eval_every={args.rounds}",
    ]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, overrides) in enumerate(CONFIGS.items()):
            results[name] = run(common + overrides, Path(tmp) / f"run{index}")
            print(json.dumps({name: results[name]}), flush=True)
    small, large = results.values()
    print(json.dumps({"peak_rss_ratio_1000_vs_6": large["peak_rss_mb"] / small["peak_rss_mb"]}, indent=2))


if __name__ == "__main__":
    main()
