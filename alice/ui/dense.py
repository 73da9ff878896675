"""The explorer pages' shared pieces: embedding sources, cohort embeddings and the FAISS index, kept across reruns."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from alice import paths
from alice.data.cohort import CaseRecord
from alice.errors import InputError
from alice.explore.dense import (
    DenseEmbedding,
    EmbeddingSettings,
    cache_entry_path,
    cached_dense_embedding,
    cohort_index,
    load_network,
)
from alice.ui.cases import case_stamp

SOURCE_LABELS = {"alice": "Alice (teacher, encoder + decoder tokens)", "sam": "SAM (local + global)",
                 "untrained": "Untrained network (control)"}
SOURCE_COMMANDS = {"alice": "alice pretrain --preset cpu-tiny --out RUN_DIR, then alice ship-checkpoint RUN_DIR "
                            f"(writes {paths.DEFAULT_ALICE_CHECKPOINT})",
                   "sam": f"alice sam train, then copy its checkpoints/final.pt to {paths.DEFAULT_SAM_CHECKPOINT}"}


@dataclass(frozen=True)
class Source:
    """An embedding source as the pages offer it: its resolved settings, or why it cannot be used."""

    name: str
    settings: EmbeddingSettings | None
    problem: str | None = None

    @property
    def label(self) -> str:
        return SOURCE_LABELS[self.name]


def source(name: str) -> Source:
    """The source with the shipped checkpoint; never raises (a missing checkpoint becomes ``problem``)."""
    try:
        return Source(name, EmbeddingSettings(source=name).resolved())
    except InputError as exc:
        return Source(name, None, f"{SOURCE_LABELS[name]} is not available: {exc}. Produce it with "
                                  f"`{SOURCE_COMMANDS.get(name, '')}`.")


def cohort_embeddings(records: list[CaseRecord], settings: EmbeddingSettings) -> list[DenseEmbedding]:
    """Every case's dense embedding, from memory, the disk cache, or computed with a progress bar.

    Raises:
        InputError: an image or the checkpoint cannot be read.
    """
    missing = [r for r in records if not cache_entry_path(r, settings)[0].exists()]
    if missing:
        bar = st.progress(0.0, text=f"Embedding {len(missing)} case(s) with {settings.label()} (once; cached on disk)")
        network = None if settings.source == "sam" else _network(settings.key(), settings)
        for done, record in enumerate(missing, start=1):
            cached_dense_embedding(record, settings, network)
            bar.progress(done / len(missing), text=f"Embedded {record.case_id} ({done}/{len(missing)})")
        bar.empty()
    return [_embedding(r, settings, case_stamp(r), settings.key()) for r in records]


# SAM both: ~80 MB per sample case in float32; Alice both token sets: ~90 MB.
@st.cache_resource(max_entries=48, show_spinner=False)
def _embedding(_record: CaseRecord, _settings: EmbeddingSettings, stamp: tuple, key: str) -> DenseEmbedding:
    return cached_dense_embedding(_record, _settings)


@st.cache_resource(max_entries=2, show_spinner="Loading the network...")
def _network(key: str, _settings: EmbeddingSettings):
    return load_network(_settings)


def index(records: list[CaseRecord], embeddings: list[DenseEmbedding], settings: EmbeddingSettings):
    """The FAISS index over these cases (loaded, or rebuilt when stale), kept across reruns."""
    return _index(tuple(records), tuple(embeddings), settings, tuple(case_stamp(r) for r in records), settings.key())


@st.cache_resource(max_entries=4, show_spinner="Building the FAISS index (once)...")
def _index(_records: tuple, _embeddings: tuple, _settings: EmbeddingSettings, stamps: tuple, key: str):
    return cohort_index(list(_records), list(_embeddings), _settings)
