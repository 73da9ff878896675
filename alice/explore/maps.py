"""Maps of dense embeddings: 2-D projections of a cohort's patches, selections on them, and colour pictures.

A projection puts every patch vector (one per lattice point, see :mod:`alice.explore.dense`) of a few cases on a
plane: PCA (linear, a second or so) or UMAP (McInnes et al., "UMAP: Uniform Manifold Approximation and Projection
for Dimension Reduction", 2018; non-linear, keeps neighbourhoods, a minute or more). Above ``max_points`` a seeded
uniform sample of the patches is projected: a scatter plot of more points is slow to draw and to select in the
browser. Each projected point keeps its case, row, voxel, world mm, label and HU, so a selection on the plane maps
back to places in the volumes. Painted back onto the image grid, a patch covers its lattice cell: the voxels whose
nearest lattice point it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from alice.explore.dense import DenseEmbedding

METHODS = ("pca", "umap")
MAX_POINTS = 50_000
RGB_PERCENTILES = (1.0, 99.0)
TABLE_COLUMNS = ["id", "case", "row", "i", "j", "k", "x_mm", "y_mm", "z_mm", "label", "structure"]


@dataclass(frozen=True, eq=False)
class Projection:
    """Patches of one or more cases placed on a plane.

    Attributes:
        points: (M, 2) float32 coordinates on the plane.
        case_ids: (M,) the case of each point.
        rows: (M,) int, the point's row in its case's ``DenseEmbedding``.
        label: (M,) int label value under the patch (0: background or no label map).
        hu: (M,) HU under the patch.
        xyz_mm: (M, 3) world mm.
        ijk: (M, 3) voxel in the case's image.
        method: ``pca`` or ``umap``.
        n_total: patches of the cases before subsampling.
        subsampled: whether the points are a sample of the patches.
    """

    points: np.ndarray
    case_ids: np.ndarray
    rows: np.ndarray
    label: np.ndarray
    hu: np.ndarray
    xyz_mm: np.ndarray
    ijk: np.ndarray
    method: str
    n_total: int
    subsampled: bool

    def __len__(self) -> int:
        return int(self.points.shape[0])


def project(embeddings: Sequence[DenseEmbedding], method: str = "pca", max_points: int = MAX_POINTS,
            seed: int = 0) -> Projection:
    """Project the patches of ``embeddings`` to 2-D.

    Args:
        embeddings: the cases' dense embeddings, all from one source (same dimension).
        method: ``pca`` or ``umap`` (cosine metric, 15 neighbours, min_dist 0.1).
        max_points: above this many patches, a uniform sample of this size (over all cases) is projected.
        seed: seeds the sample and UMAP (which then runs on one thread), so a map is reproducible.

    Raises:
        ValueError: an unknown method, no patches, or embeddings of different dimensions.
    """
    if method not in METHODS:
        raise ValueError(f"projection method {method!r} is not one of {list(METHODS)}")
    if max_points < 3:
        raise ValueError(f"max_points must be at least 3, got {max_points}")
    if len({e.dim for e in embeddings}) > 1:
        raise ValueError(f"embeddings of different dimensions: {sorted({e.dim for e in embeddings})}")
    sizes = np.array([len(e) for e in embeddings], dtype=np.int64)
    n_total = int(sizes.sum())
    if n_total < 3:
        raise ValueError(f"too few patches to project ({n_total})")
    chosen = np.arange(n_total)
    if n_total > max_points:
        chosen = np.sort(np.random.default_rng(seed).choice(n_total, max_points, replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    case_of = np.searchsorted(starts, chosen, side="right") - 1
    rows = chosen - starts[case_of]
    # ``chosen`` is sorted, so each case's points are one contiguous run in case order.
    per_case = [(e, rows[case_of == c]) for c, e in enumerate(embeddings)]

    def gather(field: str) -> np.ndarray:
        return np.concatenate([getattr(e, field)[r] for e, r in per_case])

    vectors = gather("vectors").astype(np.float32)
    return Projection(_fit(vectors, method, seed), np.concatenate([np.full(len(r), e.case_id) for e, r in per_case]),
                      rows, gather("label"), gather("hu"), gather("xyz_mm"), gather("ijk"), method, n_total,
                      len(chosen) < n_total)


def _fit(vectors: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(vectors).astype(np.float32)
    import umap  # 3-5 s to import: only when asked for

    # A seed makes UMAP single-threaded (n_jobs=1 says so, and keeps it from warning).
    reducer = umap.UMAP(n_components=2, random_state=seed, n_jobs=1, n_neighbors=min(15, len(vectors) - 1),
                        min_dist=0.1, metric="cosine")
    return reducer.fit_transform(vectors).astype(np.float32)


def structure_names(projection: Projection, label_names: Mapping[str, Mapping[int, str]]) -> np.ndarray:
    """The structure under each point: its label's name in its case (cases may number labels differently),
    ``background`` for 0, ``label <value>`` for an unnamed value."""
    names = np.empty(len(projection), dtype=object)
    for case_id in np.unique(projection.case_ids):
        in_case = projection.case_ids == case_id
        case_names = label_names.get(str(case_id), {})
        values, inverse = np.unique(projection.label[in_case], return_inverse=True)
        lookup = np.array([case_names.get(int(v), "background" if v == 0 else f"label {v}") for v in values],
                          dtype=object)
        names[in_case] = lookup[inverse]
    return names


def selection_table(projection: Projection, indices, label_names: Mapping[str, Mapping[int, str]]) -> pd.DataFrame:
    """The selected points, one row each: id (index into the projection), case, row in the case's embedding,
    voxel, world mm, label value and structure name.

    Args:
        projection: the projection the indices refer to.
        indices: point ids, e.g. a box or lasso selection.
        label_names: case id -> label value -> structure name.

    Raises:
        IndexError: an id outside the projection.
    """
    ids = np.asarray(indices, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= len(projection)):
        raise IndexError(f"point ids must lie in [0, {len(projection)}), got {ids.min()}..{ids.max()}")
    ijk, xyz = projection.ijk[ids], projection.xyz_mm[ids]
    return pd.DataFrame({
        "id": ids, "case": projection.case_ids[ids].astype(str), "row": projection.rows[ids],
        "i": ijk[:, 0], "j": ijk[:, 1], "k": ijk[:, 2], "x_mm": xyz[:, 0], "y_mm": xyz[:, 1], "z_mm": xyz[:, 2],
        "label": projection.label[ids], "structure": structure_names(projection, label_names)[ids].astype(str),
    }, columns=TABLE_COLUMNS)


def voxel_rows(embedding: DenseEmbedding, image_shape) -> np.ndarray:
    """(X, Y, Z) int32: for every voxel of the case's image, the row of its nearest lattice point (-1 where that
    point lies outside the body)."""
    axes = []
    for axis, n in enumerate(image_shape):
        origin, step = int(embedding.lattice_origin[axis]), int(embedding.lattice_step[axis])
        # Round halves up (not to even), so every cell spans the same voxels.
        nearest = np.floor((np.arange(n) - origin) / step + 0.5).astype(np.int64)
        axes.append(np.clip(nearest, 0, embedding.lattice_index.shape[axis] - 1))
    return embedding.lattice_index[np.ix_(*axes)]


def selection_mask(projection: Projection, indices, embedding: DenseEmbedding, image_shape) -> np.ndarray:
    """(X, Y, Z) bool: the lattice cells of the selected points that belong to ``embedding``'s case."""
    ids = np.asarray(indices, dtype=np.int64).reshape(-1)
    rows = projection.rows[ids[projection.case_ids[ids] == embedding.case_id]]
    chosen = np.zeros(len(embedding) + 1, dtype=bool)  # the extra last entry is what row -1 (outside) reads
    chosen[rows] = True
    return chosen[voxel_rows(embedding, image_shape)]


def pca_rgb_volume(embedding: DenseEmbedding, image_shape) -> np.ndarray:
    """The case's patches coloured by their first three principal components (red, green, blue), painted on their
    lattice cells: (X, Y, Z, 3) float32 in [0, 1], NaN outside the body.

    Each component is scaled between its 1st and 99th percentile and clipped, so a few outliers do not wash the
    colours out. Similar colours mean similar vectors within this case (the components are the case's own).
    """
    vectors = embedding.vectors.astype(np.float32)
    components = PCA(n_components=min(3, *vectors.shape), random_state=0).fit_transform(vectors)
    colours = np.zeros((len(vectors), 3), dtype=np.float32)
    low, high = np.percentile(components, RGB_PERCENTILES, axis=0)
    colours[:, :components.shape[1]] = np.clip((components - low) / np.maximum(high - low, 1e-12), 0, 1)
    colours = np.concatenate([colours, np.full((1, 3), np.nan, np.float32)])  # row -1 (outside) reads NaN
    return colours[voxel_rows(embedding, image_shape)]
