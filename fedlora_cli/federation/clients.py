"""Who trains the sampled clients of a round: the seam between the round loop and the runtime.

The round loop (:mod:`fedlora_cli.federation.engine`) decides everything about a round (which
clients, their seeds and DP-SGD noise, aggregation, accounting); a *client runner* gets plain
data — the round index, the round's :class:`ClientTask` list, the global trainable tensors and
(for methods that change them) the base weights — and returns a :class:`ClientReplies`: one
:class:`~fedlora_cli.federation.client.LocalResult` per client that answered, plus the steps of
clients whose reply to an earlier round came too late (they trained, so privacy charges them).
:class:`InProcessClients` trains them one after the other on the run's single in-memory model
(``fedlora train``); :class:`fedlora_cli.flower.runner.FlowerClients` sends them to Flower
SuperNodes. A runner may answer for fewer clients than tasks (a client that dropped out); the
round loop aggregates the ones that answered and charges privacy only for those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from fedlora_cli.data.batching import TokenizedDataset
from fedlora_cli.federation.client import ClientNoise, LocalResult, LocalTrainer
from fedlora_cli.methods.base import State
from fedlora_cli.models import load_adapter_state


@dataclass(frozen=True)
class ClientTask:
    """One sampled client's work in a round: train ``local_steps`` steps from the global adapter.

    ``seed`` is ``derive_seed(run seed, round, client)``; ``noise`` is the client's DP-SGD setting
    (None without sample-level DP); ``logit_offset`` is ``τ·log π`` of logit-adjusted training
    (None: plain cross-entropy); ``lora_lr_scale`` is the round's factor ``s(t)`` on the LoRA
    factors' learning rate (:mod:`~fedlora_cli.federation.lr_schedule`). All are chosen by the
    server, so every runtime trains the client identically.
    """

    client: int
    seed: int
    noise: ClientNoise | None
    logit_offset: tuple[float, ...] | None = None
    lora_lr_scale: float = 1.0


@dataclass
class ClientReplies:
    """What a runner brings back from a round."""

    results: dict[int, LocalResult]  # by client, for those that answered
    late_steps: dict[int, int] = field(default_factory=dict)  # steps of late replies to earlier rounds
    notes: list[str] = field(default_factory=list)  # what the user should know (a client failed, ...)


class ClientRunner(Protocol):
    def train(self, round_index: int, tasks: list[ClientTask], global_state: State, base: State | None) -> ClientReplies:
        """Train ``tasks`` from ``global_state`` (and base weights ``base`` when the method changes
        them; None otherwise)."""
        ...


class InProcessClients:
    """Every client in this process, one after the other, on the run's one shared model (whose
    base weights are the server's own, so ``base`` is already in place)."""

    def __init__(self, trainer: LocalTrainer, client_data: list[TokenizedDataset], local_steps: int):
        self.trainer = trainer
        self.client_data = client_data
        self.local_steps = local_steps

    def train(self, round_index: int, tasks: list[ClientTask], global_state: State, base: State | None) -> ClientReplies:
        results = {}
        for task in tasks:
            load_adapter_state(self.trainer.model, global_state)
            results[task.client] = self.trainer.train(
                self.client_data[task.client], self.local_steps, task.seed, task.noise, task.logit_offset, task.lora_lr_scale
            )
        return ClientReplies(results)
