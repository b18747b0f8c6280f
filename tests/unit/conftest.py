"""Unit-test fixtures."""

from __future__ import annotations

import pytest

from pipeline.lake import Lake


@pytest.fixture
def lakes(tmp_path) -> tuple[Lake, Lake]:
    """An empty (ingestion, processed) pair of local lake zones."""
    return Lake(str(tmp_path / "ingest")), Lake(str(tmp_path / "processed"))
