"""Projection head: output shapes, prototypes of unit norm with g fixed, a shared last layer for the teacher,
adapters sized from the config, and gradients for every trainable parameter."""

import pytest
import torch
import torch.nn.functional as F

from alice.models.build import build_head
from alice.models.heads import ProjectionHead
from tests.models.conftest import tiny_config


def head_inputs(config, batch=2, n_enc=8, n_dec=64):
    return (torch.randn(batch, config.enc_dim), torch.randn(batch, n_enc, config.enc_dim),
            torch.randn(batch, n_dec, config.dec_dim))


@pytest.mark.parametrize("feature_size", [12, 24])
def test_outputs_have_prototype_widths_and_adapters_follow_the_feature_size(feature_size):
    config = tiny_config(feature_size=feature_size, head_out_dim=40, head_patch_out_dim=56)
    head = build_head(config)
    assert head.enc_adapter.in_features == 8 * feature_size and head.dec_adapter.in_features == 4 * feature_size
    out = head(*head_inputs(config))
    assert tuple(out) == ("cls_out", "enc_out", "dec_out", "cls_embedding")
    assert out["cls_out"].shape == (2, 40)
    torch.testing.assert_close(out["cls_embedding"].norm(dim=-1), torch.ones(2))  # the unit vector behind cls_out
    assert out["cls_embedding"].shape == (2, config.head_bottleneck_dim)
    assert out["enc_out"].shape == (2, 8, 56) and out["dec_out"].shape == (2, 64, 56)


def test_prototype_norms_are_fixed_at_one_through_training():
    config = tiny_config()
    head = build_head(config)
    for layer in (head.last_layer, head.patch_last_layer):
        magnitude = layer.parametrizations.weight.original0
        assert not magnitude.requires_grad and torch.equal(magnitude, torch.ones_like(magnitude))
    optimiser = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    out = head(*head_inputs(config))
    (out["cls_out"].logsumexp(-1).sum() + out["enc_out"].pow(2).sum() + out["dec_out"].sum()).backward()
    optimiser.step()
    for layer in (head.last_layer, head.patch_last_layer):
        torch.testing.assert_close(layer.weight.norm(dim=1), torch.ones(layer.out_features))


def test_norm_last_layer_off_learns_the_norms():
    head = ProjectionHead(16, 8, 32, 8, 10, 10, norm_last_layer=False)
    assert head.last_layer.parametrizations.weight.original0.requires_grad


def test_every_trainable_parameter_gets_a_finite_gradient():
    config = tiny_config()
    head = build_head(config)
    out = head(*head_inputs(config))
    sum(value.pow(2).mean() for value in out.values()).backward()
    trainable = [(n, p) for n, p in head.named_parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in trainable), \
        [n for n, p in trainable if p.grad is None]


def test_a_shared_last_layer_scores_tokens_with_the_cls_prototypes():
    config = tiny_config()
    head = build_head(config, shared_last_layer=True)
    assert head.patch_last_layer is None
    assert not any(key.startswith("patch_last_layer") for key in head.state_dict())
    cls, enc, dec = head_inputs(config)
    out = head(cls, enc, dec)
    with torch.no_grad():
        expected = head.last_layer(F.normalize(head.mlp(head.enc_adapter(enc)), dim=-1))
    torch.testing.assert_close(out["enc_out"], expected)
    student = build_head(config)
    missing, unexpected = head.load_state_dict(student.state_dict(), strict=False)
    assert not missing and all(key.startswith("patch_last_layer") for key in unexpected)


def test_a_shared_last_layer_needs_equal_prototype_counts():
    with pytest.raises(ValueError, match="48 and 64"):
        build_head(tiny_config(head_patch_out_dim=64), shared_last_layer=True)
