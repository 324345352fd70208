"""fedlora's Flower ServerApp: the whole round loop of a recipe, on the server side of Flower.

Run config (``[tool.flwr.app.config]`` of the generated app, set by ``fedlora flower run``):

- ``recipe``: the fully resolved recipe (YAML text), validated again here;
- ``run-dir``: where this ServerApp writes the run directory (a path on the machine that runs
  the ServerApp: with ``--isolation subprocess`` the SuperLink's);
- ``resume``: continue the run in ``run-dir`` from its checkpoint instead of starting one;
- ``round-timeout``: seconds a round waits for replies (0: until every node answered or is
  reported unavailable, see :mod:`.runner`);
- ``node-wait``: seconds to wait at start for one SuperNode per client.

The app waits until ``federation.clients`` SuperNodes are connected, asks each for its
``partition-id`` (a *query* message), and then runs the ordinary
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

import time

from flwr.app import Context, Message, MessageType, RecordDict
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


def discover_clients(grid: Grid, clients: int, node_wait: float) -> dict[int, int]:
    """fedlora client index -> Flower node id, once one SuperNode per client is connected.

    Raises InputError when the nodes do not come in ``node_wait`` seconds or their
    ``partition-id`` values are not exactly ``0 .. clients-1``.
    """
    from fedlora_cli.errors import InputError

    deadline = time.monotonic() + node_wait
    nodes = list(grid.get_node_ids())
    while len(nodes) < clients and time.monotonic() < deadline:
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    if len(nodes) < clients:
        raise InputError(
            f"only {len(nodes)} SuperNode(s) connected within {node_wait:.0f} s; the recipe has "
            f"federation.clients={clients}: start one SuperNode per client (partition-id=0..{clients - 1})"
        )
    queries = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
    replies = list(grid.send_and_receive(queries, timeout=max(30.0, deadline - time.monotonic())))
    node_of_client: dict[int, int] = {}
    problems = []
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            problems.append(f"SuperNode {node}: {reply.error.reason}")
            continue
        info = reply.content["node"]
        partition = int(info["partition-id"])
        num = info.get("num-partitions")
        if num is not None and int(num) != clients:
            problems.append(f"SuperNode {node}: num-partitions={num}, but federation.clients={clients}")
        elif not 0 <= partition < clients:
            problems.append(f"SuperNode {node}: partition-id={partition} is outside 0..{clients - 1}")
        elif partition in node_of_client:
            problems.append(f"SuperNodes {node_of_client[partition]} and {node} both have partition-id={partition}")
        else:
            node_of_client[partition] = node
    missing = sorted(set(range(clients)) - set(node_of_client))
    if missing and not problems:
        problems.append(f"no SuperNode answered for partition-id {', '.join(map(str, missing))}")
    if problems:
        raise InputError(problems)
    return node_of_client
