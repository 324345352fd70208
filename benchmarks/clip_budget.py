"""How the clipping budget C is shared between the classifier head and the LoRA factors.

Under joint clipping (``privacy.head_clip_share: null``) each example's whole gradient is scaled
to at most ``C``, so an example that is clipped gives the head ``C·‖g_head‖/‖g‖`` of it. For a
run directory (its saved adapter and head) and for the same model before training, this prints
over ``--examples`` training rows the median per-example norms of the head's part and of the
part the method trains in the LoRA factors (the method's own ``is_trainable``: B for fedsvd and
ffa, A and B for fedavg; not fedsb, whose saved adapter holds B·R instead of R), their ratio,
the median share ``‖g_head‖/‖g‖`` a joint clip leaves the head, and the same among the
examples a joint clip to the recipe's ``C`` scales down (the ones that carry most of the signal).
One backward pass per example, no Opacus (float32).

    python benchmarks/clip_budget.py RUN_DIR [--examples 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedlora_cli.data.sources import load_datasets  # noqa: E402
from fedlora_cli.federation.artifacts import load_adapter_model  # noqa: E402
from fedlora_cli.federation.client import classification_loss  # noqa: E402
from fedlora_cli.federation.experiment import build_model  # noqa: E402
from fedlora_cli.models import is_head_parameter, load_tokenizer  # noqa: E402
from fedlora_cli.recipe import load_recipe  # noqa: E402
from fedlora_cli.tasks import get_task  # noqa: E402

def budget(model: torch.nn.Module, data, examples: int, clip: float) -> dict[str, float]:
    """Medians over ``examples`` rows of ``data`` of the per-example gradient norms of ``model``'s
    trainable tensors, head and LoRA apart."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    head = [is_head_parameter(n) for n in params]
    heads, loras, shares, clipped_shares = [], [], [], []
    for i in range(min(examples, len(data))):
        grads = torch.autograd.grad(classification_loss(model, data.batch([i])), list(params.values()), allow_unused=True)
        squares = [0.0 if g is None else float(g.double().pow(2).sum()) for g in grads]
        h = sum(s for s, is_head in zip(squares, head) if is_head) ** 0.5
        lora = sum(s for s, is_head in zip(squares, head) if not is_head) ** 0.5
        heads.append(h)
        loras.append(lora)
        total = (h * h + lora * lora) ** 0.5
        shares.append(h / max(total, 1e-12))
        if total > clip:
            clipped_shares.append(shares[-1])
    return {
        "head": statistics.median(heads),
        "lora": statistics.median(loras),
        "ratio": statistics.median(lora / max(h, 1e-12) for h, lora in zip(heads, loras)),
        "head_share": statistics.median(shares),
        "clipped": len(clipped_shares) / len(shares),
        "clipped_head_share": statistics.median(clipped_shares) if clipped_shares else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--examples", type=int, default=64)
    args = parser.parse_args()
    recipe = load_recipe(str(args.run_dir / "recipe.yaml"), saved=True)
    train, _ = load_datasets(recipe.data)
    task = get_task(recipe, load_tokenizer(recipe.model.name))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: args.examples].tolist()
    data = task.tokenize(train).subset(order)
    labels = len(train.label_names)
    untrained, method = build_model(recipe, labels)  # the tensors the method lets clients train, as in a run
    untrained.eval()
    trained = load_adapter_model(recipe, args.run_dir / "adapter", labels)
    for name, param in trained.named_parameters():
        param.requires_grad_(method.is_trainable(name))
    if not any(p.requires_grad and not is_head_parameter(n) for n, p in trained.named_parameters()):
        raise SystemExit(f"{args.run_dir}: its saved adapter does not hold the LoRA tensors {recipe.method.name} trains "
                         "(fedsb exports B·R, not R)")
    print(f"{args.run_dir.name}, {recipe.method.name}, {len(data)} training examples (medians, float32)")
    clip = recipe.privacy.max_grad_norm
    print(f"| model | ‖g_head‖ | ‖g_lora‖ | ‖g_lora‖ / ‖g_head‖ | ‖g_head‖ / ‖g‖ | clipped (‖g‖ > C = {clip:g}) | ‖g_head‖ / ‖g‖ of the clipped |")
    print("|---|---|---|---|---|---|---|")
    for name, model in (("before training", untrained), ("after training", trained)):
        row = budget(model, data, args.examples, clip)
        print(f"| {name} | {row['head']:.4f} | {row['lora']:.4f} | {row['ratio']:.2f} | {row['head_share']:.2f} "
              f"| {row['clipped']:.0%} | {row['clipped_head_share']:.2f} |")


if __name__ == "__main__":
    main()
