"""What an Alice model's tokens encode: the anatomy under them, only their place in the crop, or nothing.

Two measures over crops taken anywhere in the body, on tokens normalised to unit length (embeddings are compared by
cosine). ``crop_variance``: how much the token at one place changes from crop to crop; 0 when every crop gives the
same token there, whether the tokens are position codes or one constant vector, and then the pooled cls (their
mean) is the same for every crop and dense embeddings cannot tell one anatomy from another. ``position_share``:
how much of the tokens' whole variation their place in the crop explains; near 1 for position codes, and then a
sliding-window embedding matches places by their position in the window. Tokens that describe the anatomy under
them have a clear crop variance and a position share near 0. The Attention page, the model card,
``bench/bench_tokens.py`` and the training loop (at every checkpoint) report both.
"""

from __future__ import annotations

import numpy as np
import torch

from alice.anatomy.cache import body_mask
from alice.data.io import Volume
from alice.errors import InputError
from alice.pretrain.config import PretrainConfig
from alice.pretrain.views import crop_window


def position_share(tokens: torch.Tensor) -> float:
    """The share of the tokens' variance explained by their position in the crop.

    Args:
        tokens: (crops, N, C), the same N token positions of every crop; each token is normalised to unit length
            first (embeddings are compared by cosine).

    Returns:
        ``between / total`` of a one-way analysis of variance over positions, summed over channels: ``between`` is
        the variance of the per-position mean token, less the part that chance alone gives a mean of ``crops``
        tokens. 1: every crop has the same token at a place; about 0: the place tells nothing.
    """
    unit = _unit_tokens(tokens)
    crops = unit.shape[0]
    total = unit.var(dim=(0, 1), unbiased=False).sum()
    within = _within_place_variance(unit)
    between = unit.mean(dim=0).var(dim=0, unbiased=False).sum() - within / (crops - 1)
    return float((between / total).clamp(0.0, 1.0)) if total > 0 else 1.0


def crop_variance(tokens: torch.Tensor) -> float:
    """How much the token at one place changes from crop to crop.

    Args:
        tokens: (crops, N, C), the same N token positions of every crop; each token is normalised to unit length.

    Returns:
        The variance over crops of the unit token at a place, summed over channels, mean over places: 0 when every
        crop gives the same token at a place; about 1 for unrelated directions.
    """
    return float(_within_place_variance(_unit_tokens(tokens)))


def _unit_tokens(tokens: torch.Tensor) -> torch.Tensor:
    if tokens.shape[0] < 2:
        raise ValueError(f"measuring tokens across crops needs at least 2 crops; got {tokens.shape[0]}")
    return torch.nn.functional.normalize(tokens.double(), dim=-1)


def _within_place_variance(unit: torch.Tensor) -> torch.Tensor:
    return unit.var(dim=0, unbiased=False).sum(dim=-1).mean()


def body_crops(images: dict[str, Volume], config: PretrainConfig, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` training-style crops (windowed, ``roi``^3) centred on random voxels inside the body, taken from the
    images (name -> volume) in turn: (count, 1, R, R, R).

    Raises:
        InputError: an image with no voxel inside the body (nothing above the body threshold), named.
    """
    rng = np.random.default_rng(seed)
    names = list(images)
    inside = {}
    for name in names:
        inside[name] = np.argwhere(body_mask(images[name].array))
        if len(inside[name]) == 0:
            raise InputError(name, "has no voxel inside the body (none above the body threshold) to crop around")
    crops = []
    for i in range(count):
        name = names[i % len(names)]
        centre = inside[name][rng.integers(len(inside[name]))]
        crops.append(crop_window(images[name], centre, config.model.roi, config.views.hu_window))
    return torch.from_numpy(np.stack(crops))[:, None]


MEASURES = {"crop_variance": crop_variance, "position_share": position_share}  # name -> measure of (crops, N, C)
COLUMNS = tuple((network, tokens) for network in ("teacher", "student") for tokens in ("encoder", "decoder"))
TABLE_HEADER = "teacher encoder | teacher decoder | student encoder | student decoder"


def table_cells(statistics: dict[str, dict[str, dict[str, float]]]) -> str:
    """One Markdown row's cells for ``TABLE_HEADER``: "crop variance / position share" of each column."""
    return " | ".join(f"{statistics[network][tokens]['crop_variance']:.2f} / "
                      f"{statistics[network][tokens]['position_share']:.2f}" for network, tokens in COLUMNS)


@torch.no_grad()
def token_statistics(model: torch.nn.Module, crops: torch.Tensor) -> dict[str, dict[str, dict[str, float]]]:
    """``crop_variance`` and ``position_share`` of the encoder (bottleneck) and decoder tokens of an ``AliceSSL``
    model's teacher and student backbones on whole (unmasked) crops, as dense embeddings use them: ``{network:
    {"encoder" | "decoder": {measure: value}}}``. The backbones run in eval mode (no drop path); their modes are
    restored."""
    statistics = {}
    for network in ("teacher", "student"):
        backbone = getattr(model, network).backbone
        was_training = backbone.training
        backbone.eval()
        try:
            out = backbone(crops, None)
        finally:
            backbone.train(was_training)
        statistics[network] = {name: {measure: of(out[key]) for measure, of in MEASURES.items()}
                               for name, key in (("encoder", "enc_tokens"), ("decoder", "dec_tokens"))}
    return statistics
