"""The CUDA path: float16 by default, vectors within a tolerance of the CPU's, served through the batcher."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from ragline_embedder.core import Embedder
from ragline_embedder.metrics import EmbedderMetrics
from ragline_embedder.settings import EmbedderSettings

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda.is_available() is False: no CUDA GPU here"),
]

GOLDEN = json.loads((Path(__file__).parent / "golden_vectors.json").read_text())
# Short queries, a padded mix of lengths, a text past max_seq_length and non-Latin scripts.
TEXTS = [item["text"] for item in GOLDEN["items"]] + [
    "A paragraph of a document: " + "packages, triggers and maintainer scripts run in a fixed order. " * 8,
    "word " * 400,
    "Ünïcödé, 日本語のテキスト, emoji 🙂",
]
# float16 weights and activations, pooled and normalised in float32: MiniLM's unit vectors move by about 1e-3.
FP16_MAX_ABS_DIFF = 5e-3
FP16_MIN_COSINE = 0.999


def loaded(**settings: object) -> Embedder:
    embedder = Embedder(EmbedderSettings(**settings), EmbedderMetrics(CollectorRegistry()), 4)
    embedder.load()
    return embedder


@pytest.fixture(scope="module")
def cuda() -> Embedder:
    return loaded(device="cuda")


def test_cuda_runs_torch_in_float16_by_default(cuda: Embedder) -> None:
    assert cuda.info is not None
    assert (cuda.info.device, cuda.info.backend, cuda.info.dtype) == ("cuda", "torch", "float16")


def test_float16_vectors_match_the_cpu_within_the_tolerance(cuda: Embedder) -> None:
    cpu = loaded(device="cpu", backend="torch")
    assert cuda.encoder is not None and cpu.encoder is not None
    got, want = cuda.encoder(TEXTS), cpu.encoder(TEXTS)
    a = np.stack([e.vector for e in got])
    b = np.stack([e.vector for e in want])
    assert a.dtype == np.float32
    assert float(np.max(np.abs(a - b))) < FP16_MAX_ABS_DIFF
    assert float(np.min(np.sum(a * b, axis=1))) > FP16_MIN_COSINE
    assert [(e.tokens, e.truncated) for e in got] == [(e.tokens, e.truncated) for e in want]
    for item, enc in zip(GOLDEN["items"], got, strict=False):
        assert np.max(np.abs(enc.vector - np.array(item["vector"]))) < FP16_MAX_ABS_DIFF, item["text"]


def test_float32_on_cuda_matches_the_cpu_closely() -> None:
    fp32 = loaded(device="cuda", dtype="float32")
    cpu = loaded(device="cpu", backend="torch")
    assert fp32.encoder is not None and cpu.encoder is not None
    a = np.stack([e.vector for e in fp32.encoder(TEXTS)])
    b = np.stack([e.vector for e in cpu.encoder(TEXTS)])
    assert float(np.max(np.abs(a - b))) < 1e-4


async def test_concurrent_requests_share_batches_on_the_gpu(cuda: Embedder) -> None:
    import asyncio

    await cuda.start()
    try:
        results = await asyncio.gather(*(cuda.embed([text]) for text in TEXTS * 8))
    finally:
        await cuda.close()
    assert max(r.stats.batch_size for r in results) > 1
    for text, r in zip(TEXTS * 8, results, strict=True):
        assert r.vectors[0].vector.shape == (384,), text
