"""SAM's contrastive losses on intra-volume view pairs (Yan et al., IEEE TMI 2022, arXiv 2012.02383).

Two views of one scan carry the world-mm position of every voxel (as the affines of their embedding maps), so
the positive of a voxel in one view is the voxel of the other view nearest to the same mm position, if it is
close enough. Negatives are mined: the candidates of the other view most similar to the query (excluding those
near it), then a random subset of them. The global loss also takes random voxels of the batch's other scans.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alice.anatomy.grid import grid_xyz_mm, sample_at_mm, xyz_to_ijk


def info_nce(positive_similarity: torch.Tensor, negative_similarity: torch.Tensor,
             temperature: float) -> torch.Tensor:
    """Per-query InfoNCE: -log(exp(s+/t) / (exp(s+/t) + sum exp(s-/t))).

    Args:
        positive_similarity: (Q,) cosine of each query with its positive.
        negative_similarity: (Q, K) cosines with its negatives; -inf marks an absent negative.
        temperature: t.

    Returns:
        (Q,) losses.
    """
    logits = torch.cat([positive_similarity[:, None], negative_similarity], dim=1) / temperature
    return -F.log_softmax(logits, dim=1)[:, 0]


def mine_negatives(selection: torch.Tensor, excluded: torch.Tensor, hard_candidates: int, negatives: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard-negative mining: the ``hard_candidates`` most similar candidates, then ``negatives`` of them at random.

    Args:
        selection: (Q, M) similarity used to rank candidates (no gradient needed).
        excluded: (Q, M) candidates that may not be negatives (too close to the query).
        hard_candidates: how many of the most similar candidates to keep.
        negatives: how many of those to draw.
        generator: random source of the draw.

    Returns:
        (Q, n) candidate indices and (Q, n) validity (False only where a query had fewer allowed candidates than n).
    """
    ranked = selection.detach().masked_fill(excluded, float("-inf"))
    top_similarity, top_index = ranked.topk(min(hard_candidates, ranked.shape[1]), dim=1)
    allowed = torch.isfinite(top_similarity)
    # Random order among the allowed, excluded ones last: a query keeps min(negatives, allowed) negatives.
    order = (torch.rand(top_index.shape, generator=generator) + (~allowed).float()).argsort(dim=1)[:, :negatives]
    return top_index.gather(1, order), allowed.gather(1, order)


def nearest_voxels(xyz_mm: np.ndarray, shape, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For world points (N, 3): the flat index of the nearest voxel of a grid and its distance in mm.

    Points whose nearest voxel is outside the grid get index 0 and an infinite distance.
    """
    ijk = np.rint(xyz_to_ijk(affine, xyz_mm)).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < np.array(shape)), axis=1)
    ijk = np.where(inside[:, None], ijk, 0)
    distance = np.linalg.norm(ijk @ affine[:3, :3].T + affine[:3, 3] - xyz_mm, axis=1)
    return np.ravel_multi_index(tuple(ijk.T), tuple(shape)), np.where(inside, distance, np.inf)


class SAMLoss(nn.Module):
    """Local + global InfoNCE over the view pairs of a batch.

    Views 2i and 2i+1 are the two views of one scan. All distances are in world mm.

    Args:
        temperature: InfoNCE temperature.
        local_queries: queries per view and direction (local loss).
        local_positive_radius_mm: largest distance from a query to its positive voxel.
        local_ignore_radius_mm: candidates closer than this to the query are not negatives.
        local_hard_candidates: most similar candidates (by local + global similarity) kept for the draw.
        local_negatives: negatives drawn from them.
        global_queries, global_positive_radius_mm, global_ignore_radius_mm, global_hard_candidates,
            global_negatives: the same for the global loss (ranked by global similarity).
        global_positive_z_gap_mm: largest depth-axis (z) distance from a global query to its positive.
        global_cross_negatives: random global voxels of the batch's other scans, shared by a pair's queries.
    """

    def __init__(self, *, temperature: float, local_queries: int, local_positive_radius_mm: float,
                 local_ignore_radius_mm: float, local_hard_candidates: int, local_negatives: int,
                 global_queries: int, global_positive_radius_mm: float, global_positive_z_gap_mm: float,
                 global_ignore_radius_mm: float, global_hard_candidates: int, global_negatives: int,
                 global_cross_negatives: int):
        super().__init__()
        self.temperature = temperature
        self.local_queries = local_queries
        self.local_positive_radius_mm = local_positive_radius_mm
        self.local_ignore_radius_mm = local_ignore_radius_mm
        self.local_hard_candidates = local_hard_candidates
        self.local_negatives = local_negatives
        self.global_queries = global_queries
        self.global_positive_radius_mm = global_positive_radius_mm
        self.global_positive_z_gap_mm = global_positive_z_gap_mm
        self.global_ignore_radius_mm = global_ignore_radius_mm
        self.global_hard_candidates = global_hard_candidates
        self.global_negatives = global_negatives
        self.global_cross_negatives = global_cross_negatives

    def forward(self, local: torch.Tensor, coarse: torch.Tensor, local_affines: np.ndarray,
                global_affines: np.ndarray, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Losses of a batch of view pairs.

        Args:
            local: (V, D, x, y, z) unit-norm local embeddings; V even, views 2i and 2i+1 from one scan.
            coarse: (V, D, x', y', z') unit-norm global embeddings.
            local_affines, global_affines: (V, 4, 4) voxel -> world mm of each view's maps.
            generator: random source of query and negative draws.

        Returns:
            "loss" = "loss/local" + "loss/global"; also "queries/local" and "queries/global" (counts).
        """
        if local.shape[0] % 2:
            raise ValueError(f"views come in pairs; got {local.shape[0]} views")
        views = local.shape[0]
        local_xyz = [grid_xyz_mm(local.shape[2:], a) for a in local_affines]
        global_xyz = [grid_xyz_mm(coarse.shape[2:], a) for a in global_affines]
        local_flat = local.flatten(2).transpose(1, 2)  # (V, M, D)
        global_flat = coarse.flatten(2).transpose(1, 2)  # (V, M', D)
        local_terms, global_terms = [], []
        for a in range(views):
            b = a ^ 1  # the other view of the same scan
            other_scans = [v for v in range(views) if v // 2 != a // 2]
            local_terms.append(self._local_loss(
                local_flat[a], local_flat[b], local_xyz[a], local_xyz[b], local.shape[2:], local_affines[b],
                _global_at(coarse[a], global_affines[a], local_xyz[a]),
                _global_at(coarse[b], global_affines[b], local_xyz[b]), generator))
            cross = global_flat[other_scans].reshape(-1, coarse.shape[1])
            global_terms.append(self._global_loss(
                global_flat[a], global_flat[b], global_xyz[a], global_xyz[b], coarse.shape[2:], global_affines[b],
                cross, generator))
        local_losses, global_losses = torch.cat(local_terms), torch.cat(global_terms)
        # With no query (no overlap anywhere), a zero that keeps the graph, rather than a NaN mean.
        loss_local = local_losses.mean() if len(local_losses) else local.sum() * 0
        loss_global = global_losses.mean() if len(global_losses) else coarse.sum() * 0
        return {"loss": loss_local + loss_global, "loss/local": loss_local, "loss/global": loss_global,
                "queries/local": torch.tensor(len(local_losses)), "queries/global": torch.tensor(len(global_losses))}

    def _local_loss(self, query_map, key_map, query_xyz, key_xyz, key_shape, key_affine, query_global,
                    key_global, generator) -> torch.Tensor:
        """InfoNCE of local queries of one view against the other view (maps flattened to (M, D))."""
        positive, distance = nearest_voxels(query_xyz, key_shape, key_affine)
        chosen = _draw(np.flatnonzero(distance <= self.local_positive_radius_mm), self.local_queries, generator)
        if len(chosen) == 0:
            return query_map.new_zeros(0)
        query = query_map[chosen]  # (Q, D)
        similarity = query @ key_map.T  # (Q, M)
        selection = similarity + query_global[chosen] @ key_global.T
        excluded = _distances(query_xyz[chosen], key_xyz) < self.local_ignore_radius_mm
        index, valid = mine_negatives(selection, excluded, self.local_hard_candidates, self.local_negatives,
                                      generator)
        negatives = similarity.gather(1, index).masked_fill(~valid, float("-inf"))
        return info_nce(similarity[torch.arange(len(chosen)), torch.as_tensor(positive[chosen])], negatives,
                        self.temperature)

    def _global_loss(self, query_map, key_map, query_xyz, key_xyz, key_shape, key_affine, cross,
                     generator) -> torch.Tensor:
        """InfoNCE of global queries of one view against the other view and the batch's other scans."""
        positive, distance = nearest_voxels(query_xyz, key_shape, key_affine)
        z_gap = np.abs(key_xyz[positive, 2] - query_xyz[:, 2])
        eligible = (distance <= self.global_positive_radius_mm) & (z_gap <= self.global_positive_z_gap_mm)
        chosen = _draw(np.flatnonzero(eligible), self.global_queries, generator)
        if len(chosen) == 0:
            return query_map.new_zeros(0)
        query = query_map[chosen]
        similarity = query @ key_map.T
        excluded = _distances(query_xyz[chosen], key_xyz) < self.global_ignore_radius_mm
        index, valid = mine_negatives(similarity, excluded, self.global_hard_candidates, self.global_negatives,
                                      generator)
        negatives = [similarity.gather(1, index).masked_fill(~valid, float("-inf"))]
        if len(cross):
            picked = _draw(np.arange(len(cross)), self.global_cross_negatives, generator)
            negatives.append(query @ cross[picked].T)
        return info_nce(similarity[torch.arange(len(chosen)), torch.as_tensor(positive[chosen])],
                        torch.cat(negatives, dim=1), self.temperature)


def _global_at(coarse: torch.Tensor, affine: np.ndarray, xyz_mm: np.ndarray) -> torch.Tensor:
    """Global embedding (D, ...) trilinearly sampled at points and re-normalised, (N, D); only ranks negatives."""
    with torch.no_grad():
        return F.normalize(sample_at_mm(coarse, affine, xyz_mm), dim=1)


def _draw(candidates: np.ndarray, most: int, generator: torch.Generator) -> np.ndarray:
    """Up to ``most`` of ``candidates`` in random order."""
    order = torch.randperm(len(candidates), generator=generator)[:most].numpy()
    return candidates[order]


def _distances(a_mm: np.ndarray, b_mm: np.ndarray) -> torch.Tensor:
    """(N, M) Euclidean distances between two point sets in mm."""
    return torch.cdist(torch.as_tensor(a_mm, dtype=torch.float32), torch.as_tensor(b_mm, dtype=torch.float32))
