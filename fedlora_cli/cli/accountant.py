"""Plan privacy budgets: epsilon for a noise multiplier, the noise multiplier for an epsilon, or a recipe's spend.

Examples: `fedlora accountant --noise-multiplier 1.1 --sample-rate 0.01 --steps 1000 --delta 1e-5`,
`fedlora accountant --target-epsilon 3 --sample-rate 0.01 --steps 1000 --accountant all`,
`fedlora accountant --recipe default federation.rounds=20 --json`.
"""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from fedlora_cli.cli.common import err_console, guarded, wants_json
from fedlora_cli.errors import InputError
from fedlora_cli.privacy.accountants.base import ACCOUNTANTS, DEFAULT_ACCOUNTANT
from fedlora_cli.privacy.limits import weak_epsilon_warning
from fedlora_cli.report.console import _json_ready
from fedlora_cli.validate import check_recipe

DEFAULT_DELTA = 1e-5


def _flag_problems(recipe, overrides, noise_multiplier, target_epsilon, sample_rate, steps, delta) -> list[str]:
    """Flags that do not fit together (all of them at once)."""
    problems = []
    if recipe is not None:
        given = [
            flag
            for flag, value in (
                ("--noise-multiplier", noise_multiplier),
                ("--target-epsilon", target_epsilon),
                ("--sample-rate", sample_rate),
                ("--steps", steps),
                ("--delta", delta),
            )
            if value is not None
        ]
        if given:
            problems.append(
                f"{', '.join(given)} cannot be combined with --recipe: the recipe sets them; "
                "use overrides instead, e.g. privacy.target_epsilon=3 privacy.delta=1e-6 federation.rounds=20"
            )
        return problems
    if overrides:
        problems.append(f"overrides ({' '.join(overrides)}) need --recipe")
    if (noise_multiplier is None) == (target_epsilon is None):
        problems.append("give exactly one of --noise-multiplier (prints epsilon) and --target-epsilon (prints the noise multiplier)")
    if sample_rate is None:
        problems.append("--sample-rate is required (or use --recipe)")
    if steps is None:
        problems.append("--steps is required (or use --recipe)")
    return problems


@guarded
def accountant(
    overrides: Optional[list[str]] = typer.Argument(None, help="key.sub=value overrides for --recipe, e.g. federation.rounds=20"),
    noise_multiplier: Optional[float] = typer.Option(None, "--noise-multiplier", "-s", help="noise multiplier σ: print epsilon"),
    target_epsilon: Optional[float] = typer.Option(None, "--target-epsilon", "-e", help="target epsilon: print the σ that reaches it"),
    sample_rate: Optional[float] = typer.Option(None, "--sample-rate", "-q", help="Poisson sampling rate q per step"),
    steps: Optional[int] = typer.Option(None, "--steps", "-t", help="number of steps T"),
    delta: Optional[float] = typer.Option(None, "--delta", "-d", help=f"delta (default {DEFAULT_DELTA})"),
    accountant_name: Optional[str] = typer.Option(
        None, "--accountant", "-a", help=", ".join(f"{name}{'' if cls.calibrates else ' (epsilon only)'}" for name, cls in ACCOUNTANTS.items())
        + f" or all (side by side); default {DEFAULT_ACCOUNTANT}, or the recipe's"
    ),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="plan this recipe (file or builtin name)"),
    json_output: bool = typer.Option(False, "--json", help="one JSON document on stdout"),
) -> None:
    # torch, transformers and opacus load when the command runs, so `fedlora --help` is fast
    from fedlora_cli.privacy.accountants import CALIBRATION_ACCOUNTANTS
    from fedlora_cli.privacy.planning import accountant_list, direct_plan, recipe_plan

    overrides = list(overrides or [])
    problems = _flag_problems(recipe, overrides, noise_multiplier, target_epsilon, sample_rate, steps, delta)
    if problems:
        raise InputError(problems)
    if recipe is not None:
        if accountant_name is not None and accountant_name != "all":
            accountant_list(accountant_name)
            overrides.append(f"privacy.accountant={accountant_name}")
        checked = check_recipe(recipe, overrides)
        accountants = accountant_list(accountant_name or checked.recipe.privacy.accountant)
        sizes = [len(indices) for indices in checked.client_indices]
        doc = recipe_plan(checked.recipe, sizes, accountants)
        doc["recipe_file"] = str(checked.source)
        target, target_name = checked.recipe.privacy.target_epsilon, "privacy.target_epsilon"
    else:
        accountants = accountant_list(accountant_name or DEFAULT_ACCOUNTANT)
        if target_epsilon is not None and accountant_name == "all":
            accountants = list(CALIBRATION_ACCOUNTANTS)  # the others report epsilon but do not calibrate
        doc = direct_plan(
            noise_multiplier=noise_multiplier,
            target_epsilon=target_epsilon,
            sample_rate=sample_rate,
            steps=steps,
            delta=DEFAULT_DELTA if delta is None else delta,
            accountants=accountants,
        )
        target, target_name = target_epsilon, "--target-epsilon"
    warning = target is not None and weak_epsilon_warning(target, target_name)
    if warning:
        err_console().print(f"warning: {warning}", markup=False, soft_wrap=True)
    if wants_json(json_output):
        typer.echo(json.dumps(_json_ready(doc)))
    else:
        render(doc, Console(highlight=False))


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return "inf"
    return f"{value:.{digits}g}"


def render(doc: dict, console: Console) -> None:
    """The human-readable form of an accountant document."""
    if doc["mode"] == "recipe":
        _render_recipe(doc, console)
        return
    where = f"sample rate {_num(doc['sample_rate'])}, {doc['steps']} steps, delta {doc['delta']:g}"
    results = doc["results"]
    if doc["mode"] == "epsilon":
        if len(results) == 1:
            console.print(
                f"epsilon {_num(results[0]['epsilon'])} ({results[0]['accountant']}; noise multiplier "
                f"{_num(doc['noise_multiplier'])}, {where})",
                markup=False,
            )
        else:
            table = Table(title=f"epsilon for noise multiplier {_num(doc['noise_multiplier'])}, {where}", title_justify="left")
            table.add_column("accountant")
            table.add_column("epsilon", justify="right")
            table.add_column("note")
            for row in results:
                table.add_row(row["accountant"], _num(row["epsilon"]), doc["notes"][row["accountant"]])
            console.print(table)
    else:
        if len(results) == 1:
            row = results[0]
            console.print(
                f"noise multiplier {_num(row['noise_multiplier'], 6)} ({row['accountant']}; reaches epsilon "
                f"{_num(row['epsilon'])} <= target {doc['target_epsilon']:g}, {where})",
                markup=False,
            )
        else:
            table = Table(title=f"noise multiplier for epsilon {doc['target_epsilon']:g}, {where}", title_justify="left")
            for column in ("accountant", "noise multiplier", "epsilon reached", "note"):
                table.add_column(column, justify="left" if column in ("accountant", "note") else "right")
            for row in results:
                table.add_row(row["accountant"], _num(row["noise_multiplier"], 6), _num(row["epsilon"]), doc["notes"][row["accountant"]])
            console.print(table)
    for name in doc["accountants"]:
        if not ACCOUNTANTS[name].calibrates:
            console.print(f"note: {name}: {ACCOUNTANTS[name].note}", markup=False, style="dim")


def _render_recipe(doc: dict, console: Console) -> None:
    accountants = doc["accountants"]
    level = doc["privacy_level"]
    head = (
        f"recipe {doc['recipe']} ({doc['recipe_file']}): privacy.level={level}, delta {doc['delta']:g}, "
        f"{doc['rounds']} rounds, noise calibrated with {doc['calibrated_with']}"
    )
    console.print(head, markup=False)
    console.print(f"epsilon is {doc['epsilon_scope']}", markup=False)
    if level == "client":
        line = (
            f"client sample rate q = {_num(doc['client_sample_rate'])}, noise multiplier {_num(doc['noise_multiplier'])}"
        )
        if doc["adaptive_clipping"]:
            line += (
                f" (update noise {_num(doc['update_noise_multiplier'])}, clipped-count std {_num(doc['clipped_count_stddev'])},"
                f" adaptive clip from {_num(doc['client_clip'])})"
            )
        else:
            line += f", clip {_num(doc['client_clip'])}"
        console.print(line, markup=False)
    else:
        clients = Table(title="clients", title_justify="left")
        for column in ("client", "examples", "sample rate", "noise multiplier", "planned steps"):
            clients.add_column(column, justify="right")
        for name in accountants:
            clients.add_column(f"epsilon ({name})", justify="right")
        for row in doc["clients"]:
            clients.add_row(
                str(row["client"]),
                str(row["examples"]),
                _num(row["sample_rate"]),
                _num(row["noise_multiplier"]),
                str(row["planned_steps"]),
                *(_num(row["epsilon"][name]) for name in accountants),
            )
        console.print(clients)
        if doc["prior_epsilon"]:
            console.print(
                f"every epsilon includes {_num(doc['prior_epsilon'])} spent once on the noised label counts "
                "(federation.logit_adjustment; privacy.prior_epsilon)",
                markup=False,
            )
    rounds = Table(title="epsilon after each round", title_justify="left")
    rounds.add_column("round", justify="right")
    rounds.add_column("steps", justify="right")
    for name in accountants:
        rounds.add_column(f"epsilon ({name})", justify="right")
    for row in doc["per_round"]:
        rounds.add_row(str(row["round"]), str(row["steps"]), *(_num(row["epsilon"][name]) for name in accountants))
    console.print(rounds)
    console.print(f"note: {doc['note']}", markup=False, style="dim")
    if doc["max_epsilon"] is not None:
        stop = doc["stops_before_round"]
        when = f"before round {stop}" if stop else "never (all rounds fit)"
        if stop and level == "sample":
            when += " at the latest (if its worst client took part in every round)"
        console.print(f"privacy.max_epsilon={doc['max_epsilon']}: a run stops {when}", markup=False)
