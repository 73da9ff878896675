"""Tiny SAM configs, networks and synthetic CT volumes for the anatomy tests."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from alice.anatomy.model import SAMConfig, SAMModelConfig, SAMNet, SAMTrainConfig, build_sam
from alice.data.io import Volume

SPACING_MM = 4.0


def tiny_config(**train) -> SAMConfig:
    """A network of a few thousand weights and views of 16 x 16 x 8 voxels."""
    model = SAMModelConfig(spacing_mm=SPACING_MM, base_channels=4, blocks_per_stage=(1, 1, 1, 1), fpn_channels=8,
                           embedding_dim=8)
    defaults = {"crop_shape": (16, 16, 8), "local_queries": 20, "local_hard_candidates": 200, "local_negatives": 50,
                "global_queries": 10, "global_hard_candidates": 20, "global_negatives": 10,
                "global_cross_negatives": 20, "warmup_steps": 0, "checkpoint_every": 2}
    return SAMConfig(model, SAMTrainConfig(**{**defaults, **train}))


def synthetic_ct(shape=(40, 36, 32), seed=0, spacing_mm=SPACING_MM, origin_mm=(-80.0, -70.0, -60.0)) -> Volume:
    """A body-like volume: an ellipsoid of textured soft tissue in air, with an enclosed low-HU 'lung'.

    The texture is smooth random noise, so every location looks different.
    """
    rng = np.random.default_rng(seed)
    ijk = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt((ijk[0] / 0.85) ** 2 + (ijk[1] / 0.8) ** 2 + (ijk[2] / 1.3) ** 2)
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    hu = 40 + 400 * texture / texture.std()
    lung = np.sqrt(((ijk[0] - 0.35) / 0.25) ** 2 + (ijk[1] / 0.3) ** 2 + (ijk[2] / 0.5) ** 2) < 1
    hu[lung] = -850 + 30 * texture[lung] / texture.std()
    hu[radius > 1] = -1024
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = origin_mm
    return Volume(np.clip(hu, -1024, 3071).astype(np.int16), affine)


def lung_point(volume: Volume) -> np.ndarray:
    """World mm of the middle of the synthetic lung."""
    ijk = (np.array(volume.shape) - 1) * np.array([(0.35 + 1) / 2, 0.5, 0.5])
    return volume.ijk_to_xyz(ijk)


@pytest.fixture
def tiny_model() -> SAMNet:
    torch.manual_seed(0)
    return build_sam(tiny_config()).eval()
