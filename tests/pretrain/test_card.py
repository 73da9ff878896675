"""The shipped checkpoint (slim, float16, loadable) and its model card of measured figures."""

import math

import torch

from alice import runs
from alice.pretrain.card import ship_checkpoint, write_card
from alice.pretrain.train import load_checkpoint

QUALITY = {"source_case": "case0", "key_cases": ["case1"],
           "sources": {"alice": {"source": "alice", "network": "teacher", "tokens": "both"}},
           "methods": {"alice": {"mre_mm": 12.345, "median_mm": 10.0, "max_mm": 30.0, "within_10mm": 0.5, "n": 4}},
           "retiling": {"alice": {"shift_voxels": [5, 3, 2], "mre_mm": 80.04, "median_mm": 70.0, "n": 3},
                        "sam": {"shift_voxels": [5, 3, 2], "mre_mm": 2.5, "median_mm": 2.0, "n": 3}}}


def _statistics(*cells):
    """Token statistics from (crop variance, position share) cells in the card's column order."""
    values = iter(cells)
    return {network: {tokens: dict(zip(("crop_variance", "position_share"), next(values)))
                      for tokens in ("encoder", "decoder")} for network in ("teacher", "student")}


TOKENS = {"this checkpoint": _statistics((0.004, 0.991), (0.01, 0.9), (0.2, 0.5), (0.3, 0.25)),
          "untrained": _statistics((0.16, 0.0), (0.2, 0.01), (0.16, 0.0), (0.2, 0.01))}


def test_the_shipped_file_is_half_precision_without_optimiser_and_loads(finished_run, tmp_path):
    shipped = ship_checkpoint(finished_run, tmp_path / "shipped.pt")
    payload = load_checkpoint(shipped)
    assert "optimizer" not in payload and "rng" not in payload and payload["step"] == 4
    full = load_checkpoint(runs.checkpoint_path(finished_run))["model"]
    assert set(payload["model"]) == set(full)
    floats = [k for k, v in full.items() if v.is_floating_point()]
    assert floats and all(payload["model"][k].dtype == torch.float16 for k in floats)
    torch.testing.assert_close(payload["model"][floats[0]].float(), full[floats[0]], rtol=1e-3, atol=1e-3)


def test_the_card_reports_the_runs_own_figures(finished_run, tmp_path):
    shipped = ship_checkpoint(finished_run, tmp_path / "shipped.pt")
    card = write_card(finished_run, shipped, tmp_path / "card.md", "alice pretrain --steps 4", QUALITY, TOKENS)
    text = card.read_text()
    metrics = runs.read_metrics(finished_run)
    cls = sum(m["loss/cls"] for m in metrics) / len(metrics)
    assert "`alice pretrain --steps 4`" in text and "Steps: 4;" in text
    assert f"Losses over the last 4 logged intervals: cls {cls:.3f}, token (CAFA)" in text
    logit_range = sum(m["cls_logit_range"] for m in metrics) / len(metrics)
    assert f"span {logit_range:.3f}" in text
    assert "| alice | 12.35 | 10.00 | 30.00 | 50% | 4 |" in text
    assert "every 6 mm (Alice: teacher backbone, both tokens):" in text
    assert "cropped by [5, 3, 2] voxels" in text and "mean error in mm: alice 80.0, sam 2.5." in text
    assert "| this checkpoint | 0.00 / 0.99 | 0.01 / 0.90 | 0.20 / 0.50 | 0.30 / 0.25 |" in text
    assert "| untrained | 0.16 / 0.00 | 0.20 / 0.01 | 0.16 / 0.00 | 0.20 / 0.01 |" in text
    assert "Not in Alice: a uniformity term" not in text  # the tiny run trains without it
    correspondence = sum(m["loss/correspondence"] for m in metrics) / len(metrics)
    assert ("Not in Alice: a token-level InfoNCE across window placements and across the pair's two patients, at "
            "the crop centres and the tokens SAM pairs (weight 1, `loss.correspondence_weight`, with the far places "
            "of the same scan among 64 recent teacher tokens as negatives (`loss.correspondence_bank`)), so that "
            "tokens locate anatomy; its loss over the last 4 "
            f"logged intervals is {correspondence:.3f}.") in text
    uniform = math.log(load_checkpoint(shipped)["config"]["model"]["head_out_dim"])
    assert ("Known weakness" in text) == (cls > 0.98 * uniform)


def test_the_card_names_the_terms_that_are_not_alices(finished_run, tmp_path):
    config = runs.read_config(finished_run)
    config["loss"].update(uniformity_weight=0.5, target_queries="student")
    payload = load_checkpoint(runs.checkpoint_path(finished_run))
    payload["config"] = config
    edited = tmp_path / "edited.pt"
    torch.save(payload, edited)
    text = write_card(finished_run, edited, tmp_path / "card.md", "alice pretrain", QUALITY, TOKENS).read_text()
    assert "Not in Alice: a uniformity term on the cls embeddings (weight 0.5, `loss.uniformity_weight`)" in text
    assert "CAFA's target branch" not in text  # the student's queries are the official code's
    default = write_card(finished_run, runs.checkpoint_path(finished_run), tmp_path / "default.md", "alice pretrain",
                         QUALITY, TOKENS).read_text()
    assert "Not in Alice: CAFA's target branch takes the teacher's unmasked encoder tokens" in default
