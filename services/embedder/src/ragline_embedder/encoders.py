"""Model backends behind one call, texts → vectors with token counts: sentence-transformers' own forward pass
(torch), or the same model exported once at startup and run by ONNX Runtime (onnx)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from ragline_embedder.tokens import Tokenizer, Tokens, encode_planned

log = logging.getLogger(__name__)

# What the startup check feeds both backends: one text alone, a padded batch, a text past max_seq_length, the
# whitespace, case and scripts a tokenizer treats specially. The exported graph is used only if it agrees.
PROBES = [
    "What is a dpkg trigger?",
    "  Leading and trailing whitespace.  ",
    "UPPER CASE, lower case and MiXeD",
    "Ünïcödé, 日本語のテキスト, emoji 🙂 and numbers 3.14159",
    "A longer sentence so that the batch is padded: " + "packages, triggers and maintainer scripts " * 4,
    "truncated " * 600,
]
MAX_ABS_DIFF = 1e-4  # ONNX Runtime and torch agree to ~1e-7 in fp32 on this model; more means a wrong export


class BackendMismatch(RuntimeError):
    """The exported graph does not reproduce the model (an unsupported module, or a trace that took a branch)."""


@dataclass(frozen=True)
class Encoded:
    vector: np.ndarray
    tokens: int
    truncated: bool


Encoder = Callable[[list[str]], list[Encoded]]


def _encoded(vectors: np.ndarray, tokens: Tokens) -> list[Encoded]:
    return [
        Encoded(vector=vec, tokens=len(ids), truncated=cut)
        for vec, ids, cut in zip(vectors, tokens.ids, tokens.truncated, strict=True)
    ]


class TorchEncoder:
    """sentence-transformers' model (transformer, pooling …) called on batches planned by length, in its own dtype
    (float16 on a GPU by default). Not shared between threads: it holds its own tokenizer."""

    backend = "torch"

    def __init__(self, model: Any, *, normalize: bool, call_cost: int) -> None:
        self.model = model
        self.normalize = normalize
        self.max_len = int(model.max_seq_length)
        self.tokenizer = Tokenizer(model.tokenizer, self.max_len)
        names = model.tokenizer.model_input_names
        self.inputs = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in names]
        self.call_cost = call_cost

    def _forward(self, features: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        device = self.model.device
        with torch.inference_mode():
            batch = {n: torch.from_numpy(features[n]).to(device, non_blocking=True) for n in self.inputs}
            vectors = self.model(batch)["sentence_embedding"].float()  # normalised in float32, whatever the dtype
            if self.normalize:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
            return vectors.cpu().numpy()  # type: ignore[no-any-return]

    def __call__(self, texts: list[str]) -> list[Encoded]:
        vectors, tokens = encode_planned(self.tokenizer, texts, self._forward, self.call_cost)
        return _encoded(vectors, tokens)


@dataclass(frozen=True)
class Graph:
    """An exported, checked model: what an OnnxEncoder needs, without the torch model it came from."""

    onnx: bytes
    inputs: list[str]
    tokenizer: Any
    dimension: int
    max_seq_length: int


def export_onnx(model: Any) -> Graph:
    """The whole sentence-transformers pipeline (transformer, pooling, normalize …) as an ONNX graph, in memory.

    Traced from a padded batch, so that every data-dependent branch in the model's masking code takes the
    general (padded) path; `check` then compares the graph with the model.
    """
    import torch

    tokenizer = model.tokenizer
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]
    example = tokenizer(["a", "a longer example, so that the batch is padded"], padding=True, return_tensors="pt")

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.model(dict(zip(names, inputs, strict=True)))["sentence_embedding"]

    buffer = io.BytesIO()
    started = time.perf_counter()
    with warnings.catch_warnings():
        # The TorchScript exporter notes every Python-level shape check in the HF code it traces and that it is
        # the older of torch's two exporters (the newer needs onnxscript); check() is the test that counts.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            SentenceEmbedding().eval(),
            tuple(example[n] for n in names),
            buffer,  # type: ignore[arg-type]  # a file-like object is accepted; the stub names only paths
            input_names=names,
            output_names=["embedding"],
            dynamic_axes={**{n: {0: "batch", 1: "tokens"} for n in names}, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    log.info("exported the model to ONNX (%d MB) in %.1fs", buffer.tell() >> 20, time.perf_counter() - started)
    return Graph(
        onnx=buffer.getvalue(),
        inputs=names,
        tokenizer=tokenizer,
        dimension=int(model.get_embedding_dimension()),
        max_seq_length=int(model.max_seq_length),
    )


class GraphCache:
    """One model's checked ONNX graph on disk, so that a restarted container skips loading sentence-transformers,
    the export and its check (~5 s of a ~9 s start on 2 cores): ONNX Runtime and the model's tokenizer are all
    it needs.

    The entry is named after everything that shaped it: `content`, a hash of the model's weights and config, and
    the versions of the libraries that traced and wrote it. Nothing on disk is trusted beyond that name: an entry
    that will not load is exported again. Errors writing are logged, never raised (a full or read-only disk only
    means exporting at the next start too).
    """

    LIBRARIES = ("torch", "transformers", "sentence-transformers", "onnx")

    def __init__(self, folder: Path, content: str) -> None:
        shaped_by = [content, *(f"{lib}=={version(lib)}" for lib in self.LIBRARIES), "opset=17"]
        self.folder = folder
        self.path = folder / f"embedder-{hashlib.sha256(' '.join(shaped_by).encode()).hexdigest()[:24]}"

    def load(self) -> Graph | None:
        from transformers import AutoTokenizer

        try:
            meta = json.loads((self.path / "graph.json").read_text())
            return Graph(
                onnx=(self.path / "model.onnx").read_bytes(),
                inputs=list(meta["inputs"]),
                # Our own cache folder, never the hub (local_files_only), so there is no revision to pin.
                tokenizer=AutoTokenizer.from_pretrained(str(self.path / "tokenizer"), local_files_only=True),  # nosec B615
                dimension=int(meta["dimension"]),
                max_seq_length=int(meta["max_seq_length"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, graph: Graph) -> None:
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            (partial / "model.onnx").write_bytes(graph.onnx)
            graph.tokenizer.save_pretrained(str(partial / "tokenizer"))
            meta = {"inputs": graph.inputs, "dimension": graph.dimension, "max_seq_length": graph.max_seq_length}
            (partial / "graph.json").write_text(json.dumps(meta))
            shutil.rmtree(self.path, ignore_errors=True)  # an unusable entry of the same name
            os.replace(partial, self.path)  # a reader sees no entry or a whole one
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            log.warning("could not cache the ONNX graph in %s: %s", self.folder, exc)


class OnnxEncoder:
    """The exported graph on ONNX Runtime's CPU provider, with its own copy of the tokenizer."""

    backend = "onnx"

    def __init__(self, graph: Graph, *, normalize: bool, threads: int, call_cost: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ONNX Runtime's pool spins between ops by default: on shared cores that takes them from every neighbour
        # (the same reason OMP_WAIT_POLICY is PASSIVE for torch).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        # A session's thread pool is started by the thread that builds it and inherits its CPU priority: the
        # bulk lane builds its own session on its own (lower priority) thread.
        self.session = ort.InferenceSession(graph.onnx, options, providers=["CPUExecutionProvider"])
        self.inputs = graph.inputs
        self.max_len = graph.max_seq_length
        self.tokenizer = Tokenizer(graph.tokenizer, self.max_len)
        self.normalize = normalize
        self.call_cost = call_cost

    def _forward(self, features: dict[str, np.ndarray]) -> np.ndarray:
        (vectors,) = self.session.run(None, {n: features[n] for n in self.inputs})
        if self.normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors  # type: ignore[no-any-return]

    def __call__(self, texts: list[str]) -> list[Encoded]:
        vectors, tokens = encode_planned(self.tokenizer, texts, self._forward, self.call_cost)
        return _encoded(vectors, tokens)


def check(candidate: Encoder, reference: Encoder, what: str = "the ONNX graph") -> float:
    """Largest difference between two encoders' vectors over PROBES; BackendMismatch above MAX_ABS_DIFF."""
    got = np.stack([e.vector for e in candidate(PROBES)])
    want = np.stack([e.vector for e in reference(PROBES)])
    diff = float(np.max(np.abs(got - want)))
    if diff > MAX_ABS_DIFF:
        raise BackendMismatch(f"{what} differs from the model by {diff:.2g} (at most {MAX_ABS_DIFF} allowed)")
    return diff


def st_encode(model: Any, *, normalize: bool) -> Encoder:
    """sentence-transformers' own `encode` (vectors only): what TorchEncoder's direct forward pass must reproduce,
    prompts, pooling and any text preprocessing of the model included."""

    def encode(texts: list[str]) -> list[Encoded]:
        vectors = model.encode(
            texts, batch_size=len(texts), normalize_embeddings=normalize, convert_to_numpy=True, show_progress_bar=False
        )
        return [Encoded(vector=v, tokens=0, truncated=False) for v in vectors]

    return encode
