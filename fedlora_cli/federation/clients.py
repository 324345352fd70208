"""Who trains the sampled clients of a round: the seam between the round loop and the runtime.

:class:`~fedlora_cli.federation.engine.FederatedRun` decides everything about a round (which
clients, their seeds and DP-SGD noise, aggregation, accounting); a *client runner* only turns
the round's :class:`ClientTask` list into :class:`~fedlora_cli.federation.client.LocalResult`
objects, one per client that answered. :class:`InProcessClients` trains them one after the
other on the run's single in-memory model (``fedlora train``);
:class:`fedlora_cli.flower.runner.FlowerClients` sends them to Flower SuperNodes. A runner may
return fewer results than tasks (a client that dropped out); the engine aggregates the ones that
answered and charges privacy only for those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from fedlora_cli.federation.client import ClientNoise, LocalResult
from fedlora_cli.models import load_adapter_state

if TYPE_CHECKING:
    from fedlora_cli.federation.engine import FederatedRun


@dataclass(frozen=True)
class ClientTask:
    """One sampled client's work in a round: train ``local_steps`` steps from the global adapter.

    ``seed`` is ``derive_seed(run seed, round, client)``; ``noise`` is the client's DP-SGD setting
    (None without sample-level DP). Both are chosen by the server, so every runtime trains the
    client identically.
    """

    client: int
    seed: int
    noise: ClientNoise | None


class ClientRunner(Protocol):
    def train(self, run: "FederatedRun", round_index: int, tasks: list[ClientTask]) -> dict[int, LocalResult]:
        """Train ``tasks`` from ``run.global_state``; results by client index, for those that answered."""
        ...


class InProcessClients:
    """Every client in this process, one after the other, on the run's one shared model."""

    def train(self, run: "FederatedRun", round_index: int, tasks: list[ClientTask]) -> dict[int, LocalResult]:
        results = {}
        for task in tasks:
            load_adapter_state(run.model, run.global_state)
            results[task.client] = run.trainer.train(
                run.exp.client_data[task.client], run.fed.local_steps, task.seed, task.noise
            )
        return results
