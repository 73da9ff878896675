"""What the tokens encode: the position share on hand-made tokens, and a tiny model on body crops."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from alice.data.cohort import load_manifest
from alice.data.io import load_volume
from alice.errors import InputError
from alice.pretrain import positions
from alice.pretrain.ssl_model import build_ssl_model
from tests.pretrain.conftest import tiny_pretrain_config


def test_position_share_is_one_for_tokens_that_only_say_where_they_are_and_zero_for_crop_content():
    generator = torch.Generator().manual_seed(0)
    by_place = torch.randn(1, 27, 8, generator=generator).repeat(16, 1, 1)  # the same tokens in every crop
    by_crop = torch.randn(16, 1, 8, generator=generator).repeat(1, 27, 1)  # one token per crop, at every place
    noise = torch.randn(16, 27, 8, generator=generator)
    assert positions.position_share(by_place) == pytest.approx(1.0)
    assert positions.position_share(3.0 * by_place + 0.01 * noise) > 0.99  # lengths do not count (cosine)
    assert positions.position_share(by_crop) == pytest.approx(0.0, abs=1e-9)
    assert positions.position_share(noise) < 0.05  # chance alone, corrected for
    half = positions.position_share(torch.nn.functional.normalize(by_place, dim=-1)
                                  + torch.nn.functional.normalize(noise, dim=-1))
    assert 0.3 < half < 0.7
    with pytest.raises(ValueError, match="at least 2 crops"):
        positions.position_share(by_place[:1])


def test_crop_variance_is_zero_when_every_crop_gives_the_same_token_at_a_place():
    generator = torch.Generator().manual_seed(0)
    by_place = torch.randn(1, 27, 8, generator=generator).repeat(16, 1, 1)
    constant = torch.randn(1, 1, 8, generator=generator).repeat(16, 27, 1)
    by_crop = torch.randn(16, 1, 8, generator=generator).repeat(1, 27, 1)
    assert positions.crop_variance(by_place) == pytest.approx(0.0, abs=1e-12)
    assert positions.crop_variance(constant) == pytest.approx(0.0, abs=1e-12)  # no position code, yet no content
    assert positions.crop_variance(5.0 * by_crop) == pytest.approx(positions.crop_variance(by_crop))  # cosine
    # Unrelated unit directions in C dimensions: variance 1 - |mean|^2, near 1 for many crops.
    assert 0.8 < positions.crop_variance(torch.randn(400, 4, 64, generator=generator)) <= 1.0
    with pytest.raises(ValueError, match="at least 2 crops"):
        positions.crop_variance(by_place[:1])


def test_token_statistics_of_a_model_on_body_crops(tiny_cohort):
    config = tiny_pretrain_config(tiny_cohort)
    torch.manual_seed(0)
    model = build_ssl_model(config).eval()
    images = {r.case_id: load_volume(r.image) for r in load_manifest(tiny_cohort).split("train")}
    crops = positions.body_crops(images, config, 6, seed=0)
    roi = config.model.roi
    assert crops.shape == (6, 1, roi, roi, roi)
    assert crops.std(dim=(1, 2, 3, 4)).min() > 0  # every crop shows some tissue
    torch.testing.assert_close(crops, positions.body_crops(images, config, 6, seed=0))
    statistics = positions.token_statistics(model, crops)
    assert set(statistics) == {"teacher", "student"}
    for network in statistics.values():
        assert set(network) == {"encoder", "decoder"}
        assert all(set(tokens) == set(positions.MEASURES) for tokens in network.values())
        assert all(0.0 < tokens["crop_variance"] <= 1.0 for tokens in network.values())
    # Untrained tokens describe what they see: with zero-padded convolutions they already said where they sat in
    # the crop (about half their variance), the start of the collapse of every trained model into position codes.
    # Over 6 crops chance alone gives up to ~0.15.
    assert max(tokens["position_share"] for network in statistics.values() for tokens in network.values()) < 0.25
    # The same tokens in every crop: a model that sees only zeros says nothing but where its tokens are.
    blank = positions.token_statistics(model, torch.zeros_like(crops))
    assert blank["teacher"]["encoder"]["position_share"] == pytest.approx(1.0)
    assert blank["teacher"]["encoder"]["crop_variance"] == pytest.approx(0.0, abs=1e-12)
    air = {**images, "air_only": dataclasses.replace(images[next(iter(images))],
                                                     array=np.full((8, 8, 8), -1000.0, dtype=np.float32))}
    with pytest.raises(InputError, match="air_only.*no voxel inside the body"):
        positions.body_crops(air, config, 6)


def test_training_keeps_tokens_that_differ_from_crop_to_crop(tiny_cohort, tmp_path):
    # With per-voxel LayerNorms in the convolutions, every conv amplified one vector shared by all voxels, and a few
    # steps of reconstruction alone made every bottleneck token that vector (crop variance ~0.8 -> < 0.05 here).
    from alice.pretrain.train import pretrain

    loss = dataclasses.replace(tiny_pretrain_config(tiny_cohort).loss, cls_weight=0.0, patch_weight=0.0)
    config = tiny_pretrain_config(tiny_cohort, steps=16, loss=loss)
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, checkpoint_every=16))
    pretrain(config, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    measured = [r for r in records if "crop_variance/student" in r]
    assert [r["step"] for r in measured] == [16]
    assert measured[0]["loss/rec"] < records[0]["loss/rec"]  # it did train
    assert measured[0]["crop_variance/student"] > 0.3
