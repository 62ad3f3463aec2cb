"""Settings: the required embedder address, and chunking bounds."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ragline_retriever.settings import RetrieverSettings

pytestmark = pytest.mark.unit


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRIEVER_EMBEDDER_ADDR", "embedder:50051")
    s = RetrieverSettings()
    assert (s.http_port, s.grpc_port, s.qdrant_url, s.search_mode) == (8082, 50052, "", "hybrid")


def test_embedder_addr_is_required_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RETRIEVER_EMBEDDER_ADDR", raising=False)
    with pytest.raises(ValidationError, match="embedder_addr"):
        RetrieverSettings()
    monkeypatch.setenv("RETRIEVER_EMBEDDER_ADDR", "no-port")
    with pytest.raises(ValidationError, match="host:port"):
        RetrieverSettings()


def test_overlap_must_be_below_chunk_size() -> None:
    with pytest.raises(ValidationError, match="smaller than"):
        RetrieverSettings(embedder_addr="e:1", chunk_tokens=32, chunk_overlap_tokens=32)


def test_permits_refuse_at_once_beyond_the_limit() -> None:
    from ragline_common.errors import Overloaded
    from ragline_retriever.core import _Permits

    permits = _Permits(2, "searches")
    with permits, permits:
        with pytest.raises(Overloaded, match="2 searches already in flight"):
            with permits:
                pass
    with permits:  # released again
        assert permits.used == 1
