"""Every command's --help: paragraphs as single lines (the terminal wraps them), then the exit codes."""

from __future__ import annotations

from typer.main import get_command
from typer.testing import CliRunner

from fedlora_cli.cli import app
from fedlora_cli.cli.common import EXIT_CODES_HELP, command_help


def test_command_help_joins_each_paragraph_and_ends_with_the_exit_codes():
    doc = "First line of the summary,\n  continued.\n\nSecond paragraph\nin two lines.\n"
    assert command_help(doc) == f"First line of the summary, continued.\n\nSecond paragraph in two lines.\n\n{EXIT_CODES_HELP}"


def test_every_command_help_has_no_line_break_inside_a_paragraph():
    group = get_command(app)
    commands = {name: group.commands[name] for name in ("train", "accountant", "sweep", "partition", "eval", "compare", "flower")}
    for name, command in commands.items():
        paragraphs = command.help.split("\n\n")
        assert all("\n" not in paragraph for paragraph in paragraphs), name
        assert paragraphs[-1] == EXIT_CODES_HELP, name


def test_help_renders_without_error():
    result = CliRunner().invoke(app, ["eval", "--help"])
    assert result.exit_code == 0
    assert "majority-class baseline" in " ".join(result.output.split())
