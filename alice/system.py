"""What this machine offers and which pipeline stages have produced their outputs (for the home page and the CLI)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from alice import paths

# The CLI commands that exist today; the pipeline stages' commands come with their stages.
AVAILABLE_COMMANDS: dict[str, str] = {
    "alice data prepare-samples": "build the sample cohort (real chest CTs and their labels)",
    "alice data pseudo-subjects": "make pseudo-subjects with exact voxel correspondence",
    "alice data info PATH": "describe a volume: shape, spacing, orientation, HU range, labels",
    "alice sam train": "train the SAM anatomical embedding on a cohort (the view miner)",
    "alice sam embed": "embed whole cases with a SAM checkpoint, into the embedding cache",
    "alice mine": "mine Alice view pairs (sam, random_cross, same_volume) into a CSV",
    "alice eval landmarks": "landmark retrieval on held-out pseudo-subjects: SAM vs an untrained net vs NCC",
    "alice pretrain": "Alice pretraining (teacher-student, masks, CAFA) into a run folder; also under torchrun",
    "alice export-backbone": "export a pretrained encoder-decoder as a MONAI bundle for fine-tuning",
}


@dataclass(frozen=True)
class Stage:
    """One pipeline stage's output: where it is looked for, whether it is there, and what makes it.

    Attributes:
        name: what the output is.
        path: the file or folder checked.
        present: the file exists, or the folder exists and is not empty.
        command: the CLI command that produces it.
        planned: the command does not exist yet.
    """

    name: str
    path: Path
    present: bool
    command: str
    planned: bool = True


def device_summary() -> dict[str, str | int | bool]:
    """The compute device: GPU name (or "CPU"), whether CUDA is usable, torch version and CPU threads."""
    import torch  # imported here: a second or two, only paid when asked

    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name(0) if cuda else "CPU", "cuda": cuda, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count() or 1}


def _present(path: Path) -> bool:
    if path.is_dir():
        return any(path.iterdir())
    return path.is_file()


def pipeline_stages() -> list[Stage]:
    """The stages from data to segmentation, in pipeline order, with the state of each output."""
    workspace = paths.workspace_dir()
    outputs = [
        ("SAM anatomical embedding checkpoint", paths.sam_checkpoint(), "alice sam train", False),
        ("SAM embedding cache", workspace / "embeddings" / "sam", "alice sam embed", False),
        ("Alice checkpoint (pretrained backbone)", paths.alice_checkpoint(),
         "alice pretrain --preset cpu-tiny", False),
        ("Dense embeddings", workspace / "embeddings" / "dense", "alice embed", False),
        ("Embedding index (FAISS)", workspace / "indexes", "alice index", False),
        ("Segmentation runs", workspace / "runs" / "segment", "alice finetune", False),
    ]
    return [Stage(name, path, _present(path), command, planned) for name, path, command, planned in outputs]
