"""Task kinds (``task:`` in a recipe): what a task decides beside the adapter tensors.

A task picks the data reader, the model class, tokenization, evaluation and the headline
numbers of a run's summary; aggregation, privacy and Flower only see adapter tensors. The
per-task training loss is picked by :data:`fedlora_cli.federation.client.TASK_LOSSES` from the
adapter's peft task type, so every trainer (in-process and Flower) uses the right one.
"""

from __future__ import annotations

from fedlora_cli.recipe import Recipe


def get_task(recipe: Recipe, tokenizer):
    """The task object of ``recipe`` (:class:`ClassificationTask` or :class:`CausalLMTask`)."""
    if recipe.task == "causal_lm":
        from fedlora_cli.tasks.causal_lm import CausalLMTask

        return CausalLMTask(recipe, tokenizer)
    from fedlora_cli.tasks.classification import ClassificationTask

    return ClassificationTask(recipe, tokenizer)


def load_task_datasets(recipe: Recipe):
    """The train and test sets of ``recipe``'s task (checked and split before any model loads)."""
    if recipe.task == "causal_lm":
        from fedlora_cli.data.sft import load_sft_datasets

        return load_sft_datasets(recipe.data, recipe.causal_lm)
    from fedlora_cli.data.sources import load_datasets

    return load_datasets(recipe.data)
