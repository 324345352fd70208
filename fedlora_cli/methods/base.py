"""The interface every aggregation method implements, and the helpers they share.

A round: the server broadcasts the global adapter, each sampled client k trains the tensors
``Method.is_trainable`` allows and uploads them, and the server computes the weighted mean
``Σ p_k x_k`` of every uploaded tensor (:func:`weighted_mean`) before the method's own
``server_update`` turns it into the next global adapter (and, for some methods, updates the
frozen base weights). An optional server optimizer
(:mod:`~fedlora_cli.methods.server_optimizer`) replaces the mean by an optimizer step first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar, Protocol

import torch

from fedlora_cli.errors import InputError
from fedlora_cli.methods.server_optimizer import ServerOptimizer
from fedlora_cli.peft_names import is_head_parameter

State = dict[str, torch.Tensor]


class LoraLayerView(Protocol):
    """What a method reads of one LoRA-adapted layer ``W0 + s·B·A`` (B out×r, A r×in):
    :class:`fedlora_cli.models.LoraModule` is one. Methods never import ``models`` or ``recipe``,
    which are built on top of them (the recipe schema is made from the registered methods)."""

    name: str
    layer: Any  # peft's LoraLayer

    @property
    def a_key(self) -> str: ...

    @property
    def b_key(self) -> str: ...

    @property
    def scaling(self) -> float: ...

    @property
    def base_weight(self) -> torch.nn.Parameter: ...


def weighted_mean(uploads: list[State], weights: torch.Tensor) -> State:
    """``Σ_k p_k · upload_k[key]`` for every key (weights sum to one), computed in float64."""
    keys = uploads[0].keys()
    return {
        key: sum(float(w) * upload[key].double() for w, upload in zip(weights, uploads)).to(uploads[0][key].dtype)
        for key in keys
    }


def add_to_base_weight(module: LoraLayerView, update: torch.Tensor) -> None:
    """``W0 ← W0 + s·update`` for an out×in ``update``, in float64, written in the layer's own
    layout: transposed where peft's ``fan_in_fan_out`` is set (GPT-2's ``Conv1D`` stores W0
    in×out), as peft's own merge does."""
    if module.layer.fan_in_fan_out:
        update = update.T
    weight = module.base_weight
    with torch.no_grad():
        weight.copy_((weight.double() + module.scaling * update).to(weight.dtype))


def restore_base_weights(modules: list[LoraLayerView], weights: State, source: str) -> None:
    """Copy saved base weights, keyed by LoRA module name and in each layer's own layout, into
    those modules' frozen base layers (what fedex/flora changed). Checks every name and shape
    before copying anything; raises InputError naming ``source`` otherwise."""
    by_name = {module.name: module for module in modules}
    problems = [f"{name} is not a LoRA module of the model" for name in sorted(set(weights) - set(by_name))]
    problems += [
        f"{name} has shape {tuple(tensor.shape)}, the model {tuple(by_name[name].base_weight.shape)}"
        for name, tensor in weights.items()
        if name in by_name and tensor.shape != by_name[name].base_weight.shape
    ]
    if problems:
        raise InputError([*problems[:3], "the base weights and the model come from different runs or recipes"], source=source)
    with torch.no_grad():
        for name, tensor in weights.items():
            by_name[name].base_weight.copy_(tensor)


def tensor_bytes(tensors) -> int:
    """Bytes of the tensors as sent over the wire (raw element storage)."""
    return sum(t.numel() * t.element_size() for t in tensors)


class Method:
    """Base class: subclasses override what differs from FedAvg-LoRA and are registered with
    their option model (:mod:`~fedlora_cli.methods.registry`).

    Built from the validated recipe (:class:`fedlora_cli.recipe.Recipe`: ``method`` options as
    ``self.cfg``, ``model.train_head``, the run seed and ``federation.clients_per_round``) and the
    model's LoRA modules, before anything trains.
    """

    trains_a: ClassVar[bool] = True
    modifies_base: ClassVar[bool] = False
    #: True when ``server_update`` needs each client's raw upload (not just the weighted mean),
    #: e.g. FedEx-LoRA's residual ``Σp_k B_k A_k − B̄Ā`` or FLoRA's stacking. Such a server step
    #: is not post-processing of a noised mean, so client-level DP refuses these methods.
    uses_raw_uploads: ClassVar[bool] = False

    def __init__(self, recipe, modules: list[LoraLayerView]):
        self.cfg = recipe.method
        self.modules = modules
        self.train_head = recipe.model.train_head
        self.seed = recipe.federation.seed
        self.clients_per_round = recipe.federation.clients_per_round
        self.server_optimizer = ServerOptimizer.from_config(recipe.federation)

    def setup(self) -> None:
        """Change the adapter's structure or initial values before trainable flags are set (default: nothing)."""

    def is_trainable(self, name: str) -> bool:
        """Whether clients train the adapter parameter ``name``."""
        if is_head_parameter(name):
            return self.train_head
        if ".lora_A." in name:
            return self.trains_a
        return ".lora_B." in name

    def broadcast_keys(self, state: State) -> list[str]:
        """The global tensors the server sends to every sampled client each round."""
        return [key for key in state if self.is_trainable(key)]

    def download_bytes(self, state: State, round_index: int) -> int:
        """Bytes one client receives at the start of round ``round_index`` (0-based)."""
        return tensor_bytes(state[key] for key in self.broadcast_keys(state))

    def server_update(self, global_state: State, mean: State, uploads: list[State], weights: torch.Tensor, round_index: int) -> State:
        """The next global adapter from the weighted mean of the uploads (default: take the mean)."""
        return {**global_state, **mean}

    def server_step(self, global_state: State, mean: State, uploads: list[State], weights: torch.Tensor, round_index: int) -> State:
        """The server optimizer (if any) on the mean, then the method's own ``server_update``."""
        if self.server_optimizer is not None:
            mean = self.server_optimizer.step(global_state, mean)
        new_state = self.server_update(global_state, mean, uploads, weights, round_index)
        if self.server_optimizer is not None:
            self.carry_optimizer_state(global_state, new_state, round_index)
        return new_state

    def carry_optimizer_state(self, old_state: State, new_state: State, round_index: int) -> None:
        """Keep the server optimizer's state valid after ``server_update`` (default: nothing changes basis)."""

    def aggregate(self, global_state: State, uploads: list[State], weights: torch.Tensor, round_index: int) -> State:
        return self.server_step(global_state, weighted_mean(uploads, weights), uploads, weights, round_index)

    @contextlib.contextmanager
    def exported(self) -> Iterator[None]:
        """While open, the model is a standard peft LoRA model with the same effective weights
        (for saving the adapter in PEFT format); default: it already is one."""
        yield
