"""The ``fedlora`` command: thin Typer commands over the library."""

from __future__ import annotations

import typer

from fedlora_cli.cli import recipes, train
from fedlora_cli.cli.common import EXIT_CODES_HELP

app = typer.Typer(
    name="fedlora",
    help=f"Private federated fine-tuning with LoRA, from YAML recipes.\n\n{EXIT_CODES_HELP}",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("train", help=train.__doc__ + "\n\n" + EXIT_CODES_HELP)(train.train)
app.add_typer(recipes.app, name="recipes")


def main() -> None:
    app()
