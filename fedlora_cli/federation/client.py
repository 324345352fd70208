"""Local training of one client on the one shared model.

There is a single model in memory: before a client trains, the server's global adapter is
copied into it (:func:`~fedlora_cli.models.load_adapter_state`); afterwards the tensors the
method lets clients train are read back as the client's upload. Under sample-level DP the
model is wrapped once in Opacus's ``GradSampleModule`` and every client step goes through an
Opacus ``DPOptimizer``: per-sample clipping to ``C``, Gaussian noise ``σ·C`` on the sum, division
by the expected batch size, on a Poisson-sampled batch (rate ``q = batch_size / n_k``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

from fedlora_cli.data.batching import TokenizedDataset, poisson_batch, uniform_batch
from fedlora_cli.device import model_device
from fedlora_cli.federation.precision import autocast, resolve_precision
from fedlora_cli.models import is_head_parameter, model_task
from fedlora_cli.privacy.client_level import noise_generator
from fedlora_cli.privacy.group_clipping import GroupClippingDPOptimizer, split_clip_norms
from fedlora_cli.recipe import FederationConfig
from fedlora_cli.seeding import derive_seed
from fedlora_cli.tasks.lm_scoring import mean_example_loss


@dataclass
class ClientNoise:
    """A client's DP-SGD settings: Poisson rate and noise multiplier (None: no DP)."""

    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    secure_mode: bool = False
    head_clip_share: float | None = None  # the head's share of C (privacy.head_clip_share); None: one joint clip


@dataclass
class LocalResult:
    upload: dict[str, torch.Tensor]
    mean_loss: float
    steps: int
    examples: int


def make_optimizer(
    named_params: list[tuple[str, torch.nn.Parameter]], cfg: FederationConfig, lora_lr_scale: float = 1.0
) -> torch.optim.Optimizer:
    """The client optimizer: LoRA factors at ``lr · lora_lr_scale`` (the round's ``s(t)``,
    :mod:`~fedlora_cli.federation.lr_schedule`), the classifier head at ``head_lr`` (default ``lr``)."""
    head_lr = cfg.head_lr if cfg.head_lr is not None else cfg.lr
    lora_lr = cfg.lr * lora_lr_scale
    groups = [  # "part" names the group for split clipping (dp_optimizer)
        {"params": [p for name, p in named_params if not is_head_parameter(name)], "lr": lora_lr, "part": "lora"},
        {"params": [p for name, p in named_params if is_head_parameter(name)], "lr": head_lr, "part": "head"},
    ]
    groups = [group for group in groups if group["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def dp_optimizer(optimizer: torch.optim.Optimizer, noise: ClientNoise, expected_batch_size: int, generator) -> DPOptimizer:
    """Opacus's DP-SGD step around ``optimizer`` (:func:`make_optimizer`'s groups, named by their
    ``part``). With ``head_clip_share`` and both a LoRA and a head group present, each example's
    head gradient is clipped to ``share·C`` and its LoRA gradient to ``√(1−share²)·C`` (same
    sensitivity ``C``, same noise); otherwise the whole gradient is clipped to ``C``."""
    common = {
        "noise_multiplier": noise.noise_multiplier,
        "expected_batch_size": expected_batch_size,
        "loss_reduction": "mean",
        "generator": generator,
        "secure_mode": noise.secure_mode,
    }
    parts = [group.get("part") for group in optimizer.param_groups]
    if noise.head_clip_share is not None and len(parts) == 2 and set(parts) == {"head", "lora"}:
        lora, head = split_clip_norms(noise.max_grad_norm, noise.head_clip_share)
        norms = [{"lora": lora, "head": head}[part] for part in parts]
        return GroupClippingDPOptimizer(optimizer, group_norms=norms, **common)
    return DPOptimizer(optimizer, max_grad_norm=noise.max_grad_norm, **common)


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor], precision: str) -> torch.Tensor:
    """The forward pass. With ``bfloat16`` only it runs under autocast on the batch's device:
    backward hooks, per-sample clipping, noise and the optimizer step stay in float32."""
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    with autocast(batch["input_ids"].device, precision):
        return model(**inputs).logits.float()


def classification_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], precision: str = "float32", logit_offset: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy over the batch's examples; with ``logit_offset`` (``τ·log π``) the
    logit-adjusted loss ``CE(f(x) + τ·log π, y)`` (Menon et al. 2021; :mod:`fedlora_cli.privacy.label_prior`)."""
    logits = _logits(model, batch, precision)
    if logit_offset is not None:
        logits = logits + logit_offset
    return F.cross_entropy(logits, batch["labels"])


def causal_lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], precision: str = "float32") -> torch.Tensor:
    """Mean over the batch's examples of each example's mean response-token NLL
    (:func:`~fedlora_cli.tasks.lm_scoring.mean_example_loss`): one prompt+response is one DP example."""
    return mean_example_loss(_logits(model, batch, precision), batch["labels"])


TASK_LOSSES = {"classification": classification_loss, "causal_lm": causal_lm_loss}


def grad_samples_to_float32(params) -> None:
    """Cast per-sample gradients to float32 before Opacus clips them.

    Under bfloat16 autocast Opacus's hooks produce bf16 ``grad_sample``; ``DPOptimizer`` takes
    the per-sample norms ``‖g_i‖`` *before* casting to the parameter dtype, so the clipping
    factor ``min(1, C/‖g_i‖)`` would come from a bf16 norm (8-bit mantissa) and a clipped
    gradient could exceed C. After this cast the norm and the clipping are float32 math.
    """
    for p in params:
        grad_sample = getattr(p, "grad_sample", None)
        if isinstance(grad_sample, torch.Tensor) and grad_sample.dtype != torch.float32:
            p.grad_sample = grad_sample.float()


class LocalTrainer:
    """Trains the shared model's trainable parameters on one client's data at a time."""

    def __init__(self, model: torch.nn.Module, cfg: FederationConfig, private: bool):
        self.model = model
        self.cfg = cfg
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.device = model_device(model)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.loss = TASK_LOSSES[model_task(model)]
        self.forward_model = GradSampleModule(model, loss_reduction="mean") if private else model

    def train(
        self,
        data: TokenizedDataset,
        steps: int,
        seed: int,
        noise: ClientNoise | None,
        logit_offset: tuple[float, ...] | None = None,
        lora_lr_scale: float = 1.0,
    ) -> LocalResult:
        """Run ``steps`` optimizer steps on ``data``; randomness depends only on ``seed``.
        ``logit_offset`` (classification): train on the logit-adjusted loss with this ``τ·log π``;
        ``lora_lr_scale``: the round's factor on the LoRA factors' lr (``federation.lr_schedule``)."""
        loss = self.loss
        if logit_offset is not None:
            loss = partial(self.loss, logit_offset=torch.tensor(logit_offset, dtype=torch.float32, device=self.device))
        # under secure_mode the Poisson batches are secret too (amplification by sampling needs it)
        batch_generator = noise_generator(noise is not None and noise.secure_mode, derive_seed(seed, "batches"))
        optimizer = make_optimizer(list(zip(self.names, self.params)), self.cfg, lora_lr_scale)
        if noise is not None:
            optimizer = dp_optimizer(
                optimizer,
                noise,
                expected_batch_size=max(1, round(noise.sample_rate * len(data))),
                generator=noise_generator(noise.secure_mode, derive_seed(seed, "noise"), self.device),
            )
        self.model.train()
        losses, examples = [], 0
        with torch.random.fork_rng():
            torch.manual_seed(derive_seed(seed, "dropout"))
            for _ in range(steps):
                if noise is not None:
                    indices = poisson_batch(len(data), noise.sample_rate, batch_generator)
                else:
                    indices = uniform_batch(len(data), self.cfg.batch_size, batch_generator)
                optimizer.zero_grad(set_to_none=True)
                if len(indices) == 0:
                    self._empty_batch()
                else:
                    losses.append(self._batch_gradient(data, indices, loss, optimizer if noise is not None else None))
                    examples += len(indices)
                    if noise is None and self.cfg.clip_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_grad_norm)
                optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        upload = {name: p.detach().clone() for name, p in zip(self.names, self.params)}
        mean_loss = sum(losses) / len(losses) if losses else float("nan")
        return LocalResult(upload, mean_loss, steps, examples)

    def _batch_gradient(self, data: TokenizedDataset, indices, loss_fn, dp_optimizer: DPOptimizer | None) -> float:
        """Leave the gradient of the batch's mean ``loss_fn`` ready for ``optimizer.step()``; return that loss.

        The batch runs as length-sorted chunks (``federation.microbatch_size``), each padded only
        to its own longest example. Without DP the chunk losses are weighted by their share of the
        batch, so the gradients add up to the batch-mean gradient. Under DP every chunk's
        per-sample gradients are clipped into Opacus's running sum (a skipped step, as in Opacus's
        ``BatchMemoryManager``); the last chunk is left for the caller's step, which clips it, adds
        the noise ``σ·C`` once and divides by the expected batch size. The batch is still the one
        Poisson draw: chunking changes the padding, not which examples are in the step.
        """
        chunks = data.length_sorted_chunks(indices, self.cfg.microbatch_size)
        total_loss = 0.0
        for position, chunk in enumerate(chunks):
            loss = loss_fn(self.forward_model, data.batch(chunk, self.device), self.precision)
            if dp_optimizer is None:
                (loss * (len(chunk) / len(indices))).backward()
            else:
                loss.backward()
                grad_samples_to_float32(self.params)
                if position < len(chunks) - 1:
                    dp_optimizer.signal_skip_step(do_skip=True)
                    dp_optimizer.step()
                    dp_optimizer.zero_grad(set_to_none=True)
            total_loss += loss.item() * len(chunk)
        return total_loss / len(indices)

    def _empty_batch(self) -> None:
        """A Poisson draw can be empty: the DP step then adds noise to a zero gradient."""
        for p in self.params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
