"""The end of a run: the adapter saved in PEFT format and checked, and ``summary.json``."""

from __future__ import annotations

import torch

from fedlora_cli.errors import RunError
from fedlora_cli.federation.artifacts import load_adapter_model
from fedlora_cli.federation.checkpoint import RunState
from fedlora_cli.federation.experiment import Experiment
from fedlora_cli.federation.evaluate import chance, collapse_verdict
from fedlora_cli.federation.run_dir import RunDir
from fedlora_cli.methods.base import State
from fedlora_cli.models import load_adapter_state
from fedlora_cli.privacy.policy import PrivacyPolicy


def export_adapter(experiment: Experiment, run_dir: RunDir, global_state: State) -> None:
    """Write ``adapter/`` (plus the base weights of methods that change them) from the final
    global state, then check it (:func:`verify_saved_adapter`)."""
    model, method = experiment.model, experiment.method
    load_adapter_state(model, global_state)
    base = {m.name: m.base_weight for m in method.modules} if method.modifies_base else None
    with method.exported():
        run_dir.save_adapter(model, base)
        verify_saved_adapter(experiment, run_dir)


def verify_saved_adapter(experiment: Experiment, run_dir: RunDir, examples: int = 16) -> None:
    """The saved adapter, reloaded onto a fresh base model, must predict exactly like the trained
    one on the first ``examples`` test examples (guards against silent corruption such as opacus
    issue 820)."""
    test = experiment.test_data
    probe = test.subset(range(min(examples, len(test))))
    reloaded = load_adapter_model(experiment.recipe, run_dir.adapter_path, len(experiment.label_names))
    if not torch.equal(experiment.task.outputs(reloaded, probe), experiment.task.outputs(experiment.model, probe)):
        raise RunError(
            f"the adapter saved in {run_dir.adapter_path} does not reproduce the trained model's "
            "predictions; the run directory's checkpoint is intact, please report this"
        )


def summarize(
    experiment: Experiment, run_dir: RunDir, state: RunState, final: dict, policy: PrivacyPolicy, precision: str,
    device: torch.device,
) -> dict:
    """``summary.json``: the final scores (``final``) beside the majority baseline, what privacy
    was spent, bytes, stop reason and time. Written to the run directory and returned."""
    recipe = experiment.recipe
    summary = {
        "run_dir": str(run_dir.path),
        "method": recipe.method.name,
        "rounds_completed": state.rounds_done,
        "rounds_planned": recipe.federation.rounds,
        **experiment.task.summary(final, experiment.train, experiment.test),
        **policy.summary(),
        "client_sizes": experiment.client_sizes,
        "client_steps": policy.client_steps,
        "bytes_up_total": sum(m["bytes_up"] for m in state.metrics),
        "bytes_down_total": sum(m["bytes_down"] for m in state.metrics),
        "stopped": state.stopped,
        "precision": precision,
        "device": str(device),
        "wall_seconds": state.elapsed,
    }
    run_dir.write_summary(summary)
    return summary


def auc_clause(auc: float | None) -> str:
    """The warning's ROC-AUC, which tells a model that still ranks the classes (its threshold sits
    on one of them) from one that learned nothing; empty for a summary written without it."""
    return "" if auc is None else f", ROC-AUC {auc:.4f} (0.5 by chance)"


def collapse_warning(summary: dict) -> str:
    """The stderr warning of a run whose final model collapsed, with the remedies that helped where
    measured (docs/learning.md, rounds 4-18): more rounds did not help small private sets, whose
    clients pay for every extra step in noise, so it does not suggest them."""
    counts = summary["predicted_counts"]
    level = summary["privacy_level"]
    noise = " (small clients get the most noise; `fedlora recipes validate` lists each one's noise multiplier)"
    remedies = ", ".join([
        "more examples per client" + (noise if level == "sample" else ""),
        *(["a larger privacy.target_epsilon"] if level != "none" else []),
        *(["and with rare classes federation.logit_adjustment=0.75 or 1 (or federation.posthoc_adjustment=0.5), "
           "which trade accuracy for answers on them"] if level != "client" else []),  # client level has no prior
    ])
    return (
        f"warning: the final model {collapse_verdict(summary['final_balanced_accuracy'], summary['classes_in_test'])}: "
        f"balanced accuracy {summary['final_balanced_accuracy']:.4f} "
        f"({chance(summary['classes_in_test']):.4f} by chance), one class for {max(counts) / sum(counts):.0%} of the test set "
        f"(predicted counts {counts}); accuracy {summary['final_accuracy']:.4f} vs "
        f"{summary['majority_accuracy']:.4f} for always answering the majority class, macro-F1 "
        f"{summary['final_macro_f1']:.4f}{auc_clause(summary.get('final_auc'))}. "
        f"What helped where measured: {remedies}. See README, 'Defaults that learn'"
    )
