"""Dense embeddings of whole cases: one unit vector every few mm inside the body, for any embedding source.

Sources (``EmbeddingSettings.source``):

- ``alice``: an Alice pretraining checkpoint (the shipped one by default); the teacher's or the student's backbone,
  its encoder (bottleneck) or decoder (first decoder stage) tokens, or both joined. The case is resampled to each
  of ``spacings_mm``, windowed like the training crops, and run through the backbone window by window with MONAI's
  sliding-window inference, which stitches the token maps of overlapping windows into one map at the tokens'
  stride. The windows step by whole bottleneck cells (``window_step``) and the last ones are not pulled back to
  the scan's edge, so the token cells of all windows cover the same voxels (a step of 36 voxels, 25% overlap of
  48-voxel windows, put them 4 voxels apart from window to window). With ``tilings`` > 1 this runs again with the
  scan moved by part of a window step, so the windows and their token cells fall elsewhere on the anatomy, and the
  vectors are averaged. The vectors of the voxel sizes are joined: a fine one tells nearby places apart, a coarse
  one gives the windows enough of the body to tell which of several look-alike places (vertebrae, ribs) it is.
- ``sam``: the SAM checkpoint's cached local and upsampled global maps (``local``, ``global``, or ``both``:
  the two unit vectors concatenated and scaled by 1/sqrt(2), so a dot product is SAM's matching score).
- ``untrained``: the Alice backbone with seeded random weights, the control.

Vectors sit on a lattice of image voxels every ``grid_mm`` (rounded to whole voxels) inside the body; each keeps
its voxel, world mm, HU and the label under it. Entries are cached per (case content, checkpoint content,
settings) at ``<workspace>/embeddings/dense/<settings key>/<case>-<image hash>.npz``, written atomically and
checked when read; a stale or damaged entry is recomputed. Under ``torchrun`` each rank embeds its share of the
cases (``RANK`` / ``WORLD_SIZE``); no communication is needed, the cache is the meeting point.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from alice import paths
from alice.anatomy.cache import CaseEmbedding, body_mask, cached_embedding, content_hash
from alice.anatomy.cache import embed_case as embed_sam_case
from alice.anatomy.grid import sample_at_mm
from alice.anatomy.model import load_sam
from alice.atomic import atomic_write
from alice.data.cohort import CaseRecord, LoadedCase, load_case
from alice.data.io import Volume, resample_volume
from alice.errors import InputError

log = logging.getLogger(__name__)

SOURCES = ("alice", "sam", "untrained")
NETWORKS = ("teacher", "student")
TOKENS = ("decoder", "encoder", "both")
TOKEN_KEYS = {"decoder": ("dec_tokens",), "encoder": ("enc_tokens",), "both": ("dec_tokens", "enc_tokens")}
SAM_PARTS = ("both", "local", "global")
# 2: parity-free decoder upsampling (untrained vectors changed); 3: windows on whole token cells; 4: tilings on a
# lattice over the window step (the same count moves the scan elsewhere)
CACHE_FORMAT = 4
NORM_TOLERANCE = 1e-2  # float16 storage keeps unit vectors within ~1e-3 of norm 1


@dataclass(frozen=True)
class EmbeddingSettings:
    """Which embedding, and how densely.

    Attributes:
        source: ``alice``, ``sam`` or ``untrained``.
        checkpoint: the checkpoint; empty means the shipped one (``alice``, ``sam``) or none (``untrained``).
        network: ``teacher`` or ``student`` backbone (``alice``, ``untrained``).
        tokens: ``decoder``, ``encoder`` or ``both`` tokens (``alice``, ``untrained``); ``both`` (default) joins
            them as SAM joins its local and global parts: the coarse bottleneck tokens, which the cross-patient cls
            loss trains, say where in the body; on the landmarks it lowers the shipped checkpoint's error by about
            a quarter against decoder tokens alone (bench/RESULTS.md).
        sam_part: ``both``, ``local`` or ``global`` (``sam``).
        grid_mm: lattice spacing of the stored vectors.
        overlap: sliding-window overlap (``alice``, ``untrained``); the step it gives is rounded down to whole
            bottleneck cells (``window_step``). 0 by default: the tilings average over the windows' places.
        tilings: how many times (1, 8 or 12) the backbone runs over the scan (``alice``, ``untrained``), the scan
            moved each time so that the windows, and the token cells inside them, fall at evenly spread places
            within one window step (``tiling_offsets``); the vectors are the mean of the runs'. A token stands for
            a whole cell (16 voxels, 32 mm) seen from one place in its window, so one run describes a place between
            two cells, or at a window's edge, less well than one at a cell's centre, and in another scan the same
            anatomy falls anywhere in its cell and window: eight tilings take the shipped checkpoint's landmark
            error from 24.5 mm (one run) to 8.2 mm and its re-tiling error from 14.9 to 3.7 mm
            (bench/RESULTS.md), at about ten times the embedding time of one run.
        spacings_mm: the voxel sizes the backbone sees (``alice``, ``untrained``), one pass (of all tilings) per
            size, their vectors joined as the token sets are. The 48-voxel windows of ``cpu-tiny`` span 96 mm at
            2 mm (the sample cohort's voxels, the training crops'), where neighbouring vertebrae look alike, 288 mm
            at 6 mm, a trunk's width, and the whole body at 12 mm: the coarse passes say which of several
            look-alike places a vector is at, the fine one where exactly. On the landmarks, 2, 6 and 12 mm take the
            shipped checkpoint's error from 15.3 mm (2 mm alone) to 8.2 mm, below SAM's 9.6 mm (bench/RESULTS.md),
            for about a quarter more embedding time; chosen on the training pseudo-subjects, not the held-out ones.
        preset: pretraining preset of the untrained network.
        seed: seed of the untrained network's weights.
    """

    source: str = "alice"
    checkpoint: str = ""
    network: str = "teacher"
    tokens: str = "both"
    sam_part: str = "both"
    grid_mm: float = 6.0
    overlap: float = 0.0
    tilings: int = 8
    spacings_mm: tuple[float, ...] = (2.0, 6.0, 12.0)
    preset: str = "cpu-tiny"
    seed: int = 0

    def resolved(self) -> EmbeddingSettings:
        """The settings with the default checkpoint filled in, checked.

        Raises:
            InputError: an unknown choice or a missing checkpoint, named.
        """
        for name, allowed in (("source", SOURCES), ("network", NETWORKS), ("tokens", TOKENS),
                              ("sam_part", SAM_PARTS)):
            if getattr(self, name) not in allowed:
                raise InputError(None, f"embedding {name} {getattr(self, name)!r} is not one of {list(allowed)}")
        spacings = tuple(float(s) for s in self.spacings_mm)
        if self.grid_mm <= 0 or not 0 <= self.overlap < 1 or not spacings or min(spacings) <= 0:
            raise InputError(None, f"grid_mm ({self.grid_mm}) and spacings_mm ({list(spacings)}) must be positive "
                                   f"and overlap ({self.overlap}) in [0, 1)")
        if self.tilings not in TILING_GENERATORS:
            raise InputError(None, f"embedding tilings {self.tilings} is not one of {list(TILING_GENERATORS)}")
        checkpoint = self.checkpoint
        if self.source == "untrained":
            checkpoint = ""
        elif not checkpoint:
            checkpoint = str(paths.alice_checkpoint() if self.source == "alice" else paths.sam_checkpoint())
        if checkpoint and not Path(checkpoint).is_file():
            raise InputError(checkpoint, f"no such {self.source} checkpoint file")
        return dataclasses.replace(self, checkpoint=str(Path(checkpoint).resolve()) if checkpoint else "",
                                   spacings_mm=spacings)

    def relevant(self) -> dict:
        """The settings that change the vectors of this source (the others are left out of the key)."""
        common = {"source": self.source, "grid_mm": self.grid_mm}
        if self.source == "sam":
            return {**common, "sam_part": self.sam_part}
        from alice.models import build

        # The network version too: a change to the backbone's code changes the untrained source's vectors, whose
        # settings and (absent) checkpoint stay the same.
        network = {"network": self.network, "tokens": self.tokens, "overlap": self.overlap, "tilings": self.tilings,
                   "spacings_mm": list(self.spacings_mm), "network_version": build.NETWORK_VERSION}
        if self.source == "untrained":
            return {**common, **network, "preset": self.preset, "seed": self.seed}
        return {**common, **network}

    def key(self) -> str:
        """Identifies the vectors these (resolved) settings produce: the checkpoint's content and the settings."""
        checkpoint = content_hash(self.checkpoint) if self.checkpoint else "none"
        text = json.dumps({**self.relevant(), "checkpoint": checkpoint, "format": CACHE_FORMAT}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def label(self) -> str:
        """A short human name, e.g. ``alice teacher decoder`` or ``sam both``."""
        if self.source == "sam":
            return f"sam {self.sam_part}"
        return f"{self.source} {self.network} {self.tokens}"


@dataclass(frozen=True, eq=False)
class DenseEmbedding:
    """The vectors of one case under one source.

    Attributes:
        case_id: the case.
        vectors: (N, D) float32 unit vectors (float16 on disk).
        ijk: (N, 3) int32 voxel indices in the case's image (canonical RAS+ as loaded).
        xyz_mm: (N, 3) float32 world mm.
        label: (N,) int32 label value under each vector (0 without a label map).
        hu: (N,) float32 HU under each vector.
        lattice_origin: (3,) the voxel of lattice point (0, 0, 0).
        lattice_step: (3,) voxels between lattice points: lattice point p is voxel ``origin + step * p``.
        lattice_index: (lattice shape) int32, the row of each lattice point, -1 outside the body.
        affine: the case image's voxel -> world mm.
    """

    case_id: str
    vectors: np.ndarray
    ijk: np.ndarray
    xyz_mm: np.ndarray
    label: np.ndarray
    hu: np.ndarray
    lattice_origin: np.ndarray
    lattice_step: np.ndarray
    lattice_index: np.ndarray
    affine: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


# ---------------------------------------------------------------------------------------------------------------
# Embedding one case


def lattice(image: Volume, grid_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lattice points inside the body: their voxels (N, 3), the lattice origin and step (3,) in voxels, and the
    lattice -> row index."""
    step = np.maximum(np.rint(grid_mm / image.spacing_mm), 1).astype(np.int64)
    offset = (np.asarray(image.shape) - 1) % step // 2  # centre the lattice in the volume
    axes = [np.arange(o, n, s) for o, n, s in zip(offset, image.shape, step)]
    inside = body_mask(image.array)[np.ix_(*axes)]
    index = np.full(inside.shape, -1, dtype=np.int32)
    index[inside] = np.arange(int(inside.sum()), dtype=np.int32)
    points = np.argwhere(inside)
    ijk = np.stack([axes[a][points[:, a]] for a in range(3)], axis=1)
    return ijk, offset, step, index


def embed_case(case: LoadedCase, settings: EmbeddingSettings, network=None) -> DenseEmbedding:
    """The dense embedding of a loaded case (not cached; see ``cached_dense_embedding``).

    Args:
        case: the case.
        settings: resolved settings.
        network: the network of ``load_network``, to reuse across cases (``alice`` / ``untrained``: else loaded
            here). For ``sam`` only to embed a case made in memory: without it SAM's per-file cache is used.
    """
    image = case.image
    ijk, origin, step, index = lattice(image, settings.grid_mm)
    xyz_mm = image.ijk_to_xyz(ijk)
    if settings.source == "sam":
        sam = (cached_embedding(settings.checkpoint, case.record) if network is None
               else embed_sam_case(network, image))
        vectors = _sam_vectors(sam, settings, xyz_mm)
    else:
        vectors = _backbone_vectors(image, settings, xyz_mm, network or load_network(settings))
    label = case.label.array[tuple(ijk.T)].astype(np.int32) if case.label is not None else np.zeros(len(ijk), np.int32)
    return DenseEmbedding(case.record.case_id, vectors.astype(np.float16).astype(np.float32), ijk.astype(np.int32),
                          xyz_mm.astype(np.float32), label, image.array[tuple(ijk.T)].astype(np.float32),
                          origin.astype(np.int32), step.astype(np.int32), index, image.affine.astype(np.float64))


def _sam_vectors(sam: CaseEmbedding, settings: EmbeddingSettings, xyz_mm: np.ndarray) -> np.ndarray:
    parts = []
    if settings.sam_part in ("local", "both"):
        parts.append(sample_at_mm(sam.local_tensor, sam.local_affine, xyz_mm))
    if settings.sam_part in ("global", "both"):
        parts.append(sample_at_mm(sam.global_tensor, sam.global_affine, xyz_mm))
    return joined_unit_vectors(parts)


def load_network(settings: EmbeddingSettings):
    """The network of resolved settings: for ``alice`` / ``untrained`` the ``AliceSSL`` model in eval mode and its
    pretraining config, for ``sam`` the ``SAMNet``."""
    from alice.pretrain.inspect import load_model

    if settings.source == "sam":
        return load_sam(settings.checkpoint).model

    model, config, _ = load_model(settings.checkpoint or None, settings.preset, settings.seed)
    return model, config


@torch.no_grad()
def _backbone_vectors(image: Volume, settings: EmbeddingSettings, xyz_mm: np.ndarray, network) -> np.ndarray:
    """The joined vectors of the backbone's passes over the scan at each of ``settings.spacings_mm``."""
    parts = []
    for spacing_mm in settings.spacings_mm:
        resampled = image if np.allclose(image.spacing_mm, spacing_mm) else resample_volume(image, spacing_mm)
        parts.append(torch.from_numpy(_tiled_vectors(resampled, settings, xyz_mm, network)))
    return joined_unit_vectors(parts)


def _tiled_vectors(image: Volume, settings: EmbeddingSettings, xyz_mm: np.ndarray, network) -> np.ndarray:
    """(N, C) unit vectors at ``xyz_mm``: the mean of the backbone's tilings over ``image`` at its voxel size."""
    from monai.inferers import sliding_window_inference

    from alice.models.tokens import tokens_to_grid
    from alice.pretrain.views import window_hu

    model, config = network
    backbone = (model.teacher if settings.network == "teacher" else model.student).backbone
    keys = TOKEN_KEYS[settings.tokens]

    def token_maps(crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = backbone(crops, None)
        return tuple(tokens_to_grid(out[key], tuple(backbone.token_grid[key])) for key in keys)

    roi = config.model.roi
    cell = roi // min(min(grid) for grid in backbone.token_grid.values())
    step = window_step(roi, cell, settings.overlap)
    volume = torch.from_numpy(window_hu(image.array, config.views.hu_window))[None, None]
    total = 0.0
    for offset in tiling_offsets(step, settings.tilings):
        # The scan padded by ``offset`` at the near ends moves every token cell by that much; padded at the far
        # ends so that every window, the last ones too, starts a whole number of steps in: the token cells of all
        # windows then cover the same voxels (zero is air after windowing, as outside any crop).
        far = [roi + -(-max(size + o - roi, 0) // step) * step - size - o for size, o in zip(image.shape, offset)]
        padded = F.pad(volume, (offset[2], far[2], offset[1], far[1], offset[0], far[0]))
        # MONAI stitches the overlapping windows' token maps into one map per token set, at the tokens' stride.
        # Its step is int(roi * (1 - overlap)): half a voxel more than ``step`` survives that rounding (a step of
        # a whole window is overlap 0).
        feature_maps = sliding_window_inference(padded, (roi,) * 3, sw_batch_size=4, predictor=token_maps,
                                                overlap=max(0.0, 1 - (step + 0.5) / roi), mode="gaussian",
                                                padding_mode="constant", cval=0.0)
        if isinstance(feature_maps, torch.Tensor):  # MONAI returns a one-map tuple as the bare map
            feature_maps = (feature_maps,)
        parts = []
        for feature_map in feature_maps:
            feature_map = feature_map[0]
            stride = np.asarray(padded.shape[2:]) / np.asarray(feature_map.shape[1:])
            # Token cell c covers voxels [c * s, (c + 1) * s) of the padded scan, so its centre is voxel
            # c * s + (s - 1) / 2 - offset of the scan.
            affine = image.affine.copy()
            affine[:3, :3] = image.affine[:3, :3] * stride
            affine[:3, 3] = image.ijk_to_xyz((stride - 1) / 2 - np.asarray(offset))
            parts.append(sample_at_mm(feature_map.float(), affine, xyz_mm))
        total = total + joined_unit_vectors(parts)
    # The mean of the tilings' unit vectors, renormalised: where a token set's tilings disagree, their mean is
    # shorter, so that set counts for less in the joined vector there.
    return total / np.linalg.norm(total, axis=1, keepdims=True)


# Per number of tilings, the generator of the rank-1 lattice that places them (``tiling_offsets``): its entries
# are prime to the count, so each axis sees every one of its evenly spread places once, and the three axes move in
# different orders, so the runs are spread over the whole cube of window places, not along its diagonal.
TILING_GENERATORS = {1: (1, 1, 1), 8: (1, 3, 5), 12: (1, 5, 7)}


def tiling_offsets(step: int, tilings: int) -> list[tuple[int, int, int]]:
    """How far (voxels per axis) each tiling moves the scan: run k moves it by ``step * (k * g mod n) / n``
    (rounded down) along each axis, g the axis's entry of the lattice generator and n the number of tilings, so the
    windows, and the token cells inside them, fall at n evenly spread places within one window step."""
    generator = TILING_GENERATORS[tilings]
    return [tuple(step * (k * g % tilings) // tilings for g in generator) for k in range(tilings)]


def window_step(roi: int, cell: int, overlap: float) -> int:
    """The sliding windows' step in voxels: ``roi * (1 - overlap)`` rounded down to whole bottleneck cells of
    ``cell`` voxels (at least one), so the token cells of overlapping windows fall on the same voxels."""
    return max(cell, int(roi * (1 - overlap)) // cell * cell)


def joined_unit_vectors(parts: list[torch.Tensor]) -> np.ndarray:
    """(N, C_i) parts -> (N, sum C_i) unit vectors: each part normalised, then all scaled by 1/sqrt(parts), so the
    cosine of two joined vectors is the mean of their parts' cosines."""
    return (torch.cat([F.normalize(p, dim=1) for p in parts], dim=1) / len(parts) ** 0.5).numpy()


# ---------------------------------------------------------------------------------------------------------------
# The on-disk cache


def cache_entry_path(record: CaseRecord, settings: EmbeddingSettings) -> tuple[Path, str]:
    """Where a case's dense embedding under resolved settings is kept, and the key stored in it."""
    image_hash, settings_key = content_hash(record.image), settings.key()
    label_hash = content_hash(record.label) if record.label is not None else "none"
    key = f"dense-v{CACHE_FORMAT}:{settings_key}:{image_hash}:{label_hash}"
    folder = paths.workspace_dir() / "embeddings" / "dense" / settings_key[:16]
    return folder / f"{record.case_id}-{image_hash[:16]}.npz", key


def cached_dense_embedding(record: CaseRecord, settings: EmbeddingSettings, network=None) -> DenseEmbedding:
    """A case's dense embedding: read from the cache, or computed and stored.

    Args:
        record: the case.
        settings: resolved settings (``EmbeddingSettings.resolved``).
        network: a loaded (model, config) to reuse across cases (``alice`` / ``untrained``).

    Raises:
        InputError: an unreadable image, label map or checkpoint.
    """
    path, key = cache_entry_path(record, settings)
    if path.exists():
        embedding = read_entry(path, key)
        if embedding is not None:
            return embedding
    embedding = embed_case(load_case(record), settings, network)
    write_entry(path, key, embedding)
    log.info("embedded %s (%s, %d vectors) -> %s", record.case_id, settings.label(), len(embedding), path)
    return embedding


def write_entry(path: Path, key: str, embedding: DenseEmbedding) -> Path:
    """Store an embedding with its key, atomically."""
    arrays = {f.name: getattr(embedding, f.name) for f in dataclasses.fields(DenseEmbedding)}
    arrays["vectors"] = embedding.vectors.astype(np.float16)  # half the disk; rounding stays below 1e-3

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(f, key=np.array(key), **arrays)

    return atomic_write(path, write)


def read_entry(path: Path, key: str) -> DenseEmbedding | None:
    """The embedding at ``path`` if it holds ``key`` and is whole; otherwise None (and why, logged)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                log.info("dense embedding %s is stale (its key differs); recomputing", path)
                return None
            fields = {f.name: data[f.name] for f in dataclasses.fields(DenseEmbedding)}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("dense embedding %s is unreadable (%s); recomputing", path, exc)
        return None
    embedding = DenseEmbedding(**{**fields, "case_id": str(fields["case_id"]),
                                  "vectors": fields["vectors"].astype(np.float32)})
    n = len(embedding)
    shapes_ok = (embedding.ijk.shape == (n, 3) and embedding.xyz_mm.shape == (n, 3) and embedding.label.shape == (n,)
                 and embedding.hu.shape == (n,) and int((embedding.lattice_index >= 0).sum()) == n)
    norms = np.linalg.norm(embedding.vectors, axis=1)
    if not shapes_ok or not np.all(np.abs(norms - 1) < NORM_TOLERANCE):
        log.warning("dense embedding %s is damaged (shapes or norms); recomputing", path)
        return None
    return embedding


def shard(records: list[CaseRecord], rank: int | None = None, world_size: int | None = None) -> list[CaseRecord]:
    """This process's share of the cases: every ``world_size``-th from ``rank`` (torchrun's variables by default)."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    return records[rank::world_size]


def embed_cohort(records: list[CaseRecord], settings: EmbeddingSettings, progress=None) -> list[DenseEmbedding]:
    """Dense embeddings of ``records`` (cached), loading the network once.

    Args:
        records: the cases (pass ``shard(records)`` to split them across torchrun ranks).
        settings: the settings; resolved here.
        progress: called with (done, total, case id) after each case.
    """
    settings = settings.resolved()
    network = None
    out = []
    for done, record in enumerate(records, start=1):
        path, key = cache_entry_path(record, settings)
        embedding = read_entry(path, key) if path.exists() else None
        if embedding is None:
            if network is None and settings.source != "sam":
                network = load_network(settings)
            embedding = cached_dense_embedding(record, settings, network)
        out.append(embedding)
        if progress is not None:
            progress(done, len(records), record.case_id)
    return out


def content_key(embedding_record: CaseRecord, settings: EmbeddingSettings) -> str:
    """The cache key of a case under resolved settings: what an index built from it records."""
    return cache_entry_path(embedding_record, settings)[1]


def index_folder(settings: EmbeddingSettings) -> Path:
    """Where the FAISS index of (resolved) settings lives: one per source, over whichever cases it was built on."""
    return paths.workspace_dir() / "indexes" / settings.key()[:16]


def cohort_index(records: list[CaseRecord], embeddings: list[DenseEmbedding], settings: EmbeddingSettings,
                 **build_options):
    """The FAISS index of these cases' embeddings, loaded when current, else (re)built and saved."""
    from alice.explore.index import IndexPart, load_or_build

    parts = [IndexPart(e.case_id, content_key(r, settings), e.vectors) for r, e in zip(records, embeddings)]
    return load_or_build(index_folder(settings), parts, settings.key(), **build_options)
