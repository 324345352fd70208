"""Run a fedlora recipe on Flower's deployment engine (SuperLink + SuperNodes over the network).

The same round loop as ``fedlora train`` (:class:`~fedlora_cli.federation.engine.FederatedRun`)
runs inside a Flower ``ServerApp`` (:mod:`.server_app`): client sampling, aggregation by the
recipe's method, privacy accounting, evaluation, checkpoints and the run directory stay on the
server. Only the step "train these sampled clients on the current global adapter" is different:
instead of :class:`~fedlora_cli.federation.clients.InProcessClients`, a
:class:`~.runner.FlowerClients` sends the global tensors to the SuperNodes holding the sampled
clients' data through Flower's ``Grid`` and collects their uploads. Each SuperNode runs the
``ClientApp`` (:mod:`.client_app`), which rebuilds its own partition from the recipe and trains
it with fedlora's :class:`~fedlora_cli.federation.client.LocalTrainer` (DP-SGD under
``privacy.level: sample``) with the seeds the in-process engine would use, so a run without DP
noise ends with the same adapter as ``fedlora train``.

``flwr`` is an optional dependency (``pip install 'fedlora[flower]'``); importing this package
does not import it. :mod:`.launch` starts local SuperLinks/SuperNodes and submits runs.
"""

from __future__ import annotations

import importlib.util

from fedlora_cli.errors import InputError

FLWR_REQUIREMENT = "flwr>=1.41,<1.43"


def require_flwr() -> None:
    """Raise InputError naming the install command when flwr is not installed."""
    if importlib.util.find_spec("flwr") is None:
        raise InputError(f"Flower is not installed; pip install 'fedlora[flower]' (or '{FLWR_REQUIREMENT}')")
