"""The round loop (DESIGN.md §2–3). Round t, global adapter x:

1. the privacy policy samples the clients S and may stop the run (``privacy.max_epsilon``);
2. the client runner trains each k ∈ S for ``local_steps`` from x (DP-SGD noise from the policy);
3. the policy aggregates the uploads with the method (client level: clip, noise, uniform mean);
4. the new x is evaluated every ``eval_every`` rounds and at the last one;
5. the round is committed at once: the policy charges its cost, x and the metrics are kept.

The seams: privacy (:mod:`fedlora_cli.privacy.policy`), who trains the clients
(:mod:`~fedlora_cli.federation.clients`: this process, or Flower SuperNodes), checkpoints
(:mod:`~fedlora_cli.federation.checkpoint`) and the adapter and summary at the end
(:mod:`~fedlora_cli.federation.export`).

Reproducibility and resume: every random choice of round t (which clients, each client's
batches, DP noise and dropout) is drawn from generators seeded by ``(seed, t, client)``
(:func:`~fedlora_cli.seeding.derive_seed`), so a run resumed from the checkpoint after round t
continues bit-identically to one that never stopped (on CPU, secure_mode off). The commit holds
Ctrl-C back, so a checkpoint is all of a round or none of it; an interrupt anywhere else saves
the last complete round, which resume repeats from the same seeds (no step is charged twice).
The one exception is a round abandoned because fewer than ``federation.min_clients_per_round``
clients answered: the clients that did answer stay charged, since their updates reached the
server. Clients that do not answer are left out of the aggregation and of the accounting.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import numpy as np
import torch

from fedlora_cli.errors import RunError
from fedlora_cli.federation.checkpoint import Checkpoint, RunState
from fedlora_cli.federation.client import LocalResult, LocalTrainer
from fedlora_cli.federation.clients import ClientReplies, ClientRunner, ClientTask, InProcessClients
from fedlora_cli.federation.experiment import Experiment
from fedlora_cli.federation.export import collapse_warning, export_adapter, summarize
from fedlora_cli.federation.interrupts import interrupts_deferred
from fedlora_cli.federation.lr_schedule import lora_lr_scale
from fedlora_cli.device import model_device
from fedlora_cli.federation.precision import resolve_precision
from fedlora_cli.federation.run_dir import RunDir
from fedlora_cli.methods.base import tensor_bytes
from fedlora_cli.models import adapter_state, head_bias_name, load_adapter_state
from fedlora_cli.privacy.label_prior import prior_offset, served_state, uses_label_prior
from fedlora_cli.privacy.policy import build_policy
from fedlora_cli.seeding import derive_seed

TIMING_KEYS = ("seconds", "client_seconds", "aggregation_seconds", "eval_seconds", "wall_seconds")


class Reporter(Protocol):
    def run_started(self, info: dict) -> None: ...
    def round_started(self, round_number: int, clients: list[int]) -> None: ...
    def round_finished(self, metrics: dict) -> None: ...
    def note(self, text: str) -> None: ...
    def run_finished(self, summary: dict) -> None: ...


class FederatedRun:
    def __init__(self, experiment: Experiment, run_dir: RunDir, reporter: Reporter, clients: ClientRunner | None = None):
        self.exp, self.recipe, self.fed = experiment, experiment.recipe, experiment.recipe.federation
        self.method = experiment.method
        self.run_dir, self.reporter = run_dir, reporter
        self.policy = build_policy(self.recipe, experiment.client_sizes)
        self.checkpoint = Checkpoint(run_dir, self.recipe, self.method, self.policy)
        self.state = RunState()
        self.last_scores: tuple[int, dict] = (-1, {})  # (round, full scores) of the latest evaluation
        # the model and its runtime (device, precision), who trains clients on it
        self.model = experiment.model
        self.device = model_device(self.model)
        self.precision = resolve_precision(self.fed.precision, self.device)
        self.global_state = adapter_state(self.model)
        self.head_bias = head_bias_name(self.global_state, len(experiment.label_names)) if self.recipe.task == "classification" else None
        if clients is None:
            trainer = LocalTrainer(self.model, self.fed, private=self.policy.dp_sgd)
            clients = InProcessClients(trainer, experiment.client_data, self.fed.local_steps)
        self.clients = clients

    def run(self) -> dict:
        """Run (or continue) the rounds; returns the summary written to ``summary.json``."""
        start = time.perf_counter() - self.state.elapsed
        self.reporter.run_started(self._info())
        for note in [*self.exp.notes, *self.policy.notes(), *self._notes()]:  # e.g. examples data.max_length cut
            self.reporter.note(note)
        try:
            while self.state.rounds_done < self.fed.rounds and self.state.stopped is None:
                self._round(self.state.rounds_done)
                self.state.elapsed = time.perf_counter() - start
                if self.state.rounds_done % self.recipe.output.checkpoint_every == 0:
                    self.checkpoint.save(self.global_state, self.state)
        except (KeyboardInterrupt, RunError):
            self.state.elapsed = time.perf_counter() - start
            self.checkpoint.save(self.global_state, self.state)
            raise
        self.state.elapsed = time.perf_counter() - start
        self.checkpoint.save(self.global_state, self.state)
        export_adapter(self.exp, self.run_dir, self._served(self.global_state))
        evaluated_round, final = self.last_scores
        if evaluated_round != self.state.rounds_done:
            final = self._evaluate(self.global_state)
        summary = summarize(self.exp, self.run_dir, self.state, final, self.policy, self.precision, self.device)
        if summary.get("collapsed"):  # classification only
            self.reporter.note(collapse_warning(summary))
        self.reporter.run_finished(summary)
        return summary

    def resume(self) -> None:
        """Continue from the run directory's checkpoint (none: start at round 0)."""
        restored = self.checkpoint.restore(list(self.global_state), self.device)
        if restored is not None:
            self.global_state, self.state = restored

    def _round(self, round_index: int) -> None:
        round_start = time.perf_counter()
        sampled = self.policy.sample(derive_seed(self.fed.seed, round_index, "sample"))  # 1. sample, or stop
        self.state.stopped = self.policy.stop_reason(round_index, sampled)
        if self.state.stopped:
            return
        self.reporter.round_started(round_index + 1, sampled)
        results = self._train_clients(round_index, sampled)  # 2. train locally
        trained = [k for k in sampled if k in results]
        uploads = [results[k].upload for k in trained]
        metrics = {
            "round": round_index + 1,
            "clients": trained,
            **({"dropped": [k for k in sampled if k not in results]} if len(trained) < len(sampled) else {}),
            "train_loss": _mean_finite([results[k].mean_loss for k in trained]),
            "eval_accuracy": None, "eval_macro_f1": None, "eval_loss": None,
            "epsilon": None,  # set when the round is committed
            "bytes_up": sum(tensor_bytes(u.values()) for u in uploads),
            "bytes_down": self.method.download_bytes(self.global_state, round_index) * len(sampled),
            "client_seconds": time.perf_counter() - round_start,
        }
        aggregation_start = time.perf_counter()  # 3. aggregate
        self.checkpoint.hold()
        weights = aggregation_weights(self.fed.client_weighting, [self.exp.client_sizes[k] for k in trained])
        global_state = self.policy.aggregate(self.method, self.global_state, uploads, weights, round_index)
        metrics["aggregation_seconds"] = time.perf_counter() - aggregation_start
        if not all(torch.isfinite(t).all() for t in global_state.values()):
            raise self._diverged(round_index, "the aggregated adapter is not finite")
        if round_index + 1 == self.fed.rounds or (self.fed.eval_every and (round_index + 1) % self.fed.eval_every == 0):
            eval_start = time.perf_counter()  # 4. evaluate
            scores = self._evaluate(global_state)
            self.last_scores = (round_index + 1, scores)
            metrics.update(self.exp.task.round_metrics(scores))
            metrics["eval_seconds"] = time.perf_counter() - eval_start
        metrics.update(self.policy.round_metrics())
        metrics["seconds"] = time.perf_counter() - round_start
        with interrupts_deferred():  # 5. commit the whole round at once: a checkpoint is all of it or none
            self.policy.charge({k: results[k].steps for k in trained})
            self.global_state = global_state
            self.checkpoint.release()
            metrics["epsilon"] = self.policy.epsilon()
            self.state.metrics.append(metrics)
            self.state.rounds_done = round_index + 1
        self.reporter.round_finished(metrics)

    def _train_clients(self, round_index: int, sampled: list[int]) -> dict[int, LocalResult]:
        """The results of the sampled clients that answered, all finite; RunError when too few answered."""
        offset = self._logit_offset(self.fed.logit_adjustment)  # the label counts are released before the first round that trains
        lr_scale = lora_lr_scale(self.fed.lr_schedule, round_index, self.fed.rounds)
        tasks = [
            ClientTask(k, derive_seed(self.fed.seed, round_index, k), self.policy.noise_for(k), offset, lr_scale) for k in sampled
        ]
        base = {m.name: m.base_weight for m in self.method.modules} if self.method.modifies_base else None
        replies = self.clients.train(round_index, tasks, self.global_state, base) if tasks else ClientReplies({})
        for note in replies.notes:
            self.reporter.note(note)
        self.policy.charge(replies.late_steps, released=False)  # they trained for an earlier round
        results = {k: replies.results[k] for k in sampled if k in replies.results}
        if len(results) < min(self.fed.min_clients_per_round, len(sampled)):  # Poisson may sample fewer
            # their updates reached the server: charged, though the round is abandoned
            self.policy.charge({k: r.steps for k, r in results.items()}, released=False)
            raise RunError(
                f"round {round_index + 1}: only {len(results)} of {len(sampled)} sampled clients answered, below "
                f"federation.min_clients_per_round={self.fed.min_clients_per_round}; the checkpoint is in {self.run_dir.path}"
            )
        diverged = [k for k in results if not _finite_result(results[k])]
        if diverged:
            raise self._diverged(round_index, f"clients {diverged} returned non-finite parameters or loss")
        return results

    def _logit_offset(self, tau: float) -> tuple[float, ...] | None:
        """``τ·log π`` (None for τ = 0 or a run without a prior), π from the label counts the
        policy releases once, at the first call (whatever τ), and returns thereafter (noised at
        sample level; :mod:`fedlora_cli.privacy.label_prior`)."""
        if not uses_label_prior(self.recipe):
            return None
        counts = self.policy.label_counts
        if counts is None:
            labels = np.asarray(self.exp.train.labels)
            counts = self.policy.release_label_counts(
                [labels[indices] for indices in self.exp.client_indices], len(self.exp.label_names), derive_seed(self.fed.seed, "label-prior")
            )
        if tau == 0:
            return None
        return tuple(prior_offset(counts, tau, self.policy.prior_noise_epsilon, len(self.exp.client_indices)))

    def _notes(self) -> list[str]:
        """What the recipe asks for that this model cannot do."""
        if self.head_bias is None and self.fed.posthoc_adjustment > 0 and uses_label_prior(self.recipe):
            return [
                f"note: federation.posthoc_adjustment={self.fed.posthoc_adjustment} is not applied: the classifier head "
                f"of model '{self.recipe.model.name}' has no bias to fold it into; the run serves f(x)"
            ]
        return []

    def _served(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The adapter the run evaluates and saves: ``state`` with the post-hoc adjustment
        ``federation.posthoc_adjustment·log π`` taken from the head's bias (:func:`served_state`).
        Clients and checkpoints keep ``state`` itself. A run that trained no round has released
        no prior (and must not pay for one now): it serves ``state``."""
        if self.policy.label_counts is None:
            return state
        return served_state(state, self.head_bias, self._logit_offset(self.fed.posthoc_adjustment))

    def _diverged(self, round_index: int, what: str) -> RunError:
        last = f"round {self.state.rounds_done}" if self.state.rounds_done else "none, the initial adapter"
        return RunError(
            f"round {round_index + 1}: training diverged ({what}); lower federation.lr (now {self.fed.lr}) and start "
            f"a new run. No adapter was written; {self.run_dir.path} keeps the checkpoint of the last good round ({last})"
        )

    def _evaluate(self, state: dict[str, torch.Tensor]) -> dict:
        """The scores of the model served from adapter ``state`` on the test split: the one place
        a run evaluates."""
        load_adapter_state(self.model, self._served(state))
        return self.exp.task.evaluate(self.model, self.exp.test, self.exp.test_data)

    def _info(self) -> dict:
        return {
            "run_dir": str(self.run_dir.path),
            "recipe": self.recipe.name,
            "method": self.recipe.method.name,
            "model": self.recipe.model.name,
            "clients": self.fed.clients,
            "client_sizes": self.exp.client_sizes,
            "rounds": self.fed.rounds,
            "resumed_at_round": self.state.rounds_done,
            "privacy_level": self.recipe.privacy.level,
            "precision": self.precision,
            "device": str(self.device),
            "task": self.recipe.task,
            **self.policy.report(),
        }


def aggregation_weights(weighting: str, sizes: list[int]) -> torch.Tensor:
    """``p_k = n_k/Σn`` over the clients that answered (``samples``), or ``1/|S|`` (``uniform``)."""
    raw = torch.ones(len(sizes), dtype=torch.float64) if weighting == "uniform" else torch.tensor(sizes, dtype=torch.float64)
    return raw / raw.sum()


def _finite_result(result: LocalResult) -> bool:
    """Finite uploaded tensors, and a finite loss whenever the client saw examples (a client whose
    Poisson batches were all empty has no loss: NaN)."""
    loss_ok = result.examples == 0 or math.isfinite(result.mean_loss)
    return loss_ok and all(torch.isfinite(t).all() for t in result.upload.values())


def _mean_finite(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None
