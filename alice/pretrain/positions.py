"""What an Alice model's tokens encode: the anatomy under them, or only their place in the crop.

``token_position_shares`` measures how much of the tokens' variation across crops taken anywhere in the body is
explained by the token's place in the crop alone. Tokens that describe the anatomy under them change from crop to
crop; tokens that only say where in the crop they sit do not, and then the pooled cls (their mean) is the same for
every crop and a sliding-window embedding matches places by their position in the window. The Attention page, the
model card, ``bench/bench_tokens.py`` and the training loop (at every checkpoint) report it.
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
    unit = torch.nn.functional.normalize(tokens.double(), dim=-1)
    crops = unit.shape[0]
    if crops < 2:
        raise ValueError(f"a position share needs at least 2 crops; got {crops}")
    total = unit.var(dim=(0, 1), unbiased=False).sum()
    within = unit.var(dim=0, unbiased=False).sum(dim=-1).mean()  # spread over crops at one place
    between = unit.mean(dim=0).var(dim=0, unbiased=False).sum() - within / (crops - 1)
    return float((between / total).clamp(0.0, 1.0)) if total > 0 else 1.0


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


@torch.no_grad()
def token_position_shares(model: torch.nn.Module, crops: torch.Tensor) -> dict[str, dict[str, float]]:
    """``position_share`` of the encoder (bottleneck) and decoder tokens of an ``AliceSSL`` model's teacher and
    student backbones on whole (unmasked) crops, as dense embeddings use them: ``{network: {"encoder": s,
    "decoder": s}}``. The backbones run in eval mode (no drop path); their modes are restored."""
    shares = {}
    for network in ("teacher", "student"):
        backbone = getattr(model, network).backbone
        was_training = backbone.training
        backbone.eval()
        try:
            out = backbone(crops, None)
        finally:
            backbone.train(was_training)
        shares[network] = {"encoder": position_share(out["enc_tokens"]),
                           "decoder": position_share(out["dec_tokens"])}
    return shares
