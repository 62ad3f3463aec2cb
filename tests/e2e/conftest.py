"""The four services as separate processes on loopback, shared by the e2e tests of one session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ragline_cli.localstack import Stack, running_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack")) as s:
        yield s
