"""Token-budget batches (bench/bench.py's speed lever): every row once, each batch within its budget."""

import pytest

from qlora_gsm8k.batching import TokenBudgetBatchSampler, token_budget_batches
from qlora_gsm8k.prompts import padded_length as padded

LENGTHS = [30, 5, 120, 64, 7, 64, 200, 9, 33, 64, 1, 90]


@pytest.mark.parametrize(("budget", "multiple"), [(128, 1), (256, 1), (256, 64), (1000, 8)])
def test_every_row_once_and_each_batch_within_the_budget(budget, multiple):
    batches = token_budget_batches(LENGTHS, budget, multiple)
    assert sorted(i for batch in batches for i in batch) == list(range(len(LENGTHS)))
    for batch in batches:
        longest = max(padded(LENGTHS[i], multiple) for i in batch)
        assert len(batch) == 1 or len(batch) * longest <= budget, batch


def test_short_rows_share_a_batch_and_a_row_over_the_budget_is_alone():
    batches = token_budget_batches(LENGTHS, 128)
    assert [6] in batches  # 200 tokens > 128: a batch of its own, never cut
    assert sorted(batches[0]) == [1, 4, 7, 10]  # 1, 5, 7, 9 tokens: 4 × 9 ≤ 128, with the 30-token row 5 × 30 > 128
    # Fewer rows per batch as rows get longer.
    sizes = [len(b) for b in batches]
    assert sizes == sorted(sizes, reverse=True)


def test_padding_to_a_multiple_counts_the_padded_length():
    # Four rows of 33 tokens: 4 × 33 = 132 fit one batch; padded to 64 each, only two fit (2 × 64 ≤ 132).
    assert len(token_budget_batches([33] * 4, 132)) == 1
    assert len(token_budget_batches([33] * 4, 132, pad_to_multiple_of=64)) == 2


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        token_budget_batches(LENGTHS, 0)


def test_the_order_is_seeded_and_new_each_epoch():
    sampler = TokenBudgetBatchSampler(LENGTHS, 128, seed=42)
    first = list(sampler)
    assert len(first) == len(sampler) and sorted(map(tuple, first)) == sorted(map(tuple, sampler.batches))
    assert list(TokenBudgetBatchSampler(LENGTHS, 128, seed=42)) == first
    orders = set()
    for epoch in range(4):
        sampler.set_epoch(epoch)
        orders.add(tuple(map(tuple, sampler)))
    assert len(orders) > 1
