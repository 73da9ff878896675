"""View-pair mining: Alice's cross-patient, anatomy-matched views and the two ablation baselines.

Alice (Jiang et al., ICCV 2023) draws a random foreground point in a query scan, finds the same anatomy in a
*different* scan with SAM, and accepts the pair when the match score reaches a threshold (else draws again, up
to a limit). The ablation modes: ``random_cross`` pairs the query point with a random foreground point of another
scan (cross-patient views without anatomical matching); ``same_volume`` takes two random crops of one scan (the
conventional SSL baseline). Every pair is given by its two crop centres in world mm (and voxels of each image).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from alice.anatomy.match import match_points
from alice.atomic import atomic_write
from alice.data.io import Volume
from alice.errors import InputError

MODES = ("sam", "random_cross", "same_volume")
FOREGROUND_HU = -125.0  # Alice's rule: HU above the lower end of its [-125, 225] window
DEFAULT_THRESHOLD = 0.7
DEFAULT_MAX_TRIES = 100
# Query points matched together: 2 in the first round, doubling up to 16 (most pairs are accepted at the first
# point, and matching costs per point); the first accepted one wins, so tries stay exact.
FIRST_ROUND_CANDIDATES = 2
MAX_ROUND_CANDIDATES = 16


@dataclass(frozen=True)
class MiningCase:
    """What mining needs of a case: its image and, for ``sam`` mode, its SAM embedding."""

    case_id: str
    image: Volume
    embedding: object | None = None  # alice.anatomy.cache.CaseEmbedding


@dataclass(frozen=True)
class ViewPair:
    """A mined pair of crop centres: the query view in one case, the key view in another (or the same)."""

    mode: str
    query_case: str
    key_case: str
    query_xyz_mm: tuple[float, float, float]
    key_xyz_mm: tuple[float, float, float]
    query_ijk: tuple[int, int, int]
    key_ijk: tuple[int, int, int]
    score: float  # SAM similarity of the match; NaN for the random modes
    tries: int
    accepted: bool  # False when no candidate reached the threshold within max_tries (the best one is kept)

    def to_row(self) -> dict:
        """A flat table row: one column per coordinate."""
        row = {"mode": self.mode, "query_case": self.query_case, "key_case": self.key_case}
        for view in ("query", "key"):
            row.update({f"{view}_{axis}_mm": v for axis, v in zip("xyz", getattr(self, f"{view}_xyz_mm"))})
            row.update({f"{view}_{axis}": v for axis, v in zip("ijk", getattr(self, f"{view}_ijk"))})
        row.update(score=self.score, tries=self.tries, accepted=self.accepted)
        return row


def foreground_points(image: Volume, n: int, rng: np.random.Generator, margin_voxels: int = 10,
                      hu_min: float = FOREGROUND_HU) -> np.ndarray:
    """``n`` random voxels (n, 3) with HU above ``hu_min`` and at least ``margin_voxels`` from the border."""
    margin = np.minimum(margin_voxels, (np.array(image.shape) - 1) // 2)
    inner = image.array[margin[0]:image.shape[0] - margin[0], margin[1]:image.shape[1] - margin[1],
                        margin[2]:image.shape[2] - margin[2]]
    candidates = np.flatnonzero(inner > hu_min)
    if candidates.size == 0:
        raise InputError(image.source, f"no voxel above {hu_min:g} HU away from the border: nothing to crop")
    picked = rng.choice(candidates, size=n, replace=True)
    return np.stack(np.unravel_index(picked, inner.shape), axis=1) + margin


def mine_view_pair(query: MiningCase, others: list[MiningCase], mode: str, rng: np.random.Generator,
                   threshold: float = DEFAULT_THRESHOLD, max_tries: int = DEFAULT_MAX_TRIES,
                   margin_voxels: int = 10) -> ViewPair:
    """Mine one view pair with ``query`` as the query case and a random case of ``others`` as the key.

    Raises:
        InputError: cross-patient modes without another case, or ``sam`` mode without embeddings.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    if mode == "same_volume":
        points = foreground_points(query.image, 2, rng, margin_voxels)
        return _pair(mode, query, query, points[0], points[1], float("nan"), 1, True)
    others = [c for c in others if c.case_id != query.case_id]
    if not others:
        raise InputError(None, f"cross-patient mining ({mode}) needs at least two cases; the cohort has only "
                               f"{query.case_id!r}. Add a case, or use mode same_volume")
    key = others[int(rng.integers(len(others)))]
    if mode == "random_cross":
        return _pair(mode, query, key, foreground_points(query.image, 1, rng, margin_voxels)[0],
                     foreground_points(key.image, 1, rng, margin_voxels)[0], float("nan"), 1, True)
    if query.embedding is None or key.embedding is None:
        raise InputError(None, "sam mining needs SAM embeddings of both cases (run `alice sam embed`)")
    best = None
    tries = 0
    batch = FIRST_ROUND_CANDIDATES
    while tries < max_tries:
        batch = min(batch, max_tries - tries)
        ijk = foreground_points(query.image, batch, rng, margin_voxels)
        result = match_points(query.embedding, key.embedding, query.image.ijk_to_xyz(ijk), cycle=False)
        scores = np.where(result.valid, result.score, -np.inf)
        accepted = np.flatnonzero(scores >= threshold)
        if accepted.size:
            first = int(accepted[0])
            return _pair(mode, query, key, ijk[first], key.image.xyz_to_ijk(result.xyz_mm[first]),
                         float(scores[first]), tries + first + 1, True)
        top = int(np.argmax(scores))
        if np.isfinite(scores[top]) and (best is None or scores[top] > best[2]):
            best = (ijk[top], key.image.xyz_to_ijk(result.xyz_mm[top]), float(scores[top]))
        tries += batch
        batch = min(2 * batch, MAX_ROUND_CANDIDATES)
    if best is None:
        raise InputError(None, f"no valid SAM match from {query.case_id} to {key.case_id} in {max_tries} tries")
    return _pair(mode, query, key, best[0], best[1], best[2], tries, False)


def mine_view_pairs(cases: list[MiningCase], n: int, mode: str, seed: int, threshold: float = DEFAULT_THRESHOLD,
                    max_tries: int = DEFAULT_MAX_TRIES, progress=None) -> list[ViewPair]:
    """``n`` pairs, each with a random query case; identical for the same seed and cases."""
    if not cases:
        raise InputError(None, "no cases to mine")
    rng = np.random.default_rng(seed)
    indices = range(n)
    pairs = []
    for _ in progress(indices) if progress else indices:
        query = cases[int(rng.integers(len(cases)))]
        pairs.append(mine_view_pair(query, cases, mode, rng, threshold, max_tries))
    return pairs


def mine_cohort(manifest, split: str, n: int, mode: str, seed: int, checkpoint=None,
                threshold: float = DEFAULT_THRESHOLD, max_tries: int = DEFAULT_MAX_TRIES, progress=None) -> list[ViewPair]:
    """Mine ``n`` pairs among the cases of one split of a cohort (SAM embeddings from the cache for ``sam``)."""
    from alice.anatomy.cache import cached_embedding
    from alice.data.cohort import load_manifest
    from alice.data.io import load_volume

    records = load_manifest(manifest).split(split)
    if not records:
        raise InputError(manifest, f"has no case in split {split!r}")
    cases = [MiningCase(r.case_id, load_volume(r.image),
                        cached_embedding(checkpoint, r) if mode == "sam" else None) for r in records]
    return mine_view_pairs(cases, n, mode, seed, threshold, max_tries, progress)


def pairs_table(pairs: list[ViewPair]) -> pd.DataFrame:
    """One row per pair: mode, cases, both centres (mm and voxel), score, tries, accepted."""
    return pd.DataFrame([p.to_row() for p in pairs])


def write_pairs(pairs: list[ViewPair], path: str | Path) -> Path:
    """Write the table of mined pairs as CSV, atomically."""
    table = pairs_table(pairs)
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))


def _pair(mode: str, query: MiningCase, key: MiningCase, query_ijk, key_ijk, score: float, tries: int,
          accepted: bool) -> ViewPair:
    query_ijk = np.rint(np.asarray(query_ijk, dtype=np.float64)).astype(int)
    key_ijk = np.clip(np.rint(np.asarray(key_ijk, dtype=np.float64)), 0, np.array(key.image.shape) - 1).astype(int)
    return ViewPair(mode, query.case_id, key.case_id,
                    tuple(float(v) for v in np.round(query.image.ijk_to_xyz(query_ijk), 3)),
                    tuple(float(v) for v in np.round(key.image.ijk_to_xyz(key_ijk), 3)),
                    tuple(int(v) for v in query_ijk), tuple(int(v) for v in key_ijk), score, tries, accepted)
