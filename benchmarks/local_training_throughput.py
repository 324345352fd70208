"""DP local-training throughput: fedlora's client trainer vs. the usual Opacus + peft loop.

Both sides train the same LoRA adapter (rank 8 on query/value, A and B, head trained) of the
default model (all-MiniLM-L6-v2) on the same SST-2 examples with DP-SGD at the same noise
multiplier, clipping norm and expected batch size, for the same number of steps. Measured side
by side in one process, alternating repeats, medians reported:

* baseline: ``PrivacyEngine.make_private`` on a DataLoader of examples padded to 128 tokens,
  float32 (what the published code does);
* fedlora: ``LocalTrainer`` (one GradSampleModule, Opacus ``DPOptimizer``, Poisson batches run
  as length-sorted chunks of ``--microbatch-size`` examples, each padded only to its longest
  member), optionally with bfloat16 autocast on the forward pass; ``fedlora-fp32-whole`` runs
  each batch in one piece (padded to its longest member) to show what the chunking adds.

Every variant's SST-2 test accuracy after the same steps (each repeat: its own seed) guards against
buying speed with quality; the defaults (noise multiplier 0.3, SGD lr 1.0, 150 steps) are a
setting in which DP-SGD visibly learns within the steps.

    python benchmarks/local_training_throughput.py --steps 150 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch

from fedlora_cli.data.batching import tokenize
from fedlora_cli.data.sources import load_datasets
from fedlora_cli.federation.client import ClientNoise, LocalTrainer
from fedlora_cli.federation.evaluate import evaluate
from fedlora_cli.models import add_lora, load_base_model, load_tokenizer
from fedlora_cli.recipe import DataConfig, FederationConfig, ModelConfig

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
warnings.filterwarnings("ignore")


def build_model(num_labels: int, seed: int):
    model = add_lora(load_base_model("minilm", num_labels, seed), ModelConfig(), seed)
    return model


def padded_ids(data, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every example's token ids padded (or cut) to ``length``, and the attention mask."""
    ids = torch.full((len(data), length), data.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(data), length), dtype=torch.long)
    for row, seq in enumerate(data.input_ids):
        seq = seq[:length]
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids, mask


def baseline_steps(model, data, steps: int, batch_size: int, sigma: float, clip: float, lr: float, seed: int) -> float:
    """The usual loop on examples padded to 128 tokens (:func:`opacus_loop`). Returns seconds."""
    dataset = torch.utils.data.TensorDataset(*padded_ids(data, 128), data.labels)
    return opacus_loop(model, dataset, torch.nn.functional.cross_entropy, steps, batch_size, sigma, clip, lr, seed)


def opacus_loop(model, dataset, loss_fn, steps: int, batch_size: int, sigma: float, clip: float, lr: float, seed: int) -> float:
    """The usual DP loop: ``PrivacyEngine.make_private`` on a Poisson DataLoader of padded
    ``(input_ids, attention_mask, labels)`` rows, float32, ``loss_fn(logits, labels)``. Returns seconds."""
    from opacus import PrivacyEngine

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    torch.manual_seed(seed)
    engine = PrivacyEngine()
    private_model, optimizer, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=sigma, max_grad_norm=clip
    )
    private_model.train()
    done = 0
    start = time.perf_counter()
    while done < steps:
        for input_ids, attention_mask, labels in loader:
            optimizer.zero_grad()
            if len(labels):
                logits = private_model(input_ids=input_ids, attention_mask=attention_mask).logits
                loss_fn(logits, labels).backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    seconds = time.perf_counter() - start
    private_model._close()
    return seconds


def fedlora_steps(model, data, steps, batch_size, sigma, clip, lr, seed, precision, microbatch_size, private=True) -> float:
    """Seconds for ``steps`` steps of fedlora's client trainer: DP-SGD, or (``private=False``)
    plain SGD on batches of ``batch_size`` with no per-example gradients, the floor under any DP step."""
    cfg = FederationConfig(batch_size=batch_size, lr=lr, precision=precision, microbatch_size=microbatch_size)
    trainer = LocalTrainer(model, cfg, private=private)
    start = time.perf_counter()
    trainer.train(data, steps, seed, ClientNoise(min(1.0, batch_size / len(data)), sigma, clip) if private else None)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-examples", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sigma", type=float, default=0.3)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--microbatch-size", type=int, default=FederationConfig().microbatch_size)
    args = parser.parse_args()

    cfg = DataConfig(source=str(SST2 / "train.tsv"), test_path=str(SST2 / "test.tsv"), text_column="sentence",
                     max_train_samples=args.train_examples, max_length=128)
    train, test = load_datasets(cfg)
    tokenizer = load_tokenizer("minilm")
    train_data, test_data = tokenize(train, tokenizer, 128), tokenize(test, tokenizer, 128)
    lengths = sorted(len(s) for s in train_data.input_ids)
    variants = ["baseline", "fedlora-fp32-whole", "fedlora-fp32", "fedlora-bf16"]
    times: dict[str, list[float]] = {v: [] for v in variants}
    accuracy: dict[str, list[float]] = {v: [] for v in variants}
    for repeat in range(args.repeats):
        for variant in variants:
            model = build_model(2, seed=repeat)
            if variant == "baseline":
                seconds = baseline_steps(model, train_data, args.steps, args.batch_size, args.sigma, args.clip, args.lr, repeat)
            else:
                precision = "bfloat16" if variant.endswith("bf16") else "float32"
                microbatch = args.batch_size * 4 if variant.endswith("whole") else args.microbatch_size
                seconds = fedlora_steps(model, train_data, args.steps, args.batch_size, args.sigma, args.clip, args.lr,
                                        repeat, precision, microbatch)
            times[variant].append(seconds)
            accuracy[variant].append(evaluate(model, test_data, 2)["accuracy"])
            print(json.dumps({"repeat": repeat, "variant": variant, "seconds": seconds,
                              "test_accuracy": accuracy[variant][-1]}), flush=True)
    samples = args.steps * args.batch_size
    baseline = statistics.median(times["baseline"])
    result = {
        "args": vars(args),
        "torch_threads": torch.get_num_threads(),
        "median_tokens_per_example": lengths[len(lengths) // 2],
        "seconds": times,
        "samples_per_second_median": {v: samples / statistics.median(t) for v, t in times.items()},
        "speedup_vs_baseline": {v: baseline / statistics.median(t) for v, t in times.items()},
        "test_accuracy": accuracy,
        "test_accuracy_mean": {v: statistics.fmean(a) for v, a in accuracy.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
