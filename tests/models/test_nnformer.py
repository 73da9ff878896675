"""Window geometry of the nnFormer backbone: clamped windows, the shifted-window mask, the relative position
index, a crafted input showing that no token attends across a shifted boundary, and the parity-free upsampling."""

import itertools

import pytest
import torch

from alice.models.nnformer import (
    ConvPatchEmbed,
    PatchExpanding,
    PatchMerging,
    SwinBlock,
    relative_position_index,
    shifted_window_mask,
    stage_windows,
    window_merge,
    window_partition,
)


def brute_force_mask(grid, window, shift) -> torch.Tensor:
    """Pairs of one window may attend iff their unrolled positions are less than a window apart on every axis."""
    rolled = torch.stack(torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij"), dim=-1)  # (X, Y, Z, 3)
    original = (rolled + torch.tensor(shift)) % torch.tensor(grid)
    windows = window_partition(original[None].float(), window)[0]  # (n_windows, T, 3)
    distance = (windows[:, :, None] - windows[:, None, :]).abs()
    return (distance < torch.tensor(window)).all(dim=-1)


@pytest.mark.parametrize(("grid", "window", "shift"), [((8, 8, 8), (4, 4, 4), (2, 2, 2)),
                                                       ((8, 4, 12), (4, 4, 4), (2, 0, 2)),
                                                       ((6, 6, 4), (2, 3, 4), (1, 1, 0))])
def test_shifted_window_mask_allows_exactly_the_pairs_that_are_neighbours_before_the_roll(grid, window, shift):
    mask = shifted_window_mask(grid, window, shift)
    n_windows = (grid[0] // window[0]) * (grid[1] // window[1]) * (grid[2] // window[2])
    tokens = window[0] * window[1] * window[2]
    assert mask.shape == (n_windows, tokens, tokens)
    assert torch.equal(mask, brute_force_mask(grid, window, shift))
    assert mask.diagonal(dim1=1, dim2=2).all()
    assert not mask.all()  # the windows at the far ends do mix wrapped tokens


def test_windows_are_clamped_to_the_grid_and_not_shifted_along_a_covered_axis():
    assert stage_windows((8, 8, 8), 4) == ((4, 4, 4), (2, 2, 2))
    assert stage_windows((3, 3, 3), 4) == ((3, 3, 3), (0, 0, 0))
    assert stage_windows((8, 8, 4), 4) == ((4, 4, 4), (2, 2, 0))
    assert stage_windows((6, 6, 6), 8) == ((6, 6, 6), (0, 0, 0))


def test_window_partition_and_merge_invert_each_other():
    x = torch.randn(2, 4, 6, 8, 5)
    windows = window_partition(x, (2, 3, 4))
    assert windows.shape == (2, 2 * 2 * 2, 2 * 3 * 4, 5)
    torch.testing.assert_close(windows[0, 0, 1 * 4 + 0], x[0, 0, 1, 0])  # window tokens in C order
    torch.testing.assert_close(window_merge(windows, (4, 6, 8), (2, 3, 4)), x)


def test_relative_position_index_depends_only_on_the_offset():
    window = (2, 3, 4)
    index = relative_position_index(window)
    coords = torch.tensor(list(itertools.product(*[range(w) for w in window])))
    offsets = coords[:, None] - coords[None, :]
    assert index.shape == (24, 24) and index.min() >= 0 and index.max() < 3 * 5 * 7
    for i, j, k, m in [(0, 1, 5, 6), (3, 0, 23, 20), (7, 7, 11, 11)]:
        same = torch.equal(offsets[i, j], offsets[k, m])
        assert (index[i, j] == index[k, m]) == same
    assert len(index.unique()) == len({tuple(o) for o in offsets.flatten(0, 1).tolist()})


def block_response(block: SwinBlock, source: tuple[int, int, int], target: tuple[int, int, int]) -> float:
    """How much the block's output at ``target`` moves when the input at ``source`` is perturbed."""
    x = torch.randn(1, *block.grid, 8)
    perturbed = x.clone()
    perturbed[(0, *source)] += 3.0 * torch.randn(8)  # not a constant: LayerNorm would remove it
    with torch.no_grad():
        return (block(perturbed) - block(x))[(0, *target)].abs().max().item()


def test_a_shifted_block_mixes_across_plain_windows_but_never_across_the_wrapped_boundary():
    block = SwinBlock(8, 2, (8, 8, 8), (4, 4, 4), (2, 2, 2), drop_path=0.0).eval()
    # Rolled by -2, original 6, 7, 0, 1 share a window; 0 and 1 are neighbours, 7 and 0 only by wrapping.
    assert block_response(block, (7, 7, 7), (0, 0, 0)) == 0.0
    assert block_response(block, (0, 7, 0), (0, 0, 0)) == 0.0
    assert block_response(block, (1, 1, 1), (0, 0, 0)) > 0.0
    # 3 and 4 sit in different plain windows but in one shifted window.
    assert block_response(block, (4, 4, 4), (3, 3, 3)) > 0.0
    # Control: without the mask the wrapped token does leak in.
    block.attn_mask = torch.ones_like(block.attn_mask)
    assert block_response(block, (7, 7, 7), (0, 0, 0)) > 0.0


def test_a_plain_block_attends_within_its_window_only():
    block = SwinBlock(8, 2, (8, 8, 8), (4, 4, 4), (0, 0, 0), drop_path=0.0).eval()
    assert block_response(block, (4, 0, 0), (3, 0, 0)) == 0.0
    assert block_response(block, (3, 3, 3), (0, 0, 0)) > 0.0


def test_a_cross_block_takes_keys_from_its_context_and_is_never_shifted():
    block = SwinBlock(8, 2, (4, 4, 4), (4, 4, 4), (0, 0, 0), drop_path=0.0, cross=True).eval()
    x, context = torch.randn(1, 4, 4, 4, 8), torch.randn(1, 4, 4, 4, 8)
    assert not torch.allclose(block(x, context), block(x, context + 1.0 * torch.randn_like(context)))
    with pytest.raises(ValueError, match="context"):
        block(x)
    with pytest.raises(ValueError, match="shift"):
        SwinBlock(8, 2, (8, 8, 8), (4, 4, 4), (2, 2, 2), drop_path=0.0, cross=True)


def test_upsampling_has_no_parity_pattern():
    # A transposed 2x2x2 stride-2 conv turns a constant map into a pattern that repeats every two cells (one
    # weight per output parity); interpolation keeps it constant, and each cell follows its parent cell.
    torch.manual_seed(0)
    up = PatchExpanding(8)
    constant = torch.randn(1, 1, 1, 1, 8).expand(1, 3, 3, 3, 8)
    out = up(constant)
    assert out.shape == (1, 6, 6, 6, 4)
    torch.testing.assert_close(out, out[:, :1, :1, :1].expand_as(out))
    varying = torch.randn(1, 3, 3, 3, 8)
    out = up(varying)
    for i, j, k in itertools.product(range(6), repeat=3):
        torch.testing.assert_close(out[0, i, j, k], up.proj(varying[0, i // 2, j // 2, k // 2]))


@pytest.mark.parametrize("patch_size", [2, 4])
def test_convolutions_do_not_mark_the_crop_border(patch_size):
    # A uniform crop must give the same feature at every cell, border cells included: zero padding made the
    # border cells differ, and trained networks turned that into tokens that encoded their place in the crop.
    torch.manual_seed(0)
    embed = ConvPatchEmbed(1, 8, patch_size)
    out = embed(torch.full((1, 1, 16, 16, 16), 0.7))
    assert out.shape == (1, 8, 16 // patch_size, 16 // patch_size, 16 // patch_size)
    torch.testing.assert_close(out, out[..., :1, :1, :1].expand_as(out))
    merged = PatchMerging(8)(torch.randn(1, 1, 1, 1, 8).expand(1, 4, 4, 4, 8))
    torch.testing.assert_close(merged, merged[:, :1, :1, :1].expand_as(merged))


def test_decoder_features_keep_the_detail_of_one_patch():
    # Changing the input inside one patch must change the decoder's features at that patch far more than far
    # away: the encoder skip joins the decoder directly. Through cross-attention alone (a window average at
    # initialisation) the response was nearly as large everywhere as at the patch itself.
    from alice.models.build import build_backbone

    from .conftest import tiny_config

    model = build_backbone(tiny_config()).eval()
    x = torch.rand(1, 1, 32, 32, 32)
    changed = x.clone()
    changed[..., 4:6, 4:6, 4:6] += 1.0  # the patch of cell (2, 2, 2) on the 16^3 feature grid
    with torch.no_grad():
        change = (model(changed)["features"] - model(x)["features"]).norm(dim=1)[0]
    # Far away only the crop's channel statistics change (instance norm): a small, even response.
    assert change[2, 2, 2] > 20 * change[8:, 8:, 8:].max()
