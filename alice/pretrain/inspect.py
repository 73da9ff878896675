"""Look inside one Alice training step: a mined pair through the SSL model, mapped back onto the crop voxels.

For the app's Attention page (Alice, Jiang et al., ICCV 2023, arXiv 2302.05615): one forward pass of a pair gives
the student's masks and reconstruction, CAFA's attention of every encoder (query) token over the student's decoder
(key/value) tokens, and the two sides of the token loss. The functions here turn token-level values into voxel maps
over the ``roi``^3 crop: token cell (x', y', z') of a grid (X', Y', Z') covers voxels ``[x' * s, (x' + 1) * s)``
along X with ``s = roi // X'`` (see :mod:`alice.models.tokens`). No Streamlit here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from alice.data.io import Volume
from alice.errors import InputError
from alice.mining.views import MiningCase, ViewPair
from alice.pretrain.config import PRESETS, PretrainConfig
from alice.pretrain.masking import make_masks
from alice.pretrain.positions import body_crops, token_statistics
from alice.pretrain.ssl_model import AliceSSL, build_ssl_model
from alice.pretrain.train import load_checkpoint
from alice.pretrain.views import PairBatch, batch_partners, crop_window, shifted_crops

log = logging.getLogger(__name__)

Grid = tuple[int, int, int]
VIEWS = ("query", "key")


@dataclass(frozen=True, eq=False)
class Inspection:
    """What one forward pass of one pair shows, as numpy arrays; index 0 is the query view, 1 the key view.

    Attributes:
        crops: (2, R, R, R) the teacher's inputs in [0, 1].
        masks: (2, R, R, R) bool, True where the student's input was zeroed.
        recon: (2, R, R, R) the student's reconstruction.
        attention: (2, heads, N_enc, N_dec) CAFA branch S attention, each row a distribution over the decoder
            tokens of the same view; None with CAFA off.
        token_similarity: (2, N) cosine between the student's and the teacher's tokens of the token loss.
        similarity_grid: token grid of ``token_similarity`` (encoder grid with CAFA, decoder grid without).
        enc_grid: encoder token grid (CAFA's queries).
        dec_grid: decoder token grid (CAFA's keys and values).
        losses: ``loss``, ``loss/cls``, ``loss/patch``, ``loss/rec`` and ``cls_agreement`` of this pair.
    """

    crops: np.ndarray
    masks: np.ndarray
    recon: np.ndarray
    attention: np.ndarray | None
    token_similarity: np.ndarray
    similarity_grid: Grid
    enc_grid: Grid
    dec_grid: Grid
    losses: dict[str, float]

    @property
    def roi_voxels(self) -> int:
        """Crop edge in voxels."""
        return int(self.crops.shape[-1])


def load_model(checkpoint: str | Path | None = None, preset: str = "cpu-tiny",
               seed: int = 0) -> tuple[AliceSSL, PretrainConfig, int | None]:
    """An SSL model in eval mode: the weights of an Alice pretraining checkpoint, or untrained from a preset.

    Args:
        checkpoint: ``checkpoints/*.pt`` of a pretraining run; None builds an untrained model.
        preset: the preset of the untrained model.
        seed: seeds the untrained model's weights.

    Returns:
        The model, its config and the checkpoint's step (None when untrained).

    Raises:
        InputError: an unreadable checkpoint or one of another kind (see ``load_checkpoint``), or an unknown preset.
    """
    if checkpoint is None:
        if preset not in PRESETS:
            raise InputError(None, f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        config = PRESETS[preset]
        torch.manual_seed(seed)
        model, step = build_ssl_model(config), None
    else:
        payload = load_checkpoint(checkpoint)
        config = PretrainConfig.from_dict(payload["config"])
        model, step = build_ssl_model(config), int(payload["step"])
        model.load_state_dict(payload["model"])
        log.info("inspecting %s (step %d)", checkpoint, step)
    model.eval()
    return model, config, step


def pair_batch(pair: ViewPair, query_case: MiningCase, key_case: MiningCase, config: PretrainConfig, seed: int = 0,
               shift_voxels: int = 0, token_grids: dict[str, tuple[int, int, int]] | None = None) -> PairBatch:
    """One pair as the training loop would see it: crops around the pair's points, seeded student masks and, with
    ``shift_voxels`` (``AliceSSL.correspondence_shift()``), the seeded shifted crops of the correspondence term;
    with ``token_grids`` (``AliceSSL.correspondence_grids()``) and both cases' SAM embeddings, the SAM partners of
    the views' tokens."""
    roi, window = config.model.roi, config.views.hu_window
    views = [(query_case.image, pair.query_ijk), (key_case.image, pair.key_ijk)]
    query, key = (torch.from_numpy(crop_window(image, ijk, roi, window))[None, None] for image, ijk in views)
    mask = config.mask
    rng = np.random.default_rng(seed)
    masks = make_masks(2, roi, mask.cell_voxels, mask.ratio, mask.shape, rng)
    masks = torch.from_numpy(np.ascontiguousarray(masks))
    shifted, shifts = shifted_crops(views, shift_voxels, roi, window, rng) if shift_voxels else (None, None)
    partners = None
    if token_grids and query_case.embedding is not None and key_case.embedding is not None:
        cases = {pair.query_case: query_case, pair.key_case: key_case}
        partners = batch_partners([pair], cases, roi, token_grids, config.views.threshold)
    return PairBatch(query, key, masks[:1], masks[1:], (pair,), shifted, shifts, partners)


@torch.no_grad()
def inspect_pair(model: AliceSSL, batch: PairBatch, teacher_temp: float) -> Inspection:
    """Run one pair (``batch`` of one) through ``model`` once and keep what the Attention page shows."""
    if batch.query.shape[0] != 1:
        raise ValueError(f"inspect one pair at a time; the batch holds {batch.query.shape[0]}")
    out = model.compute_losses(batch, teacher_temp)
    grids = model.student.backbone.token_grid
    enc_grid, dec_grid = tuple(grids["enc_tokens"]), tuple(grids["dec_tokens"])
    student, teacher = out["student_tokens"].float(), out["teacher_tokens"].float()
    similarity = torch.nn.functional.cosine_similarity(student, teacher, dim=-1)
    similarity_grid = enc_grid if similarity.shape[1] == int(np.prod(enc_grid)) else dec_grid
    attention = out.get("cafa_attn")
    return Inspection(
        crops=torch.cat([batch.query, batch.key])[:, 0].numpy(),
        masks=out["masks"][:, 0].numpy(),
        recon=out["recon"][:, 0].float().numpy(),
        attention=None if attention is None else attention.float().numpy(),
        token_similarity=similarity.numpy(), similarity_grid=similarity_grid, enc_grid=enc_grid, dec_grid=dec_grid,
        losses={k: float(out[k]) for k in ("loss", "loss/cls", "loss/patch", "loss/rec", "loss/correspondence",
                                           "cls_agreement")})


def token_index(cell: Grid, grid: Grid) -> int:
    """The C-order index of token cell (x', y', z') in ``grid``.

    Raises:
        ValueError: a cell outside the grid.
    """
    if any(not 0 <= c < g for c, g in zip(cell, grid)):
        raise ValueError(f"token cell {tuple(cell)} lies outside the {tuple(grid)} grid")
    return int(np.ravel_multi_index(tuple(int(c) for c in cell), grid))


def token_cell(ijk, grid: Grid, roi_voxels: int) -> Grid:
    """The token cell of ``grid`` that covers crop voxel ``ijk``."""
    return tuple(int(v) * g // roi_voxels for v, g in zip(ijk, grid))


def cell_centre_ijk(cell: Grid, grid: Grid, roi_voxels: int) -> Grid:
    """The crop voxel at the centre of a token cell."""
    return tuple(int((c + 0.5) * roi_voxels / g) for c, g in zip(cell, grid))


def tokens_to_voxels(values: np.ndarray, grid: Grid, roi_voxels: int) -> np.ndarray:
    """(N,) per-token values in C order -> (R, R, R) voxel map, each token's value over its whole cell.

    Raises:
        ValueError: ``values`` does not fill ``grid``, or the grid does not divide the crop.
    """
    values = np.asarray(values)
    if values.shape != (int(np.prod(grid)),):
        raise ValueError(f"{values.shape} values do not fill a {tuple(grid)} token grid")
    if any(roi_voxels % g for g in grid):
        raise ValueError(f"a {tuple(grid)} token grid does not divide a crop of {roi_voxels} voxels")
    cube = values.reshape(grid)
    for axis, g in enumerate(grid):
        cube = np.repeat(cube, roi_voxels // g, axis=axis)
    return cube


def attention_heatmap(inspection: Inspection, view: int, query_token: int, head: int | None = None) -> np.ndarray:
    """CAFA attention of one encoder token over the decoder tokens, spread over the crop's voxels.

    Args:
        inspection: the forward pass.
        view: 0 (query crop) or 1 (key crop); the attention stays within one view.
        query_token: C-order index into the encoder grid.
        head: an attention head, or None for the mean over heads.

    Returns:
        (R, R, R) attention per voxel: a token's weight divided evenly over its cell, so the map sums to 1.

    Raises:
        ValueError: CAFA was off, or a token or head out of range.
    """
    if inspection.attention is None:
        raise ValueError("this model was trained without CAFA: it has no attention to show")
    heads, n_enc = inspection.attention.shape[1:3]
    if not 0 <= query_token < n_enc:
        raise ValueError(f"query token {query_token} is not in [0, {n_enc})")
    if head is not None and not 0 <= head < heads:
        raise ValueError(f"head {head} is not in [0, {heads})")
    rows = inspection.attention[view, :, query_token]  # (heads, N_dec)
    row = rows.mean(axis=0) if head is None else rows[head]
    cell_voxels = (inspection.roi_voxels ** 3) / row.size
    return tokens_to_voxels(row / cell_voxels, inspection.dec_grid, inspection.roi_voxels)


def similarity_map(inspection: Inspection, view: int) -> np.ndarray:
    """(R, R, R) cosine between the student's and the teacher's token at each position of the crop."""
    return tokens_to_voxels(inspection.token_similarity[view], inspection.similarity_grid, inspection.roi_voxels)


def checkpoint_token_statistics(checkpoint: str | Path | None, images: dict[str, Volume], count: int = 32,
                                seed: int = 0) -> tuple[dict[str, dict[str, dict[str, float]]], int | None]:
    """``alice.pretrain.positions.token_statistics`` of a checkpoint (None: the untrained cpu-tiny model) on
    ``count`` body crops of ``images`` (name -> volume), and the checkpoint's step."""
    model, config, step = load_model(checkpoint)
    return token_statistics(model, body_crops(images, config, count, seed)), step
