"""Shared fixtures: a tiny BERT built from a config (fast unit tests), small real data files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def load_benchmark(name: str):
    """A script of benchmarks/ imported as a module (they are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer BERT (hidden 32, intermediate 48) with the real MiniLM tokenizer, saved locally."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from fedlora_cli.models import resolve_model_path

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def tiny_csv(tmp_path) -> Path:
    """A small 3-label CSV (real SST-2-like sentences are not needed for plumbing tests)."""
    words = {
        "sports": ["match", "goal", "team", "league", "coach", "season"],
        "tech": ["software", "chip", "internet", "phone", "computer", "data"],
        "politics": ["election", "minister", "vote", "party", "law", "government"],
    }
    lines = ["text,label"]
    for i in range(60):
        for label, vocab in words.items():
            lines.append(f"the {vocab[i % 6]} and the {vocab[(i + 2) % 6]} story number {i},{label}")
    path = tmp_path / "tiny.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tiny_recipe(tmp_path, tiny_model_dir, tiny_csv) -> Path:
    """A complete recipe on the tiny model and CSV: 4 clients, 2 per round, 2 rounds, DP on."""
    text = f"""
name: tiny
model: {{name: "{tiny_model_dir}", rank: 4, alpha: 8, target_modules: [query, value, intermediate.dense]}}
data: {{source: "{tiny_csv}", test_fraction: 0.2, max_length: 32}}
partition: {{method: dirichlet, alpha: 1.0, seed: 0, min_samples: 8}}
federation: {{clients: 4, clients_per_round: 2, rounds: 2, local_steps: 3, batch_size: 8, lr: 0.1, eval_every: 1}}
method: {{name: fedsvd}}
privacy: {{level: sample, target_epsilon: 8, delta: 1.0e-5, max_grad_norm: 1.0}}
output: {{dir: "{tmp_path / 'runs'}"}}
"""
    path = tmp_path / "tiny.yaml"
    path.write_text(text, encoding="utf-8")
    return path


#: a minimal chat template (SmolLM2-Instruct's has the same shape: turns, then the assistant header)
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def _tiny_decoder(path, config_for) -> str:
    """A tiny decoder (random weights, seed 0) with the MiniLM tokenizer, saved at ``path``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedlora_cli.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config_for(tokenizer)).save_pretrained(path)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    """A 2-layer Llama (hidden 32) whose tokenizer has a chat template."""
    from transformers import LlamaConfig

    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = _tiny_decoder(
        path,
        lambda tok: LlamaConfig(
            vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id,
        ),
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> str:
    """A 2-layer GPT-2 (Conv1D layers, hidden 32) whose tokenizer has no chat template."""
    from transformers import GPT2Config

    path = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = _tiny_decoder(
        path,
        lambda tok: GPT2Config(
            vocab_size=tok.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=256,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id,
        ),
    )
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def tiny_sft_jsonl(tmp_path) -> Path:
    """80 arithmetic questions with GSM8K-style answers (``#### n``)."""
    import json

    lines = []
    for i in range(80):
        a, b = i % 9 + 1, i % 7 + 2
        lines.append(json.dumps({"question": f"what is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}))
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
