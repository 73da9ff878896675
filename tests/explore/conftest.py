"""Real sample-cohort embeddings shared by the explorer tests (SAM source: one whole-case SAM pass per case)."""

import pytest

from alice.data.cohort import sample_cohort
from alice.explore.dense import EmbeddingSettings, cached_dense_embedding

CASES = ("lidc0001", "pseudo05", "lung1")


@pytest.fixture(scope="session")
def shared_workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("explore-workspace")


@pytest.fixture
def isolated_workspace(shared_workspace, monkeypatch):
    """The explorer tests share one workspace, so each case is SAM-embedded once per session."""
    monkeypatch.setenv("ALICE_WORKSPACE", str(shared_workspace))
    return shared_workspace


@pytest.fixture
def sam_settings(isolated_workspace) -> EmbeddingSettings:
    return EmbeddingSettings(source="sam").resolved()


@pytest.fixture
def records():
    cohort = sample_cohort()
    return {case_id: cohort.get(case_id) for case_id in CASES}


@pytest.fixture
def sam_embeddings(records, sam_settings):
    return {case_id: cached_dense_embedding(record, sam_settings) for case_id, record in records.items()}
