"""DP causal-LM throughput: fedlora's client trainer vs. a plain Opacus + peft loop (issue 14, item 7).

Both sides train the same LoRA adapter (rank 8 on q_proj/v_proj, A and B) of the builtin
`smollm2` (SmolLM2-135M-Instruct) on the same GSM8K prompt/response pairs with DP-SGD at the same
noise multiplier, clipping norm, expected batch size, learning rate and number of steps; the loss
is the response tokens' NLL on both sides (one prompt+response is one DP example). Measured side
by side in one process, alternating repeats, medians reported:

* baseline: ``PrivacyEngine.make_private`` on a Poisson DataLoader of examples padded to
  ``--max-length`` tokens, float32, the mean over the batch of each example's mean response NLL;
* fedlora: ``LocalTrainer`` (Poisson batches run as length-sorted chunks of
  ``--microbatch-size`` examples, each padded only to its longest member), float32 and bfloat16
  autocast (``fedlora-bf16``: where the CPU has native bf16; elsewhere it is emulated and slower).

Held-out loss (per response token, on ``--test-examples`` GSM8K test pairs) after the same steps
guards against buying speed with quality. Tokens/s counts non-padding training tokens.
``--no-dp-floor`` adds the same trainer without DP (``no-dp-fp32``): no per-example gradients,
clipping or noise, float32, dynamic padding; no DP-SGD step can beat it, so its speed-up over
the baseline bounds what any DP trainer can reach here in float32.

    python benchmarks/causal_training_throughput.py --steps 8 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path

import torch

from fedlora_cli.data.sft import load_sft_datasets, tokenize_sft
from fedlora_cli.models import add_lora, load_causal_lm, load_tokenizer
from fedlora_cli.recipe import CausalLMConfig, DataConfig, FederationConfig, ModelConfig
from fedlora_cli.tasks.lm_scoring import heldout_loss, mean_example_loss
from local_training_throughput import fedlora_steps, opacus_loop, padded_ids  # benchmarks/: the same loops

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
warnings.filterwarnings("ignore")


def build_model(seed: int):
    cfg = ModelConfig(name="smollm2", rank=8, alpha=16, target_modules=["q_proj", "v_proj"], train_head=False)
    return add_lora(load_causal_lm("smollm2"), cfg, seed, task="causal_lm")


def padded(data, length: int):
    """Every example padded (or cut) to ``length`` tokens, labels -100 outside the response."""
    ids, mask = padded_ids(data, length)
    labels = torch.full((len(data), length), -100, dtype=torch.long)
    for row, (seq, start) in enumerate(zip(data.input_ids, data.prompt_lengths)):
        seq = seq[:length]
        labels[row, start : len(seq)] = torch.tensor(seq[start:])
    return torch.utils.data.TensorDataset(ids, mask, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-examples", type=int, default=512)
    parser.add_argument("--test-examples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--sigma", type=float, default=0.6)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--microbatch-size", type=int, default=FederationConfig().microbatch_size)
    parser.add_argument("--no-dp-floor", action="store_true",
                        help="also time the same trainer without DP (no per-example gradients, float32): "
                        "no DP-SGD step can be faster, so it bounds the speed-up any DP trainer can reach")
    args = parser.parse_args()

    data_cfg = DataConfig(source=str(GSM8K / "train.jsonl"), test_path=str(GSM8K / "test.jsonl"),
                          max_train_samples=args.train_examples, max_test_samples=args.test_examples, max_length=args.max_length)
    train, test = load_sft_datasets(data_cfg, CausalLMConfig())
    tokenizer = load_tokenizer("smollm2")
    train_data, test_data = tokenize_sft(train, tokenizer, args.max_length), tokenize_sft(test, tokenizer, args.max_length)
    tokens_per_step = args.batch_size * statistics.fmean(len(s) for s in train_data.input_ids)
    untrained = heldout_loss(build_model(0), test_data, 8)["loss"]
    print(json.dumps({"untrained_heldout_loss": untrained}), flush=True)
    variants = ["baseline", "fedlora-fp32", "fedlora-bf16", *(["no-dp-fp32"] if args.no_dp_floor else [])]
    times: dict[str, list[float]] = {v: [] for v in variants}
    losses: dict[str, list[float]] = {v: [] for v in variants}
    for repeat in range(args.repeats):
        for variant in variants:
            model = build_model(seed=repeat)
            if variant == "baseline":
                seconds = opacus_loop(model, padded(train_data, args.max_length), mean_example_loss, args.steps,
                                      args.batch_size, args.sigma, args.clip, args.lr, repeat)
            else:
                precision = "bfloat16" if variant.endswith("bf16") else "float32"
                seconds = fedlora_steps(model, train_data, args.steps, args.batch_size, args.sigma, args.clip, args.lr,
                                        repeat, precision, args.microbatch_size, private=not variant.startswith("no-dp"))
            times[variant].append(seconds)
            losses[variant].append(heldout_loss(model, test_data, 8)["loss"])
            print(json.dumps({"repeat": repeat, "variant": variant, "seconds": seconds, "heldout_loss": losses[variant][-1]}), flush=True)
    baseline = statistics.median(times["baseline"])
    print(json.dumps({
        "args": vars(args),
        "torch_threads": torch.get_num_threads(),
        "mean_tokens_per_step": tokens_per_step,
        "seconds": times,
        "tokens_per_second_median": {v: tokens_per_step * args.steps / statistics.median(t) for v, t in times.items()},
        "speedup_vs_baseline": {v: baseline / statistics.median(t) for v, t in times.items()},
        "heldout_loss": losses,
        "untrained_heldout_loss": untrained,
    }, indent=2))


if __name__ == "__main__":
    main()
