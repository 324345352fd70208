"""FFA-LoRA (Sun et al., "Improving LoRA in Privacy-preserving Federated Learning", ICLR 2024).

A stays at its random initialization forever; clients train only B and the server averages it:
``B = Σ p_k B_k``. Exact, since ``Σ p_k B_k A = (Σ p_k B_k) A``. Only B travels (clients build
the same A from the shared seed).
"""

from typing import Literal

from fedlora_cli.methods.base import Method
from fedlora_cli.methods.registry import MethodOptions, register


class FFAOptions(MethodOptions):
    name: Literal["ffa"] = "ffa"


@register(FFAOptions)
class FFA(Method):
    trains_a = False
