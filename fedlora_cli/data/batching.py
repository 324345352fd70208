"""Tokenize once, batch with dynamic padding.

Examples are tokenized a single time (truncated to ``max_length``, not padded); a batch is
padded only to its longest member. Under DP the batch composition comes from Poisson sampling
(:func:`poisson_batch`), which padding does not change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedlora_cli.data.sources import TextDataset


@dataclass
class TokenizedDataset:
    """Token lists and one label per example; for causal LM data (``prompt_lengths`` set, see
    :mod:`fedlora_cli.data.sft`) a batch's ``labels`` are the next-token targets instead: the
    input ids, with -100 on the prompt and on padding."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: torch.Tensor
    pad_token_id: int
    prompt_lengths: list[int] | None = None
    truncated: int = 0  # examples cut to max_length (causal LM data)
    no_target: int = 0  # ... of which nothing of the response was left

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, indices) -> "TokenizedDataset":
        """The examples at ``indices`` (token lists are shared, not copied)."""
        idx = [int(i) for i in indices]
        types = [self.token_type_ids[i] for i in idx] if self.token_type_ids is not None else None
        starts = [self.prompt_lengths[i] for i in idx] if self.prompt_lengths is not None else None
        return TokenizedDataset([self.input_ids[i] for i in idx], types, self.labels[idx], self.pad_token_id, starts)

    def batch(self, indices, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """A padded batch (input_ids, attention_mask, [token_type_ids], labels) of ``indices``, on ``device``."""
        indices = [int(i) for i in indices]
        width = max((len(self.input_ids[i]) for i in indices), default=1)
        ids = torch.full((len(indices), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        types = torch.zeros((len(indices), width), dtype=torch.long) if self.token_type_ids is not None else None
        for row, i in enumerate(indices):
            seq = self.input_ids[i]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            if types is not None:
                types[row, : len(seq)] = torch.tensor(self.token_type_ids[i])
        batch = {"input_ids": ids, "attention_mask": mask, "labels": self.labels[indices]}
        if self.prompt_lengths is not None:
            targets = ids.masked_fill(mask == 0, -100)
            for row, i in enumerate(indices):
                targets[row, : self.prompt_lengths[i]] = -100
            batch["labels"] = targets
        if types is not None:
            batch["token_type_ids"] = types
        return {key: value.to(device) for key, value in batch.items()}

    def length_sorted_chunks(self, indices, chunk_size: int) -> list[list[int]]:
        """``indices`` sorted by sequence length, cut into chunks of ``chunk_size``.

        Padding each chunk to its own longest example instead of the whole batch's longest
        removes most of the padding: SST-2 sentences have a median of 10 tokens and a long tail.
        """
        order = sorted((int(i) for i in indices), key=lambda i: len(self.input_ids[i]))
        return [order[i : i + chunk_size] for i in range(0, len(order), chunk_size)]

    def length_sorted_batches(self, batch_size: int) -> list[list[int]]:
        """All indices in batches of similar length (for fast evaluation)."""
        return self.length_sorted_chunks(range(len(self)), batch_size)


def tokenize(dataset: TextDataset, tokenizer, max_length: int) -> TokenizedDataset:
    encoded = tokenizer(
        dataset.texts,
        dataset.text_pairs,
        truncation=True,
        max_length=max_length,
        padding=False,
    )
    token_types = encoded.get("token_type_ids")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return TokenizedDataset(encoded["input_ids"], token_types, torch.tensor(dataset.labels, dtype=torch.long), pad)


def poisson_batch(size: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of a Poisson-sampled batch: each example joins independently with ``sample_rate``."""
    return torch.nonzero(torch.rand(size, generator=generator) < sample_rate).flatten()


def uniform_batch(size: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of a fixed-size batch drawn without replacement (non-private training)."""
    return torch.randperm(size, generator=generator)[: min(batch_size, size)]
