"""The backend check: an encoder is accepted only if it reproduces the reference on every probe text."""

from __future__ import annotations

import numpy as np
import pytest

from ragline_embedder.encoders import MAX_ABS_DIFF, PROBES, BackendMismatch, Encoded, check

pytestmark = pytest.mark.unit


def fake(offset: float) -> object:
    def encode(texts: list[str]) -> list[Encoded]:
        assert texts == PROBES
        return [Encoded(np.full(4, i + offset, dtype=np.float32), 3, False) for i in range(len(texts))]

    return encode


def test_an_encoder_within_the_tolerance_passes_with_its_difference() -> None:
    assert check(fake(MAX_ABS_DIFF / 4), fake(0.0)) == pytest.approx(MAX_ABS_DIFF / 4, rel=1e-2)  # type: ignore[arg-type]


def test_an_encoder_beyond_it_is_refused_with_the_difference() -> None:
    with pytest.raises(BackendMismatch, match=r"differs from the model by 0\.01 \(at most 0\.0001 allowed\)"):
        check(fake(0.01), fake(0.0))  # type: ignore[arg-type]
