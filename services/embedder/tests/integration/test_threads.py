"""Thread pools in a fresh process: torch and ONNX Runtime intra-op from settings, inter-op 1, BLAS 1, no spinning."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_fresh_process_sets_every_pool() -> None:
    # A fresh process: inter-op threads and OMP_WAIT_POLICY can only be set before torch starts working,
    # which other tests in this process may already have done.
    script = """
import json, os
from prometheus_client import CollectorRegistry
from threadpoolctl import threadpool_info
from ragline_embedder.core import Embedder
from ragline_embedder.metrics import EmbedderMetrics
from ragline_embedder.settings import EmbedderSettings
embedder = Embedder(EmbedderSettings(), EmbedderMetrics(CollectorRegistry()), 2)
embedder.load()
import torch  # only now: load() must be the one that brings torch (and libgomp) in
print(json.dumps({
    "intra": torch.get_num_threads(),
    "interop": torch.get_num_interop_threads(),
    "blas": [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"],
    "omp_wait": os.environ.get("OMP_WAIT_POLICY"),
    "tokenizers": os.environ.get("TOKENIZERS_PARALLELISM"),
    "onnx_intra": embedder.encoder.session.get_session_options().intra_op_num_threads,
    "onnx_spinning": embedder.encoder.session.get_session_options().get_session_config_entry(
        "session.intra_op.allow_spinning"
    ),
}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "TOKENIZERS_PARALLELISM")}
    out = subprocess.run(
        [sys.executable, "-c", script], env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    blas = got.pop("blas")
    assert blas and set(blas) == {1}  # every BLAS library loaded (numpy's, scipy's) runs one thread
    assert got == {
        "intra": 2,
        "interop": 1,
        "omp_wait": "PASSIVE",
        "tokenizers": "false",
        "onnx_intra": 2,  # the default backend on CPU, with the same thread count and no spinning between ops
        "onnx_spinning": "0",
    }
