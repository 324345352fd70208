"""Checkpoint and resume of a run: a consistent cut after a complete round.

A checkpoint (``RUN_DIR/checkpoint/``, written by :class:`~fedlora_cli.federation.run_dir.RunDir`)
holds, as of the last committed round: the global adapter tensors; the server optimizer's state
(``server::`` keys); the base weights of methods that change them (``base::`` keys, fedex/flora);
and in ``meta.json`` the round count, the privacy policy's state (client steps, client-level
clip), the stop reason, the elapsed time and the resolved recipe. ``metrics.jsonl`` is cut to the
same round.

The server step of a round changes the base weights in place and replaces the optimizer state;
:meth:`Checkpoint.hold` keeps the committed versions from just before it, so a checkpoint saved
while a round is in flight (Ctrl-C, an error) still holds the previous round's, and
:meth:`Checkpoint.release` drops them when the round is committed.

Resume refuses (InputError, naming the file and the fix) a damaged checkpoint, one whose
recipe changed, and a ``checkpoint/`` whose state file is there but ``meta.json`` is not; only a
run without any checkpoint starts again from round 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from fedlora_cli.errors import InputError
from fedlora_cli.federation.run_dir import CHECKPOINT_META, RunDir, check_run_meta
from fedlora_cli.methods.base import Method, State, restore_base_weights
from fedlora_cli.privacy.policy import PrivacyPolicy
from fedlora_cli.recipe import Recipe, recipe_changes

BASE_PREFIX = "base::"
SERVER_PREFIX = "server::"  # the server optimizer's state in a checkpoint


@dataclass
class RunState:
    """What a checkpoint holds besides the tensors and the privacy policy's state."""

    rounds_done: int = 0
    metrics: list[dict] = field(default_factory=list)
    stopped: str | None = None
    elapsed: float = 0.0


class Checkpoint:
    """Saves and restores a run's consistent cut in ``run_dir``."""

    def __init__(self, run_dir: RunDir, recipe: Recipe, method: Method, policy: PrivacyPolicy):
        self.run_dir = run_dir
        self.recipe = recipe
        self.method = method
        self.policy = policy
        self.held_base: State | None = None
        self.held_optimizer: State | None = None

    def hold(self) -> None:
        """Keep the committed base weights and server optimizer state before a server step changes them."""
        if self.method.modifies_base:  # the server step changes the base weights in place
            self.held_base = {m.name: m.base_weight.clone() for m in self.method.modules}
        if self.method.server_optimizer is not None:  # its step replaces (never edits) the state tensors
            self.held_optimizer = self.method.server_optimizer.state(SERVER_PREFIX)

    def release(self) -> None:
        """The round is committed: the live base weights and optimizer state are the committed ones."""
        self.held_base = self.held_optimizer = None

    def save(self, global_state: State, state: RunState) -> None:
        tensors = dict(global_state)
        if self.method.server_optimizer is not None:
            tensors.update(self.held_optimizer or self.method.server_optimizer.state(SERVER_PREFIX))
        if self.method.modifies_base:
            base = self.held_base or {m.name: m.base_weight for m in self.method.modules}
            tensors.update({BASE_PREFIX + name: weight for name, weight in base.items()})
        self.run_dir.write_metrics(state.metrics)
        meta = {
            "rounds_done": state.rounds_done,
            **self.policy.state_dict(),
            "stopped": state.stopped,
            "elapsed": state.elapsed,
            "recipe": self._saved_recipe(),
        }
        self.run_dir.save_checkpoint(tensors, meta)

    def restore(self, key_order: list[str], device: torch.device | str = "cpu") -> tuple[State, RunState] | None:
        """Load the checkpoint (onto ``device``) into the method (base weights, optimizer state) and the policy;
        return the global adapter (in ``key_order`` first: noise is drawn tensor by tensor) and
        the run state. None when the run has no checkpoint."""
        self._refuse_orphaned_state()
        loaded = self.run_dir.load_checkpoint(device)
        if loaded is None:
            return None
        tensors, meta = loaded
        check_run_meta(meta, self.run_dir.checkpoint_path / CHECKPOINT_META)
        saved = self._saved_recipe()
        changed = recipe_changes(meta.get("recipe", saved), saved)  # older checkpoints have none
        if changed:
            raise InputError(
                f"{self.run_dir.recipe_path}: changed since the checkpoint ({'; '.join(changed)}); a run resumes "
                "with the recipe it started with: undo the change, or start a new run with the new recipe"
            )
        adapter = {k: v for k, v in tensors.items() if not k.startswith((BASE_PREFIX, SERVER_PREFIX))}
        if self.method.server_optimizer is not None:
            self.method.server_optimizer.load_state({k: v for k, v in tensors.items() if k.startswith(SERVER_PREFIX)}, SERVER_PREFIX)
        base = {k.removeprefix(BASE_PREFIX): v for k, v in tensors.items() if k.startswith(BASE_PREFIX)}
        if base:
            restore_base_weights(self.method.modules, base, str(self.run_dir.checkpoint_path))
        self.policy.load_state_dict(meta)
        state = RunState(
            rounds_done=meta["rounds_done"],
            metrics=self.run_dir.read_metrics()[: meta["rounds_done"]],
            stopped=meta.get("stopped"),
            elapsed=meta.get("elapsed", 0.0),
        )
        return {**{k: adapter[k] for k in key_order if k in adapter}, **adapter}, state

    def _refuse_orphaned_state(self) -> None:
        """InputError when ``checkpoint/`` holds a state file but no ``meta.json``: resuming from
        round 0 would silently throw the run's progress away."""
        directory = self.run_dir.checkpoint_path
        meta_path = directory / CHECKPOINT_META
        states = sorted(path.name for path in directory.glob("state-*.safetensors")) if directory.is_dir() else []
        if states and not meta_path.exists():
            raise InputError(
                f"{meta_path}: missing, but {directory} holds {', '.join(states)}: the checkpoint is incomplete. "
                f"Restore meta.json from a copy, or delete {directory} to run again from round 0"
            )

    def _saved_recipe(self) -> dict:
        """The resolved recipe as a checkpoint stores it (JSON types), to spot a changed recipe.yaml."""
        return json.loads(json.dumps(self.recipe.resolved()))
