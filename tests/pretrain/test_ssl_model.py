"""Student, EMA teacher and the losses of one batch: the EMA formula, no teacher gradients, variants, overfitting."""

import numpy as np
import pytest
import torch

from alice.anatomy.cache import embed_case
from alice.anatomy.model import build_sam
from alice.mining.views import MiningCase
from alice.pretrain.config import LossConfig, PretrainConfig
from alice.pretrain.ssl_model import build_ssl_model
from alice.pretrain.views import PairBatch, PairSampler
from tests.anatomy.conftest import synthetic_ct, tiny_config
from tests.pretrain.conftest import TINY_MODEL


def build(**loss):
    torch.manual_seed(0)
    return build_ssl_model(PretrainConfig(model=TINY_MODEL, loss=LossConfig(**loss)))


@pytest.fixture(scope="module")
def batch():
    cases = [MiningCase(f"case{s}", synthetic_ct(seed=s)) for s in range(2)]
    sampler = PairSampler(cases, "random_cross", 32, (-125.0, 225.0), 0.7, 4, 4, 8, 0.75, "tube", 2, seed=0)
    return sampler.next_batch()


def test_the_teacher_starts_as_the_student_and_follows_it_by_the_ema_formula():
    model = build()
    student = dict(model.student.named_parameters())
    teacher = dict(model.teacher.named_parameters())
    assert "head.patch_last_layer.parametrizations.weight.original1" in student
    assert not any("patch_last_layer" in name for name in teacher)  # one shared prototype layer
    assert all(torch.equal(p, student[name]) for name, p in teacher.items())
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(torch.randn_like(p))
    before = {name: p.clone() for name, p in teacher.items()}
    model.update_teacher(0.9)
    for name, p in teacher.items():
        torch.testing.assert_close(p, 0.9 * before[name] + (1 - 0.9) * student[name], rtol=1e-6, atol=1e-7)
    after = {name: p.clone() for name, p in teacher.items()}
    model.update_teacher(1.0)  # the last step's momentum: the teacher stays
    assert all(torch.equal(p, after[name]) for name, p in teacher.items())


def test_losses_outputs_and_no_teacher_gradient(batch):
    model = build().train()
    assert not model.teacher.training and model.student.training
    out = model.compute_losses(batch, teacher_temp=0.01)
    out["loss"].backward()
    expected = out["loss/cls"] + out["loss/patch"] + out["loss/rec"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    assert all(p.grad is not None for p in model.student.parameters() if p.requires_grad)
    grid = model.student.backbone.token_grid
    n_enc, n_dec = int(np.prod(grid["enc_tokens"])), int(np.prod(grid["dec_tokens"]))
    assert out["masks"].shape == out["recon"].shape == (4, 1, 32, 32, 32)
    assert out["cafa_attn"].shape == (4, TINY_MODEL.cafa_heads, n_enc, n_dec)
    assert out["teacher_tokens"].shape == (4, n_enc, TINY_MODEL.head_patch_out_dim)
    assert 0 <= out["cls_agreement"].item() <= 1


@pytest.mark.parametrize("loss, teacher_has_cafa, tokens_key", [
    ({"kv_source": "teacher_encoder", "target_attn": "ema"}, True, "enc_tokens"),
    ({"kv_source": "teacher_decoder", "target_attn": "shared", "target_queries": "student"}, False, "enc_tokens"),
    ({"cafa": False}, False, "dec_tokens"),
])
def test_cafa_variants(batch, loss, teacher_has_cafa, tokens_key):
    model = build(**loss).train()
    assert (model.teacher.cafa is not None) == teacher_has_cafa
    assert (model.student.cafa is None) == (not loss.get("cafa", True))
    out = model.compute_losses(batch, teacher_temp=0.01)
    n_tokens = int(np.prod(model.student.backbone.token_grid[tokens_key]))
    assert out["teacher_tokens"].shape[1] == n_tokens
    assert torch.isfinite(out["loss"])


def test_centres_follow_the_teacher_outputs(batch):
    model = build()
    out = model.compute_losses(batch, teacher_temp=0.01)
    model.update_centres(out)
    torch.testing.assert_close(model.cls_loss.centre, 0.1 * out["teacher_cls"].mean(0, keepdim=True))
    torch.testing.assert_close(model.patch_loss.centre, 0.1 * out["teacher_tokens"].mean((0, 1), keepdim=True))


def test_a_few_steps_on_a_fixed_batch_lower_the_loss(batch):
    # The teacher and the centres stay put (their updates are tested above): the student then chases fixed
    # targets, and every term must fall. With both moving, a fixed batch makes the token loss oscillate. The
    # reconstruction rises over the first steps, while the other terms move the shared weights, then falls.
    model = build().train()
    optimizer = torch.optim.AdamW([p for p in model.student.parameters() if p.requires_grad], lr=3e-4,
                                  weight_decay=0.0)
    one_pair = PairBatch(batch.query[:1], batch.key[:1], batch.query_mask[:1], batch.key_mask[:1], batch.pairs[:1])
    history = []
    for _ in range(15):
        out = model.compute_losses(one_pair, teacher_temp=0.01)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        history.append({key: out[key].item() for key in ("loss", "loss/cls", "loss/patch", "loss/rec")})
    first, last = history[0], history[-1]
    assert last["loss"] < 0.5 * first["loss"]
    assert last["loss/cls"] < 0.5 * first["loss/cls"]
    assert last["loss/patch"] < first["loss/patch"]
    assert last["loss/rec"] < first["loss/rec"]


def test_rec_masked_only_uses_the_masked_voxels(batch):
    model = build(rec_masked_only=True)
    out = model.compute_losses(batch, teacher_temp=0.01)
    images = torch.cat([batch.query, batch.key])
    masks = out["masks"]
    expected = ((out["recon"] - images) ** 2)[masks].mean()
    assert out["loss/rec"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_uniformity_term_is_off_by_default_and_queues_the_students_embeddings_when_on(batch):
    assert build().uniformity is None
    assert not any("uniformity" in key for key in build().state_dict())  # other checkpoints keep their keys
    model = build(uniformity_weight=0.5, uniformity_queue=6).train()
    first = model.compute_losses(batch, teacher_temp=0.01)
    assert first["loss/uniformity"].item() == 0.0  # empty queue
    model.update_centres(first)
    assert int(model.uniformity.queue_filled) == 4
    torch.testing.assert_close(model.uniformity.queue[:4], first["student_cls_embedding"])
    out = model.compute_losses(batch, teacher_temp=0.01)
    expected = out["loss/cls"] + out["loss/patch"] + out["loss/rec"] + 0.5 * out["loss/uniformity"]
    assert out["loss/uniformity"].item() < 0 and out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert 0 < out["cls_logit_range"].item() <= 2  # cosine scores of unit prototypes


@pytest.mark.parametrize("target_queries, target_follows_the_mask", [("teacher", False), ("student", True)])
def test_the_token_target_comes_from_the_unmasked_teacher_unless_student_queries_are_asked(
        batch, target_queries, target_follows_the_mask):
    model = build(target_queries=target_queries).eval()
    other_masks = PairBatch(batch.query, batch.key, ~batch.query_mask, ~batch.key_mask, batch.pairs)
    with torch.no_grad():
        first = model.compute_losses(batch, teacher_temp=0.01)["teacher_tokens"]
        second = model.compute_losses(other_masks, teacher_temp=0.01)["teacher_tokens"]
    assert torch.equal(first, second) != target_follows_the_mask


def test_the_correspondence_term_adds_to_the_loss_and_needs_shifted_crops(batch):
    assert build().correspondence is None and build().compute_losses(batch, 0.01)["loss/correspondence"] == 0
    model = build(correspondence_weight=0.5).train()
    with pytest.raises(ValueError, match="shifted crops"):
        model.compute_losses(batch, teacher_temp=0.01)
    cases = [MiningCase(f"case{s}", synthetic_ct(seed=s)) for s in range(2)]
    shifted = PairSampler(cases, "random_cross", 32, (-125.0, 225.0), 0.7, 4, 4, 8, 0.75, "tube", 2, seed=0,
                          shift_voxels=16).next_batch()
    out = model.compute_losses(shifted, teacher_temp=0.01)
    expected = out["loss/cls"] + out["loss/patch"] + out["loss/rec"] + 0.5 * out["loss/correspondence"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    # Untrained tokens are alike everywhere: about ln(tokens per crop), averaged over the two token grids.
    grid = model.student.backbone.token_grid
    chance = np.mean([np.log(np.prod(grid[key])) for key in ("enc_tokens", "dec_tokens")])
    assert 0.5 * chance < out["loss/correspondence"].item() < 1.5 * chance
    out["loss"].backward()
    assert all(p.grad is None for p in model.teacher.parameters())


def test_sam_partners_and_the_bank_take_part_in_the_correspondence_term():
    torch.manual_seed(0)
    sam = build_sam(tiny_config()).eval()
    cases = [MiningCase(f"case{s}", v, embed_case(sam, v)) for s, v in enumerate(synthetic_ct(seed=s)
                                                                               for s in range(2))]
    model = build(correspondence_weight=1.0, correspondence_bank=32).eval()  # no drop-path: runs compare
    sampler = PairSampler(cases, "sam", 32, (-125.0, 225.0), 0.0, 4, 4, 8, 0.75, "tube", 2, seed=0,
                          shift_voxels=16, token_grids=model.correspondence_grids())
    batch = sampler.next_batch()
    assert any((p >= 0).sum() > 2 * 4 for p in batch.partners.values())  # more than the centres
    first = model.compute_losses(batch, teacher_temp=0.01)
    first["loss"].backward()
    assert torch.isfinite(first["loss"])
    model.update_centres(first)
    bank = model.correspondence.banks["dec_tokens"]
    assert (bank.case >= 0).sum() == 4 * 8  # 4 views, as many tokens each as the 2x2x2 bottleneck has
    # The bank now holds far places of the batch's scans: the same batch scores a higher loss against them.
    again = model.compute_losses(batch, teacher_temp=0.01)
    assert again["loss/correspondence"] > first["loss/correspondence"]
