"""The body of fedlora's ServerApp, kept apart from the Flower entry point (imports torch):
find the SuperNode of every client, then run the round loop with a :class:`~.runner.FlowerClients` runner."""

from __future__ import annotations

import time

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedlora_cli.errors import InputError
from fedlora_cli.federation.engine import FederatedRun
from fedlora_cli.federation.experiment import build_experiment
from fedlora_cli.federation.run_dir import RunDir
from fedlora_cli.flower.runner import FlowerClients
from fedlora_cli.validate import check_recipe


def serve(grid: Grid, reporter, *, recipe_text: str, run_dir: str, resume: bool, round_timeout: float | None, node_wait: float) -> dict:
    """Run (or resume) a recipe with the clients on Flower SuperNodes; returns the summary."""
    if not run_dir:
        raise InputError("run config run-dir is empty; submit the run with `fedlora flower run`")
    if resume:
        directory = RunDir.existing(run_dir)
    else:
        if not recipe_text.strip():
            raise InputError("run config recipe is empty; submit the run with `fedlora flower run`")
        directory = RunDir.at(run_dir)
        directory.write_recipe(recipe_text)
    recipe_text = directory.recipe_path.read_text(encoding="utf-8")
    checked = check_recipe(str(directory.recipe_path))
    experiment = build_experiment(checked.recipe, checked.train, checked.test, checked.client_indices)
    node_of_client = discover_clients(grid, checked.recipe.federation.clients, node_wait)
    clients = FlowerClients(grid, node_of_client, recipe_text, checked.recipe.federation.local_steps, round_timeout)
    run = FederatedRun(experiment, directory, reporter, clients=clients)
    if resume:
        run.resume()
    return run.run()


def discover_clients(grid: Grid, clients: int, node_wait: float) -> dict[int, int]:
    """fedlora client index -> Flower node id, once one SuperNode per client is connected.

    Raises InputError when the nodes do not come in ``node_wait`` seconds or their
    ``partition-id`` values are not exactly ``0 .. clients-1``.
    """
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
