"""One tokenization per text, and a batch split into model calls of similar lengths so that little is padding."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# What one more model call costs, in tokens of compute, by device kind (EMBEDDER_CALL_COST_TOKENS=0 picks these).
# CPU: ONNX Runtime's fixed cost per call is about what 16-32 tokens of MiniLM cost (measured here at one thread),
# while a batch of mixed document lengths padded to its longest is mostly padding. GPU: every call launches every
# kernel from Python, and the device pads for nearly nothing up to its width.
CALL_COST_TOKENS = {"cpu": 64, "gpu": 8192}


@dataclass(frozen=True)
class Tokens:
    """A batch's texts tokenized once: ids cut at max_seq_length, and which texts were cut."""

    ids: list[list[int]]
    type_ids: list[list[int]]
    truncated: list[bool]

    @property
    def lengths(self) -> list[int]:
        return [len(i) for i in self.ids]


class Tokenizer:
    """The model's fast tokenizer, set once to truncate at `max_len` and not to pad (batches are padded per call).

    One per worker thread: a Rust tokenizer's settings are shared state, so a copy is made here.
    """

    def __init__(self, tokenizer: Any, max_len: int) -> None:
        backend = copy.deepcopy(tokenizer.backend_tokenizer)
        backend.no_padding()
        backend.enable_truncation(max_len)  # right side, stride 0: the cut-off rest lands in `overflowing`
        self._backend = backend
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.max_len = max_len

    def __call__(self, texts: list[str]) -> Tokens:
        encodings = self._backend.encode_batch(texts, add_special_tokens=True)
        return Tokens(
            ids=[e.ids for e in encodings],
            type_ids=[e.type_ids for e in encodings],
            truncated=[bool(e.overflowing) for e in encodings],
        )

    def pad(self, tokens: Tokens, rows: Sequence[int]) -> dict[str, np.ndarray]:
        """`rows` of `tokens` as int64 arrays padded to their longest: input_ids, attention_mask, token_type_ids."""
        width = max(len(tokens.ids[r]) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        for k, r in enumerate(rows):
            n = len(tokens.ids[r])
            ids[k, :n] = tokens.ids[r]
            mask[k, :n] = 1
            types[k, :n] = tokens.type_ids[r]
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def plan(lengths: Sequence[int], call_cost: int) -> list[list[int]]:
    """Indices of a batch grouped into model calls: by length, split wherever the padding saved exceeds `call_cost`.

    The cost of a call is `call_cost` plus its padded size (texts x longest); sorted by length, the cheapest split
    into consecutive runs is found exactly (dynamic programming, O(n^2) in numpy-sized steps; n is one batch).
    """
    n = len(lengths)
    order = sorted(range(n), key=lengths.__getitem__)
    if n <= 1 or n * max(lengths) - sum(lengths) <= call_cost:
        return [order]  # all the padding there is costs less than one more call
    longest = np.array([lengths[i] for i in order], dtype=np.float64)
    best = np.zeros(n + 1)
    start = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        # A call holding sorted texts i..j-1 costs call_cost + (j - i) * longest[j - 1].
        candidates = best[:j] + call_cost + (j - np.arange(j)) * longest[j - 1]
        i = int(np.argmin(candidates))
        best[j], start[j] = candidates[i], i
    groups: list[list[int]] = []
    j = n
    while j > 0:
        i = int(start[j])
        groups.append(order[i:j])
        j = i
    groups.reverse()
    return groups


def encode_planned(
    tokenizer: Tokenizer,
    texts: list[str],
    forward: Callable[[dict[str, np.ndarray]], np.ndarray],
    call_cost: int,
) -> tuple[np.ndarray, Tokens]:
    """Vectors for `texts` in order, and their tokens: one tokenization, one `forward` call per planned group."""
    tokens = tokenizer(texts)
    out: np.ndarray | None = None
    for rows in plan(tokens.lengths, call_cost):
        vectors = forward(tokenizer.pad(tokens, rows))
        if out is None:
            out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
        out[rows] = vectors
    assert out is not None  # a batch has at least one text
    return out, tokens
