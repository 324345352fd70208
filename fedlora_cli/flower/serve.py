"""The body of fedlora's ServerApp, kept apart from the Flower entry point (imports torch)."""

from __future__ import annotations

from flwr.serverapp import Grid

from fedlora_cli.errors import InputError
from fedlora_cli.federation.engine import FederatedRun
from fedlora_cli.federation.experiment import build_experiment
from fedlora_cli.federation.run_dir import RunDir
from fedlora_cli.flower.runner import FlowerClients
from fedlora_cli.flower.server_app import discover_clients
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
    clients = FlowerClients(grid, node_of_client, recipe_text, round_timeout)
    run = FederatedRun(experiment, directory, reporter, clients=clients)
    if resume:
        run.resume()
    return run.run()
