"""Tiny labelled cohorts, networks and checkpoints for the segmentation tests (roi 32, feature size 12)."""

import dataclasses

import numpy as np
import pytest
import torch

from alice import paths
from alice.data.cohort import CaseRecord, Cohort, write_manifest
from alice.data.io import Volume, save_volume
from alice.models.build import ModelConfig
from alice.pretrain.config import PretrainConfig
from alice.pretrain.ssl_model import build_ssl_model
from alice.pretrain.train import FORMAT_VERSION as PRETRAIN_FORMAT_VERSION
from alice.segment.train import AugmentConfig, FinetuneConfig, SegDataConfig, SegOptimConfig, SegRunConfig

TINY_MODEL = ModelConfig(roi=32, feature_size=12, depths=(1, 1, 1, 1), num_heads=(3, 6, 12, 24), drop_path=0.0,
                         head_hidden_dim=32, head_bottleneck_dim=16, head_out_dim=32, head_patch_out_dim=32,
                         cafa_heads=2, cafa_d_k=8, cafa_d_inner=32)
TOTALSEGMENTATOR_NAMES = paths.SAMPLE_COHORT_DIR / "labels" / "totalsegmentator.csv"
# TotalSegmentator values of the sample cohort's label table.
SPLEEN, LIVER, LUNG_LOWER_LEFT, L4, L3 = 1, 5, 11, 28, 29


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes run fastest (and leave the machine alone) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def labelled_ct(seed: int, shape=(40, 36, 32), spacing_mm: float = 4.0) -> tuple[Volume, Volume]:
    """A body of soft tissue in air with a bright liver, a spleen, a lung and a two-level spine, and its labels."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    shift = rng.uniform(-0.08, 0.08, 3)
    x, y, z = x + shift[0], y + shift[1], z + shift[2]
    hu = np.where(x ** 2 / 0.85 + y ** 2 / 0.75 + z ** 2 / 1.2 < 1, 40.0, -1000.0)
    label = np.zeros(shape, dtype=np.uint8)
    organs = [(LIVER, ((x - 0.4) / 0.35) ** 2 + ((y - 0.2) / 0.3) ** 2 + ((z + 0.3) / 0.4) ** 2 < 1, 180.0),
              (SPLEEN, ((x + 0.5) / 0.2) ** 2 + ((y + 0.1) / 0.2) ** 2 + ((z + 0.3) / 0.25) ** 2 < 1, 120.0),
              (LUNG_LOWER_LEFT, ((x + 0.35) / 0.3) ** 2 + (y / 0.35) ** 2 + ((z - 0.45) / 0.35) ** 2 < 1, -800.0),
              (L4, (x / 0.15) ** 2 + ((y + 0.55) / 0.15) ** 2 < 1, 700.0)]
    for value, inside, organ_hu in organs:
        hu[inside], label[inside] = organ_hu, value
    label[(label == L4) & (z > 0)] = L3
    hu += rng.normal(0, 20, shape)
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = (-80.0, -70.0, -60.0)
    return Volume(hu.astype(np.int16), affine), Volume(label, affine)


def write_labelled_cohort(root) -> object:
    """An unlabelled training case first, two labelled training pseudo-subjects, one labelled test one."""
    records = []
    for seed, (case_id, split, labelled) in enumerate([("nolabel", "train", False), ("case0", "train", True),
                                                        ("case1", "train", True), ("case2", "test", True)]):
        image, label = labelled_ct(seed)
        image_path = save_volume(image, root / "images" / f"{case_id}.nii.gz")
        label_path = save_volume(label, root / "labels" / f"{case_id}.nii.gz") if labelled else None
        records.append(CaseRecord(case_id, image_path, label_path, None, TOTALSEGMENTATOR_NAMES if labelled else None,
                                  split, "pseudo", (4.0, 4.0, 4.0), image.shape))
    return write_manifest(Cohort("tiny", tuple(records)), root / "manifest.csv")


@pytest.fixture(scope="session")
def labelled_cohort(tmp_path_factory):
    return write_labelled_cohort(tmp_path_factory.mktemp("cohort"))


def tiny_finetune_config(manifest, steps: int = 4, **sections) -> FinetuneConfig:
    """A run of seconds: two training cases, one validation case, roi 32, crops on the organs."""
    config = FinetuneConfig(
        model=TINY_MODEL, data=SegDataConfig(manifest=str(manifest), train_cases=2, val_cases=1),
        optim=SegOptimConfig(lr=1e-2, min_lr=1e-4, warmup_steps=0, batch_size=2),
        augment=AugmentConfig(foreground_fraction=1.0),
        run=SegRunConfig(steps=steps, val_every=steps, checkpoint_every=2, tensorboard=False))
    return dataclasses.replace(config, **sections)


def write_alice_checkpoint(path, model: ModelConfig = TINY_MODEL, seed: int = 1):
    """An Alice pretraining checkpoint of an untrained student and teacher (what export and init read)."""
    config = dataclasses.replace(PretrainConfig(), model=model)
    torch.manual_seed(seed)
    ssl = build_ssl_model(config)
    torch.save({"kind": "alice", "format_version": PRETRAIN_FORMAT_VERSION, "config": config.to_dict(), "step": 0,
                "model": ssl.state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def alice_checkpoint(tmp_path_factory):
    return write_alice_checkpoint(tmp_path_factory.mktemp("alice") / "alice.pt")


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, labelled_cohort):
    """A 12-step scratch run (checkpoints every 2 steps, validation at 6 and 12), shared by several tests."""
    from alice.segment.train import finetune

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs") / "scratch"
    try:
        config = tiny_finetune_config(labelled_cohort, steps=12)
        finetune(dataclasses.replace(config, run=dataclasses.replace(config.run, val_every=6, tensorboard=True)), out)
    finally:
        torch.set_num_threads(threads)
    return out
