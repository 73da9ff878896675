"""ModelConfig presets, refusal of impossible sizes with the values named, plain-data round trip, and one
student-teacher style pass through backbone, head and CAFA in which every trainable parameter learns."""

import dataclasses
import json

import pytest
import torch

from alice.models.build import BACKBONES, PRESETS, ModelConfig, build_backbone, build_cafa, build_head
from tests.models.conftest import tiny_config


def test_presets_hold_the_paper_and_the_cpu_sizes():
    paper, tiny = PRESETS["paper"], PRESETS["cpu-tiny"]
    assert (paper.backbone, paper.roi, paper.feature_size, paper.patch_size) == ("nnformer", 64, 48, 2)
    assert paper.depths == (2, 2, 2, 2) and paper.num_heads == (6, 12, 24, 48)
    assert paper.window_sizes == (4, 4, 8, 4) and paper.drop_path == 0.2
    assert (paper.head_hidden_dim, paper.head_bottleneck_dim, paper.head_out_dim, paper.head_patch_out_dim) == \
        (2048, 256, 512, 512)
    assert (paper.cafa_heads, paper.cafa_d_k, paper.cafa_d_inner, paper.cafa_dropout) == (8, 64, 2048, 0.1)
    assert (tiny.roi, tiny.feature_size, tiny.num_heads) == (48, 24, (3, 6, 12, 24))
    assert (tiny.head_hidden_dim, tiny.head_bottleneck_dim, tiny.head_out_dim, tiny.head_patch_out_dim) == \
        (512, 128, 256, 256)
    assert (tiny.cafa_heads, tiny.cafa_d_k, tiny.cafa_d_inner) == (8, 64, 512)
    assert ModelConfig() == paper


@pytest.mark.parametrize(("overrides", "message"), [
    ({"roi": 40}, r"roi 40 .* patch_size 2 \* 2\*\*3 = 16"),
    ({"roi": 48, "patch_size": 4}, r"roi 48 .* patch_size 4 \* 2\*\*3 = 32"),
    ({"patch_size": 3}, r"patch_size .* \(2, 4\); got 3"),
    ({"roi": 48, "window_sizes": (4, 8, 8, 4)}, r"window_sizes\[1\] = 8 cannot tile stage 1's 12\^3"),
    ({"roi": 48, "window_sizes": (5, 4, 8, 4)}, r"window_sizes\[0\] = 5 cannot tile stage 0's 24\^3"),
    ({"num_heads": (3, 5, 12, 24)}, r"stage 1 width 24 \(feature_size 12 \* 2\*\*1\) .* num_heads\[1\] = 5"),
    ({"depths": (2, 2, 2)}, r"depths must be 4 .* \(2, 2, 2\)"),
    ({"backbone": "vit"}, r"unknown backbone 'vit'.*nnformer"),
    ({"backbone": "swin_unetr", "roi": 16}, r"swin_unetr needs roi >= 32.*roi 16"),
    ({"feature_size": 9, "num_heads": (1, 1, 1, 1)}, r"even feature_size.*got 9"),
    ({"drop_path": 1.0}, r"drop_path must be in \[0, 1\); got 1.0"),
    ({"head_out_dim": 0}, r"head_out_dim must be positive; got 0"),
])
def test_impossible_sizes_are_refused_with_the_values_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_every_preset_validates_for_both_backbones():
    for config in PRESETS.values():
        for name in BACKBONES:
            dataclasses.replace(config, backbone=name).validate()


def test_config_round_trips_through_plain_data():
    data = PRESETS["cpu-tiny"].to_dict()
    assert json.loads(json.dumps(data)) == data
    assert ModelConfig.from_dict(data) == PRESETS["cpu-tiny"]
    assert ModelConfig.from_dict({"roi": 32}).roi == 32
    with pytest.raises(ValueError, match="unknown key.*'features'"):
        ModelConfig.from_dict({"features": 12})


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_a_student_teacher_pass_trains_every_student_parameter(name):
    config = tiny_config(backbone=name)
    student, head, cafa = build_backbone(config), build_head(config), build_cafa(config)
    teacher, teacher_head = build_backbone(config), build_head(config, shared_last_layer=True)
    teacher_cafa = cafa.ema_copy()
    crops = torch.rand(2, 1, 32, 32, 32)
    mask = torch.rand(2, 1, 32, 32, 32) > 0.25
    with torch.no_grad():
        t = teacher(crops)
        t_out = teacher_head(t["cls"], t["enc_tokens"], t["dec_tokens"])
    s = student(crops, mask)
    s_out = head(s["cls"], s["enc_tokens"], s["dec_tokens"])
    aligned_s, attn = cafa(s_out["enc_out"], s_out["dec_out"])
    aligned_t, _ = teacher_cafa(s_out["enc_out"].detach(), t_out["enc_out"])
    assert attn.shape == (2, config.cafa_heads, 8, 64)
    loss = (-(aligned_t.softmax(-1) * aligned_s.log_softmax(-1)).sum(-1).mean()
            - (t_out["cls_out"].flip(0).softmax(-1) * s_out["cls_out"].log_softmax(-1)).sum(-1).mean()
            + (s["recon"] - crops).pow(2).mean())
    loss.backward()
    trainable = [(n, p) for m in (student, head, cafa) for n, p in m.named_parameters() if p.requires_grad]
    assert not [n for n, p in trainable if p.grad is None]
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)
    assert all(p.grad is None for m in (teacher, teacher_head, teacher_cafa) for p in m.parameters())


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_the_paper_preset_builds_with_the_official_widths_and_grids(name):
    config = dataclasses.replace(PRESETS["paper"], backbone=name)
    backbone, head, cafa = build_backbone(config), build_head(config), build_cafa(config)
    assert (backbone.enc_dim, backbone.dec_dim) == (384, 192)
    assert backbone.token_grid == {"enc_tokens": (4, 4, 4), "dec_tokens": (8, 8, 8)}
    assert (head.enc_adapter.in_features, head.dec_adapter.in_features, head.mlp[0].in_features) == (384, 192, 384)
    assert cafa.w_q.in_features == 512 and cafa.ffn[0].out_features == 2048
