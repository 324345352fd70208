"""Score a trained adapter on the recipe's test split (accuracy, macro-F1, ROC-AUC; loss and perplexity for causal_lm).

Classification: accuracy, macro-F1, balanced accuracy, ROC-AUC and loss beside the majority-class
baseline, and whether the model collapsed to one class; `task: causal_lm`: held-out response loss,
perplexity, and exact match or multiple-choice accuracy.

`fedlora eval RUN_DIR` uses the run's recipe.yaml and final adapter; `--adapter DIR --recipe FILE`
any adapter. `--per-client` also scores every client's local training data (fairness: mean,
worst, best, spread); `--data FILE` scores another file with the recipe's columns;
`--predictions FILE` (classification) writes every test example's text, true and predicted label,
logits and probabilities as JSON lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from fedlora_cli.cli.common import guarded, progress, require_existing, require_writable_file, wants_json
from fedlora_cli.threads import apply_threads


def _number(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _row(name: str, scores: dict) -> list[str]:
    if "perplexity" in scores:  # causal_lm
        generated = f"{_number(scores['exact_match'])} ({scores['generated']})" if "exact_match" in scores else "-"
        choice = _number(scores.get("choice_accuracy"))
        return [name, str(scores["samples"]), f"{scores['loss']:.4f}", f"{scores['perplexity']:.2f}", generated, choice]
    return [name, str(scores["samples"]), f"{scores['accuracy']:.4f}", f"{scores['macro_f1']:.4f}",
            _number(scores["auc"]), f"{scores['loss']:.4f}"]


CLASSIFICATION_COLUMNS = ("samples", "accuracy", "macro-F1", "ROC-AUC", "loss")
CAUSAL_COLUMNS = ("samples", "loss", "perplexity", "exact match (generated)", "choice accuracy")


def eval_table(result: dict) -> Table:
    title = result["run_dir"] or result["adapter"]
    table = Table(title=f"eval of {title} ({result['method']})", title_justify="left")
    table.add_column("data")
    for column in CAUSAL_COLUMNS if result.get("task") == "causal_lm" else CLASSIFICATION_COLUMNS:
        table.add_column(column, justify="right")
    table.add_row(*_row("test", result["test"]))
    if "data" in result:
        table.add_row(*_row(result["data"]["file"], result["data"]))
    if "clients" in result:
        table.add_section()
        for client in result["clients"]:
            table.add_row(*_row(f"client {client['client']}", client))
    return table


def fairness_line(fair: dict) -> str:
    return (
        f"clients: mean accuracy {fair['mean_accuracy']:.4f}, worst {fair['worst_accuracy']:.4f} "
        f"(client {fair['worst_client']}), best {fair['best_accuracy']:.4f}, "
        f"spread {fair['spread']:.4f}, std {fair['std']:.4f}"
    )


@guarded
def eval_command(
    run_dir: Optional[Path] = typer.Argument(None, help="run directory (uses its recipe.yaml and adapter/)"),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="a PEFT adapter directory (with --recipe)"),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="the recipe the adapter was trained with (with --adapter)"),
    per_client: bool = typer.Option(False, "--per-client", help="also score each client's local data (fairness)"),
    data: Optional[Path] = typer.Option(None, "--data", help="also score this file (same columns as the recipe's data)"),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="write each test example's prediction to this file (JSON lines; classification)"),
    json_output: bool = typer.Option(False, "--json", help="one JSON object on stdout"),
) -> None:
    for path, what in ((run_dir, "RUN_DIR"), (adapter, "--adapter"), (data, "--data")):
        require_existing(path, what)
    if predictions is not None:
        require_writable_file(predictions, "--predictions")
    as_json = wants_json(json_output)
    with progress("loading torch and transformers", show=not as_json) as phase:
        # torch, transformers and opacus load when the command runs, so `fedlora --help` is fast
        from fedlora_cli.federation.artifacts import evaluate_adapter, resolve_target

        target = resolve_target(run_dir, adapter, recipe)
        apply_threads(target.recipe.federation.threads)
        result = evaluate_adapter(target, per_client=per_client, data_file=data, predictions=predictions, phase=phase)
    if as_json:
        print(json.dumps(result))
        return
    console = Console()
    console.print(eval_table(result))
    test = result["test"]
    if "example_output" in test:
        console.print(f"first generated answer: {test['example_output'][:300]!r}", markup=False, highlight=False)
    if "majority_class" in test:
        from fedlora_cli.federation.evaluate import collapse_verdict

        console.print(
            f"majority class (always answering '{result['label_names'][test['majority_class']]}'): accuracy "
            f"{test['majority_accuracy']:.4f}, macro-F1 {test['majority_macro_f1']:.4f}; predicted counts "
            f"{test['predicted_counts']}"
            + (f"; COLLAPSED: the model {collapse_verdict(test['balanced_accuracy'], test['classes_in_test'])}"
               if test["collapsed"] else ""),
            markup=False,
            highlight=False,
        )
    if "fairness" in result:
        console.print(fairness_line(result["fairness"]), markup=False, highlight=False)
    if "predictions" in result:
        console.print(f"predictions: {test['samples']} rows in {result['predictions']}", markup=False, highlight=False)
