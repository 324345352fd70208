"""The round loop: sample clients, train locally, aggregate, account, evaluate, checkpoint.

Reproducibility and resume: every random choice of round t (which clients, each client's
batches, DP noise and dropout) is drawn from generators seeded by ``(seed, t, client)``
(:func:`~fedlora_cli.seeding.derive_seed`), so a run resumed from the checkpoint
after round t continues bit-identically to one that never stopped (on CPU, secure_mode off).

A checkpoint is a consistent cut: a round computes into locals and commits the clients' step
charges, the global (and base) tensors, the client-level DP state, its metrics and ``rounds_done``
together at its end, with Ctrl-C held back during the commit; an interrupt anywhere else saves
the last complete round, which resume then repeats from the same seeds (no step is charged twice).
The one exception is a round abandoned because too few clients answered: the clients that did
answer stay charged, since their updates reached the server.

Who trains a round's sampled clients is a seam (:mod:`~fedlora_cli.federation.clients`): this
process by default, Flower SuperNodes with :mod:`fedlora_cli.flower`. Clients that do not answer
are left out of the aggregation and of the accounting, as long as at least
``federation.min_clients_per_round`` answered.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch

from fedlora_cli.federation.client import ClientNoise, LocalResult, LocalTrainer
from fedlora_cli.seeding import derive_seed
from fedlora_cli.federation.clients import ClientRunner, ClientTask, InProcessClients
from fedlora_cli.errors import InputError, RunError
from fedlora_cli.federation.artifacts import load_adapter_model
from fedlora_cli.federation.experiment import Experiment
from fedlora_cli.federation.interrupts import interrupts_deferred
from fedlora_cli.federation.run_dir import CHECKPOINT_META, RunDir, check_run_meta
from fedlora_cli.methods.base import restore_base_weights, tensor_bytes
from fedlora_cli.models import adapter_state, load_adapter_state
from fedlora_cli.privacy.client_level import EPSILON_SCOPE, ClientLevelDP, noise_generator
from fedlora_cli.privacy.sample_level import SampleLevelPlan
from fedlora_cli.recipe import recipe_changes

BASE_PREFIX = "base::"
SERVER_PREFIX = "server::"  # the server optimizer's state in a checkpoint
TIMING_KEYS = ("seconds", "client_seconds", "aggregation_seconds", "eval_seconds", "wall_seconds")


class Reporter(Protocol):
    def run_started(self, info: dict) -> None: ...
    def round_started(self, round_number: int, clients: list[int]) -> None: ...
    def round_finished(self, metrics: dict) -> None: ...
    def note(self, text: str) -> None: ...
    def run_finished(self, summary: dict) -> None: ...


@dataclass
class RunState:
    """What a checkpoint holds besides the tensors."""

    rounds_done: int = 0
    metrics: list[dict] = field(default_factory=list)
    client_steps: list[int] = field(default_factory=list)
    stopped: str | None = None
    elapsed: float = 0.0


class FederatedRun:
    def __init__(self, experiment: Experiment, run_dir: RunDir, reporter: Reporter, clients: ClientRunner | None = None):
        self.exp = experiment
        self.recipe = experiment.recipe
        self.fed = experiment.recipe.federation
        self.run_dir = run_dir
        self.reporter = reporter
        self.model = experiment.model
        self.method = experiment.method
        privacy = self.recipe.privacy
        self.plan = (
            SampleLevelPlan.build(privacy, self.fed, experiment.client_sizes) if privacy.level == "sample" else None
        )
        self.client_dp = (
            ClientLevelDP.build(privacy, self.fed, self.recipe.method.name) if privacy.level == "client" else None
        )
        self.trainer = LocalTrainer(self.model, self.fed, private=self.plan is not None)
        self.global_state = adapter_state(self.model)
        self.committed_base: dict[str, torch.Tensor] | None = None  # base weights while a round changes them
        self.committed_optimizer: dict[str, torch.Tensor] | None = None  # server optimizer state, likewise
        self.state = RunState(client_steps=[0] * self.fed.clients)
        self.clients = clients if clients is not None else InProcessClients()  # who trains the sampled clients
        self.last_scores: tuple[int, dict] = (-1, {})  # (round, full scores) of the latest evaluation

    # ------------------------------------------------------------------------------- public
    def run(self) -> dict:
        """Run (or continue) the rounds; returns the summary written to ``summary.json``."""
        start = time.perf_counter() - self.state.elapsed
        self.reporter.run_started(self._info())
        for note in self.exp.notes:  # e.g. examples data.max_length cut (task-specific)
            self.reporter.note(note)
        if self.client_dp is not None and self.fed.client_weighting != "uniform":
            self.reporter.note(
                "note: privacy.level=client averages client updates uniformly (sensitivity C/m); "
                f"federation.client_weighting={self.fed.client_weighting} is not used"
            )
        try:
            while self.state.rounds_done < self.fed.rounds and self.state.stopped is None:
                self._round(self.state.rounds_done)
                self.state.elapsed = time.perf_counter() - start
                if self.state.rounds_done % self.recipe.output.checkpoint_every == 0:
                    self.save_checkpoint()
        except (KeyboardInterrupt, RunError):
            self.state.elapsed = time.perf_counter() - start
            self.save_checkpoint()
            raise
        self.state.elapsed = time.perf_counter() - start
        self.save_checkpoint()
        summary = self._finish()
        self.reporter.run_finished(summary)
        return summary

    def resume(self) -> None:
        """Load the run directory's checkpoint into this run."""
        loaded = self.run_dir.load_checkpoint()
        if loaded is None:
            return
        tensors, meta = loaded
        check_run_meta(meta, self.run_dir.checkpoint_path / CHECKPOINT_META)
        changed = recipe_changes(meta.get("recipe", self._saved_recipe()), self._saved_recipe())  # older checkpoints: none
        if changed:
            raise InputError(
                f"{self.run_dir.recipe_path}: changed since the checkpoint ({'; '.join(changed)}); a run resumes "
                "with the recipe it started with: undo the change, or start a new run with the new recipe"
            )
        adapter = {k: v for k, v in tensors.items() if not k.startswith((BASE_PREFIX, SERVER_PREFIX))}
        # the model's own key order (a checkpoint file sorts its keys): noise is drawn tensor by tensor
        self.global_state = {**{k: adapter[k] for k in self.global_state if k in adapter}, **adapter}
        if self.method.server_optimizer is not None:
            self.method.server_optimizer.load_state(
                {k: v for k, v in tensors.items() if k.startswith(SERVER_PREFIX)}, SERVER_PREFIX
            )
        base = {k.removeprefix(BASE_PREFIX): v for k, v in tensors.items() if k.startswith(BASE_PREFIX)}
        if base:
            restore_base_weights(self.method.modules, base, str(self.run_dir.checkpoint_path))
        self.state = RunState(
            rounds_done=meta["rounds_done"],
            metrics=self.run_dir.read_metrics()[: meta["rounds_done"]],
            client_steps=meta["client_steps"],
            stopped=meta.get("stopped"),
            elapsed=meta.get("elapsed", 0.0),
        )
        if self.plan is not None:
            for budget, steps in zip(self.plan.clients, self.state.client_steps):
                budget.steps = steps
        if self.client_dp is not None:
            self.client_dp.rounds_done = self.state.rounds_done
            self.client_dp.clip = meta.get("client_clip", self.client_dp.clip)

    def save_checkpoint(self) -> None:
        tensors = dict(self.global_state)
        if self.method.server_optimizer is not None:
            tensors.update(self.committed_optimizer or self.method.server_optimizer.state(SERVER_PREFIX))
        if self.method.modifies_base:
            base = self.committed_base or {m.name: m.base_weight for m in self.method.modules}
            tensors.update({BASE_PREFIX + name: weight for name, weight in base.items()})
        self.run_dir.write_metrics(self.state.metrics)
        self.run_dir.save_checkpoint(
            tensors,
            {
                "rounds_done": self.state.rounds_done,
                "client_steps": self.state.client_steps,
                "stopped": self.state.stopped,
                "elapsed": self.state.elapsed,
                **({"client_clip": self.client_dp.clip} if self.client_dp is not None else {}),
                "recipe": self._saved_recipe(),
            },
        )

    def _saved_recipe(self) -> dict:
        """The resolved recipe as a checkpoint stores it (JSON types), to spot a changed recipe.yaml."""
        return json.loads(json.dumps(self.exp.recipe.resolved()))

    # ------------------------------------------------------------------------------- rounds
    def sample_clients(self, round_index: int) -> list[int]:
        """Round ``round_index``'s clients, seeded by ``(seed, round, "sample")``: Poisson sampling at
        rate clients_per_round/clients under client-level DP (what its accountant assumes; may be
        none), else exactly clients_per_round without replacement."""
        seed = derive_seed(self.fed.seed, round_index, "sample")
        if self.client_dp is not None:
            return self.client_dp.sample_clients(self.fed.clients, seed)
        rng = np.random.default_rng(seed)
        return sorted(rng.choice(self.fed.clients, size=self.fed.clients_per_round, replace=False).tolist())

    def _round(self, round_index: int) -> None:
        round_start = time.perf_counter()
        sampled = self.sample_clients(round_index)
        if self.plan is not None:
            over = self.plan.would_exceed(sampled, self.fed.local_steps)
            if over:
                self.state.stopped = (
                    f"stopped before round {round_index + 1}: clients {over} would pass "
                    f"privacy.max_epsilon={self.recipe.privacy.max_epsilon}"
                )
                return
        if self.client_dp is not None and self.client_dp.would_exceed():
            self.state.stopped = (
                f"stopped before round {round_index + 1}: it would take the client-level epsilon to "
                f"{self.client_dp.epsilon(self.client_dp.rounds_done + 1):.4g}, past "
                f"privacy.max_epsilon={self.recipe.privacy.max_epsilon}"
            )
            return
        self.reporter.round_started(round_index + 1, sampled)
        download = self.method.download_bytes(self.global_state, round_index) * len(sampled)
        client_start = time.perf_counter()
        tasks = [ClientTask(k, derive_seed(self.fed.seed, round_index, k), self._noise(k)) for k in sampled]
        results = self.clients.train(self, round_index, tasks) if tasks else {}  # only the clients that answered
        trained = [k for k in sampled if k in results]
        if len(trained) < min(self.fed.min_clients_per_round, len(sampled)):  # Poisson may sample fewer
            for client in trained:  # their updates reached the server: charged, though the round is abandoned
                self.charge(client, results[client].steps)
            raise RunError(
                f"round {round_index + 1}: only {len(trained)} of {len(sampled)} sampled clients answered, below "
                f"federation.min_clients_per_round={self.fed.min_clients_per_round}; the checkpoint is in {self.run_dir.path}"
            )
        diverged = [k for k in trained if not _finite_result(results[k])]
        if diverged:
            raise self._diverged(round_index, f"clients {diverged} returned non-finite parameters or loss")
        uploads = [results[k].upload for k in trained]
        losses = [results[k].mean_loss for k in trained]
        client_seconds = time.perf_counter() - client_start
        upload = sum(tensor_bytes(u.values()) for u in uploads)

        aggregation_start = time.perf_counter()
        round_clip = self.client_dp.clip if self.client_dp is not None else None
        if self.method.modifies_base:  # the server step changes the base weights in place
            self.committed_base = {m.name: m.base_weight.clone() for m in self.method.modules}
        if self.method.server_optimizer is not None:  # its step replaces (never edits) the state tensors
            self.committed_optimizer = self.method.server_optimizer.state(SERVER_PREFIX)
        if self.client_dp is not None:
            client_dp = replace(self.client_dp)  # privatize moves its clip and round count
            generator = noise_generator(self.recipe.privacy.secure_mode, derive_seed(self.fed.seed, round_index, "server-noise"))
            global_state = client_dp.aggregate(self.method, self.global_state, uploads, round_index, generator)
        else:
            global_state = self.method.aggregate(self.global_state, uploads, self._weights(trained), round_index)
        aggregation_seconds = time.perf_counter() - aggregation_start
        if not all(torch.isfinite(t).all() for t in global_state.values()):
            raise self._diverged(round_index, "the aggregated adapter is not finite")
        load_adapter_state(self.model, global_state)

        round_number = round_index + 1
        metrics = {
            "round": round_number,
            "clients": trained,
            **({"dropped": [k for k in sampled if k not in results]} if len(trained) < len(sampled) else {}),
            "train_loss": _mean_finite(losses),
            "eval_accuracy": None,
            "eval_macro_f1": None,
            "eval_loss": None,
            "epsilon": None,  # set when the round is committed
            "bytes_up": upload,
            "bytes_down": download,
            "client_seconds": client_seconds,
            "aggregation_seconds": aggregation_seconds,
        }
        every = self.fed.eval_every
        if round_number == self.fed.rounds or (every and round_number % every == 0):
            eval_start = time.perf_counter()
            scores = self._evaluate(global_state)
            self.last_scores = (round_number, scores)
            metrics.update(self.exp.task.round_metrics(scores))
            metrics["eval_seconds"] = time.perf_counter() - eval_start
        if round_clip is not None:
            metrics["client_clip"] = round_clip
        metrics["seconds"] = time.perf_counter() - round_start
        with interrupts_deferred():  # commit the whole round at once: a checkpoint is all of it or none
            for client in trained:
                self.charge(client, results[client].steps)
            self.global_state = global_state
            if self.client_dp is not None:
                self.client_dp = client_dp
            self.committed_base = self.committed_optimizer = None
            metrics["epsilon"] = self._epsilon()
            self.state.metrics.append(metrics)
            self.state.rounds_done = round_number
        self.reporter.round_finished(metrics)

    def charge(self, client: int, steps: int) -> None:
        """Count ``steps`` local steps that ``client`` took: the accountant charges only these."""
        self.state.client_steps[client] += steps
        if self.plan is not None:
            self.plan.charge(client, steps)

    def _diverged(self, round_index: int, what: str) -> RunError:
        last = f"round {self.state.rounds_done}" if self.state.rounds_done else "none, the initial adapter"
        return RunError(
            f"round {round_index + 1}: training diverged ({what}); lower federation.lr (now {self.fed.lr}) and start "
            f"a new run. No adapter was written; {self.run_dir.path} keeps the checkpoint of the last good round ({last})"
        )

    def _noise(self, client: int) -> ClientNoise | None:
        if self.plan is None:
            return None
        budget = self.plan.clients[client]
        privacy = self.recipe.privacy
        return ClientNoise(budget.sample_rate, budget.noise_multiplier, privacy.max_grad_norm, privacy.secure_mode)

    def _epsilon(self) -> float | None:
        """Worst client's epsilon (sample level) or the per-participation epsilon (client level)."""
        if self.plan is not None:
            return self.plan.worst_epsilon()
        if self.client_dp is not None:
            return self.client_dp.epsilon()
        return None

    def _weights(self, sampled: list[int]) -> torch.Tensor:
        if self.fed.client_weighting == "uniform":
            raw = torch.ones(len(sampled), dtype=torch.float64)
        else:
            raw = torch.tensor([self.exp.client_sizes[k] for k in sampled], dtype=torch.float64)
        return raw / raw.sum()

    def _evaluate(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        load_adapter_state(self.model, state)
        return self.exp.task.evaluate(self.model, self.exp.test, self.exp.test_data)

    # ------------------------------------------------------------------------------- finish
    def _finish(self) -> dict:
        load_adapter_state(self.model, self.global_state)
        base = {m.name: m.base_weight for m in self.method.modules} if self.method.modifies_base else None
        with self.method.exported():
            self.run_dir.save_adapter(self.model, base)
            self._verify_saved_adapter()
        evaluated_round, final = self.last_scores
        if evaluated_round != self.state.rounds_done:
            final = self._evaluate(self.global_state)
        privacy = self.recipe.privacy
        private = self.plan is not None or self.client_dp is not None
        summary = {
            "run_dir": str(self.run_dir.path),
            "method": self.recipe.method.name,
            "rounds_completed": self.state.rounds_done,
            "rounds_planned": self.fed.rounds,
            **self.exp.task.summary(final, self.exp.train, self.exp.test),
            "privacy_level": privacy.level,
            "epsilon": self._epsilon(),
            "epsilon_scope": EPSILON_SCOPE.get(privacy.level),
            "delta": privacy.delta if private else None,
            "accountant": privacy.accountant if private else None,
            "client_epsilons": self.plan.epsilons() if self.plan else None,
            "noise_multipliers": [b.noise_multiplier for b in self.plan.clients] if self.plan else None,
            "client_sizes": self.exp.client_sizes,
            "client_steps": self.state.client_steps,
            "bytes_up_total": sum(m["bytes_up"] for m in self.state.metrics),
            "bytes_down_total": sum(m["bytes_down"] for m in self.state.metrics),
            "stopped": self.state.stopped,
            "precision": self.trainer.precision,
            "wall_seconds": self.state.elapsed,
        }
        if self.client_dp is not None:
            summary["client_dp"] = self.client_dp.info()
        self.run_dir.write_summary(summary)
        if summary.get("collapsed"):  # classification only
            self.reporter.note(collapse_warning(summary))
        return summary

    def _verify_saved_adapter(self, examples: int = 16) -> None:
        """The saved adapter, reloaded onto a fresh base model, must predict exactly like the
        trained one (guards against silent corruption such as opacus issue 820)."""
        probe = self.exp.test_data.subset(range(min(examples, len(self.exp.test_data))))
        reloaded = load_adapter_model(self.recipe, self.run_dir.adapter_path, len(self.exp.label_names))
        if not torch.equal(self.exp.task.outputs(reloaded, probe), self.exp.task.outputs(self.model, probe)):
            raise RunError(
                f"the adapter saved in {self.run_dir.adapter_path} does not reproduce the trained model's "
                "predictions; the run directory's checkpoint is intact, please report this"
            )

    def _info(self) -> dict:
        privacy = self.recipe.privacy
        info = {
            "run_dir": str(self.run_dir.path),
            "recipe": self.recipe.name,
            "task": self.recipe.task,
            "method": self.recipe.method.name,
            "model": self.recipe.model.name,
            "clients": self.fed.clients,
            "client_sizes": self.exp.client_sizes,
            "rounds": self.fed.rounds,
            "resumed_at_round": self.state.rounds_done,
            "privacy_level": privacy.level,
            "precision": self.trainer.precision,
        }
        if self.plan is not None:
            info["noise_multipliers"] = sorted({round(b.noise_multiplier, 4) for b in self.plan.clients})
            info["target_epsilon"] = privacy.target_epsilon
            info["delta"] = privacy.delta
            info["secure_mode"] = privacy.secure_mode
        if self.client_dp is not None:
            info.update(self.client_dp.info())
            info["noise_multipliers"] = [round(self.client_dp.noise_multiplier, 4)]
            info["target_epsilon"] = privacy.target_epsilon
            info["delta"] = privacy.delta
            info["secure_mode"] = privacy.secure_mode
            info["epsilon_scope"] = EPSILON_SCOPE["client"]
        return info


def collapse_warning(summary: dict) -> str:
    counts = summary["predicted_counts"]
    return (
        f"warning: the final model did not learn the task: it gives one class to {max(counts) / sum(counts):.0%} of "
        f"the test set (predicted counts {counts}); accuracy {summary['final_accuracy']:.4f} vs "
        f"{summary['majority_accuracy']:.4f} for always answering the majority class, macro-F1 "
        f"{summary['final_macro_f1']:.4f}. Try more rounds or local steps, a smaller federation.lr, "
        "federation.server_optimizer=momentum, or a larger privacy.target_epsilon (see README, 'Defaults that learn')"
    )


def _finite_result(result: LocalResult) -> bool:
    """Finite uploaded tensors, and a finite loss whenever the client saw examples (a client whose
    Poisson batches were all empty has no loss: NaN)."""
    loss_ok = result.examples == 0 or math.isfinite(result.mean_loss)
    return loss_ok and all(torch.isfinite(t).all() for t in result.upload.values())


def _mean_finite(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None
