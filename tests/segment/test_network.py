"""The segmentation network: backbone plus class head, initialised from scratch, an Alice checkpoint or a bundle;
a pretrained backbone of another architecture is refused by name."""

import dataclasses

import pytest
import torch

from alice.errors import InputError
from alice.pretrain.export import export_backbone
from alice.pretrain.train import load_checkpoint
from alice.segment.network import build_segmentation_net
from tests.segment.conftest import TINY_MODEL, write_alice_checkpoint

CLASSES = ["background", "liver", "spleen"]
WINDOW = (-125.0, 225.0)


@pytest.mark.parametrize(("backbone", "reconstruction_layer"), [("nnformer", "final"), ("swin_unetr", "out")])
def test_the_head_replaces_the_reconstruction_layer(backbone, reconstruction_layer):
    model = build_segmentation_net(dataclasses.replace(TINY_MODEL, backbone=backbone), CLASSES, WINDOW)
    logits = model(torch.rand(2, 1, 32, 32, 32))
    assert logits.shape == (2, 3, 32, 32, 32)
    logits.logsumexp(dim=1).mean().backward()
    without_gradient = {name.split(".")[1] for name, p in model.named_parameters() if p.grad is None}
    assert without_gradient == {reconstruction_layer}  # kept only so pretrained weights load key for key


def test_the_head_reads_both_token_sets_besides_the_last_decoder_map():
    model = build_segmentation_net(TINY_MODEL, CLASSES, WINDOW).eval()
    with torch.no_grad():
        out = model.backbone(torch.rand(1, 1, 32, 32, 32))
        logits = model.head(out)
        for key in ("features", "dec_tokens", "enc_tokens"):
            changed = model.head({**out, key: out[key] + torch.randn_like(out[key])})
            assert (changed - logits).abs().max() > 1e-3, key


def test_scratch_is_seeded():
    a, b = (build_segmentation_net(TINY_MODEL, CLASSES, WINDOW, seed=3) for _ in range(2))
    c = build_segmentation_net(TINY_MODEL, CLASSES, WINDOW, seed=4)
    torch.testing.assert_close(a.state_dict(), b.state_dict())
    assert not torch.equal(a.head.out.weight, c.head.out.weight)


def test_init_from_an_alice_checkpoint_copies_the_student_backbone(alice_checkpoint, tmp_path):
    student = load_checkpoint(alice_checkpoint)["model"]
    model = build_segmentation_net(TINY_MODEL, CLASSES, WINDOW, init=str(alice_checkpoint))
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, student[f"student.backbone.{key}"], msg=key)
    scratch = build_segmentation_net(TINY_MODEL, CLASSES, WINDOW)
    assert not torch.equal(scratch.backbone.encoder[0][0].attn.q.weight, model.backbone.encoder[0][0].attn.q.weight)
    # The same weights through an exported bundle.
    bundle = export_backbone(alice_checkpoint, tmp_path / "bundle")
    from_bundle = build_segmentation_net(TINY_MODEL, CLASSES, WINDOW, init=str(bundle))
    torch.testing.assert_close(from_bundle.backbone.state_dict(), model.backbone.state_dict())


def test_a_backbone_of_another_architecture_is_refused_by_name(alice_checkpoint, tmp_path):
    wider = dataclasses.replace(TINY_MODEL, feature_size=24)
    with pytest.raises(InputError, match=r"alice.pt: .*feature_size: 12 \(pretrained\) vs 24"):
        build_segmentation_net(wider, CLASSES, WINDOW, init=str(alice_checkpoint))
    swin = write_alice_checkpoint(tmp_path / "swin.pt", dataclasses.replace(TINY_MODEL, backbone="swin_unetr"))
    with pytest.raises(InputError, match=r"backbone: swin_unetr \(pretrained\) vs nnformer"):
        build_segmentation_net(TINY_MODEL, CLASSES, WINDOW, init=str(swin))
    with pytest.raises(InputError, match="neither a bundle"):
        build_segmentation_net(TINY_MODEL, CLASSES, WINDOW, init=str(tmp_path))
