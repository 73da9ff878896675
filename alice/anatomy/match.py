"""Point matching with SAM embeddings: points in world mm of one case in, their matches in another case out.

As in SAM (Yan et al., IEEE TMI 2022): the similarity of a query point p of image A to each voxel of image B is
(cos(local_A(p), local_B) + cos(global_A(p), up(global_B))) / 2, where up() upsamples the global map
trilinearly to B's local grid and re-normalises; the match is the argmax (over B's body), refined to a quarter of
a local voxel by interpolating B's embeddings around it, and the score is its value.
Query embeddings at p are trilinear samples, re-normalised, so a point on a voxel centre uses that voxel.
Trust signals: the score and the cycle error (match A -> B, then back B -> A; distance to p in mm). The cycle
error includes the grid's quantisation: up to half a local voxel diagonal even for a perfect match.

A point outside the query image, or outside the body in it (see ``alice.anatomy.cache.body_mask``: air
enclosed by the body, such as the lungs, counts as body), gets no match and a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
import torch.nn.functional as F

from alice.anatomy.cache import CaseEmbedding
from alice.anatomy.grid import resample_to_grid, sample_at_mm

# Query points per matrix product: bounds the (points, voxels) similarity block to ~35 MB at 70k voxels.
CHUNK_POINTS = 128
# Sub-voxel refinement: lattice points per local voxel on each side (4: quarter-voxel steps, 9^3 candidates).
REFINE_STEPS_PER_VOXEL = 4
REFINE_CHUNK_POINTS = 32


class NoMatch(StrEnum):
    """Why a point has no match."""

    OUTSIDE_VOLUME = "outside the query volume"
    OUTSIDE_BODY = "in air outside the body"


@dataclass(frozen=True, eq=False)
class MatchResult:
    """Matches of N query points.

    Attributes:
        query_xyz_mm: (N, 3) the query points, world mm.
        xyz_mm: (N, 3) matched points in the key case, world mm (NaN where there is no match).
        score: (N,) mean of local and global cosine at the match, in [-1, 1] (NaN where no match).
        cycle_error_mm: (N,) distance from the query point to the match of its match (NaN where no match).
        reasons: (N,) None for a match, else why there is none.
        similarity: (N, x, y, z) similarity maps on the key's local grid when asked for (NaN maps where no
            match), else None.
        similarity_affine: voxel -> world mm of those maps (the key's local grid).
    """

    query_xyz_mm: np.ndarray
    xyz_mm: np.ndarray
    score: np.ndarray
    cycle_error_mm: np.ndarray
    reasons: tuple[NoMatch | None, ...]
    similarity: np.ndarray | None
    similarity_affine: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """(N,) whether each point has a match."""
        return np.array([r is None for r in self.reasons], dtype=bool)


def match_points(query: CaseEmbedding, key: CaseEmbedding, xyz_mm, return_similarity: bool = False,
                 cycle: bool = True) -> MatchResult:
    """Match world points of the query case to the key case.

    Args:
        query: embedding of the case the points are in.
        key: embedding of the case to find them in.
        xyz_mm: (N, 3) or (3,) world points in the query case.
        return_similarity: also return each point's similarity map over the key's local grid.
        cycle: match each result back to the query case for its cycle error (NaN without; half the cost).

    Returns:
        Matches, scores, cycle errors and, per point, validity and the reason for no match.
    """
    xyz_mm = np.atleast_2d(np.asarray(xyz_mm, dtype=np.float64))
    if xyz_mm.ndim != 2 or xyz_mm.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {xyz_mm.shape}")
    n = len(xyz_mm)
    inside = query.inside(xyz_mm)
    in_body = query.in_body(xyz_mm)
    reasons = tuple(None if b else NoMatch.OUTSIDE_VOLUME if not i else NoMatch.OUTSIDE_BODY
                    for i, b in zip(inside, in_body))
    valid = np.flatnonzero(inside & in_body)

    matched = np.full((n, 3), np.nan)
    score = np.full(n, np.nan)
    cycle_mm = np.full(n, np.nan)
    similarity = None
    if return_similarity:
        similarity = np.full((n, *key.local_map.shape[1:]), np.nan, dtype=np.float32)
    if len(valid):
        vectors = vectors_at(query, xyz_mm[valid])
        index, _, maps = _best_voxels(*vectors, key, return_similarity)
        matched[valid], score[valid] = _refine(*vectors, key, key.local_xyz_mm[index])
        if maps is not None:
            similarity[valid] = maps.reshape(len(valid), *key.local_map.shape[1:])
        if cycle:
            back_vectors = vectors_at(key, matched[valid])
            back, _, _ = _best_voxels(*back_vectors, query, False)
            back_xyz_mm, _ = _refine(*back_vectors, query, query.local_xyz_mm[back])
            cycle_mm[valid] = np.linalg.norm(back_xyz_mm - xyz_mm[valid], axis=1)
    return MatchResult(xyz_mm, matched, score, cycle_mm, reasons, similarity, key.local_affine)


def _refine(local: torch.Tensor, coarse: torch.Tensor, key: CaseEmbedding,
            xyz_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-voxel refinement: the best of a fine lattice of positions within one local voxel of each grid match.

    The key's embeddings are interpolated (trilinear, re-normalised, as for query points), which removes most of
    the local grid's quantisation: on the held-out landmarks it lowers the mean error by about 2 mm (8 mm grid).
    Returns the refined points (N, 3) and their similarities (N,); candidates outside the key's body are skipped.
    """
    voxel_mm = np.sqrt((key.local_affine[:3, :3] ** 2).sum(axis=0))
    steps = np.linspace(-1.0, 1.0, 2 * REFINE_STEPS_PER_VOXEL + 1)
    offsets = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), axis=-1).reshape(-1, 3) * voxel_mm
    refined, scores = np.empty_like(xyz_mm), np.empty(len(xyz_mm))
    with torch.no_grad():
        for start in range(0, len(xyz_mm), REFINE_CHUNK_POINTS):
            chunk = slice(start, start + REFINE_CHUNK_POINTS)
            candidates = (xyz_mm[chunk, None, :] + offsets[None]).reshape(-1, 3)  # (n * G, 3)
            key_local, key_global = vectors_at(key, candidates)
            n = len(xyz_mm[chunk])
            similarity = ((key_local.reshape(n, len(offsets), -1) * local[chunk, None]).sum(-1)
                          + (key_global.reshape(n, len(offsets), -1) * coarse[chunk, None]).sum(-1)) / 2
            similarity[~torch.from_numpy(key.in_body(candidates).reshape(n, len(offsets)))] = float("-inf")
            value, at = similarity.max(dim=1)
            refined[chunk] = candidates.reshape(n, len(offsets), 3)[np.arange(n), at.numpy()]
            scores[chunk] = value.numpy()
    return refined, scores


def vectors_at(embedding: CaseEmbedding, xyz_mm: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Local and global unit vectors at world points, (N, D) each: trilinear samples, re-normalised."""
    local = F.normalize(sample_at_mm(embedding.local_tensor, embedding.local_affine, xyz_mm), dim=1)
    coarse = F.normalize(sample_at_mm(embedding.global_tensor, embedding.global_affine, xyz_mm), dim=1)
    return local, coarse


def _best_voxels(local: torch.Tensor, coarse: torch.Tensor, key: CaseEmbedding,
                 keep_maps: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Argmax of the SAM similarity over the key's body voxels for query vectors (N, D) x2.

    Returns:
        Flat local-grid indices (N,), best similarities (N,), and the full similarity maps (N, M) if asked.
    """
    dims = key.local_map.shape[0]
    key_local = key.local_tensor.reshape(dims, -1)  # (D, M)
    key_global = key.global_tensor.reshape(dims, -1)  # (D, M') on the global grid
    global_norm = torch.from_numpy(key.global_norm_on_local.reshape(-1))  # (M,)
    # A key without body voxels (not a CT?) is searched everywhere rather than nowhere.
    outside = ~key.local_in_body if bool(key.local_in_body.any()) else torch.zeros_like(key.local_in_body)
    index, best, maps = [], [], []
    with torch.no_grad():
        for start in range(0, len(local), CHUNK_POINTS):
            chunk = slice(start, start + CHUNK_POINTS)
            n = len(local[chunk])
            # cos with the upsampled, re-normalised global map = upsampled cos-numerator / upsampled norm.
            coarse_dot = (coarse[chunk] @ key_global).reshape(n, *key.global_map.shape[1:])
            up = resample_to_grid(coarse_dot, key.global_affine, key.local_map.shape[1:], key.local_affine)
            similarity = (local[chunk] @ key_local + up.reshape(n, -1) / global_norm) / 2  # (n, M)
            if keep_maps:
                maps.append(similarity.numpy().copy())
            value, at = similarity.masked_fill(outside, float("-inf")).max(dim=1)
            index.append(at.numpy())
            best.append(value.numpy())
    return np.concatenate(index), np.concatenate(best), np.concatenate(maps) if keep_maps else None


def similarity_on_image(result: MatchResult, point: int, image: Volume) -> Volume:
    """One point's similarity map resampled onto the key image's grid (trilinear), for display over the image.

    Raises:
        ValueError: the result holds no similarity maps (match with ``return_similarity=True``).
    """
    if result.similarity is None:
        raise ValueError("match_points was called without return_similarity=True")
    values = torch.from_numpy(np.nan_to_num(result.similarity[point], nan=-1.0)[None].astype(np.float32))
    on_image = resample_to_grid(values, result.similarity_affine, image.shape, image.affine)[0].numpy()
    return image.with_array(on_image)
