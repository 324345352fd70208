"""How peft names the parameters of the adapter fedlora trains.

The aggregation methods read these names without importing :mod:`fedlora_cli.models` (which
imports the recipe schema that is built from the methods).
"""

ADAPTER_NAME = "default"  # peft's name of the one adapter fedlora trains


def is_head_parameter(name: str) -> bool:
    """The classifier head's trainable copy that peft keeps in ``modules_to_save``."""
    return "modules_to_save" in name
