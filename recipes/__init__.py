"""Builtin recipes (YAML files), installed as the package data fedlora_cli.recipes."""
