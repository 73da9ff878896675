"""Online view pairs for Alice pretraining: a batch of B mined pairs, their crops and their student masks.

Each pair has its own query case (drawn per epoch without replacement, each rank its own share, as a
DistributedSampler would), its own key case and points from ``alice.mining.views.mine_view_pair`` (``sam``:
Alice's SAM-matched cross-patient views; ``random_cross`` and ``same_volume``: the ablations), its own crops of
``roi``^3 voxels centred on those points and its own masks. Crops are windowed to [0, 1] first and padded with 0
outside the volume, so padding reads as the bottom of the HU window. Every random choice comes from the sampler's
generator, seeded with (seed, rank); its state goes into checkpoints so a resumed run draws the same pairs.
With ``shift_voxels`` set, each view also gets a second crop of its scan whose centre is moved by about that many
voxels along one to three axes (the teacher's input of ``alice.pretrain.losses.CorrespondenceLoss``). With
``token_grids`` set and SAM embeddings (``sam`` mode), each token of a view also gets its SAM partner among the
other view's tokens (``sam_partners``), the cross-patient pairs of that loss.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from alice.anatomy.match import vectors_at
from alice.data.io import Volume, load_volume
from alice.errors import InputError
from alice.mining.views import MiningCase, ViewPair, mine_view_pair
from alice.pretrain.losses import token_voxels
from alice.pretrain.masking import make_masks

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class PairBatch:
    """B view pairs ready for the networks.

    Attributes:
        query: (B, 1, R, R, R) float32 query crops in [0, 1], unmasked (the teacher's input).
        key: (B, 1, R, R, R) float32 key crops.
        query_mask: (B, 1, R, R, R) bool, True where the student's query input is zeroed.
        key_mask: (B, 1, R, R, R) bool, the same for the key crops.
        pairs: the mined pairs, one per row.
        shifted: (2B, 1, R, R, R) crops of the query views' scans (rows [0, B)) and the key views' (rows [B, 2B))
            at shifted centres, or None when the sampler makes none.
        shifts: (2B, 3) int64 shift of each of those centres in voxels, or None.
        partners: per token grid (``enc_tokens``, ``dec_tokens``), (2B, N) int64: the token of the other view of
            the pair that SAM matches each token with, -1 where none (``sam_partners``); None without SAM.
    """

    query: torch.Tensor
    key: torch.Tensor
    query_mask: torch.Tensor
    key_mask: torch.Tensor
    pairs: tuple[ViewPair, ...]
    shifted: torch.Tensor | None = None
    shifts: torch.Tensor | None = None
    partners: dict[str, torch.Tensor] | None = None

    def to(self, device: torch.device | str) -> PairBatch:
        """The same batch with its tensors on ``device``."""
        shifted = None if self.shifted is None else self.shifted.to(device)
        shifts = None if self.shifts is None else self.shifts.to(device)
        partners = None if self.partners is None else {k: v.to(device) for k, v in self.partners.items()}
        return PairBatch(self.query.to(device), self.key.to(device), self.query_mask.to(device),
                         self.key_mask.to(device), self.pairs, shifted, shifts, partners)


def window_hu(hu: np.ndarray, hu_window: tuple[float, float]) -> np.ndarray:
    """HU clipped to ``hu_window`` and mapped linearly to [0, 1], float32."""
    low, high = hu_window
    return np.clip((hu.astype(np.float32) - low) / (high - low), 0.0, 1.0)


def crop_window(image: Volume, centre_ijk, roi_voxels: int, hu_window: tuple[float, float]) -> np.ndarray:
    """The (roi, roi, roi) windowed crop whose voxel ``roi // 2`` along each axis is ``centre_ijk``; 0 outside."""
    out = np.zeros((roi_voxels,) * 3, dtype=np.float32)
    start = np.asarray(centre_ijk, dtype=np.int64) - roi_voxels // 2
    low = np.maximum(start, 0)
    high = np.minimum(start + roi_voxels, image.shape)
    if np.any(high <= low):
        return out
    source = tuple(slice(a, b) for a, b in zip(low, high))
    target = tuple(slice(a - s, b - s) for a, b, s in zip(low, high, start))
    out[target] = window_hu(image.array[source], hu_window)
    return out


def shifted_crops(views: list[tuple[Volume, tuple[int, int, int]]], shift_voxels: int, roi_voxels: int,
                  hu_window: tuple[float, float], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """For each (image, crop centre): the crop whose centre moved by -1, 0 or +1 times ``shift_voxels`` per axis
    (never 0 on every axis) plus a jitter of up to half of ``shift_voxels`` either way, as (V, 1, R, R, R)
    float32, and the (V, 3) int64 shifts in voxels. The jitter puts the token cells of the two crops out of step,
    as the windows of two scans are: otherwise tokens need only agree where the cells line up."""
    steps = np.zeros((len(views), 3), dtype=np.int64)
    for row in steps:
        while not row.any():
            row[:] = rng.integers(-1, 2, size=3)
    jitter = rng.integers(-(shift_voxels // 2), shift_voxels // 2 + 1, size=steps.shape)
    shifts = steps * shift_voxels + jitter
    crops = [crop_window(image, np.asarray(ijk) + shift, roi_voxels, hu_window)
             for (image, ijk), shift in zip(views, shifts)]
    return torch.from_numpy(np.stack(crops))[:, None], torch.from_numpy(shifts)


def sam_partners(query: MiningCase, query_voxels: np.ndarray, key: MiningCase, key_voxels: np.ndarray,
                 threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The tokens of two views that SAM matches with each other.

    A query token and a key token are partners when each is the other's best SAM match among the other view's
    tokens (SAM's score, the mean of the local and global cosines, as in mining), both lie in the body and the
    score reaches ``threshold``.

    Args:
        query, key: the two cases, with their SAM embeddings.
        query_voxels, key_voxels: (N, 3) voxels of the two views' tokens (``token_voxels``).
        threshold: the lowest SAM score of a partner.

    Returns:
        (N,) int64 partner of each query token among the key tokens and of each key token among the query
        tokens, -1 where none.
    """
    query_xyz, key_xyz = query.image.ijk_to_xyz(query_voxels), key.image.ijk_to_xyz(key_voxels)
    query_local, query_global = vectors_at(query.embedding, query_xyz)
    key_local, key_global = vectors_at(key.embedding, key_xyz)
    score = ((query_local @ key_local.T + query_global @ key_global.T) / 2).numpy()
    score[~query.embedding.in_body(query_xyz)] = -np.inf
    score[:, ~key.embedding.in_body(key_xyz)] = -np.inf
    best_key, best_query = score.argmax(axis=1), score.argmax(axis=0)
    tokens = np.arange(len(query_voxels))
    mutual = (best_query[best_key] == tokens) & (score[tokens, best_key] >= threshold)
    query_partner = np.where(mutual, best_key, -1)
    key_partner = np.full(len(key_voxels), -1, dtype=np.int64)
    key_partner[best_key[mutual]] = tokens[mutual]
    return query_partner.astype(np.int64), key_partner


def batch_partners(pairs: list[ViewPair], cases: dict[str, MiningCase], roi_voxels: int,
                   token_grids: dict[str, tuple[int, int, int]], threshold: float) -> dict[str, torch.Tensor]:
    """``PairBatch.partners``: per token grid, the (2B, N) SAM partners of every view's tokens (query views first,
    then key views); ``cases`` by id, with their SAM embeddings."""
    centres = torch.tensor([p.query_ijk for p in pairs] + [p.key_ijk for p in pairs])
    n = len(pairs)
    partners = {}
    for key, grid in token_grids.items():
        voxels = token_voxels(centres, roi_voxels, grid).numpy()
        found = [sam_partners(cases[p.query_case], voxels[i], cases[p.key_case], voxels[n + i], threshold)
                 for i, p in enumerate(pairs)]
        partners[key] = torch.from_numpy(np.stack([q for q, _ in found] + [k for _, k in found]))
    return partners


def check_enough_cases(count: int, mode: str, source: str | Path | None) -> None:
    """Refuse cross-patient mining among fewer than two cases.

    Raises:
        InputError: names the mode, the number of cases and the way out.
    """
    if mode != "same_volume" and count < 2:
        raise InputError(source, f"view mode {mode!r} pairs two different patients, but there are only {count} "
                                 "training case(s); add cases or set views.mode=same_volume")


def load_mining_cases(manifest: str | Path, split: str, mode: str,
                      sam_checkpoint: str | Path | None) -> list[MiningCase]:
    """The cases of one split with their images and, for ``sam`` mode, their cached SAM embeddings.

    Raises:
        InputError: an unreadable manifest or image, a split with too few cases for the mode, or a SAM checkpoint
            that cannot be read.
    """
    from alice.anatomy.cache import cached_embedding
    from alice.data.cohort import load_manifest

    records = load_manifest(manifest).split(split)
    check_enough_cases(len(records), mode, manifest)
    cases = []
    for record in records:
        embedding = cached_embedding(sam_checkpoint, record) if mode == "sam" else None
        cases.append(MiningCase(record.case_id, load_volume(record.image), embedding))
    log.info("view mining (%s) over %d case(s) of split %r: %s", mode, len(cases), split,
             ", ".join(c.case_id for c in cases))
    return cases


class PairSampler:
    """Draws batches of view pairs for one rank, reproducibly.

    Args:
        cases: the training cases (every rank gets the same list).
        mode: ``sam``, ``random_cross`` or ``same_volume``.
        roi_voxels: crop edge in voxels.
        hu_window: HU mapped to [0, 1].
        threshold: SAM score a match must reach.
        max_tries: query points per pair at most.
        margin_voxels: query points stay this far from the border.
        mask_cell_voxels: mask cell edge in voxels.
        mask_ratio: fraction of cells masked.
        mask_shape: ``tube`` or ``cube``.
        batch_pairs: pairs per batch.
        seed: the run's seed.
        rank: this process's rank; ranks draw different query cases and points.
        world_size: number of ranks.
        shift_voxels: step of the shifted crops' centres (a multiple of the coarsest token cell); 0 = none.
        token_grids: the backbone's token grids; with SAM embeddings, every batch carries each token's SAM
            partner in the other view (``PairBatch.partners``); None = none.
    """

    def __init__(self, cases: list[MiningCase], mode: str, roi_voxels: int, hu_window: tuple[float, float],
                 threshold: float, max_tries: int, margin_voxels: int, mask_cell_voxels: int, mask_ratio: float,
                 mask_shape: str, batch_pairs: int, seed: int, rank: int = 0, world_size: int = 1,
                 shift_voxels: int = 0, token_grids: dict[str, tuple[int, int, int]] | None = None):
        check_enough_cases(len(cases), mode, None)
        self.cases = cases
        self.mode = mode
        self.roi_voxels = roi_voxels
        self.hu_window = hu_window
        self.threshold = threshold
        self.max_tries = max_tries
        self.margin_voxels = margin_voxels
        self.mask_cell_voxels = mask_cell_voxels
        self.mask_ratio = mask_ratio
        self.mask_shape = mask_shape
        self.batch_pairs = batch_pairs
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shift_voxels = shift_voxels
        self.token_grids = token_grids
        self.rng = np.random.default_rng([seed, rank])
        self.epoch = 0
        self.queue: list[int] = []

    def next_batch(self) -> PairBatch:
        """The next ``batch_pairs`` pairs with their crops and masks."""
        pairs, queries, keys = [], [], []
        by_id = {c.case_id: c for c in self.cases}
        for _ in range(self.batch_pairs):
            query = self.cases[self._next_query_index()]
            pair = mine_view_pair(query, self.cases, self.mode, self.rng, self.threshold, self.max_tries,
                                  self.margin_voxels)
            pairs.append(pair)
            queries.append(crop_window(query.image, pair.query_ijk, self.roi_voxels, self.hu_window))
            keys.append(crop_window(by_id[pair.key_case].image, pair.key_ijk, self.roi_voxels, self.hu_window))
        masks = make_masks(2 * self.batch_pairs, self.roi_voxels, self.mask_cell_voxels, self.mask_ratio,
                           self.mask_shape, self.rng)
        masks = torch.from_numpy(np.ascontiguousarray(masks))
        shifted = shifts = None
        if self.shift_voxels:
            views = ([(by_id[p.query_case].image, p.query_ijk) for p in pairs]
                     + [(by_id[p.key_case].image, p.key_ijk) for p in pairs])
            shifted, shifts = shifted_crops(views, self.shift_voxels, self.roi_voxels, self.hu_window, self.rng)
        partners = None
        if self.token_grids and self.mode == "sam":
            partners = batch_partners(pairs, by_id, self.roi_voxels, self.token_grids, self.threshold)
        return PairBatch(torch.from_numpy(np.stack(queries))[:, None], torch.from_numpy(np.stack(keys))[:, None],
                         masks[:self.batch_pairs], masks[self.batch_pairs:], tuple(pairs), shifted, shifts, partners)

    def _next_query_index(self) -> int:
        if not self.queue:
            # One permutation per epoch shared by all ranks, padded to a multiple of the world size; each rank
            # takes every world_size-th entry, so ranks see different query cases.
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.cases))
            padded = np.resize(order, -(-len(order) // self.world_size) * self.world_size)
            self.queue = [int(i) for i in padded[self.rank::self.world_size]]
            self.epoch += 1
        return self.queue.pop(0)

    def state_dict(self) -> dict:
        """Plain data that restores the sampler's position and generator."""
        return {"rng": self.rng.bit_generator.state, "epoch": self.epoch, "queue": list(self.queue)}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state_dict`` was taken."""
        self.rng.bit_generator.state = state["rng"]
        self.epoch = int(state["epoch"])
        self.queue = [int(i) for i in state["queue"]]
