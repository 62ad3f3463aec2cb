"""The two model backends: ONNX Runtime gives the vectors sentence-transformers gives, or it is not used."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from ragline_embedder import core
from ragline_embedder.core import Embedder
from ragline_embedder.encoders import BackendMismatch, Encoded, Encoder
from ragline_embedder.metrics import EmbedderMetrics
from ragline_embedder.settings import EmbedderSettings

pytestmark = pytest.mark.integration

GOLDEN = json.loads((Path(__file__).parent / "golden_vectors.json").read_text())
TEXTS = [item["text"] for item in GOLDEN["items"]] + ["word " * 400, "  spaced  ", "Ünïcödé 日本語"]


def loaded(**settings: object) -> Embedder:
    embedder = Embedder(EmbedderSettings(**settings), EmbedderMetrics(CollectorRegistry()), 1)
    embedder.load()
    return embedder


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, Embedder]]:
    yield {name: loaded(backend=name) for name in ("torch", "onnx")}


def test_auto_picks_onnx_on_the_cpu(backends: dict[str, Embedder]) -> None:
    assert loaded().info.backend == "onnx"  # type: ignore[union-attr]
    assert {name: e.info.backend for name, e in backends.items()} == {"torch": "torch", "onnx": "onnx"}  # type: ignore[union-attr]


def test_both_backends_give_the_golden_vectors(backends: dict[str, Embedder]) -> None:
    for name, embedder in backends.items():
        assert embedder.encoder is not None
        got = embedder.encoder([item["text"] for item in GOLDEN["items"]])
        for item, enc in zip(GOLDEN["items"], got, strict=True):
            assert np.max(np.abs(enc.vector - np.array(item["vector"]))) < GOLDEN["tolerance"], (name, item["text"])


def test_both_backends_agree_on_vectors_tokens_and_truncation_in_one_padded_batch(
    backends: dict[str, Embedder],
) -> None:
    onnx, torch = (backends[n].encoder for n in ("onnx", "torch"))
    assert onnx is not None and torch is not None
    a, b = onnx(TEXTS), torch(TEXTS)
    assert [(e.tokens, e.truncated) for e in a] == [(e.tokens, e.truncated) for e in b]
    assert a[len(GOLDEN["items"])].truncated  # the 400-word text was cut at max_seq_length
    assert np.max(np.abs(np.stack([e.vector for e in a]) - np.stack([e.vector for e in b]))) < 1e-4
    assert all(e.vector.dtype == np.float32 and abs(np.linalg.norm(e.vector) - 1) < 1e-5 for e in a)


def test_a_graph_that_disagrees_falls_back_to_torch_under_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    real = core.check

    def mismatch(candidate: Encoder, reference: Encoder, what: str = "the ONNX graph") -> float:
        if what != "the ONNX graph":
            return real(candidate, reference, what)
        raise BackendMismatch("the ONNX graph differs from the model by 0.3 (at most 0.0001 allowed)")

    monkeypatch.setattr(core, "check", mismatch)
    assert loaded().info.backend == "torch"  # type: ignore[union-attr]
    with pytest.raises(BackendMismatch, match="differs from the model by 0.3"):
        loaded(backend="onnx")  # asked for by name: refuse to start rather than serve other vectors


def test_a_restart_takes_the_checked_graph_from_the_cache(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = loaded(cache_dir=str(tmp_path))
    (entry,) = tmp_path.glob("embedder-*")  # one entry, written whole (no partial folder left beside it)
    assert {p.name for p in entry.iterdir()} == {"model.onnx", "graph.json", "tokenizer"}
    caplog.clear()
    with caplog.at_level("INFO", logger="ragline_embedder"):
        again = loaded(cache_dir=str(tmp_path))
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("ONNX graph from the cache") for m in messages), messages
    assert not any(m.startswith("exported the model") for m in messages), messages
    assert first.encoder is not None and again.encoder is not None
    a, b = first.encoder(TEXTS), again.encoder(TEXTS)
    assert np.max(np.abs(np.stack([e.vector for e in a]) - np.stack([e.vector for e in b]))) < 1e-6


def test_an_unusable_cached_graph_is_exported_again(tmp_path: Path) -> None:
    loaded(cache_dir=str(tmp_path))
    (entry,) = tmp_path.glob("embedder-*")
    graph = entry / "model.onnx"
    graph.write_bytes(b"not an onnx graph")
    embedder = loaded(cache_dir=str(tmp_path))
    assert embedder.info.backend == "onnx"  # type: ignore[union-attr]
    assert (entry / "model.onnx").stat().st_size > 1_000_000  # written again, whole


def test_float16_on_the_cpu_is_refused_not_ignored() -> None:
    with pytest.raises(RuntimeError, match="float16 needs a GPU and the torch backend; the device is cpu"):
        loaded(device="cpu", dtype="float16")


def test_the_cpu_runs_float32_and_splits_batches_by_length(backends: dict[str, Embedder]) -> None:
    for embedder in backends.values():
        assert embedder.info is not None and embedder.info.dtype == "float32"
        assert embedder.call_cost == 64


def test_a_torch_forward_pass_that_differs_from_encode_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    original = core.st_encode

    def shifted(model: object, *, normalize: bool) -> Encoder:
        real = original(model, normalize=normalize)
        return lambda texts: [Encoded(e.vector + 0.01, e.tokens, e.truncated) for e in real(texts)]

    monkeypatch.setattr(core, "st_encode", shifted)
    with pytest.raises(BackendMismatch, match=r"the torch forward pass differs from the model by 0\.01"):
        loaded(backend="torch")
