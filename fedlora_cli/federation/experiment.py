"""Everything a run needs, built and checked from a recipe before any file is written."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from fedlora_cli.data.batching import TokenizedDataset
from fedlora_cli.data.sft import SFTDataset, truncation_note
from fedlora_cli.data.sources import TextDataset
from fedlora_cli.device import resolve_device
from fedlora_cli.errors import InputError
from fedlora_cli.methods import get_method_class
from fedlora_cli.methods.base import Method
from fedlora_cli.models import add_lora, load_tokenizer, lora_modules, set_dropout
from fedlora_cli.recipe import Recipe
from fedlora_cli.tasks import get_task


@dataclass
class Experiment:
    recipe: Recipe
    train: TextDataset | SFTDataset
    test: TextDataset | SFTDataset
    client_indices: list[np.ndarray]
    client_data: list[TokenizedDataset]
    test_data: TokenizedDataset
    model: torch.nn.Module
    method: Method
    task: Any  # the recipe's task (fedlora_cli.tasks): tokenization, evaluation, summary
    notes: list[str] = field(default_factory=list)  # told to the user when the run starts

    @property
    def label_names(self) -> list[str]:
        return self.train.label_names

    @property
    def client_sizes(self) -> list[int]:
        return [len(indices) for indices in self.client_indices]


def build_model(recipe: Recipe, num_labels: int) -> tuple[torch.nn.Module, Method]:
    """Base model + LoRA adapter, trainable parameters set by the method (one model for all clients),
    on ``federation.device``."""
    base = get_task(recipe, tokenizer=None).base_model(num_labels)
    if recipe.model.base_dropout is not None:
        set_dropout(base, recipe.model.base_dropout)
    model = add_lora(base, recipe.model, recipe.federation.seed, recipe.task)
    method = get_method_class(recipe.method.name)(recipe, lora_modules(model))
    method.setup()
    for name, param in model.named_parameters():
        param.requires_grad_(method.is_trainable(name))
    return model.to(resolve_device(recipe.federation.device)), method


def build_experiment(
    recipe: Recipe,
    train: TextDataset,
    test: TextDataset,
    clients: list[np.ndarray],
    phase: Callable[[str], None] = lambda _text: None,
) -> Experiment:
    """Tokenize the (already validated) data and build the one model every client shares.

    ``phase`` is told what starts next (for a progress display).
    """
    phase(f"loading the tokenizer and model {recipe.model.name}")
    task = get_task(recipe, load_tokenizer(recipe.model.name))
    model, method = build_model(recipe, len(train.label_names))
    phase(f"tokenizing {len(train)} training and {len(test)} test texts")
    tokenized_train = task.tokenize(train)
    client_data = [tokenized_train.subset(indices) for indices in clients]
    test_data = task.tokenize(test)
    if not any(p.requires_grad for p in model.parameters()):
        raise InputError("nothing to train: the method trains no parameter of this model; check model.target_modules")
    notes = [truncation_note(d, what, recipe.data.max_length) for d, what in ((tokenized_train, "training"), (test_data, "test"))]
    return Experiment(
        recipe, train, test, clients, client_data, test_data, model, method, task, [n for n in notes if n is not None]
    )
