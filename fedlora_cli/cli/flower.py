"""Run a recipe on Flower's deployment engine: a SuperLink and one SuperNode per client.

`fedlora flower run RECIPE --superlink HOST:PORT` submits the recipe to a running SuperLink
(see docs/flower.md for starting one and its SuperNodes); `fedlora flower local RECIPE` starts
a SuperLink and one SuperNode per client on this machine first, and stops them afterwards.
"""

from __future__ import annotations

import collections
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer

from fedlora_cli.cli.common import EXIT_BUDGET, command_help, err_console, guarded, wants_json
from fedlora_cli.cli.train import _split_recipe_and_overrides
from fedlora_cli.errors import InputError, RunError
from fedlora_cli.flower import require_flwr
from fedlora_cli.recipe import dump_recipe
from fedlora_cli.report.console import JsonLinesReporter, LiveTableReporter
from fedlora_cli.report.stream import parse_event, replay
from fedlora_cli.validate import check_recipe

app = typer.Typer(help=command_help(__doc__), no_args_is_help=True, add_completion=False)

RECIPE_ARG = typer.Argument(None, help="recipe file or builtin name (default: default)")
OVERRIDES_ARG = typer.Argument(None, help="key.sub=value overrides, e.g. federation.rounds=3")
OUT_OPT = typer.Option(None, "--out", help="run directory, on the machine that runs the ServerApp (default: under output.dir)")
TIMEOUT_OPT = typer.Option(
    None, "--round-timeout", help="seconds a round waits for its clients (default: until each answers or is reported gone)"
)
NODE_WAIT_OPT = typer.Option(120.0, "--node-wait", help="seconds to wait at start for one SuperNode per client")
JSON_OPT = typer.Option(False, "--json", help="one JSON object per round on stdout")
QUIET_OPT = typer.Option(False, "--quiet", "-q", help="no live table, only the final lines")
VERBOSE_OPT = typer.Option(False, "--verbose", "-v", help="also show Flower's log lines (stderr)")
RESUME_OPT = typer.Option(
    None, "--resume", help="continue the Flower run in this run directory (on the ServerApp's machine) from its checkpoint"
)


@app.command("run")
@guarded
def run(
    recipe: Optional[str] = RECIPE_ARG,
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    superlink: str = typer.Option(..., "--superlink", help="the SuperLink's HOST:PORT"),
    insecure: bool = typer.Option(False, "--insecure", help="no TLS (only on a trusted network, e.g. loopback)"),
    root_certificates: Optional[Path] = typer.Option(None, "--root-certificates", help="CA certificate (PEM) of the SuperLink's TLS"),
    out: Optional[Path] = OUT_OPT,
    round_timeout: Optional[float] = TIMEOUT_OPT,
    node_wait: float = NODE_WAIT_OPT,
    json_output: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
    verbose: bool = VERBOSE_OPT,
    resume: Optional[Path] = RESUME_OPT,
) -> None:
    """Submit a recipe to a running SuperLink and follow it until it ends."""
    if not insecure and root_certificates is None:
        raise InputError("--superlink needs TLS: pass --root-certificates CA.pem, or --insecure on a trusted network")
    _submit(recipe, overrides, superlink, insecure, root_certificates, out, round_timeout, node_wait, json_output, quiet, verbose, resume)


@app.command("local")
@guarded
def local(
    recipe: Optional[str] = RECIPE_ARG,
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    nodes: Optional[int] = typer.Option(None, "--nodes", help="SuperNodes to start (must equal federation.clients)"),
    out: Optional[Path] = OUT_OPT,
    round_timeout: Optional[float] = TIMEOUT_OPT,
    node_wait: float = NODE_WAIT_OPT,
    json_output: bool = JSON_OPT,
    quiet: bool = QUIET_OPT,
    verbose: bool = VERBOSE_OPT,
    resume: Optional[Path] = RESUME_OPT,
) -> None:
    """Start a SuperLink and one SuperNode per client on loopback, run the recipe, stop them."""
    from fedlora_cli.federation.run_dir import RunDir
    from fedlora_cli.flower.launch import LocalFederation

    require_flwr()
    recipe, overrides = _split_recipe_and_overrides(recipe, list(overrides or []))
    if resume is not None:
        clients = check_recipe(str(RunDir.existing(resume).recipe_path)).recipe.federation.clients
    else:
        clients = check_recipe(recipe, overrides).recipe.federation.clients
    if nodes is not None and nodes != clients:
        raise InputError(f"--nodes {nodes}: each SuperNode holds one client, and the recipe has federation.clients={clients}")
    with tempfile.TemporaryDirectory(prefix="fedlora-flower-") as work:
        federation = LocalFederation(Path(work), clients)
        try:
            federation.start()
            _submit(
                recipe, overrides, federation.address, True, None, out, round_timeout, node_wait, json_output, quiet, verbose, resume
            )
        finally:
            federation.stop()


def _submit(
    recipe, overrides, address, insecure, root_certificates, out, round_timeout, node_wait, json_output, quiet, verbose, resume
) -> None:
    """Submit the run, replay the ServerApp's events into a reporter, map the outcome to an exit code.

    The recipe is validated here first (bad input fails before anything is sent). With
    ``resume`` the ServerApp reads the recipe from the run directory's ``recipe.yaml`` instead.
    """
    from fedlora_cli.flower.launch import prepare_submission

    require_flwr()
    recipe, overrides = _split_recipe_and_overrides(recipe, list(overrides or []))
    if resume is not None:
        if recipe is not None or overrides or out is not None:
            raise InputError("--resume takes the recipe from the run directory; drop the recipe, overrides and --out")
        recipe_text, run_dir = "", Path(resume)
    else:
        checked = check_recipe(recipe, overrides)
        recipe_text = dump_recipe(checked.recipe)
        name = f"{checked.recipe.name}-{checked.recipe.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(out) if out is not None else Path(checked.recipe.output.dir) / name
    reporter = JsonLinesReporter() if wants_json(json_output) else LiveTableReporter(quiet=quiet)
    console = err_console()
    tail: collections.deque[str] = collections.deque(maxlen=60)
    summary, error = None, None
    with tempfile.TemporaryDirectory(prefix="fedlora-submit-") as work:
        command, env = prepare_submission(
            Path(work),
            address,
            insecure=insecure,
            root_certificates=str(root_certificates) if root_certificates else None,
            recipe_text=recipe_text,
            run_dir=str(run_dir.resolve()),
            resume=resume is not None,
            round_timeout=round_timeout,
            node_wait=node_wait,
        )
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        try:
            for line in process.stdout:
                event = parse_event(line)
                if event is None:
                    tail.append(line.rstrip("\n"))
                    if verbose:
                        console.print(line.rstrip("\n"), markup=False, highlight=False)
                    continue
                if event["type"] == "summary":
                    summary = event
                if event["type"] == "error":
                    error = event
                    continue
                replay(event, reporter)
            process.wait()
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait()
            reporter.stop()
    if error is not None:
        if error["kind"] == "input":
            raise InputError(error["problems"], source=error.get("source"))
        raise RunError("; ".join(error["problems"]))
    if summary is None:
        if not verbose:
            for line in tail:
                console.print(line, markup=False, highlight=False)
        raise RunError(f"the Flower run ended without a summary (flwr exit code {process.returncode}); Flower's log is above")
    if summary.get("stopped"):
        raise typer.Exit(EXIT_BUDGET)
