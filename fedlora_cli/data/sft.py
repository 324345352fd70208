"""Supervised fine-tuning data for ``task: causal_lm``: prompt -> response pairs.

Rows come from the same files as classification data (CSV/TSV, JSONL, a saved Hugging Face
dataset) and hold a prompt and a response column (``causal_lm.prompt_column`` and
``response_column``) or one chat column (``causal_lm.messages_column``: a list of
``{role, content}``, whose last message is the response). With ``causal_lm.choices`` (the same
options for every row) or ``causal_lm.choices_column`` (a list of options per row) every row is a
multiple-choice question: its response is one of its options (given as text or as its index).

One example is ``prompt tokens + response tokens + EOS``. The prompt is the tokenizer's chat
template of the user turn with the assistant header (``add_generation_prompt``) when the
tokenizer has a template, else the prompt text and a newline. The loss covers the response
tokens only: :class:`~fedlora_cli.data.batching.TokenizedDataset` labels every position before
``prompt_length`` and every padding position with -100. Sequences longer than
``data.max_length`` are cut at the end (the count is reported).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedlora_cli.data.batching import TokenizedDataset
from fedlora_cli.data.sources import _delimited_rows, _jsonl_rows, _load_from_disk, _read_text, _seeded_subset, HF_TEST_SPLITS
from fedlora_cli.errors import InputError
from fedlora_cli.recipe import CausalLMConfig, DataConfig

IGNORE_INDEX = -100  # label of a position the loss skips (prompt and padding)
EXAMPLES_LABEL = "examples"  # the one "label" of free-form SFT data (partition tables count examples)


@dataclass
class SFTDataset:
    """Prompts (a string, or the chat turns before the response) and their responses.

    ``labels`` are the index of the correct option for multiple choice, else 0 for every row
    (there are no classes to split clients by); ``label_names`` name them. ``options`` are each
    row's options (multiple choice), else None.
    """

    prompts: list[str | list[dict]]
    responses: list[str]
    labels: list[int]
    label_names: list[str]
    options: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.responses)

    def subset(self, indices) -> "SFTDataset":
        idx = [int(i) for i in indices]
        options = [self.options[i] for i in idx] if self.options is not None else None
        return SFTDataset(
            [self.prompts[i] for i in idx], [self.responses[i] for i in idx], [self.labels[i] for i in idx], self.label_names, options
        )


def _split(loaded, names: tuple[str, ...]):
    """The first of ``names`` in a saved DatasetDict (None if none); a saved Dataset is one split."""
    if not hasattr(loaded, "keys"):
        return loaded
    return next((loaded[name] for name in names if name in loaded), None)


def _rows(path: Path, cfg: DataConfig, test: bool) -> tuple[list[dict], str]:
    """Rows of a file or saved HF dataset as dicts (a DatasetDict: its train, or its test/validation split)."""
    if path.is_dir():
        wanted = HF_TEST_SPLITS if test else ("train",)
        loaded = _load_from_disk(path)
        split = _split(loaded, wanted)
        if split is None:
            raise InputError(f"{path}: a saved DatasetDict needs a '{wanted[0]}' split (it has {', '.join(loaded)})")
        return [dict(row) for row in split], str(path)
    suffix = path.suffix.lower()
    if suffix not in {".csv", ".tsv", ".jsonl"}:
        raise InputError(f"data file {path}: unsupported type '{suffix}'; use .csv, .tsv or .jsonl")
    text = _read_text(path)
    rows = _jsonl_rows(text, path)[0] if suffix == ".jsonl" else _delimited_rows(text, path, cfg.column_names, suffix == ".tsv")[0]
    if not rows:
        raise InputError(f"data file has no rows: {path}")
    return rows, str(path)


def _field(row: dict, name: str, key: str, where: str, number: int):
    value = row.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        available = ", ".join(sorted(row))
        raise InputError(f"{where}, row {number}: causal_lm.{key} column '{name}' is missing or empty (columns: {available})")
    return value


def _response(value, choices: list[str] | None, where: str, number: int) -> tuple[str, int]:
    """The response text, and the index of the option it is (0 without choices)."""
    text = str(value).strip()
    if choices is None:
        return str(value), 0
    if text in choices:
        return text, choices.index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(choices):
        return choices[int(text)], int(text)
    raise InputError(
        f"{where}, row {number}: response '{text[:40]}' is neither one of the row's options ({', '.join(choices)}) "
        f"nor an index 0..{len(choices) - 1}"
    )


def _row_options(row: dict, cfg: CausalLMConfig, where: str, number: int) -> list[str] | None:
    """The row's options: ``causal_lm.choices``, or its ``choices_column`` list (None: not multiple choice)."""
    if cfg.choices_column is None:
        return cfg.choices
    options = _field(row, cfg.choices_column, "choices_column", where, number)
    if not (isinstance(options, list) and len(options) >= 2 and all(isinstance(o, str) and o.strip() for o in options)):
        raise InputError(
            f"{where}, row {number}: causal_lm.choices_column '{cfg.choices_column}' must be a list of at least two "
            "non-empty option texts (a JSON list in a .jsonl file)"
        )
    return options


def _parse(rows: list[dict], where: str, cfg: CausalLMConfig) -> SFTDataset:
    prompts, responses, labels, options = [], [], [], []
    for number, row in enumerate(rows, start=1):
        choices = _row_options(row, cfg, where, number)
        if cfg.messages_column is not None:
            messages = _field(row, cfg.messages_column, "messages_column", where, number)
            if not (
                isinstance(messages, list)
                and len(messages) >= 2
                and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages)
                and messages[-1]["role"] == "assistant"
            ):
                raise InputError(
                    f"{where}, row {number}: causal_lm.messages_column '{cfg.messages_column}' must be a list of "
                    "{role, content} turns ending with the assistant's response"
                )
            prompt, (response, label) = messages[:-1], _response(messages[-1]["content"], choices, where, number)
        else:
            prompt = cfg.prompt_template.replace("{prompt}", str(_field(row, cfg.prompt_column, "prompt_column", where, number)))
            value = _field(row, cfg.response_column, "response_column", where, number)
            response, label = _response(value, choices, where, number)
        prompts.append(prompt)
        responses.append(response)
        labels.append(label)
        options.append(choices)
    names = list(cfg.choices) if cfg.choices else [EXAMPLES_LABEL]
    return SFTDataset(prompts, responses, labels, names, options if cfg.multiple_choice else None)


def load_sft_datasets(data: DataConfig, cfg: CausalLMConfig) -> tuple[SFTDataset, SFTDataset]:
    """The train and test sets (``data.test_path``, a DatasetDict's test split, or ``data.test_fraction``
    held out), each cut to its seeded ``max_*_samples`` subset as for classification."""
    source = Path(data.source)
    full = _parse(*_rows(source, data, test=False), cfg=cfg)
    source_test = None  # a saved DatasetDict's test (or validation) split
    if source.is_dir() and not data.test_path:
        loaded = _load_from_disk(source)
        source_test = _split(loaded, HF_TEST_SPLITS) if hasattr(loaded, "keys") else None
    if data.test_path:
        train, test = full, _parse(*_rows(Path(data.test_path), data, test=True), cfg=cfg)
    elif source_test is not None:
        train, test = full, _parse([dict(row) for row in source_test], f"{source} (test split)", cfg)
    else:
        order = np.random.default_rng(data.split_seed).permutation(len(full))
        n_test = max(1, int(round(data.test_fraction * len(full))))
        train, test = full.subset(sorted(order[n_test:].tolist())), full.subset(sorted(order[:n_test].tolist()))
    train = _seeded_subset(train, data.max_train_samples, data.split_seed)
    test = _seeded_subset(test, data.max_test_samples, data.split_seed + 1)
    return train, test


def load_sft_file(path: str | Path, data: DataConfig, cfg: CausalLMConfig) -> SFTDataset:
    """Another file (or saved HF dataset; its test split) with the recipe's columns (``fedlora eval --data``)."""
    return _parse(*_rows(Path(path), data, test=True), cfg=cfg)


def end_token_id(tokenizer) -> int | None:
    """The token that ends a response: EOS (SmolLM2-Instruct: ``<|im_end|>``), else SEP."""
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


def prompt_ids(tokenizer, prompt: str | list[dict]) -> list[int]:
    """The prompt's tokens up to where the response starts (the chat template's assistant header)."""
    if tokenizer.chat_template:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
    return tokenizer(text + "\n")["input_ids"]


def response_ids(tokenizer, response: str, end: bool = True) -> list[int]:
    """The response's tokens, followed by the end token when ``end``."""
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    stop = end_token_id(tokenizer)
    return ids + [stop] if end and stop is not None else ids


def tokenize_sft(dataset: SFTDataset, tokenizer, max_length: int) -> TokenizedDataset:
    """``prompt + response + EOS`` per example, cut to ``max_length``; ``prompt_lengths`` mark where
    the loss starts. ``truncated`` counts the examples cut, ``no_target`` those left without a response token."""
    sequences, starts, truncated, no_target = [], [], 0, 0
    for prompt, response in zip(dataset.prompts, dataset.responses):
        head = prompt_ids(tokenizer, prompt)
        ids = head + response_ids(tokenizer, response)
        truncated += len(ids) > max_length
        no_target += len(head) >= max_length
        sequences.append(ids[:max_length])
        starts.append(min(len(head), max_length))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (end_token_id(tokenizer) or 0)
    labels = torch.tensor(dataset.labels, dtype=torch.long)
    return TokenizedDataset(sequences, None, labels, pad, prompt_lengths=starts, truncated=truncated, no_target=no_target)


def truncation_note(data: TokenizedDataset, what: str, max_length: int) -> str | None:
    """A note on the examples ``data.max_length`` cut (None when none was)."""
    if not data.truncated:
        return None
    lost = f", {data.no_target} of them lost their whole response (no loss)" if data.no_target else ""
    return (
        f"note: data.max_length={max_length} cut {data.truncated} of {len(data)} {what} examples at the end{lost}; "
        "raise data.max_length to keep them whole"
    )
