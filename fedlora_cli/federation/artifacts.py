"""Load what a run left behind (recipe + final adapter) and score it again.

``fedlora eval`` is built on this: :func:`load_adapter_model` rebuilds the exact model a run
evaluated (same base model, same seeded head init, the saved PEFT adapter, and for methods that
change the frozen weights the saved base weights), and :func:`evaluate_adapter` scores it on the
recipe's test split, optionally on every client's local data (fairness) and on another file, and
for classification can write every test example's prediction (:func:`write_predictions`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from fedlora_cli.data.partition import partition
from fedlora_cli.data.sft import load_sft_file
from fedlora_cli.data.sources import TextDataset, load_labeled_file
from fedlora_cli.device import resolve_device
from fedlora_cli.errors import InputError, first_line
from fedlora_cli.federation.evaluate import baseline_and_collapse, predict_logits, scores
from fedlora_cli.federation.run_dir import ADAPTER_DIR, RunDir, atomic_write_text, read_tensors
from fedlora_cli.methods.base import restore_base_weights
from fedlora_cli.models import load_tokenizer, lora_modules
from fedlora_cli.recipe import Recipe, load_recipe, resolve_recipe_path
from fedlora_cli.tasks import get_task, load_task_datasets

BASE_WEIGHTS_FILE = "base_weights.safetensors"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"  # what peft's save_pretrained writes
ADAPTER_CONFIG_FILE = "adapter_config.json"


@dataclass
class EvalTarget:
    """Which recipe and adapter to evaluate."""

    recipe: Recipe
    recipe_path: Path
    adapter_dir: Path
    run_dir: Path | None = None


def resolve_target(run_dir: str | Path | None, adapter: str | Path | None, recipe: str | None) -> EvalTarget:
    """A run directory (its ``recipe.yaml`` and ``adapter/``), or an explicit adapter + recipe."""
    if run_dir is not None:
        if adapter is not None or recipe is not None:
            raise InputError("give either RUN_DIR or --adapter DIR --recipe FILE, not both")
        run = RunDir.existing(run_dir)
        adapter_dir = run.adapter_path
        if not (adapter_dir / ADAPTER_CONFIG_FILE).is_file():
            raise InputError(
                f"{run.path}: no final adapter in {ADAPTER_DIR}/ (the run has not finished); "
                f"finish it with `fedlora train --resume {run.path}`"
            )
        return EvalTarget(load_recipe(str(run.recipe_path), saved=True), run.recipe_path, adapter_dir, run.path)
    if adapter is None or recipe is None:
        raise InputError("give a RUN_DIR, or both --adapter DIR and --recipe FILE")
    adapter_dir = Path(adapter)
    if not (adapter_dir / ADAPTER_CONFIG_FILE).is_file():
        raise InputError(f"--adapter {adapter_dir}: no {ADAPTER_CONFIG_FILE}; point it at a PEFT adapter directory (RUN_DIR/adapter)")
    recipe_obj = load_recipe(recipe)
    return EvalTarget(recipe_obj, resolve_recipe_path(recipe), adapter_dir)


def load_adapter_model(recipe: Recipe, adapter_dir: str | Path, num_labels: int) -> torch.nn.Module:
    """The base model (head seeded by ``federation.seed``) with the saved adapter, in eval mode,
    on ``federation.device``.

    When ``adapter_dir/base_weights.safetensors`` exists (methods that fold updates into the
    frozen weights: fedex, flora), its tensors, keyed by LoRA module name, replace the base
    layers' weights of those modules.
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if (adapter_dir / ADAPTER_WEIGHTS_FILE).exists():  # else peft names what is missing
        read_tensors(adapter_dir / ADAPTER_WEIGHTS_FILE, "the adapter is damaged (empty or truncated): train the run again")
    base = get_task(recipe, tokenizer=None).base_model(num_labels)
    try:
        model = PeftModel.from_pretrained(base, str(adapter_dir))
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise InputError(
            f"{adapter_dir}: cannot load the adapter onto model '{recipe.model.name}' with {num_labels} labels "
            f"({first_line(exc)}); use the recipe the adapter was trained with"
        ) from None
    base_file = adapter_dir / BASE_WEIGHTS_FILE
    if base_file.is_file():
        restore_base_weights(lora_modules(model), read_tensors(base_file), str(base_file))
    model.to(resolve_device(recipe.federation.device)).eval()
    return model


def fairness(client_scores: list[dict]) -> dict[str, float]:
    """Spread of accuracy across clients: mean, worst, best, spread (best − worst), std."""
    accuracies = np.array([c["accuracy"] for c in client_scores], dtype=np.float64)
    return {
        "mean_accuracy": float(accuracies.mean()),
        "worst_accuracy": float(accuracies.min()),
        "best_accuracy": float(accuracies.max()),
        "spread": float(accuracies.max() - accuracies.min()),
        "std": float(accuracies.std()),
        "worst_client": int(accuracies.argmin()),
    }


def write_predictions(path: Path, dataset: TextDataset, logits: torch.Tensor) -> None:
    """One JSON line per example of ``dataset``, in its order: ``row``, ``text`` (and ``text_pair``),
    the true ``label``, the ``predicted`` one (argmax of the logits), and the model's ``logits`` and
    softmax ``probabilities``, each an object keyed by label name in the run's label order.
    Written atomically."""
    probabilities = F.softmax(logits, dim=-1)
    names = dataset.label_names
    lines = []
    for row, (text, label) in enumerate(zip(dataset.texts, dataset.labels)):
        record = {"row": row, "text": text}
        if dataset.text_pairs is not None:
            record["text_pair"] = dataset.text_pairs[row]
        record.update(label=names[label], predicted=names[int(logits[row].argmax())],
                      logits={name: round(float(v), 6) for name, v in zip(names, logits[row])},
                      probabilities={name: round(float(v), 6) for name, v in zip(names, probabilities[row])})
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    atomic_write_text(path, "".join(lines))


def evaluate_adapter(
    target: EvalTarget,
    *,
    per_client: bool = False,
    data_file: str | Path | None = None,
    predictions: Path | None = None,
    phase: Callable[[str], None] = lambda _text: None,
) -> dict:
    """The task's scores on the test split (and per client / on ``data_file``): accuracy, macro-F1
    and loss for classification; loss, perplexity and exact match or choice accuracy for causal_lm.

    ``predictions`` (classification only): where to write the test split's predictions
    (:func:`write_predictions`), scored from the same logits. ``phase`` is told what starts next
    (for a progress display).
    """
    recipe = target.recipe
    if predictions is not None and recipe.task != "classification":
        raise InputError(f"predictions are written for task: classification only; this recipe's task is {recipe.task}")
    phase("reading the data")
    train, test = load_task_datasets(recipe)
    names = train.label_names
    extra = None
    if data_file is not None and recipe.task == "causal_lm":
        extra = load_sft_file(data_file, recipe.data, recipe.causal_lm)
    elif data_file is not None:
        extra = load_labeled_file(data_file, recipe.data, names)
    clients = partition(np.asarray(train.labels), recipe.federation.clients, recipe.partition) if per_client else None

    phase(f"loading the tokenizer, model {recipe.model.name} and adapter")
    task = get_task(recipe, load_tokenizer(recipe.model.name))
    model = load_adapter_model(recipe, target.adapter_dir, len(names))

    def score(dataset, what: str = "the test split") -> dict:
        phase(f"tokenizing and scoring {what} ({len(dataset)} texts)")
        return {"samples": len(dataset), **task.evaluate(model, dataset, task.tokenize(dataset))}

    def predicted_scores(dataset) -> dict:
        phase(f"tokenizing and scoring the test split ({len(dataset)} texts), writing {predictions}")
        data = task.tokenize(dataset)
        logits = predict_logits(model, data, recipe.federation.eval_batch_size)
        write_predictions(predictions, dataset, logits)
        return {"samples": len(dataset), **scores(logits, data.labels, len(names))}  # as task.evaluate scores them

    result: dict = {
        "run_dir": str(target.run_dir) if target.run_dir is not None else None,
        "recipe": str(target.recipe_path),
        "adapter": str(target.adapter_dir),
        "method": recipe.method.name,
        "task": recipe.task,
        "label_names": names,
        "test": score(test) if predictions is None else predicted_scores(test),
    }
    if recipe.task == "classification":
        result["test"].update(baseline_and_collapse(result["test"], train.labels, test.labels, len(names)))
    if predictions is not None:
        result["predictions"] = str(predictions)
    if extra is not None:
        result["data"] = {"file": str(data_file), **score(extra, str(data_file))}
    if clients is not None:
        result["clients"] = [
            {"client": k, **score(train.subset(idx.tolist()), f"client {k}")} for k, idx in enumerate(clients)
        ]
        if all(c["accuracy"] is not None for c in result["clients"]):
            result["fairness"] = fairness(result["clients"])
    return result


def run_record(path: str | Path) -> dict:
    """One run's headline numbers for ``fedlora compare``: from ``summary.json`` when the run
    finished, else from the rounds in ``metrics.jsonl`` (marked ``finished: false``)."""
    run = RunDir.existing(path)
    metrics = run.read_metrics()
    summary = run.read_summary()
    recipe = load_recipe(str(run.recipe_path), saved=True)
    record = {
        "run_dir": str(run.path),
        "name": run.path.name,
        "method": recipe.method.name,
        "partition": recipe.partition.method,
        "privacy_level": recipe.privacy.level,
        "finished": summary is not None,
        "metrics": metrics,
    }
    if summary is not None:
        record.update(
            rounds_completed=summary["rounds_completed"],
            final_accuracy=summary["final_accuracy"],
            epsilon=summary["epsilon"],
            bytes_up_total=summary["bytes_up_total"],
            bytes_down_total=summary["bytes_down_total"],
            wall_seconds=summary["wall_seconds"],
            stopped=summary.get("stopped"),
        )
        return record
    evaluated = [m for m in metrics if m.get("eval_accuracy") is not None]
    record.update(
        rounds_completed=metrics[-1]["round"] if metrics else 0,
        final_accuracy=evaluated[-1]["eval_accuracy"] if evaluated else None,
        epsilon=metrics[-1].get("epsilon") if metrics else None,
        bytes_up_total=sum(m.get("bytes_up") or 0 for m in metrics),
        bytes_down_total=sum(m.get("bytes_down") or 0 for m in metrics),
        wall_seconds=sum(m.get("seconds") or 0.0 for m in metrics),
        stopped=None,
    )
    return record
