"""Batches planned by length: every text in exactly one call, little padding, results back in order."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from transformers import AutoTokenizer

from ragline_embedder.core import default_model_path
from ragline_embedder.tokens import Tokenizer, encode_planned, plan

pytestmark = pytest.mark.unit


def padded(lengths: list[int], groups: list[list[int]]) -> int:
    return sum(len(g) * max(lengths[i] for i in g) for g in groups)


def test_every_text_lands_in_exactly_one_call_sorted_by_length() -> None:
    lengths = [200, 12, 210, 10, 40, 41, 256, 11]
    groups = plan(lengths, 64)
    assert sorted(itertools.chain(*groups)) == list(range(len(lengths)))
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(lengths)


def test_short_and_long_texts_are_not_padded_together() -> None:
    groups = plan([200, 10, 12, 210], 64)
    assert sorted(sorted(g) for g in groups) == [[0, 3], [1, 2]]
    assert padded([200, 10, 12, 210], groups) == 2 * 210 + 2 * 12  # against 4 * 210 in one call


def test_a_call_that_costs_more_than_the_padding_keeps_the_batch_whole() -> None:
    assert plan([200, 10, 12, 210], 100_000) == [[1, 2, 0, 3]]


def test_the_plan_is_the_cheapest_split() -> None:
    rng = np.random.default_rng(7)
    lengths = [int(x) for x in rng.integers(5, 257, size=9)]
    cost = 64

    def total(groups: list[list[int]]) -> int:
        return len(groups) * cost + padded(lengths, groups)

    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    cheapest = min(
        total([order[a:b] for a, b in itertools.pairwise((0, *cuts, len(order)))])
        for k in range(len(order))
        for cuts in itertools.combinations(range(1, len(order)), k)
    )
    assert total(plan(lengths, cost)) == cheapest


def test_one_text_and_none() -> None:
    assert plan([7], 64) == [[0]]
    assert plan([], 64) == [[]]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True), 16)


def test_tokens_are_cut_at_max_len_and_flagged(tokenizer: Tokenizer) -> None:
    tokens = tokenizer(["short one", "word " * 14, "word " * 15])
    assert tokens.lengths == [4, 16, 16]  # [CLS] … [SEP]; 14 words fit exactly, 15 do not
    assert tokens.truncated == [False, False, True]
    assert tokens.ids[2][-1] == tokens.ids[0][-1]  # a cut text still ends with [SEP]


def test_results_come_back_in_the_callers_order(tokenizer: Tokenizer) -> None:
    texts = ["word " * 12, "a", "word " * 3, "b c", "word " * 13]
    calls: list[tuple[int, int]] = []

    def forward(features: dict[str, np.ndarray]) -> np.ndarray:
        calls.append(features["input_ids"].shape)
        # Each row's vector is its own unpadded length, so a row put back in the wrong place shows.
        return features["attention_mask"].sum(axis=1, keepdims=True).astype(np.float32)

    vectors, tokens = encode_planned(tokenizer, texts, forward, call_cost=4)
    assert vectors[:, 0].tolist() == tokens.lengths == [14, 3, 5, 4, 15]
    assert len(calls) > 1 and sum(n for n, _ in calls) == len(texts)
    assert sum(n * width for n, width in calls) < len(texts) * 15  # less padding than one call
