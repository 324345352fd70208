"""Everything a run needs, built and checked from a recipe before any file is written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from fedlora_cli.data.batching import TokenizedDataset, tokenize
from fedlora_cli.data.sources import TextDataset
from fedlora_cli.device import resolve_device
from fedlora_cli.errors import InputError
from fedlora_cli.methods import get_method_class
from fedlora_cli.methods.base import Method
from fedlora_cli.models import add_lora, load_base_model, load_tokenizer, lora_modules
from fedlora_cli.recipe import Recipe


@dataclass
class Experiment:
    recipe: Recipe
    train: TextDataset
    test: TextDataset
    client_indices: list[np.ndarray]
    client_data: list[TokenizedDataset]
    test_data: TokenizedDataset
    model: torch.nn.Module
    method: Method

    @property
    def label_names(self) -> list[str]:
        return self.train.label_names

    @property
    def client_sizes(self) -> list[int]:
        return [len(indices) for indices in self.client_indices]


def build_model(recipe: Recipe, num_labels: int) -> tuple[torch.nn.Module, Method]:
    """Base model + LoRA adapter, trainable parameters set by the method (one model for all clients),
    on ``federation.device``."""
    base = load_base_model(recipe.model.name, num_labels, recipe.federation.seed, recipe.model.pooling)
    model = add_lora(base, recipe.model, recipe.federation.seed)
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
    tokenizer = load_tokenizer(recipe.model.name)
    model, method = build_model(recipe, len(train.label_names))
    phase(f"tokenizing {len(train)} training and {len(test)} test texts")
    tokenized_train = tokenize(train, tokenizer, recipe.data.max_length)
    client_data = [tokenized_train.subset(indices) for indices in clients]
    test_data = tokenize(test, tokenizer, recipe.data.max_length)
    if not any(p.requires_grad for p in model.parameters()):
        raise InputError("nothing to train: the method trains no parameter of this model; check model.target_modules")
    return Experiment(recipe, train, test, clients, client_data, test_data, model, method)
