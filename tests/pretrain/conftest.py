"""Tiny cohorts, SAM checkpoints and configs for the pretraining tests (roi 32, feature size 12)."""

import dataclasses

import pytest
import torch

from alice.anatomy.model import build_sam, save_sam
from alice.data.cohort import CaseRecord, Cohort, write_manifest
from alice.data.io import save_volume
from alice.models.build import ModelConfig
from alice.pretrain.config import PRESETS, DataConfig, LossConfig, OptimConfig, PretrainConfig, RunConfig, ViewConfig
from tests.anatomy.conftest import synthetic_ct, tiny_config

TINY_MODEL = ModelConfig(roi=32, feature_size=12, num_heads=(3, 6, 12, 24), drop_path=0.1, head_hidden_dim=64,
                         head_bottleneck_dim=32, head_out_dim=64, head_patch_out_dim=64, cafa_heads=2, cafa_d_k=16,
                         cafa_d_inner=64)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes run fastest (and leave the machine alone) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_cohort(root, n_cases: int = 3):
    """``n_cases`` synthetic CTs (40 x 36 x 32 voxels of 4 mm) in a manifest, all in the training split."""
    records = []
    for seed in range(n_cases):
        volume = synthetic_ct(seed=seed)
        image = save_volume(volume, root / "images" / f"case{seed}.nii.gz")
        records.append(CaseRecord(f"case{seed}", image, split="train", origin="pseudo", spacing_mm=(4.0, 4.0, 4.0),
                                  shape=volume.shape))
    return write_manifest(Cohort("tiny", tuple(records)), root / "manifest.csv")


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="session")
def tiny_sam(tmp_path_factory):
    torch.manual_seed(0)
    config = tiny_config()
    return save_sam(tmp_path_factory.mktemp("sam") / "tiny.pt", build_sam(config), config, step=0)


def tiny_pretrain_config(manifest, steps: int = 4, **sections) -> PretrainConfig:
    """A run of a few seconds: random_cross views (no SAM), roi 32, 8-voxel mask cells, the correspondence term
    on with a bank (as in cpu-tiny)."""
    base = PRESETS["cpu-tiny"]
    config = dataclasses.replace(
        base, model=TINY_MODEL, data=DataConfig(manifest=str(manifest)),
        views=ViewConfig(mode="random_cross", max_tries=4),
        mask=dataclasses.replace(base.mask, cell_voxels=8),
        loss=LossConfig(teacher_temp_warmup_steps=2, correspondence_weight=1.0, correspondence_bank=64),
        optim=OptimConfig(lr=1e-3, min_lr=1e-5, warmup_steps=1, freeze_last_layer_steps=1),
        run=RunConfig(steps=steps, checkpoint_every=2, log_every=1))
    return dataclasses.replace(config, **sections)


@pytest.fixture
def deterministic():
    """Deterministic kernels, so a resumed run can be compared with a straight one."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_cohort):
    """A straight 4-step run (checkpoints at steps 2 and 4) with deterministic kernels, shared by the run-folder,
    resume and export tests."""
    from alice.pretrain.train import pretrain

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = tmp_path_factory.mktemp("runs") / "straight"
    try:
        pretrain(tiny_pretrain_config(tiny_cohort), out)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return out
