"""Embedder settings: env prefix, defaults that match the fixed ports, and refusals that name the variable."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ragline_embedder.settings import EmbedderSettings

pytestmark = pytest.mark.unit


def test_defaults_and_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDDER_MAX_WAIT_MS", "7.5")
    monkeypatch.setenv("EMBEDDER_THREADS", "3")
    s = EmbedderSettings()
    assert (s.http_port, s.grpc_port) == (8081, 50051)
    assert s.max_wait_ms == 7.5 and s.threads == 3
    assert s.device == "auto" and s.normalize


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_devices_accepted(device: str) -> None:
    assert EmbedderSettings(device=device).device == device


def test_bad_device_is_refused() -> None:
    with pytest.raises(ValidationError, match="device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"):
        EmbedderSettings(device="gpu")


def test_request_cap_must_fit_the_queue() -> None:
    with pytest.raises(ValidationError, match=r"must not exceed EMBEDDER_MAX_QUEUE \(10\)"):
        EmbedderSettings(max_queue=10, max_texts_per_request=11)


def test_backend_must_be_one_of_the_three() -> None:
    assert EmbedderSettings(backend="torch").backend == "torch"
    with pytest.raises(ValidationError, match="backend must be auto, onnx or torch, got 'tensorrt'"):
        EmbedderSettings(backend="tensorrt")


def test_dtype_is_auto_float32_or_float16() -> None:
    assert EmbedderSettings().dtype == "auto" and EmbedderSettings().call_cost_tokens == 0
    assert EmbedderSettings(dtype="float16").dtype == "float16"
    with pytest.raises(ValidationError, match="dtype must be auto, float32 or float16, got 'bfloat16'"):
        EmbedderSettings(dtype="bfloat16")
