"""CAFA block: shapes, attention rows that sum to 1, every parameter used, and a frozen EMA copy."""

import copy

import pytest
import torch

from alice.models.build import build_cafa
from alice.models.cafa import CAFA
from tests.models.conftest import tiny_config


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_output_and_attention_shapes_and_rows_summing_to_one(mode):
    cafa = build_cafa(tiny_config()).train(mode == "train")
    out, attn = cafa(torch.randn(3, 8, 48), torch.randn(3, 64, 48))
    assert out.shape == (3, 8, 48)
    assert attn.shape == (3, 2, 8, 64)
    assert (attn >= 0).all()
    torch.testing.assert_close(attn.sum(dim=-1), torch.ones(3, 2, 8))


def test_attention_picks_the_key_that_matches_the_query():
    cafa = CAFA(d_model=4, n_head=1, d_k=4, d_inner=8, dropout=0.0).eval()
    with torch.no_grad():
        for linear in (cafa.w_q, cafa.w_k):
            linear.weight.copy_(torch.eye(4) * 10)
    keys = torch.eye(4)[None]  # four orthogonal keys
    _, attn = cafa(keys[:, [2, 0]], keys)
    assert attn[0, 0].argmax(dim=-1).tolist() == [2, 0]


def test_attention_is_not_uniform_for_inputs_at_the_scale_of_prototype_scores():
    # Head outputs are cosines with the prototypes (entries ~0.1); the attention must still tell keys apart.
    torch.manual_seed(0)
    cafa = build_cafa(tiny_config()).eval()
    _, attn = cafa(0.1 * torch.randn(2, 8, 48), 0.1 * torch.randn(2, 64, 48))
    assert attn.max(dim=-1).values.mean() > 1.3 / 64


def test_the_output_depends_on_the_query_through_the_residual():
    torch.manual_seed(0)
    cafa = build_cafa(tiny_config()).eval()
    with torch.no_grad():
        cafa.w_q.weight.zero_()  # every query then attends alike
    out, _ = cafa(torch.randn(1, 8, 48), torch.randn(1, 64, 48))
    assert (out[0, 0] - out[0, 1]).abs().max() > 0.1


def test_every_parameter_gets_a_finite_gradient():
    cafa = build_cafa(tiny_config()).train()
    out, _ = cafa(torch.randn(2, 8, 48), torch.randn(2, 64, 48))
    out.pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in cafa.parameters())


def test_the_ema_copy_is_frozen_independent_and_equal_at_first():
    cafa = build_cafa(tiny_config()).eval()
    target = cafa.ema_copy()
    assert not target.training
    assert not any(p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in cafa.parameters())
    queries, keys = torch.randn(2, 8, 48), torch.randn(2, 64, 48)
    for a, b in zip(cafa(queries, keys), target(queries, keys)):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        cafa.w_q.weight.add_(1.0)
    assert not torch.equal(cafa.w_q.weight, target.w_q.weight)
    assert isinstance(copy.deepcopy(target), CAFA)


def test_output_tokens_are_unit_vectors_that_differ_between_queries():
    # Unit length keeps the token loss at the scale its temperatures were set for (that of cosine scores).
    cafa = CAFA(d_model=64, n_head=2, d_k=16, d_inner=128, dropout=0.0).eval()
    queries, keys = 0.1 * torch.randn(2, 27, 64), 0.1 * torch.randn(2, 27, 64)
    out, _ = cafa(queries, keys)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 27))
    cosines = out @ out.transpose(1, 2)
    assert cosines[:, ~torch.eye(27, dtype=torch.bool)].mean() < 0.5
