"""Token-budget micro-batches: as many rows per batch as fit a budget of padded tokens (rows × longest row).

A speed lever measured by bench/bench.py (issue 17), not a param: short rows go in larger batches and long
rows in smaller ones, so every step carries about the same number of tokens."""

from __future__ import annotations

import torch

from .prompts import padded_length


def token_budget_batches(lengths: list[int], max_tokens: int, pad_to_multiple_of: int = 1) -> list[list[int]]:
    """Row indices in batches, rows sorted by length, each batch's rows × padded longest row ≤ max_tokens
    (a row longer than the budget on its own is a batch of one). Pure and deterministic."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    batches: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        # Sorted ascending: the row being added is the batch's longest.
        if current and (len(current) + 1) * padded_length(lengths[index], pad_to_multiple_of) > max_tokens:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


class TokenBudgetBatchSampler(torch.utils.data.Sampler):
    """The batches of token_budget_batches, in a new seeded order each epoch (the Trainer calls set_epoch)."""

    def __init__(self, lengths: list[int], max_tokens: int, seed: int, pad_to_multiple_of: int = 1):
        self.batches = token_budget_batches(lengths, max_tokens, pad_to_multiple_of)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        for i in torch.randperm(len(self.batches), generator=generator).tolist():
            yield self.batches[i]
