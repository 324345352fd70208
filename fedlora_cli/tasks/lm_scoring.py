"""Scoring a causal language model: per-example response loss, perplexity, greedy decoding,
exact match and multiple choice by log-likelihood.

With targets ``y`` (the next tokens; -100 on prompt and padding) an example's loss is the mean
negative log-likelihood of its response tokens, ``ℓ_i = −(1/T_i) Σ_t log p(y_t | y_<t)``. Training
averages ``ℓ_i`` over the examples of a batch (what Opacus's per-sample gradients with
``loss_reduction="mean"`` assume; the model's own loss would average over all tokens of the
batch instead). Held-out loss is per token over the whole test set, ``L = Σ_i T_i ℓ_i / Σ_i T_i``,
and perplexity ``exp(L)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fedlora_cli.data.batching import TokenizedDataset
from fedlora_cli.data.sft import IGNORE_INDEX, SFTDataset, end_token_id, prompt_ids, response_ids
from fedlora_cli.tasks.answers import ANSWER_EXTRACTORS


def response_nll(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: the summed NLL of its target tokens and how many there are (position t predicts t+1)."""
    shifted = targets[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), shifted, ignore_index=IGNORE_INDEX, reduction="none")
    return nll.sum(dim=1), (shifted != IGNORE_INDEX).sum(dim=1)


def mean_example_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean_i ℓ_i``; an example with no target token (its response truncated away) counts 0."""
    sums, counts = response_nll(logits, targets)
    return (sums / counts.clamp(min=1)).mean()


@torch.no_grad()
def example_nll(model: torch.nn.Module, data: TokenizedDataset, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response NLL and target-token count of every example, in dataset order."""
    sums, counts = torch.zeros(len(data), dtype=torch.float64), torch.zeros(len(data), dtype=torch.long)
    for indices in data.length_sorted_batches(batch_size):
        batch = data.batch(indices)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        batch_sums, batch_counts = response_nll(logits, batch["labels"])
        sums[indices], counts[indices] = batch_sums.double(), batch_counts
    return sums, counts


def heldout_loss(model: torch.nn.Module, data: TokenizedDataset, batch_size: int) -> dict:
    """Per-token response loss ``L`` over the set, its perplexity ``exp(L)`` and the token count."""
    sums, counts = example_nll(model, data, batch_size)
    loss = float(sums.sum() / max(int(counts.sum()), 1))
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": int(counts.sum())}


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module, prompts: list[list[int]], pad_id: int, end_id: int | None, max_new_tokens: int, batch_size: int
) -> list[list[int]]:
    """Greedy continuations (at most ``max_new_tokens``, up to the end token) of left-padded prompt batches."""
    outputs: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        generated = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=end_id,
        )[:, width:]
        for row, i in enumerate(chunk):
            tokens = generated[row].tolist()
            outputs[i] = tokens[: tokens.index(end_id)] if end_id in tokens else tokens
    return outputs


def exact_match(
    model: torch.nn.Module, dataset: SFTDataset, tokenizer, answer: str, max_new_tokens: int, batch_size: int
) -> dict:
    """Share of ``dataset`` whose greedily generated answer equals the reference's, both read by the
    ``answer`` extractor (:mod:`fedlora_cli.tasks.answers`)."""
    extract = ANSWER_EXTRACTORS[answer]
    prompts = [prompt_ids(tokenizer, p) for p in dataset.prompts]
    end = end_token_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (end or 0)
    generated = greedy_generate(model, prompts, pad, end, max_new_tokens, batch_size)
    texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
    hits = [extract(text) is not None and extract(text) == extract(ref) for text, ref in zip(texts, dataset.responses)]
    return {"exact_match": sum(hits) / len(hits), "generated": len(hits), "example_output": texts[0]}


def choice_log_likelihoods(model: torch.nn.Module, dataset: SFTDataset, tokenizer, batch_size: int) -> torch.Tensor:
    """``[n, k]``: each row's options' mean log-probability per token after the prompt
    (length-normalized, so a long option is not penalized for having more tokens; no end token is
    scored); ``-inf`` where a row has fewer than ``k`` options."""
    sequences, starts, slots = [], [], []
    for row, (prompt, options) in enumerate(zip(dataset.prompts, dataset.options)):
        head = prompt_ids(tokenizer, prompt)
        for position, option in enumerate(options):
            sequences.append(head + response_ids(tokenizer, option, end=False))
            starts.append(len(head))
            slots.append((row, position))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pairs = TokenizedDataset(sequences, None, torch.zeros(len(sequences), dtype=torch.long), pad, prompt_lengths=starts)
    sums, counts = example_nll(model, pairs, batch_size)
    scores = torch.full((len(dataset), max(len(o) for o in dataset.options)), -math.inf, dtype=torch.float64)
    for (row, position), value in zip(slots, (-sums / counts.clamp(min=1)).tolist()):
        scores[row, position] = value
    return scores


def choice_accuracy(model: torch.nn.Module, dataset: SFTDataset, tokenizer, batch_size: int) -> dict:
    """Share of ``dataset`` whose highest-scoring option (:func:`choice_log_likelihoods`) is the right
    one, and how often each option position was picked."""
    scores = choice_log_likelihoods(model, dataset, tokenizer, batch_size)
    picked = scores.argmax(dim=1)
    correct = picked == torch.tensor(dataset.labels)
    return {"choice_accuracy": float(correct.float().mean()), "predicted_counts": torch.bincount(picked, minlength=scores.shape[1]).tolist()}
