"""Outputs of a fine-tuned network: label maps on the user's own grid, and a MONAI bundle.

A prediction is written in the orientation and with the affine of the file the user gave (not our canonical RAS
copy), so it overlays the source image in any viewer. The bundle follows the MONAI Bundle specification and
reuses ``alice.pretrain.export`` (shared metadata, the required-keys check, atomic writes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from alice import runs
from alice.data.io import Volume, load_volume, save_volume, to_source_orientation
from alice.pretrain.export import INTENDED_USE, base_metadata, write_bundle
from alice.pretrain.views import window_hu
from alice.segment.network import SegmentationNet, load_segmentation_checkpoint, load_segmentation_net

# Test-set scores of a run, written by ``alice.segment.evaluate`` into the run folder, quoted by the model card.
EVALUATION_FILE = "evaluation.json"
OVERLAP = 0.25


def predict_case(model: SegmentationNet, image: Volume, sw_batch_size: int = 2) -> Volume:
    """Class indices (uint8) on the image's grid: HU windowed as in training, Gaussian-weighted sliding-window
    logits of ``roi`` crops (MONAI; padding reads as the bottom of the window, as in training), argmax."""
    device = next(model.parameters()).device
    x = torch.from_numpy(window_hu(image.array, model.hu_window))[None, None]  # (1, 1, X, Y, Z)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = sliding_window_inference(x, model.roi, sw_batch_size, model, overlap=OVERLAP, mode="gaussian",
                                              sw_device=device, device="cpu")
    finally:
        model.train(was_training)
    return image.with_array(logits.argmax(dim=1)[0].numpy().astype(np.uint8))


def save_prediction(label: Volume, path: str | Path) -> Path:
    """Write a predicted label map as NIfTI on its source image's stored grid: same axis order, shape and affine
    as the file the user gave (atomically)."""
    affine = label.affine if label.source_affine is None else label.source_affine
    return save_volume(Volume(to_source_orientation(label, label.array), affine), path, dtype=np.uint8)


def predict_file(model_source: str | Path, image_path: str | Path, out_path: str | Path) -> Path:
    """Segment one image file with a fine-tuned run, checkpoint or bundle; the label map goes to ``out_path``."""
    model = load_segmentation_net(model_source)
    return save_prediction(predict_case(model, load_volume(image_path)), out_path)


def export_bundle(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a fine-tuning run's last checkpoint as a MONAI bundle: ``configs/metadata.json`` (inputs ``image``,
    outputs ``pred`` with one channel per class), ``configs/model.json`` and ``configs/segmentation.json`` (classes,
    HU window: what ``load_segmentation_net`` needs), ``models/model.pt`` and a model card ``docs/README.md``.

    Raises:
        InputError: no readable segmentation checkpoint in ``run_dir``.
    """
    run_dir = Path(run_dir)
    checkpoint = runs.checkpoint_path(run_dir)
    payload = load_segmentation_checkpoint(checkpoint)
    model = load_segmentation_net(checkpoint)
    evaluation_path = run_dir / EVALUATION_FILE
    evaluation = json.loads(evaluation_path.read_text()) if evaluation_path.is_file() else None
    metadata = bundle_metadata(model, payload)
    segmentation = {"class_names": list(model.class_names), "hu_window": list(model.hu_window),
                    "label_set": payload["config"]["data"]["label_set"]}
    return write_bundle(out_dir, model.state_dict(), model.config, metadata,
                        model_card(metadata, payload, checkpoint, evaluation), {"segmentation": segmentation})


def bundle_metadata(model: SegmentationNet, payload: dict) -> dict:
    """``metadata.json``: a windowed CT crop in, one logit channel per class out (background first)."""
    config, (low, high), roi = payload["config"], model.hu_window, model.config.roi
    classes = ", ".join(model.class_names[1:])
    init = config["init"]
    return {
        **base_metadata(f"fine-tuned for {payload['step']} steps from {init}"),
        "name": f"Alice Explorer {config['data']['label_set']} segmentation ({model.config.backbone})",
        "task": f"CT segmentation of {classes}",
        "description": (f"{model.config.backbone} (feature size {model.config.feature_size}, crop {roi}^3 voxels) "
                        f"fine-tuned for {payload['step']} steps from {init} on {config['data']['train_cases']} "
                        f"labelled case(s) with a new {len(model.class_names)}-class output layer."),
        "data_source": f"split {config['data']['split']!r} of the cohort {config['data']['manifest']}",
        "data_type": "nifti",
        "image_classes": f"single channel CT, HU clipped to [{low:g}, {high:g}] and scaled to [0, 1]",
        "label_classes": {str(i): name for i, name in enumerate(model.class_names)},
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "hounsfield", "modality": "CT", "num_channels": model.config.in_channels,
                "spatial_shape": [roi] * 3, "dtype": "float32", "value_range": [0, 1], "is_patch_data": True,
                "channel_def": {"0": f"CT, HU window [{low:g}, {high:g}] scaled to [0, 1]"}}},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "modality": "n/a", "num_channels": len(model.class_names),
                "spatial_shape": [roi] * 3, "dtype": "float32", "value_range": [], "is_patch_data": True,
                "channel_def": {str(i): name for i, name in enumerate(model.class_names)}}},
        },
    }


def model_card(metadata: dict, payload: dict, checkpoint: Path, evaluation: dict | None) -> str:
    """``docs/README.md``: what the model is, how it was trained and scored, how to use it, and its limits."""
    config = payload["config"]
    scores = "Not evaluated: run `alice eval segmentation --run <run folder>` before exporting."
    if evaluation:
        rows = "".join(f"| {name} | {_number(s['dice'], '.3f')} | {_number(s['hd95'], '.1f')} |\n"
                       for name, s in evaluation["classes"].items())
        scores = (f"Held-out cases {', '.join(evaluation['cases'])}: mean Dice {_number(evaluation['dice_mean'], '.3f')}"
                  f", mean HD95 {_number(evaluation['hd95_mean'], '.1f')} mm.\n\n| class | Dice | HD95 (mm) |\n"
                  f"|---|---|---|\n{rows}")
    return f"""# {metadata['name']}

{metadata['description']}

**Intended use: {INTENDED_USE}.** Not a medical device; outputs must not inform any clinical decision.

## Training
- Source checkpoint: `{checkpoint}`; initialisation: `{config['init']}`.
- Data: {metadata['data_source']}; label set `{config['data']['label_set']}`.
- Input: {metadata['image_classes']}; crops of {config['model']['roi']}^3 voxels at the cohort's stored spacing.
- Loss: Dice (without background) + cross-entropy (MONAI DiceCELoss); AdamW, cosine learning rate.

## Scores
{scores}

## Use
```python
from alice.segment.network import load_segmentation_net
from alice.segment.predict import predict_file
predict_file("<this folder>", "image.nii.gz", "labels.nii.gz")  # written on the image's own grid
```

## Limits
- Fine-tuned on very few cases (pseudo-subjects of one patient in the sample cohort): scores do not transfer
  to other scanners, populations or protocols.
- Volumes are used at their stored spacing; resample to the training spacing first.

## References
""" + "".join(f"- {r}\n" for r in metadata["references"])


def _number(value: float | None, spec: str) -> str:
    """A score for the card; JSON stores an undefined one (NaN) as null."""
    return "n/a" if value is None else format(value, spec)
