"""DP-SGD with the clipping budget split between groups of parameters.

Opacus's ``DPOptimizer`` clips each example's whole gradient ``g_i`` to norm ``C`` and adds
``N(0, σ²C²)`` to the sum. Here the trainable tensors are split into groups (the optimizer's
parameter groups: LoRA factors, classifier head) and each example's gradient restricted to group
``g`` is clipped on its own to ``C_g``:

    ḡ_i,g = g_i,g · min(1, C_g / ‖g_i,g‖),        Σ_g C_g² = C²

One example then changes the summed gradient by at most ``‖(ḡ_i,g)_g‖ ≤ √(Σ_g C_g²) = C``, the
same L2 sensitivity as joint clipping, so the noise ``σ·C`` on every coordinate and the
accounting stay exactly as they are (the Gaussian mechanism only sees the sensitivity). This is
Opacus's per-layer clipping (``DPPerLayerOptimizer``, McMahan et al. 2018, "A General Approach to
Adding Differential Privacy to Iterative Training Procedures", §3) with groups of tensors
instead of single tensors.

Why fedlora splits it (docs/learning.md, round 5): once the head has grown, the gradient that
flows back into the LoRA factors of an example is about three times the head's own (it passes
through the head's weights; ``benchmarks/clip_budget.py``), and a joint clip then leaves the head
about 0.3·C on the examples it clips, while the noise on the head stays ``σ·C``. A fixed share
keeps the head's signal.
"""

from __future__ import annotations

import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed


def split_clip_norms(max_grad_norm: float, head_share: float) -> tuple[float, float]:
    """``(C_lora, C_head)`` with ``C_head = share·C`` and ``C_lora = √(1 − share²)·C``: ``C_lora² + C_head² = C²``."""
    return max_grad_norm * (1.0 - head_share**2) ** 0.5, max_grad_norm * head_share


class GroupClippingDPOptimizer(DPOptimizer):
    """A ``DPOptimizer`` that clips each parameter group of ``optimizer`` to its own norm.

    ``group_norms[j]`` is ``C_j`` for ``optimizer.param_groups[j]``; the noise is
    ``σ·√(Σ_j C_j²)``, Opacus's ``max_grad_norm``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, group_norms: list[float], **kwargs):
        if len(group_norms) != len(optimizer.param_groups):
            raise ValueError(f"{len(group_norms)} clipping norms for {len(optimizer.param_groups)} parameter groups")
        if min(group_norms) <= 0:
            raise ValueError(f"clipping norms must be positive, got {group_norms}")
        total = float(torch.tensor(group_norms, dtype=torch.float64).norm())
        super().__init__(optimizer, max_grad_norm=total, **kwargs)
        self.param_group_index = [j for j, group in enumerate(optimizer.param_groups) for _ in group["params"]]
        self.group_norms = list(group_norms)

    def clip_and_accumulate(self) -> None:
        """Clip every example's gradient group by group into ``p.summed_grad``."""
        grad_samples = self.grad_samples
        batch = len(grad_samples[0])
        squared = torch.zeros((len(self.group_norms), batch), dtype=torch.float32, device=grad_samples[0].device)
        for g, j in zip(grad_samples, self.param_group_index):
            squared[j] += g.reshape(batch, -1).float().pow(2).sum(dim=1).to(squared.device)
        norms = torch.tensor(self.group_norms, dtype=torch.float32, device=squared.device)[:, None]
        factors = (norms / (squared.sqrt() + 1e-6)).clamp(max=1.0)  # (groups, batch), as Opacus's 1e-6
        for p, j in zip(self.params, self.param_group_index):
            _check_processed_flag(p.grad_sample)
            grad_sample = self._get_flat_grad_sample(p).to(p.dtype)
            grad = torch.einsum("i,i...", factors[j].to(grad_sample.device, p.dtype), grad_sample)
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
            _mark_as_processed(p.grad_sample)
