"""FedAvg-LoRA (FedIT; Zhang et al., "Towards Building the Federated GPT", ICASSP 2024).

Clients train A and B; the server averages each factor separately:
``A = Σ p_k A_k``, ``B = Σ p_k B_k``. Inexact: ``(Σ p_k B_k)(Σ p_k A_k) ≠ Σ p_k B_k A_k``.
"""

from typing import Literal

from fedlora_cli.methods.base import Method
from fedlora_cli.methods.registry import MethodOptions, register


class FedAvgOptions(MethodOptions):
    name: Literal["fedavg"] = "fedavg"


@register(FedAvgOptions)
class FedAvg(Method):
    """Clients train A and B; the server keeps the two means (the base class's default)."""
