"""Export a pretrained Alice backbone as a MONAI bundle, the hand-off to fine-tuning and other tools.

The bundle follows the MONAI Bundle specification: ``configs/metadata.json`` (the mandatory keys plus intended
use, data source and references), ``models/model.pt`` (the student backbone's state dict: encoder, decoder and
reconstruction layer; no projection head, no CAFA) and ``docs/README.md`` (a model card). ``configs/model.json``
holds the backbone's ``ModelConfig`` so ``load_exported_backbone`` rebuilds the network from the bundle alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alice import __version__, runs
from alice.atomic import atomic_write, atomic_write_text
from alice.errors import InputError
from alice.models.build import NETWORK_VERSION, ModelConfig, build_backbone
from alice.pretrain.config import PretrainConfig
from alice.pretrain.train import load_checkpoint

BACKBONE_PREFIX = "student.backbone."
# Mandatory keys of the MONAI Bundle specification, and of each tensor format in network_data_format.
REQUIRED_METADATA_KEYS = ("version", "monai_version", "pytorch_version", "numpy_version",
                          "optional_packages_version", "task", "description", "authors", "copyright",
                          "network_data_format")
REQUIRED_TENSOR_KEYS = ("type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range",
                        "is_patch_data", "channel_def")
INTENDED_USE = "research only, not for diagnosis"
# The schema `python -m monai.bundle verify_metadata` downloads (it needs the network).
METADATA_SCHEMA = ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                   "meta_schema_20220324.json")
REFERENCES = [
    ("Jiang Y, Sun M, Guo H, Bai X, Yan K, Lu L, Xu M. Anatomical Invariance Modeling and Semantic Alignment for "
     "Self-supervised Learning in 3D Medical Image Analysis. ICCV 2023. arXiv:2302.05615"),
    ("Zhou H-Y, Guo J, Zhang Y, Yu L, Wang L, Yu Y. nnFormer: Interleaved Transformer for Volumetric "
     "Segmentation. arXiv:2109.03201"),
    ("Yan K, Cai J, Jin D, et al. SAM: Self-supervised Learning of Pixel-wise Anatomical Embeddings in "
     "Radiological Images. IEEE TMI 2022. arXiv:2012.02383"),
]


def export_backbone(source: str | Path, out_dir: str | Path) -> Path:
    """Write the student backbone of a run (its ``checkpoints/last.pt``) or of a checkpoint file as a bundle.

    Returns:
        The bundle folder.

    Raises:
        InputError: the source is not an Alice pretraining run or checkpoint, or its weights do not fit.
    """
    source = Path(source)
    checkpoint = runs.checkpoint_path(source) if source.is_dir() else source
    payload = load_checkpoint(checkpoint)
    config = PretrainConfig.from_dict(payload["config"])
    state = student_backbone_state(payload)
    backbone = build_backbone(config.model)
    try:
        backbone.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(checkpoint, f"backbone weights do not fit its config: {exc}") from exc
    metadata = bundle_metadata(config, backbone, int(payload["step"]))
    return write_bundle(out_dir, state, config.model, metadata, model_card(config, metadata, checkpoint))


def write_bundle(out_dir: str | Path, state: dict[str, torch.Tensor], model: ModelConfig, metadata: dict, card: str,
                 configs: dict[str, dict] | None = None) -> Path:
    """Write a bundle atomically, file by file: ``models/model.pt``, ``configs/model.json`` (the ``ModelConfig``),
    ``configs/metadata.json`` (checked first), ``docs/README.md`` and any further ``configs/<name>.json``."""
    check_bundle_metadata(metadata)
    out_dir = Path(out_dir)
    atomic_write(out_dir / "models" / "model.pt", lambda tmp: torch.save(state, tmp))
    for name, data in {"model": model.to_dict(), **(configs or {}), "metadata": metadata}.items():
        atomic_write_text(out_dir / "configs" / f"{name}.json", json.dumps(data, indent=2))
    atomic_write_text(out_dir / "docs" / "README.md", card)
    return out_dir


def student_backbone_state(payload: dict) -> dict[str, torch.Tensor]:
    """The student backbone's weights in a pretraining checkpoint (as ``load_checkpoint`` returns it)."""
    return {k[len(BACKBONE_PREFIX):]: v for k, v in payload["model"].items() if k.startswith(BACKBONE_PREFIX)}


def read_backbone(source: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Path]:
    """The architecture and weights of a pretrained backbone, without building it.

    Args:
        source: a bundle folder of ``export_backbone``, a pretraining run folder (its ``checkpoints/last.pt``) or
            a pretraining checkpoint file.

    Returns:
        The backbone's config, its state dict and the file the weights came from.

    Raises:
        InputError: a missing file, or a checkpoint that is not an Alice pretraining checkpoint.
    """
    source = Path(source)
    weights_path = backbone_weights_file(source)
    if (source / "configs" / "model.json").exists():
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        return bundle_model_config(source), state, weights_path
    payload = load_checkpoint(weights_path)
    return PretrainConfig.from_dict(payload["config"]).model, student_backbone_state(payload), weights_path


def bundle_model_config(bundle_dir: str | Path) -> ModelConfig:
    """The backbone sizes of a bundle (``configs/model.json``), once its metadata says it holds a network of the
    version this code builds (weights of another version would load and mean something else).

    Raises:
        InputError: unreadable configs, or a bundle of another network version (or of none: written before
            versions were recorded), named.
    """
    bundle_dir = Path(bundle_dir)
    metadata_path, model_path = bundle_dir / "configs" / "metadata.json", bundle_dir / "configs" / "model.json"
    found = read_json(metadata_path).get("network_version")
    if found != NETWORK_VERSION:
        raise InputError(metadata_path, f"holds a network of version {found}; this code builds version "
                                        f"{NETWORK_VERSION}: export the bundle again from a current checkpoint")
    return ModelConfig.from_dict(read_json(model_path))


def read_json(path: Path) -> dict:
    """A JSON object from a file.

    Raises:
        InputError: a missing or unreadable file, or one that is not a JSON object.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(path, f"holds a JSON {type(data).__name__}, not an object")
    return data


def backbone_weights_file(source: str | Path) -> Path:
    """The file holding a pretrained backbone's weights (see ``read_backbone`` for the sources), without reading it.

    Raises:
        InputError: a bundle without its weights, or a folder that is neither a bundle nor a run folder.
    """
    source = Path(source)
    if (source / "configs" / "model.json").exists():
        weights_path = source / "models" / "model.pt"
        if not weights_path.is_file():
            raise InputError(weights_path, "missing from the bundle")
        return weights_path
    if source.is_dir() and not runs.checkpoint_path(source).exists():
        raise InputError(source, "is neither a bundle (configs/model.json) nor a run folder (checkpoints/last.pt)")
    return runs.checkpoint_path(source) if source.is_dir() else source


def load_exported_backbone(bundle_dir: str | Path) -> nn.Module:
    """The backbone of a bundle written by ``export_backbone``, in eval mode.

    Raises:
        InputError: a missing file, or weights that do not fit the stored config.
    """
    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / "configs" / "model.json").is_file():
        raise InputError(bundle_dir / "configs" / "model.json", "missing from the bundle")
    config, state, weights_path = read_backbone(bundle_dir)
    backbone = build_backbone(config)
    try:
        backbone.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(weights_path, f"weights do not fit configs/model.json: {exc}") from exc
    return backbone.eval()


def base_metadata(changelog: str) -> dict:
    """The metadata every bundle of this package shares: versions, authors, licence, intended use, references."""
    import monai

    return {
        "schema": METADATA_SCHEMA,
        "version": __version__,
        "changelog": {__version__: changelog},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "optional_packages_version": {},
        "network_version": NETWORK_VERSION,
        "authors": "Alice Explorer contributors",
        "copyright": "Copyright (c) Alice Explorer contributors; MIT licence",
        "intended_use": INTENDED_USE,
        "references": REFERENCES,
    }


def bundle_metadata(config: PretrainConfig, backbone: nn.Module, step: int) -> dict:
    """``metadata.json`` of a backbone bundle: input crop in [0, 1], output the bottleneck tokens (latent)."""
    model, low_hu, high_hu = config.model, *config.views.hu_window
    grid = list(backbone.token_grid["enc_tokens"])
    return {
        **base_metadata(f"Alice pretraining, {step} steps"),
        "name": "Alice pretrained nnFormer backbone",
        "task": "Self-supervised pretrained 3D CT backbone (Alice) for fine-tuning, e.g. organ segmentation",
        "description": (f"{model.backbone} encoder-decoder (feature size {model.feature_size}, crop {model.roi}^3 "
                        f"voxels) pretrained with Alice for {step} steps: cross-patient SAM-matched views "
                        f"(mode {config.views.mode}), masked image modelling and CAFA token alignment. No projection "
                        "head or CAFA block is included."),
        "data_source": f"cases of split {config.data.split!r} of the cohort {config.data.manifest}",
        "data_type": "nifti",
        "image_classes": f"single channel CT, HU clipped to [{low_hu:g}, {high_hu:g}] and scaled to [0, 1]",
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "hounsfield", "modality": "CT", "num_channels": model.in_channels,
                "spatial_shape": [model.roi] * 3, "dtype": "float32", "value_range": [0, 1], "is_patch_data": True,
                "channel_def": {"0": f"CT, HU window [{low_hu:g}, {high_hu:g}] scaled to [0, 1]"}}},
            "outputs": {"latent": {
                "type": "image", "format": "latent", "modality": "n/a", "num_channels": model.enc_dim,
                "spatial_shape": grid, "dtype": "float32", "value_range": [], "is_patch_data": True,
                "channel_def": {"0": "bottleneck token features (enc_tokens, C order over the token grid)"}}},
        },
    }


def check_bundle_metadata(metadata: dict) -> None:
    """The MONAI specification's mandatory keys are present (without its JSON schema, which needs the network).

    Raises:
        ValueError: the missing keys, named.
    """
    missing = [k for k in REQUIRED_METADATA_KEYS if k not in metadata]
    formats = metadata.get("network_data_format", {})
    for side in ("inputs", "outputs"):
        if not formats.get(side):
            missing.append(f"network_data_format.{side}")
        for name, spec in formats.get(side, {}).items():
            missing.extend(f"network_data_format.{side}.{name}.{k}" for k in REQUIRED_TENSOR_KEYS if k not in spec)
    if missing:
        raise ValueError(f"bundle metadata lacks {missing}")


def model_card(config: PretrainConfig, metadata: dict, checkpoint: Path) -> str:
    """``docs/README.md``: what the model is, how it was trained, how to use it, and its limits."""
    model, views, loss = config.model, config.views, config.loss
    return f"""# {metadata['name']}

{metadata['description']}

**Intended use: {INTENDED_USE}.** Not a medical device; outputs must not inform any clinical decision.

## Training
- Source checkpoint: `{checkpoint}`
- Method: Alice (Jiang et al., ICCV 2023): teacher-student self-distillation between views of two different
  patients at the same anatomy (view mode `{views.mode}`, SAM score threshold {views.threshold:g}), masked image
  modelling ({config.mask.shape} masks, ratio {config.mask.ratio:g}, cell {config.mask.cell_voxels} voxels) and
  CAFA token alignment (CAFA {'on' if loss.cafa else 'off'}, keys/values `{loss.kv_source}`, target attention
  `{loss.target_attn}`). Loss weights cls/patch/rec = {loss.cls_weight:g}/{loss.patch_weight:g}/{loss.rec_weight:g}.
- Data: {metadata['data_source']}.
- Input: {metadata['image_classes']}; crops of {model.roi}^3 voxels at the cohort's native spacing.
- Steps: {config.run.steps} planned; this export: {metadata['changelog'][metadata['version']]}.

## Use
```python
from alice.pretrain.export import load_exported_backbone
backbone = load_exported_backbone("<this folder>")  # dict out: cls, enc_tokens, dec_tokens, recon
```
`models/model.pt` is a plain state dict of the {model.backbone} backbone (`configs/model.json` holds its sizes);
for segmentation keep the encoder and decoder and replace the one-channel reconstruction layer.

## Limits
- Trained on a small cohort unless stated otherwise; features are not validated for any clinical population.
- No segmentation head: fine-tuning with labels is needed before any downstream use.

## References
""" + "".join(f"- {r}\n" for r in metadata["references"])
