"""fedlora's Flower ServerApp: the whole round loop of a recipe, on the server side of Flower.

Run config (``[tool.flwr.app.config]`` of the generated app, set by ``fedlora flower run``):

- ``recipe``: the fully resolved recipe (YAML text), validated again here;
- ``run-dir``: where this ServerApp writes the run directory (a path on the machine that runs
  the ServerApp: with ``--isolation subprocess`` the SuperLink's);
- ``resume``: continue the run in ``run-dir`` from its checkpoint instead of starting one;
- ``round-timeout``: seconds a round waits for replies (0: until every node answered or is
  reported unavailable, see :mod:`.runner`);
- ``node-wait``: seconds to wait at start for one SuperNode per client.

The app (its body is :func:`.serve.serve`) waits until ``federation.clients`` SuperNodes are
connected, asks each for its ``partition-id`` (a *query* message), and then runs the ordinary
:class:`~fedlora_cli.federation.engine.FederatedRun` with a :class:`~.runner.FlowerClients`
runner: sampling, aggregation by the method, accounting, evaluation on the test split,
checkpoints, ``metrics.jsonl``, ``summary.json`` and the adapter are exactly those of ``fedlora
train``. Every reporter event (and a fedlora error that ends the run) is written as a JSON line
on stdout (:mod:`fedlora_cli.report.stream`): Flower's log stream carries it to ``fedlora flower
run``, which turns it back into the live table and the exit code.

The server builds the experiment from the same recipe, so it needs ``data.source`` too: it
evaluates on the test split and weights clients by their partition sizes.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from fedlora_cli.errors import FedloraError
    from fedlora_cli.flower.serve import serve
    from fedlora_cli.report.stream import EventStreamReporter

    config = context.run_config
    timeout = float(config.get("round-timeout", 0.0) or 0.0)
    reporter = EventStreamReporter()
    try:
        serve(
            grid,
            reporter,
            recipe_text=str(config.get("recipe", "")),
            run_dir=str(config.get("run-dir", "")),
            resume=bool(config.get("resume", False)),
            round_timeout=timeout if timeout > 0 else None,
            node_wait=float(config.get("node-wait", 120.0)),
        )
    except FedloraError as exc:
        reporter.error(exc)  # the submitting `fedlora flower` command raises it again there
        raise
