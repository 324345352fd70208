"""Prove that a recipe trains and resumes on a GPU, and measure its speed, memory and DP overhead.

    python benchmarks/gpu_check.py [RECIPE] [key.sub=value ...] [--device cuda:0] [--rounds 3]

RECIPE is a builtin name or a recipe file (default: the builtin ``default``; any task kind).
Three runs of RECIPE, in this process (so the GPU's memory counters can be read), on ``--device``:

1. *straight*: ``--rounds`` rounds without a stop;
2. *resumed*: the same run stopped by Ctrl-C (KeyboardInterrupt, as a user would) after round
   ``--rounds − 1``, then resumed from its checkpoint on a freshly built model to the end;
3. *no DP*: the straight run with ``privacy.level=none`` (the same loop without Opacus).

For each it prints client-training throughput (examples/s, and tokens/s counting the
non-padding tokens of every training forward pass) over the time clients spent training, and
the peak GPU memory (``torch.cuda.max_memory_allocated``). It then compares the resumed run with
the straight one (per-round metrics without timings, and the final adapter tensors) and gives the
DP overhead: seconds per training token with DP over seconds per token without, minus 1.

By default the runs use ``torch.use_deterministic_algorithms(True, warn_only=True)`` (with
``CUBLAS_WORKSPACE_CONFIG=:4096:8``), so a resumed run can be bit-identical on the GPU too (an op
without a deterministic CUDA kernel warns, and the resumed run may then differ in the last bits);
``--no-deterministic`` measures the faster default kernels. On a GPU a resumed run passes when it
is bit-identical or its adapter is within ``--atol`` of the straight run's.

Exit codes: 0 the resumed run matches, 1 it does not, 2 bad input or no CUDA GPU (``--device cpu``
makes a dry run on the CPU, where the resumed run must be bit-identical).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

class QuietReporter:
    """Reports nothing; raises KeyboardInterrupt once round ``stop_after`` is committed (if set)."""

    def __init__(self, stop_after: int | None = None):
        self.stop_after = stop_after

    def run_started(self, info: dict) -> None:
        print(f"  on {info['device']} ({info['precision']}), resumed at round {info['resumed_at_round']}", flush=True)

    def round_started(self, round_number: int, clients: list[int]) -> None:
        pass

    def round_finished(self, metrics: dict) -> None:
        if metrics["round"] == self.stop_after:
            raise KeyboardInterrupt

    def note(self, text: str) -> None:
        pass

    def run_finished(self, summary: dict) -> None:
        pass


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(recipe: str | None, overrides: list[str], out: Path, stop_after: int | None = None, resume: bool = False) -> dict:
    """Build the experiment and train it in ``out`` (resuming its checkpoint when ``resume``);
    returns the client-training counters and the GPU's peak memory."""
    import torch

    from fedlora_cli.federation.clients import InProcessClients
    from fedlora_cli.federation.engine import FederatedRun
    from fedlora_cli.federation.experiment import build_experiment
    from fedlora_cli.federation.run_dir import RunDir
    from fedlora_cli.recipe import dump_recipe
    from fedlora_cli.validate import check_recipe

    checked = check_recipe(recipe, overrides)
    experiment = build_experiment(checked.recipe, checked.train, checked.test, checked.client_indices)
    counters = {"examples": 0, "tokens": 0, "client_seconds": 0.0}

    def count_tokens(module, args, kwargs):
        if module.training:
            mask = kwargs.get("attention_mask")
            counters["tokens"] += int(mask.sum()) if mask is not None else kwargs["input_ids"].numel()

    class CountingClients:  # the run's own in-process clients, timed
        def __init__(self, inner: InProcessClients, device: torch.device):
            self.inner, self.device = inner, device

        def train(self, round_index, tasks, global_state, base):
            synchronize(self.device)
            start = time.perf_counter()
            replies = self.inner.train(round_index, tasks, global_state, base)
            synchronize(self.device)
            counters["client_seconds"] += time.perf_counter() - start
            counters["examples"] += sum(result.examples for result in replies.results.values())
            return replies

    experiment.model.register_forward_pre_hook(count_tokens, with_kwargs=True)
    if resume:
        run_dir = RunDir.existing(out)
    else:
        run_dir = RunDir.at(out)
        run_dir.write_recipe(dump_recipe(checked.recipe))
    run = FederatedRun(experiment, run_dir, QuietReporter(stop_after))
    run.clients = CountingClients(run.clients, run.device)
    if resume:
        run.resume()
    device = run.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        run.run()
    except KeyboardInterrupt:
        if stop_after is None:
            raise
    seconds = counters["client_seconds"]
    return {
        **counters,
        "examples_per_second": counters["examples"] / seconds if seconds else None,
        "tokens_per_second": counters["tokens"] / seconds if seconds else None,
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }


def read_run(path: Path) -> tuple[list[dict], dict]:
    from safetensors.torch import load_file

    from fedlora_cli.federation.engine import TIMING_KEYS

    metrics = [
        {k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
        for line in (path / "metrics.jsonl").read_text().splitlines()
    ]
    return metrics, load_file(str(path / "adapter" / "adapter_model.safetensors"))


def compare(straight: Path, resumed: Path) -> dict:
    """Whether the resumed run's metrics and adapter equal the straight run's, and the largest
    absolute difference of an adapter tensor."""
    metrics_a, adapter_a = read_run(straight)
    metrics_b, adapter_b = read_run(resumed)
    same_keys = adapter_a.keys() == adapter_b.keys()
    largest = max((float((adapter_a[k].double() - adapter_b[k].double()).abs().max()) for k in adapter_a), default=0.0)
    return {
        "metrics_identical": metrics_a == metrics_b,
        "adapter_identical": same_keys and all(adapter_a[k].equal(adapter_b[k]) for k in adapter_a),
        "adapter_max_abs_difference": largest if same_keys else None,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default=None, help="builtin recipe name or file (default: default)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides applied to every run")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a dry run (default: cuda)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every run; the stop is one round earlier")
    parser.add_argument("--atol", type=float, default=1e-5, help="largest adapter difference a resumed GPU run may have")
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    if args.recipe is not None and "=" in args.recipe and not Path(args.recipe).exists():
        args.overrides, args.recipe = [args.recipe, *args.overrides], None
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (stop after rounds − 1, resume to rounds)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts
    import torch

    from fedlora_cli.errors import InputError

    if args.device != "cpu" and not torch.cuda.is_available():
        print(
            f"gpu_check: torch sees no CUDA GPU (torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
            "run it on a GPU machine with a CUDA build of torch, or pass --device cpu for a dry run on the CPU",
            file=sys.stderr,
        )
        return 2
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)  # an op without a deterministic kernel warns
    common = [*args.overrides, f"federation.device={args.device}", f"federation.rounds={args.rounds}"]
    results = {}
    try:
        with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
            runs = Path(tmp)
            print(f"straight: {args.rounds} rounds", flush=True)
            results["straight"] = run_once(args.recipe, common, runs / "straight")
            print(f"resumed: stopped after round {args.rounds - 1}", flush=True)
            first = run_once(args.recipe, common, runs / "resumed", stop_after=args.rounds - 1)
            print(f"resumed: from round {args.rounds - 1} to {args.rounds}", flush=True)
            second = run_once(args.recipe, common, runs / "resumed", resume=True)
            results["resumed"] = {"first_part": first, "second_part": second}
            print("no DP: privacy.level=none", flush=True)
            results["no_dp"] = run_once(args.recipe, [*common, "privacy.level=none"], runs / "no_dp")
            results["resume_check"] = compare(runs / "straight", runs / "resumed")
    except InputError as exc:
        print(f"gpu_check: {'; '.join(exc.problems)}", file=sys.stderr)
        return 2
    dp, plain = results["straight"], results["no_dp"]
    if dp["tokens"] and plain["tokens"]:
        seconds_per_token = dp["client_seconds"] / dp["tokens"], plain["client_seconds"] / plain["tokens"]
        results["dp_overhead"] = seconds_per_token[0] / seconds_per_token[1] - 1
    check = results["resume_check"]
    exact = check["metrics_identical"] and check["adapter_identical"]
    close = check["adapter_max_abs_difference"] is not None and check["adapter_max_abs_difference"] <= args.atol
    results["verdict"] = "bit-identical" if exact else ("within --atol" if close and args.device != "cpu" else "MISMATCH")
    print(json.dumps(results, indent=2))
    return 0 if results["verdict"] != "MISMATCH" else 1


if __name__ == "__main__":
    sys.exit(main())
