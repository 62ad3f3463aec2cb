"""Generator settings: defaults, the fixed ports and cross-field checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ragline_generator.settings import GeneratorSettings

pytestmark = pytest.mark.unit


def test_defaults_and_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENERATOR_MAX_WAITING", "3")
    s = GeneratorSettings()
    assert (s.http_port, s.grpc_port, s.engine) == (8083, 50053, "llamacpp")
    assert s.max_waiting == 3


def test_default_max_tokens_over_cap_is_refused() -> None:
    with pytest.raises(ValidationError, match="max_tokens_cap"):
        GeneratorSettings(default_max_tokens=2000, max_tokens_cap=1000)


def test_vllm_needs_a_model() -> None:
    with pytest.raises(ValidationError, match="GENERATOR_MODEL"):
        GeneratorSettings(engine="vllm")


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(ValidationError):
        GeneratorSettings(engine="tgi")  # type: ignore[arg-type]


def test_bad_prompt_template_is_refused_at_startup() -> None:
    with pytest.raises(ValidationError, match="rag.v9"):
        GeneratorSettings(prompt_template="rag.v9")
    with pytest.raises(ValidationError, match="cannot load prompt template"):
        GeneratorSettings(prompt_template="/nonexistent/rag.toml")
