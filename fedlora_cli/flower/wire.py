"""What fedlora's ServerApp and ClientApp put into Flower messages, and how they read it back.

A *train* message (server → SuperNode) holds, in one ``RecordDict``:

- ``"global"``: an ``ArrayRecord`` with every adapter tensor of the global model (LoRA factors
  and the head copy), by parameter name. The whole adapter is sent, not only the method's
  ``broadcast_keys``: a client rebuilds the model from the recipe and must start from exactly
  the server's state (FLoRA, for one, restarts A from a seed the client does not replay).
- ``"base"``: for methods that change the frozen weights (``modifies_base``: FedEx, FLoRA) the
  current base weight of every LoRA module, by module name.
- ``"task"``: a ``ConfigRecord`` with the resolved recipe (YAML text), the round, the client
  index, its seed, the local steps and, under sample-level DP, its Poisson rate, noise
  multiplier, clipping norm and secure_mode; with logit adjustment the ``τ·log π`` the client
  trains with (the server process computes the noised label counts from the recipe's partition,
  as it does the client sizes; each client's noise is its own draw, as a node would add it).

A *train* reply (SuperNode → server) holds ``"upload"`` (the trained tensors, by parameter
name) and ``"result"`` (a ``MetricRecord``: client, mean loss, steps, examples).

The start-up *query* reply (``"node"``: partition-id, num-partitions) is built in
:func:`.client_app.query` and read in :func:`.server_app.discover_clients`, not here: this module
imports torch, which the query handler avoids.

Tensors travel as raw little-endian element storage (Flower's ``Array`` of a numpy view of the
tensor), so float32 values arrive bit-identical. The ``bytes_down`` metric keeps reporting
:meth:`~fedlora_cli.methods.base.Method.download_bytes` (what the method's protocol needs), which
can be less than what this message carries.
"""

from __future__ import annotations

import math

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedlora_cli.federation.client import ClientNoise, LocalResult
from fedlora_cli.federation.clients import ClientTask

GLOBAL, BASE, TASK, UPLOAD, RESULT = "global", "base", "task", "upload", "result"


def train_request(
    recipe_text: str,
    round_index: int,
    local_steps: int,
    task: ClientTask,
    global_arrays: ArrayRecord,
    base_arrays: ArrayRecord | None,
) -> RecordDict:
    """The content of one client's train message (the array records are shared between clients)."""
    config = {
        "recipe": recipe_text,
        "round": round_index,
        "client": task.client,
        "seed": str(task.seed),  # 63-bit: a string keeps every bit whatever the transport
        "local-steps": local_steps,
        "private": task.noise is not None,
    }
    if task.noise is not None:
        config.update(
            {
                "sample-rate": task.noise.sample_rate,
                "noise-multiplier": task.noise.noise_multiplier,
                "max-grad-norm": task.noise.max_grad_norm,
                "secure-mode": task.noise.secure_mode,
            }
        )
        if task.noise.head_clip_share is not None:
            config["head-clip-share"] = task.noise.head_clip_share
    if task.lora_lr_scale != 1.0:
        config["lora-lr-scale"] = task.lora_lr_scale
    if task.logit_offset is not None:
        config["logit-offset"] = [float(v) for v in task.logit_offset]
    records = {GLOBAL: global_arrays, TASK: ConfigRecord(config)}
    if base_arrays is not None:
        records[BASE] = base_arrays
    return RecordDict(records)


def tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """An ``ArrayRecord`` as a name → tensor dict (copies, independent of the message)."""
    return {name: tensor.clone() for name, tensor in record.to_torch_state_dict().items()}


def read_train_request(content: RecordDict) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(task config, global adapter tensors, base weights or None) from a train message."""
    config = dict(content[TASK])
    base = tensors(content[BASE]) if BASE in content else None
    return config, tensors(content[GLOBAL]), base


def noise_of(config: dict) -> ClientNoise | None:
    if not config["private"]:
        return None
    return ClientNoise(
        float(config["sample-rate"]),
        float(config["noise-multiplier"]),
        float(config["max-grad-norm"]),
        bool(config["secure-mode"]),
        float(config["head-clip-share"]) if "head-clip-share" in config else None,
    )


def logit_offset_of(config: dict) -> tuple[float, ...] | None:
    """The task's ``τ·log π`` (logit-adjusted training), or None for plain cross-entropy."""
    return tuple(float(v) for v in config["logit-offset"]) if "logit-offset" in config else None


def lora_lr_scale_of(config: dict) -> float:
    """The round's factor on the LoRA factors' lr (``federation.lr_schedule``); 1 when absent."""
    return float(config.get("lora-lr-scale", 1.0))


def train_reply(client: int, result: LocalResult) -> RecordDict:
    loss = result.mean_loss
    return RecordDict(
        {
            UPLOAD: ArrayRecord({name: t.detach().contiguous() for name, t in result.upload.items()}),
            RESULT: MetricRecord(
                {
                    "client": client,
                    "mean-loss": loss if math.isfinite(loss) else float("nan"),
                    "steps": result.steps,
                    "examples": result.examples,
                }
            ),
        }
    )


def read_train_reply(content: RecordDict) -> tuple[int, LocalResult]:
    """(client index, its result) from a train reply."""
    info = content[RESULT]
    result = LocalResult(tensors(content[UPLOAD]), float(info["mean-loss"]), int(info["steps"]), int(info["examples"]))
    return int(info["client"]), result

