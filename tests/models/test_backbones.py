"""Both backbones honour the contract of ``alice.models.tokens``: keys, shapes, token grids and C order,
voxel masking, a learned position embedding, and a gradient for every parameter."""

import pytest
import torch

from alice.models.build import BACKBONES, build_backbone
from alice.models.nnformer import NnFormer
from alice.models.tokens import OUTPUT_KEYS, grid_to_tokens, tokens_to_grid
from tests.models.conftest import tiny_config

BACKBONE_NAMES = sorted(BACKBONES)


def all_outputs_loss(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """A scalar that depends on every output (as the Alice losses do)."""
    return sum((value ** 2).mean() for value in out.values())


@pytest.mark.parametrize("roi", [32, 48])
@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_outputs_have_the_contract_keys_shapes_and_token_grids(name, roi):
    config = tiny_config(backbone=name, roi=roi)
    model = build_backbone(config).eval()
    out = model(torch.rand(2, 1, roi, roi, roi))
    enc, dec = roi // 16, roi // 8  # patch 2, then 3 mergings; the first decoder stage is one step up
    assert tuple(out) == OUTPUT_KEYS
    assert model.token_grid == {"enc_tokens": (enc,) * 3, "dec_tokens": (dec,) * 3}
    assert out["cls"].shape == (2, config.enc_dim) == (2, 8 * config.feature_size)
    assert out["enc_tokens"].shape == (2, enc ** 3, config.enc_dim)
    assert out["dec_tokens"].shape == (2, dec ** 3, config.dec_dim) == (2, dec ** 3, 4 * config.feature_size)
    assert out["recon"].shape == (2, 1, roi, roi, roi)
    torch.testing.assert_close(out["cls"], out["enc_tokens"].mean(dim=1))
    assert (model.enc_dim, model.dec_dim) == (config.enc_dim, config.dec_dim)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_tokens_only_stops_after_the_tokens_with_the_same_values(name):
    model = build_backbone(tiny_config(backbone=name)).eval()
    x = torch.rand(2, 1, 32, 32, 32)
    full, tokens = model(x), model(x, None, tokens_only=True)
    assert tuple(tokens) == ("cls", "enc_tokens", "dec_tokens")
    for key, value in tokens.items():
        torch.testing.assert_close(value, full[key])


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_masked_voxels_do_not_reach_any_output(name):
    model = build_backbone(tiny_config(backbone=name, depths=(1, 1, 1, 1))).eval()
    x = torch.rand(2, 1, 32, 32, 32, requires_grad=True)
    mask = torch.zeros(2, 1, 32, 32, 32, dtype=torch.bool)
    mask[0, :, :16] = True  # half of sample 0
    mask[1, :, :, 8:24] = True  # a slab of sample 1
    all_outputs_loss(model(x, mask)).backward()
    assert (x.grad[mask] == 0).all()
    assert (x.grad[~mask] != 0).float().mean() > 0.5
    changed = x.detach().masked_fill(mask, 5.0)
    out, out_changed = model(x.detach(), mask), model(changed, mask)
    for key in OUTPUT_KEYS:
        torch.testing.assert_close(out[key], out_changed[key])


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_every_parameter_gets_a_finite_gradient(name):
    # No unused parameters: DDP can run without find_unused_parameters.
    model = build_backbone(tiny_config(backbone=name, drop_path=0.2)).train()
    all_outputs_loss(model(torch.rand(2, 1, 32, 32, 32), torch.rand(2, 1, 32, 32, 32) > 0.5)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_nnformer_position_embedding_is_a_learned_saved_parameter():
    config = tiny_config()
    model = build_backbone(config)
    assert "pos_embed" in dict(model.named_parameters())
    assert model.state_dict()["pos_embed"].shape == (1, config.feature_size, 16, 16, 16)
    copy = build_backbone(config)
    assert not torch.equal(copy.pos_embed, model.pos_embed)
    copy.load_state_dict(model.state_dict())
    torch.testing.assert_close(copy.pos_embed, model.pos_embed)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_tokens_are_the_bottleneck_map_flattened_in_xyz_c_order(name):
    # An anisotropic crop gives every axis its own size, so a permuted flattening cannot pass.
    model = BACKBONES[name](roi=(32, 48, 64), in_channels=1, feature_size=12, depths=(1, 1, 1, 1),
                            num_heads=(3, 6, 12, 24), window_sizes=(4, 4, 8, 4), patch_size=2, drop_path=0.0).eval()
    assert model.token_grid == {"enc_tokens": (2, 3, 4), "dec_tokens": (4, 6, 8)}
    captured = {}
    if isinstance(model, NnFormer):  # the normalised last stage, (B, X, Y, Z, C)
        model.encoder_norms[3].register_forward_hook(lambda m, args, out: captured.update(map=out))
    else:  # the normalised last stage entering the bottleneck block, (B, C, X, Y, Z)
        model.bottleneck_block.register_forward_pre_hook(lambda m, args: captured.update(map=args[0].movedim(1, -1)))
    out = model(torch.rand(1, 1, 32, 48, 64))
    bottleneck = captured["map"]
    assert bottleneck.shape[1:4] == (2, 3, 4)
    torch.testing.assert_close(tokens_to_grid(out["enc_tokens"], (2, 3, 4)), bottleneck.movedim(-1, 1))


def test_grid_and_token_conversions_use_c_order_and_invert_each_other():
    x, y, z = torch.meshgrid(torch.arange(2), torch.arange(3), torch.arange(4), indexing="ij")
    coords = torch.stack([x, y, z], dim=-1)[None].float()  # (1, 2, 3, 4, 3): each voxel holds its (x, y, z)
    tokens = grid_to_tokens(coords)
    assert tokens[0, (1 * 3 + 2) * 4 + 3].tolist() == [1.0, 2.0, 3.0]
    torch.testing.assert_close(tokens_to_grid(tokens, (2, 3, 4)), coords.movedim(-1, 1))
    with pytest.raises(ValueError, match="24 tokens"):
        tokens_to_grid(tokens, (2, 3, 5))


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_inputs_and_masks_of_the_wrong_shape_are_refused(name):
    model = build_backbone(tiny_config(backbone=name))
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32, 32\).*\(1, 1, 48, 48, 48\)"):
        model(torch.rand(1, 1, 48, 48, 48))
    with pytest.raises(ValueError, match="bool"):
        model(torch.rand(1, 1, 32, 32, 32), torch.zeros(1, 1, 32, 32, 32))
    with pytest.raises(ValueError, match="mask must be"):
        model(torch.rand(2, 1, 32, 32, 32), torch.zeros(1, 1, 32, 32, 32, dtype=torch.bool))
