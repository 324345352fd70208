"""The ``fedlora`` command: thin Typer commands over the library."""

from __future__ import annotations

import os
import warnings

import typer

from fedlora_cli.cli import accountant, recipes, sweep, train
from fedlora_cli.cli.common import command_help
from fedlora_cli.cli import compare, eval as eval_cli, partition

app = typer.Typer(
    name="fedlora",
    help=command_help("Private federated fine-tuning with LoRA, from YAML recipes."),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("train", help=command_help(train.__doc__))(train.train)
app.command("accountant", help=command_help(accountant.__doc__))(accountant.accountant)
app.command("sweep", help=command_help(sweep.__doc__))(sweep.sweep)
app.command("partition", help=command_help(partition.__doc__))(partition.partition)
app.command("eval", help=command_help(eval_cli.__doc__))(eval_cli.eval_command)
app.command("compare", help=command_help(compare.__doc__))(compare.compare)
app.add_typer(recipes.app, name="recipes")
app.add_typer(__import__("fedlora_cli.cli.flower", fromlist=["app"]).app, name="flower")


def _silence_library_noise() -> None:
    """Third-party warnings that say nothing actionable to a fedlora user."""
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    warnings.filterwarnings("ignore", category=FutureWarning)
    # transformers reads this when it loads (importing it here would cost seconds on every command)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main() -> None:
    _silence_library_noise()
    app()
