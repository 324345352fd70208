"""fedlora's Flower ClientApp: one SuperNode = one fedlora client (its partition of the data).

A SuperNode is started with ``--node-config "partition-id=K num-partitions=N"``; K is the
fedlora client index (0-based) and N must equal the recipe's ``federation.clients``. On every
*train* message the app:

1. reads the resolved recipe, the round's seed and DP-SGD setting and the global tensors from
   the message (:mod:`.wire`);
2. validates the recipe and splits the data with the recipe's own partitioner
   (:func:`~fedlora_cli.validate.check_recipe`) and keeps client K's part: the same indices the
   in-process engine gives client K, so ``data.source`` must be readable on this machine;
3. builds the model exactly as the server does (:func:`~fedlora_cli.federation.experiment.build_experiment`,
   seeded), copies in the global adapter (and, for FedEx/FLoRA, the server's base weights);
4. trains with :class:`~fedlora_cli.federation.client.LocalTrainer` (Opacus DP-SGD when the
   server sent a noise setting) and replies with the trained tensors, mean loss and steps.

Flower starts a fresh ``flwr-clientapp`` process per message (``--isolation subprocess``), so
nothing is cached between rounds: each round pays for loading the model and tokenizing the
partition. A *query* message answers the node's partition id without importing torch, so the
server's start-up handshake is cheap. Heavy imports happen inside the handlers for that reason.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _partition(context: Context) -> tuple[int, int | None]:
    from fedlora_cli.errors import InputError

    node_config = context.node_config
    if "partition-id" not in node_config:
        raise InputError('this SuperNode has no partition id; start it with --node-config "partition-id=K num-partitions=N"')
    num = node_config.get("num-partitions")
    return int(node_config["partition-id"]), (int(num) if num is not None else None)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The server's handshake: which fedlora client this node is."""
    partition_id, num_partitions = _partition(context)
    info = {"partition-id": partition_id}
    if num_partitions is not None:
        info["num-partitions"] = num_partitions
    return Message(RecordDict({"node": ConfigRecord(info)}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train this node's client for one round from the global adapter in ``msg``."""
    partition_id, num_partitions = _partition(context)
    return Message(train_on_partition(msg.content, partition_id, num_partitions), reply_to=msg)


def train_on_partition(content: RecordDict, partition_id: int, num_partitions: int | None) -> RecordDict:
    """The reply content for one train message, for the node holding client ``partition_id``."""
    import tempfile
    from pathlib import Path

    from fedlora_cli.errors import InputError
    from fedlora_cli.federation.client import LocalTrainer
    from fedlora_cli.federation.experiment import build_experiment
    from fedlora_cli.flower import wire
    from fedlora_cli.methods.base import restore_base_weights
    from fedlora_cli.models import load_adapter_state
    from fedlora_cli.validate import check_recipe

    config, global_state, base = wire.read_train_request(content)
    if int(config["client"]) != partition_id:
        raise InputError(f"the server addressed client {config['client']} to the node holding partition {partition_id}")
    with tempfile.TemporaryDirectory(prefix="fedlora-node-") as tmp:
        recipe_path = Path(tmp) / "recipe.yaml"
        recipe_path.write_text(str(config["recipe"]), encoding="utf-8")
        checked = check_recipe(str(recipe_path))
    fed = checked.recipe.federation
    if num_partitions is not None and num_partitions != fed.clients:
        raise InputError(f"node config num-partitions={num_partitions} but the recipe has federation.clients={fed.clients}")
    if not 0 <= partition_id < fed.clients:
        raise InputError(f"node config partition-id={partition_id} is outside 0..{fed.clients - 1} (federation.clients)")
    experiment = build_experiment(checked.recipe, checked.train, checked.test, [checked.client_indices[partition_id]])
    load_adapter_state(experiment.model, global_state)
    if base is not None:
        restore_base_weights(experiment.method.modules, base, "the server's train message")
    noise = wire.noise_of(config)
    trainer = LocalTrainer(experiment.model, fed, private=noise is not None)
    result = trainer.train(
        experiment.client_data[0],
        int(config["local-steps"]),
        int(config["seed"]),
        noise,
        wire.logit_offset_of(config),
        wire.lora_lr_scale_of(config),
    )
    return wire.train_reply(partition_id, result)
