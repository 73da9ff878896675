"""Tiny model configs for the model tests: a few hundred thousand weights, seconds per test."""

import dataclasses

import pytest
import torch

from alice.models.build import ModelConfig


def tiny_config(**overrides) -> ModelConfig:
    """roi 32, feature size 12, a small head and CAFA; fields may be overridden."""
    defaults = {"roi": 32, "feature_size": 12, "num_heads": (3, 6, 12, 24), "drop_path": 0.0, "head_hidden_dim": 64,
                "head_bottleneck_dim": 32, "head_out_dim": 48, "head_patch_out_dim": 48, "cafa_heads": 2,
                "cafa_d_k": 8, "cafa_d_inner": 32}
    return dataclasses.replace(ModelConfig(), **{**defaults, **overrides})


@pytest.fixture(autouse=True)
def seeded():
    """Deterministic weights and inputs in every test."""
    torch.manual_seed(0)
