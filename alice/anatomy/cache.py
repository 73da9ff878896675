"""Whole-case SAM embeddings, computed once per (image content, checkpoint content) and kept on disk.

An entry lives at ``<workspace>/embeddings/sam/<checkpoint hash>/<case id>-<image hash>.npz`` and stores the
full key, so a changed image or checkpoint never reuses an old entry. Entries are written atomically and checked
on reading (key, shapes, finite unit vectors); an unreadable, partial or stale entry is recomputed and replaced.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from alice import paths
from alice.anatomy.grid import grid_affine, grid_xyz_mm, resample_to_grid, xyz_to_ijk
from alice.anatomy.model import SAMNet, load_sam, normalize_hu
from alice.atomic import atomic_write
from alice.data.cohort import CaseRecord
from alice.data.io import Volume, load_volume, resample_volume

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
# Tissue is above this; lungs, airways and bowel gas are below it but enclosed by tissue.
BODY_THRESHOLD_HU = -500.0
# float16 rounding leaves unit vectors within about 1e-3 of norm 1; anything further is a damaged entry.
NORM_TOLERANCE = 1e-2
HASH_CHUNK_BYTES = 1 << 20


def body_mask(hu: np.ndarray) -> np.ndarray:
    """Voxels inside the body: the largest connected region above -500 HU, with enclosed air (lungs, airways)
    filled in each axial slice. (X, Y, Z) bool."""
    above = hu > BODY_THRESHOLD_HU
    labels, count = ndimage.label(above)
    if count == 0:
        return above
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = labels == sizes.argmax()
    return np.stack([ndimage.binary_fill_holes(largest[:, :, k]) for k in range(largest.shape[2])], axis=2)


@dataclass(frozen=True, eq=False)
class CaseEmbedding:
    """SAM embeddings of a whole case, with the grids that place them in world mm.

    Attributes:
        local_map: (D, x, y, z) float16 unit vectors (local embedding).
        local_affine: voxel -> world mm of the local grid.
        global_map: (D, x', y', z') float16 unit vectors (global embedding).
        global_affine: voxel -> world mm of the global grid.
        global_norm_on_local: (x, y, z) float32 norm of the global map trilinearly upsampled to the local grid.
            Upsampling is linear, so cos(q, up(global)) = up(q . global) / this: matching upsamples one
            similarity channel per point instead of D embedding channels.
        body: (X, Y, Z) bool body mask of the image at the model spacing (see ``body_mask``).
        image_affine: voxel -> world mm of that image grid.
    """

    local_map: np.ndarray
    local_affine: np.ndarray
    global_map: np.ndarray
    global_affine: np.ndarray
    global_norm_on_local: np.ndarray
    body: np.ndarray
    image_affine: np.ndarray

    @functools.cached_property
    def local_tensor(self) -> torch.Tensor:
        """The local map as float32, re-normalised after float16 storage, (D, x, y, z)."""
        local = torch.from_numpy(self.local_map.astype(np.float32))
        return local.div_(torch.linalg.vector_norm(local, dim=0, keepdim=True))

    @functools.cached_property
    def global_tensor(self) -> torch.Tensor:
        """The global map as float32, exactly the values ``global_norm_on_local`` was computed from."""
        return torch.from_numpy(self.global_map.astype(np.float32))

    @functools.cached_property
    def local_xyz_mm(self) -> np.ndarray:
        """World mm of every local voxel, (M, 3), in the order of ``local_tensor.reshape(D, -1)``."""
        return grid_xyz_mm(self.local_map.shape[1:], self.local_affine)

    @functools.cached_property
    def local_in_body(self) -> torch.Tensor:
        """Whether each local voxel lies in the body mask, (M,) bool."""
        return torch.from_numpy(self.in_body(self.local_xyz_mm))

    def inside(self, xyz_mm: np.ndarray) -> np.ndarray:
        """Whether world points (N, 3) lie within the image grid (half a voxel beyond the edge centres)."""
        ijk = xyz_to_ijk(self.image_affine, xyz_mm)
        return np.all((ijk > -0.5) & (ijk < np.array(self.body.shape) - 0.5), axis=1)

    def in_body(self, xyz_mm: np.ndarray) -> np.ndarray:
        """Whether world points (N, 3) fall in the body mask (nearest voxel); False outside the grid."""
        ijk = np.rint(xyz_to_ijk(self.image_affine, xyz_mm)).astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < np.array(self.body.shape)), axis=1)
        out = np.zeros(len(ijk), dtype=bool)
        out[inside] = self.body[tuple(ijk[inside].T)]
        return out


def embed_case(model: SAMNet, image: Volume) -> CaseEmbedding:
    """Embed a whole image: resample to the model spacing, scale, one forward pass (eval mode, no gradients)."""
    resampled = resample_volume(image, model.spacing_mm)
    hu = resampled.array.astype(np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model(normalize_hu(torch.from_numpy(hu)[None, None], model.hu_clip))
    finally:
        model.train(was_training)
    local, coarse = out["local"][0].numpy().astype(np.float16), out["global"][0].numpy().astype(np.float16)
    local_affine = grid_affine(resampled.affine, model.local_stride)
    global_affine = grid_affine(resampled.affine, model.global_stride)
    upsampled = resample_to_grid(torch.from_numpy(coarse.astype(np.float32)), global_affine, local.shape[1:],
                                 local_affine)
    norm = torch.linalg.vector_norm(upsampled, dim=0).numpy()
    return CaseEmbedding(local, local_affine, coarse, global_affine, norm, body_mask(hu), resampled.affine)


def content_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's relative file names and bytes (DICOM series).

    Remembered per (path, inode, size, modification time) within a process, so repeated look-ups cost a ``stat``
    (an atomic rewrite makes a new inode, so it is seen even within the file system's timestamp resolution).
    """
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = [(p, p.stat()) for p in files]
    return _hash_files(path, tuple((str(p), s.st_ino, s.st_size, s.st_mtime_ns) for p, s in stats))


@functools.lru_cache(maxsize=1024)
def _hash_files(root: Path, stamp: tuple[tuple[str, int, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, *_ in stamp:
        if root.is_dir():
            digest.update(Path(name).relative_to(root).as_posix().encode() + b"\0")
        with open(name, "rb") as f:
            while chunk := f.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()


def cache_entry_path(checkpoint_path: str | Path, record: CaseRecord) -> tuple[Path, str]:
    """Where a case's embedding under a checkpoint is kept, and the key stored in it."""
    image_hash, checkpoint_hash = content_hash(record.image), content_hash(checkpoint_path)
    key = f"sam-cache-v{CACHE_FORMAT}:{image_hash}:{checkpoint_hash}"
    folder = paths.workspace_dir() / "embeddings" / "sam" / checkpoint_hash[:16]
    return folder / f"{record.case_id}-{image_hash[:16]}.npz", key


def cached_embedding(checkpoint_path: str | Path, record: CaseRecord) -> CaseEmbedding:
    """A case's embedding under a checkpoint: read from the cache, or computed and stored.

    Raises:
        InputError: the checkpoint or the image cannot be read.
    """
    path, key = cache_entry_path(checkpoint_path, record)
    if path.exists():
        embedding = read_entry(path, key)
        if embedding is not None:
            return embedding
    checkpoint = load_sam(checkpoint_path)
    embedding = embed_case(checkpoint.model, load_volume(record.image))
    write_entry(path, key, embedding)
    log.info("embedded %s with %s -> %s", record.case_id, checkpoint_path, path)
    return embedding


def write_entry(path: Path, key: str, embedding: CaseEmbedding) -> Path:
    """Store an embedding with its key, atomically."""
    arrays = {"key": np.array(key), "local_map": embedding.local_map, "local_affine": embedding.local_affine,
              "global_map": embedding.global_map, "global_affine": embedding.global_affine,
              "global_norm_on_local": embedding.global_norm_on_local, "body": embedding.body,
              "image_affine": embedding.image_affine}

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, write)


def read_entry(path: Path, key: str) -> CaseEmbedding | None:
    """The embedding stored at ``path`` if it holds ``key`` and passes the checks; otherwise None (and why, logged)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            stored_key = str(data["key"])
            if stored_key != key:
                log.info("cache entry %s is stale (its key differs); recomputing", path)
                return None
            embedding = CaseEmbedding(*(data[f.name] for f in dataclasses.fields(CaseEmbedding)))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("cache entry %s is unreadable (%s); recomputing", path, exc)
        return None
    problem = _entry_problem(embedding)
    if problem:
        log.warning("cache entry %s is damaged (%s); recomputing", path, problem)
        return None
    return embedding


def _entry_problem(embedding: CaseEmbedding) -> str | None:
    """What is wrong with a read entry, or None."""
    maps = {"local_map": embedding.local_map, "global_map": embedding.global_map}
    for name, values in maps.items():
        if values.ndim != 4 or values.dtype != np.float16:
            return f"{name} is {values.dtype} of shape {values.shape}, expected float16 (D, x, y, z)"
    if embedding.local_map.shape[0] != embedding.global_map.shape[0]:
        return "local and global maps differ in channels"
    norm = embedding.global_norm_on_local
    if norm.shape != embedding.local_map.shape[1:] or not np.all((norm > 0) & (norm < 1 + NORM_TOLERANCE)):
        return "the upsampled global norms do not fit the local map"
    if embedding.body.ndim != 3 or embedding.body.dtype != bool:
        return f"body mask is {embedding.body.dtype} of shape {embedding.body.shape}"
    for name in ("local_affine", "global_affine", "image_affine"):
        affine = getattr(embedding, name)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            return f"{name} is not a finite 4x4 matrix"
    for name, values in maps.items():
        norms = np.linalg.norm(values.astype(np.float32), axis=0)
        if not np.all(np.abs(norms - 1) < NORM_TOLERANCE):  # also false for NaN
            return f"{name} holds vectors that are not unit length (or not finite)"
    return None
